"""The engine's frame accounting holds at every moment another thread can read it (the node's ~/progress takes
the engine lock and reads received, published, dropped, waiting and queued in one snapshot): drops are counted in
the same lock hold that takes their frames out of waiting or queued, and a received image is counted together with
where it went."""
from __future__ import annotations

import threading

import numpy as np

from conftest import wait_until
from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.runtime.engine import EgoEngine, EngineEvents
from egox_ros.ros.config import parameter_sections
from egox_ros.ros.params import configs_from_parameters

SEC = 1_000_000_000
T0 = 100 * SEC
W, H = 40, 30


class Clock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class Checking(EngineEvents):
    """Checks the invariant, as ~/progress reads it, from inside every callback the engine makes."""

    def __init__(self):
        self.engine: EgoEngine | None = None
        self.broken: list[str] = []
        self.drops, self.clips = [], []

    def check(self, where: str) -> None:
        e = self.engine
        with e.lock:
            s = e.stats
            accounted = s.published + sum(s.dropped.values()) + e.waiting() + e.queued()
            if s.received != accounted:
                self.broken.append(f"{where}: received {s.received} != published {s.published} + dropped "
                                   f"{sum(s.dropped.values())} + waiting {e.waiting()} + queued {e.queued()}")

    def dropped(self, drop) -> None:
        self.drops.append(drop)
        self.check(f"dropped {drop.code}")

    def clip(self, output, latency_s: float) -> None:
        self.clips.append(output)
        self.check("clip")

    def progress(self) -> None:
        self.check("progress")


def make_engine(**params):
    configs, warnings = configs_from_parameters({"person.source": "none", "prior.splat": "hard", "fusion.stride": 1,
                                                 "sync.timeout_s": 1.0,
                                                 "ego_camera.width": 32, "ego_camera.height": 32,
                                                 "ego_camera.fx": 16.0, "ego_camera.fy": 16.0,
                                                 "ego_camera.cx": 15.5, "ego_camera.cy": 15.5, **params},
                                                parameter_sections())
    assert warnings == []
    events, clock = Checking(), Clock()
    engine = EgoEngine({k: configs[k] for k in configs if k not in ("qos", "diagnostics")}, events, clock=clock)
    events.engine = engine
    engine.set_camera_info(PinholeCamera(W, H, 30.0, 30.0, 19.5, 14.5), H, W)
    return engine, events, clock


def send(engine, ns, depth=True, rejected=None):
    identity = RigidTransform(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
    engine.add_transforms([("world", "exo_optical", ns, identity, None), ("world", "head", ns, identity, None)])
    if depth:
        engine.add_depth(ns, np.full((H, W), 2.0, np.float32))
    engine.add_image(ns, None if rejected else np.full((H, W, 3), 100, np.uint8), "exo_optical", rejected=rejected)


def test_frames_dropped_together_are_counted_before_anyone_hears_of_them():
    """Three frames time out in one tick: while the consumer hears of the first drop, the other two are already
    counted as dropped (they have left `waiting`); the same for a flush and for a bad image."""
    engine, events, clock = make_engine()
    try:
        for i in range(3):
            send(engine, T0 + i * SEC // 30, depth=False)
        assert engine.waiting() == 3 and events.drops == []
        clock.now_s = 2.0
        engine.tick()
        assert [(len(d.stamps_ns), d.code) for d in events.drops] == [(1, "depth_missing")] * 3
        for i in range(3, 5):
            send(engine, T0 + i * SEC // 30, depth=False)
        engine.flush()
        send(engine, T0 + 6 * SEC // 30, rejected="bad bytes")
        assert [d.code for d in events.drops[3:]] == ["end_of_stream", "end_of_stream", "bad_image"]
        assert events.broken == []
        events.check("end")
        assert engine.stats.received == 6 and events.broken == []
    finally:
        engine.close()


def test_the_invariant_holds_for_a_reader_on_another_thread():
    """The generator worker publishes clips while images (good, bad, without depth) arrive and a reader takes
    ~/progress snapshots as fast as it can: no snapshot ever breaks the invariant."""
    engine, events, clock = make_engine()
    stop = threading.Event()

    def reader():
        while not stop.is_set():
            events.check("reader")

    thread = threading.Thread(target=reader, daemon=True)
    engine.start()
    thread.start()
    try:
        for i in range(300):
            clock.now_s = i * 0.001                  # frames wait at most sync.timeout_s = 1 s: none times out
            send(engine, T0 + i * SEC // 30, depth=i % 7 != 3, rejected="bad" if i % 11 == 5 else None)
            engine.tick()
        engine.flush()
        wait_until(lambda: engine.queued() == 0 and engine.waiting() == 0, 120, "every frame out of the engine")
    finally:
        stop.set()
        thread.join(10)
        engine.close()
    assert events.broken == [], events.broken[:5]
    s = engine.stats
    assert s.received == 300 and s.published + sum(s.dropped.values()) == 300
    assert s.dropped["bad_image"] == 27 and s.dropped["depth_missing"] == 39
    assert s.published + s.dropped["generator_busy"] == 234 and len(events.clips) > 0
