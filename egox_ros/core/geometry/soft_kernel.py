"""Compiled CPU kernels of the soft disc splat (numba): the compositing loop of ``render.render_points_soft``, and
on its way there the projection for an undistorted pinhole camera and the gather into rank order.

``render_points_soft`` projects, culls and ranks the points (torch; through an undistorted pinhole camera, the
projection is ``project_pinhole`` here, the same float32 operations in one pass, 4-5 ms less per 90 k points, and
the gather into rank order is ``gather_ranked``); this module composites them, one point after
the other in rank order (nearest first), into per-pixel accumulators, which is the front-to-back loop that PyTorch3D's
rasteriser + alpha compositor amount to (render.py's module docstring) and that the torch slab code computes in
parallel pieces.  The torch code stays the reference; test/test_render_kernel.py checks this against it.

Why it is fast (2-core AMD EPYC, 88 k points into 448x448, r = 5, one thread; scratch measurements, load 2-10):
a point's disc covers about 78 pixels, of which only about one in six still takes points (K limit or
transmittance cut-off); testing each of them for "still live" costs a hard-to-predict branch per pixel (37-40 ms
for the plain per-point loop, and 31-34 ms with tiling or branch-free updates).  Here every row of the padded canvas
keeps a bit per pixel that is still live; per point and row the bits of its (2 reach + 1) candidate columns are
read at once and only the set ones are visited (count-trailing-zeros) and tested against the disc, so the work
follows the live pairs (about 1.1 M composited) instead of the candidates (about 10 M): 15-19 ms of CPU (19-20 ms
per render with the projection and ranking; `egox bench prior`), with the same result bit for bit as the plain loop.
(Computing each row's exact span of inside columns first, with a square root, cost more than it saved: 36 vs 27 ms
CPU per render in one run.)

Candidates, measured on the same cloud (CPU time of the compositing alone, one thread, load ~6): the plain per-point
loop compiled by numba 0.68 37.8 ms, the same loop as an NVIDIA Warp 1.19 CPU kernel 28.7 ms (warp-lang is a 149 MB
wheel; first compile 2.4 s), the bitmask loop here (numba) 16.8 ms. torch.compile was not tried: the torch code's
shapes depend on the data (nonzero and a sort per slab). Warp's selling point, one source for CPU and CUDA, does not
carry over: this loop is sequential by nature; on CUDA the torch slab code runs (parallel within each slab).

Floating point is the reference's: float32 disc test ``(row - v)^2 + (col - u)^2 < r^2`` on padded coordinates,
``q = d^2 / r^2``, alpha ``1 - q``; the transmittance is the running float32 product of ``q`` (the reference sums
float64 logs within a slab), so colours may differ from it by rounding (a unit after truncation to uint8, rarely).

Several threads (``render(threads=...)``, runtime.splat_threads) composite bands of rows at once, each band's
pixels taking their points in rank order as one thread would: the same image.  On this 2-core machine 2 threads
take about 0.7 of one thread's wall time, not half (the two cores share more than their count suggests).

Compiled on first use and cached on disk (numba's cache: beside this file, else the user's cache folder);
``warm_up()`` compiles them ahead (scripts/setup.sh calls it).  numba is optional: ``available()`` says whether it
imports; without it the renderer uses the torch code.
"""
from __future__ import annotations

import math
import threading
from typing import NamedTuple

import numpy as np

_KERNEL = None
_IMPORT_ERROR: str | None = None
# The cttz intrinsic, made by _build().  The kernels reach it as a module global, not as a variable of _build():
# numba keys its disk cache on a closure's pickled cells, which pickle differently in every process, so a closure
# over the intrinsic was compiled again in every process and added a cache entry each time (75 kB per start).
_cttz = None


def _build():
    """Compile (or load from numba's cache) the kernels."""
    global _cttz
    import numba
    from llvmlite import ir
    from numba.extending import intrinsic

    @intrinsic
    def cttz(typingctx, x):
        """Index of the lowest set bit of a non-zero unsigned integer (LLVM's cttz)."""
        def codegen(context, builder, sig, args):
            return builder.cttz(args[0], ir.Constant(ir.IntType(1), 0))
        return x(x), codegen

    _cttz = cttz

    @numba.njit(cache=True, nogil=True)
    def composite(u_pad, v_pad, colors, r2, reach, k_max, min_t, wp, live, acc, trans, count, first, row_lo,
                  row_hi):
        """Composite points 0..m-1 (rank order) into rows row_lo..row_hi-1 of the padded canvas; arrays are updated
        in place (only those rows: calls on disjoint row bands can run at once, on other threads).

        u_pad, v_pad (m,) float32: disc centres in padded-canvas pixels; colors (m, 3) float32 0-255; r2 float32;
        reach: ceil(radius); live (hp, words) uint64: bit c of word j of row r set while pixel (r, 64 j + c) takes
        points; acc (hp * wp, 3) float32; trans (hp * wp,) float32 ones; count, first (hp * wp,) int32.
        """
        m = u_pad.shape[0]
        one = np.float32(1.0)
        half = np.float32(0.5)
        for p in range(m):
            u = u_pad[p]
            v = v_pad[p]
            cn = np.int64(math.floor(u + half))
            rn = np.int64(math.floor(v + half))
            c_lo = cn - reach
            c_hi = cn + reach
            w_lo = c_lo >> 6
            w_hi = c_hi >> 6
            c0 = colors[p, 0]
            c1 = colors[p, 1]
            c2 = colors[p, 2]
            for row in range(max(rn - reach, row_lo), min(rn + reach + 1, row_hi)):
                dy = np.float32(row) - v
                dy2 = dy * dy
                if dy2 >= r2:
                    continue
                base = row * wp
                for word in range(w_lo, w_hi + 1):
                    bits = live[row, word]
                    if bits == 0:
                        continue
                    a = max(c_lo - (word << 6), 0)
                    b = min(c_hi - (word << 6), 63)
                    bits &= (np.uint64(0xFFFFFFFFFFFFFFFF) >> np.uint64(63 - b + a)) << np.uint64(a)
                    while bits:
                        bit = _cttz(bits)
                        bits &= bits - np.uint64(1)
                        col = (word << 6) + np.int64(bit)
                        pix = base + col
                        dx = np.float32(col) - u
                        d2 = dy2 + dx * dx
                        if not d2 < r2:             # outside the disc
                            continue
                        q = d2 / r2
                        t = trans[pix]
                        wt = t * (one - q)
                        acc[pix, 0] += c0 * wt
                        acc[pix, 1] += c1 * wt
                        acc[pix, 2] += c2 * wt
                        cnt = count[pix] + 1
                        count[pix] = cnt
                        t = t * q
                        trans[pix] = t
                        if cnt == 1:
                            first[pix] = p
                        if cnt >= k_max or not t > min_t:
                            live[row, word] &= ~(np.uint64(1) << bit)

    @numba.njit(cache=True, nogil=True)
    def finish(acc, count, first, index_sorted, z_sorted, n, h, w, pad, rgb, mask, index, depth):
        """Crop the padded accumulators to the (h, w) image and write the view's arrays (see render._soft_view)."""
        wp = w + 2 * pad
        eps = np.float32(1e-3)
        for y in range(h):
            for x in range(w):
                pix = (y + pad) * wp + x + pad
                if count[pix] == 0:
                    continue
                mask[y, x] = True
                r = first[pix]
                index[y, x] = index_sorted[r]
                depth[y, x] = z_sorted[r]
                c0 = min(max(math.floor(acc[pix, 0] + eps), 0.0), 255.0)
                c1 = min(max(math.floor(acc[pix, 1] + eps), 0.0), 255.0)
                c2 = min(max(math.floor(acc[pix, 2] + eps), 0.0), 255.0)
                if c0 < 2.55 and c1 < 2.55 and c2 < 2.55:
                    continue
                rgb[y, x, 0] = np.uint8(c0)
                rgb[y, x, 1] = np.uint8(c1)
                rgb[y, x, 2] = np.uint8(c2)

    @numba.njit(cache=True, nogil=True)
    def project_pinhole(points, m, fx, fy, cx, cy, offset, lo, u_hi, v_hi, min_d2, idx, u_out, v_out, z_out):
        """Transform, project and cull points (N, 3) float32 through an undistorted pinhole camera, as the torch
        code of render_points_soft does with transform_points and PinholeCamera.project (the same float32
        operations in the same order); a disc centre is kept inside (lo, u_hi) x (lo, v_hi); writes the kept
        points' index, u, v (minus offset) and z in index order into the outputs and returns how many."""
        zero = np.float32(0.0)
        one = np.float32(1.0)
        min_z = np.float32(1e-6)
        kept = 0
        for i in range(points.shape[0]):
            x = points[i, 0]
            y = points[i, 1]
            zw = points[i, 2]
            xc = x * m[0, 0] + y * m[0, 1] + zw * m[0, 2] + m[0, 3]
            yc = x * m[1, 0] + y * m[1, 1] + zw * m[1, 2] + m[1, 3]
            zc = x * m[2, 0] + y * m[2, 1] + zw * m[2, 2] + m[2, 3]
            if not (zc > min_z and zc >= zero and math.isfinite(zc)):
                continue
            inv_z = one / zc
            u = (xc * inv_z) * fx + cx - offset
            v = (yc * inv_z) * fy + cy - offset
            if not (math.isfinite(u) and math.isfinite(v)):
                continue
            if min_d2 > zero and not (xc * xc + yc * yc) + zc * zc >= min_d2:
                continue
            if not (u > lo and u < u_hi and v > lo and v < v_hi):
                continue
            idx[kept] = i
            u_out[kept] = u
            v_out[kept] = v
            z_out[kept] = zc
            kept += 1
        return kept

    @numba.njit(cache=True, nogil=True)
    def gather(order, idx, u, v, z, colors, pad, u_pad, v_pad, colors_out, idx_out, z_out):
        """Point order[p] of the projected arrays to rank p of the outputs (see gather_ranked)."""
        shift = np.float32(pad)
        for p in range(order.shape[0]):
            j = order[p]
            i = idx[j]
            u_pad[p] = u[j] + shift
            v_pad[p] = v[j] + shift
            z_out[p] = z[j]
            idx_out[p] = np.int32(i)
            colors_out[p, 0] = np.float32(colors[i, 0])
            colors_out[p, 1] = np.float32(colors[i, 1])
            colors_out[p, 2] = np.float32(colors[i, 2])

    return _Kernels(composite, finish, project_pinhole, gather)


class _Kernels(NamedTuple):
    composite: object
    finish: object
    project_pinhole: object
    gather: object


def _kernel():
    global _KERNEL, _IMPORT_ERROR
    if _KERNEL is None and _IMPORT_ERROR is None:
        try:
            _KERNEL = _build()
        except ImportError as exc:     # numba (or llvmlite) not installed: the torch code renders
            _IMPORT_ERROR = str(exc)
    return _KERNEL


def _compiled() -> _Kernels:
    kernels = _kernel()
    if kernels is None:
        raise RuntimeError(f"the soft splat kernel needs numba: {_IMPORT_ERROR}")
    return kernels


def available() -> bool:
    """Whether numba imports (the kernel can be used); compiles nothing yet."""
    return _kernel() is not None


def render(u_pad: np.ndarray, v_pad: np.ndarray, colors: np.ndarray, index_sorted: np.ndarray,
           z_sorted: np.ndarray, n: int, radius: float, k_max: int, min_transmittance: float, h: int, w: int,
           pad: int, threads: int = 1):
    """Composite ranked points onto an (h, w) image padded by ``pad`` pixels on every side, and crop.

    ``u_pad``, ``v_pad`` (m,) float32: disc centres in padded-canvas pixel coordinates (pixel centres at integers),
    in rank order (nearest first; every point's nearest pixel within ``pad - ceil(radius)`` of the image);
    ``colors`` (m, 3) float32 0-255, ``index_sorted`` (m,) int32 (cloud index) and ``z_sorted`` (m,) float32
    (camera z) in the same order; ``n``: the cloud's length.  ``threads``: the canvas is cut into this many bands
    of rows holding about as many disc centres each, composited at once (the kernel releases the GIL); every pixel
    still takes its points in rank order, so the result does not depend on it.  Returns the view's arrays as
    render_points_soft defines them: ``rgb`` (h, w, 3) uint8 (truncated composite, near-black pixels black),
    ``mask`` (h, w) bool, ``index`` (h, w) int32 (cloud index of the nearest point, ``n`` where empty), ``depth``
    (h, w) float32 (its z, 0 where empty).
    """
    kernels = _compiled()
    reach = int(math.ceil(radius))
    if pad < 2 * reach:
        raise ValueError(f"pad must be at least 2 ceil(radius) = {2 * reach}, got {pad}")
    if int(threads) != threads or threads < 1:
        raise ValueError(f"threads must be a whole number >= 1, got {threads!r}")
    hp, wp = h + 2 * pad, w + 2 * pad
    words = (wp + 63) // 64
    live_bool = np.zeros((hp, words * 64), dtype=bool)
    live_bool[pad : pad + h, pad : pad + w] = True
    live = np.packbits(live_bool.reshape(hp, words, 64), axis=-1, bitorder="little").view("<u8")
    live = np.ascontiguousarray(live.reshape(hp, words).astype(np.uint64))
    acc = np.zeros((hp * wp, 3), dtype=np.float32)
    trans = np.ones(hp * wp, dtype=np.float32)
    count = np.zeros(hp * wp, dtype=np.int32)
    first = np.empty(hp * wp, dtype=np.int32)      # read only where count > 0: written by the first point
    u_pad = np.ascontiguousarray(u_pad, dtype=np.float32)
    v_pad = np.ascontiguousarray(v_pad, dtype=np.float32)
    colors = np.ascontiguousarray(colors, dtype=np.float32)

    def band(rows: tuple[int, int]) -> None:
        kernels.composite(u_pad, v_pad, colors, np.float32(radius * radius), reach, int(k_max),
                          np.float32(min_transmittance), wp, live, acc, trans, count, first, rows[0], rows[1])

    bands = _row_bands(v_pad, hp, int(threads))
    if len(bands) == 1:
        band(bands[0])
    else:
        others = [_pool(len(bands) - 1).submit(band, rows) for rows in bands[1:]]
        band(bands[0])
        for future in others:
            future.result()
    rgb = np.zeros((h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    index = np.full((h, w), n, dtype=np.int32)
    depth = np.zeros((h, w), dtype=np.float32)
    kernels.finish(acc, count, first, np.ascontiguousarray(index_sorted, dtype=np.int32),
                   np.ascontiguousarray(z_sorted, dtype=np.float32), n, h, w, pad, rgb, mask, index, depth)
    return rgb, mask, index, depth


def project_pinhole(points_world: np.ndarray, camera_T_world: np.ndarray, fx: float, fy: float, cx: float,
                    cy: float, offset: float, radius: float, w: int, h: int, min_distance_m: float):
    """render_points_soft's projection and culling for an undistorted pinhole camera in one compiled pass.

    ``points_world`` (N, 3) float32 [m]; ``camera_T_world`` (4, 4) float64.  Keeps the points in front of the camera
    (z > 1e-6, finite), at least ``min_distance_m`` from its centre (0: all), whose disc of ``radius`` px can reach
    the (h, w) image.  Returns, for those in index order: index (m,) int64, u and v (m,) float32 [px] (the
    projection minus ``offset``) and camera z (m,) float32 [m].
    """
    kernels = _compiled()
    points = np.ascontiguousarray(points_world, dtype=np.float32)
    n = points.shape[0]
    idx, u, v, z = (np.empty(n, np.int64), np.empty(n, np.float32), np.empty(n, np.float32),
                    np.empty(n, np.float32))
    f32 = np.float32
    kept = kernels.project_pinhole(points, np.ascontiguousarray(camera_T_world, dtype=np.float32), f32(fx),
                                   f32(fy), f32(cx), f32(cy), f32(offset), f32(-radius), f32(w - 1 + radius),
                                   f32(h - 1 + radius), f32(min_distance_m * min_distance_m), idx, u, v, z)
    return idx[:kept], u[:kept], v[:kept], z[:kept]


def gather_ranked(order: np.ndarray, idx: np.ndarray, u: np.ndarray, v: np.ndarray, z: np.ndarray,
                  colors: np.ndarray, pad: int):
    """The projected points in rank order, as render() takes them, in one compiled pass.

    ``order`` (m,) int64: rank -> position in the projected arrays ``idx`` (m,) int64 (cloud index), ``u``, ``v``,
    ``z`` (m,) float32; ``colors`` (n, 3) uint8: the cloud's.  Returns u + pad, v + pad (m,) float32, the colours
    (m, 3) float32 0-255, the cloud indices (m,) int32 and z (m,) float32, rank by rank.
    """
    kernels = _compiled()
    m = order.shape[0]
    out = (np.empty(m, np.float32), np.empty(m, np.float32), np.empty((m, 3), np.float32), np.empty(m, np.int32),
           np.empty(m, np.float32))
    kernels.gather(np.ascontiguousarray(order, dtype=np.int64), np.ascontiguousarray(idx, dtype=np.int64),
                   np.ascontiguousarray(u, dtype=np.float32), np.ascontiguousarray(v, dtype=np.float32),
                   np.ascontiguousarray(z, dtype=np.float32), np.ascontiguousarray(colors, dtype=np.uint8), int(pad),
                   *out)
    return out


def _row_bands(v_pad: np.ndarray, rows: int, bands: int) -> list[tuple[int, int]]:
    """``bands`` consecutive (first, end) row ranges covering 0..rows-1, cut at quantiles of the disc centres' rows
    (so that each holds about as many points; fewer bands when points are few or share rows)."""
    if bands <= 1 or v_pad.shape[0] < 1024:
        return [(0, rows)]
    sample = v_pad[:: max(1, v_pad.shape[0] // 4096)]      # a few thousand centres place the cuts well enough
    ranks = [len(sample) * k // bands for k in range(1, bands)]
    cuts = np.partition(sample, ranks)[ranks].round().astype(np.int64).clip(0, rows)
    edges = np.unique(np.concatenate([[0], cuts, [rows]]))
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:])]


_POOL, _POOL_WORKERS = None, 0
_POOL_LOCK = threading.Lock()


def _pool(workers: int):
    """The process's thread pool for the extra bands, with at least ``workers`` threads (its threads wait while no
    render runs)."""
    global _POOL, _POOL_WORKERS
    from concurrent.futures import ThreadPoolExecutor
    with _POOL_LOCK:
        if _POOL_WORKERS < workers:
            if _POOL is not None:
                _POOL.shutdown(wait=False)      # its running bands finish; new ones go to the larger pool
            _POOL, _POOL_WORKERS = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="egox-splat"), workers
        return _POOL


def warm_up() -> bool:
    """Compile the kernels now (first use otherwise) on two points; False without numba."""
    if not available():
        return False
    points = np.array([[0.0, 0.0, 1.0], [0.1, 0.0, 2.0]], dtype=np.float32)
    idx, u, v, z = project_pinhole(points, np.eye(4), 8.0, 8.0, 4.0, 4.0, 0.5, 2.0, 8, 8, 0.0)
    ranked = gather_ranked(np.argsort(z), idx, u, v, z, np.full((2, 3), 100, dtype=np.uint8), 4)
    render(*ranked, 2, 2.0, 20, 1.0 / 4096.0, 8, 8, 4)
    return True
