"""GGA direction tables from geometry: canvas token order, frame sampling, pooling, and the geometric meaning."""
from __future__ import annotations

import math

import pytest
import torch

from egox_ros.core.attention.directions import CanvasLayout, gga_tables_from_geometry, latent_frame_indices
from egox_ros.core.attention.gga import gga_bias_dense
from egox_ros.core.geometry.cameras import PinholeCamera


def test_latent_frames_and_canvas_layout():
    assert latent_frame_indices(49) == list(range(0, 49, 4)) and len(latent_frame_indices(49)) == 13
    with pytest.raises(ValueError, match="4k \\+ 1"):
        latent_frame_indices(48)
    released = CanvasLayout(13, 28, 49, 28)
    assert released.length == 28_028
    assert int(released.is_ego().sum()) == 13 * 28 * 28 == 10_192
    is_ego = released.is_ego().reshape(13, 28, 77)
    assert not is_ego[:, :, :49].any() and is_ego[:, :, 49:].all()  # each canvas row: exo cells, then ego cells
    assert released.frame_of().reshape(13, -1).eq(torch.arange(13)[:, None]).all()


def _pose(tz: float = 0.0, yaw_deg: float = 0.0) -> torch.Tensor:
    a = math.radians(yaw_deg)
    m = torch.eye(4, dtype=torch.float64)
    m[0, 0], m[0, 2], m[2, 0], m[2, 2] = math.cos(a), math.sin(a), -math.sin(a), math.cos(a)
    m[2, 3] = tz
    return m


def test_a_shared_viewpoint_biases_each_ego_query_towards_the_exo_cell_it_sees():
    # Exo and ego are the same 64x64 camera at the same place, looking at a wall 3 m away: the ego cell (r, c) sees
    # what the exo cell (r, c) sees, so that exo key has the largest bias of its row, near log(1 + 3).
    cam = PinholeCamera(64, 64, 40.0, 40.0, 31.5, 31.5)
    frames = 5
    poses = torch.stack([_pose() for _ in range(frames)])
    depth = torch.full((frames, 64, 64), 3.0)
    tables, layout = gga_tables_from_geometry(cam, poses, cam, poses, depth, ego_rays="camera")   # this camera's rays
    assert (layout.frames, layout.rows, layout.exo_cols, layout.ego_cols) == (2, 4, 4, 4)
    bias = gga_bias_dense(tables).reshape(2, 4, 8, 2, 4, 8)       # (qf, qr, qc, kf, kr, kc)
    for r in range(4):
        for c in range(4):
            row = bias[0, r, 4 + c, 0]                               # ego query (frame 0, r, c) vs keys of frame 0
            best = divmod(int(row[:, :4].argmax()), 4)
            assert best == (r, c)
            assert row[r, c] > math.log(1 + 3.0 * 0.97)  # measured c = 0.988: pooled, unnormalised vectors
            assert row[:, 4:].abs().max() < 1e-5                     # ego keys: no bias
    assert bias[:, :, :4].abs().max() == 0                            # exo query rows: no bias
    # Pooled directions are means of unit vectors, not renormalised: slightly shorter than 1 across a cell.
    norms = tables.query_dir[tables.query_is_ego].norm(dim=-1)
    assert (norms < 1.0).all() and (norms > 0.95).all()


def test_key_directions_follow_the_ego_centre_of_the_query_frame():
    cam = PinholeCamera(32, 32, 20.0, 20.0, 15.5, 15.5)
    frames = 5                                                    # latent frames 0 and 1 (video frames 0 and 4)
    ego = torch.stack([_pose(tz=0.0 if k < 4 else -2.0) for k in range(frames)])  # frame 4: 2 m further back
    exo = _pose()
    depth = torch.full((frames, 32, 32), 2.0)
    tables, layout = gga_tables_from_geometry(cam, ego, cam, exo, depth)
    kd = tables.key_dir.reshape(2, 2, 2, 4, 3)                    # (query frame, key frame, rows, cols, xyz)
    # The centre-ish exo cells seen from 2 m back point more along +z than from the exo camera itself.
    assert (kd[1, 0, :, :2, 2] > kd[0, 0, :, :2, 2]).all()
    # Invalid depth contributes nothing: a frame without depth has zero key directions.
    depth[4] = float("nan")
    tables, _ = gga_tables_from_geometry(cam, ego, cam, exo, depth)
    assert tables.key_dir.reshape(2, 2, 2, 4, 3)[:, 1].abs().max() == 0


def test_bad_geometry_raises_clear_errors():
    cam = PinholeCamera(32, 32, 20.0, 20.0, 15.5, 15.5)
    poses = torch.stack([_pose()] * 5)
    with pytest.raises(ValueError, match="multiple of 16"):
        gga_tables_from_geometry(PinholeCamera(30, 32, 20.0, 20.0, 15, 15.5), poses, cam, poses,
                                 torch.ones(5, 32, 32))
    with pytest.raises(ValueError, match="one pose per frame"):
        gga_tables_from_geometry(cam, poses[:4], cam, poses, torch.ones(5, 32, 32))
    with pytest.raises(ValueError, match="exo depth"):
        gga_tables_from_geometry(cam, poses, cam, poses, torch.ones(5, 16, 32))


def test_ego_rays_outside_a_fisheye_image_circle_contribute_nothing():
    # An Aria ego camera whose image corners lie outside its image circle: the tables build, finite, and the corner
    # cells' query directions are shorter than unit (part of their pixels have no ray).
    from egox_ros.core.geometry.cameras import AriaFisheyeCamera
    ego = AriaFisheyeCamera(width=64, height=64, fx=14.0, fy=14.0, cx=31.5, cy=31.5)
    exo = PinholeCamera(width=96, height=64, fx=80.0, fy=80.0, cx=47.5, cy=31.5)
    rays = ego.ray_grid()
    assert torch.isnan(rays).any()                      # the corners are beyond 90 degrees
    n = 5
    poses = torch.eye(4, dtype=torch.float64).expand(n, 4, 4)
    depth = torch.full((n, 64, 96), 2.0)
    tables, layout = gga_tables_from_geometry(ego, poses, exo, poses, depth, ego_rays="camera")
    q = tables.query_dir.reshape(layout.frames, layout.rows, layout.exo_cols + layout.ego_cols, 3)[..., layout.exo_cols:, :]
    assert torch.isfinite(q).all()
    norms = q.norm(dim=-1)
    assert norms[0, 0, 0] < 0.99 and norms[0, 2, 2] > 0.9
