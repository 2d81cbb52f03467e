"""GGA direction tables from the clip's geometry, in the token order of the EgoX canvas.

Canvas: per video frame, [exo | ego] side by side; the VAE keeps frame 0 and every 4th frame after it
(49 frames -> 13 latent frames) and divides space by 8, the transformer's 1x2x2 patches by 2 more, so each token
covers a 16x16-pixel cell. Tokens are ordered frame, row, column, and each canvas row holds the exo cells first,
then the ego cells.

Per latent frame f (video frame 4f):
- query direction of an ego token, rotated into the world with the frame's ego pose and not renormalised:
  ego_rays 'released' (default): the released inference's rays (`released_ego_rays`: the same fixed table for every
  input, as the weights were run with); ego_rays 'camera': the viewing rays of the configured ego camera model (its
  lens distortion included), averaged over the cell's pixels; pixels outside a fisheye's image circle contribute 0;
- key direction of an exo token of frame f, for a query of frame i: normalise(X - C_i), X the 3D points of its
  pixels (exo depth, intrinsics and pose of frame 4f), C_i the ego camera centre of frame 4i, averaged over the cell
  and not renormalised; pixels without a valid depth contribute 0. Ego tokens get key direction 0.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from egox_ros.core.attention.gga import GgaTables
from egox_ros.core.geometry.cameras import CameraModel

TEMPORAL_STRIDE = 4     # VAE: video frames per latent frame (after the first)
CELL_PX = 16            # VAE /8 and 2x2 patches: pixels per token side
LATENT_PX = 8           # VAE: pixels per latent pixel side
EGO_RAYS = ("released", "camera")

# The released inference's ego rays (infer.py of DAVIAN-Robotics/EgoX): its 12 hard-coded coefficients, written in
# Project Aria's order but passed to cv2.undistortPoints, which reads them as OpenCV's rational + thin-prism pinhole
# lens (k1 k2 p1 p2 k3 k4 k5 k6 s1 s2 s3 s4), with the ego intrinsics of its data (f = 150 px, c = 255.5 px) on
# the 448-pixel ego canvas, evaluated at the latent pixels (u = 8 x, v = 8 y) of the sideways (native Aria) image.
RELEASED_EGO_DISTORTION = (-0.02340373583137989, 0.09388021379709244, -0.06088035926222801, 0.0053304750472307205,
                           0.003342868760228157, -0.0006356257363222539, 0.0005087381578050554,
                           -0.0004747129278257489, -0.0011330085108056664, -0.00025734835071489215,
                           0.00009328465239377692, 0.00009424977179151028)
RELEASED_EGO_FOCAL_PX = 150.0
RELEASED_EGO_CENTRE_PX = 255.5
RELEASED_EGO_CANVAS_PX = 448
OPENCV_UNDISTORT_ITERATIONS = 5   # cv2.undistortPoints' default criteria: 5 iterations, no epsilon test


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


def _opencv_undistort_normalized(xy_d: torch.Tensor, d: tuple[float, ...]) -> torch.Tensor:
    """OpenCV's iterative inversion of its rational + thin-prism lens, as cv2.undistortPoints runs it with its default
    criteria (OPENCV_UNDISTORT_ITERATIONS fixed-point steps from the distorted point, no convergence test):
    x <- (x_d - tangential - prism) * (1 + k4 r^2 + k5 r^4 + k6 r^6) / (1 + k1 r^2 + k2 r^4 + k3 r^6).
    xy_d: (..., 2) distorted normalised coordinates (float64); d: k1 k2 p1 p2 k3 k4 k5 k6 s1 s2 s3 s4."""
    k1, k2, p1, p2, k3, k4, k5, k6, s1, s2, s3, s4 = d
    x0, y0 = xy_d.unbind(-1)
    x, y = x0, y0
    for _ in range(OPENCV_UNDISTORT_ITERATIONS):
        r2 = x * x + y * y
        icdist = (1 + ((k6 * r2 + k5) * r2 + k4) * r2) / (1 + ((k3 * r2 + k2) * r2 + k1) * r2)
        dx = 2 * p1 * x * y + p2 * (r2 + 2 * x * x) + s1 * r2 + s2 * r2 * r2
        dy = p1 * (r2 + 2 * y * y) + 2 * p2 * x * y + s3 * r2 + s4 * r2 * r2
        x, y = (x0 - dx) * icdist, (y0 - dy) * icdist
    return torch.stack([x, y], dim=-1)


def released_ego_rays(height: int, width: int, device=None) -> torch.Tensor:
    """The released inference's ego query directions for a height x width ego image, pooled per token and expressed
    in the ego optical frame of the upright image (OpenCV axes): (height/16, width/16, 3) float32.

    What infer.py does, for every input: unit rays through cv2.undistortPoints at the latent pixels (x, y) of the
    sideways native Aria image with the released K (f 150, c 255.5 on the 448-pixel canvas, scaled by 1/8 to the
    latent grid) and coefficients (RELEASED_EGO_DISTORTION, float32 as infer.py passes them, read by OpenCV as a
    pinhole rational + thin-prism lens), the ray image turned upright with torch.rot90(k=-1), then the 2x2 latent
    pixels of each token averaged (the transformer's avg_pool3d; not renormalised). The native and upright frames
    differ by a quarter turn about z (upright x = -native y, upright y = native x; camera.rotated_90_pose), so these
    vectors rotated by the upright ego pose are the released world rays. Other canvas sizes scale the pixel grid to
    the released 448-pixel one (the same field of view)."""
    return _released_ego_rays(int(height), int(width)).to(device)


@functools.lru_cache(maxsize=8)
def _released_ego_rays(height: int, width: int) -> torch.Tensor:
    rows, cols = _cells(height, width, "ego image")
    f32 = lambda v: float(np.float32(v))   # noqa: E731 - infer.py hands OpenCV float32 K and coefficients
    d = tuple(f32(c) for c in RELEASED_EGO_DISTORTION)
    scale = RELEASED_EGO_CANVAS_PX / height                      # canvas pixels -> released canvas pixels
    f = f32(RELEASED_EGO_FOCAL_PX) / LATENT_PX                   # K / 8 of infer.py (float32, exact)
    c = f32(RELEASED_EGO_CENTRE_PX) / LATENT_PX
    # Native (sideways) latent grid: width/8 rows, height/8 columns; turned upright below.
    ys, xs = torch.meshgrid(torch.arange(width // LATENT_PX, dtype=torch.float64),
                            torch.arange(height // LATENT_PX, dtype=torch.float64), indexing="ij")
    xy_d = torch.stack([(xs * scale - c) / f, (ys * scale - c) / f], dim=-1)
    xy = _opencv_undistort_normalized(xy_d, d).to(torch.float32)          # cv2 returns float32
    native = F.normalize(torch.cat([xy, torch.ones_like(xy[..., :1])], dim=-1), dim=-1)
    upright = torch.rot90(native, k=-1, dims=(0, 1))                       # (height/8, width/8, 3)
    upright = torch.stack([-upright[..., 1], upright[..., 0], upright[..., 2]], dim=-1)   # native -> upright axes
    pooled = F.avg_pool2d(upright.permute(2, 0, 1)[None], 2)[0].permute(1, 2, 0)
    assert pooled.shape == (rows, cols, 3)
    return pooled.contiguous()


def gga_tables_from_geometry(ego_camera: CameraModel, world_T_ego: torch.Tensor, exo_camera: CameraModel,
                             world_T_exo: torch.Tensor, exo_depth_m: torch.Tensor,
                             ego_rays: str = "released") -> tuple[GgaTables, CanvasLayout]:
    """Direction tables of one clip.

    world_T_ego: (N, 4, 4) ego optical frame poses (OpenCV axes) per video frame; world_T_exo: (N, 4, 4) or (4, 4);
    exo_depth_m: (N, He, We) metric depth of the exo frames (NaN or <= 0: no reading). N = 4k + 1. Image sizes must
    be multiples of 16 (448x448 ego and 448x784 exo for the released weights). Float32 on the depth's device.
    ego_rays: 'released' (the released inference's fixed rays, `released_ego_rays`; only the ego camera's image size
    is used) or 'camera' (the ego camera model's own rays, averaged over each token's pixels).
    """
    if ego_rays not in EGO_RAYS:
        raise ValueError(f"ego_rays must be one of {list(EGO_RAYS)}, got {ego_rays!r}")
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

    # Ego query rays, pooled per cell in the ego optical frame, rotated into the world. 'camera': unit rays through
    # the ego lens model; pixels without a ray (outside a fisheye's image circle) contribute 0, like exo pixels
    # without depth.
    if ego_rays == "released":
        cell_rays = released_ego_rays(ego_camera.height, ego_camera.width, device)       # (r, ego_cols, 3)
    else:
        cell_rays = _pool(torch.nan_to_num(F.normalize(ego_camera.ray_grid(device=device), dim=-1), nan=0.0))
    query = torch.einsum("fij,hwj->fhwi", ego_T[:, :3, :3], cell_rays)                 # (F, r, ego_cols, 3)

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
