"""Lift RGB-D frames to coloured world point clouds and splat them into a camera.

The renderer is a z-buffered square splatter: every point covers the
``(2r + 1) x (2r + 1)`` pixel square centred on the pixel its projection falls
in, and each pixel shows the colour of the nearest covering point (smallest
camera z).  Ties in depth go to the point with the lowest index in the cloud,
so results are deterministic on CPU and CUDA alike.

Implementation: depth (positive float32, whose IEEE bit pattern orders like
the value) and point index are packed into one int64 key
``depth_bits << 32 | index``; one ``scatter_reduce(..., "amin")`` per
offset of the splat square (a loop over the ``(2r + 1)^2`` offsets, never over
points) yields both the z-buffer and the winning point of every pixel.

Poses are 4x4 rigid transforms ``world_T_camera`` (camera-to-world: maps
camera-frame points into the world, OpenCV camera axes).  Maths is float32 on
the device of the input tensors.  Poses (torch or numpy, any float dtype) are
read as float64 on the CPU, inverted there, and applied as float64 scalars.

Soft splats (:func:`render_points_soft`), the renderer of the released EgoX
priors.  Its tool (scripts/render_vipe_pointcloud.py of the EgoX-EgoPriorRenderer
repository, functions ``render_points_pytorch3d`` and ``render_points_fisheye``)
hands the cloud to PyTorch3D: ``PointsRasterizer`` with ``points_per_pixel=20``
and ``radius = point_size * 2 / max(W, H)`` in NDC, then ``AlphaCompositor`` with
a black background, on 448x448 images; the method text gives 5-pixel points.
What those do, as we read PyTorch3D (renderer/points/rasterizer.py,
renderer/points/renderer.py, renderer/compositor.py, csrc/rasterize_points):

* a point is drawn only with camera z >= 0; a pixel takes a point when the
  squared NDC distance between its centre and the point's projection is
  strictly below radius^2; of those it keeps the K (= points_per_pixel) with
  the smallest z, nearest first;
* the point renderer turns each kept point into alpha = 1 - d^2 / radius^2
  (1 at the centre, falling to 0 at the rim: a soft disc);
* the alpha compositor blends front to back with weights
  alpha_k * prod_{j<k} (1 - alpha_j) over those K points, features being the
  colours in [0, 1]; pixels with no point get the background colour (black);
  a pixel with points is *not* blended with the background, so a thin
  coverage reads darker (the colour times its total alpha);
* the RGB result is clipped to [0, 1], pixels whose three channels are all
  below 0.01 are set to the background, and it becomes uint8 by
  ``(x * 255).astype(uint8)``, i.e. truncation.  The released prior has no
  separate mask; the network sees holes as black pixels.
* NDC spans 2 over the shorter image side, so one pixel is 2 / min(W, H) in
  NDC and the radius in pixels is ``point_size * min(W, H) / max(W, H)``:
  exactly ``point_size`` pixels for the square 448x448 prior, i.e. 5 px.
* pixel centres: ``cameras_from_opencv_projection`` (and the fisheye path's own
  conversion) put the NDC origin at OpenCV coordinate ``(W/2, H/2)``, so pixel
  i's centre sits at OpenCV coordinate ``i + 0.5``; in our convention (pixel
  centres at integers) a point projecting to ``u`` is drawn centred at
  ``u - 0.5``.  ``center_offset_px=0.5`` reproduces that shift; 0 draws at ``u``.

Ours does the same per pixel, with the radius in pixels (d in pixels), in
float32, on CPU or CUDA with torch only.  Mask: a pixel is covered when at least
one point lies within the radius (its composited alpha is then > 0); this is
the set of pixels PyTorch3D gives a point to.  ``depth_m`` and
``point_index`` are those of the nearest covering point (smallest z, ties to
the lowest index), as in the hard renderer.  ``rgb`` is the composite,
truncated to uint8 as the released tool does (after adding 1e-3 so that an
opaque point keeps its exact colour), with all-channels-below-2.55 pixels set
to black, as there.

Implementation: points are projected, culled and ranked once by their key (depth, ties to the lowest index) in
torch.  On the CPU the compiled kernel of core/geometry/soft_kernel.py (numba) then composites them one after the other
into per-pixel accumulators, visiting only pixels still live (a bitmask per row): about 24 ms of CPU per render of the
cloud below in all, on one thread (`egox bench prior`).  The torch code that follows is the reference it is tested against, and what runs
on CUDA (and on the CPU without numba): the ranked points are cut, in that order, into
slabs of ``_SOFT_SLAB_POINTS`` (1024); slabs are composited one after the other into per-pixel accumulators
(colour, transmittance, count, nearest rank, and a "live" flag: fewer than K points and transmittance above
``min_transmittance``) on a canvas padded by twice the radius.  Within a slab every point's (2 reach + 1)^2 square of
candidate pixels is tested at once (inside the disc, and the pixel still live), the surviving (pixel, point) pairs
are sorted by the int32 key ``pixel * slab + rank``; the place of a pair within its pixel (plus the pixel's count so
far) gives the K limit, and an exclusive segmented cumulative sum of ``log(d^2 / r^2) = log(1 - alpha)`` (float64)
the transmittance in front of it, so that the K limit and the transmittance cut-off act per point, exactly as a
per-pixel front-to-back loop (the result does not depend on the slab size, up to float32 summation order).  Memory:
one slab's pairs plus O(H*W).  Costs on 2 CPU cores (about 88 k points, 448x448, r = 5; see ``egox bench prior``):
about 10 M candidate pairs must be tested whatever the order (each point's disc), of which about 0.85 M are
composited; testing liveness per slab cuts the sorted pairs to about 1.9 M.  One sort over all 7 M in-disc pairs
took about a second; repeated ``scatter_reduce(amin)`` passes were slower still; sorts below 32768 elements are
padded to that size on the CPU, where torch switches to a radix sort.

Long on purpose (about 530 lines): the lifting, the hard splat and the soft splat's torch code (the reference of
soft_kernel.py, and the CUDA path) share the point cloud type, the projection, the keys and their checks.
"""

from __future__ import annotations

import math
import sys
from dataclasses import dataclass
from typing import Iterable

import numpy as np
import torch

from egox_ros.core.geometry import soft_kernel    # light: numba is imported on the kernel's first use
from egox_ros.core.geometry.cameras import CameraModel, PinholeCamera

_INDEX_BITS = 32
_MAX_POINTS = (1 << 31) - 1  # the index half of a key is read back as int32
# Which int32 word of an int64 holds its low / high 32 bits on this machine.
_LO_WORD, _HI_WORD = (0, 1) if sys.byteorder == "little" else (1, 0)
_EMPTY_KEY = torch.iinfo(torch.int64).max
_CHUNK_POINTS = 1 << 20  # points per pass; on a 2-core EPYC 2^20 keeps 35 ms per million points from 0.25 M to
                         # 8 M points, smaller chunks cost more per chunk (2^15: 88 ms/M at 0.25 M points)


@dataclass
class PointCloud:
    """Coloured points in the world frame: ``points_world`` (N, 3) float32 metres, ``colors`` (N, 3) uint8."""

    points_world: torch.Tensor
    colors: torch.Tensor

    def __post_init__(self) -> None:
        if self.points_world.ndim != 2 or self.points_world.shape[-1] != 3:
            raise ValueError(f"points_world must have shape (N, 3), got {tuple(self.points_world.shape)}")
        if self.colors.ndim != 2 or self.colors.shape[-1] != 3:
            raise ValueError(f"colors must have shape (N, 3), got {tuple(self.colors.shape)}")
        if self.points_world.shape[0] != self.colors.shape[0]:
            raise ValueError(
                f"points_world and colors differ in length: {self.points_world.shape[0]} vs {self.colors.shape[0]}"
            )
        if self.colors.dtype != torch.uint8:
            raise ValueError(f"colors must be uint8, got {self.colors.dtype}")
        if self.points_world.dtype != torch.float32:
            self.points_world = self.points_world.to(torch.float32)

    def __len__(self) -> int:
        return int(self.points_world.shape[0])

    @property
    def device(self) -> torch.device:
        return self.points_world.device

    @staticmethod
    def empty(device: torch.device | str | None = None) -> "PointCloud":
        return PointCloud(
            torch.zeros((0, 3), dtype=torch.float32, device=device),
            torch.zeros((0, 3), dtype=torch.uint8, device=device),
        )

    @staticmethod
    def concat(clouds: Iterable["PointCloud"]) -> "PointCloud":
        """Concatenate clouds (all on one device); an empty iterable gives an empty CPU cloud."""
        clouds = list(clouds)
        if not clouds:
            return PointCloud.empty()
        return PointCloud(
            torch.cat([c.points_world for c in clouds], dim=0),
            torch.cat([c.colors for c in clouds], dim=0),
        )

    def to(self, device: torch.device | str) -> "PointCloud":
        return PointCloud(self.points_world.to(device), self.colors.to(device))

    @property
    def nbytes(self) -> int:
        return self.points_world.nbytes + self.colors.nbytes



@dataclass
class RenderedView:
    """A rendered image: ``rgb`` (H, W, 3) uint8 black where empty, ``mask`` (H, W) bool,
    ``depth_m`` (H, W) float32 camera z, 0 where empty, ``point_index`` (H, W) int32: the cloud index of the point
    each pixel shows, the cloud's length where empty."""

    rgb: torch.Tensor
    mask: torch.Tensor
    depth_m: torch.Tensor
    point_index: torch.Tensor

    @property
    def coverage(self) -> float:
        """Fraction of pixels covered by at least one point."""
        return float(self.mask.float().mean()) if self.mask.numel() else 0.0


def pose_float64(world_T_camera) -> torch.Tensor:
    """A 4x4 pose (torch or numpy, any float dtype) as a float64 CPU tensor; ValueError unless 4x4 and finite."""
    pose = torch.as_tensor(np.asarray(world_T_camera) if not torch.is_tensor(world_T_camera) else world_T_camera)
    if pose.shape != (4, 4):
        raise ValueError(f"pose must be a 4x4 matrix, got shape {tuple(pose.shape)}")
    pose = pose.detach().to(device="cpu", dtype=torch.float64)
    if not torch.isfinite(pose).all():
        raise ValueError("pose must be finite")
    return pose


def transform_points(points: torch.Tensor, pose64: torch.Tensor) -> torch.Tensor:
    """Apply a 4x4 float64 CPU pose to (N, 3) float32 points (elementwise; faster than a K=3 matmul)."""
    m = pose64.tolist()
    x, y, z = points.unbind(-1)
    return torch.stack(
        [x * m[i][0] + y * m[i][1] + z * m[i][2] + m[i][3] for i in range(3)],
        dim=-1,
    )


def lift_depth(
    rgb: torch.Tensor,
    depth_m: torch.Tensor,
    camera: CameraModel,
    world_T_camera: torch.Tensor,
    stride: int = 1,
    min_depth_m: float = 0.1,
    max_depth_m: float = 20.0,
) -> PointCloud:
    """Lift every ``stride``-th pixel with a valid depth to a world point coloured by ``rgb``.

    ``rgb`` (H, W, 3) uint8 and ``depth_m`` (H, W) metres along the camera z
    axis must match ``camera``'s size and be registered to each other (same
    pixels, same lens distortion).  Depths that are 0, NaN, infinite or outside
    ``[min_depth_m, max_depth_m]`` are dropped.  The cloud lives on
    ``depth_m``'s device.
    """
    expected = (camera.height, camera.width)
    if tuple(depth_m.shape) != expected:
        raise ValueError(f"depth_m must have shape {expected} (camera size), got {tuple(depth_m.shape)}")
    if tuple(rgb.shape) != expected + (3,):
        raise ValueError(f"rgb must have shape {expected + (3,)}, got {tuple(rgb.shape)}")
    if rgb.dtype != torch.uint8:
        raise ValueError(f"rgb must be uint8, got {rgb.dtype}")
    if not (0.0 <= min_depth_m < max_depth_m):
        raise ValueError(f"need 0 <= min_depth_m < max_depth_m, got {min_depth_m}, {max_depth_m}")
    device = depth_m.device
    rays = camera.ray_grid(stride, device=device)  # validates stride
    depth = depth_m[::stride, ::stride].to(torch.float32)
    colors = rgb[::stride, ::stride].to(device)
    valid = torch.isfinite(depth) & (depth > 0.0) & (depth >= min_depth_m) & (depth <= max_depth_m)
    valid &= torch.isfinite(rays).all(-1)  # a fisheye has no ray outside its image circle
    keep = torch.nonzero(valid.reshape(-1)).squeeze(1)  # one nonzero, shared by the three gathers
    d = depth.reshape(-1).index_select(0, keep)
    points_cam = rays.reshape(-1, 3).index_select(0, keep) * d.unsqueeze(-1)
    points_world = transform_points(points_cam, pose_float64(world_T_camera))
    return PointCloud(points_world, colors.reshape(-1, 3).index_select(0, keep))


def _whole_number(name: str, value, minimum: int) -> int:
    """``value`` as an int; ValueError unless it is a whole number (not a bool) of at least ``minimum``."""
    if isinstance(value, bool) or int(value) != value or value < minimum:
        kind = "a non-negative" if minimum == 0 else "a positive" if minimum == 1 else f"an >= {minimum}"
        raise ValueError(f"{name} must be {kind} integer, got {value!r}")
    return int(value)


def _points_to_render(cloud: "PointCloud") -> int:
    """len(cloud); ValueError beyond the per-render limit (a key's index half is read back as int32)."""
    n = len(cloud)
    if n > _MAX_POINTS:
        raise ValueError(f"too many points for one render ({n}); the limit is {_MAX_POINTS}")
    return n


def render_points(
    cloud: PointCloud,
    camera: CameraModel,
    world_T_camera: torch.Tensor,
    point_radius_px: int = 1,
    min_distance_m: float = 0.0,
) -> RenderedView:
    """Z-buffered splat of ``cloud`` into ``camera`` placed at ``world_T_camera``.

    Each point in front of the camera covers the ``(2r+1)^2`` pixel square
    around the pixel containing its projection (``r = point_radius_px``; 0 is a
    single pixel), clipped to the image.  Per pixel the smallest camera z wins;
    equal depths go to the lowest point index.  Points closer than
    ``min_distance_m`` to the camera centre are not drawn.  Output on the
    cloud's device.
    """
    radius = _whole_number("point_radius_px", point_radius_px, minimum=0)
    device, n = cloud.device, _points_to_render(cloud)
    h, w = camera.height, camera.width
    pose = pose_float64(world_T_camera)

    # The z-buffer is padded by 2r on every side so that every splat of a point
    # whose centre pixel lies within r of the image fits without bounds checks;
    # the padding is cropped afterwards.
    pad = 2 * radius
    pw, ph = w + 2 * pad, h + 2 * pad
    zbuf_key = torch.full((ph * pw,), _EMPTY_KEY, dtype=torch.int64, device=device)
    camera_T_world = torch.linalg.inv(pose)
    # Points go through in chunks: amin is order-free, so the result is the same, and the temporaries stay small,
    # which keeps the time per point constant however large the cloud (measured with `egox bench geometry`'s
    # scaling table: in one pass it tripled from 0.25 M to 8 M points, 35 -> 112 ms per million).
    for start in range(0, n, _CHUNK_POINTS):
        stop = min(n, start + _CHUNK_POINTS)
        points_cam = transform_points(cloud.points_world[start:stop], camera_T_world)
        uv, valid = camera.project(points_cam)
        z = points_cam[:, 2].contiguous()
        # Pixel containing the projection (pixel centres at integers).
        uf = torch.floor(uv[:, 0] + 0.5)
        vf = torch.floor(uv[:, 1] + 0.5)
        valid &= torch.isfinite(z)
        if min_distance_m > 0.0:
            valid &= points_cam.square().sum(dim=-1) >= min_distance_m * min_distance_m
        valid &= (uf >= -radius) & (uf <= w - 1 + radius) & (vf >= -radius) & (vf <= h - 1 + radius)
        # Invalid points get a harmless in-range position and the "empty" key, so amin ignores them.
        ui = torch.where(valid, uf, 0.0).to(torch.int64)
        vi = torch.where(valid, vf, 0.0).to(torch.int64)
        base = (vi + pad) * pw + (ui + pad)
        z_bits = torch.where(valid, z, 1.0).view(torch.int32).to(torch.int64)
        key = (z_bits << _INDEX_BITS) | torch.arange(start, stop, device=device, dtype=torch.int64)
        key = torch.where(valid, key, _EMPTY_KEY)
        # One scatter per offset of the square: (2r+1)^2 passes over the chunk,
        # cheaper than materialising a (2r+1)^2 * N index tensor.
        for dv in range(-radius, radius + 1):
            for du in range(-radius, radius + 1):
                zbuf_key.scatter_reduce_(0, base + (dv * pw + du), key, reduce="amin", include_self=True)

    zbuf_key = zbuf_key.view(ph, pw)[pad : pad + h, pad : pad + w].contiguous()
    mask = zbuf_key != _EMPTY_KEY
    # Split each int64 key into its 32-bit halves without shifts: low = point index, high = depth bits.
    halves = zbuf_key.view(torch.int32).view(h, w, 2)
    index = torch.where(mask, halves[..., _LO_WORD], n)
    depth = torch.where(mask, halves[..., _HI_WORD].view(torch.float32), 0.0)
    # Gather colours as one int32 per point (RGB + padding byte); row n is black for empty pixels.
    palette = torch.zeros((n + 1, 4), dtype=torch.uint8, device=device)
    palette[:n, :3] = cloud.colors
    rgb = torch.index_select(palette.view(torch.int32).view(-1), 0, index.view(-1))
    rgb = rgb.view(torch.uint8).view(h, w, 4)[..., :3]
    return RenderedView(rgb=rgb.contiguous(), mask=mask, depth_m=depth, point_index=index)


def _project_for_soft(cloud: "PointCloud", camera: CameraModel, camera_T_world: torch.Tensor,
                      center_offset_px: float, radius: float, min_distance_m: float):
    """Project every point once (in chunks, to keep the temporaries small); keep those in front of the camera, at
    least min_distance_m from it, whose disc can reach the image. Returns their index (m,) int64 in index order,
    u and v (m,) float32 [px] (minus center_offset_px) and camera z (m,) float32 [m]."""
    h, w, device = camera.height, camera.width, cloud.device
    keep_idx, keep_u, keep_v, keep_z = [], [], [], []
    n = len(cloud)
    for start in range(0, n, _CHUNK_POINTS):
        stop = min(n, start + _CHUNK_POINTS)
        points_cam = transform_points(cloud.points_world[start:stop], camera_T_world)
        uv, valid = camera.project(points_cam)
        z = points_cam[:, 2]
        u = uv[:, 0] - center_offset_px
        v = uv[:, 1] - center_offset_px
        valid = valid & torch.isfinite(z) & (z >= 0.0) & torch.isfinite(u) & torch.isfinite(v)
        if min_distance_m > 0.0:
            valid &= points_cam.square().sum(dim=-1) >= min_distance_m * min_distance_m
        valid &= (u > -radius) & (u < w - 1 + radius) & (v > -radius) & (v < h - 1 + radius)
        sel = torch.nonzero(valid).squeeze(1)
        keep_idx.append(sel + start)
        keep_u.append(u.index_select(0, sel))
        keep_v.append(v.index_select(0, sel))
        keep_z.append(z.index_select(0, sel).contiguous())
    if not keep_idx:
        empty = torch.zeros(0, dtype=torch.float32, device=device)
        return torch.zeros(0, dtype=torch.int64, device=device), empty, empty, empty
    return tuple(torch.cat(t) for t in (keep_idx, keep_u, keep_v, keep_z))


_SOFT_SLAB_POINTS = 1024  # points per depth slab; 2-core Xeon (loaded), 88 k points, 448x448, median of 12 renders:
                          # 768 / 1024 / 1536 / 2048 points per slab: 273 / 257 / 259 / 273 ms
_RADIX_SORT_MIN = 1 << 15
_PAD_KEY = (1 << 31) - 1


def render_points_soft(
    cloud: PointCloud,
    camera: CameraModel,
    world_T_camera: torch.Tensor,
    radius_px: float = 5.0,
    points_per_pixel: int = 20,
    min_distance_m: float = 0.0,
    center_offset_px: float = 0.5,
    chunk_points: int | None = None,
    min_transmittance: float = 1.0 / 4096.0,
    backend: str = "auto",
    threads: int = 1,
) -> RenderedView:
    """Soft disc splats with front-to-back alpha compositing, as the released EgoX prior renderer (module docstring).

    Each point in front of the camera (z >= 0, and not closer than ``min_distance_m`` to the camera centre) is a
    disc of radius ``radius_px`` pixels centred at its projection minus ``center_offset_px`` (0.5: the released
    renderer's pixel-centre convention). A pixel at distance d < r from the centre gets alpha 1 - d^2 / r^2; per
    pixel the ``points_per_pixel`` nearest points (smallest z, ties to the lowest index) are blended front to back,
    colour = sum_k alpha_k prod_{j<k} (1 - alpha_j) c_k over black. ``mask``: at least one point within r;
    ``depth_m`` / ``point_index``: the nearest such point (0 / len(cloud) where empty). ``chunk_points``: points per
    depth slab of the torch code (None: ``_SOFT_SLAB_POINTS``); the result does not depend on it (up to float32
    summation order).
    ``min_transmittance``: a pixel whose remaining transmittance is at or below it takes no further points (they
    could add at most 255 * min_transmittance, 0.06 units at the default, before truncation to uint8; 0 disables
    this and composites all K). ``backend``: how the ranked points are composited: 'kernel' (the compiled CPU
    kernel of core/geometry/soft_kernel.py, numba; CPU tensors only), 'torch' (the slab code below, any device: the
    reference, and the CUDA path), 'auto' (the kernel for a CPU cloud when numba is installed, else torch).
    ``threads``: CPU threads of the kernel (bands of rows at once; the result does not depend on it).
    """
    radius = float(radius_px)
    if not (math.isfinite(radius) and radius > 0.0):
        raise ValueError(f"radius_px must be a positive number, got {radius_px!r}")
    k_max = _whole_number("points_per_pixel", points_per_pixel, minimum=1)
    if chunk_points is not None:
        _whole_number("chunk_points", chunk_points, minimum=1)
    if not (0.0 <= float(min_transmittance) < 1.0):
        raise ValueError(f"min_transmittance must be in [0, 1), got {min_transmittance!r}")
    device, n = cloud.device, _points_to_render(cloud)
    use_kernel = _soft_backend(backend, device)
    h, w = camera.height, camera.width
    camera_T_world = torch.linalg.inv(pose_float64(world_T_camera))
    reach = int(math.ceil(radius))          # offsets -reach..reach around the nearest pixel
    r2 = radius * radius

    if use_kernel and isinstance(camera, PinholeCamera) and not camera.has_distortion:
        # An undistorted pinhole camera on the kernel's path: one compiled pass, the same float32 operations.
        idx_all, u_all, v_all, z_all = (torch.from_numpy(a) for a in soft_kernel.project_pinhole(
            cloud.points_world.numpy(), camera_T_world.numpy(), camera.fx, camera.fy, camera.cx, camera.cy,
            center_offset_px, radius, w, h, min_distance_m))
    else:
        idx_all, u_all, v_all, z_all = _project_for_soft(cloud, camera, camera_T_world, center_offset_px, radius,
                                                         min_distance_m)

    # Points in key order (depth, ties to the lowest index; z >= 0, whose IEEE bits order like the value): from here
    # on a point is its rank in that order, and "nearer" is "lower rank".
    _, order = torch.sort((z_all.view(torch.int32).to(torch.int64) << _INDEX_BITS) | idx_all)
    # The accumulators live on a canvas padded by 2 reach on every side, so that every candidate pixel of a point that
    # can reach the image has an address (the padding stays dead and is cropped at the end).
    pad = 2 * reach
    if use_kernel:
        ranked = soft_kernel.gather_ranked(order.numpy(), idx_all.numpy(), u_all.numpy(), v_all.numpy(),
                                           z_all.numpy(), cloud.colors.numpy(), pad)
        rgb, mask, index, depth = (torch.from_numpy(a) for a in soft_kernel.render(
            *ranked, n, radius, k_max, min_transmittance, h, w, pad, threads))
        return RenderedView(rgb=rgb, mask=mask, depth_m=depth, point_index=index)
    m = int(idx_all.shape[0])
    z_sorted = z_all.index_select(0, order)
    idx_sorted = idx_all.index_select(0, order)
    colors = cloud.colors.index_select(0, idx_sorted).to(torch.float32)
    hp, wp = h + 2 * pad, w + 2 * pad
    n_pix = hp * wp
    u_pad = u_all.index_select(0, order) + pad
    v_pad = v_all.index_select(0, order) + pad
    col_near = torch.floor(u_pad + 0.5).to(torch.int32)     # nearest pixel, padded canvas
    row_near = torch.floor(v_pad + 0.5).to(torch.int32)
    acc = torch.zeros((n_pix, 3), dtype=torch.float32, device=device)     # composited colour, 0-255 units
    trans = torch.ones(n_pix, dtype=torch.float32, device=device)         # transmittance so far
    count = torch.zeros(n_pix, dtype=torch.int32, device=device)          # points composited so far
    first = torch.full((n_pix,), m, dtype=torch.int32, device=device)     # rank of the nearest point
    live = torch.zeros((hp, wp), dtype=torch.bool, device=device)         # pixel still takes points
    live[pad : pad + h, pad : pad + w] = True
    live = live.view(-1)
    offsets = torch.arange(-reach, reach + 1, device=device, dtype=torch.int32)
    # Pair keys pixel * s + local rank must fit in int32.
    slab = int(chunk_points) if chunk_points is not None else _SOFT_SLAB_POINTS
    slab = max(1, min(slab, _PAD_KEY // n_pix))   # keys stay below _PAD_KEY
    for a in range(0, m, slab):
        b = min(m, a + slab)
        s = b - a
        u, v = u_pad[a:b], v_pad[a:b]
        cols = col_near[a:b].unsqueeze(1) + offsets                          # (s, 2 reach + 1)
        rows = row_near[a:b].unsqueeze(1) + offsets
        dx2 = (cols.to(torch.float32) - u.unsqueeze(1)).square()
        dy2 = (rows.to(torch.float32) - v.unsqueeze(1)).square()
        d2 = dy2.unsqueeze(2) + dx2.unsqueeze(1)                             # (s, row offset, col offset)
        pix = (rows * wp).unsqueeze(2) + cols.unsqueeze(1)
        inside = (d2 < r2) & live.index_select(0, pix.view(-1)).view_as(pix)
        sel = torch.nonzero(inside.view(-1)).squeeze(1)
        total = sel.numel()
        if total == 0:
            continue
        local = torch.div(sel, inside.shape[1] * inside.shape[2], rounding_mode="floor").to(torch.int32)
        key = pix.view(-1).index_select(0, sel) * s + local                 # pixel-major, then rank
        q = d2.view(-1).index_select(0, sel)
        if total < _RADIX_SORT_MIN and device.type == "cpu":
            # Torch sorts 1-D integer tensors of at least 32768 elements on the CPU with a radix sort, about 5 times
            # faster per element than the comparison sort below that size: pad with keys that sort last.
            key = torch.cat([key, key.new_full((_RADIX_SORT_MIN - total,), _PAD_KEY)])
        key, perm = torch.sort(key)
        key, perm = key[:total], perm[:total]
        q = q.index_select(0, perm)
        pix32 = torch.div(key, s, rounding_mode="floor")
        rank = torch.remainder(key, s) + a
        pix = pix32.to(torch.int64)
        start = torch.empty(total, dtype=torch.bool, device=device)
        start[:1] = True
        torch.ne(pix32[1:], pix32[:-1], out=start[1:])
        run_first = torch.nonzero(start).squeeze(1)                        # position of each pixel's first pair
        first_pos = run_first.index_select(0, torch.cumsum(start, 0, dtype=torch.int32) - 1)
        place = torch.arange(total, device=device) - first_pos             # rank of the pair within its pixel
        count_before = count.index_select(0, pix)
        keep = (count_before + place) < k_max
        # Transmittance in front of each pair: the pixel's so far times the product of (1 - alpha) = d^2 / r^2 of
        # the nearer pairs of this slab, as an exclusive segmented cumulative sum of logs (float64).
        q = q / r2                                                           # 1 - alpha
        log_t = torch.where(keep, torch.log(q).clamp_min(-80.0).to(torch.float64), 0.0)
        incl = torch.cumsum(log_t, 0)
        excl = incl - log_t
        before = trans.index_select(0, pix) * torch.exp(excl - excl.index_select(0, first_pos)).to(torch.float32)
        keep &= before > min_transmittance
        alpha = 1.0 - q
        acc.index_add_(0, pix, colors.index_select(0, rank) * torch.where(keep, before * alpha, 0.0).unsqueeze(1))
        # Along a pixel's run the kept pairs are a prefix and the transmittance falls: the smallest is the last.
        trans.scatter_reduce_(0, pix, torch.where(keep, before * q, 2.0), reduce="amin", include_self=True)
        count.index_add_(0, pix, keep.to(torch.int32))
        run_pix = pix.index_select(0, run_first)
        # A pixel's first pair ever (count 0 before this slab; the first of a run is always kept) is its nearest.
        first.index_copy_(0, run_pix, torch.where(count_before.index_select(0, run_first) == 0,
                                                  rank.index_select(0, run_first), first.index_select(0, run_pix)))
        live.index_copy_(0, run_pix, (count.index_select(0, run_pix) < k_max)
                         & (trans.index_select(0, run_pix) > min_transmittance))

    return _soft_view(acc.view(hp, wp, 3), count.view(hp, wp), first.view(hp, wp), idx_sorted, z_sorted, n, h, w,
                      pad)


def _soft_backend(backend: str, device: torch.device) -> bool:
    """Whether render_points_soft composites with the compiled kernel (True) or the torch slabs (False)."""
    if backend not in ("auto", "kernel", "torch"):
        raise ValueError(f"backend must be 'auto', 'kernel' or 'torch', got {backend!r}")
    if backend == "torch":
        return False
    if backend == "kernel":
        if device.type != "cpu":
            raise ValueError(f"the soft splat kernel runs on the CPU only, the cloud is on {device}")
        if not soft_kernel.available():
            raise RuntimeError("the soft splat kernel needs numba (pip install numba; scripts/setup.sh does)")
        return True
    return device.type == "cpu" and soft_kernel.available()


def _soft_view(acc: torch.Tensor, count: torch.Tensor, first: torch.Tensor, idx_sorted: torch.Tensor,
               z_sorted: torch.Tensor, n: int, h: int, w: int, pad: int) -> RenderedView:
    """The soft render from its padded (hp, wp) accumulators: acc (hp, wp, 3) float32 0-255, count int32 (points
    composited), first int32 (rank of the nearest point, the number of ranked points where none)."""
    count = count[pad : pad + h, pad : pad + w]
    mask = count > 0
    nearest = first[pad : pad + h, pad : pad + w].reshape(-1).to(torch.int64)
    index = torch.cat([idx_sorted.to(torch.int32), idx_sorted.new_full((1,), n, dtype=torch.int32)])
    index = torch.where(mask, index.index_select(0, nearest).view(h, w), n)
    depth = torch.where(mask, torch.cat([z_sorted, z_sorted.new_zeros(1)]).index_select(0, nearest).view(h, w), 0.0)
    # As the released tool: clip, truncate to uint8 (+1e-3 so an opaque point keeps its exact colour), and pixels
    # whose three channels are all below 0.01 * 255 become black.
    rgb = torch.floor(acc[pad : pad + h, pad : pad + w] + 1e-3).clamp_(0.0, 255.0)
    rgb = torch.where((rgb < 2.55).all(dim=-1, keepdim=True), 0.0, rgb).to(torch.uint8)
    return RenderedView(rgb=rgb.contiguous(), mask=mask, depth_m=depth, point_index=index)
