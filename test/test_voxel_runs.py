"""The moving fusion's per-frame cloud on the CPU: core/voxel_kernel.voxel_sums(sorted_runs=True) (the window's records,
each sorted, keys shared between them, reduced through numpy's run-merging stable sort) gives exactly what the default
torch sort gives (both stable: equal keys are summed in the same order), and voxel_means exactly the torch code's
points and colours."""
from __future__ import annotations

import torch

from egox_ros.core.geometry import voxel_kernel


def test_sorted_runs_reduce_exactly_as_the_default_sort():
    assert voxel_kernel.available()
    g = torch.Generator().manual_seed(1)
    pool = torch.randint(-(1 << 40), 1 << 40, (30_000,), generator=g)
    runs = [torch.unique(pool[torch.randint(0, 30_000, (n,), generator=g)]) for n in (20_000, 25_000, 1, 18_000)]
    keys = torch.cat(runs)
    n = keys.shape[0]
    offset = torch.rand((n, 3), generator=g) * 0.005
    color = torch.randint(0, 256, (n, 3), generator=g, dtype=torch.int32)
    count = torch.randint(1, 9, (n,), generator=g, dtype=torch.int32)
    fast = voxel_kernel.voxel_sums(keys, offset, color, count, sorted_runs=True)
    ref = voxel_kernel.voxel_sums(keys, offset, color, count)
    assert len(fast[0]) < n                                      # the runs share keys: sums really happen
    for a, b in zip(fast, ref):
        assert torch.equal(a, b)


def test_voxel_means_match_the_torch_code_exactly():
    from egox_ros.core.geometry.fusion import _voxel_cloud, _voxel_cloud_torch, _voxelize
    from egox_ros.core.geometry.render import PointCloud
    g = torch.Generator().manual_seed(2)
    points = (torch.rand((60_000, 3), generator=g) - 0.5) * torch.tensor([8.0, 3.0, 5.0])    # negative keys too
    colors = torch.randint(0, 256, (60_000, 3), generator=g, dtype=torch.uint8)
    for voxel_size_m in (0.01, 0.05):
        grid = _voxelize(PointCloud(points, colors), voxel_size_m)
        assert int(grid.count.max()) > 1                        # means of several points, rounding really happens
        fast, ref = _voxel_cloud(grid, voxel_size_m), _voxel_cloud_torch(grid, voxel_size_m)
        assert torch.equal(fast.points_world, ref.points_world) and torch.equal(fast.colors, ref.colors)


def test_reliable_depth_kernel_matches_the_torch_code_exactly():
    """The compiled depth-edge test against the torch code it replaces on the CPU (max / min / mean windows, the
    mean summed in avg_pool2d's order): real TUM depth with its holes, a +inf and a negative reading, four window
    and stride settings; not one pixel differs."""
    from egox_ros.core.geometry import fusion
    from egox_ros.tools import tum
    seq = tum.TumSequence("fr1_rpy_60")
    for i in (0, 30, 59):
        d = torch.from_numpy(seq[i].depth_m).to(torch.float32)
        d[10, 10], d[20, 20] = float("inf"), -1.0
        for window_px, stride in ((5, 2), (5, 1), (3, 1), (7, 3)):
            fast = fusion.reliable_depth(d, window_px, 0.1, stride)
            ref = fusion.reliable_depth(d, window_px, 0.1, stride, compiled=False)
            assert fast.shape == ref.shape and torch.equal(fast, ref), (i, window_px, stride)
            assert 0.3 < float(fast.float().mean()) < 0.99                  # edges and holes go, most stays
