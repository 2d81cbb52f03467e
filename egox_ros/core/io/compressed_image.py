"""``sensor_msgs/CompressedImage`` payloads as image_transport writes them: ``compressed`` (JPEG / PNG colour or mono)
and ``compressedDepth`` (PNG of 16UC1 millimetres, or of quantised inverse depth for 32FC1 metres). Pure Python +
Pillow; decoding releases the GIL inside Pillow's codecs.

compressedDepth layout (image_transport_plugins, compressed_depth_image_transport): a 12-byte little-endian header
(int32 compression format, float32 depthQuantA, float32 depthQuantB), then a 16-bit single-channel PNG. For 16UC1
the PNG holds the millimetres as they are; for 32FC1 it holds ``q = depthQuantA / depth_m + depthQuantB`` rounded,
0 where there is no reading, so ``depth_m = depthQuantA / (q - depthQuantB)``. The RVL variant is not supported.
"""
from __future__ import annotations

import io
import struct

import numpy as np
from PIL import Image as PILImage

from egox_ros.core.io.image_codec import ImageDecodeError

DEPTH_HEADER = struct.Struct("<iff")        # compression format (0 = PNG), depthQuantA, depthQuantB
DEPTH_QUANT_A = 100.0                       # image_transport's defaults (depth_quantization, depth_max 10 m)
DEPTH_MAX_M = 10.0


TRANSPORT_CONTAINERS = {"compressed": ("JPEG", "PNG"), "compressedDepth": ("PNG",)}   # what image_transport writes


def _open(data: bytes, what: str, allowed: tuple[str, ...]) -> PILImage.Image:
    """Decode with Pillow's parsers for ``allowed`` containers only (Pillow names: 'JPEG', 'PNG'): a payload of any
    other format (TIFF, BMP, GIF, ... however it is labelled) is refused before any other parser sees it."""
    try:
        image = PILImage.open(io.BytesIO(bytes(data)), formats=allowed)
        image.load()
    except PILImage.UnidentifiedImageError:      # raised by open(): no allowed parser took the payload
        raise ImageDecodeError(f"{what}: the payload is not {' or '.join(allowed)} (the only formats this transport "
                               "carries)") from None
    except Exception as e:  # noqa: BLE001 - Pillow raises many types for corrupt data
        raise ImageDecodeError(f"{what}: cannot decode the payload ({type(e).__name__}: {e})") from e
    return image


def _container(fmt: str) -> str:
    """'jpeg' or 'png' from a CompressedImage.format ('jpeg', 'png', 'rgb8; jpeg compressed bgr8', ...)."""
    text = fmt.lower()
    for name in ("jpeg", "jpg", "png"):
        if name in text:
            return "jpeg" if name == "jpg" else name
    raise ImageDecodeError(f"compressed image format {fmt!r} is neither jpeg nor png")


def decode_compressed_rgb(data: bytes, fmt: str) -> np.ndarray:
    """(H, W, 3) uint8 RGB from a JPEG or PNG payload (colour, mono, with alpha; 16-bit mono scaled to 8 bits).
    The ``format`` string has to name jpeg or png; the payload must be one of the two (as image_transport's
    compressed subscriber, which decodes either whatever the label says); any other format is refused. The pixels
    carry their own colour model, so 'compressed bgr8' payloads made by OpenCV decode to the right colours."""
    _container(fmt)
    image = _open(data, f"compressed image ({fmt})", TRANSPORT_CONTAINERS["compressed"])
    if image.mode in ("I;16", "I;16B", "I"):
        mono = np.asarray(image, dtype=np.uint16) if image.mode != "I" else np.asarray(image).astype(np.uint16)
        return np.repeat((mono >> 8).astype(np.uint8)[..., None], 3, axis=2)
    if image.mode != "RGB":
        image = image.convert("RGB")
    # np.array, not np.asarray: a writable array (asarray's is read-only, which torch.as_tensor warns about in the
    # fusion), at the same cost (the pixels are copied out of PIL either way).
    return np.array(image, dtype=np.uint8)


def decode_compressed_depth_m(data: bytes, fmt: str) -> np.ndarray:
    """(H, W) float32 metres, NaN = no reading, from a compressedDepth payload (``format`` '16UC1; compressedDepth
    png' or '32FC1; compressedDepth png')."""
    encoding = fmt.split(";")[0].strip()
    if "compresseddepth" not in fmt.lower() or encoding not in ("16UC1", "32FC1"):
        raise ImageDecodeError(f"compressedDepth format {fmt!r}: expected '16UC1; compressedDepth png' or "
                               "'32FC1; compressedDepth png'")
    if "rvl" in fmt.lower():
        raise ImageDecodeError(f"compressedDepth format {fmt!r}: RVL is not supported, only PNG")
    if len(data) <= DEPTH_HEADER.size:
        raise ImageDecodeError(f"compressedDepth payload of {len(data)} bytes has no image after its header")
    _, quant_a, quant_b = DEPTH_HEADER.unpack_from(bytes(data[:DEPTH_HEADER.size]))
    image = _open(bytes(data[DEPTH_HEADER.size:]), f"compressedDepth ({fmt})", TRANSPORT_CONTAINERS["compressedDepth"])
    if image.mode not in ("I;16", "I;16B", "I"):
        raise ImageDecodeError(f"compressedDepth PNG is {image.mode}, expected 16-bit single channel")
    raw = np.asarray(image).astype(np.float32)
    with np.errstate(divide="ignore"):
        if encoding == "16UC1":
            depth_m = raw * np.float32(0.001)
        else:
            depth_m = np.float32(quant_a) / (raw - np.float32(quant_b))
    depth_m[raw == 0] = np.nan
    return depth_m


def encode_compressed_rgb(rgb: np.ndarray, container: str = "jpeg", quality: int = 90) -> tuple[bytes, str]:
    """(payload, format) for an (H, W, 3) uint8 RGB image, as image_transport's compressed publisher writes them: a
    JPEG / PNG of the true colours labelled 'bgr8; jpeg compressed bgr8' (it encodes from BGR with OpenCV, and its
    subscriber reads 'compressed bgr8' as "the decoded colours are right"; a 'compressed rgb8' label makes it swap red
    and blue)."""
    buf = io.BytesIO()
    if container == "jpeg":
        PILImage.fromarray(rgb, "RGB").save(buf, "JPEG", quality=quality)
    elif container == "png":
        PILImage.fromarray(rgb, "RGB").save(buf, "PNG", compress_level=1)
    else:
        raise ValueError(f"container must be 'jpeg' or 'png', got {container!r}")
    return buf.getvalue(), f"bgr8; {container} compressed bgr8"


def encode_compressed_depth(depth_m: np.ndarray, encoding: str = "16UC1") -> tuple[bytes, str]:
    """(payload, format) for (H, W) float32 metres (NaN / 0 = no reading) as compressedDepth PNG: 16UC1 rounds to
    millimetres; 32FC1 quantises inverse depth with image_transport's defaults (valid up to DEPTH_MAX_M)."""
    valid = np.isfinite(depth_m) & (depth_m > 0)
    if encoding == "16UC1":
        raw = np.where(valid, np.clip(np.round(depth_m * 1000.0), 0, 65535), 0).astype(np.uint16)
        quant_a = quant_b = 0.0
    elif encoding == "32FC1":
        quant_a = DEPTH_QUANT_A
        quant_b = 1.0 - quant_a / DEPTH_MAX_M
        with np.errstate(divide="ignore", invalid="ignore"):
            q = quant_a / np.where(valid, depth_m, 1.0) + quant_b
        raw = np.where(valid & (depth_m < DEPTH_MAX_M), np.clip(np.round(q), 1, 65535), 0).astype(np.uint16)
    else:
        raise ValueError(f"encoding must be 16UC1 or 32FC1, got {encoding!r}")
    buf = io.BytesIO()
    PILImage.fromarray(raw).save(buf, "PNG", compress_level=1)
    return DEPTH_HEADER.pack(0, quant_a, quant_b) + buf.getvalue(), f"{encoding}; compressedDepth png"
