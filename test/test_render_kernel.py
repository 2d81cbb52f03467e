"""The compiled soft-splat kernel (core/geometry/soft_kernel.py) against the torch slab code it replaces on the CPU.

The torch code (render_points_soft(backend='torch')) is the reference: test/test_render_soft.py checks both against
hand computations and an independent per-pixel loop. Here the two compositors render the same larger scenes, with
radii whose disc rows span one, two and three 64-pixel words of the kernel's live bitmask, points off every image
edge, many equal depths, both pixel-centre conventions, K limits and transmittance cut-offs. Tolerances: mask,
nearest point and its depth identical; colours within 1 unit (float32 transmittance as a running product in the
kernel, as sums of float64 logs in the torch code, before truncation to uint8), and on at most 0.1 % of pixels.
The kernel on several threads (bands of rows) against itself on one: identical, as every pixel takes the same
float32 operations in the same order whichever thread owns its row.
"""

import numpy as np
import pytest
import torch

from egox_ros.core.geometry import soft_kernel
from egox_ros.core.geometry.cameras import FisheyeCamera, PinholeCamera
from egox_ros.core.geometry.render import PointCloud, _project_for_soft, pose_float64, render_points_soft

EYE = torch.eye(4, dtype=torch.float64)


def _scene(n, w, h, seed, margin):
    """n points over the left 60 % of the image and `margin` pixels beyond its edges (the right part stays empty),
    depths 1-4 m with a tenth at exactly 2 m."""
    g = torch.Generator().manual_seed(seed)
    z = 1.0 + 3.0 * torch.rand(n, generator=g)
    z[: n // 10] = 2.0
    u = torch.rand(n, generator=g) * (0.6 * w + margin) - margin
    v = torch.rand(n, generator=g) * (h + 2 * margin) - margin
    f = 100.0
    pts = torch.stack([u * z / f, v * z / f, z], dim=1)
    cols = torch.randint(0, 256, (n, 3), generator=g, dtype=torch.uint8)
    return PointCloud(pts, cols), PinholeCamera(width=w, height=h, fx=f, fy=f, cx=0.0, cy=0.0)


def _same(a, b):
    assert torch.equal(a.mask, b.mask)
    assert torch.equal(a.point_index, b.point_index)
    assert torch.equal(a.depth_m, b.depth_m)
    diff = (a.rgb.int() - b.rgb.int()).abs()
    assert int(diff.max()) <= 1
    assert int((diff > 0).any(-1).sum()) <= max(1, a.mask.numel() // 1000)


def test_kernel_available():
    # numba is a declared dependency (requirements.txt): the fast path must be there, not silently the torch one.
    assert soft_kernel.available()


@pytest.mark.parametrize("radius,k_max,cut,offset", [
    (5.0, 20, 1.0 / 4096.0, 0.5),       # the released prior's settings
    (3.5, 6, 0.0, 0.0),                 # fractional radius, every point of K composited
    (1.0, 1, 1.0 / 4096.0, 0.5),        # nearest point only
    (20.0, 64, 1.0 / 4096.0, 0.5),      # disc rows over two 64-pixel words
    (32.0, 8, 0.01, 0.25),              # the largest radius prior.splat_radius_px allows: up to three words
])
def test_kernel_matches_torch(radius, k_max, cut, offset):
    cloud, cam = _scene(6000, 150, 90, seed=int(radius * 10), margin=int(radius) + 3)
    kw = dict(radius_px=radius, points_per_pixel=k_max, min_transmittance=cut, center_offset_px=offset)
    ref = render_points_soft(cloud, cam, EYE, backend="torch", **kw)
    out = render_points_soft(cloud, cam, EYE, backend="kernel", **kw)
    assert ref.mask.any() and not ref.mask.all()
    _same(out, ref)


@pytest.mark.parametrize("radius,k_max", [(5.0, 20), (1.0, 1), (32.0, 8)])
def test_kernel_on_several_threads_draws_the_same_image(radius, k_max):
    """Discs that cross the bands' edges (radius 32: up to 65 rows), points beyond every edge."""
    cloud, cam = _scene(20000, 150, 90, seed=7, margin=int(radius) + 3)
    kw = dict(radius_px=radius, points_per_pixel=k_max, backend="kernel")
    one = render_points_soft(cloud, cam, EYE, threads=1, **kw)
    for threads in (2, 3, 8):
        many = render_points_soft(cloud, cam, EYE, threads=threads, **kw)
        for name in ("rgb", "mask", "depth_m", "point_index"):
            assert torch.equal(getattr(one, name), getattr(many, name)), (threads, name)
    assert soft_kernel._row_bands(np.linspace(0, 100, 5000, dtype=np.float32), 120, 3) == [(0, 33), (33, 67),
                                                                                             (67, 120)]
    for bad in (0, 1.5):
        with pytest.raises(ValueError, match="threads"):
            render_points_soft(cloud, cam, EYE, threads=bad, **kw)


@pytest.mark.parametrize("offset,min_distance_m", [(0.5, 0.0), (0.0, 1.5), (0.25, 0.35)])
def test_compiled_pinhole_projection_keeps_the_same_points_at_the_same_pixels(offset, min_distance_m):
    """The kernel path's one-pass projection against the torch code it stands in for (undistorted pinhole): the
    same points kept, the same float32 pixels and depths (the same operations in the same order), with a turned and
    moved camera, points behind it, at its centre and beyond every edge."""
    cloud, cam = _scene(20000, 150, 90, seed=3, margin=9)
    extra = torch.tensor([[0.0, 0.0, 0.0], [0.1, 0.1, -1.0], [0.0, 0.0, 1e-7], [1e3, 1e3, 1e-3]])
    cloud = PointCloud(torch.cat([cloud.points_world, extra]),
                       torch.cat([cloud.colors, torch.zeros((4, 3), dtype=torch.uint8)]))
    pose = torch.eye(4, dtype=torch.float64)
    pose[:3, :3] = torch.tensor([[0.995, -0.0998, 0.0], [0.0998, 0.995, 0.0], [0.0, 0.0, 1.0]], dtype=torch.float64)
    pose[:3, 3] = torch.tensor([0.05, -0.1, -0.3], dtype=torch.float64)
    camera_T_world = torch.linalg.inv(pose_float64(pose))
    ref = _project_for_soft(cloud, cam, camera_T_world, offset, 5.0, min_distance_m)
    got = soft_kernel.project_pinhole(cloud.points_world.numpy(), camera_T_world.numpy(), cam.fx, cam.fy, cam.cx,
                                      cam.cy, offset, 5.0, cam.width, cam.height, min_distance_m)
    assert 1000 < len(got[0]) < len(cloud)
    for name, a, b in zip(("index", "u", "v", "z"), ref, got):
        assert torch.equal(a, torch.from_numpy(b)), name


def test_kernel_matches_torch_through_a_fisheye_and_a_pose():
    # A camera model with distortion and a non-trivial pose: the kernel gets the same projected centres.
    cloud, _ = _scene(8000, 200, 160, seed=7, margin=20)
    cam = FisheyeCamera(width=96, height=80, fx=40.0, fy=40.0, cx=47.5, cy=39.5, distortion=(0.05, -0.01, 0.0, 0.0))
    pose = torch.tensor([[0.96, -0.28, 0.0, 0.3], [0.28, 0.96, 0.0, -0.2], [0.0, 0.0, 1.0, -0.5], [0, 0, 0, 1.0]],
                        dtype=torch.float64)
    ref = render_points_soft(cloud, cam, pose, radius_px=4.0, min_distance_m=1.2, backend="torch")
    out = render_points_soft(cloud, cam, pose, radius_px=4.0, min_distance_m=1.2, backend="kernel")
    assert ref.mask.float().mean() > 0.2
    _same(out, ref)


def test_auto_uses_the_kernel_on_cpu_and_backend_checks():
    cloud, cam = _scene(500, 40, 30, seed=1, margin=4)
    auto = render_points_soft(cloud, cam, EYE, backend="auto")
    _same(auto, render_points_soft(cloud, cam, EYE, backend="kernel"))
    with pytest.raises(ValueError, match="backend"):
        render_points_soft(cloud, cam, EYE, backend="numba")
    with pytest.raises(ValueError, match="min_transmittance"):
        render_points_soft(cloud, cam, EYE, min_transmittance=1.0)
    empty = render_points_soft(PointCloud.empty(), cam, EYE, backend="kernel")
    assert not empty.mask.any() and (empty.point_index == 0).all() and (empty.rgb == 0).all()


def test_warm_up_compiles():
    assert soft_kernel.warm_up()
    rgb, mask, index, depth = soft_kernel.render(
        np.array([6.0], np.float32), np.array([6.0], np.float32), np.array([[90.0, 60.0, 30.0]], np.float32),
        np.array([0], np.int32), np.array([2.0], np.float32), 1, 1.5, 20, 0.0, 4, 4, 4)
    # One disc of radius 1.5 centred on pixel (2, 2) of the 4x4 image (padded by 4): its centre opaque, 4-neighbours
    # at alpha 1 - 1/2.25, diagonals at 1 - 2/2.25.
    assert mask.sum() == 9 and tuple(rgb[2, 2]) == (90, 60, 30) and index[2, 2] == 0 and depth[2, 2] == 2.0
    assert tuple(rgb[2, 3]) == tuple(int(c * (1 - 1 / 2.25) + 1e-3) for c in (90, 60, 30))


def test_a_second_process_loads_the_kernels_from_the_disk_cache(tmp_path):
    """Each process that compiles a kernel again adds an entry to numba's disk cache: a kernel whose cache key
    changes from process to process (a closure's pickled cells) was compiled at every start and grew the cache by
    75 kB each time.  Two processes warm both kernel modules up into an empty cache; the second adds nothing and
    rewrites nothing."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, NUMBA_CACHE_DIR=str(tmp_path))
    code = ("from egox_ros.core.geometry import soft_kernel, voxel_kernel\n"
            "assert soft_kernel.warm_up() and voxel_kernel.warm_up()\n")

    def cache_files():
        return {p: p.stat().st_mtime_ns for p in tmp_path.rglob("*") if p.is_file()}

    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    first = cache_files()
    assert sum(p.suffix == ".nbc" for p in first) >= 8          # every kernel of both modules was cached
    subprocess.run([sys.executable, "-c", code], env=env, check=True, timeout=300)
    assert cache_files() == first
