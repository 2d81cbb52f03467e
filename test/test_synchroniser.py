"""The core frame synchroniser (no ROS): completion order, head-of-line blocking, time jumps, back-pressure and the
drop reasons, driven by a clock the test owns."""
from __future__ import annotations

import numpy as np
import pytest

from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.transforms import RigidTransform, check_unit_quaternion
from egox_ros.core.io.image_codec import depth_implausible
from egox_ros.core.runtime.synchroniser import FrameSynchroniser, SyncConfig, SyncSources

SEC = 1_000_000_000
T0 = 100 * SEC
DT = SEC // 30
H, W = 8, 10
CAMERA = PinholeCamera(W, H, 10.0, 10.0, 4.5, 3.5)


class Clock:
    def __init__(self):
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


class Sink:
    """The consumer: takes complete frames while it has room."""

    def __init__(self, capacity: int = 1000):
        self.capacity, self.frames = capacity, []

    def __call__(self, frame) -> bool:
        if len(self.frames) >= self.capacity:
            return False
        self.frames.append(frame)
        return True

    @property
    def stamps(self) -> list[int]:
        return [f.stamp_ns for f in self.frames]


def rgb() -> np.ndarray:
    return np.zeros((H, W, 3), np.uint8)


def depth(value_m: float = 2.0) -> np.ndarray:
    return np.full((H, W), value_m, np.float32)


def pose(x: float = 0.0) -> RigidTransform:
    return RigidTransform(np.array([x, 0.0, 0.0]), np.array([0.0, 0.0, 0.0, 1.0]))


def make(depth_topic=True, person_masks=False, sources=None, **config):
    clock = Clock()
    sync = FrameSynchroniser(SyncConfig(**config), "world", "head", depth_topic=depth_topic,
                             person_masks=person_masks, sources=sources, clock=clock)
    sync.set_camera_info(CAMERA, H, W)
    return sync, clock


def send(sync, ns, with_depth=True, tf=True, image=True):
    """One frame's inputs, in the order a camera driver and a tracker send them; returns add_image's result."""
    if tf:
        sync.add_transform("world", "exo", ns, pose())
        sync.add_transform("world", "head", ns, pose(1.0))
    if with_depth:
        sync.add_depth(ns, depth())
    return sync.add_image(ns, rgb(), "exo") if image else None


def codes(drops) -> list[tuple[list[int], str]]:
    return [(d.stamps_ns, d.code) for d in drops]


def test_frames_complete_in_order_with_their_poses():
    sync, _ = make()
    sink = Sink()
    for i in range(3):
        assert send(sync, T0 + i * DT).drops == []
        assert sync.resolve(sink) == []
    assert sink.stamps == [T0, T0 + DT, T0 + 2 * DT]
    frame = sink.frames[0]
    assert frame.world_T_ego[0, 3] == pytest.approx(1.0) and frame.depth_m.shape == (H, W)
    assert sync.waiting() == 0


def test_a_lost_depth_image_does_not_hold_the_frames_behind_it():
    sync, clock = make()
    sink = Sink()
    send(sync, T0)
    send(sync, T0 + DT, with_depth=False)        # its depth image is lost
    drops = sync.resolve(sink)
    assert drops == [] and sink.stamps == [T0]  # it may still come: wait
    send(sync, T0 + 2 * DT)                      # newer depth arrived: the lost one cannot come any more
    drops = sync.resolve(sink)
    assert codes(drops) == [([T0 + DT], "depth_missing")] and "newer depth" in drops[0].detail
    assert sink.stamps == [T0, T0 + 2 * DT] and clock.now_s == 0.0   # at once, no timeout needed


def test_complete_frames_behind_an_expired_one_go_on():
    # The depth model has no estimate for the first frame (and never will); the frames behind it have theirs.
    estimates = {T0 + DT: depth(), T0 + 2 * DT: depth()}
    sources = SyncSources(model_depth=lambda ns: (estimates[ns], ns) if ns in estimates else None,
                          model_depth_active=lambda: True)
    sync, clock = make(depth_topic=False, sources=sources, timeout_s=1.0)
    sink = Sink()
    for i in range(3):
        send(sync, T0 + i * DT, with_depth=False)
    assert sync.resolve(sink) == [] and sink.stamps == []
    clock.now_s = 1.5                            # all three are older than the timeout now
    drops = sync.resolve(sink)
    assert codes(drops) == [([T0], "depth_missing")] and "depth model" in drops[0].detail
    assert sink.stamps == [T0 + DT, T0 + 2 * DT]   # complete: not dropped with the expired one
    assert sync.drain_depth_lags_ms() == [0.0, 0.0] and sync.drain_depth_lags_ms() == []


def test_a_burst_waits_for_room_instead_of_overflowing():
    sync, clock = make(timeout_s=1.0)
    sink = Sink(capacity=2)
    for i in range(6):                           # a burst: six frames complete at once (after a stall)
        send(sync, T0 + i * DT)
    assert sync.resolve(sink) == [] and len(sink.frames) == 2 and sync.waiting() == 4
    for _ in range(2):                           # the consumer drains before the timeout: nothing is lost
        clock.now_s += 0.4
        sink.capacity += 2
        assert sync.resolve(sink) == []
    assert sink.stamps == [T0 + i * DT for i in range(6)]
    # A consumer that stays full: the frame waits timeout_s from the moment it was complete, then generator_busy.
    send(sync, T0 + 6 * DT)
    assert sync.resolve(sink) == []
    clock.now_s += 0.9
    assert sync.resolve(sink) == []
    clock.now_s += 0.2
    assert codes(sync.resolve(sink)) == [([T0 + 6 * DT], "generator_busy")]


def test_a_sustained_overload_drops_as_generator_busy_with_bounded_waiting():
    # Frames at 30 Hz, a consumer that takes one every 0.1 s (10 Hz): frames wait at most timeout_s for room, so the
    # waiting frames stay bounded (about timeout_s x 30) and every drop says generator_busy.
    sync, clock = make(timeout_s=1.0, max_waiting=64)
    sink = Sink(capacity=0)
    drops, most_waiting = [], 0
    for i in range(300):                                   # 10 s
        clock.now_s = i / 30
        send(sync, T0 + i * DT)
        if i % 3 == 0:
            sink.capacity += 1
        drops += sync.resolve(sink)
        most_waiting = max(most_waiting, sync.waiting())
    assert {d.code for d in drops} == {"generator_busy"} and most_waiting <= 32
    assert len(sink.frames) == 100 and len(sink.frames) + sum(len(d.stamps_ns) for d in drops) + sync.waiting() == 300
    assert sink.stamps == sorted(sink.stamps)


def test_a_frame_is_completed_once_even_when_it_waits_for_room():
    calls = []

    def head(ns, observation, depth_m, camera, world_T_exo):
        calls.append(ns)
        return np.eye(4)
    sync, clock = make(sources=SyncSources(head=head))
    sink = Sink(capacity=0)
    send(sync, T0)
    for _ in range(3):
        sync.resolve(sink)
    sink.capacity = 1
    sync.resolve(sink)
    assert calls == [T0] and sink.stamps == [T0]   # the head filter saw the frame once


def test_a_stray_stamp_does_not_reset_anything():
    sync, _ = make()
    sink = Sink()
    send(sync, T0)
    sync.resolve(sink)
    result = send(sync, 0)                       # one image stamped 0 (and TF at 0): held, no reset
    assert not result.time_jump and result.drops == [] and sync.waiting() == 1
    result = send(sync, T0 + DT)                 # the stream goes on: the held one was a stray
    assert codes(result.drops) == [([0], "out_of_order_stamp")] and "not confirmed" in result.drops[0].detail
    assert sync.resolve(sink) == [] and sink.stamps == [T0, T0 + DT] and sync.time_jumps == 0


def test_transforms_never_reset_the_timeline():
    sync, _ = make()
    sink = Sink()
    send(sync, T0)
    send(sync, T0 + DT)
    # Our own ego TF published long after its stamp, a stray TF at 0, and TF that arrives late after a stall.
    sync.add_transform("world", "ego_camera_optical", T0 - 10 * SEC, pose())
    sync.add_transform("world", "head", 0, pose())
    sync.add_transform("world", "exo", T0 - 5 * SEC, pose())
    assert sync.resolve(sink) == [] and sink.stamps == [T0, T0 + DT] and sync.time_jumps == 0


def test_a_negative_stamp_is_a_bad_image_not_a_reset():
    sync, _ = make()
    sink = Sink()
    send(sync, T0)
    result = sync.add_image(-SEC, rgb(), "exo")
    assert codes(result.drops) == [([-SEC], "bad_image")] and not result.time_jump
    send(sync, T0 + DT)
    sync.resolve(sink)
    assert sink.stamps == [T0, T0 + DT]


def test_a_looping_bag_is_confirmed_by_the_image_stream():
    resets = []
    sync, _ = make(sources=SyncSources(on_reset=resets.append), time_jump_confirm_frames=3)
    sink = Sink()
    send(sync, T0)
    send(sync, T0 + DT, with_depth=False)        # still waiting when the bag loops
    sync.resolve(sink)
    looped = [SEC + i * DT for i in range(3)]
    # TF and depth of the new timeline arrive before its images; they must survive the reset.
    results = [send(sync, ns) for ns in looped]
    assert [r.time_jump for r in results] == [False, False, True] and resets == [looped[0]]
    assert codes(results[2].drops) == [([T0 + DT], "time_jump_back")]
    assert [f.stamp_ns for f in results[2].accepted] == looped
    assert sync.resolve(sink) == []
    assert sink.stamps == [T0] + looped and sync.time_jumps == 1
    send(sync, looped[-1] + DT)                   # and the new timeline goes on
    sync.resolve(sink)
    assert sink.stamps[-1] == looped[-1] + DT


def test_duplicates_and_out_of_order_images():
    sync, _ = make()
    sink = Sink()
    send(sync, T0)
    sync.resolve(sink)
    assert codes(sync.add_image(T0, rgb(), "exo").drops) == [([T0], "duplicate_stamp")]
    assert codes(sync.add_image(T0 - DT, rgb(), "exo").drops) == [([T0 - DT], "out_of_order_stamp")]
    assert codes(sync.add_image(T0 + DT, rgb(), "").drops) == [([T0 + DT], "bad_image")]


def test_drop_reasons_name_the_rejected_input():
    sync, clock = make(timeout_s=1.0)
    sync.camera = None
    sync.set_camera_info(None, rejected="distortion model 'fisheye9' is not supported")
    sink = Sink()
    send(sync, T0)
    clock.now_s = 2.0
    drops = sync.resolve(sink)
    assert codes(drops) == [([T0], "camera_info_rejected")] and "fisheye9" in drops[0].detail
    sync.set_camera_info(CAMERA, H, W)
    # A head transform rejected (its quaternion is not normalised): the frame says so, not "waited for TF".
    sync.add_transform("world", "exo", T0 + DT, pose())
    sync.add_depth(T0 + DT, depth())
    assert sync.add_transform("world", "head", T0 + DT, None, rejected="quaternion is not normalised") is not None
    sync.add_image(T0 + DT, rgb(), "exo")
    clock.now_s = 4.0
    drops = sync.resolve(sink)
    assert codes(drops) == [([T0 + DT], "tf_rejected")] and "not normalised" in drops[0].detail
    # A depth image that could not be used: its frame goes at once, with why.
    send(sync, T0 + 2 * DT, with_depth=False)
    sync.add_depth(T0 + 2 * DT, None, rejected="depth image rejected: median depth 1500 m is implausible")
    drops = sync.resolve(sink)
    assert codes(drops) == [([T0 + 2 * DT], "bad_depth")] and "1500 m" in drops[0].detail


def test_a_head_transform_that_arrives_late_is_waited_for():
    """The head TF of the first frame arrives 1.5 s after its image (within sync.timeout_s and the TF cache), after
    the head TFs of later frames: the frame waits for it (holding the frames behind it in stamp order) and then
    completes with its own pose, instead of being dropped at once as tf_extrapolation_past."""
    sync, clock = make(timeout_s=4.0)
    sink = Sink()
    stamps = [T0 + i * DT for i in range(10)]
    for ns in stamps:
        sync.add_transform("world", "exo", ns, pose())
        if ns != T0:
            sync.add_transform("world", "head", ns, pose(1.0 + (ns - T0) / SEC))
        sync.add_depth(ns, depth())
        sync.add_image(ns, rgb(), "exo")
        assert sync.resolve(sink) == []
        clock.now_s += DT / SEC
    assert sink.frames == [] and sync.waiting() == 10
    assert sync.pending(T0).waiting_for[0] == "tf_extrapolation_past"
    clock.now_s = 1.5
    assert sync.resolve(sink) == [] and sink.frames == []
    sync.add_transform("world", "head", T0, pose(1.0))
    assert sync.resolve(sink) == []
    assert sink.stamps == stamps
    assert [f.world_T_ego[0, 3] for f in sink.frames] == pytest.approx([1.0 + i * DT / SEC for i in range(10)])


def test_a_transform_that_never_comes_or_lies_beyond_the_cache_drops_its_frame():
    """Waited for up to sync.timeout_s, then dropped as tf_extrapolation_past (the frames behind it go on); a stamp
    beyond sync.tf_cache_s before the edge's newest sample is dropped at once (no message could fill it)."""
    sync, clock = make(timeout_s=2.0, tf_cache_s=5.0)
    sink = Sink()
    sync.add_depth(T0, depth())
    sync.add_transform("world", "exo", T0, pose())
    sync.add_image(T0, rgb(), "exo")
    send(sync, T0 + DT)                              # head TF only from T0 + DT on
    assert sync.resolve(sink) == [] and sink.frames == []
    clock.now_s = 2.5
    drops = sync.resolve(sink)
    assert codes(drops) == [([T0], "tf_extrapolation_past")]
    assert "waited sync.timeout_s = 2.0 s for TF: Lookup would require extrapolation" in drops[0].detail
    assert sink.stamps == [T0 + DT]
    late = T0 + 10 * SEC                             # newest head TF 10 s after an image: beyond a 5 s cache
    send(sync, late, with_depth=False, image=False)
    old = T0 + 4 * SEC
    sync.add_transform("world", "exo", old, pose())  # discarded on arrival: the cache keeps 5 s before the newest
    sync.add_transform("world", "head", T0 + 6 * SEC, pose())
    sync.add_depth(old, depth())
    sync.add_image(old, rgb(), "exo")                # newer than the last accepted frame; head data only from 6 s
    drops = sync.resolve(sink)
    assert codes(drops) == [([old], "tf_extrapolation_past")] and "sync.tf_cache_s = 5.0 s" in drops[0].detail


def test_person_masks_from_a_topic_do_not_block_later_frames():
    sync, _ = make(person_masks=True)
    sink = Sink()
    send(sync, T0)
    send(sync, T0 + DT)
    sync.add_person_mask(T0 + DT, np.zeros((H, W), bool))     # the first frame's mask never comes
    drops = sync.resolve(sink)
    assert codes(drops) == [([T0], "person_mask_missing")] and sink.stamps == [T0 + DT]


def test_flush_drops_waiting_and_held_frames():
    sync, _ = make()
    send(sync, T0)
    send(sync, T0 + DT, with_depth=False)
    sync.resolve(Sink())
    send(sync, 0)                                          # a held time-jump candidate
    drops = sync.flush()
    assert codes(drops) == [([0], "out_of_order_stamp"), ([T0 + DT], "end_of_stream")]
    assert sync.waiting() == 0


def test_too_many_waiting_drops_the_oldest():
    sync, _ = make(max_waiting=2)
    for i in range(3):
        result = send(sync, T0 + i * DT, tf=False)
    assert codes(result.drops) == [([T0], "too_many_waiting")]
    assert sync.waiting() == 2


@pytest.fixture(scope="module")
def real_depth_m() -> np.ndarray:
    """A real Kinect depth image (TUM RGB-D fr1_rpy, CC BY 4.0), (480, 640) float32 m, NaN = no reading."""
    from egox_ros.tools import tum
    try:
        return tum.TumSequence("fr1_rpy_60")[0].depth_m
    except FileNotFoundError as e:
        pytest.skip(str(e))


def test_depth_plausibility_on_real_depth(real_depth_m):
    depth_m = real_depth_m
    assert depth_implausible(depth_m, "16UC1") is None
    mm = np.where(np.isfinite(depth_m), depth_m, 0) * 1000            # millimetres sent as 32FC1 "metres"
    assert "millimetres labelled as metres" in depth_implausible(mm.astype(np.float32), "32FC1")
    as_metres_in_mm = np.where(np.isfinite(depth_m), np.round(depth_m), np.nan) * 1e-3   # metres sent as 16UC1
    assert "metres labelled as millimetres" in depth_implausible(as_metres_in_mm.astype(np.float32), "16UC1")
    # 32FC1 bytes labelled 16UC1: each float reads as two 16-bit millimetre values (the row's first half).
    floats = np.ascontiguousarray(np.where(np.isfinite(depth_m), depth_m, 0).astype("<f4"))
    halves = floats.view("<u2")[:, :depth_m.shape[1]].astype(np.float32) * 1e-3
    halves[halves == 0] = np.nan
    assert "do not read as 16UC1" in depth_implausible(halves, "16UC1")
    assert depth_implausible(np.full((4, 4), 1e6, np.float32), "32FC1") is None     # too few pixels to judge


def test_quaternions_must_be_normalised_as_tf2_requires():
    check_unit_quaternion([0.0, 0.0, 0.0, 1.0])
    check_unit_quaternion([0.0, 0.0, 0.0, 1.004])          # |q|^2 - 1 = 0.008: within tf2's tolerance
    with pytest.raises(ValueError, match="not normalised"):
        check_unit_quaternion([0.0, 0.0, 0.0, 2.0])
    with pytest.raises(ValueError, match="finite"):
        check_unit_quaternion([0.0, 0.0, float("nan"), 1.0])


def test_head_hint_is_the_head_tf_projected_into_the_exo_image():
    """The person detector's hint: the head frame's origin through the exo camera at the image's stamp; head TF
    that has not reached the stamp yet is taken at its newest within HINT_TF_AGE_S (0.25 s), older is no hint."""
    sync, _ = make()
    head = RigidTransform(np.array([0.4, -0.2, 2.0]), np.array([0.0, 0.0, 0.0, 1.0]))
    sync.add_transform("world", "exo", T0, pose(), static=True)
    sync.add_transform("world", "head", T0, head)
    hint = sync.head_hint(T0, "exo")
    np.testing.assert_allclose(hint.uv_px, (4.5 + 10.0 * 0.4 / 2.0, 3.5 - 10.0 * 0.2 / 2.0), atol=1e-4)
    assert hint.px_per_m == pytest.approx(5.0)
    assert sync.head_hint(T0 + 6 * DT, "exo").uv_px == pytest.approx(hint.uv_px)    # 0.2 s ahead of the TF
    assert sync.head_hint(T0 + 9 * DT, "exo") is None                               # 0.3 s ahead
    sync.add_transform("world", "head", T0 + DT, RigidTransform(np.array([0.0, 0.0, -1.0]),
                                                                np.array([0.0, 0.0, 0.0, 1.0])))
    assert sync.head_hint(T0 + DT, "exo") is None                                   # behind the camera
    assert sync.head_hint(T0, "unknown_frame") is None


def test_head_hint_is_none_when_the_head_comes_from_the_image():
    in_front = RigidTransform(np.array([0.0, 0.0, 2.0]), np.array([0.0, 0.0, 0.0, 1.0]))
    for sources, hinted in ((None, True), (SyncSources(head=lambda *args: None), False)):
        sync, _ = make(sources=sources)
        sync.add_transform("world", "exo", T0, pose(), static=True)
        sync.add_transform("world", "head", T0, in_front)
        assert (sync.head_hint(T0, "exo") is not None) == hinted
