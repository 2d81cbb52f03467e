"""Tests for egox_ros.core.io.image_codec (pure-numpy cv_bridge replacement)."""

import array

import numpy as np
import pytest

from egox_ros.core.io.image_codec import (ImageDecodeError, SUPPORTED_ENCODINGS, decode_depth_m, decode_image,
                                          decode_rgb, encode_image)

RNG = np.random.default_rng(1234)
H, W = 5, 7


def _pad_rows(data: bytes, height: int, row_bytes: int, pad: int) -> bytes:
    """Insert ``pad`` garbage bytes after every row."""
    rows = np.frombuffer(data, np.uint8).reshape(height, row_bytes)
    garbage = np.full((height, pad), 0xAB, np.uint8)
    return np.concatenate([rows, garbage], axis=1).tobytes()


SAMPLES = {
    "rgb8": RNG.integers(0, 256, (H, W, 3), dtype=np.uint8),
    "mono8": RNG.integers(0, 256, (H, W), dtype=np.uint8),
    "16UC1": RNG.integers(0, 65536, (H, W), dtype=np.uint16),
    "mono16": RNG.integers(0, 65536, (H, W), dtype=np.uint16),
    "32FC1": RNG.normal(size=(H, W)).astype(np.float32),
}


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
def test_round_trip_packed(encoding):
    img = SAMPLES[encoding]
    data, step = encode_image(img, encoding)
    assert step == W * img.itemsize * (3 if img.ndim == 3 else 1)
    assert len(data) == step * H
    out = decode_image(data, encoding, H, W, step, False)
    assert out.dtype == img.dtype and out.dtype.isnative
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("encoding", sorted(SAMPLES))
@pytest.mark.parametrize("pad", [1, 3, 8])
def test_round_trip_padded_step(encoding, pad):
    img = SAMPLES[encoding]
    data, step = encode_image(img, encoding)
    padded = _pad_rows(data, H, step, pad)
    out = decode_image(padded, encoding, H, W, step + pad, False)
    assert out.flags.c_contiguous
    np.testing.assert_array_equal(out, img)


@pytest.mark.parametrize("container", [bytes, bytearray, memoryview, lambda b: array.array("B", b)])
def test_accepts_buffer_types(container):
    img = SAMPLES["rgb8"]
    data, step = encode_image(img, "rgb8")
    np.testing.assert_array_equal(decode_image(container(data), "rgb8", H, W, step, False), img)


@pytest.mark.parametrize("encoding,dtype", [("16UC1", ">u2"), ("mono16", ">u2"), ("32FC1", ">f4")])
@pytest.mark.parametrize("pad", [0, 2])
def test_big_endian_input(encoding, dtype, pad):
    img = SAMPLES[encoding]
    data = img.astype(dtype).tobytes()
    step = W * img.itemsize
    if pad:
        data = _pad_rows(data, H, step, pad)
    out = decode_image(data, encoding, H, W, step + pad, True)
    assert out.dtype.isnative
    np.testing.assert_array_equal(out, img)


def test_channel_order_on_hand_built_2x2():
    # Pixels (row-major): red, green, blue, white-ish with distinct values.
    rgb = np.array([[[255, 0, 0], [0, 255, 0]], [[0, 0, 255], [10, 20, 30]]], np.uint8)
    bgr = rgb[..., ::-1]
    alpha = np.full((2, 2, 1), 77, np.uint8)
    cases = {
        "rgb8": rgb,
        "bgr8": bgr,
        "8UC3": bgr,
        "rgba8": np.concatenate([rgb, alpha], axis=2),
        "bgra8": np.concatenate([bgr, alpha], axis=2),
    }
    for encoding, raw in cases.items():
        c = raw.shape[2]
        out = decode_image(raw.tobytes(), encoding, 2, 2, 2 * c, False)
        assert out.shape == (2, 2, 3), encoding
        np.testing.assert_array_equal(out, rgb, err_msg=encoding)
        # Same with one padding byte per row.
        padded = _pad_rows(raw.tobytes(), 2, 2 * c, 1)
        np.testing.assert_array_equal(decode_image(padded, encoding, 2, 2, 2 * c + 1, False), rgb)
    assert decode_image(rgb.tobytes(), "bgr8", 2, 2, 6, False)[0, 0].tolist() == [0, 0, 255]


def test_zero_copy_view_and_copy_flag():
    img = SAMPLES["rgb8"]
    data = bytearray(img.tobytes())
    view = decode_image(data, "rgb8", H, W, W * 3, False)
    assert np.shares_memory(view, np.frombuffer(data, np.uint8))
    fresh = decode_image(data, "rgb8", H, W, W * 3, False, copy=True)
    assert not np.shares_memory(fresh, np.frombuffer(data, np.uint8))
    assert fresh.flags.writeable


def test_decode_rgb_mono_and_mono16():
    mono = np.array([[0, 128], [200, 255]], np.uint8)
    out = decode_rgb(mono.tobytes(), "mono8", 2, 2, 2, False)
    assert out.shape == (2, 2, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, np.repeat(mono[:, :, None], 3, axis=2))
    m16 = np.array([[0, 0x1234], [0xFF00, 0xFFFF]], np.uint16)
    out16 = decode_rgb(m16.astype("<u2").tobytes(), "mono16", 2, 2, 4, False)
    np.testing.assert_array_equal(out16[..., 1], [[0, 0x12], [0xFF, 0xFF]])
    rgb = SAMPLES["rgb8"]
    np.testing.assert_array_equal(decode_rgb(rgb[..., ::-1].tobytes(), "bgr8", H, W, W * 3, False), rgb)
    with pytest.raises(ImageDecodeError, match="32FC1"):
        decode_rgb(SAMPLES["32FC1"].tobytes(), "32FC1", H, W, W * 4, False)


def test_depth_units_16uc1():
    mm = np.array([[0, 1000], [1500, 65535]], np.uint16)
    m = decode_depth_m(mm.tobytes(), "16UC1", 2, 2, 4, False)
    assert m.dtype == np.float32
    assert np.isnan(m[0, 0])
    np.testing.assert_allclose(m[0, 1:], [1.0], rtol=1e-6)
    np.testing.assert_allclose(m[1], [1.5, 65.535], rtol=1e-6)
    big = decode_depth_m(mm.astype(">u2").tobytes(), "16UC1", 2, 2, 4, True)
    np.testing.assert_array_equal(np.isnan(big), np.isnan(m))
    np.testing.assert_allclose(big[~np.isnan(big)], m[~np.isnan(m)])


def test_depth_units_32fc1():
    raw = np.array([[0.0, -1.0, np.inf], [2.5, np.nan, 0.75]], np.float32)
    m = decode_depth_m(raw.tobytes(), "32FC1", 2, 3, 12, False)
    assert np.isnan(m[0]).all() and np.isnan(m[1, 1])
    np.testing.assert_allclose(m[1, [0, 2]], [2.5, 0.75])
    # The input buffer is left untouched even when it is writable.
    buf = bytearray(raw.tobytes())
    decode_depth_m(buf, "32FC1", 2, 3, 12, False)
    assert bytes(buf) == raw.tobytes()


def test_depth_rejects_other_encodings():
    with pytest.raises(ImageDecodeError, match=r"depth must be 16UC1 \(mm\) or 32FC1 \(m\), got 'rgb8'"):
        decode_depth_m(bytes(12), "rgb8", 2, 2, 6, False)


def test_step_too_small():
    with pytest.raises(ImageDecodeError) as err:
        decode_image(bytes(100), "rgb8", 2, 4, 11, False)
    msg = str(err.value)
    assert "rgb8" in msg and "step 11" in msg and "12" in msg


def test_truncated_data():
    with pytest.raises(ImageDecodeError) as err:
        decode_image(bytes(47), "16UC1", 4, 6, 12, False)
    msg = str(err.value)
    assert "16UC1" in msg and "48" in msg and "47" in msg and "6x4" in msg


def test_unknown_encoding_lists_supported():
    with pytest.raises(ImageDecodeError) as err:
        decode_image(bytes(4), "nv21", 1, 2, 4, False)
    msg = str(err.value)
    assert "nv21" in msg
    for enc in ("rgb8", "bgr8", "mono16", "16UC1", "32FC1"):
        assert enc in msg
    assert set(SUPPORTED_ENCODINGS) >= {"rgb8", "bgr8", "rgba8", "bgra8", "mono8", "mono16", "16UC1", "32FC1"}


def test_negative_size_rejected():
    with pytest.raises(ImageDecodeError, match="height"):
        decode_image(bytes(4), "mono8", -1, 2, 2, False)


def test_empty_image():
    out = decode_image(b"", "rgb8", 0, 0, 0, False)
    assert out.shape == (0, 0, 3) and out.dtype == np.uint8


def test_encode_validation():
    with pytest.raises(ValueError, match="dtype uint8"):
        encode_image(np.zeros((2, 2, 3), np.float32), "rgb8")
    with pytest.raises(ValueError, match=r"shape \(H, W, 3\)"):
        encode_image(np.zeros((2, 2), np.uint8), "rgb8")
    with pytest.raises(ValueError, match=r"shape \(H, W\)"):
        encode_image(np.zeros((2, 2, 1), np.uint16), "16UC1")
    with pytest.raises(ValueError, match="float32"):
        encode_image(np.zeros((2, 2), np.float64), "32FC1")
    with pytest.raises(ValueError, match="bgr8"):
        encode_image(np.zeros((2, 2, 3), np.uint8), "bgr8")


def test_encode_is_little_endian_and_handles_views():
    img = np.array([[1, 256]], dtype=">u2")
    data, step = encode_image(img, "16UC1")
    assert step == 4 and data == b"\x01\x00\x00\x01"
    rgb = SAMPLES["rgb8"][:, ::2]  # non-contiguous view
    data, step = encode_image(rgb, "rgb8")
    np.testing.assert_array_equal(decode_image(data, "rgb8", H, rgb.shape[1], step, False), rgb)


# --------------------------------------------------------------- compressed (image_transport) payloads
def _real_frame():
    from egox_ros.tools import tum
    try:
        return tum.TumSequence("fr1_rpy_60")[0]      # TUM RGB-D, CC BY 4.0
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_compressed_colour_round_trip_on_a_real_image():
    from egox_ros.core.io.compressed_image import decode_compressed_rgb, encode_compressed_rgb
    rgb = _real_frame().rgb
    data, fmt = encode_compressed_rgb(rgb, "png")
    assert fmt == "bgr8; png compressed bgr8"     # image_transport's label for a payload of the true colours
    decoded = decode_compressed_rgb(data, fmt)
    assert np.array_equal(decoded, rgb)
    assert decoded.flags.writeable       # torch.as_tensor warns on read-only arrays (the fusion wraps this one)
    data, fmt = encode_compressed_rgb(rgb, "jpeg", quality=90)
    error = np.abs(decode_compressed_rgb(data, fmt).astype(int) - rgb).mean()
    assert error < 4.0                       # JPEG at quality 90: a few grey levels on average (2.2 measured)
    assert decode_compressed_rgb(data, "jpeg").shape == rgb.shape     # a bare container name is enough
    with pytest.raises(ImageDecodeError, match="neither jpeg nor png"):
        decode_compressed_rgb(data, "rgb8; tiff")
    png, _ = encode_compressed_rgb(rgb, "png")
    with pytest.raises(ImageDecodeError, match="cannot decode"):
        decode_compressed_rgb(png[:len(png) // 2], "png")                   # a truncated PNG
    with pytest.raises(ImageDecodeError, match="not JPEG or PNG"):
        decode_compressed_rgb(b"\x89PNG broken", "png")                    # not even a whole PNG signature


@pytest.mark.parametrize("encoding,tolerance_m", [("16UC1", 0.0005), ("32FC1", None)])
def test_compressed_depth_round_trip_on_real_depth(encoding, tolerance_m):
    from egox_ros.core.io.compressed_image import decode_compressed_depth_m, encode_compressed_depth
    depth_m = _real_frame().depth_m
    data, fmt = encode_compressed_depth(depth_m, encoding)
    assert fmt == f"{encoding}; compressedDepth png"
    out = decode_compressed_depth_m(data, fmt)
    valid = np.isfinite(depth_m)
    assert np.isnan(out[~valid]).all() and np.isfinite(out[valid]).all()
    error = np.abs(out[valid] - depth_m[valid])
    if tolerance_m is None:   # inverse depth quantised at 100 / d: a step of about d^2 / 100 at depth d
        assert (error <= depth_m[valid] ** 2 / 100.0 * 0.51 + 1e-4).all()
    else:                     # whole millimetres
        assert error.max() <= tolerance_m
    with pytest.raises(ImageDecodeError, match="RVL"):
        decode_compressed_depth_m(data, f"{encoding}; compressedDepth rvl")
    with pytest.raises(ImageDecodeError, match="expected"):
        decode_compressed_depth_m(data, "png")
    with pytest.raises(ImageDecodeError, match="no image after its header"):
        decode_compressed_depth_m(data[:12], fmt)


# --------------------------------------------------------------- depth that is not what its label says
@pytest.mark.parametrize("depth_m", [1.0, 1.5, 2.0, 2.5, 3.0])
@pytest.mark.parametrize("width,step_floats", [(640, 1), (641, 0)])
def test_uniform_32fc1_depth_labelled_16uc1_is_implausible(depth_m, width, step_floats):
    """32FC1 floats of a uniform depth (1-3 m) read as 16UC1: each float's low half is 0 (no reading) and its high
    half about 16.3 m, so no two neighbours are valid; the data must still be rejected (the node's `bad_depth`).
    The message's step is either the 32FC1 one (each row's first half of floats) or width * 2 (the floats read on
    across rows; with an odd width the empty pixels change column parity from row to row)."""
    from egox_ros.core.io.image_codec import depth_implausible
    height = 480
    floats = np.full((height, width), depth_m, np.float32).tobytes()
    step = width * 4 if step_floats else width * 2
    read = decode_depth_m(floats, "16UC1", height, width, step, False)
    assert np.isnan(read).mean() == pytest.approx(0.5, abs=0.01)
    assert 16.0 < np.nanmedian(read) < 16.5                     # a plausible-looking median: the old check passed
    assert "every other pixel" in depth_implausible(read, "16UC1")


def test_sparse_and_dense_real_depth_stay_plausible():
    """The parity check must not reject real depth: a Kinect frame, the same frame with a random 5 % of its pixels
    (a projected lidar), and a uniform wall in whole millimetres."""
    from egox_ros.core.io.image_codec import depth_implausible
    depth_m = _real_frame().depth_m
    assert depth_implausible(depth_m, "16UC1") is None
    sparse = np.where(np.random.default_rng(3).random(depth_m.shape) < 0.05, depth_m, np.nan).astype(np.float32)
    assert np.isfinite(sparse).sum() > 5000
    assert depth_implausible(sparse, "16UC1") is None
    wall = decode_depth_m(np.full((480, 640), 2000, "<u2").tobytes(), "16UC1", 480, 640, 1280, False)
    assert depth_implausible(wall, "16UC1") is None


@pytest.mark.parametrize("container", ["TIFF", "BMP", "GIF", "PPM"])
def test_compressed_payloads_of_other_formats_are_refused(container):
    """Only the containers image_transport's transports carry are opened (JPEG or PNG for `compressed`, PNG for
    `compressedDepth`): a TIFF/BMP/GIF/PPM payload labelled jpeg or png is refused whole, even though Pillow could
    decode it."""
    import io
    from PIL import Image as PILImage
    from egox_ros.core.io.compressed_image import (DEPTH_HEADER, decode_compressed_depth_m, decode_compressed_rgb,
                                                   encode_compressed_rgb)
    rgb = SAMPLES["rgb8"]
    buf = io.BytesIO()
    PILImage.fromarray(rgb, "RGB").save(buf, container)
    for fmt in ("jpeg", "rgb8; jpeg compressed bgr8", "png", "bgr8; png compressed bgr8"):
        with pytest.raises(ImageDecodeError, match="not JPEG or PNG"):
            decode_compressed_rgb(buf.getvalue(), fmt)
    if container in ("TIFF", "PPM"):        # 16-bit single channel: a depth image in the wrong container
        depth = io.BytesIO()
        PILImage.fromarray(np.full((H, W), 2000, np.uint16)).save(depth, container)
        with pytest.raises(ImageDecodeError, match="not PNG"):
            decode_compressed_depth_m(DEPTH_HEADER.pack(0, 0.0, 0.0) + depth.getvalue(), "16UC1; compressedDepth png")
    # The two formats the compressed transport carries decode whatever the label names (as image_transport does).
    png, _ = encode_compressed_rgb(rgb, "png")
    np.testing.assert_array_equal(decode_compressed_rgb(png, "rgb8; jpeg compressed bgr8"), rgb)
    jpeg, _ = encode_compressed_rgb(rgb, "jpeg", quality=95)
    assert decode_compressed_rgb(jpeg, "png").shape == rgb.shape


# --------------------------------------------------------------- USB camera encodings: 4:2:2 YUV and Bayer
def test_yuv422_pixels_by_hand():
    """BT.601 limited range as cv_bridge converts: Y 16 / 235 is black / white, U = V = 128 grey, V > 128 reddens.
    yuv422 is U Y0 V Y1 (UYVY), yuv422_yuy2 Y0 U Y1 V (YUYV); each pair of pixels shares its U and V."""
    uyvy = bytes([128, 16, 128, 235,   128, 126, 200, 126])       # black, white | two pixels of a red chroma
    yuyv = bytes([16, 128, 235, 128,   126, 128, 126, 200])
    for encoding, data in (("yuv422", uyvy), ("uyvy", uyvy), ("yuv422_yuy2", yuyv), ("yuyv", yuyv)):
        rgb = decode_image(data, encoding, 1, 4, 8, False)
        assert rgb.shape == (1, 4, 3) and rgb.dtype == np.uint8, encoding
        np.testing.assert_array_equal(rgb[0, 0], [0, 0, 0])
        np.testing.assert_allclose(rgb[0, 1], [255, 255, 255], atol=1)
        np.testing.assert_allclose(rgb[0, 2], [1.164 * 110 + 1.596 * 72, 1.164 * 110 - 0.813 * 72, 1.164 * 110],
                                   atol=1)
        np.testing.assert_array_equal(rgb[0, 3], rgb[0, 2])
        np.testing.assert_array_equal(decode_rgb(data, encoding, 1, 4, 8, False), rgb)
    with pytest.raises(ImageDecodeError, match="even width"):
        decode_image(bytes(6), "yuv422", 1, 3, 6, False)
    with pytest.raises(ImageDecodeError, match="too short"):
        decode_image(bytes(7), "yuv422", 1, 4, 8, False)


def _mosaic(rgb: np.ndarray, tile: str) -> np.ndarray:
    """The Bayer mosaic a sensor with 2x2 tile ``tile`` (row by row) records of an RGB scene."""
    raw = np.empty(rgb.shape[:2], rgb.dtype)
    for k, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
        raw[dy::2, dx::2] = rgb[dy::2, dx::2, "rgb".index(tile[k])]
    return raw


@pytest.mark.parametrize("tile", ["rggb", "bggr", "gbrg", "grbg"])
def test_bayer_demosaic_recovers_a_smooth_scene_and_keeps_measured_samples(tile):
    """Bilinear demosaicing is exact on a scene that is linear in x and y (away from the border) and never changes
    a measured sample; 16-bit mosaics (either byte order) give 16-bit RGB and decode_rgb scales them to 8 bits."""
    yy, xx = np.mgrid[0:24, 0:32]
    scene = np.stack([xx * 7, yy * 9 + 3, 250 - xx * 3 - yy * 4], axis=2).astype(np.uint8)
    raw = _mosaic(scene, tile)
    rgb = decode_image(raw.tobytes(), f"bayer_{tile}8", 24, 32, 32, False)
    assert rgb.shape == (24, 32, 3) and rgb.dtype == np.uint8
    np.testing.assert_array_equal(rgb[1:-1, 1:-1], scene[1:-1, 1:-1])
    np.testing.assert_array_equal(_mosaic(rgb, tile), raw)
    np.testing.assert_allclose(rgb.astype(int), scene, atol=40)             # the border: one-sided neighbours
    wide = scene.astype(np.uint16) * 256 + 128
    raw16 = _mosaic(wide, tile)
    for order, big in (("<u2", False), (">u2", True)):
        padded = _pad_rows(raw16.astype(order).tobytes(), 24, 64, 2)
        rgb16 = decode_image(padded, f"bayer_{tile}16", 24, 32, 66, big)
        assert rgb16.dtype == np.uint16
        np.testing.assert_array_equal(rgb16[1:-1, 1:-1], wide[1:-1, 1:-1])
        np.testing.assert_array_equal(decode_rgb(padded, f"bayer_{tile}16", 24, 32, 66, big)[1:-1, 1:-1],
                                      scene[1:-1, 1:-1])
    with pytest.raises(ImageDecodeError, match="at least 2x2"):
        decode_image(bytes(4), f"bayer_{tile}8", 1, 4, 4, False)


def test_usb_camera_encodings_match_opencv():
    """What cv_bridge gives (OpenCV's cvtColor), on random 4:2:2 data and a random mosaic: within one grey level
    for YUV (rounding), equal for Bayer away from the one-pixel border (OpenCV's border rule differs)."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)
    yuv = rng.integers(0, 256, (30, 40, 2), dtype=np.uint8)
    for encoding, code in (("yuv422", cv2.COLOR_YUV2RGB_UYVY), ("yuv422_yuy2", cv2.COLOR_YUV2RGB_YUY2)):
        ours = decode_rgb(yuv.tobytes(), encoding, 30, 40, 80, False).astype(int)
        assert np.abs(ours - cv2.cvtColor(yuv, code)).max() <= 1, encoding
    raw = rng.integers(0, 256, (30, 40), dtype=np.uint8)
    # OpenCV names a mosaic by the second row's second and third pixels: RGGB is its BayerBG, and so on.
    for tile, code in (("rggb", cv2.COLOR_BayerBG2RGB), ("bggr", cv2.COLOR_BayerRG2RGB),
                       ("gbrg", cv2.COLOR_BayerGR2RGB), ("grbg", cv2.COLOR_BayerGB2RGB)):
        ours = decode_rgb(raw.tobytes(), f"bayer_{tile}8", 30, 40, 40, False).astype(int)
        assert np.abs(ours - cv2.cvtColor(raw, code))[2:-2, 2:-2].max() <= 1, tile


def test_usb_camera_encodings_reach_the_node_as_rgb():
    """The node's decoding (ros/conversions.image_to_rgb on a real sensor_msgs/Image) takes them as any other."""
    from sensor_msgs.msg import Image
    from egox_ros.ros.conversions import image_to_rgb
    yy, xx = np.mgrid[0:8, 0:10]
    scene = np.stack([xx * 20, yy * 30, 200 - xx * 10], axis=2).astype(np.uint8)
    msg = Image(height=8, width=10, encoding="bayer_grbg8", is_bigendian=0, step=10)
    msg.data = _mosaic(scene, "grbg").tobytes()
    np.testing.assert_array_equal(image_to_rgb(msg)[1:-1, 1:-1], scene[1:-1, 1:-1])
    msg = Image(height=1, width=2, encoding="yuv422_yuy2", is_bigendian=0, step=4)
    msg.data = bytes([235, 128, 16, 128])
    np.testing.assert_allclose(image_to_rgb(msg).astype(int), [[[255] * 3, [0] * 3]], atol=1)
