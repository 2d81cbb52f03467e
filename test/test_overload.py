"""sync.overload: what a complete frame does when the generator queue is full (issue 18).

'drop_oldest' (the live node's default): the oldest queued frame is dropped as generator_busy and the new one queued,
so the frames published under a sustained overload are the newest; 'keep_all' (egox replay / process): frames wait
for room as long as it takes (past sync.timeout_s), none is dropped for lack of room. A real engine with the prior
generator (no person detector: frames complete as they arrive); its worker starts only once the queue has
overflowed, so the overload is deterministic.
"""
from __future__ import annotations

import numpy as np

from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.runtime.engine import EgoEngine, EngineEvents
from egox_ros.ros.config import parameter_sections
from egox_ros.ros.params import configs_from_parameters

from conftest import wait_until

SEC = 1_000_000_000
T0 = 100 * SEC
W, H = 40, 30
STAMPS = [T0 + i * SEC // 30 for i in range(10)]


class Recorder(EngineEvents):
    def __init__(self):
        self.drops, self.published = [], []

    def dropped(self, drop) -> None:
        self.drops.append(drop)

    def clip(self, output, latency_s: float) -> None:
        self.published += [f.stamp_ns for f in output.request.frames]


def _engine(overload: str):
    now = [0.0]
    configs, warnings = configs_from_parameters(
        {"sync.overload": overload, "sync.queue_capacity": 4, "sync.timeout_s": 1.0, "person.source": "none",
         "fusion.stride": 1,
         "ego_camera.width": 32, "ego_camera.height": 32, "ego_camera.fx": 16.0, "ego_camera.fy": 16.0,
         "ego_camera.cx": 15.5, "ego_camera.cy": 15.5}, parameter_sections())
    assert warnings == []
    events = Recorder()
    engine = EgoEngine({k: configs[k] for k in configs if k not in ("qos", "diagnostics")}, events,
                       clock=lambda: now[0])
    engine.set_camera_info(PinholeCamera(W, H, 30.0, 30.0, 19.5, 14.5), H, W)
    identity = RigidTransform(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
    for ns in STAMPS:          # ten complete frames at 30 Hz, faster than a stopped generator takes them
        now[0] = (ns - T0) / SEC
        engine.add_transforms([("world", "exo_optical", ns, identity, None), ("world", "head", ns, identity, None)])
        engine.add_depth(ns, np.full((H, W), 2.0, np.float32))
        engine.add_image(ns, np.full((H, W, 3), 100, np.uint8), "exo_optical")
    now[0] += 5.0              # far past sync.timeout_s
    engine.tick()
    return engine, events


def _drain(engine, events, stamps):
    engine.start()
    engine.flush()
    wait_until(lambda: len(events.published) >= len(stamps), 60, "the queued frames to be published")
    s = engine.stats
    assert s.received == s.published + sum(s.dropped.values())


def test_drop_oldest_publishes_the_newest_frames():
    engine, events = _engine("drop_oldest")
    try:
        assert engine.queued() == 4 and engine.waiting() == 0
        dropped = [ns for d in events.drops for ns in d.stamps_ns]
        assert dropped == STAMPS[:6] and {d.code for d in events.drops} == {"generator_busy"}
        assert "drop_oldest" in events.drops[0].detail
        _drain(engine, events, STAMPS[6:])
        assert events.published == STAMPS[6:]
        assert engine.stats.dropped == {"generator_busy": 6}
    finally:
        engine.close()


def test_keep_all_waits_past_the_timeout_and_publishes_every_frame():
    engine, events = _engine("keep_all")
    try:
        assert engine.queued() == 4 and engine.waiting() == 6 and events.drops == []
        _drain(engine, events, STAMPS)
        assert events.published == STAMPS and events.drops == []
    finally:
        engine.close()


def test_replay_and_process_keep_every_frame_unless_told_otherwise():
    # egox replay and egox process plan the node's parameters from the bag: a recording keeps every frame.
    from pathlib import Path

    from egox_ros.ros.offline.plan import make_plan
    sample = Path(__file__).resolve().parents[1] / "sample" / "tum_fr1_rpy"
    plan = make_plan(sample)
    assert "sync.overload:=keep_all" in plan.replay_params and plan.configs["sync"].overload == "keep_all"
    # ... and draws a still camera's priors over the whole clip's background (49 frames), as the released ones.
    assert "generator.prior_clip_frames:=49" in plan.replay_params
    assert plan.configs["generator"].prior_clip_frames == 49
    mine = make_plan(sample, overrides=["sync.overload:=drop_oldest"])
    assert not any(p.startswith("sync.overload") for p in mine.replay_params)
    assert mine.configs["sync"].overload == "drop_oldest"
    frame_by_frame = make_plan(sample, overrides=["generator.prior_clip_frames:=1"])
    assert frame_by_frame.configs["generator"].prior_clip_frames == 1
    assert not any(p.startswith("generator.prior_clip_frames") for p in frame_by_frame.replay_params)
    # ... and masks other people in view too (2), as the released priors leave out every person; the live node's
    # default is 0 (no time for it), and the user's value stands.
    assert "person.other_people:=2" in plan.replay_params and plan.configs["person"].other_people == 2
    alone = make_plan(sample, overrides=["person.other_people:=0"])
    assert alone.configs["person"].other_people == 0
    assert not any(p.startswith("person.other_people") for p in alone.replay_params)
