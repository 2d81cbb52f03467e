"""generator.backend 'ray': the engine with the tiny EgoX checkpoint on two Ray replicas (local Ray on loopback, CPU):
every frame comes out once, in stamp order, with the same accounting; a replica that dies is left out and the clip it
held is sent once more to another."""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest

ray = pytest.importorskip("ray", reason="Ray is optional; scripts/setup.sh installs it")

from egox_ros.core.egox.tiny import save_tiny_lora, save_tiny_model  # noqa: E402
from egox_ros.core.geometry.cameras import PinholeCamera  # noqa: E402
from egox_ros.core.geometry.transforms import RigidTransform  # noqa: E402
from egox_ros.core.runtime.engine import EgoEngine, EngineEvents  # noqa: E402
from egox_ros.ros.config import parameter_sections  # noqa: E402
from egox_ros.ros.params import configs_from_parameters  # noqa: E402

SEC = 1_000_000_000
T0 = 100 * SEC
W, H = 160, 120
CLIP = 5
TINY = {"generator.name": "egox", "generator.backend": "ray", "generator.replicas": 2, "egox.clip_frames": CLIP,
        "egox.exo_width": 64, "egox.exo_height": 32, "egox.steps": 2, "ego_camera.width": 32,
        "ego_camera.height": 32, "ego_camera.fx": 16.0, "ego_camera.fy": 16.0, "ego_camera.cx": 15.5,
        "ego_camera.cy": 15.5, "fusion.stride": 1, "sync.queue_capacity": 100,
        # What this file tests is the pool: no person detector (its results would hold a flush until a tick()) and
        # the quick hard splat for the priors.
        "person.source": "none", "prior.splat": "hard"}


class Collected(EngineEvents):
    def __init__(self):
        self.clips, self.drops, self.errors = [], [], []
        self.changed = threading.Condition()

    def clip(self, output, latency_s: float) -> None:
        with self.changed:
            self.clips.append(output)
            self.changed.notify_all()

    def dropped(self, drop) -> None:
        with self.changed:
            self.drops.append(drop)
            self.changed.notify_all()

    def log(self, level: str, text: str) -> None:
        if level == "error":
            self.errors.append(text)

    def frames_out(self) -> int:
        return sum(len(c.request.frames) for c in self.clips) + sum(len(d.stamps_ns) for d in self.drops)

    def wait_for(self, frames: int, timeout_s: float) -> None:
        with self.changed:
            assert self.changed.wait_for(lambda: self.frames_out() >= frames, timeout_s), \
                f"{self.frames_out()} of {frames} frames out after {timeout_s} s; errors: {self.errors}"


@pytest.fixture(scope="module")
def engine(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny_pool")
    params = {**TINY, "egox.model_path": str(save_tiny_model(root / "model")),
              "egox.lora_path": str(save_tiny_lora(root / "lora"))}
    configs, warnings = configs_from_parameters(params, parameter_sections())
    assert warnings == []
    events = Collected()
    engine = EgoEngine({k: configs[k] for k in configs if k not in ("qos", "diagnostics")}, events)
    engine.start()
    yield engine, events
    engine.close()
    assert not ray.is_initialized()          # the local Ray instance the pool started is gone with it


def send(engine, ns):
    identity = RigidTransform(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
    engine.add_transforms([("world", "exo_optical", ns, identity, None), ("world", "head", ns, identity, None)])
    engine.add_depth(ns, np.full((H, W), 2.0, np.float32))
    rgb = np.zeros((H, W, 3), np.uint8)
    rgb[..., 0] = 200
    engine.add_image(ns, rgb, "exo_optical")


def test_clips_run_on_two_replicas_and_come_out_in_order(engine):
    engine, events = engine
    engine.set_camera_info(PinholeCamera(W, H, 100.0, 100.0, 79.5, 59.5), H, W)
    stamps = [T0 + i * SEC // 30 for i in range(3 * CLIP + 2)]     # three clips and a partial one
    for ns in stamps:
        send(engine, ns)
    with events.changed:                    # wait until every frame is queued, then end the stream
        events.changed.wait_for(lambda: engine.waiting() == 0 and engine.stats.received == len(stamps), 60)
    engine.flush()
    events.wait_for(len(stamps), timeout_s=600)
    assert events.drops == [] and events.errors == []
    out = [f.stamp_ns for c in events.clips for f in c.request.frames]
    assert out == stamps                                   # every frame once, in stamp order
    assert [len(c.request.frames) for c in events.clips] == [CLIP, CLIP, CLIP, 2]
    assert all(rgb.shape == (32, 32, 3) and rgb.std() > 0 for c in events.clips for rgb in c.result.rgb)
    settings = engine.generator.settings()
    assert settings["backend"] == "ray, 2 replica(s)" and "rank" in settings["lora"]
    assert len(set(engine.generator.pids)) == 2              # two replica processes, each with its own model
    assert ray.util.get_node_ip_address() == "127.0.0.1"     # the local Ray instance stays on loopback
    assert engine.stats.published == len(stamps) and engine.queued() == 0


def test_a_clip_whose_replica_died_is_sent_again_to_another(engine):
    """The replica the next clip goes to is killed (Ray restarts it, max_restarts=1): its clip is sent once more, to
    the other replica, and every frame comes out; the restarted replica is taken back once its model has loaded."""
    engine, events = engine
    pool = engine.generator
    before_clips, before_out, before_retried = len(events.clips), events.frames_out(), pool.retried
    assert pool.live() == [0, 1]
    victim = pool._actors[0]                                             # the least busy: the next clip goes there
    ray.kill(victim, no_restart=False)
    stamps = [T0 + 10 * SEC + i * SEC // 30 for i in range(2 * CLIP)]
    for ns in stamps:
        send(engine, ns)
    events.wait_for(before_out + len(stamps), timeout_s=600)
    assert [d for d in events.drops if d.code == "generator_failed"] == [], events.drops
    published = [f.stamp_ns for c in events.clips[before_clips:] for f in c.request.frames]
    assert published == stamps                                           # every frame once, in stamp order
    assert pool.retried == before_retried + 1
    s = engine.stats
    assert s.published + sum(s.dropped.values()) == s.received
    deadline = time.monotonic() + 120
    while pool.live() != [0, 1] and time.monotonic() < deadline:         # restarted: the model loads again
        time.sleep(0.2)
    assert pool.live() == [0, 1] and len(set(pool.pids)) == 2


def test_clips_go_only_to_live_replicas(engine):
    """A replica killed for good: after the one clip that finds it dead (sent again), the pool's capacity is one
    replica and every clip goes to the live one; none fails while it idles."""
    engine, events = engine
    pool = engine.generator
    before_clips, before_out, before_retried = len(events.clips), events.frames_out(), pool.retried
    ray.kill(pool._actors[0], no_restart=True)
    stamps = [T0 + 20 * SEC + i * SEC // 30 for i in range(3 * CLIP)]
    for ns in stamps:
        send(engine, ns)
    events.wait_for(before_out + len(stamps), timeout_s=600)
    assert [d for d in events.drops if d.code == "generator_failed"] == [], events.drops
    assert [f.stamp_ns for c in events.clips[before_clips:] for f in c.request.frames] == stamps
    assert pool.retried == before_retried + 1                            # only the clip that found it dead
    assert pool.live() == [1] and pool.capacity == 1
    # The last replica killed too: its clip fails with the reason, and the engine goes on accounting.
    ray.kill(pool._actors[1], no_restart=True)
    last = [T0 + 30 * SEC + i * SEC // 30 for i in range(CLIP)]
    for ns in last:
        send(engine, ns)
    events.wait_for(before_out + len(stamps) + CLIP, timeout_s=600)
    failed = [d for d in events.drops if d.code == "generator_failed"]
    assert len(failed) == 1 and failed[0].stamps_ns == last
    assert "replica 1 died" in failed[0].detail and "no live replica" in failed[0].detail
    s = engine.stats
    assert s.published + sum(s.dropped.values()) == s.received
