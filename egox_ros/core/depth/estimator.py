"""Depth of the exo stream from models, on a worker thread, so the camera stream never waits for a slow model.

The node submits every exo image; the worker always takes the newest one not yet estimated (older ones it had no
time for are counted as skipped), runs the metric source and, if configured, the relative source, aligns the
relative inverse depth to the metric depth (egox_ros.core.geometry.depth_alignment, momentum-smoothed) and keeps the
last few results. A frame then uses the estimate nearest to its stamp that exists: its own when the model keeps up, an
older frame's when the model is slower than the camera (the frame goes on at the camera rate; the lag is reported);
only an estimate more than `max_lag_s` away makes it wait. Images are estimated one at a time, the newest first
(batching serves offline use of DepthSource.estimate). The alignment fit uses every valid pixel: no dynamic-object
mask is applied here, so a person moving through a large part of the view weighs on alpha and beta.
Pure core: no rclpy.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

from egox_ros.core.depth.base import DepthSource
from egox_ros.core.geometry.depth_alignment import (AlignedDepth, DepthAlignmentConfig, align_or_pass_through,
                                                    StreamingDepthAligner)


@dataclass
class DepthEstimate:
    """depth_m (H, W) float32 metres (NaN = none) of the image at stamp_ns; compute_s: wall time of the models."""
    stamp_ns: int
    depth_m: np.ndarray
    compute_s: float
    alignment: AlignedDepth | None = None


def make_depth_estimator(config, alignment: DepthAlignmentConfig | None = None,
                         on_result: Callable[[str | None], None] | None = None) -> AsyncDepthEstimator | None:
    """The estimator a DepthConfig asks for: None for 'topic' without a fallback model; the metric model for
    'model' (and as the fallback of 'topic'); metric model + stabilised relative model for 'video'. Loads the models
    from their local folders (raises egox_ros.core.depth.hf_model.DepthModelError naming what is missing)."""
    if config.source == "topic" and not config.model_path:
        return None
    from egox_ros.core.depth.hf_model import HfDepthModel, HfDepthModelConfig
    metric = HfDepthModel(HfDepthModelConfig(model_path=config.model_path, dtype=config.dtype), config.device)
    relative = None
    if config.source == "video":
        from egox_ros.core.depth.temporal import TemporalDepthConfig, TemporalRelativeDepth
        per_frame = HfDepthModel(HfDepthModelConfig(model_path=config.video_model_path, dtype=config.dtype),
                                 config.device)
        relative = TemporalRelativeDepth(per_frame, TemporalDepthConfig())
    return AsyncDepthEstimator(metric, relative, alignment, on_result=on_result)


class AsyncDepthEstimator:
    """See the module docstring. metric: a DepthSource of kind 'metric'; relative: optional, kind
    'relative_inverse' (then aligned to the metric one). Thread-safe; the sources and the aligner are only ever
    used on the worker thread (reset() is carried out there, before the next image).

    on_result(error) is called on the worker thread after every image it finishes: error None with a new estimate,
    else the error text (the model failed; the stream goes on). It must not block for long."""

    def __init__(self, metric: DepthSource, relative: DepthSource | None = None,
                 alignment: DepthAlignmentConfig | None = None, keep: int = 32,
                 on_result: Callable[[str | None], None] | None = None):
        if metric.kind != "metric":
            raise ValueError(f"the metric depth source '{metric.name}' gives {metric.kind} depth; a metric one is "
                             "needed (a relative model can only be aligned to a metric source)")
        if relative is not None and relative.kind != "relative_inverse":
            raise ValueError(f"the relative depth source '{relative.name}' gives {relative.kind} depth, not "
                             "relative inverse depth")
        self.metric, self.relative = metric, relative
        self.on_result = on_result
        self.aligner = StreamingDepthAligner(alignment) if relative is not None else None
        self._results: deque[DepthEstimate] = deque(maxlen=keep)
        self._pending: tuple[int, np.ndarray] | None = None
        self._newest_done_ns = -1
        self._generation = 0          # bumped by reset(); the worker resets its sources when it sees a new one
        self._cond = threading.Condition()
        self._running = True
        self._busy = False
        self.estimated = self.skipped = self.failed = 0
        self.last_error = ""
        self.last_compute_s = 0.0
        self._worker = threading.Thread(target=self._work, name="egox-depth", daemon=True)
        self._worker.start()

    def submit(self, stamp_ns: int, rgb: np.ndarray, static_mask: np.ndarray | None = None) -> None:
        """Queue an exo image (H, W, 3) uint8 (stamps increasing; call reset() on a jump back). An older image not
        yet started is replaced (counted as skipped). static_mask: optional (H, W) bool, False on people and other
        moving things, which the relative-to-metric alignment fit then leaves out."""
        with self._cond:
            if self._pending is not None:
                self.skipped += 1
            self._pending = (stamp_ns, rgb, static_mask)
            self._cond.notify_all()

    def estimate_for(self, stamp_ns: int, max_lag_s: float) -> DepthEstimate | None:
        """The estimate nearest in time to stamp_ns if it is within max_lag_s of it, else None. With a model
        slower than the camera this is usually an older frame's estimate: the frame goes on with it (the lag is
        the caller's to report) instead of waiting for its own."""
        with self._cond:
            if not self._results:
                return None
            best = min(self._results, key=lambda e: abs(e.stamp_ns - stamp_ns))
        return best if abs(best.stamp_ns - stamp_ns) <= max_lag_s * 1e9 else None

    def busy_or_pending(self) -> bool:
        with self._cond:
            return self._busy or self._pending is not None

    def reset(self) -> None:
        """Forget results and temporal state (the stream jumped back in time). Returns at once; an estimate still
        being computed for the old timeline is discarded."""
        with self._cond:
            self._results.clear()
            self._pending = None
            self._newest_done_ns = -1
            self._generation += 1

    def stats(self) -> dict[str, str]:
        with self._cond:
            values = {"estimated": str(self.estimated), "skipped": str(self.skipped), "failed": str(self.failed),
                      "compute_ms": f"{self.last_compute_s * 1e3:.1f}"}
            if self.aligner is not None and self.aligner.initialized:
                values["alignment"] = f"alpha {self.aligner.alpha:.4g}, beta {self.aligner.beta:.4g}"
            if self.last_error:
                values["last_error"] = self.last_error
        return values

    def close(self) -> None:
        with self._cond:
            self._running = False
            self._cond.notify_all()
        self._worker.join(timeout=10.0)

    def estimate_now(self, rgb: np.ndarray, static_mask: np.ndarray | None = None
                     ) -> tuple[np.ndarray, AlignedDepth | None]:
        """Depth (H, W) float32 metres of one image on the calling thread (what the worker runs per frame);
        static_mask as in submit()."""
        metric = self.metric.estimate([rgb])[0].values
        if self.relative is None:
            return metric.astype(np.float32, copy=False), None
        relative = self.relative.estimate([rgb])[0].values
        mask = None if static_mask is None else torch.from_numpy(np.asarray(static_mask, bool))
        aligned = align_or_pass_through(self.aligner, torch.from_numpy(relative), torch.from_numpy(metric), mask)
        return aligned.depth_m.cpu().numpy(), aligned

    def _reset_sources(self) -> None:
        if self.aligner is not None:
            self.aligner.reset()
        for source in (self.metric, self.relative):
            if source is not None:
                source.reset()

    def _work(self) -> None:
        seen_generation = 0
        while True:
            with self._cond:
                self._cond.wait_for(lambda: not self._running or self._pending is not None)
                if not self._running:
                    return
                stamp_ns, rgb, static_mask = self._pending
                self._pending = None
                generation = self._generation
                stale = stamp_ns <= self._newest_done_ns      # out of order without a reset: not estimated
                if stale:
                    self.skipped += 1
                self._busy = not stale
            error = None
            started = time.perf_counter()
            try:
                if generation != seen_generation:
                    self._reset_sources()
                    seen_generation = generation
                if not stale:
                    depth_m, aligned = self.estimate_now(rgb, static_mask)
            except Exception as e:  # noqa: BLE001 - a failing model must not stop the stream; reported
                error = f"{type(e).__name__}: {e}"
            elapsed = time.perf_counter() - started
            with self._cond:
                if stale:
                    pass
                elif error is not None:
                    self.failed += 1
                    self.last_error = error
                elif generation == self._generation:          # else the stream was reset meanwhile: discard
                    self._results.append(DepthEstimate(stamp_ns, depth_m, elapsed, aligned))
                    self._newest_done_ns = stamp_ns
                    self.estimated += 1
                    self.last_compute_s = elapsed
                self._cond.notify_all()
            if self.on_result is not None:
                try:
                    self.on_result(error)
                except Exception as e:  # noqa: BLE001 - the caller's problem must not kill the depth thread
                    with self._cond:
                        self.last_error = f"on_result: {type(e).__name__}: {e}"
            with self._cond:        # idle only once the result is delivered (see busy_or_pending)
                self._busy = False
                self._cond.notify_all()
