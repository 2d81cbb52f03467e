"""core/voxel_kernel.voxel_sums(sorted_runs=True): the window's records (each sorted, keys shared between them) reduced
through numpy's run-merging stable sort give exactly what the default torch sort gives (both stable: equal keys are
summed in the same order), for the cloud the moving fusion builds every frame."""
from __future__ import annotations

import torch

from egox_ros.core import voxel_kernel


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
