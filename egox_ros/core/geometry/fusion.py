"""Fuse the RGB-D frames of the rolling window into one bounded world point cloud.

Three strategies share the small :class:`CloudFusion` interface (``make_fusion(config)`` picks one, or the
fourth, ``"auto"``, which picks between the first two as the camera holds still or moves):

* ``"static"`` - :class:`StaticCameraFusion`, for an exo camera that does not move (what the method's released
  tools assume): a per-pixel running average of depth and colour of the *static* pixels, lifted to 3D once per
  change.  Memory is O(H * W) whatever the window length.
* ``"auto"`` (the default) - :class:`AutoFusion`: the static average while the exo camera holds still, the voxel
  grid of the newest frames while it moves.
* ``"moving"`` - :class:`VoxelFusion`, for a moving exo camera: every frame's points (with its own pose) go into
  a voxel grid keyed by packed int64 voxel coordinates; each voxel holds the mean position and colour of the
  points of the window's frames that fell into it.  Frames leaving the window take their contribution with them.
* ``"concat"`` - :class:`ConcatFusion`: the per-frame clouds side by side (no averaging), newest first; the
  behaviour of the plain prior renderer, with the same memory bound.

Common conventions: ``rgb`` (H, W, 3) uint8, ``depth_m`` (H, W) float metres along the camera z axis (0, NaN,
inf or outside ``[min_depth_m, max_depth_m]`` = no reading), ``dynamic_mask`` (H, W) bool (True = a moving
object such as a person, kept out of the fused background), ``world_T_camera`` (4, 4) camera-to-world pose with
OpenCV camera axes.  Images may be numpy arrays or torch tensors; maths runs in float32 on the device of
``depth_m`` (or on ``device`` when the fusion was built with one).  Poses are read as float64 on the CPU.
Frames are identified by an integer key, normally the stamp in nanoseconds; keys must increase.

Dynamic pixels are never averaged: they are lifted per frame and kept with that frame (while it is in the
window); :meth:`CloudFusion.frame_cloud` returns the fused background plus one frame's dynamic points.

Long on purpose (about 850 lines): the strategies share the frame lifting (_FrameInput), the store of
dynamic points and the window bookkeeping (_FusionBase) defined here, and each is read against the others.
"""
from __future__ import annotations

import math
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Protocol, runtime_checkable

import torch

from egox_ros.core.config import param, validate
from egox_ros.core.geometry import voxel_kernel
from egox_ros.core.geometry.cameras import CameraModel
from egox_ros.core.geometry.render import PointCloud, pose_float64, transform_points

FUSION_MODES = ("auto", "static", "moving", "concat")


@dataclass
class FusionConfig:
    """Point-cloud fusion over the rolling window of exo frames."""
    mode: str = param("auto", "'static': per-pixel running average for a fixed exo camera (as the released tools "
                      "made the priors); 'moving': voxel grid of the newest window_frames for a moving exo camera; "
                      "'auto': 'static' while the exo camera holds still (within static_pose_tolerance_*), "
                      "'moving' while it moves; 'concat': per-frame clouds side by side", choices=FUSION_MODES)
    window_frames: int = param(4, "newest window frames fused by 'moving' and 'concat' (and by 'auto' while the "
                               "camera moves)", (1, 100000))
    static_window_frames: int = param(49, "'static' (and 'auto' while the camera holds still): effective length of "
                                      "the per-pixel running average [frames] (49: a released clip, which the "
                                      "released tools average whole)", (1, 100000))
    voxel_size_m: float = param(0.005, "voxel edge of the 'moving' fusion [m]", (1e-4, 10.0))
    max_points: int = param(2_000_000, "memory bound: points (static, concat) or per-frame voxel records "
                            "(moving) kept for the window; 0 = follow the window: window_frames times the most "
                            "one frame can give (exo pixels / stride^2), so no frame leaves early (about 36 bytes "
                            "per record: 49 frames of 640x480 at stride 2 take 135 MB)", (0, 1_000_000_000))
    stride: int = param(2, "use every n-th exo pixel in both directions (2: as the method's tools, 4x faster)",
                        (1, 16))
    min_depth_m: float = param(0.1, "depth below this is ignored [m]", (0.0, 1000.0))
    max_depth_m: float = param(10.0, "depth above this is ignored [m]", (0.0, 1000.0))
    static_pose_tolerance_m: float = param(0.02, "static: the exo camera may move this far and still count as "
                                           "static [m]", (0.0, 1000.0))
    static_pose_tolerance_deg: float = param(1.0, "static: the exo camera may turn this much and still count as "
                                             "static [deg]", (0.0, 180.0))
    static_on_move: str = param("reset", "static: when the camera moved beyond the tolerance, 'raise' "
                                "CameraMovedError (state kept) or 'reset' and start over from the new frame ('auto' "
                                "turns to the voxel grid instead)", choices=("raise", "reset"))
    static_min_observations: int = param(1, "static: a pixel enters the cloud once it had this many valid "
                                         "readings", (1, 100000))
    clip_background: bool = param(True, "static and auto: with a clip generator (egox), every frame of a clip sees one "
                                        "background, the per-pixel mean over the whole clip of its static pixels, as "
                                        "the released tools made the priors the weights saw; false: causal (each "
                                        "frame sees the frames up to it); a camera that moves within the clip falls "
                                        "back to causal")
    edge_window_px: int = param(5, "depth-edge filter before lifting: a pixel is kept when (max - min) / mean of "
                                   "the depth in this window around it is below edge_ratio (the released EgoX "
                                   "tools' 'reliable depth': 5 px, 0.1); 0 or 1 = off; odd", (0, 31))
    edge_ratio: float = param(0.1, "depth-edge filter threshold (see edge_window_px)", (0.0, 100.0))
    static_mean_edge_filter: bool = param(True, "static and auto: apply the depth-edge filter again to the averaged "
                                                "depth before lifting it, as the released EgoX tools do: points where "
                                                "the average mixes surfaces, and next to pixels never seen, leave")

    def __post_init__(self) -> None:
        validate(self)
        if self.edge_window_px > 1 and self.edge_window_px % 2 == 0:
            raise ValueError(f"FusionConfig.edge_window_px = {self.edge_window_px} must be odd (or 0 / 1: off)")
        if self.min_depth_m >= self.max_depth_m:
            raise ValueError(f"FusionConfig.min_depth_m ({self.min_depth_m}) must be below "
                             f"max_depth_m ({self.max_depth_m})")


class CameraMovedError(RuntimeError):
    """The static exo camera moved beyond the tolerance; the fusion state is unchanged.

    ``translation_m`` / ``rotation_deg``: the motion relative to the pose of the first fused frame.
    Switch to ``mode="moving"`` or call ``reset()`` and add the frame again.
    """

    def __init__(self, translation_m: float, rotation_deg: float, tolerance_m: float, tolerance_deg: float):
        super().__init__(f"static exo camera moved {translation_m:.4f} m / {rotation_deg:.3f} deg since the first "
                         f"fused frame (tolerance {tolerance_m} m / {tolerance_deg} deg)")
        self.translation_m = translation_m
        self.rotation_deg = rotation_deg


@runtime_checkable
class CloudFusion(Protocol):
    """What the prior renderer needs from a fusion strategy."""
    evicted_by_budget: int   # frames that left the window early to stay within the point budget (max_points)

    def add(self, key: int, rgb, depth_m, camera: CameraModel, world_T_camera,
            dynamic_mask=None, excluded_mask=None) -> None:
        """Fuse one frame (key: stamp [ns], increasing). Frames beyond the window leave. ``dynamic_mask`` (H, W)
        bool: pixels kept as this frame's own points, out of the static cloud; ``excluded_mask`` (H, W) bool: pixels
        not fused at all (their depth still counts in the depth-edge filter, as where the released tools apply
        their instance masks)."""

    def remove_older_than(self, key: int) -> int:
        """Drop the contribution of frames with key < ``key``; returns how many frames left."""

    def cloud(self) -> PointCloud:
        """The fused static cloud (world frame); cached until the next change. Treat as read-only."""

    def frame_cloud(self, key: int) -> PointCloud:
        """``cloud()`` plus the dynamic points of frame ``key`` (just ``cloud()`` if it has none)."""

    def dynamic_points(self, key: int) -> int:
        """How many dynamic points frame ``key`` has: the first ones of ``frame_cloud(key)``."""

    def reset(self) -> None:
        """Forget everything."""

    def __len__(self) -> int:
        """Frames currently contributing."""


# ----------------------------------------------------------------------------- helpers


def _compiled_on(device: torch.device) -> bool:
    """Whether the compiled CPU kernels (voxel_kernel, numba) do the work on ``device``: the CPU, numba installed."""
    return device.type == "cpu" and voxel_kernel.available()


def _pose_change(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(translation [m], rotation angle [deg]) between two float64 poses."""
    translation = float(torch.linalg.norm(a[:3, 3] - b[:3, 3]))
    cos = (float(torch.trace(a[:3, :3].T @ b[:3, :3])) - 1.0) / 2.0
    return translation, math.degrees(math.acos(min(1.0, max(-1.0, cos))))


def reliable_depth(depth_m: torch.Tensor, window_px: int, ratio: float, stride: int = 1,
                   compiled: bool = True) -> torch.Tensor:
    """Pixels away from depth discontinuities: (max - min) / mean of the depth in a window_px x window_px window
    below ``ratio``, and a valid reading (finite, > 0). The released EgoX tools keep only such pixels when they
    lift depth (window 5, ratio 0.1); like them, missing readings count as 0 m (so pixels next to a hole go too)
    and the window is clipped at the image border for max / min while the mean counts the outside as 0.

    depth_m: (H, W) float [m], NaN or <= 0 = no reading. Returns (ceil(H / stride), ceil(W / stride)) bool: the
    mask at every stride-th pixel, computed from the full-resolution depth. ``compiled``: on the CPU with numba,
    core/geometry/voxel_kernel.py's compiled pass (the same result; False: the torch code, its reference).
    """
    if compiled and window_px > 1 and _compiled_on(depth_m.device):
        return voxel_kernel.reliable_depth(depth_m.to(torch.float32), window_px, ratio, stride)
    d = torch.nan_to_num(depth_m.to(torch.float32), nan=0.0).clamp_(min=0.0)
    if window_px <= 1:
        return (d > 0)[::stride, ::stride]
    # Windows of the stride pixels only; max / min clip the window at the border, the mean counts the outside as 0
    # (avg_pool2d's padding).
    local_max = _window_max(d, window_px, stride)
    local_min = -_window_max(-d, window_px, stride)
    r = window_px // 2
    local_mean = torch.nn.functional.avg_pool2d(d[None, None], window_px, stride=stride, padding=r)[0, 0]
    centre = d[::stride, ::stride]
    return ((local_max - local_min) / (local_mean + 1e-6) < ratio) & (centre > 0)


def _window_max(d: torch.Tensor, k: int, stride: int) -> torch.Tensor:
    """max_pool2d(d, k, stride, padding=k // 2) of an (H, W) tensor, separably over shifted slices: the same values
    in a third of the time on CPU (2 vs 6 ms at 640x480, window 5, stride 2, one thread)."""
    r, (h, w) = k // 2, d.shape
    padded = torch.nn.functional.pad(d[None], (r, r, 0, 0), value=float("-inf"))[0]
    rows = padded[:, 0:w:stride].clone()
    for j in range(1, k):
        torch.maximum(rows, padded[:, j:j + w:stride], out=rows)
    padded = torch.nn.functional.pad(rows[None], (0, 0, r, r), value=float("-inf"))[0]
    out = padded[0:h:stride].clone()
    for i in range(1, k):
        torch.maximum(out, padded[i:i + h:stride], out=out)
    return out


class _FrameInput:
    """One frame's inputs validated, on the fusion's device, subsampled by ``stride``.

    depth (h', w') float32 with invalid readings set to NaN; rgb (h', w', 3) uint8; dynamic (h', w') bool;
    ``static_valid`` / ``dynamic_valid`` (h', w') bool; rays (h', w', 3) float32 unit-z camera rays. Pixels at
    depth discontinuities (see :func:`reliable_depth`) count as invalid, and so do excluded pixels, whose depth the
    discontinuity test still sees (the released tools test the whole depth map, then apply their instance masks: a
    hand on a table leaves no edge in the table around it).
    """

    def __init__(self, config: FusionConfig, device, rgb, depth_m, camera: CameraModel, world_T_camera,
                 dynamic_mask, excluded_mask=None):
        depth = torch.as_tensor(depth_m)
        dev = torch.device(device) if device is not None else depth.device
        expected = (camera.height, camera.width)
        if tuple(depth.shape) != expected:
            raise ValueError(f"depth_m must have shape {expected} (camera size), got {tuple(depth.shape)}")
        rgb = torch.as_tensor(rgb)
        if tuple(rgb.shape) != expected + (3,) or rgb.dtype != torch.uint8:
            raise ValueError(f"rgb must be uint8 of shape {expected + (3,)}, got {rgb.dtype} {tuple(rgb.shape)}")
        s = config.stride
        self.camera = camera
        self.pose = pose_float64(world_T_camera)
        self.device = dev
        depth = depth.to(device=dev, dtype=torch.float32)
        reliable = reliable_depth(depth, config.edge_window_px, config.edge_ratio, s)
        depth = depth[::s, ::s]
        self.rays = camera.ray_grid(s, device=dev)
        valid = torch.isfinite(depth) & (depth >= config.min_depth_m) & (depth <= config.max_depth_m) & reliable
        valid &= torch.isfinite(self.rays).all(-1)  # a fisheye has no ray outside its image circle
        dynamic, excluded = (self._grid_mask(m, name, expected, s, dev, valid) for m, name in
                             ((dynamic_mask, "dynamic_mask"), (excluded_mask, "excluded_mask")))
        valid &= ~excluded
        self.depth = torch.where(valid, depth, torch.nan)
        self.rgb = rgb[::s, ::s].to(dev)
        self.static_valid = valid & ~dynamic
        self.dynamic_valid = valid & dynamic
        self.pixels = int(valid.numel())      # stride pixels: the most points this frame can give

    @staticmethod
    def _grid_mask(mask, name: str, expected: tuple[int, int], stride: int, device, like: torch.Tensor):
        """An optional (H, W) mask at the stride pixels, bool on ``device`` (all False when None)."""
        if mask is None:
            return torch.zeros_like(like)
        mask = torch.as_tensor(mask)
        if tuple(mask.shape) != expected:
            raise ValueError(f"{name} must have shape {expected}, got {tuple(mask.shape)}")
        return mask[::stride, ::stride].to(device=device, dtype=torch.bool)

    def voxel_records(self, select: torch.Tensor, voxel_size_m: float) -> "_Voxels":
        """_voxelize(self.lift(select), voxel_size_m); on the CPU with numba in one compiled pass (the same
        records)."""
        if _compiled_on(self.device):
            keys, offset, colors = voxel_kernel.lift_voxel_records(self.depth, self.rays, select, self.rgb, self.pose,
                                                                   voxel_size_m, _AXIS_BITS, _AXIS_OFFSET)
            return _Voxels.reduce(keys, offset, colors, torch.ones(keys.shape, dtype=torch.int32))
        return _voxelize(self.lift(select), voxel_size_m)

    def lift(self, select: torch.Tensor) -> PointCloud:
        """World points of the pixels where ``select`` (h', w') bool is True (they must have valid depth)."""
        keep = torch.nonzero(select.reshape(-1)).squeeze(1)
        d = self.depth.reshape(-1).index_select(0, keep)
        points = self.rays.reshape(-1, 3).index_select(0, keep) * d.unsqueeze(-1)
        return PointCloud(transform_points(points, self.pose), self.rgb.reshape(-1, 3).index_select(0, keep))


def _even_subset(n: int, limit: int, device) -> torch.Tensor:
    """``limit`` evenly spaced indices of ``range(n)`` (deterministic thinning)."""
    return torch.linspace(0, n - 1, limit, device=device).round().to(torch.int64)


def _thin(cloud: PointCloud, limit: int) -> PointCloud:
    """At most ``limit`` points of ``cloud``, evenly spaced."""
    if len(cloud) <= limit:
        return cloud
    idx = _even_subset(len(cloud), limit, cloud.device)
    return PointCloud(cloud.points_world[idx], cloud.colors[idx])


class _DynamicStore:
    """Per-frame dynamic point clouds of the frames in the window, bounded in total by a point budget."""

    def __init__(self):
        self.clouds: OrderedDict[int, PointCloud] = OrderedDict()

    def put(self, key: int, cloud: PointCloud, max_points: int) -> None:
        cloud = _thin(cloud, max_points)
        if len(cloud):
            self.clouds[key] = cloud
        while sum(len(c) for c in self.clouds.values()) > max_points:
            self.clouds.popitem(last=False)

    def drop_older_than(self, key: int) -> None:
        for k in [k for k in self.clouds if k < key]:
            del self.clouds[k]

    def with_background(self, background: PointCloud, key: int) -> PointCloud:
        dyn = self.clouds.get(key)
        if dyn is None:
            return background
        # Dynamic points first: on equal depth the renderer keeps the lower index.
        return PointCloud.concat([dyn.to(background.device) if len(background) else dyn, background])

    def nbytes(self) -> int:
        return sum(c.nbytes for c in self.clouds.values())


class _FusionBase:
    """What every fusion shares: per-frame dynamic points added to the fused background cloud, the point budget,
    and the count of frames that left the window early because of it."""
    _dynamic: _DynamicStore
    config: FusionConfig
    evicted_by_budget: int = 0     # frames dropped before their time to stay within the budget (since creation)

    def point_budget(self, frame: "_FrameInput") -> int:
        """config.max_points, or with 0 the window's worth of full frames (nothing leaves early)."""
        return self.config.max_points or self.config.window_frames * frame.pixels

    def cloud(self) -> PointCloud:
        raise NotImplementedError

    def frame_cloud(self, key: int) -> PointCloud:
        return self._dynamic.with_background(self.cloud(), int(key))

    def dynamic_points(self, key: int) -> int:
        """How many dynamic points frame ``key`` has: the first ones of ``frame_cloud(key)``."""
        cloud = self._dynamic.clouds.get(int(key))
        return 0 if cloud is None else len(cloud)


class _PerFrameFusion(_FusionBase):
    """A fusion that keeps each frame's contribution, so that frames leave the window exactly."""

    def _frame_keys(self) -> list[int]:
        raise NotImplementedError

    def _remove_frame(self, key: int) -> None:
        raise NotImplementedError

    def remove_older_than(self, key: int) -> int:
        old = [k for k in self._frame_keys() if k < int(key)]
        for k in old:
            self._remove_frame(k)
        self._dynamic.drop_older_than(int(key))
        return len(old)


def _check_key(key: int, newest: int | None) -> int:
    key = int(key)
    if newest is not None and key <= newest:
        raise ValueError(f"frame key {key} is not after the newest fused frame {newest}")
    return key


# ----------------------------------------------------------------------------- static camera


class StaticCameraFusion(_FusionBase):
    """Per-pixel running average of depth and colour for a static exo camera.

    State on the stride-subsampled pixel grid (h', w'): mean depth float32 [m], mean colour float32, and an
    observation weight float32 - O(h' * w') memory whatever the window length.

    Window semantics (chosen for O(H*W) memory): a *capped running average*.  Each pixel's weight counts its
    valid static readings up to ``static_window_frames``; a new reading moves the mean by ``1 / weight``.  So for
    the first ``static_window_frames`` readings the mean is the exact average, after that it is an exponential
    moving average with weight ``1 / static_window_frames`` per reading (older readings fade out, time constant
    ``static_window_frames`` frames).  Removing one old frame exactly would need every frame's image kept;
    ``remove_older_than`` therefore only clears the state when *all* fused frames are older than its key.

    Pose: the pose of the first frame after a reset is the reference; a frame whose pose differs by more than
    ``static_pose_tolerance_m`` / ``_deg`` raises :class:`CameraMovedError` (nothing changed) or, with
    ``static_on_move="reset"``, resets and starts over from that frame (``moves`` counts these).  The camera
    intrinsics must stay the same (ValueError otherwise).
    """

    def __init__(self, config: FusionConfig, device: torch.device | str | None = None):
        self.config = config
        self.device = device
        self.moves = 0
        self.reset()

    def reset(self) -> None:
        self._camera: CameraModel | None = None
        self._pose: torch.Tensor | None = None
        self._depth: torch.Tensor | None = None
        self._color: torch.Tensor | None = None
        self._weight: torch.Tensor | None = None
        self._frames = 0
        self._newest: int | None = None
        self._dynamic = _DynamicStore()
        self._cache: PointCloud | None = None

    def camera_changed(self, camera: CameraModel) -> bool:
        """Whether ``camera`` differs from the intrinsics of the frames averaged so far."""
        return self._camera is not None and camera != self._camera

    def __len__(self) -> int:
        """Frames fused since the last reset, capped at ``static_window_frames`` (the average's effective length)."""
        return min(self._frames, self.config.static_window_frames)

    def add(self, key: int, rgb, depth_m, camera: CameraModel, world_T_camera, dynamic_mask=None,
            excluded_mask=None) -> None:
        """Average the frame's static pixels in; keep its dynamic pixels (lifted) with ``key``."""
        key = _check_key(key, self._newest)
        frame = _FrameInput(self.config, self.device, rgb, depth_m, camera, world_T_camera, dynamic_mask,
                             excluded_mask)
        if self.camera_changed(camera):
            raise ValueError("StaticCameraFusion: the camera intrinsics changed; reset() first")
        if self._pose is not None:
            moved_m, moved_deg = _pose_change(self._pose, frame.pose)
            if moved_m > self.config.static_pose_tolerance_m or moved_deg > self.config.static_pose_tolerance_deg:
                if self.config.static_on_move == "raise":
                    raise CameraMovedError(moved_m, moved_deg, self.config.static_pose_tolerance_m,
                                           self.config.static_pose_tolerance_deg)
                self.reset()
                self.moves += 1
        if self._depth is None:
            h, w = frame.depth.shape
            self._camera, self._pose = camera, frame.pose
            self._depth = torch.zeros((h, w), dtype=torch.float32, device=frame.device)
            self._color = torch.zeros((h, w, 3), dtype=torch.float32, device=frame.device)
            self._weight = torch.zeros((h, w), dtype=torch.float32, device=frame.device)
        valid = frame.static_valid.to(self._depth.device)
        cap = float(self.config.static_window_frames)
        if _compiled_on(self._depth.device):     # the same, in one compiled pass
            voxel_kernel.static_average_update(frame.depth, frame.rgb, valid, self._depth, self._color,
                                               self._weight, cap)
        else:
            weight = torch.where(valid, (self._weight + 1.0).clamp_(max=cap), self._weight)
            step = torch.where(valid, 1.0 / weight.clamp(min=1.0), 0.0)
            depth = torch.nan_to_num(frame.depth.to(self._depth.device), nan=0.0)
            self._depth += step * (depth - self._depth)
            self._color += step.unsqueeze(-1) * (frame.rgb.to(self._color.device, torch.float32) - self._color)
            self._weight = weight
        self._frames += 1
        self._newest = key
        self._dynamic.put(key, frame.lift(frame.dynamic_valid), self.point_budget(frame))
        while len(self._dynamic.clouds) > self.config.window_frames:
            self._dynamic.clouds.popitem(last=False)
        self._cache = None

    def remove_older_than(self, key: int) -> int:
        """Clears everything when every fused frame is older than ``key`` (see the class notes); returns the
        number of frames that left."""
        self._dynamic.drop_older_than(int(key))
        if self._newest is not None and self._newest < int(key):
            n = len(self)
            self.reset()
            return n
        return 0

    def background_depth(self) -> torch.Tensor:
        """(h', w') float32 fused depth [m] on the stride grid, NaN where not yet observed enough."""
        if self._depth is None:
            raise RuntimeError("no frame fused yet")
        return torch.where(self._weight >= self.config.static_min_observations, self._depth, torch.nan)

    def background_rgb(self) -> torch.Tensor:
        """(h', w', 3) uint8 fused colour on the stride grid (0 where not observed), truncated as the released
        renderer truncates its mean colours (docs/egox-fidelity.md)."""
        if self._color is None:
            raise RuntimeError("no frame fused yet")
        return self._color.floor().clamp(0, 255).to(torch.uint8)

    def _mean_edge_window(self) -> int:
        """The depth-edge filter's window on the stride grid (odd; 1 = off): the stride pixels within its
        full-resolution half-width, rounded up."""
        half = self.config.edge_window_px // 2
        if not self.config.static_mean_edge_filter or half == 0:
            return 1
        return 2 * math.ceil(half / self.config.stride) + 1

    def cloud(self) -> PointCloud:
        """The fused background: one point per stride pixel seen ``static_min_observations`` times whose averaged
        depth passes the depth-edge filter (``static_mean_edge_filter``).

        The released tools filter the full-resolution mean depth (window ``edge_window_px``) and then take every
        stride-th pixel; the average here is kept on the stride grid only, so the filter runs there with the window
        that spans the same pixels (5 px at stride 2: 3 stride pixels, a third of the 25 samples). On the Ego-Exo4D
        development clips the two kept the same priors to 0.003 in mask IoU (docs/benchmarks.md)."""
        if self._cache is None:
            if self._depth is None:
                self._cache = PointCloud.empty(self.device)
            else:
                rays = self._camera.ray_grid(self.config.stride, device=self._depth.device)
                min_weight = self.config.static_min_observations
                weight = self._weight
                window = self._mean_edge_window()
                if window > 1:
                    smooth = reliable_depth(self.background_depth(), window, self.config.edge_ratio)
                    weight = torch.where(smooth, weight, 0.0)
                if _compiled_on(self._depth.device):   # the same, in one pass
                    points, colors = voxel_kernel.static_cloud(self._depth, self._color, weight, min_weight,
                                                               rays, self._pose)
                else:
                    keep = torch.nonzero((weight >= min_weight).reshape(-1)).squeeze(1)
                    points = transform_points(rays.reshape(-1, 3).index_select(0, keep)
                                              * self._depth.reshape(-1)[keep].unsqueeze(-1), self._pose)
                    colors = self.background_rgb().reshape(-1, 3).index_select(0, keep)
                self._cache = PointCloud(points, colors)
        return self._cache

    def nbytes(self) -> int:
        """Bytes held by the fusion state (averages, dynamic points, cached cloud)."""
        state = sum(t.nbytes for t in (self._depth, self._color, self._weight) if t is not None)
        cache = self._cache.nbytes if self._cache is not None else 0
        return state + self._dynamic.nbytes() + cache


# ----------------------------------------------------------------------------- moving camera: voxel grid

_AXIS_BITS = 21
_AXIS_OFFSET = 1 << (_AXIS_BITS - 1)  # voxel coordinates in [-2^20, 2^20) per axis (+-10 km at 1 cm)
_AXIS_MASK = (1 << _AXIS_BITS) - 1


@dataclass
class _Voxels:
    """Voxel sums: keys (M,) int64 sorted unique; offset_sum (M, 3) float32 sum of point offsets from the voxel
    corner [m]; color_sum (M, 3) int32; count (M,) int32 points."""
    keys: torch.Tensor
    offset_sum: torch.Tensor
    color_sum: torch.Tensor
    count: torch.Tensor

    def __len__(self) -> int:
        return int(self.keys.shape[0])

    def nbytes(self) -> int:
        return self.keys.nbytes + self.offset_sum.nbytes + self.color_sum.nbytes + self.count.nbytes

    def select(self, idx: torch.Tensor) -> "_Voxels":
        return _Voxels(self.keys[idx], self.offset_sum[idx], self.color_sum[idx], self.count[idx])

    @staticmethod
    def reduce(keys: torch.Tensor, offset: torch.Tensor, color: torch.Tensor, count: torch.Tensor,
               sorted_runs: bool = False) -> "_Voxels":
        """Sum rows with equal keys (any order; ``sorted_runs``: a few ascending runs, which sort faster) into sorted
        unique voxels (on the CPU with core/geometry/voxel_kernel.py's compiled pass when numba is there)."""
        if _compiled_on(keys.device):
            return _Voxels(*voxel_kernel.voxel_sums(keys, offset, color, count, sorted_runs=sorted_runs))
        return _Voxels.reduce_torch(keys, offset, color, count)

    @staticmethod
    def reduce_torch(keys: torch.Tensor, offset: torch.Tensor, color: torch.Tensor, count: torch.Tensor) -> "_Voxels":
        """reduce() with torch only (any device): torch.unique + index_add_."""
        unique, inverse = torch.unique(keys, sorted=True, return_inverse=True)
        m = unique.shape[0]
        dev = keys.device
        return _Voxels(
            unique,
            torch.zeros((m, 3), dtype=torch.float32, device=dev).index_add_(0, inverse, offset),
            torch.zeros((m, 3), dtype=torch.int32, device=dev).index_add_(0, inverse, color),
            torch.zeros((m,), dtype=torch.int32, device=dev).index_add_(0, inverse, count),
        )


def _voxelize(cloud: PointCloud, voxel_size_m: float) -> _Voxels:
    """Bin a cloud into voxels of edge ``voxel_size_m``; points outside the key range are dropped."""
    p = cloud.points_world
    ijk = torch.floor(p / voxel_size_m)
    inside = ((ijk >= -_AXIS_OFFSET) & (ijk < _AXIS_OFFSET)).all(dim=1)
    if not bool(inside.all()):
        p, ijk, colors = p[inside], ijk[inside], cloud.colors[inside]
    else:
        colors = cloud.colors
    offset = p - ijk * voxel_size_m
    q = ijk.to(torch.int64) + _AXIS_OFFSET
    keys = (q[:, 0] << (2 * _AXIS_BITS)) | (q[:, 1] << _AXIS_BITS) | q[:, 2]
    ones = torch.ones(keys.shape, dtype=torch.int32, device=keys.device)
    return _Voxels.reduce(keys, offset, colors.to(torch.int32), ones)


def _merge(grid: _Voxels | None, record: _Voxels) -> _Voxels:
    """Add ``record`` into ``grid`` (both sorted unique) without sorting: a linear merge by ``searchsorted``.
    Returns new tensors (shares none with its inputs)."""
    if grid is None or not len(grid):
        return _Voxels(record.keys.clone(), record.offset_sum.clone(), record.color_sum.clone(), record.count.clone())
    g = len(grid)
    pos = torch.searchsorted(grid.keys, record.keys)
    at = pos.clamp(max=g - 1)
    found = grid.keys[at] == record.keys
    new = ~found
    new_keys = record.keys[new]
    dev = grid.keys.device
    # Merged index of each grid voxel: its own index plus the number of new keys below it, and vice versa.
    grid_dest = torch.arange(g, device=dev) + torch.searchsorted(new_keys, grid.keys)
    new_dest = torch.arange(new_keys.shape[0], device=dev) + pos[new]
    total = g + new_keys.shape[0]
    out = []
    for a, b in ((grid.keys, record.keys), (grid.offset_sum, record.offset_sum),
                 (grid.color_sum, record.color_sum), (grid.count, record.count)):
        merged = torch.empty((total,) + tuple(a.shape[1:]), dtype=a.dtype, device=dev)
        merged[grid_dest] = a
        merged[new_dest] = b[new]
        out.append(merged)
    keys, offset_sum, color_sum, count = out
    both = grid_dest[at[found]]
    offset_sum.index_add_(0, both, record.offset_sum[found])
    color_sum.index_add_(0, both, record.color_sum[found])
    count.index_add_(0, both, record.count[found])
    return _Voxels(keys, offset_sum, color_sum, count)


def _voxel_cloud(v: _Voxels, voxel_size_m: float) -> PointCloud:
    """Mean position and colour of each voxel (core/geometry/voxel_kernel.py's compiled pass on the CPU with numba: the
    same float32 arithmetic as the torch code below)."""
    if _compiled_on(v.keys.device):
        return PointCloud(*voxel_kernel.voxel_means(v.keys, v.offset_sum, v.color_sum, v.count, voxel_size_m,
                                                    _AXIS_BITS, _AXIS_OFFSET))
    return _voxel_cloud_torch(v, voxel_size_m)


def _voxel_cloud_torch(v: _Voxels, voxel_size_m: float) -> PointCloud:
    """_voxel_cloud with torch only (any device)."""
    q = torch.stack([(v.keys >> (2 * _AXIS_BITS)) & _AXIS_MASK, (v.keys >> _AXIS_BITS) & _AXIS_MASK,
                     v.keys & _AXIS_MASK], dim=1) - _AXIS_OFFSET
    n = v.count.to(torch.float32).unsqueeze(1)
    points = q.to(torch.float32) * voxel_size_m + v.offset_sum / n
    colors = (v.color_sum.to(torch.float32) / n).round_().clamp_(0, 255).to(torch.uint8)
    return PointCloud(points, colors)


class VoxelFusion(_PerFrameFusion):
    """Voxel-grid fusion for a moving exo camera (each frame with its own pose).

    Each frame's static points are binned once into voxels of edge ``voxel_size_m`` (keys: the integer voxel
    coordinates, 21 bits per axis, packed into an int64; ``torch.unique`` + ``index_add_``, so it runs on CUDA
    too) and kept as that frame's *voxel record* (sums of point offsets, colours and counts).  The window's
    fused grid is kept incrementally: adding a frame merges its records into the grid (a linear merge of sorted
    keys), a frame leaving the window subtracts its records again (exactly for counts and colours) and voxels
    that reach zero points vanish.  For short windows rebuilding the grid from the records at ``cloud()`` is
    faster; ``incremental=None`` picks.  ``cloud()`` gives one point per voxel: mean position, mean colour.
    (open3d's ``voxel_down_sample`` was measured slower, 16 ms vs 9 ms for a 246k-point frame, and its grid
    origin depends on each cloud's bounds, so frames could not be merged by key.)

    Window: the newest ``window_frames`` frames (by insertion) plus ``remove_older_than``.  Memory bound: the
    voxel records of the window's frames (which also bound the fused grid) stay within ``max_points``; when a
    new frame would exceed it the oldest frames leave early, and a single frame with more voxels than
    ``max_points`` keeps an evenly spaced subset of them.
    """

    def __init__(self, config: FusionConfig, device: torch.device | str | None = None,
                 incremental: bool | None = None):
        self.config = config
        self.device = device
        # True: grid kept up to date on add/remove; False: rebuilt from the records at cloud().  Same result;
        # None picks by window length (measured, 640x480, stride 1: add + cloud 19 vs 34 ms at 4 frames,
        # 40 vs 36 ms at 16, 103 vs 66 ms at 64 for rebuild vs incremental).
        self.incremental = config.window_frames > 8 if incremental is None else incremental
        self.reset()

    def reset(self) -> None:
        self._records: OrderedDict[int, _Voxels] = OrderedDict()
        self._grid: _Voxels | None = None
        self._newest: int | None = None
        self._dynamic = _DynamicStore()
        self._cache: PointCloud | None = None

    def __len__(self) -> int:
        return len(self._records)

    @property
    def num_records(self) -> int:
        """Voxel records held for the window's frames (the quantity bounded by ``max_points``)."""
        return sum(len(r) for r in self._records.values())

    def add(self, key: int, rgb, depth_m, camera: CameraModel, world_T_camera, dynamic_mask=None,
            excluded_mask=None) -> None:
        key = _check_key(key, self._newest)
        frame = _FrameInput(self.config, self.device, rgb, depth_m, camera, world_T_camera, dynamic_mask,
                             excluded_mask)
        record = frame.voxel_records(frame.static_valid, self.config.voxel_size_m)
        limit = self.point_budget(frame)
        if len(record) > limit:
            record = record.select(_even_subset(len(record), limit, record.keys.device))
        budget = limit - len(record)
        while self._records and (len(self._records) >= self.config.window_frames or self.num_records > budget):
            self.evicted_by_budget += len(self._records) < self.config.window_frames
            self._remove_frame(next(iter(self._records)))
        self._records[key] = record
        self._newest = key
        if self.incremental:
            self._grid = _merge(self._grid, record)
        self._dynamic.put(key, frame.lift(frame.dynamic_valid), limit)
        while len(self._dynamic.clouds) > self.config.window_frames:
            self._dynamic.clouds.popitem(last=False)
        self._cache = None

    def _remove_frame(self, key: int) -> None:
        record = self._records.pop(key)
        self._dynamic.clouds.pop(key, None)
        self._cache = None
        if not self.incremental or self._grid is None:
            return
        if not self._records:
            self._grid = None
            return
        g = self._grid
        idx = torch.searchsorted(g.keys, record.keys)  # every record key is in the grid
        g.offset_sum.index_add_(0, idx, record.offset_sum, alpha=-1)
        g.color_sum.index_add_(0, idx, record.color_sum, alpha=-1)
        g.count.index_add_(0, idx, record.count, alpha=-1)
        keep = g.count > 0
        if not bool(keep.all()):
            self._grid = g.select(keep)

    def _frame_keys(self) -> list[int]:
        return list(self._records)

    def cloud(self) -> PointCloud:
        if self._cache is None:
            if not self._records:
                self._cache = PointCloud.empty(self.device)
            else:
                grid = self._grid
                if not self.incremental:
                    rs = list(self._records.values())
                    grid = _Voxels.reduce(torch.cat([r.keys for r in rs]), torch.cat([r.offset_sum for r in rs]),
                                          torch.cat([r.color_sum for r in rs]), torch.cat([r.count for r in rs]),
                                          sorted_runs=True)     # each record's keys are sorted
                self._cache = _voxel_cloud(grid, self.config.voxel_size_m)
        return self._cache

    def nbytes(self) -> int:
        """Bytes held: voxel records, fused grid, dynamic points, cached cloud."""
        total = sum(r.nbytes() for r in self._records.values()) + self._dynamic.nbytes()
        if self._grid is not None:
            total += self._grid.nbytes()
        if self._cache is not None:
            total += self._cache.nbytes
        return total


# ----------------------------------------------------------------------------- plain concatenation


class ConcatFusion(_PerFrameFusion):
    """The window's per-frame clouds side by side, newest first (on equal depth the renderer keeps the newest).

    Bound: at most ``window_frames`` frames and ``max_points`` points in all; the oldest frames leave early, and
    a single frame with more points keeps an evenly spaced subset.
    """

    def __init__(self, config: FusionConfig, device: torch.device | str | None = None):
        self.config = config
        self.device = device
        self.reset()

    def reset(self) -> None:
        self._clouds: OrderedDict[int, PointCloud] = OrderedDict()
        self._newest: int | None = None
        self._dynamic = _DynamicStore()
        self._cache: PointCloud | None = None

    def __len__(self) -> int:
        return len(self._clouds)

    def add(self, key: int, rgb, depth_m, camera: CameraModel, world_T_camera, dynamic_mask=None,
            excluded_mask=None) -> None:
        key = _check_key(key, self._newest)
        frame = _FrameInput(self.config, self.device, rgb, depth_m, camera, world_T_camera, dynamic_mask,
                             excluded_mask)
        limit = self.point_budget(frame)
        cloud = _thin(frame.lift(frame.static_valid), limit)
        budget = limit - len(cloud)
        while self._clouds and (len(self._clouds) >= self.config.window_frames
                                or sum(len(c) for c in self._clouds.values()) > budget):
            self.evicted_by_budget += len(self._clouds) < self.config.window_frames
            self._remove_frame(next(iter(self._clouds)))
        self._clouds[key] = cloud
        self._newest = key
        self._dynamic.put(key, frame.lift(frame.dynamic_valid), limit)
        self._cache = None

    def _frame_keys(self) -> list[int]:
        return list(self._clouds)

    def _remove_frame(self, key: int) -> None:
        self._clouds.pop(key)
        self._dynamic.clouds.pop(key, None)
        self._cache = None

    def cloud(self) -> PointCloud:
        if self._cache is None:
            self._cache = (PointCloud.concat(reversed(list(self._clouds.values()))) if self._clouds
                           else PointCloud.empty(self.device))
        return self._cache

    def nbytes(self) -> int:
        total = sum(c.nbytes for c in self._clouds.values()) + self._dynamic.nbytes()
        if self._cache is not None:
            total += self._cache.nbytes
        return total


# ----------------------------------------------------------------------------- still or moving: auto


class AutoFusion:
    """fusion.mode 'auto': a :class:`StaticCameraFusion` while the exo camera holds still, a :class:`VoxelFusion`
    of the newest ``window_frames`` frames while it moves.

    Still: every frame since the static average started lies within ``static_pose_tolerance_m`` / ``_deg`` of
    its first (the static fusion's own test).  A frame beyond them turns to the voxel grid, built from the newest
    ``window_frames`` frames (their inputs are kept by reference), so from that frame on the cloud is what mode
    'moving' gives.  Once the newest ``window_frames`` frames lie within the tolerances of the oldest of them, a
    new static average starts from them.  ``moves`` counts the turns to the voxel grid.  The intrinsics changing
    counts as a move.
    """

    def __init__(self, config: FusionConfig, device: torch.device | str | None = None):
        self.config = config
        self.device = device
        self.moves = 0
        self.reset()

    def reset(self) -> None:
        self._recent: OrderedDict[int, tuple] = OrderedDict()     # key -> add()'s arguments, newest window
        self._active: StaticCameraFusion | VoxelFusion = self._static()

    def _static(self) -> StaticCameraFusion:
        return StaticCameraFusion(replace(self.config, static_on_move="raise"), self.device)

    @property
    def still(self) -> bool:
        """Whether the static average is in use (the camera holds still)."""
        return isinstance(self._active, StaticCameraFusion)

    @property
    def evicted_by_budget(self) -> int:
        return self._active.evicted_by_budget

    def __len__(self) -> int:
        return len(self._active)

    def add(self, key: int, rgb, depth_m, camera: CameraModel, world_T_camera, dynamic_mask=None,
            excluded_mask=None) -> None:
        args = (rgb, depth_m, camera, world_T_camera, dynamic_mask, excluded_mask)
        moved = False
        if self.still:
            moved = self._active.camera_changed(camera)          # new intrinsics count as a move
            if not moved:
                try:
                    self._active.add(key, *args)
                except CameraMovedError:
                    moved = True
        else:
            self._active.add(key, *args)
        if moved:
            self.moves += 1
            self._active = VoxelFusion(self.config, self.device)
            for k, a in [*self._recent.items(), (key, args)]:
                self._active.add(k, *a)
        self._recent[int(key)] = args
        while len(self._recent) > self.config.window_frames:
            self._recent.popitem(last=False)
        if not self.still and len(self._recent) == self.config.window_frames and self._held_still(camera):
            self._active = self._static()
            for k, a in self._recent.items():
                self._active.add(k, *a)

    def _held_still(self, camera: CameraModel) -> bool:
        """Whether the kept frames all lie within the static tolerances of the oldest of them (the reference of the
        static average they would start) and have the newest frame's intrinsics."""
        oldest = pose_float64(next(iter(self._recent.values()))[3])
        for _, _, cam, world_T_camera, *_ in self._recent.values():
            moved_m, moved_deg = _pose_change(oldest, pose_float64(world_T_camera))
            if cam != camera or moved_m > self.config.static_pose_tolerance_m \
                    or moved_deg > self.config.static_pose_tolerance_deg:
                return False
        return True

    def remove_older_than(self, key: int) -> int:
        for k in [k for k in self._recent if k < int(key)]:
            del self._recent[k]
        return self._active.remove_older_than(key)

    def cloud(self) -> PointCloud:
        return self._active.cloud()

    def frame_cloud(self, key: int) -> PointCloud:
        return self._active.frame_cloud(key)

    def dynamic_points(self, key: int) -> int:
        return self._active.dynamic_points(key)

    def nbytes(self) -> int:
        """Bytes held by the strategy in use (the kept inputs are the caller's arrays)."""
        return self._active.nbytes()


def make_fusion(config: FusionConfig, device: torch.device | str | None = None) -> CloudFusion:
    """The fusion strategy ``config.mode`` names; ``device``: where inputs are moved (None: depth's device)."""
    if config.mode == "auto":
        return AutoFusion(config, device)
    if config.mode == "static":
        return StaticCameraFusion(config, device)
    if config.mode == "moving":
        return VoxelFusion(config, device)
    if config.mode == "concat":
        return ConcatFusion(config, device)
    raise ValueError(f"unknown fusion mode {config.mode!r}; expected one of {list(FUSION_MODES)}")
