"""The person mask kept to the person's own depth (core/demonstrator/mask_depth.py): synthetic scenes with an exact
depth image, and the engine-side helper that applies person.depth_tolerance_m."""
from __future__ import annotations

import numpy as np
import pytest

from egox_ros.core.demonstrator.detector import PersonConfig, dilate_mask
from egox_ros.core.demonstrator.landmarks import BodyLandmarks, PersonObservation
from egox_ros.core.demonstrator.mask_depth import refine_mask_by_depth, refine_observation
from egox_ros.core.demonstrator.mediapipe_detector import body_region

H, W = 240, 320
PERSON_M = 2.0                  # the person's distance [m]


def _standing_person() -> BodyLandmarks:
    """A person facing the camera, arms reaching forward-down to a counter: BlazePose's 33 landmarks in pixels
    (shoulders 40 px apart), all seen."""
    uv = np.zeros((33, 2))
    uv[:11] = [160, 40]                                   # head keypoints around the nose
    uv[[1, 2, 3]] += [[4, -3], [6, -3], [8, -3]]          # left eye (image right)
    uv[[4, 5, 6]] += [[-4, -3], [-6, -3], [-8, -3]]
    uv[7], uv[8] = [172, 40], [148, 40]                   # ears
    uv[9], uv[10] = [164, 50], [156, 50]                  # mouth
    uv[11], uv[12] = [180, 70], [140, 70]                 # shoulders
    uv[13], uv[14] = [190, 105], [130, 105]               # elbows
    uv[15], uv[16] = [185, 135], [135, 135]               # wrists
    uv[[17, 19, 21]] = [188, 145]                         # left hand
    uv[[18, 20, 22]] = [132, 145]
    uv[23], uv[24] = [175, 140], [145, 140]               # hips
    uv[25], uv[26] = [175, 180], [145, 180]               # knees
    uv[27], uv[28] = [175, 220], [145, 220]               # ankles
    uv[[29, 31]] = [180, 228]
    uv[[30, 32]] = [140, 228]
    return BodyLandmarks(uv_px=uv, visibility=np.full(33, 0.99))


def _scene(counter_m: float) -> tuple[BodyLandmarks, np.ndarray, np.ndarray, np.ndarray]:
    """(body, person pixels (H, W) bool, the mask: the person plus a counter under the hands that the 2D outline
    took with them, depth (H, W) float32: the person at PERSON_M, the counter at counter_m, the wall at 4 m)."""
    body = _standing_person()
    person = body_region(body.uv_px, (H, W), body.visibility)
    counter = np.zeros((H, W), bool)
    counter[130:175, 100:220] = True
    counter &= ~person
    depth = np.full((H, W), 4.0, np.float32)
    depth[counter] = counter_m
    depth[person] = PERSON_M
    return body, person, person | counter, depth


@pytest.mark.parametrize("counter_m", [2.6, 1.4])      # behind the hands, or held out in front of the body
def test_what_lies_off_the_persons_depth_leaves_the_mask_and_the_person_stays(counter_m):
    body, person, mask, depth = _scene(counter_m)
    refined = refine_mask_by_depth(mask, depth, body, tolerance_m=0.25, grow_px=4)
    assert refined[person].all()                                   # every pixel of the person stays
    beyond_rim = mask & ~dilate_mask(person, 4)                    # the counter beyond the grown rim
    assert beyond_rim.sum() > 1000
    assert not refined[beyond_rim].any()
    assert not (refined & ~mask).any()                             # never grows the mask
    # Within the tolerance (a counter 0.15 m behind the hands, as at a kitchen counter) nothing leaves.
    body, _, mask, depth = _scene(PERSON_M + 0.15)
    np.testing.assert_array_equal(refine_mask_by_depth(mask, depth, body, 0.25, 4), mask)


def test_unknown_depth_and_no_landmarks_leave_the_mask_as_it_is():
    body, person, mask, depth = _scene(2.6)
    holes = depth.copy()
    holes[mask & ~person] = np.nan                                 # the counter unseen by the depth sensor
    holes[::7, ::5] = 0.0
    np.testing.assert_array_equal(refine_mask_by_depth(mask, holes, body, 0.25, 4), mask)
    assert refine_mask_by_depth(mask, depth, None, 0.25, 4) is mask
    assert refine_mask_by_depth(mask, depth, body, 0.0, 4) is mask
    with pytest.raises(ValueError, match="differ in size"):
        refine_mask_by_depth(mask, depth[:-1], body, 0.25, 4)
    # A landmark far off the image (a model's guess) costs no more than the image's size; a broken one (NaN)
    # leaves the mask alone.
    far_off, broken = body.uv_px.copy(), body.uv_px.copy()
    far_off[27], broken[27] = [1e9, 1e9], [np.nan, np.nan]
    refined = refine_mask_by_depth(mask, depth, BodyLandmarks(far_off, body.visibility), 0.25, 4)
    assert refined[person].mean() > 0.99 and not refined[mask & ~dilate_mask(person, 4)].any()
    assert refine_mask_by_depth(mask, depth, BodyLandmarks(broken, body.visibility), 0.25, 4) is mask


def test_the_tolerance_grows_with_the_distance():
    """5 % of the distance on top of tolerance_m: at 2 m a counter 0.3 m behind stays with 0.25 m (0.35 m
    allowed), at 8 m everything scaled 4x (1.2 m behind, 0.65 m allowed) leaves."""
    body, person, mask, depth = _scene(PERSON_M + 0.3)
    assert refine_mask_by_depth(mask, depth, body, 0.25, 4)[mask].all()
    far = refine_mask_by_depth(mask, depth * 4, body, 0.25, 4)
    assert far[person].all() and not far[mask & ~dilate_mask(person, 4)].any()


def test_refine_observation_follows_person_depth_tolerance():
    body, person, mask, depth = _scene(2.6)
    observation = PersonObservation(mask=mask, head=None, body=body)
    assert refine_observation(observation, depth, PersonConfig()) is observation        # off by default
    assert refine_observation(observation, None, PersonConfig(depth_tolerance_m=0.25)) is observation
    refined = refine_observation(observation, depth, PersonConfig(depth_tolerance_m=0.25, dilate_px=4))
    assert refined.body is body and refined.mask[person].all()
    assert refined.mask.sum() < mask.sum() and observation.mask is mask


class _Collect:
    """EngineEvents that keep the detector's masks (as published on ~/person_mask) and the clips."""

    def __init__(self):
        self.published, self.clips = {}, []

    def person_mask(self, stamp_ns, mask, frame_id):
        self.published[stamp_ns] = mask

    def clip(self, output, latency_s):
        self.clips.append(output)

    def __getattr__(self, name):                  # every other event: not needed here
        return lambda *args, **kwargs: None


def _engine_frame_mask(frame, camera, tolerance_m: float) -> tuple[np.ndarray, np.ndarray]:
    """(the detector's mask, the mask the engine's frame carries into the prior) for one real TUM frame through
    an engine with the MediaPipe detector and the frame's Kinect depth."""
    from conftest import wait_until
    from egox_ros.core.geometry.transforms import RigidTransform
    from egox_ros.core.runtime.engine import EgoEngine
    from egox_ros.ros.config import parameter_sections
    from egox_ros.ros.params import configs_from_parameters
    configs, warnings = configs_from_parameters(
        {"person.source": "mediapipe", "person.depth_tolerance_m": tolerance_m, "prior.splat": "hard",
         "ego_camera.width": 32, "ego_camera.height": 32, "ego_camera.fx": 16.0, "ego_camera.fy": 16.0,
         "ego_camera.cx": 15.5, "ego_camera.cy": 15.5}, parameter_sections())
    assert warnings == []
    events = _Collect()
    engine = EgoEngine({k: configs[k] for k in configs if k not in ("qos", "diagnostics")}, events)
    try:
        h, w = frame.depth_m.shape
        engine.set_camera_info(camera, h, w)
        ns = 100_000_000_000
        identity = RigidTransform(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))
        engine.add_transforms([("world", "exo_optical", ns, identity, None), ("world", "head", ns, identity, None)])
        engine.add_depth(ns, frame.depth_m)
        engine.add_image(ns, frame.rgb, "exo_optical")
        wait_until(lambda: ns in events.published and engine.waiting() == 0, 60, "the detector's mask")
        engine.flush()
        engine.generate_ready()
        assert len(events.clips) == 1
        return events.published[ns], events.clips[0].request.frames[0].person_mask
    finally:
        engine.close()


def test_the_engine_keeps_the_frames_mask_to_the_persons_depth():
    """The engine's hook: with person.depth_tolerance_m the mask that keeps the seated person out of the prior
    (TUM fr1_rpy frame 55, real Kinect depth) is the detector's less what the depth shows is not him (about 9 %
    here: edges reading the wall behind); at 0 (the default) it is the detector's mask itself."""
    from conftest import require_tum
    tum = require_tum()
    seq = tum.TumSequence("fr1_rpy_60")
    frame = seq[55]
    detected, used = _engine_frame_mask(frame, seq.camera, 0.25)
    assert detected.sum() > 5000 and not (used & ~detected).any()
    assert 0.8 * detected.sum() <= used.sum() <= 0.97 * detected.sum()
    detected, used = _engine_frame_mask(frame, seq.camera, 0.0)
    np.testing.assert_array_equal(used, detected)
