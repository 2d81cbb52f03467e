"""Head pose of the demonstrator from head keypoints in the exo image (pure numpy; torch only at the camera model).

Frames and conventions
----------------------
* Head frame: origin at the midpoint between the two eye centres; OpenCV optical axes: x toward the demonstrator's
  own RIGHT (from their left eye to their right eye), y down (toward the chin), z forward (out of the face, the
  gaze direction). A camera "mounted at the eyes" is the identity from this frame.
* Exo camera frame: OpenCV optical (x right, y down, z forward) [m].
* Poses are (4, 4) float64 matrices ``a_T_b`` mapping points in frame b to frame a (``p_a = R p_b + t``).
* Pixels (u right, v down) in the exo image as it arrived, float64. Distortion is handled by the camera model
  (``CameraModel.project`` / ``unproject_rays``, which compute in float32); everything else is float64 numpy.

The pipeline: :func:`measure_head` turns one :class:`~egox_ros.core.demonstrator.landmarks.HeadLandmarks` (plus the
optional exo depth image) into a :class:`HeadMeasurement` in the exo camera frame; ``head_tracker.HeadTracker``
moves it to the world and filters it over time.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from egox_ros.core.config import param, validate
from egox_ros.core.demonstrator.landmarks import HEAD_KEYPOINTS, KEYPOINT_INDEX, HeadLandmarks
from egox_ros.core.geometry.cameras import CameraModel


@dataclass
class HeadPoseConfig:
    """Automatic head pose of the demonstrator from the exo camera (ROS parameters ``head.<field>``)."""
    min_confidence: float = param(0.3, "head measurements below this confidence are not used (the last pose is "
                                       "held instead) [0-1]", (0.0, 1.0))
    hold_s: float = param(1.0, "how long the last head pose is held while the head is not seen; beyond it the "
                               "frame is dropped as head_not_visible [s]", (0.0, 60.0))
    depth_patch_px: int = param(3, "radius of the patch around each eye / nose keypoint whose median valid depth "
                                   "is used (patch side 2r+1) [px]", (0, 50))
    max_depth_jump_m: float = param(0.15, "keypoint depths farther than this from the median of the face "
                                          "keypoints' depths are ignored [m]", (0.001, 10.0))
    position_noise_m: float = param(0.02, "smallest measurement noise (1 sigma) of the head position filter; a "
                                          "measurement's own nominal sigma is used when larger [m]", (1e-4, 10.0))
    acceleration_noise_mps2: float = param(1.0, "process noise of the constant-velocity position filter: "
                                                "white acceleration, 1 sigma [m/s^2]", (1e-4, 1000.0))
    rotation_time_constant_s: float = param(0.15, "time constant of the orientation smoothing (0 = none) [s]",
                                            (0.0, 60.0))
    head_scale: float = param(1.0, "scale of the metric head model (average adult = 1; about 0.85 for a child)",
                              (0.3, 3.0))
    depth_sigma_per_m: float = param(0.05, "relative error of the exo depth per metre of distance (1 sigma), "
                                           "weighed with depth_sigma_relative against the body's size (10 % "
                                           "between people) for the head's distance: 0.05 for depth models, "
                                           "about 0.01 a depth sensor [1/m]", (0.0, 1.0))
    depth_sigma_relative: float = param(0.2, "relative error of the exo depth at any distance (1 sigma; added in "
                                             "quadrature to depth_sigma_per_m's): a depth model's scale error "
                                             "(the released Ego-Exo4D depth at the head: 0.73-1.25 of the true "
                                             "distance, RMS 23 % in log, on the three development clips), 0 for "
                                             "a depth sensor [0-1]", (0.0, 1.0))
    min_pitch_down_deg: float = param(35.0, "the head's gaze, estimated from the whole body, is pitched at least "
                                            "this far below the horizon: people who demonstrate look down at "
                                            "their hands (Ego-Exo4D wearers 30-45 degrees; 0 = the face's own "
                                            "pitch; the world is z up, REP 103) [deg]", (-90.0, 90.0))

    def __post_init__(self) -> None:
        validate(self)


# Metric head model: position of each HEAD_KEYPOINTS entry in the head frame [m], for an average adult.
# An APPROXIMATION from rounded anthropometric averages (interpupillary distance 63 mm; inner / outer canthi at
# about 32 / 90 mm apart; nose tip about 45 mm below and 20 mm in front of the eye line; mouth corners about 50 mm
# apart, 75 mm below; ears at the tragion, about 144 mm apart, 85 mm behind the eye line). Individual faces differ
# by several millimetres (and the scale by ~5 %), which bounds the metric accuracy of PnP without depth.
# x is the demonstrator's RIGHT, so every "left_*" point has negative x.
_HEAD_MODEL_M = {
    "nose": (0.0, 0.045, 0.020),
    "left_eye": (-0.0315, 0.0, 0.0),
    "right_eye": (0.0315, 0.0, 0.0),
    "left_eye_inner": (-0.016, 0.0, -0.005),
    "left_eye_outer": (-0.045, 0.0, -0.012),
    "right_eye_inner": (0.016, 0.0, -0.005),
    "right_eye_outer": (0.045, 0.0, -0.012),
    "left_ear": (-0.072, 0.015, -0.085),
    "right_ear": (0.072, 0.015, -0.085),
    "mouth_left": (-0.025, 0.075, -0.005),
    "mouth_right": (0.025, 0.075, -0.005),
}
HEAD_MODEL_M: np.ndarray = np.array([_HEAD_MODEL_M[name] for name in HEAD_KEYPOINTS], dtype=np.float64)
HEAD_MODEL_M.setflags(write=False)
"""(K, 3) float64 [m], head frame, rows in HEAD_KEYPOINTS order (see the comment above: an approximation)."""

INTERPUPILLARY_M = 0.063
# Keypoints whose depth can position the head (on the face's front, near the eyes).
_DEPTH_KEYPOINTS = ("left_eye", "right_eye", "nose", "left_eye_inner", "left_eye_outer", "right_eye_inner",
                    "right_eye_outer")
_KEY_FACE_POINTS = ("nose", "left_eye", "right_eye")
_INITIAL_YAWS_RAD = (0.0, np.deg2rad(60.0), -np.deg2rad(60.0))


LANDMARK_NOISE_PX = 3.0   # residual a good fit of a small face leaves (landmark noise + model mismatch) [px]
DEPTH_VS_MODEL_RATIO = 1.6   # depth at the face is used when within this factor of the head model's distance


def head_model_m(head_scale: float = 1.0) -> np.ndarray:
    """The metric head model scaled by ``head_scale``: (K, 3) float64 [m], head frame, HEAD_KEYPOINTS order."""
    return HEAD_MODEL_M * float(head_scale)


@dataclass
class HeadMeasurement:
    """One head pose measurement from one exo image.

    exo_T_head: (4, 4) float64, head frame -> exo camera frame [m].
    position_source: 'depth' (head origin lifted from the exo depth image), 'pnp' (from the head model's size) or
        'body' (from the whole body's size; estimate.py).
    orientation_source: 'face' (dense face landmarks, or a face seen) or 'pose' (body-pose landmarks only).
    rms_px: weighted RMS reprojection error of the head model [px].
    confidence: in [0, 1], from the key keypoints' weights and the residual relative to the face size.
    position_sigma_m / rotation_sigma_rad: NOMINAL 1-sigma errors (a model of typical errors, not an estimate from
        this image): they grow with distance and are larger for 'pnp' positions and 'pose' orientations.
    depth_rejected: the depth at the face disagreed with the head's apparent size (see measure_head); the position
        is then the PnP one.
    """
    exo_T_head: np.ndarray
    position_source: str
    orientation_source: str
    rms_px: float
    confidence: float
    position_sigma_m: float
    rotation_sigma_rad: float
    depth_rejected: bool = False


# ---------------------------------------------------------------------------------------------------- rotations

def _skew(w: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -w[2], w[1]], [w[2], 0.0, -w[0]], [-w[1], w[0], 0.0]])


def rotvec_to_matrix(rotvec_rad: np.ndarray) -> np.ndarray:
    """Rotation vector (3,) [rad] -> (3, 3) rotation matrix (Rodrigues), float64."""
    w = np.asarray(rotvec_rad, np.float64)
    theta = float(np.linalg.norm(w))
    k = _skew(w)
    if theta < 1e-12:
        return np.eye(3) + k
    return np.eye(3) + np.sin(theta) / theta * k + (1.0 - np.cos(theta)) / theta**2 * (k @ k)


def _rot_y(angle_rad: float) -> np.ndarray:
    c, s = np.cos(angle_rad), np.sin(angle_rad)
    return np.array([[c, 0.0, s], [0.0, 1.0, 0.0], [-s, 0.0, c]])


def _orthonormalise(r: np.ndarray) -> np.ndarray:
    u, _, vt = np.linalg.svd(r)
    m = u @ vt
    if np.linalg.det(m) < 0:
        u[:, -1] *= -1
        m = u @ vt
    return m


def _pose(r: np.ndarray, t: np.ndarray) -> np.ndarray:
    m = np.eye(4)
    m[:3, :3] = r
    m[:3, 3] = t
    return m


# ---------------------------------------------------------------------------------------------------- PnP

def _unproject_rays(camera: CameraModel, uv_px: np.ndarray) -> np.ndarray:
    """(N, 2) pixels -> (N, 3) float64 unit-z rays (NaN where undefined)."""
    return camera.unproject_rays(torch.from_numpy(np.ascontiguousarray(uv_px, np.float64))).double().numpy()


def _initial_poses(model: np.ndarray, rays: np.ndarray, fixed_position_m: np.ndarray | None) -> list[np.ndarray]:
    """Initial exo_T_head guesses: the face looking at the camera, at the distance its apparent size implies, then
    turned by a few yaw angles about the head's own y axis."""
    if fixed_position_m is not None:
        centre = np.asarray(fixed_position_m, np.float64)
        distance = centre[2]
    else:
        c_ray = rays.mean(axis=0)
        spread_ray = np.sqrt(((rays[:, :2] - rays[:, :2].mean(axis=0)) ** 2).sum(axis=1).mean())
        spread_model = np.sqrt(((model[:, :2] - model[:, :2].mean(axis=0)) ** 2).sum(axis=1).mean())
        distance = spread_model / max(spread_ray, 1e-9)
        centre = c_ray * distance
    z_axis = -centre / max(np.linalg.norm(centre), 1e-12)       # head z points back at the camera
    y_axis = np.array([0.0, 1.0, 0.0]) - z_axis * z_axis[1]     # head y as close to the camera's "down" as possible
    if np.linalg.norm(y_axis) < 1e-6:
        y_axis = np.array([1.0, 0.0, 0.0]) - z_axis * z_axis[0]
    y_axis /= np.linalg.norm(y_axis)
    x_axis = np.cross(y_axis, z_axis)
    r0 = np.stack([x_axis, y_axis, z_axis], axis=1)
    poses = []
    for yaw in _INITIAL_YAWS_RAD:
        r = r0 @ _rot_y(yaw)
        if fixed_position_m is not None:
            t = centre
        else:
            t = centre - r @ model.mean(axis=0)                 # model centroid on the rays' centroid
        poses.append(_pose(r, t))
    return poses


def _refine(model: np.ndarray, xy_obs: np.ndarray, scale_px: np.ndarray, sqrt_w: np.ndarray, pose: np.ndarray,
            rotation_only: bool, max_iterations: int = 50) -> tuple[np.ndarray, float]:
    """Levenberg-Marquardt on the weighted reprojection error in undistorted normalised coordinates (xy_obs: (N, 2)
    x/z, y/z of the keypoints' rays), scaled to pixels by the focal lengths (scale_px (2,)); analytic Jacobian.
    Returns (exo_T_head, cost = sum w |e|^2 [px^2]); cost inf when a point is not in front of the camera."""

    def residual(r, t):
        p = model @ r.T + t
        if not (p[:, 2] > 1e-6).all():
            return np.inf, None, None
        xy = p[:, :2] / p[:, 2:3]
        e = (xy - xy_obs) * scale_px * sqrt_w[:, None]
        return float((e * e).sum()), e.reshape(-1), p

    def jacobian(p, t):
        """d e / d (rotation vector applied on the left [, translation]): (2N, 3 or 6)."""
        x, y, z = p[:, 0], p[:, 1], p[:, 2]
        d_xy_d_p = np.zeros((len(p), 2, 3))
        d_xy_d_p[:, 0, 0] = d_xy_d_p[:, 1, 1] = 1.0 / z
        d_xy_d_p[:, 0, 2], d_xy_d_p[:, 1, 2] = -x / z**2, -y / z**2
        d_xy_d_p *= (scale_px[None, :, None] * sqrt_w[:, None, None])
        q = p - t                                                   # R X: d p / d theta = -[R X]x
        d_p_d_theta = np.zeros((len(p), 3, 3))
        d_p_d_theta[:, 0, 1], d_p_d_theta[:, 0, 2] = q[:, 2], -q[:, 1]
        d_p_d_theta[:, 1, 0], d_p_d_theta[:, 1, 2] = -q[:, 2], q[:, 0]
        d_p_d_theta[:, 2, 0], d_p_d_theta[:, 2, 1] = q[:, 1], -q[:, 0]
        jac = d_xy_d_p @ d_p_d_theta
        if not rotation_only:
            jac = np.concatenate([jac, d_xy_d_p], axis=2)           # d p / d t = I
        return jac.reshape(2 * len(p), -1)

    r, t = pose[:3, :3].copy(), pose[:3, 3].copy()
    cost, e, p = residual(r, t)
    if not np.isfinite(cost):
        return pose, np.inf
    lam = 1e-3
    for _ in range(max_iterations):
        jac = jacobian(p, t)
        jtj, jte = jac.T @ jac, jac.T @ e
        improved = converged = False
        for _ in range(10):
            try:
                delta = -np.linalg.solve(jtj + lam * np.diag(np.diag(jtj) + 1e-9), jte)
            except np.linalg.LinAlgError:
                lam *= 10.0
                continue
            r2 = _orthonormalise(rotvec_to_matrix(delta[:3]) @ r)
            t2 = t if rotation_only else t + delta[3:]
            cost2, e2, p2 = residual(r2, t2)
            if cost2 < cost:
                converged = cost - cost2 < 1e-12 * max(cost, 1e-30) or np.abs(delta).max() < 1e-10
                r, t, e, p, cost = r2, t2, e2, p2, cost2
                lam = max(lam * 0.3, 1e-9)
                improved = True
                break
            lam *= 10.0
        if not improved or converged:
            break
    return _pose(r, t), cost


def solve_pnp(model_points_m: np.ndarray, uv_px: np.ndarray, weights: np.ndarray, camera: CameraModel,
              initial_exo_T_head: np.ndarray | None = None,
              fixed_position_m: np.ndarray | None = None) -> tuple[np.ndarray, float]:
    """Pose of a rigid point model from its pixels: weighted Levenberg-Marquardt on the reprojection error.

    The keypoints are undistorted once through the camera model (its rays), and the error is measured between
    normalised coordinates scaled by the focal lengths: pixels of the undistorted image (the same as the image's
    own pixels up to the local scale of the lens distortion), with an analytic Jacobian; 1-2 ms per solve.

    model_points_m: (N, 3) float64 model points in the head frame [m].
    uv_px: (N, 2) float64 observed pixels in the exo image (distorted, as the camera sees them).
    weights: (N,) float64 >= 0; points with weight 0 are ignored.
    camera: the exo camera model; its rays undistort the keypoints, so distortion counts.
    initial_exo_T_head: (4, 4) optional starting pose; without it the face is assumed to look at the camera at the
        distance its apparent size implies, and yaws of 0 and +-60 degrees are tried (face PnP with few points has
        local minima); the lowest-cost result wins. A given initial pose is tried as well as these.
    fixed_position_m: (3,) optional head origin in the exo frame [m]: then only the rotation is solved.
    Returns (exo_T_head (4, 4) float64, rms_px: weighted RMS reprojection error [px]).
    Raises ValueError with fewer than 4 points of weight > 0 (3 with a fixed position), or when no solution keeps
    all points in front of the camera.
    """
    model = np.asarray(model_points_m, np.float64)
    uv = np.asarray(uv_px, np.float64)
    w = np.asarray(weights, np.float64)
    if model.ndim != 2 or model.shape[1] != 3 or uv.shape != (len(model), 2) or w.shape != (len(model),):
        raise ValueError(f"solve_pnp needs model (N, 3), uv (N, 2), weights (N,); got {model.shape}, {uv.shape}, "
                         f"{w.shape}")
    use = (w > 0) & np.isfinite(uv).all(axis=1)
    needed = 3 if fixed_position_m is not None else 4
    if int(use.sum()) < needed:
        raise ValueError(f"solve_pnp needs at least {needed} points with weight > 0, got {int(use.sum())}")
    model, uv, w = model[use], uv[use], w[use]
    sqrt_w = np.sqrt(w)
    rays = _unproject_rays(camera, uv)
    if not np.isfinite(rays).all():
        raise ValueError("solve_pnp: some keypoints lie outside the camera model's valid image area")
    fixed = None if fixed_position_m is None else np.asarray(fixed_position_m, np.float64).reshape(3)
    if fixed is not None and fixed[2] <= 0:
        raise ValueError(f"solve_pnp: fixed_position_m {fixed} is behind the camera")
    starts = _initial_poses(model, rays, fixed)
    if initial_exo_T_head is not None:
        init = np.array(initial_exo_T_head, np.float64)
        if fixed is not None:
            init[:3, 3] = fixed
        starts.insert(0, init)
    scale_px = np.array([camera.fx, camera.fy], np.float64)
    best, best_cost = None, np.inf
    for start in starts:
        pose, cost = _refine(model, rays[:, :2], scale_px, sqrt_w, start, rotation_only=fixed is not None)
        if cost < best_cost:
            best, best_cost = pose, cost
    if best is None:
        raise ValueError("solve_pnp: no pose keeps the keypoints in front of the camera")
    rms_px = float(np.sqrt(best_cost / w.sum()))
    return best, rms_px


# ---------------------------------------------------------------------------------------------------- measurement

def _patch_depth_m(depth_m: np.ndarray, uv_px: np.ndarray, radius_px: int, mask: np.ndarray | None) -> float:
    """Median valid (finite, > 0) depth in the (2r+1)^2 patch around a pixel, on the person mask where it has any
    pixel in the patch; NaN when there is none."""
    h, w = depth_m.shape
    u, v = int(round(uv_px[0])), int(round(uv_px[1]))
    u0, u1, v0, v1 = max(u - radius_px, 0), min(u + radius_px + 1, w), max(v - radius_px, 0), min(v + radius_px + 1, h)
    if u0 >= u1 or v0 >= v1:
        return float("nan")
    patch = depth_m[v0:v1, u0:u1]
    valid = np.isfinite(patch) & (patch > 0)
    if mask is not None:
        on_person = valid & mask[v0:v1, u0:u1]
        if on_person.any():
            valid = on_person
    if not valid.any():
        return float("nan")
    return float(np.median(patch[valid]))


def _depth_origin_m(landmarks: HeadLandmarks, camera: CameraModel, depth_m: np.ndarray, config: HeadPoseConfig,
                    person_mask: np.ndarray | None, model: np.ndarray, r_exo_head: np.ndarray) -> np.ndarray | None:
    """Head origin (3,) in the exo frame [m] from the depth image, or None when no usable depth.

    Each eye / nose keypoint with weight > 0.5 gets the median valid depth of its patch; depths farther than
    max_depth_jump_m from the median of these are dropped. The survivors are lifted along their pixel rays (depth =
    z, OpenCV). With both eye centres among them, the origin is the midpoint of the two lifted eyes (the eye-
    midpoint ray lifted to their depth; no rotation needed). Otherwise each survivor votes for
    ``p_k - R m_k`` (its lifted point minus the rotated model offset, R from a free PnP) and the votes are averaged.
    """
    depth = np.asarray(depth_m)
    if depth.ndim != 2:
        raise ValueError(f"depth_m must be (H, W), got {depth.shape}")
    mask = None
    if person_mask is not None:
        mask = np.asarray(person_mask, bool)
        if mask.shape != depth.shape:
            raise ValueError(f"person_mask {mask.shape} and depth_m {depth.shape} differ in size")
    names, depths = [], []
    for name in _DEPTH_KEYPOINTS:
        uv, weight = landmarks.get(name)
        if weight > 0.5:
            d = _patch_depth_m(depth, uv, config.depth_patch_px, mask)
            if np.isfinite(d):
                names.append(name)
                depths.append(d)
    if not depths:
        return None
    depths = np.asarray(depths)
    keep = np.abs(depths - np.median(depths)) <= config.max_depth_jump_m
    names = [n for n, k in zip(names, keep) if k]
    depths = depths[keep]
    idx = np.array([KEYPOINT_INDEX[n] for n in names])
    rays = _unproject_rays(camera, landmarks.uv_px[idx])
    points = rays * depths[:, None]
    ok = np.isfinite(points).all(axis=1)
    if not ok.any():
        return None
    points, idx, names = points[ok], idx[ok], [n for n, o in zip(names, ok) if o]
    if "left_eye" in names and "right_eye" in names:
        return 0.5 * (points[names.index("left_eye")] + points[names.index("right_eye")])
    return (points - model[idx] @ r_exo_head.T).mean(axis=0)


def measure_head(landmarks: HeadLandmarks, camera: CameraModel, depth_m: np.ndarray | None = None,
                 config: HeadPoseConfig | None = None,
                 person_mask: np.ndarray | None = None) -> HeadMeasurement | None:
    """Head pose in the exo camera frame from one image's head keypoints.

    landmarks: the detector's head keypoints (pixels in the exo image as it arrived).
    camera: the exo camera model of that image.
    depth_m: (H, W) float32 exo depth [m] registered to the image (NaN or 0 = no reading), or None.
    config: HeadPoseConfig (default: HeadPoseConfig()).
    person_mask: (H, W) bool, True on the demonstrator: depth patches use only its pixels where the patch has any.
    Position: from depth when it gives one (position_source 'depth'), else from PnP with the metric head model
    ('pnp'). Orientation: PnP over all keypoints with weight > 0 (position fixed when it came from depth).
    Returns None when fewer than 4 keypoints are visible (weight > 0), the solve fails, or the head is not in front
    of the camera.
    """
    config = config or HeadPoseConfig()
    model = head_model_m(config.head_scale)
    w = landmarks.weight
    if int((w > 0).sum()) < 4:
        return None
    try:
        exo_T_head, rms_px = solve_pnp(model, landmarks.uv_px, w, camera)
    except ValueError:
        return None
    position_source, depth_rejected = "pnp", False
    if depth_m is not None:
        origin = _depth_origin_m(landmarks, camera, depth_m, config, person_mask, model, exo_T_head[:3, :3])
        if origin is not None and origin[2] > 0:
            # Depth at the face is believed only where it agrees with the head's apparent size: a distance within
            # DEPTH_VS_MODEL_RATIO of the PnP one (people's heads differ by ~10 %, landmark noise on small faces
            # adds 20-30 %: on the TUM frames the two were 1.1-1.3 apart) and a fit not much worse than the free
            # one. A wrong or garbage depth (a bad model, a depth edge behind the face) falls back to PnP.
            ratio = origin[2] / exo_T_head[2, 3]
            try:
                fixed_T_head, fixed_rms_px = solve_pnp(model, landmarks.uv_px, w, camera,
                                                       initial_exo_T_head=exo_T_head, fixed_position_m=origin)
            except ValueError:
                fixed_T_head = None
            if fixed_T_head is not None and 1 / DEPTH_VS_MODEL_RATIO <= ratio <= DEPTH_VS_MODEL_RATIO \
                    and fixed_rms_px <= rms_px + 2 * LANDMARK_NOISE_PX:
                exo_T_head, rms_px, position_source = fixed_T_head, fixed_rms_px, "depth"
            else:
                depth_rejected = True
    distance_m = float(exo_T_head[2, 3])
    if not np.all(np.isfinite(exo_T_head)) or distance_m <= 0:
        return None
    # Confidence: the key face points' weights times a fit term: the residual relative to what a good fit leaves,
    # 10 % of the apparent eye distance but never under LANDMARK_NOISE_PX (landmark models are not sub-pixel on
    # small faces: on the TUM frames, 15 px between the eyes, good fits left 2-3 px).
    key_weight = float(np.mean([landmarks.get(n)[1] for n in _KEY_FACE_POINTS]))
    face_px = max(camera.fx * INTERPUPILLARY_M * config.head_scale / distance_m, 1.0)
    fit_error = rms_px / max(0.1 * face_px, LANDMARK_NOISE_PX)
    confidence = float(np.clip(key_weight / (1.0 + fit_error**2), 0.0, 1.0))
    orientation_source = "face" if landmarks.source == "face_mesh" else "pose"
    # Nominal sigmas: depth sensors' error grows about quadratically with distance; PnP's metric depth rests on the
    # head model's size (~5-10 % between people) and on pixel noise, so it grows linearly and faster.
    if position_source == "depth":
        position_sigma_m = 0.01 + 0.005 * distance_m**2
    else:
        position_sigma_m = 0.01 + 0.06 * distance_m
    rotation_sigma_rad = (0.05 if orientation_source == "face" else 0.15) * (1.0 + 0.5 * distance_m)
    rotation_sigma_rad *= 1.0 + fit_error
    return HeadMeasurement(exo_T_head=exo_T_head, position_source=position_source,
                           orientation_source=orientation_source, rms_px=rms_px, confidence=confidence,
                           position_sigma_m=float(position_sigma_m), rotation_sigma_rad=float(rotation_sigma_rad),
                           depth_rejected=depth_rejected)


# ---------------------------------------------------------------------------------------------------- evaluation

def forward_angle_deg(a_T_head: np.ndarray, b_T_head: np.ndarray) -> float:
    """Angle between the two poses' head z (gaze) axes [deg]; both poses in the same parent frame, (4, 4)."""
    za = np.asarray(a_T_head, np.float64)[:3, 2]
    zb = np.asarray(b_T_head, np.float64)[:3, 2]
    c = float(np.dot(za, zb) / (np.linalg.norm(za) * np.linalg.norm(zb)))
    return float(np.degrees(np.arccos(np.clip(c, -1.0, 1.0))))


def rotation_angle_deg(a_T_head: np.ndarray, b_T_head: np.ndarray) -> float:
    """Full rotation angle between the two poses' orientations [deg] (gaze and roll); (4, 4) each."""
    r = np.asarray(a_T_head, np.float64)[:3, :3].T @ np.asarray(b_T_head, np.float64)[:3, :3]
    return float(np.degrees(np.arccos(np.clip((np.trace(r) - 1.0) / 2.0, -1.0, 1.0))))


def position_error_m(a_T_head: np.ndarray, b_T_head: np.ndarray) -> float:
    """Distance between the two poses' head origins [m]; both (4, 4) in the same parent frame."""
    return float(np.linalg.norm(np.asarray(a_T_head, np.float64)[:3, 3] - np.asarray(b_T_head, np.float64)[:3, 3]))
