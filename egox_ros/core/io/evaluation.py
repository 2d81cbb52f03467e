"""Image metrics against a ground-truth ego image, and resampling of that image into the ego camera."""
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
