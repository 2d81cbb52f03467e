"""Head pose of the demonstrator from exo-image keypoints: PnP on the metric head model (with and without
distortion, with and without pixel noise), depth lifting (person mask, missing depth), rotation-only PnP, the
confidence / visibility checks, and the world-frame tracker (constant-velocity filter, hold, moving exo camera)."""

import dataclasses

import numpy as np
import pytest
import torch

from egox_ros.core.demonstrator.head_geometry import (HEAD_MODEL_M, HeadMeasurement, HeadPoseConfig, forward_angle_deg,
                                                      head_model_m, measure_head, position_error_m, rotation_angle_deg,
                                                      solve_pnp)
from egox_ros.core.demonstrator.head_tracker import ConstantVelocityFilter, HeadTracker
from egox_ros.core.demonstrator.landmarks import HEAD_KEYPOINTS, KEYPOINT_INDEX, HeadLandmarks
from egox_ros.core.geometry.cameras import PinholeCamera

CAM = PinholeCamera(width=640, height=480, fx=525.0, fy=525.0, cx=319.5, cy=239.5)
# TUM RGB-D fr1-like plumb_bob distortion (k1 k2 p1 p2 k3).
CAM_DIST = PinholeCamera(width=640, height=480, fx=525.0, fy=525.0, cx=319.5, cy=239.5,
                         distortion=(0.26, -0.95, -0.005, 0.0026, 1.16))


def _rot_x(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[1.0, 0, 0], [0, c, -s], [0, s, c]])


def _rot_y(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, 0, s], [0, 1.0, 0], [-s, 0, c]])


def _rot_z(a):
    c, s = np.cos(a), np.sin(a)
    return np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]])


def _pose(r, t):
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = t
    return m


def _face_pose(position_m, yaw_deg=0.0, pitch_deg=0.0):
    """exo_T_head of a head at position_m looking at the camera, then turned by yaw (about its y) and pitch."""
    p = np.asarray(position_m, float)
    z = -p / np.linalg.norm(p)
    y = np.array([0.0, 1.0, 0.0]) - z * z[1]
    y /= np.linalg.norm(y)
    x = np.cross(y, z)
    r = np.stack([x, y, z], axis=1) @ _rot_y(np.radians(yaw_deg)) @ _rot_x(np.radians(pitch_deg))
    return _pose(r, p)


def _project(cam, exo_T_head, model=HEAD_MODEL_M):
    pts = model @ exo_T_head[:3, :3].T + exo_T_head[:3, 3]
    uv, valid = cam.project(torch.from_numpy(pts))
    assert valid.all()
    return uv.double().numpy()


def _landmarks(cam, exo_T_head, weight=None, source="face_mesh", noise_px=0.0, rng=None):
    uv = _project(cam, exo_T_head)
    if noise_px:
        uv = uv + rng.normal(0.0, noise_px, uv.shape)
    w = np.ones(len(HEAD_KEYPOINTS)) if weight is None else np.asarray(weight, float)
    return HeadLandmarks(uv_px=uv, weight=w, source=source)


POSES = [((0.2, -0.1, 1.0), -60, 0), ((-0.3, 0.1, 1.5), 30, 20), ((0.0, 0.0, 2.0), 0, -20),
         ((0.4, 0.2, 2.5), 60, 10), ((-0.2, -0.2, 1.2), -30, -20), ((0.1, 0.0, 2.2), 45, 20)]


# ------------------------------------------------------------------------------------------------ head model

def test_head_model_conventions():
    m = HEAD_MODEL_M
    assert m.shape == (len(HEAD_KEYPOINTS), 3)
    # Eye centres: origin midway, x toward the demonstrator's right, 63 mm apart.
    np.testing.assert_allclose(m[KEYPOINT_INDEX["left_eye"]], [-0.0315, 0, 0])
    np.testing.assert_allclose(m[KEYPOINT_INDEX["right_eye"]], [0.0315, 0, 0])
    assert m[KEYPOINT_INDEX["nose"], 1] > 0 and m[KEYPOINT_INDEX["nose"], 2] > 0      # below and in front
    assert m[KEYPOINT_INDEX["left_ear"], 2] < -0.05                                     # ears behind the eyes
    np.testing.assert_allclose(head_model_m(0.8), 0.8 * m)
    # Facing the camera, the demonstrator's left eye appears on the image's right.
    lm = _landmarks(CAM, _face_pose((0, 0, 1.5)))
    assert lm.get("left_eye")[0][0] > lm.get("right_eye")[0][0]


def test_config_validates_ranges():
    cfg = HeadPoseConfig()
    assert cfg.min_confidence == 0.3 and cfg.hold_s == 1.0 and cfg.depth_patch_px == 3
    assert cfg.max_depth_jump_m == 0.15 and cfg.head_scale == 1.0
    for f in dataclasses.fields(HeadPoseConfig):
        assert f.metadata["help"] and (f.metadata["range"] or f.metadata["choices"])
    with pytest.raises(ValueError, match="min_confidence"):
        HeadPoseConfig(min_confidence=1.5)


# ------------------------------------------------------------------------------------------------ PnP

@pytest.mark.parametrize("cam", [CAM, CAM_DIST], ids=["pinhole", "plumb_bob"])
def test_pnp_noise_free_recovers_pose(cam):
    for pos, yaw, pitch in POSES:
        truth = _face_pose(pos, yaw, pitch)
        est, rms = solve_pnp(HEAD_MODEL_M, _project(cam, truth), np.ones(11), cam)
        assert position_error_m(est, truth) < 1e-3, (pos, yaw, pitch)
        assert rotation_angle_deg(est, truth) < 0.1, (pos, yaw, pitch)
        assert rms < 0.01


def test_pnp_ignores_distortion_would_fail():
    """The distortion matters: solving the distorted pixels with the undistorted model is clearly wrong."""
    truth = _face_pose((0.4, 0.2, 1.2), 30, 0)
    est, rms = solve_pnp(HEAD_MODEL_M, _project(CAM_DIST, truth), np.ones(11), CAM)
    assert position_error_m(est, truth) > 5e-3 or rotation_angle_deg(est, truth) > 1.0


@pytest.mark.parametrize("cam", [CAM, CAM_DIST], ids=["pinhole", "plumb_bob"])
def test_pnp_with_one_pixel_noise(cam):
    # Tolerances (measured over seeds 0-4: worst 5.6 % and 5.2 deg, medians <= 2.9 % and 2.5 deg): at 1-2.5 m the eyes
    # are only 13-33 px apart, so 1 px of noise moves the PnP distance by several centimetres.
    rng = np.random.default_rng(1)
    rel_errors, angles = [], []
    for pos, yaw, pitch in POSES:
        truth = _face_pose(pos, yaw, pitch)
        uv = _project(cam, truth) + rng.normal(0.0, 1.0, (11, 2))
        est, rms = solve_pnp(HEAD_MODEL_M, uv, np.ones(11), cam)
        rel_errors.append(position_error_m(est, truth) / pos[2])
        angles.append(forward_angle_deg(est, truth))
        assert 0.2 < rms < 2.0
    assert max(rel_errors) < 0.10          # position within 10 % of the distance
    assert np.median(rel_errors) < 0.05
    assert max(angles) < 10.0              # gaze direction within 10 degrees
    assert np.median(angles) < 5.0


def test_pnp_fixed_position_solves_rotation_only():
    truth = _face_pose((0.1, -0.05, 1.8), -40, 15)
    uv = _project(CAM_DIST, truth)
    est, rms = solve_pnp(HEAD_MODEL_M, uv, np.ones(11), CAM_DIST, fixed_position_m=truth[:3, 3])
    np.testing.assert_array_equal(est[:3, 3], truth[:3, 3])
    assert rotation_angle_deg(est, truth) < 0.1 and rms < 0.01
    # With a wrong fixed position, the position stays where it was put (only the rotation moves).
    wrong = truth[:3, 3] + [0.0, 0.0, 0.2]
    est, rms = solve_pnp(HEAD_MODEL_M, uv, np.ones(11), CAM_DIST, fixed_position_m=wrong)
    np.testing.assert_array_equal(est[:3, 3], wrong)
    assert rms > 1.0
    # Three points suffice with a fixed position; four without.
    w3 = np.zeros(11)
    w3[[KEYPOINT_INDEX["nose"], KEYPOINT_INDEX["left_eye"], KEYPOINT_INDEX["right_eye"]]] = 1.0
    est, _ = solve_pnp(HEAD_MODEL_M, uv, w3, CAM_DIST, fixed_position_m=truth[:3, 3])
    assert rotation_angle_deg(est, truth) < 0.5
    with pytest.raises(ValueError, match="at least 4"):
        solve_pnp(HEAD_MODEL_M, uv, w3, CAM_DIST)


def test_pnp_weights_discount_outliers():
    truth = _face_pose((0.0, 0.0, 1.5), 20, 0)
    uv = _project(CAM, truth)
    uv[KEYPOINT_INDEX["left_ear"]] += [40.0, -30.0]      # a wrong keypoint
    w = np.ones(11)
    bad, _ = solve_pnp(HEAD_MODEL_M, uv, w, CAM)
    w[KEYPOINT_INDEX["left_ear"]] = 0.0
    good, _ = solve_pnp(HEAD_MODEL_M, uv, w, CAM)
    assert position_error_m(good, truth) < 1e-3 and rotation_angle_deg(good, truth) < 0.1
    assert rotation_angle_deg(bad, truth) > 1.0


# ------------------------------------------------------------------------------------------------ measure_head

def _plane_depth(cam, exo_T_head):
    """(H, W) float32 depth [m] of the plane through the head's eye line containing its x and y axes (the plane
    of the face), so the eye pixels read the eye centres' exact z."""
    n = exo_T_head[:3, 2]                       # plane normal = head z axis, through the head origin
    d = n @ exo_T_head[:3, 3]
    rays = cam.ray_grid().double().numpy()      # (H, W, 3), unit z
    depth = d / (rays @ n)                      # z of the ray's intersection with the plane
    return depth.astype(np.float32)


def _face_depth(cam, exo_T_head, radius_px=3):
    """The face plane of _plane_depth with a (2r+1)^2 patch of each keypoint's true z painted around its pixel
    (as a depth sensor sees the nose tip in front of the eyes and the eye corners behind)."""
    depth = _plane_depth(cam, exo_T_head)
    pts = HEAD_MODEL_M @ exo_T_head[:3, :3].T + exo_T_head[:3, 3]
    for (u, v), z in zip(np.round(_project(cam, exo_T_head)).astype(int), pts[:, 2]):
        depth[v - radius_px:v + radius_px + 1, u - radius_px:u + radius_px + 1] = z
    return depth


def test_measure_head_from_depth_is_exact():
    truth = _face_pose((0.3, -0.1, 1.6), 35, -10)
    lm = _landmarks(CAM_DIST, truth)
    depth = _plane_depth(CAM_DIST, truth)
    m = measure_head(lm, CAM_DIST, depth_m=depth)
    assert m.position_source == "depth" and m.orientation_source == "face"
    assert position_error_m(m.exo_T_head, truth) < 1e-3
    assert rotation_angle_deg(m.exo_T_head, truth) < 0.1
    assert m.confidence > 0.95
    # A wrongly scaled head model (a child's head, say) biases PnP's distance but not the depth position.
    cfg = HeadPoseConfig(head_scale=0.85)
    assert position_error_m(measure_head(lm, CAM_DIST, depth, cfg).exo_T_head, truth) < 1e-3
    assert position_error_m(measure_head(lm, CAM_DIST, None, cfg).exo_T_head, truth) > 0.1


def test_measure_head_depth_with_person_mask_and_outliers():
    truth = _face_pose((-0.1, 0.05, 1.4), -20, 5)
    lm = _landmarks(CAM, truth)
    depth = _face_depth(CAM, truth, radius_px=1)
    true_depth = depth.copy()
    u, v = np.round(lm.get("left_eye")[0]).astype(int)
    # The background (3 m) covers most of the patch around the left eye, except the eye pixel row itself.
    depth[v - 5:v + 6, u - 5:u + 6] = 3.0
    mask = np.zeros(depth.shape, bool)
    mask[:, :] = True
    mask[v - 5:v + 6, u - 5:u + 6] = False
    mask[v, u - 1:u + 2] = True
    depth[v, u - 1:u + 2] = true_depth[v, u - 1:u + 2]
    cfg = HeadPoseConfig(depth_patch_px=1)
    unmasked = measure_head(lm, CAM, depth_m=depth, config=cfg)
    assert unmasked.position_source == "depth"
    assert position_error_m(unmasked.exo_T_head, truth) < 1e-3   # the 3 m eye depth is an outlier: dropped
    masked = measure_head(lm, CAM, depth_m=depth, config=cfg, person_mask=mask)
    assert masked.position_source == "depth"
    assert position_error_m(masked.exo_T_head, truth) < 1e-3
    # Without the outlier gate, the background moves the lifted head away from what its size says: the second
    # line of defence (depth against the head model) rejects that depth and keeps the PnP position.
    loose = measure_head(lm, CAM, depth_m=depth, config=HeadPoseConfig(depth_patch_px=1, max_depth_jump_m=5.0))
    assert loose.depth_rejected and loose.position_source == "pnp"
    # ... and the mask alone saves it too (the gate off): the left eye then reads only its own pixels.
    masked_loose = measure_head(lm, CAM, depth_m=depth, config=HeadPoseConfig(depth_patch_px=1, max_depth_jump_m=5.0),
                                person_mask=mask)
    assert position_error_m(masked_loose.exo_T_head, truth) < 1e-3


def test_measure_head_nan_depth_falls_back_to_pnp():
    truth = _face_pose((0.0, 0.0, 2.0), 10, 0)
    lm = _landmarks(CAM, truth)
    depth = np.full((480, 640), np.nan, np.float32)
    m = measure_head(lm, CAM, depth_m=depth)
    assert m.position_source == "pnp"
    assert position_error_m(m.exo_T_head, truth) < 1e-3
    zeros = measure_head(lm, CAM, depth_m=np.zeros((480, 640), np.float32))
    assert zeros.position_source == "pnp"
    # Sigmas are nominal but ordered: PnP positions are less certain than depth ones, and grow with distance.
    with_depth = measure_head(lm, CAM, depth_m=_plane_depth(CAM, truth))
    assert m.position_sigma_m > with_depth.position_sigma_m
    near = measure_head(_landmarks(CAM, _face_pose((0.0, 0.0, 1.0), 10, 0)), CAM)
    assert near.position_sigma_m < m.position_sigma_m and near.rotation_sigma_rad < m.rotation_sigma_rad


def test_measure_head_single_eye_depth_uses_rotation():
    """Only one eye has depth: the origin comes from that eye's lifted point and the model offset."""
    truth = _face_pose((0.2, 0.0, 1.3), -30, 0)
    w = np.ones(11)
    w[KEYPOINT_INDEX["right_eye"]] = 0.4        # too uncertain for depth, still used by PnP
    lm = _landmarks(CAM, truth, weight=w)
    cfg = HeadPoseConfig(depth_patch_px=0)          # one-pixel "patches": each keypoint reads its own true z
    depth = _face_depth(CAM, truth, radius_px=0)
    m = measure_head(lm, CAM, depth_m=depth, config=cfg)
    assert m.position_source == "depth"
    assert position_error_m(m.exo_T_head, truth) < 1e-3
    # With the noisy PnP rotation of 1 px keypoint noise the lever arms (<= 3 cm) keep the error small.
    noisy = _landmarks(CAM, truth, weight=w, noise_px=1.0, rng=np.random.default_rng(3))
    m = measure_head(noisy, CAM, depth_m=depth, config=cfg)
    assert m.position_source == "depth" and position_error_m(m.exo_T_head, truth) < 0.01


def test_measure_head_pose_source_and_confidence():
    truth = _face_pose((0.0, 0.0, 1.5), 0, 0)
    w = np.zeros(11)
    for name in ("nose", "left_eye", "right_eye", "left_ear", "right_ear", "mouth_left", "mouth_right"):
        w[KEYPOINT_INDEX[name]] = 0.9
    m = measure_head(_landmarks(CAM, truth, weight=w, source="pose"), CAM)
    assert m.orientation_source == "pose" and m.position_source == "pnp"
    assert rotation_angle_deg(m.exo_T_head, truth) < 0.1
    face = measure_head(_landmarks(CAM, truth), CAM)
    assert m.rotation_sigma_rad > face.rotation_sigma_rad
    assert 0.85 < m.confidence <= 0.9
    # Inconsistent keypoints (large residual relative to the face size) lower the confidence.
    lm = _landmarks(CAM, truth)
    lm.uv_px[KEYPOINT_INDEX["mouth_left"]] += [25.0, 25.0]
    lm.uv_px[KEYPOINT_INDEX["left_ear"]] += [-25.0, 20.0]
    bad = measure_head(lm, CAM)
    assert bad is not None and bad.confidence < 0.5 * face.confidence


def test_measure_head_returns_none_when_not_measurable():
    truth = _face_pose((0.0, 0.0, 1.5), 0, 0)
    w = np.zeros(11)
    w[[KEYPOINT_INDEX["nose"], KEYPOINT_INDEX["left_eye"], KEYPOINT_INDEX["right_eye"]]] = 1.0
    assert measure_head(_landmarks(CAM, truth, weight=w), CAM) is None              # 3 points: too few
    assert measure_head(_landmarks(CAM, truth, weight=np.zeros(11)), CAM) is None
    # Keypoints that no head model fits (scrambled): None, or a confidence far below min_confidence.
    lm = _landmarks(CAM, truth)
    lm.uv_px[:] = lm.uv_px[np.random.default_rng(5).permutation(11)] * [1.0, 3.0]
    scrambled = measure_head(lm, CAM)
    assert scrambled is None or scrambled.confidence < 0.1


def test_behind_camera_is_rejected():
    truth = _face_pose((0.0, 0.0, 1.5), 0, 0)
    lm = _landmarks(CAM, truth)
    with pytest.raises(ValueError, match="behind"):
        solve_pnp(HEAD_MODEL_M, lm.uv_px, lm.weight, CAM, fixed_position_m=[0.0, 0.0, -1.5])
    # Depth readings of the head with negative depth (a broken sensor) do not place it behind the camera.
    depth = np.full((480, 640), -1.5, np.float32)
    m = measure_head(lm, CAM, depth_m=depth)
    assert m is not None and m.position_source == "pnp" and m.exo_T_head[2, 3] > 0


# ------------------------------------------------------------------------------------------------ tracker

def _measurement(exo_T_head, sigma_m=0.03, confidence=0.9):
    return HeadMeasurement(exo_T_head=exo_T_head, position_source="depth", orientation_source="face", rms_px=0.5,
                           confidence=confidence, position_sigma_m=sigma_m, rotation_sigma_rad=0.05)


def test_constant_velocity_filter_reduces_jitter():
    rng = np.random.default_rng(7)
    cfg = HeadPoseConfig(acceleration_noise_mps2=0.5, position_noise_m=0.03)
    tracker = HeadTracker(cfg)
    world_T_exo = _pose(_rot_z(0.3), [1.0, 2.0, 0.5])
    dt_ns = 33_333_333
    raw_err, filt_err = [], []
    velocity = np.array([0.3, -0.1, 0.05])
    start = np.array([0.5, 1.0, 1.6])
    r_head = _rot_y(0.4)
    for i in range(90):                                  # 3 s at 30 Hz
        t_s = i * dt_ns * 1e-9
        world_T_head = _pose(r_head, start + velocity * t_s)
        noisy = world_T_head.copy()
        noisy[:3, 3] += rng.normal(0.0, 0.03, 3)
        exo_T_head = np.linalg.inv(world_T_exo) @ noisy
        est = tracker.update(i * dt_ns, _measurement(exo_T_head), world_T_exo)
        assert est.state == "measured" and est.covariance.shape == (6, 6)
        if i >= 15:                                      # after 0.5 s of convergence
            raw_err.append(noisy[:3, 3] - world_T_head[:3, 3])
            filt_err.append(est.world_T_head[:3, 3] - world_T_head[:3, 3])
    raw_err, filt_err = np.array(raw_err), np.array(filt_err)
    raw_std, filt_std = raw_err.std(axis=0).mean(), filt_err.std(axis=0).mean()
    assert filt_std < 0.5 * raw_std, (filt_std, raw_std)       # measured: 0.0116 vs 0.0275 m
    assert np.linalg.norm(filt_err, axis=1).mean() <= np.linalg.norm(raw_err, axis=1).mean()
    # No lag on a constant-velocity path: the mean error is small.
    assert np.abs(filt_err.mean(axis=0)).max() < 0.01
    # Orientation: exact measurements keep it exact; the reported covariance is positive.
    assert rotation_angle_deg(est.world_T_head, _pose(r_head, np.zeros(3))) < 1e-6
    assert np.all(np.diag(est.covariance) > 0)


def test_hold_then_drop_and_stamp_order():
    cfg = HeadPoseConfig(hold_s=0.5)
    tracker = HeadTracker(cfg)
    world_T_exo = np.eye(4)
    dt_ns = 100_000_000
    assert tracker.update(0, None, world_T_exo) is None                      # nothing seen yet
    for i in range(1, 6):
        last = tracker.update(i * dt_ns, _measurement(_face_pose((0.1 * i, 0, 1.5))), world_T_exo)
    held_confidences = []
    for i in range(6, 11):                                                    # 0.1 .. 0.5 s after: held
        est = tracker.update(i * dt_ns, None, world_T_exo)
        assert est is not None and est.state == "held"
        np.testing.assert_array_equal(est.world_T_head, last.world_T_head)    # no extrapolation
        assert est.age_s == pytest.approx((i - 5) * 0.1)
        held_confidences.append(est.confidence)
        assert est.covariance[0, 0] > last.covariance[0, 0]
    assert held_confidences == sorted(held_confidences, reverse=True)
    assert held_confidences[0] == pytest.approx(0.9 * 0.8) and held_confidences[-1] == pytest.approx(0.0)
    assert tracker.update(11 * dt_ns, None, world_T_exo) is None             # 0.6 s > hold_s: dropped
    # A low-confidence measurement counts as not seen.
    assert tracker.update(12 * dt_ns, _measurement(_face_pose((0, 0, 1.5)), confidence=0.1), world_T_exo) is None
    with pytest.raises(ValueError, match="increase"):
        tracker.update(12 * dt_ns, None, world_T_exo)
    with pytest.raises(ValueError, match="increase"):
        tracker.update(5 * dt_ns, None, world_T_exo)
    # After a drop, the next measurement starts a fresh track at the measured pose (no stale velocity).
    fresh_truth = _face_pose((-0.5, 0.2, 2.0), 20, 0)
    est = tracker.update(13 * dt_ns, _measurement(fresh_truth), world_T_exo)
    assert est.state == "measured" and position_error_m(est.world_T_head, fresh_truth) < 1e-9
    tracker.reset()
    assert tracker.update(0, _measurement(fresh_truth), world_T_exo).state == "measured"


def test_moving_exo_camera_gives_the_same_world_head_pose():
    world_T_head = _pose(_rot_z(0.2) @ _rot_y(-0.5), [2.0, -1.0, 1.7])
    tracker = HeadTracker(HeadPoseConfig())
    for i in range(30):
        # The exo camera circles around and turns; the head stands still in the world.
        world_T_exo = _pose(_rot_z(0.05 * i) @ _rot_x(-1.2), [0.1 * i, 0.02 * i * i, 1.0 + 0.01 * i])
        exo_T_head = np.linalg.inv(world_T_exo) @ world_T_head
        est = tracker.update(i * 33_000_000, _measurement(exo_T_head), world_T_exo)
        assert position_error_m(est.world_T_head, world_T_head) < 1e-9
        assert rotation_angle_deg(est.world_T_head, world_T_head) < 1e-5


def test_orientation_smoothing_time_constant():
    cfg = HeadPoseConfig(rotation_time_constant_s=0.15)
    tracker = HeadTracker(cfg)
    tracker.update(0, _measurement(_pose(np.eye(3), [0, 0, 1.5]), confidence=1.0), np.eye(4))
    turned = _pose(_rot_y(np.radians(30)), [0, 0, 1.5])
    est = tracker.update(150_000_000, _measurement(turned, confidence=1.0), np.eye(4))
    # After one time constant the filtered yaw has moved 1 - 1/e of the way (slerp is linear in angle).
    assert forward_angle_deg(est.world_T_head, _pose(np.eye(3), [0, 0, 0])) == pytest.approx(
        30 * (1 - np.exp(-1)), abs=1e-6)
    # Lower confidence moves it less.
    low = HeadTracker(cfg)
    low.update(0, _measurement(_pose(np.eye(3), [0, 0, 1.5]), confidence=1.0), np.eye(4))
    est_low = low.update(150_000_000, _measurement(turned, confidence=0.5), np.eye(4))
    assert forward_angle_deg(est_low.world_T_head, np.eye(4)) < forward_angle_deg(est.world_T_head, np.eye(4))


def test_constant_velocity_filter_direct():
    f = ConstantVelocityFilter(acceleration_noise_mps2=0.1)
    f.update(0, [0.0, 0.0, 0.0], 0.01)
    for i in range(1, 40):
        f.update(i * 100_000_000, [0.1 * i, 0.0, -0.05 * i], 0.01)         # 1 m/s and -0.5 m/s, exact
    np.testing.assert_allclose(f.velocity_mps, [1.0, 0.0, -0.5], atol=0.02)
    np.testing.assert_allclose(f.position_m, [3.9, 0.0, -1.95], atol=0.005)
    with pytest.raises(ValueError):
        f.update(39 * 100_000_000, [0, 0, 0], 0.01)
    f.reset()
    assert not f.initialised
    np.testing.assert_array_equal(f.update(5, [1.0, 2.0, 3.0], 0.01), [1.0, 2.0, 3.0])


def test_depth_that_disagrees_with_the_head_size_falls_back_to_pnp():
    """Garbage depth at the face (a bad depth model, a depth edge behind the head) must not move the head: the
    measurement keeps the PnP position and says the depth was rejected."""
    truth = _face_pose([0.1, -0.05, 1.8], yaw_deg=20.0, pitch_deg=-10.0)
    lm = _landmarks(CAM, truth)
    wrong = np.full((CAM.height, CAM.width), 5.0, np.float32)       # 5 m where the face is at 1.8 m
    m = measure_head(lm, CAM, wrong)
    assert m.position_source == "pnp" and m.depth_rejected
    assert position_error_m(m.exo_T_head, truth) < 1e-3
    right = np.full((CAM.height, CAM.width), float(truth[2, 3]), np.float32)
    m = measure_head(lm, CAM, right)
    assert m.position_source == "depth" and not m.depth_rejected
