"""Temporally stable relative inverse depth from the exo stream (the `video` depth source, EgoX method section 2).

EgoX aligns a flickering per-frame *metric* depth D_m to a temporally smooth *relative inverse* depth D_v from a
video depth model (alpha, beta per frame, smoothed with momentum; egox_ros.core.geometry.depth_alignment). The momentum
only works if D_v itself does not flicker: its affine ambiguity must stay (nearly) the same from frame to frame. This
module provides such a D_v in two ways, both :class:`~egox_ros.core.depth.base.DepthSource` of kind
``relative_inverse``:

:class:`TemporalRelativeDepth` (name ``video``) wraps any *per-frame* relative-inverse-depth source (a monocular
relative model such as Depth Anything V2 relative). A per-frame model is right about the structure of each image
but fixes its affine ambiguity anew in every frame: its output is ``a_t / D + b_t`` with ``a_t, b_t`` jumping from
frame to frame. Each new frame ``r_t`` is mapped by its own affine ``s_t * r_t + c_t``, fitted in inverse-depth space
to the previous stabilised frame on the pixels valid in both and inside the quantile bounds of both (the fit of
egox_ros.core.geometry.depth_alignment, :func:`fit_inverse_depth_affine`). The first frame after construction or
:meth:`~TemporalRelativeDepth.reset` is passed through unchanged: it anchors the scale of the whole sequence.
Optionally the mapped frame is blended per pixel with the previous output (exponential smoothing, weight
``smoothing``), which also averages per-pixel noise but leaves a trail behind anything that moves.

How this differs from a dedicated video depth model (e.g. Video Depth Anything): such a model attends over a window
of frames with learned temporal layers, so it produces one geometry that is consistent across the frames and across
camera motion, and it can correct the structure of a single frame from its neighbours. :class:`TemporalRelativeDepth`
only removes the per-frame *affine* flicker of a per-frame model. It cannot fix structure that changes between
frames (an object that the per-frame model places at a different relative depth in the next frame, non-affine
distortions, per-pixel noise beyond what ``smoothing`` averages), and each frame is still estimated alone. The
frame-to-frame fit assumes the two frames show the same scene with the same inverse-depth distribution on the
fitted pixels: for a static exo camera that holds (moving people are a minority of the pixels and mostly fall out
of the quantile bounds); a moving camera or a large object entering the view changes that distribution, and the fit
then absorbs part of the real change of depth into the scale, which drifts. Errors of successive fits multiply
along the stream, so the scale of a long stream performs a slow random walk relative to the first frame; the
downstream alignment to the metric depth (which refits alpha and beta every frame) absorbs slow drift, not jumps.
By default the fit is *symmetric* (the geometric mean of the two least-squares slopes, new-on-previous and
previous-on-new): plain least squares of the new frame on the previous one is biased towards a smaller scale by
the new frame's own noise (regression dilution), and chained over the stream that bias shrinks the scale
geometrically; the symmetric fit has no such systematic drift when both frames are about equally noisy.

:class:`WindowedVideoDepth` plugs in a real video depth model instead: any :class:`VideoDepthModel`, which turns a
window of frames into relative inverse depths consistent *within* the window. The adapter feeds it overlapping
windows (``window`` frames, the first ``overlap`` of which were already returned), fits each new window's affine
map to the already returned frames on the overlap, and returns every frame exactly once, in stamp order, without
waiting for later frames. :class:`WindowMedianModel` is a real model of this kind for tests and for setups
without a video model: it runs a per-frame source over the window and fits every frame's affine map to the
per-pixel median of the window (twice by default, the second time to the median of the mapped frames).

Pure core (numpy and torch on the CPU, no rclpy); not shared across threads without the caller's lock, though
:meth:`estimate` and :meth:`reset` of both sources are serialised by an internal lock.
"""
from __future__ import annotations

import math
import threading
from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np
import torch

from egox_ros.core.config import param, validate
from egox_ros.core.depth.base import DepthKind, DepthMap, DepthSource
from egox_ros.core.geometry.depth_alignment import fit_inverse_depth_affine

__all__ = [
    "AffineFitConfig",
    "TemporalDepthConfig",
    "TemporalRelativeDepth",
    "VideoDepthModel",
    "WindowMedianModel",
    "WindowedDepthConfig",
    "WindowedVideoDepth",
    "fit_affine_to_reference",
]

FIT_METHODS = ("symmetric", "least_squares")


@dataclass
class AffineFitConfig:
    """How one relative inverse depth is fitted affinely to another (shared by the stabilising sources)."""
    quantile_low: float = param(0.1, "per map, pixels below this quantile are left out of the fit", (0.0, 1.0))
    quantile_high: float = param(0.9, "per map, pixels above this quantile are left out of the fit", (0.0, 1.0))
    min_pixels: int = param(100, "a fit with fewer usable pixels (after stride and quantiles) fails and the "
                                 "previous map is reused", (2, 1_000_000_000))
    fit_stride: int = param(2, "fit on every n-th pixel in x and y; the output is always full resolution", (1, 64))
    fit_method: str = param("symmetric", "'symmetric': geometric mean of both least-squares slopes (no drift from "
                                         "the new frame's noise); 'least_squares': new frame on the reference "
                                         "(biased towards a smaller scale by that noise)", choices=FIT_METHODS)

    def __post_init__(self) -> None:
        validate(self)
        if not self.quantile_low < self.quantile_high:
            raise ValueError(f"{type(self).__name__}.quantile_low ({self.quantile_low}) must be below "
                             f"quantile_high ({self.quantile_high})")


@dataclass
class TemporalDepthConfig(AffineFitConfig):
    """The `video` depth source: a per-frame relative model stabilised over the stream."""
    smoothing: float = param(0.0, "per-pixel exponential smoothing after the affine map: out = w * previous + "
                                  "(1 - w) * mapped (0 = none; averages noise but trails moving objects)",
                             (0.0, 0.99))


@dataclass
class WindowedDepthConfig(AffineFitConfig):
    """A video depth model fed overlapping windows of the stream."""
    window: int = param(8, "frames per model call (overlap frames already returned + new frames)", (2, 1024))
    overlap: int = param(4, "frames shared with the previous window, used to carry its affine map over", (1, 1023))

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.overlap < self.window:
            raise ValueError(f"WindowedDepthConfig.overlap ({self.overlap}) must be below window ({self.window})")


def _as_tensor(values: np.ndarray | torch.Tensor) -> torch.Tensor:
    """float32 CPU tensor with NaN wherever there is no relative inverse depth (non-finite or <= 0)."""
    t = torch.as_tensor(np.asarray(values, dtype=np.float32)) if isinstance(values, np.ndarray) else \
        values.to(torch.float32)
    return torch.where(torch.isfinite(t) & (t > 0), t, torch.full_like(t, float("nan")))


def _reciprocal(inv: torch.Tensor) -> torch.Tensor:
    """Depth-like reciprocal of an inverse depth for fit_inverse_depth_affine (which inverts it back)."""
    return torch.where(torch.isfinite(inv) & (inv > 0), inv.reciprocal(), torch.full_like(inv, float("nan")))


def fit_affine_to_reference(values: torch.Tensor, reference: torch.Tensor,
                            config: AffineFitConfig) -> tuple[float, float] | None:
    """(scale, shift) with ``scale * values + shift ~= reference``, or None when the fit fails.

    values, reference: float (H, W) relative inverse depths (NaN or <= 0 = none), same shape; stack several frames
    along the rows to fit them jointly. Pixels valid in both and inside the quantile bounds of both are used.
    'least_squares' regresses reference on values; 'symmetric' also regresses values on reference and takes the
    geometric mean of the two slopes, with the line through the common centroid of the fitted pixels.
    """
    q = (config.quantile_low, config.quantile_high)
    forward = fit_inverse_depth_affine(values, _reciprocal(reference), None, q, config.min_pixels,
                                       config.fit_stride)
    if forward is None:
        return None
    if config.fit_method == "least_squares":
        return forward.alpha, forward.beta
    backward = fit_inverse_depth_affine(reference, _reciprocal(values), None, q, config.min_pixels,
                                        config.fit_stride)
    if backward is None:
        return None
    # Forward line: y = u x + b1; backward line inverted: y = v x - b2 v (v = 1 / its slope). Both pass through the
    # centroid of the fitted pixels; the line of slope sqrt(u v) through it has the shift below (no division by the
    # small difference of the two slopes when the fit is good).
    u, v = forward.alpha, 1.0 / backward.alpha
    w = math.sqrt(u) / (math.sqrt(u) + math.sqrt(v))
    return math.sqrt(u * v), (1.0 - w) * forward.beta - w * backward.beta * v


def _apply_affine(values: torch.Tensor, scale: float, shift: float) -> torch.Tensor:
    """scale * values + shift; NaN where values are invalid or the result is not a positive inverse depth."""
    out = values * scale + shift
    return torch.where(torch.isfinite(out) & (out > 0), out, torch.full_like(out, float("nan")))


def _resize_nearest(values: torch.Tensor, shape: tuple[int, int]) -> torch.Tensor:
    """(H, W) map resampled to shape by nearest neighbour (keeps NaN holes as holes)."""
    if tuple(values.shape) == tuple(shape):
        return values
    return torch.nn.functional.interpolate(values[None, None], size=shape, mode="nearest")[0, 0]


def _per_frame_values(source: DepthSource, images: list[np.ndarray]) -> list[torch.Tensor]:
    """The per-frame source's relative inverse depths, one (H, W) tensor per image, NaN where none."""
    maps = source.estimate(images)
    if len(maps) != len(images):
        raise ValueError(f"depth source '{source.name}' returned {len(maps)} maps for {len(images)} images")
    for depth, image in zip(maps, images):
        if depth.kind != "relative_inverse":
            raise ValueError(f"depth source '{source.name}' returned {depth.kind} depth, not relative inverse depth")
        if depth.values.shape != image.shape[:2]:
            raise ValueError(f"depth source '{source.name}' returned shape {depth.values.shape} for an image of "
                             f"{image.shape[:2]}")
    return [_as_tensor(d.values) for d in maps]


def _depth_map(values: torch.Tensor) -> DepthMap:
    """A copy (the caller may write to it; the sources keep their tensors as references)."""
    return DepthMap(values.numpy().copy(), "relative_inverse")


def _require_relative(source: DepthSource) -> None:
    if source.kind != "relative_inverse":
        raise ValueError(f"depth source '{source.name}' gives {source.kind} depth; stabilisation needs a per-frame "
                         "relative inverse depth source")


class _StabilisedSource(DepthSource):
    """What both stabilising sources share: kind, lock, the current affine map (scale, shift), the counters
    (frames since reset, failed_fits: frames or windows that reused the previous map) and reset()."""

    def __init__(self, inner: DepthSource | VideoDepthModel, config: AffineFitConfig) -> None:
        self._inner = inner                            # the wrapped source or model, reset with this one
        self.config = config
        self._lock = threading.Lock()
        self._clear()

    def _clear(self) -> None:
        self.scale, self.shift = 1.0, 0.0
        self.frames = 0
        self.failed_fits = 0

    @property
    def kind(self) -> DepthKind:
        return "relative_inverse"

    def reset(self) -> None:
        """Forget the temporal state: the next frame anchors a new scale. Resets the wrapped source or model too."""
        with self._lock:
            self._clear()
            self._inner.reset()


class TemporalRelativeDepth(_StabilisedSource):
    """The `video` source: a per-frame relative inverse depth source made temporally stable (module docstring).

    source: a DepthSource of kind 'relative_inverse', estimated per frame (stateless); config: TemporalDepthConfig.
    Feed frames in stamp order, each once; state is kept across estimate() calls until reset(). Diagnostics:
    frames (since reset), failed_fits (frames that reused the previous map), scale and shift of the last frame.
    """

    name = "video"

    def __init__(self, source: DepthSource, config: TemporalDepthConfig | None = None) -> None:
        _require_relative(source)
        self.source = source
        super().__init__(source, config if config is not None else TemporalDepthConfig())

    def _clear(self) -> None:
        super()._clear()
        self._reference: torch.Tensor | None = None   # last frame after its affine map: the next frame's reference
        self._output: torch.Tensor | None = None      # last output (after the optional per-pixel smoothing)

    def estimate(self, images: list[np.ndarray]) -> list[DepthMap]:
        if not images:
            return []
        with self._lock:
            return [_depth_map(self._stabilise(v)) for v in _per_frame_values(self.source, images)]

    def _stabilise(self, values: torch.Tensor) -> torch.Tensor:
        cfg = self.config
        self.frames += 1
        if self._reference is None:                    # the first frame anchors the scale
            self.scale, self.shift = 1.0, 0.0
            self._reference = self._output = values
            return values
        shape = tuple(values.shape)                    # the exo resolution may change: compare at the new one
        fit = fit_affine_to_reference(values, _resize_nearest(self._reference, shape), cfg)
        if fit is None:
            self.failed_fits += 1                       # keep the previous map: the best guess for a similar frame
        else:
            self.scale, self.shift = fit
        mapped = _apply_affine(values, self.scale, self.shift)
        out = mapped
        if cfg.smoothing > 0.0:
            previous = _resize_nearest(self._output, shape)
            both = torch.isfinite(mapped) & torch.isfinite(previous)
            out = torch.where(both, cfg.smoothing * previous + (1.0 - cfg.smoothing) * mapped, mapped)
        # The next frame is fitted to this one's mapped values, not the smoothed ones: a reference less noisy than
        # the new frame would bias even the symmetric fit towards a smaller scale, and that bias compounds. A frame
        # with (almost) no estimate does not replace the reference.
        if int(torch.isfinite(mapped).sum()) >= cfg.min_pixels:
            self._reference, self._output = mapped, out
        return out


class VideoDepthModel(ABC):
    """A video depth model: relative inverse depths that are consistent within a window of frames.

    estimate_window gets (H, W, 3) uint8 RGB frames in stamp order (all of one size) and returns one float (H, W)
    relative inverse depth per frame (larger = nearer; NaN or <= 0 = none) sharing one affine ambiguity across the
    window. Successive windows may each have their own ambiguity: WindowedVideoDepth carries the map over.
    """

    name: str = ""

    @abstractmethod
    def estimate_window(self, images: list[np.ndarray]) -> list[np.ndarray]:
        """One relative inverse depth (H, W) per frame of the window, same order."""

    def reset(self) -> None:
        """Forget any state (the stream restarted)."""


class WindowMedianModel(VideoDepthModel):
    """A VideoDepthModel from a per-frame relative source: each frame's affine map is fitted to the per-pixel
    median of the window, then again to the median of the mapped frames (`iterations` rounds in all). Consistent
    in scale within the window; the structure of each frame stays that frame's own (moving objects stay where they
    are in that frame).

    source: a stateless DepthSource of kind 'relative_inverse' (it sees the overlap frames again in the next window);
    config: the fit settings; iterations: median-and-fit rounds (>= 1). A frame whose fit fails is left unmapped.
    """

    name = "window_median"

    def __init__(self, source: DepthSource, config: AffineFitConfig | None = None, iterations: int = 2) -> None:
        _require_relative(source)
        if iterations < 1:
            raise ValueError(f"WindowMedianModel.iterations must be >= 1, got {iterations}")
        self.source = source
        self.config = config if config is not None else AffineFitConfig()
        self.iterations = iterations

    def reset(self) -> None:
        self.source.reset()

    def estimate_window(self, images: list[np.ndarray]) -> list[np.ndarray]:
        frames = _per_frame_values(self.source, images)
        for _ in range(self.iterations):
            median = torch.nanmedian(torch.stack(frames), dim=0).values
            aligned = []
            for values in frames:
                fit = fit_affine_to_reference(values, median, self.config)
                aligned.append(values if fit is None else _apply_affine(values, *fit))
            frames = aligned
        return [f.numpy() for f in frames]


class WindowedVideoDepth(_StabilisedSource):
    """A VideoDepthModel as a streaming DepthSource of kind 'relative_inverse' (module docstring).

    model: the VideoDepthModel; config: WindowedDepthConfig (window, overlap and the fit). Each estimate() call
    returns its frames at once: the new frames are cut into chunks of at most window - overlap frames, each chunk is
    estimated together with the last `overlap` frames already returned (fewer at the start of the stream), and the
    window's affine map is fitted to those returned frames on the overlap (the first window anchors the scale; a
    failed fit reuses the previous window's map). Feeding one frame per call costs overlap + 1 frames of model time
    per frame. A change of image size starts without overlap and keeps the previous map.
    """

    name = "video_window"

    def __init__(self, model: VideoDepthModel, config: WindowedDepthConfig | None = None) -> None:
        self.model = model
        super().__init__(model, config if config is not None else WindowedDepthConfig())

    def _clear(self) -> None:
        super()._clear()
        self._context: list[tuple[np.ndarray, torch.Tensor]] = []   # (image, returned depth) of the last frames
        self.windows = 0

    def estimate(self, images: list[np.ndarray]) -> list[DepthMap]:
        out: list[DepthMap] = []
        with self._lock:
            start = 0
            while start < len(images):
                if self._context and self._context[-1][0].shape != images[start].shape:
                    self._context = []
                chunk = images[start:start + self.config.window - len(self._context)]
                out.extend(_depth_map(v) for v in self._run_window(chunk))
                start += len(chunk)
        return out

    def _run_window(self, chunk: list[np.ndarray]) -> list[torch.Tensor]:
        context = self._context
        window = [image for image, _ in context] + chunk
        raw = self.model.estimate_window(window)
        if len(raw) != len(window):
            raise ValueError(f"video depth model '{self.model.name}' returned {len(raw)} maps for a window of "
                             f"{len(window)} frames")
        raw_t = [_as_tensor(r) for r in raw]
        for r, image in zip(raw_t, window):
            if tuple(r.shape) != image.shape[:2]:
                raise ValueError(f"video depth model '{self.model.name}' returned shape {tuple(r.shape)} for an "
                                 f"image of {image.shape[:2]}")
        if context:
            fit = fit_affine_to_reference(torch.cat(raw_t[:len(context)]),
                                          torch.cat([depth for _, depth in context]), self.config)
            if fit is None:
                self.failed_fits += 1
            else:
                self.scale, self.shift = fit
        new = [_apply_affine(r, self.scale, self.shift) for r in raw_t[len(context):]]
        # Copies: the caller may reuse its image buffers.
        kept = [(image.copy(), depth) for image, depth in zip(chunk, new)][-self.config.overlap:]
        self._context = (context + kept)[-self.config.overlap:]
        self.windows += 1
        self.frames += len(chunk)
        return new
