"""AsyncDepthEstimator: the worker that runs the depth models beside the camera stream.

The sources here are small real DepthSource implementations over a synthetic scene (a slanted plane), with a
controllable compute time and failures: they stand in for the models, the estimator is what is under test."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

from egox_ros.core.depth.base import DepthMap, DepthSource
from egox_ros.core.depth.estimator import AsyncDepthEstimator
from egox_ros.core.depth.temporal import TemporalRelativeDepth
from egox_ros.core.geometry.depth_alignment import DepthAlignmentConfig

H, W = 48, 64
DEPTH_M = np.linspace(1.0, 4.0, W, dtype=np.float32)[None].repeat(H, 0)      # a plane slanting away, 1-4 m


class SceneSource(DepthSource):
    """Metric depth of the scene (or a / depth + b per frame, relative inverse), after `delay_s`; fails on demand."""

    def __init__(self, kind="metric", delay_s=0.0, flicker=None):
        self._kind, self.delay_s, self.flicker = kind, delay_s, flicker
        self.fail = False
        self.calls = self.resets = 0
        self.gate = threading.Event()
        self.gate.set()

    @property
    def kind(self):
        return self._kind

    def estimate(self, images):
        self.gate.wait(10)
        time.sleep(self.delay_s)
        self.calls += 1
        if self.fail:
            raise RuntimeError("out of memory (simulated)")
        out = []
        for _ in images:
            if self._kind == "metric":
                out.append(DepthMap(DEPTH_M.copy(), "metric"))
            else:
                a, b = self.flicker(self.calls)
                out.append(DepthMap((a / DEPTH_M + b).astype(np.float32), "relative_inverse"))
        return out

    def reset(self):
        self.resets += 1


def image(seed=0):
    return np.full((H, W, 3), seed % 256, np.uint8)


def wait_idle(estimator, timeout_s=10):
    deadline = time.monotonic() + timeout_s
    while estimator.busy_or_pending():
        assert time.monotonic() < deadline, "the depth worker never went idle"
        time.sleep(0.005)


@pytest.fixture
def make():
    made = []

    def build(*args, **kwargs):
        e = AsyncDepthEstimator(*args, **kwargs)
        made.append(e)
        return e
    yield build
    for e in made:
        e.close()


def test_frames_use_the_nearest_estimate_and_a_slow_model_skips_to_the_newest(make):
    source = SceneSource()
    events = []
    est = make(source, on_result=events.append)
    source.gate.clear()                           # the model is busy: five images arrive meanwhile
    est.submit(0, image())
    time.sleep(0.05)
    for i in range(1, 6):
        est.submit(i * 100, image(i))
    source.gate.set()
    wait_idle(est)
    # The first image, then only the newest of those that queued behind it: the others were skipped.
    assert [e.stamp_ns for e in est._results] == [0, 500] and est.skipped == 4 and events == [None, None]
    assert est.estimate_for(300, max_lag_s=1.0).stamp_ns == 500          # nearest, here a newer frame's
    assert est.estimate_for(200, max_lag_s=1.0).stamp_ns == 0
    assert est.estimate_for(10**10, max_lag_s=1.0) is None               # 10 s away: too stale
    np.testing.assert_array_equal(est.estimate_for(500, 1.0).depth_m, DEPTH_M)


def test_a_failing_model_is_reported_and_the_stream_goes_on(make):
    source = SceneSource()
    source.fail = True
    events = []
    est = make(source, on_result=events.append)
    est.submit(1, image())
    wait_idle(est)
    assert events == ["RuntimeError: out of memory (simulated)"] and est.failed == 1
    assert est.stats()["last_error"].startswith("RuntimeError") and est.estimate_for(1, 1.0) is None
    source.fail = False
    est.submit(2, image())
    wait_idle(est)
    assert est.estimate_for(2, 1.0).stamp_ns == 2 and events[-1] is None


def test_out_of_order_images_are_skipped_without_losing_results(make):
    est = make(SceneSource())
    for stamp in (10, 20):
        est.submit(stamp, image())
        wait_idle(est)
    est.submit(15, image())                          # late: not estimated, earlier results kept
    wait_idle(est)
    assert [e.stamp_ns for e in est._results] == [10, 20] and est.skipped == 1


def test_reset_is_immediate_discards_the_old_timeline_and_resets_the_sources_on_the_worker(make):
    source = SceneSource()
    est = make(source)
    est.submit(1000, image())
    wait_idle(est)
    source.gate.clear()
    est.submit(2000, image())                        # in flight while the stream jumps back
    time.sleep(0.05)
    started = time.monotonic()
    est.reset()
    assert time.monotonic() - started < 0.05         # does not wait for the model
    source.gate.set()
    wait_idle(est)
    assert est.estimate_for(2000, 10.0) is None      # the in-flight result belonged to the old timeline
    est.submit(5, image())
    wait_idle(est)
    assert est.estimate_for(5, 1.0).stamp_ns == 5 and source.resets == 1


def test_video_depth_through_the_estimator_recovers_the_metric_scene(make):
    # A relative source with strong per-frame affine flicker, stabilised, then aligned to the metric source by the
    # estimator's own per-frame path: the aligned depth is the scene's.
    rng = np.random.default_rng(0)
    flicker = {}

    def a_b(call):
        return flicker.setdefault(call, (float(rng.uniform(0.5, 2.0)), float(rng.uniform(-0.1, 0.3))))
    relative = TemporalRelativeDepth(SceneSource("relative_inverse", flicker=a_b))
    est = make(SceneSource(), relative, DepthAlignmentConfig(min_pixels=50, momentum=0.9))
    for i in range(10):
        depth_m, aligned = est.estimate_now(image(i))
    assert aligned is not None and aligned.fit_ok
    assert np.nanmax(np.abs(depth_m - DEPTH_M) / DEPTH_M) < 0.01


def test_kinds_are_checked():
    with pytest.raises(ValueError, match="a metric one is needed"):
        AsyncDepthEstimator(SceneSource("relative_inverse", flicker=lambda c: (1.0, 0.0)))
    with pytest.raises(ValueError, match="not relative inverse depth"):
        AsyncDepthEstimator(SceneSource(), SceneSource())


def test_a_person_mask_keeps_the_person_out_of_the_alignment_fit(make):
    # The metric model puts a "person" (the left quarter) at a depth the relative model does not share. Left in,
    # those pixels pull the fit; masked out (static_mask False on the person), the scene is recovered exactly.
    class PersonInMetric(SceneSource):
        def estimate(self, images):
            out = super().estimate(images)
            for d in out:
                d.values[:, : W // 4] *= 0.3
            return out
    person = np.zeros((H, W), bool)
    person[:, : W // 4] = True
    config = DepthAlignmentConfig(min_pixels=50, momentum=0.0)
    errors = {}
    for name, static_mask in (("masked", ~person), ("unmasked", None)):
        relative = SceneSource("relative_inverse", flicker=lambda call: (1.5, 0.1))
        est = make(PersonInMetric(), relative, config)
        depth_m, aligned = est.estimate_now(image(), static_mask)
        errors[name] = float(np.nanmax(np.abs(depth_m - DEPTH_M)[~person] / DEPTH_M[~person]))
    assert errors["masked"] < 1e-3, errors
    assert errors["unmasked"] > 0.05, errors
