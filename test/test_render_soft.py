"""Soft disc splats with front-to-back alpha compositing (render_points_soft), checked against hand computations.

Conventions under test (egox_ros/core/geometry/render.py module docstring): alpha = 1 - d^2 / r^2 for pixel-centre
distance d < r (pixels), the points_per_pixel nearest composited front to back over black, rgb truncated to uint8 after
adding 1e-3, center_offset_px shifting the disc centre to u - offset. Tolerance on hand-computed colours: 1 unit (uint8
truncation of float32 sums).
"""

import math

import numpy as np
import pytest
import torch

from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.render import PointCloud, render_points, render_points_soft

F = 100.0


def _camera(w: int = 16, h: int = 12) -> PinholeCamera:
    return PinholeCamera(width=w, height=h, fx=F, fy=F, cx=0.0, cy=0.0)


def _at(u: float, v: float, z: float) -> list[float]:
    """The camera-frame point that projects to pixel (u, v) at depth z (identity pose: world == camera)."""
    return [u * z / F, v * z / F, z]


def _cloud(points, colors, device="cpu") -> PointCloud:
    return PointCloud(torch.tensor(points, dtype=torch.float32, device=device),
                      torch.tensor(colors, dtype=torch.uint8, device=device))


EYE = torch.eye(4, dtype=torch.float64)
BACKEND = "torch"


@pytest.fixture(params=["torch", "kernel"], autouse=True)
def backend(request):
    """Every test runs with both compositors: the torch slabs (the reference) and the compiled kernel."""
    global BACKEND
    BACKEND = request.param
    yield request.param
    BACKEND = "torch"


def _soft(cloud, camera, pose, **kw):
    return render_points_soft(cloud, camera, pose, backend=kw.pop("backend", BACKEND), **kw)


def _render(cloud, camera=None, **kw):
    kw.setdefault("center_offset_px", 0.0)
    return _soft(cloud, camera or _camera(), EYE, **kw)


def test_single_disc_alpha_and_radius():
    r = 3.0
    view = _render(_cloud([_at(7, 5, 2.0)], [[200, 100, 50]]), radius_px=r)
    rgb, mask = view.rgb.numpy().astype(int), view.mask.numpy()
    for v in range(12):
        for u in range(16):
            d2 = (u - 7) ** 2 + (v - 5) ** 2
            if d2 < r * r:
                a = 1.0 - d2 / (r * r)
                assert mask[v, u]
                expected = [math.floor(c * a + 1e-3) for c in (200, 100, 50)]
                expected = [0, 0, 0] if all(e < 2.55 for e in expected) else expected
                assert np.abs(rgb[v, u] - expected).max() <= 1, (u, v)
                assert view.point_index[v, u] == 0 and view.depth_m[v, u] == pytest.approx(2.0)
            else:   # on or beyond the rim (d == r has alpha 0 and is not covered, as PyTorch3D's strict test)
                assert not mask[v, u] and (rgb[v, u] == 0).all(), (u, v)
                assert view.point_index[v, u] == 1 and view.depth_m[v, u] == 0.0
    assert (rgb[5, 7] == [200, 100, 50]).all()          # the centre is opaque: the exact colour


def test_two_overlapping_discs_blend_nearer_first():
    # Near red disc centred at (6, 5), far green disc at (8, 5): pixel (7, 5) is at d = 1 from both.
    r = 2.0
    pts = [_at(8, 5, 3.0), _at(6, 5, 1.5)]   # the far one first in the cloud: order in the cloud must not matter
    view = _render(_cloud(pts, [[0, 240, 0], [240, 0, 0]]), radius_px=r)
    a_near = a_far = 1.0 - 1.0 / 4.0
    expected = np.array([240 * a_near, 240 * a_far * (1.0 - a_near), 0.0])
    assert np.abs(view.rgb[5, 7].numpy().astype(float) - np.floor(expected + 1e-3)).max() <= 1
    assert int(view.point_index[5, 7]) == 1 and float(view.depth_m[5, 7]) == pytest.approx(1.5)
    # Swap the depths: now green is in front.
    pts = [_at(8, 5, 1.0), _at(6, 5, 1.5)]
    view = _render(_cloud(pts, [[0, 240, 0], [240, 0, 0]]), radius_px=r)
    expected = np.array([240 * a_near * (1.0 - a_far), 240 * a_far, 0.0])
    assert np.abs(view.rgb[5, 7].numpy().astype(float) - np.floor(expected + 1e-3)).max() <= 1
    assert int(view.point_index[5, 7]) == 0


def test_three_points_one_pixel_hand_composite():
    # Three points on pixel (4, 4) at sub-pixel offsets (alphas 1 - d^2/r^2), depths 1, 2, 3.
    r = 2.0
    offs = [(0.5, 0.0), (0.0, 1.0), (1.0, 1.0)]
    pts = [_at(4 + du, 4 + dv, z) for (du, dv), z in zip(offs, (3.0, 1.0, 2.0))]
    cols = [[90, 0, 0], [0, 90, 0], [0, 0, 90]]
    view = _render(_cloud(pts, cols), radius_px=r)
    alphas = {z: 1.0 - (du * du + dv * dv) / (r * r) for (du, dv), z in zip(offs, (3.0, 1.0, 2.0))}
    order = sorted(zip((3.0, 1.0, 2.0), cols))        # nearest first
    acc, t = np.zeros(3), 1.0
    for z, c in order:
        acc += t * alphas[z] * np.array(c, float)
        t *= 1.0 - alphas[z]
    assert np.abs(view.rgb[4, 4].numpy().astype(float) - np.floor(acc + 1e-3)).max() <= 1
    assert int(view.point_index[4, 4]) == 1


def test_points_per_pixel_limit():
    # Five coincident-centre points with alpha 0.75 at pixel (3, 3): only the K nearest count.
    r = 2.0
    pts = [_at(4, 3, 1.0 + k) for k in range(5)]
    cols = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 0], [0, 200, 200]]
    for k_max in (1, 2, 5):
        view = _render(_cloud(pts, cols), radius_px=r, points_per_pixel=k_max, min_transmittance=0.0)
        acc, t = np.zeros(3), 1.0
        for c in cols[:k_max]:
            acc += t * 0.75 * np.array(c, float)
            t *= 0.25
        assert np.abs(view.rgb[3, 3].numpy().astype(float) - np.floor(acc + 1e-3)).max() <= 1, k_max
    one = _render(_cloud(pts, cols), radius_px=r, points_per_pixel=1)
    assert tuple(one.rgb[3, 3].tolist()) == (150, 0, 0)


def test_empty_pixels_black_and_empty_cloud():
    view = _render(PointCloud.empty(), radius_px=5.0)
    assert not view.mask.any() and (view.rgb == 0).all() and (view.depth_m == 0).all()
    assert (view.point_index == 0).all()
    behind = _render(_cloud([[0.1, 0.05, -1.0]], [[255, 255, 255]]), radius_px=5.0)
    assert not behind.mask.any() and (behind.rgb == 0).all()


def test_min_distance_m():
    pts = [_at(5, 5, 0.3), _at(5, 5, 2.0)]
    cols = [[255, 0, 0], [0, 255, 0]]
    view = _render(_cloud(pts, cols), radius_px=2.0, min_distance_m=0.5)
    assert int(view.point_index[5, 5]) == 1 and tuple(view.rgb[5, 5].tolist()) == (0, 255, 0)
    near = _render(_cloud(pts, cols), radius_px=2.0)
    assert int(near.point_index[5, 5]) == 0 and tuple(near.rgb[5, 5].tolist()) == (255, 0, 0)


def test_center_offset_half_pixel():
    # The released renderer's convention: a point projecting to u is centred at u - 0.5 in our pixel grid.
    view = _render(_cloud([_at(6.5, 4.5, 1.0)], [[100, 100, 100]]), radius_px=1.0, center_offset_px=0.5)
    assert tuple(view.rgb[4, 6].tolist()) == (100, 100, 100)
    assert int(view.mask.sum()) == 1


def _random_scene(n=3000, seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    z = 1.0 + 3.0 * torch.rand(n, generator=g)
    z[: n // 10] = 2.0                        # many equal depths: ties go to the lowest index
    u = torch.rand(n, generator=g) * 60 - 5
    v = torch.rand(n, generator=g) * 50 - 5
    pts = torch.stack([u * z / F, v * z / F, z], dim=1)
    cols = torch.randint(0, 256, (n, 3), generator=g, dtype=torch.uint8)
    return PointCloud(pts.to(device), cols.to(device)), PinholeCamera(width=48, height=40, fx=F, fy=F, cx=0.0, cy=0.0)


def _reference(cloud, camera, radius, k_max, offset=0.5):
    """Independent per-pixel loop in numpy float64 (all K, no transmittance cut-off)."""
    p = cloud.points_world.cpu().numpy().astype(np.float64)
    c = cloud.colors.cpu().numpy().astype(np.float64)
    z = p[:, 2]
    u = F * p[:, 0] / z + camera.cx - offset
    v = F * p[:, 1] / z + camera.cy - offset
    out = np.zeros((camera.height, camera.width, 3))
    idx = np.full((camera.height, camera.width), len(p))
    for y in range(camera.height):
        for x in range(camera.width):
            d2 = (u - x) ** 2 + (v - y) ** 2
            cand = np.nonzero((d2 < radius * radius) & (z >= 0))[0]
            cand = cand[np.lexsort((cand, z[cand]))][:k_max]
            t = 1.0
            for i in cand:
                a = 1.0 - d2[i] / (radius * radius)
                out[y, x] += t * a * c[i]
                t *= 1.0 - a
            if len(cand):
                idx[y, x] = cand[0]
    return out, idx


def test_matches_independent_reference_and_chunking():
    cloud, cam = _random_scene()
    ref, ref_idx = _reference(cloud, cam, 3.5, 6)
    whole = _soft(cloud, cam, EYE, radius_px=3.5, points_per_pixel=6, min_transmittance=0.0)
    assert np.array_equal(whole.point_index.numpy(), ref_idx)
    assert np.array_equal(whole.mask.numpy(), ref_idx < len(cloud))
    diff = np.abs(whole.rgb.numpy().astype(float) - np.floor(ref + 1e-3))
    diff[(np.floor(ref + 1e-3) < 2.55).all(-1)] = 0     # near-black pixels are set to black, as released
    assert diff.max() <= 1
    for chunk in (1, 7, 250):
        part = _soft(cloud, cam, EYE, radius_px=3.5, points_per_pixel=6, min_transmittance=0.0,
                                  chunk_points=chunk)
        assert torch.equal(part.point_index, whole.point_index) and torch.equal(part.mask, whole.mask)
        assert torch.equal(part.depth_m, whole.depth_m)
        assert (part.rgb.int() - whole.rgb.int()).abs().max() <= 1    # float32 sums in another grouping
    # The default transmittance cut-off changes colours by at most 1 unit.
    cut = _soft(cloud, cam, EYE, radius_px=3.5, points_per_pixel=6)
    assert (cut.rgb.int() - whole.rgb.int()).abs().max() <= 1 and torch.equal(cut.mask, whole.mask)


def test_soft_mask_against_hard_and_argument_checks():
    cloud, cam = _random_scene(n=500, seed=3)
    soft = _soft(cloud, cam, EYE, radius_px=0.5, center_offset_px=0.0)
    hard = render_points(cloud, cam, EYE, point_radius_px=0)
    # A radius-0.5 disc covers only the nearest pixel (unless the projection sits exactly on a pixel edge).
    assert (soft.mask & ~hard.mask).sum() == 0
    with pytest.raises(ValueError):
        _soft(cloud, cam, EYE, radius_px=0.0)
    with pytest.raises(ValueError):
        _soft(cloud, cam, EYE, points_per_pixel=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_matches_cpu():
    cloud, cam = _random_scene(n=5000, seed=1)
    cpu = _soft(cloud, cam, EYE, radius_px=3.0)
    gpu = _soft(cloud.to("cuda"), cam, EYE, radius_px=3.0, backend="auto")   # the torch code on CUDA
    assert torch.equal(gpu.point_index.cpu(), cpu.point_index) and torch.equal(gpu.mask.cpu(), cpu.mask)
    assert (gpu.rgb.cpu().int() - cpu.rgb.int()).abs().max() <= 1


def test_transmittance_cut_off_per_point_whatever_the_slab():
    # Four coincident-centre points with alpha 0.75 at pixel (3, 3): transmittance 1, 0.25, 0.0625, ... in front of
    # them. With min_transmittance 0.1 the pixel takes the first two only (0.0625 <= 0.1 stops it), whether the points
    # share a depth slab or not; with 0 it takes all four.
    r = 2.0
    pts = [_at(4, 3, 1.0 + k) for k in range(4)]
    cols = [[200, 0, 0], [0, 200, 0], [0, 0, 200], [200, 200, 200]]
    expected = {0.1: np.array([150.0, 37.5, 0.0]),
                0.0: np.array([150.0 + 0.25 ** 3 * 0.75 * 200, 37.5 + 0.25 ** 3 * 0.75 * 200,
                               0.0625 * 0.75 * 200 + 0.25 ** 3 * 0.75 * 200])}
    for cut, exp in expected.items():
        for chunk in (None, 1, 2, 3):
            view = _render(_cloud(pts, cols), radius_px=r, min_transmittance=cut, chunk_points=chunk)
            assert np.abs(view.rgb[3, 3].numpy().astype(float) - np.floor(exp + 1e-3)).max() <= 1, (cut, chunk)
            assert int(view.point_index[3, 3]) == 0 and float(view.depth_m[3, 3]) == pytest.approx(1.0)


def test_slab_size_does_not_change_a_large_render():
    # Many points over few pixels (slabs of 1 to all points; pair keys pixel * slab + rank stay in int32).
    cloud, cam = _random_scene(n=20000, seed=5)
    whole = _soft(cloud, cam, EYE, radius_px=5.0, chunk_points=20000)
    for chunk in (1, 97, 1024):
        part = _soft(cloud, cam, EYE, radius_px=5.0, chunk_points=chunk)
        assert torch.equal(part.point_index, whole.point_index) and torch.equal(part.mask, whole.mask)
        assert torch.equal(part.depth_m, whole.depth_m)
        assert (part.rgb.int() - whole.rgb.int()).abs().max() <= 1    # float32 sums in another grouping
