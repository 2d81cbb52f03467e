"""GGA ego query rays: the released inference's rays by default, checked against OpenCV called as infer.py calls it.

infer.py of DAVIAN-Robotics/EgoX (read, not copied) computes the ego query directions with cv2.undistortPoints at the
56 x 56 latent pixels of the sideways (native Aria) ego image, with the ego K of its data scaled by 1/8 and 12
hard-coded coefficients cast to float32, then normalises them, rotates them into the world with each kept frame's
world -> camera rotation (rays @ R), turns the ray image upright (torch.rot90, k = -1) and the transformer averages
2 x 2 latent pixels per token. The constants below are written out here, independently of the package.
"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from egox_ros.core.attention.directions import gga_tables_from_geometry, latent_frame_indices
from egox_ros.core.geometry.cameras import AriaFisheyeCamera, PinholeCamera, rotated_90_pose

cv2 = pytest.importorskip("cv2")

INFER_PY_COEFFS = [-0.02340373583137989, 0.09388021379709244, -0.06088035926222801, 0.0053304750472307205,
                   0.003342868760228157, -0.0006356257363222539, 0.0005087381578050554, -0.0004747129278257489,
                   -0.0011330085108056664, -0.00025734835071489215, 0.00009328465239377692, 0.00009424977179151028]
EGO_K = [[150.0, 0.0, 255.5], [0.0, 150.0, 255.5], [0.0, 0.0, 1.0]]     # ego_intrinsics of the released data
FRAMES = 9                                                              # video frames; latent frames 0, 4, 8


def _rotation(axis, deg: float) -> np.ndarray:
    axis = np.asarray(axis, np.float64) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    a = math.radians(deg)
    return np.eye(3) + math.sin(a) * k + (1 - math.cos(a)) * k @ k


def native_head_extrinsics() -> np.ndarray:
    """(FRAMES, 3, 4) world -> native Aria camera, as the released meta gives them: a head turning and moving."""
    out = []
    for i in range(FRAMES):
        r = _rotation([0.3, 1.0, 0.2], 10.0 + 4.0 * i) @ _rotation([1.0, 0.0, 0.0], 100.0)
        t = np.array([0.1 * i, -0.05 * i, 1.5])
        out.append(np.concatenate([r.T, (-r.T @ t)[:, None]], axis=1))   # world -> camera
    return np.stack(out)


def infer_py_query_rays(ego_extrinsic: np.ndarray, side: int = 448) -> torch.Tensor:
    """The released per-token world rays (F_latent, 28, 28, 3), as infer.py and custom_transformer.py compute them;
    for another ego canvas side, its latent pixels at the released positions of the same angle (x * 448 / side)."""
    h = w = side // 8
    k = torch.tensor(EGO_K)
    k[0, 0] *= 1 / 8
    k[1, 1] *= 1 / 8
    k[0, 2] *= 1 / 8
    k[1, 2] *= 1 / 8
    ys, xs = torch.meshgrid(torch.arange(h), torch.arange(w), indexing="ij")
    pixels = (torch.stack([xs, ys], dim=-1).view(-1, 2) * (448 / side)).numpy().reshape(-1, 1, 2).astype(np.float32)
    d = np.array([INFER_PY_COEFFS]).astype(np.float32)
    normalised = cv2.undistortPoints(pixels, k.numpy().astype(np.float32), d, R=np.eye(3), P=np.eye(3))
    xy = torch.from_numpy(normalised).squeeze(1)
    rays = torch.cat([xy, torch.ones_like(xy[:, :1])], dim=-1)
    rays = rays / torch.norm(rays, dim=-1, keepdim=True)
    extrinsic = torch.tensor(ego_extrinsic, dtype=torch.float32)
    extrinsic = torch.cat([extrinsic, torch.tensor([[[0, 0, 0, 1.0]]]).expand(len(extrinsic), -1, -1)], dim=1)
    rays = (rays @ extrinsic[::4, :3, :3]).view(-1, h, w, 3)
    rays = torch.rot90(rays, k=-1, dims=[1, 2])
    pooled = F.avg_pool3d(rays.permute(3, 0, 1, 2)[None], kernel_size=(1, 2, 2), stride=(1, 2, 2))
    return pooled[0].permute(1, 2, 3, 0)


def our_query_rays(ego_camera, ego_extrinsic: np.ndarray, **kwargs) -> torch.Tensor:
    """Our per-token world query directions (F_latent, rows, cols, 3) for the upright head camera of those
    extrinsics (exo: a 784-wide camera of the ego camera's height facing a wall)."""
    native = np.linalg.inv(np.concatenate([ego_extrinsic, np.tile([[[0, 0, 0, 1.0]]], (FRAMES, 1, 1))], axis=1))
    world_T_head = torch.from_numpy(rotated_90_pose(native))                   # the upright camera, as the bags
    h = ego_camera.height
    exo = PinholeCamera(784, h, 400.0, 400.0, 392.0, h / 2)
    world_T_exo = torch.eye(4, dtype=torch.float64)
    world_T_exo[2, 3] = -1.0
    tables, layout = gga_tables_from_geometry(ego_camera, world_T_head, exo, world_T_exo,
                                              torch.full((FRAMES, h, 784), 3.0), **kwargs)
    q = tables.query_dir.reshape(layout.frames, layout.rows, layout.exo_cols + layout.ego_cols, 3)
    return q[:, :, layout.exo_cols:]


def angles_deg(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    cos = (F.normalize(a.double(), dim=-1) * F.normalize(b.double(), dim=-1)).sum(-1).clamp(-1, 1)
    return torch.rad2deg(torch.acos(cos))


def test_default_ego_rays_are_the_released_rays_for_any_ego_camera():
    extrinsic = native_head_extrinsics()
    released = infer_py_query_rays(extrinsic)
    assert released.shape == (len(latent_frame_indices(FRAMES)), 28, 28, 3)
    # The rays do not depend on the configured ego camera (infer.py uses the same ones for every input).
    for ego in (PinholeCamera(448, 448, 224.0, 224.0, 223.5, 223.5),
                AriaFisheyeCamera(512, 512, 150.0, 150.0, 255.5, 255.5, tuple(INFER_PY_COEFFS))
                .with_size(448, 448).rotated_90()):
        ours = our_query_rays(ego, extrinsic)
        # float32 on both sides; pooled before (ours) or after (released) the rotation into the world.
        assert (ours - released).abs().max() < 1e-5
        angle = angles_deg(ours, released)
        assert angle.mean() < 0.01 and angle.max() < 0.05
        # Pooled, not renormalised, as the transformer's avg_pool3d: a token's direction is shorter than 1.
        assert torch.allclose(ours.norm(dim=-1), released.norm(dim=-1), atol=1e-5)


def test_the_true_aria_model_stays_available_and_is_far_from_the_released_rays():
    extrinsic = native_head_extrinsics()
    released = infer_py_query_rays(extrinsic)
    aria = AriaFisheyeCamera(512, 512, 150.0, 150.0, 255.5, 255.5, tuple(INFER_PY_COEFFS)).with_size(448, 448)
    ours = our_query_rays(aria.rotated_90(), extrinsic, ego_rays="camera")
    angle = angles_deg(ours, released)
    # The lens the coefficients describe is another lens than OpenCV's reading of them: measured 32.5 deg mean.
    assert angle.mean() > 20.0
    # The pinhole camera's own rays are also another model (this checks that 'camera' follows the camera).
    pinhole = our_query_rays(PinholeCamera(448, 448, 224.0, 224.0, 223.5, 223.5), extrinsic, ego_rays="camera")
    assert angles_deg(pinhole, ours).mean() > 5.0
    with pytest.raises(ValueError, match="ego_rays must be one of"):
        our_query_rays(aria, extrinsic, ego_rays="aria")


def test_other_canvas_sizes_sample_the_released_lens_at_the_same_angles():
    # A 224-pixel ego canvas: its latent pixel x stands for u = 16 x on the released 448 canvas (the same field of
    # view), i.e. cv2 at latent position 2 x of the released grid.
    extrinsic = native_head_extrinsics()
    expected = infer_py_query_rays(extrinsic, side=224)
    ours = our_query_rays(PinholeCamera(224, 224, 112.0, 112.0, 111.5, 111.5), extrinsic)
    assert ours.shape == expected.shape == (3, 14, 14, 3)
    assert (ours - expected).abs().max() < 1e-5
