"""Compiled CPU kernels (numba) of the fusion: sum the rows of equal keys into sorted unique voxels, their mean
points and colours (``voxel_means``), the depth-edge test before lifting (``reliable_depth``), the lifting of a
frame's pixels into voxel records (``lift_voxel_records``), and the static camera's running average
(``static_average_update``) and its cloud (``static_cloud``).

``fusion._Voxels.reduce`` did this with ``torch.unique(sorted=True, return_inverse=True)`` and three ``index_add_``.
Here the keys are sorted by torch (a stable radix sort) and one pass sums the runs, with the same keys, counts and
colour sums and the offsets summed in the same order. For a window's ~140 k keys (2-core Xeon, one thread, load
~10): 3.2 vs 5.0 ms of CPU, 5 vs 26 ms wall (torch.unique suffers more from the competing load). A k-way merge of
the window's already sorted per-frame records was slower still (6.2 ms CPU).
Compiled on first use and cached like core/geometry/soft_kernel.py; ``available()`` False (no numba) keeps the torch
code.
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
import torch

_KERNEL = None
_IMPORT_ERROR: str | None = None


def _build():
    import numba

    @numba.njit(cache=True, nogil=True)
    def run_sums(sorted_keys, perm, offset, color, count):
        n = sorted_keys.shape[0]
        m = 0
        for i in range(n):
            if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
                m += 1
        keys = np.empty(m, np.int64)
        offset_sum = np.zeros((m, 3), np.float32)
        color_sum = np.zeros((m, 3), np.int32)
        count_sum = np.zeros(m, np.int32)
        j = -1
        for i in range(n):
            if i == 0 or sorted_keys[i] != sorted_keys[i - 1]:
                j += 1
                keys[j] = sorted_keys[i]
            p = perm[i]
            for c in range(3):
                offset_sum[j, c] += offset[p, c]
                color_sum[j, c] += color[p, c]
            count_sum[j] += count[p]
        return keys, offset_sum, color_sum, count_sum

    @numba.njit(cache=True, nogil=True)
    def means(keys, offset_sum, color_sum, count, voxel_size, bits, offset):
        m = keys.shape[0]
        points = np.empty((m, 3), np.float32)
        colors = np.empty((m, 3), np.uint8)
        mask = (1 << bits) - 1
        for j in range(m):
            key = keys[j]
            q = ((key >> (2 * bits)) & mask, (key >> bits) & mask, key & mask)
            n = np.float32(count[j])
            for c in range(3):
                points[j, c] = np.float32(q[c] - offset) * voxel_size + offset_sum[j, c] / n
                colors[j, c] = np.uint8(min(max(np.rint(np.float32(color_sum[j, c]) / n), 0.0), 255.0))
        return points, colors

    @numba.njit(cache=True, nogil=True)
    def reliable(depth, k, ratio, stride):
        h, w = depth.shape
        r = k // 2
        ho, wo = (h + stride - 1) // stride, (w + stride - 1) // stride
        big = np.float32(3.4028234663852886e38)
        d = np.empty((h, w), np.float32)             # nan_to_num(nan=0) then clamp(min=0), as the torch code
        for y in range(h):
            for x in range(w):
                v = depth[y, x]
                if v != v or v < 0:
                    v = np.float32(0.0)
                elif v > big:
                    v = big
                d[y, x] = v
        out = np.empty((ho, wo), np.bool_)
        eps = np.float32(1e-6)
        area = np.float32(k * k)
        for oy in range(ho):
            cy = oy * stride
            y0, y1 = max(cy - r, 0), min(cy - r + k, h)
            for ox in range(wo):
                cx = ox * stride
                x0, x1 = max(cx - r, 0), min(cx - r + k, w)
                hi = d[y0, x0]
                lo = hi
                total = np.float32(0.0)
                for y in range(y0, y1):
                    for x in range(x0, x1):
                        v = d[y, x]
                        hi = max(hi, v)
                        lo = min(lo, v)
                        total += v
                out[oy, ox] = ((hi - lo) / (total / area + eps) < ratio) and d[cy, cx] > 0
        return out

    @numba.njit(cache=True, nogil=True)
    def lift_keys(depth, rays, select, rgb, m, voxel_size, bits, axis_offset):
        """The selected pixels lifted to world points and binned (see lift_voxel_records)."""
        h, w = select.shape
        n = 0
        for y in range(h):
            for x in range(w):
                if select[y, x]:
                    n += 1
        keys = np.empty(n, np.int64)
        offset = np.empty((n, 3), np.float32)
        color = np.empty((n, 3), np.int32)
        lo = np.float32(-axis_offset)
        hi = np.float32(axis_offset)
        k = 0
        for y in range(h):
            for x in range(w):
                if not select[y, x]:
                    continue
                d = depth[y, x]
                px = rays[y, x, 0] * d
                py = rays[y, x, 1] * d
                pz = rays[y, x, 2] * d
                wx = px * m[0, 0] + py * m[0, 1] + pz * m[0, 2] + m[0, 3]
                wy = px * m[1, 0] + py * m[1, 1] + pz * m[1, 2] + m[1, 3]
                wz = px * m[2, 0] + py * m[2, 1] + pz * m[2, 2] + m[2, 3]
                ix = np.float32(math.floor(wx / voxel_size))      # exact: an integral float32 value
                iy = np.float32(math.floor(wy / voxel_size))
                iz = np.float32(math.floor(wz / voxel_size))
                if not (ix >= lo and ix < hi and iy >= lo and iy < hi and iz >= lo and iz < hi):
                    continue
                offset[k, 0] = wx - ix * voxel_size
                offset[k, 1] = wy - iy * voxel_size
                offset[k, 2] = wz - iz * voxel_size
                qx = np.int64(ix) + axis_offset
                qy = np.int64(iy) + axis_offset
                qz = np.int64(iz) + axis_offset
                keys[k] = (qx << (2 * bits)) | (qy << bits) | qz
                color[k, 0] = rgb[y, x, 0]
                color[k, 1] = rgb[y, x, 1]
                color[k, 2] = rgb[y, x, 2]
                k += 1
        return keys[:k], offset[:k], color[:k]

    @numba.njit(cache=True, nogil=True)
    def static_update(depth, rgb, valid, mean_depth, mean_color, weight, cap):
        """The valid pixels' readings into the running average, in place (see static_average_update)."""
        h, w = valid.shape
        one = np.float32(1.0)
        for y in range(h):
            for x in range(w):
                if not valid[y, x]:
                    continue
                wt = min(weight[y, x] + one, cap)
                weight[y, x] = wt
                step = one / max(wt, one)
                mean_depth[y, x] += step * (depth[y, x] - mean_depth[y, x])
                for c in range(3):
                    mean_color[y, x, c] += step * (np.float32(rgb[y, x, c]) - mean_color[y, x, c])

    @numba.njit(cache=True, nogil=True)
    def static_points(mean_depth, mean_color, weight, min_weight, rays, m):
        """The averaged pixels seen often enough, lifted (see static_cloud)."""
        h, w = weight.shape
        n = 0
        for y in range(h):
            for x in range(w):
                if weight[y, x] >= min_weight:
                    n += 1
        points = np.empty((n, 3), np.float32)
        colors = np.empty((n, 3), np.uint8)
        k = 0
        for y in range(h):
            for x in range(w):
                if not weight[y, x] >= min_weight:
                    continue
                d = mean_depth[y, x]
                px = rays[y, x, 0] * d
                py = rays[y, x, 1] * d
                pz = rays[y, x, 2] * d
                points[k, 0] = px * m[0, 0] + py * m[0, 1] + pz * m[0, 2] + m[0, 3]
                points[k, 1] = px * m[1, 0] + py * m[1, 1] + pz * m[1, 2] + m[1, 3]
                points[k, 2] = px * m[2, 0] + py * m[2, 1] + pz * m[2, 2] + m[2, 3]
                for c in range(3):
                    colors[k, c] = np.uint8(min(max(np.floor(mean_color[y, x, c]), np.float32(0.0)),
                                                np.float32(255.0)))
                k += 1
        return points, colors

    return _Kernels(run_sums, means, reliable, lift_keys, static_update, static_points)


class _Kernels(NamedTuple):
    run_sums: object
    means: object
    reliable: object
    lift_keys: object
    static_update: object
    static_points: object


def available() -> bool:
    """Whether numba imports (compiles nothing yet)."""
    global _KERNEL, _IMPORT_ERROR
    if _KERNEL is None and _IMPORT_ERROR is None:
        try:
            _KERNEL = _build()
        except ImportError as exc:
            _IMPORT_ERROR = str(exc)
    return _KERNEL is not None


def _compiled() -> _Kernels:
    if not available():
        raise RuntimeError(f"the voxel kernel needs numba: {_IMPORT_ERROR}")
    return _KERNEL


def voxel_sums(keys: torch.Tensor, offset: torch.Tensor, color: torch.Tensor, count: torch.Tensor,
               sorted_runs: bool = False):
    """Rows with equal keys summed, keys ascending: (keys (M,) int64, offset (M, 3) float32, color (M, 3) int32,
    count (M,) int32) as CPU tensors, from keys (N,) int64, offset (N, 3) float32, color (N, 3) int32, count (N,)
    int32 on the CPU, in any order (equal keys are summed in their input order).
    ``sorted_runs``: the keys are a few ascending runs (the window's voxel records one after the other): numpy's
    stable argsort (a timsort, which merges the runs) then orders them in 1.4 ms instead of torch's 3.8 ms for
    4 x 35 k keys (one thread); for keys in no order torch's radix sort is the faster (0.6 vs 2.4 ms for 40 k).
    Both are stable, so the result is the same."""
    if sorted_runs:
        key_array = keys.numpy()
        perm = np.argsort(key_array, kind="stable")
        sorted_keys = key_array[perm]
    else:
        sorted_keys, perm = (t.numpy() for t in torch.sort(keys, stable=True))
    out = _compiled().run_sums(sorted_keys, perm, offset.contiguous().numpy(), color.contiguous().numpy(),
                               count.contiguous().numpy())
    return tuple(torch.from_numpy(a) for a in out)


def voxel_means(keys: torch.Tensor, offset_sum: torch.Tensor, color_sum: torch.Tensor, count: torch.Tensor,
                voxel_size_m: float, axis_bits: int, axis_offset: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One point per voxel, as fusion._voxel_cloud computes it in torch (the same float32 operations in the same
    order: corner + offset_sum / count; colour rounded half to even, clamped, uint8): points (M, 3) float32 and
    colors (M, 3) uint8 CPU tensors from the sums of reduce(). 0.3 vs 2-3 ms for 140 k voxels (one thread)."""
    points, colors = _compiled().means(keys.contiguous().numpy(), offset_sum.contiguous().numpy(),
                                       color_sum.contiguous().numpy(), count.contiguous().numpy(),
                                       np.float32(voxel_size_m), axis_bits, axis_offset)
    return torch.from_numpy(points), torch.from_numpy(colors)


def reliable_depth(depth_m: torch.Tensor, window_px: int, ratio: float, stride: int) -> torch.Tensor:
    """fusion.reliable_depth on the CPU in one compiled pass over the stride pixels (float32 as there: window sums in
    avg_pool2d's order), for window_px >= 2: (ceil(H / stride), ceil(W / stride)) bool from (H, W) float32 [m].
    About 1.9 vs 3.4 ms of CPU at 640x480, window 5, stride 2 (one thread)."""
    return torch.from_numpy(_compiled().reliable(depth_m.contiguous().numpy(), int(window_px), np.float32(ratio),
                                                 int(stride)))


def lift_voxel_records(depth_m: torch.Tensor, rays: torch.Tensor, select: torch.Tensor, rgb: torch.Tensor,
                       world_T_camera: torch.Tensor, voxel_size_m: float, axis_bits: int, axis_offset: int):
    """fusion._voxelize(frame.lift(select)) before its reduce, in one compiled pass (the same float32 operations
    in the same order as the torch code: rays times depth, transform_points, floor of the division by the voxel
    size, offset within the voxel).  depth_m (h, w) float32 [m], rays (h, w, 3) float32 unit-z camera rays, select
    (h, w) bool (pixels with valid depth), rgb (h, w, 3) uint8, world_T_camera (4, 4) float64.  Returns, for the
    selected pixels in row-major order whose voxel lies inside the key range: keys (N,) int64, offsets (N, 3)
    float32 [m] and colours (N, 3) int32, as CPU tensors.  The moving fusion takes about 1.5-2 ms less per 640x480
    frame at stride 2 (one thread).  Inputs are made contiguous (the strided colour view is copied, 0.2 MB): one
    compiled signature, the one scripts/setup.sh compiles ahead."""
    depth_m, rays, select, rgb = (t.contiguous() for t in (depth_m, rays, select, rgb))
    out = _compiled().lift_keys(depth_m.numpy(), rays.numpy(), select.numpy(), rgb.numpy(),
                                world_T_camera.numpy().astype(np.float32), np.float32(voxel_size_m), int(axis_bits),
                                int(axis_offset))
    return tuple(torch.from_numpy(a) for a in out)


def static_average_update(depth_m: torch.Tensor, rgb: torch.Tensor, valid: torch.Tensor, mean_depth_m: torch.Tensor,
                          mean_color: torch.Tensor, weight: torch.Tensor, max_weight: float) -> None:
    """StaticCameraFusion.add's update of its running average, in place, in one compiled pass (the same float32
    operations as its torch code): where ``valid``, the weight grows by one up to ``max_weight`` and the means move
    by 1 / weight towards the reading.  depth_m (h, w) float32 [m] (finite where valid), rgb (h, w, 3) uint8,
    valid (h, w) bool; the state mean_depth_m (h, w), mean_color (h, w, 3) and weight (h, w): contiguous float32
    CPU tensors, updated."""
    depth_m, rgb, valid = (t.contiguous() for t in (depth_m, rgb, valid))
    _compiled().static_update(depth_m.numpy(), rgb.numpy(), valid.numpy(), mean_depth_m.numpy(),
                              mean_color.numpy(), weight.numpy(), np.float32(max_weight))


def static_cloud(mean_depth_m: torch.Tensor, mean_color: torch.Tensor, weight: torch.Tensor, min_weight: float,
                 rays: torch.Tensor, world_T_camera: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """StaticCameraFusion.cloud in one compiled pass (the same float32 operations as its torch code): the pixels
    whose weight is at least ``min_weight``, in row-major order, lifted along ``rays`` (h, w, 3) float32 by the mean
    depth and moved by ``world_T_camera`` (4, 4) float64: points (N, 3) float32 [m, world], and their mean colours
    truncated and clamped, (N, 3) uint8."""
    out = _compiled().static_points(mean_depth_m.contiguous().numpy(), mean_color.contiguous().numpy(),
                                    weight.contiguous().numpy(), np.float32(min_weight), rays.contiguous().numpy(),
                                    world_T_camera.numpy().astype(np.float32))
    return tuple(torch.from_numpy(a) for a in out)


def warm_up() -> bool:
    """Compile the kernel now (first use otherwise); False without numba."""
    if not available():
        return False
    sums = voxel_sums(torch.tensor([3, 1, 3]), torch.zeros((3, 3)), torch.zeros((3, 3), dtype=torch.int32),
                      torch.ones(3, dtype=torch.int32))
    voxel_means(*sums, 0.01, 21, 1 << 20)
    reliable_depth(torch.ones((4, 4)), 3, 0.1, 2)
    lift_voxel_records(torch.ones((2, 2)), torch.ones((2, 2, 3)), torch.ones((2, 2), dtype=torch.bool),
                       torch.zeros((2, 2, 3), dtype=torch.uint8), torch.eye(4, dtype=torch.float64), 0.01, 21, 1 << 20)
    state = (torch.zeros((2, 2)), torch.zeros((2, 2, 3)), torch.zeros((2, 2)))
    static_average_update(torch.ones((2, 2)), torch.zeros((2, 2, 3), dtype=torch.uint8),
                          torch.ones((2, 2), dtype=torch.bool), *state, 4.0)
    static_cloud(*state, 1.0, torch.ones((2, 2, 3)), torch.eye(4, dtype=torch.float64))
    return True
