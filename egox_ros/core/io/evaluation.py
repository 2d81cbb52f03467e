"""Image metrics against a ground-truth ego image or a reference prior, and resampling of an image into the ego
camera."""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from egox_ros.core.geometry.cameras import CameraModel


def masked_psnr(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float | None:
    """PSNR [dB] of uint8 images (H, W, 3) over the pixels where mask (H, W) is True; None if the mask is empty."""
    if not mask.any():
        return None
    diff = image[mask].astype(np.float64) - reference[mask].astype(np.float64)
    mse = float(np.mean(diff ** 2))
    return float("inf") if mse == 0 else 10.0 * np.log10(255.0 ** 2 / mse)


def masked_mae(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float | None:
    """Mean absolute error (0-255 units) of uint8 images (H, W, 3) over the pixels where mask is True; None if empty."""
    if not mask.any():
        return None
    return float(np.abs(image[mask].astype(np.float64) - reference[mask].astype(np.float64)).mean())


REFERENCE_BLACK_LEVEL = 10      # a reference prior's empty pixels: black, but a compressed video is not exactly 0


def reference_prior_mask(reference_rgb: np.ndarray, black_level: int = REFERENCE_BLACK_LEVEL) -> np.ndarray:
    """(H, W) bool: the pixels a reference prior (H, W, 3) uint8 covers, any channel above ``black_level`` (the
    released EgoX priors are mp4 files: their empty pixels read a few grey levels above 0)."""
    return (reference_rgb > black_level).any(-1)


def compare_with_reference_prior(prior_rgb: np.ndarray, prior_mask: np.ndarray, reference_rgb: np.ndarray,
                                 black_level: int = REFERENCE_BLACK_LEVEL) -> dict:
    """A prior (H, W, 3) uint8 with its valid mask (H, W) bool against a reference prior of the same camera
    (H, W, 3) uint8 (e.g. the released EgoX prior of the same frame): ``reference_prior_mask_iou`` (intersection
    over union of the two masks; None if both are empty) and ``reference_prior_psnr_db`` (PSNR on the pixels both
    cover; None if none). Raises ValueError if the sizes differ."""
    if reference_rgb.shape != prior_rgb.shape or prior_mask.shape != prior_rgb.shape[:2]:
        raise ValueError(f"reference prior {reference_rgb.shape} and prior {prior_rgb.shape} (mask "
                         f"{prior_mask.shape}) differ in size")
    reference_mask = reference_prior_mask(reference_rgb, black_level)
    union = int((prior_mask | reference_mask).sum())
    both = prior_mask & reference_mask
    psnr = masked_psnr(prior_rgb, reference_rgb, both)
    return {"reference_prior_mask_iou": round(int(both.sum()) / union, 5) if union else None,
            "reference_prior_psnr_db": None if psnr is None else round(psnr, 3)}


def resample_into_camera(image: np.ndarray, source: CameraModel, target: CameraModel,
                         source_R_target: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Re-render a (H, W, 3) uint8 image taken by `source` as seen by `target` at the same optical centre.

    source_R_target: (3, 3) rotation from the target optical frame to the source optical frame (identity if None).
    Exact for a shared centre (a pure change of intrinsics and orientation); bilinear sampling.
    Returns (image (h, w, 3) uint8, valid (h, w) bool: the target pixel sees inside the source image).
    """
    uv = target.pixel_grid()                                          # (h, w, 2)
    rays = target.unproject(uv, torch.ones(uv.shape[:2]))            # (h, w, 3), z = 1 in the target frame
    if source_R_target is not None:
        rays = rays @ torch.as_tensor(source_R_target, dtype=rays.dtype).T
    src_uv, in_front = source.project(rays)
    gx = (src_uv[..., 0] + 0.5) / source.width * 2 - 1
    gy = (src_uv[..., 1] + 0.5) / source.height * 2 - 1
    valid = in_front & (gx >= -1) & (gx <= 1) & (gy >= -1) & (gy <= 1)
    src = torch.from_numpy(np.array(image)).permute(2, 0, 1)[None].float()  # copy: bag buffers are read-only
    out = F.grid_sample(src, torch.stack([gx, gy], -1)[None].float(), mode="bilinear", align_corners=False)
    out = out[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8).numpy()
    valid = valid.numpy()
    out[~valid] = 0
    return out, valid
