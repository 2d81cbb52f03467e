"""GGA direction tables from the clip's geometry, in the token order of the EgoX canvas.

Canvas: per video frame, [exo | ego] side by side; the VAE keeps frame 0 and every 4th frame after it
(49 frames -> 13 latent frames) and divides space by 8, the transformer's 1x2x2 patches by 2 more, so each token
covers a 16x16-pixel cell. Tokens are ordered frame, row, column, and each canvas row holds the exo cells first,
then the ego cells.

Per latent frame f (video frame 4f):
- query direction of an ego token: the world-space viewing ray of its pixels (through the ego camera model, its
  lens distortion included, and the frame's rotation), averaged over the cell, not renormalised; pixels outside a
  fisheye's image circle contribute 0;
- key direction of an exo token of frame f, for a query of frame i: normalise(X - C_i), X the 3D points of its
  pixels (exo depth, intrinsics and pose of frame 4f), C_i the ego camera centre of frame 4i, averaged over the cell
  and not renormalised; pixels without a valid depth contribute 0. Ego tokens get key direction 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from egox_ros.core.attention.gga import GgaTables
from egox_ros.core.camera import CameraModel

TEMPORAL_STRIDE = 4     # VAE: video frames per latent frame (after the first)
CELL_PX = 16            # VAE /8 and 2x2 patches: pixels per token side


def latent_frame_indices(num_frames: int) -> list[int]:
    """Video frames that the latent frames stand for: 0, 4, 8, ... (num_frames must be 4k + 1, as Wan needs)."""
    if num_frames < 1 or (num_frames - 1) % TEMPORAL_STRIDE:
        raise ValueError(f"the clip needs 4k + 1 frames (e.g. 49), got {num_frames}")
    return list(range(0, num_frames, TEMPORAL_STRIDE))


@dataclass(frozen=True)
class CanvasLayout:
    """Token grid of the canvas: latent frames x rows x (exo_cols + ego_cols)."""
    frames: int
    rows: int
    exo_cols: int
    ego_cols: int

    @property
    def length(self) -> int:
        return self.frames * self.rows * (self.exo_cols + self.ego_cols)

    def is_ego(self) -> torch.Tensor:
        """(L,) bool."""
        cols = torch.arange(self.exo_cols + self.ego_cols) >= self.exo_cols
        return cols.repeat(self.frames * self.rows)

    def frame_of(self) -> torch.Tensor:
        """(L,) int64 latent frame of each token."""
        return torch.arange(self.frames).repeat_interleave(self.rows * (self.exo_cols + self.ego_cols))


def _cells(height: int, width: int, what: str) -> tuple[int, int]:
    if height % CELL_PX or width % CELL_PX:
        raise ValueError(f"{what} size {width}x{height} must be a multiple of {CELL_PX} pixels")
    return height // CELL_PX, width // CELL_PX


def _pool(values: torch.Tensor) -> torch.Tensor:
    """(..., H, W, 3) -> (..., H/16, W/16, 3): mean over each 16x16 cell."""
    lead = values.shape[:-3]
    h, w = values.shape[-3:-1]
    x = values.reshape(-1, h, w, 3).permute(0, 3, 1, 2)
    x = F.avg_pool2d(x, CELL_PX)
    return x.permute(0, 2, 3, 1).reshape(*lead, h // CELL_PX, w // CELL_PX, 3)


def gga_tables_from_geometry(ego_camera: CameraModel, world_T_ego: torch.Tensor, exo_camera: CameraModel,
                             world_T_exo: torch.Tensor, exo_depth_m: torch.Tensor) -> tuple[GgaTables, CanvasLayout]:
    """Direction tables of one clip.

    world_T_ego: (N, 4, 4) ego optical frame poses (OpenCV axes) per video frame; world_T_exo: (N, 4, 4) or (4, 4);
    exo_depth_m: (N, He, We) metric depth of the exo frames (NaN or <= 0: no reading). N = 4k + 1. Image sizes must
    be multiples of 16 (448x448 ego and 448x784 exo for the released weights). Float32 on the depth's device.
    """
    device = exo_depth_m.device
    n = exo_depth_m.shape[0]
    keep = latent_frame_indices(n)
    world_T_ego = torch.as_tensor(world_T_ego, dtype=torch.float64)
    world_T_exo = torch.as_tensor(world_T_exo, dtype=torch.float64)
    if world_T_exo.ndim == 2:
        world_T_exo = world_T_exo.expand(n, 4, 4)
    if world_T_ego.shape != (n, 4, 4) or world_T_exo.shape != (n, 4, 4):
        raise ValueError(f"need one pose per frame: {n} frames, ego poses {tuple(world_T_ego.shape)}, "
                         f"exo poses {tuple(world_T_exo.shape)}")
    if exo_depth_m.shape[1:] != (exo_camera.height, exo_camera.width):
        raise ValueError(f"exo depth is {tuple(exo_depth_m.shape[1:])}, the exo camera "
                         f"{exo_camera.height}x{exo_camera.width}")
    ego_rows, ego_cols = _cells(ego_camera.height, ego_camera.width, "ego image")
    exo_rows, exo_cols = _cells(exo_camera.height, exo_camera.width, "exo image")
    if ego_rows != exo_rows:
        raise ValueError(f"exo and ego images must have the same height on the canvas, got {exo_camera.height} "
                         f"and {ego_camera.height}")
    layout = CanvasLayout(len(keep), ego_rows, exo_cols, ego_cols)
    ego_T = world_T_ego[keep].to(device=device, dtype=torch.float32)
    exo_T = world_T_exo[keep].to(device=device, dtype=torch.float32)

    # Ego query rays: unit camera rays through the ego lens model rotated into the world, pooled per cell. Pixels
    # without a ray (outside a fisheye's image circle) contribute 0, like exo pixels without depth.
    ego_rays = torch.nan_to_num(F.normalize(ego_camera.ray_grid(device=device), dim=-1), nan=0.0)   # (He, We, 3)
    query = _pool(torch.einsum("fij,hwj->fhwi", ego_T[:, :3, :3], ego_rays))           # (F, r, ego_cols, 3)

    # Exo points per kept frame, in the world.
    depth = exo_depth_m[keep].to(torch.float32)
    valid = torch.isfinite(depth) & (depth > 0)
    rays = exo_camera.ray_grid(device=device)                                            # (H, W, 3), z = 1
    valid &= torch.isfinite(rays).all(-1)
    points_cam = rays * torch.where(valid, depth, 0.0)[..., None]
    points = torch.einsum("fij,fhwj->fhwi", exo_T[:, :3, :3], points_cam) + exo_T[:, None, None, :3, 3]
    centres = ego_T[:, :3, 3]                                                            # (F, 3)
    # For each query frame i (a loop, so the temporary is one frame set, not F x F full-size images): directions
    # from C_i to every exo pixel of every frame, pooled per cell.
    keys_exo = torch.stack([_pool(F.normalize(points - c, dim=-1) * valid[..., None]) for c in centres])

    f = layout.frames
    cols = exo_cols + ego_cols
    key_dir = torch.zeros(f, f, layout.rows, cols, 3, device=device)
    key_dir[..., :exo_cols, :] = keys_exo
    query_dir = torch.zeros(f, layout.rows, cols, 3, device=device)
    query_dir[..., exo_cols:, :] = query
    tables = GgaTables(query_dir=query_dir.reshape(-1, 3), query_frame=layout.frame_of().to(device),
                       query_is_ego=layout.is_ego().to(device), key_dir=key_dir.reshape(f, -1, 3))
    return tables, layout
