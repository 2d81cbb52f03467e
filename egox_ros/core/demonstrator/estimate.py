"""One exo frame's head measurement from the person detector's observation: the head from the whole body.

What the engine and the benchmarks call (:func:`measure_person_head`). With whole-body landmarks (MediaPipe pose:
pixels, visibilities and the model's metric body shape) it works for any view of the person, face visible or not;
without them (an observation with head keypoints only) it falls back to the face fit of ``head_geometry``.

Position (exo camera frame, OpenCV axes, metres). The model's metric body shape (an average adult) is placed in
the camera by least squares over the visible landmarks' rays (the translation that makes it project onto them):
that alone gives the distance from the body's size ('body'). With a depth image, each visible head landmark's
depth (median of a patch on the person mask) over its z in the placed body gives a scale; their median, weighed
against the body's own size (people differ by ``BODY_SIZE_SIGMA`` = 10 % when the whole body is seen, hips to
ankles; a head and shoulders alone say far less, ``PARTIAL_BODY_SIGMA``; the depth errs by ``head.depth_sigma_relative``
at any distance, a depth model's scale error, and ``head.depth_sigma_per_m`` more per metre), rescales the placed body
about the camera centre (projections unchanged) when it lies within ``DEPTH_VS_MODEL_RATIO`` ('depth'), else
the depth is not believed (``depth_rejected``). A scale below ``MIN_HUMAN_SCALE`` means the "person" is far
smaller than a person (a teddy bear is 0.3 m tall): no measurement, and the engine drops the detection's mask too
(:func:`is_person_sized`). A large scale is not such evidence: it is what a head patch that reads the background
behind the head gives, so there the depth is not believed and the body's size stands. The head origin is the midpoint of the placed
body's eyes, whether the face is visible or not (the body model knows where the eyes are
behind a back view).

Orientation. The head frame is OpenCV-like at the eyes: x to the person's right, y down, z forward (gaze).
Heading (the horizontal part of the gaze): from the body model's nose relative to its ears when the face itself
was seen. When it was not: a head big enough to have shown a face (``_FACE_CHECK_MIN_PX``) is seen from behind,
where the pose model's nose and ears are guesses, and the heading is the normal of the shoulder line, which it
places far more reliably; a head too small to tell averages the two. Pitch: the face's own
pitch, but at least ``head.min_pitch_down_deg`` below the horizon (people who demonstrate look down at their
hands: Ego-Exo4D wearers 30-45 degrees). Roll: level (x horizontal). "Down" is the world's -z (REP 103: z up)
seen from the exo camera when its pose is given, else the camera's own y axis.

Measured on the three Ego-Exo4D development clips (``egox bench demonstrator --egoexo4d``; docs/benchmarks.md).
"""
from __future__ import annotations

import numpy as np

from egox_ros.core.demonstrator.head_geometry import (DEPTH_VS_MODEL_RATIO, HeadMeasurement, HeadPoseConfig,
                                                      _patch_depth_m, _unproject_rays, measure_head)
from egox_ros.core.demonstrator.landmarks import BODY_INDEX, BodyLandmarks, PersonObservation
from egox_ros.core.geometry.cameras import CameraModel

MIN_HUMAN_SCALE = 0.45          # depth / body-model distance below this: not a person (a child is about 0.6)
BODY_SIZE_SIGMA = 0.10          # relative error of the distance from the body's size, the whole body seen (1 sigma)
PARTIAL_BODY_SIGMA = 0.30       # the same from the head and shoulders alone (a seated person behind a table)
_WHOLE_BODY = ("left_hip", "right_hip", "left_ankle", "right_ankle")
_SEEN = 0.5                     # a landmark with visibility above this counts as seen
_FACE_CHECK_MIN_PX = 20.0       # heads at least this big (landmark extent) show a face when it faces the camera
_HEAD_LANDMARKS = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
_PLACEMENT_LANDMARKS = _HEAD_LANDMARKS + ("left_shoulder", "right_shoulder")   # hips: often behind a table
# Nominal 1-sigma errors. Position: the distance times the relative error of the fused distance (depth and body
# size, as weighed below) plus the offset between the eyes and a head-mounted camera; on the development clips with
# the default depth errors this gives a median of 0.17 m (cooking, measured per frame 0.03), 0.21 m (covid, 0.21:
# its released depth reads the head 25 % too far and the body's size 33 %, which no weighting can see) and 0.39 m
# (soccer at 4 m, 0.26). Orientation: the forward error with and without the face seen (cooking 13 deg; covid 20,
# soccer 13). See docs/benchmarks.md.
_HEAD_CAMERA_OFFSET_M = 0.05
_ROTATION_SIGMA_FACE_RAD = np.deg2rad(12.0)
_ROTATION_SIGMA_BODY_RAD = np.deg2rad(20.0)


def _unit(v: np.ndarray) -> np.ndarray | None:
    n = float(np.linalg.norm(v))
    return None if n < 1e-9 or not np.isfinite(n) else v / n


def _place_body(body: BodyLandmarks, rays: np.ndarray, use: np.ndarray) -> tuple[np.ndarray, float] | None:
    """Translation t (3,) [m] that puts the metric body (body_m + t) on the visible landmarks' rays (least squares
    in normalised image coordinates, visibility-weighted), and the RMS residual relative to the landmarks' RMS
    spread in the image (0: a perfect fit; the body model is an average adult, so a few percent remain)."""
    p = body.body_m[use]
    x, y = rays[use, 0], rays[use, 1]
    w = np.sqrt(body.visibility[use])
    # (X + tx) - x (Z + tz) = 0 and (Y + ty) - y (Z + tz) = 0, linear in t
    n = len(p)
    a = np.zeros((2 * n, 3))
    b = np.zeros(2 * n)
    a[:n, 0], a[:n, 2], b[:n] = 1.0, -x, -(p[:, 0] - x * p[:, 2])
    a[n:, 1], a[n:, 2], b[n:] = 1.0, -y, -(p[:, 1] - y * p[:, 2])
    a *= np.concatenate([w, w])[:, None]
    b *= np.concatenate([w, w])
    t, *_ = np.linalg.lstsq(a, b, rcond=None)
    if not np.all(np.isfinite(t)):
        return None
    placed = p + t
    if (placed[:, 2] <= 0.05).any():
        return None
    residual = np.concatenate([placed[:, 0] / placed[:, 2] - x, placed[:, 1] / placed[:, 2] - y])
    spread = np.sqrt(np.mean((x - x.mean()) ** 2 + (y - y.mean()) ** 2))
    return t, float(np.sqrt(np.mean(residual**2)) / max(spread, 1e-9))


def _depth_scale(body: BodyLandmarks, placed: np.ndarray, depth_m: np.ndarray, mask: np.ndarray | None,
                 config: HeadPoseConfig) -> float | None:
    """Median over the visible head landmarks of (their depth in the image) / (their z in the placed body)."""
    ratios = []
    for name in _HEAD_LANDMARKS:
        i = BODY_INDEX[name]
        if body.visibility[i] > _SEEN:
            d = _patch_depth_m(depth_m, body.uv_px[i], config.depth_patch_px, mask)
            if np.isfinite(d) and d > 0:
                ratios.append(d / placed[i, 2])
    return float(np.median(ratios)) if ratios else None


def _head_rotation(body: BodyLandmarks, placed: np.ndarray, face_seen: bool, down: np.ndarray,
                   min_pitch_down_deg: float) -> np.ndarray | None:
    """exo_R_head (3, 3): columns x (the person's right), y (down), z (forward) in the exo frame."""
    def point(name):
        return placed[BODY_INDEX[name]]
    ears = 0.5 * (point("left_ear") + point("right_ear"))
    face = _unit(point("nose") - ears)
    if face is None:
        return None

    def horizontal(v):
        return _unit(v - np.dot(v, down) * down)
    heading = horizontal(face)
    if not face_seen and body.seen("left_shoulder") and body.seen("right_shoulder"):
        right = point("right_shoulder") - point("left_shoulder")        # toward the person's right
        normal = _unit(np.cross(down, right))          # the chest's normal; which way it faces: the face's side
        if normal is not None:
            normal = -normal if np.dot(normal, face) < 0 else normal
            head = body.uv_px[:11][body.visibility[:11] > _SEEN]
            head_px = float(np.max(np.ptp(head, axis=0))) if len(head) else 0.0
            if head_px >= _FACE_CHECK_MIN_PX or heading is None:
                heading = horizontal(normal)    # a head big enough to show a face shows none: seen from behind
            else:                               # too small to tell: the face landmarks may be right
                both = _unit(heading + horizontal(normal))
                heading = both if both is not None else heading
    if heading is None:
        return None
    pitch = max(float(np.degrees(np.arcsin(np.clip(np.dot(face, down), -1.0, 1.0)))), min_pitch_down_deg)
    a = np.radians(pitch)
    z = _unit(np.cos(a) * heading + np.sin(a) * down)
    y = _unit(down - np.dot(down, z) * z)
    if z is None or y is None:
        return None
    x = np.cross(y, z)
    return np.stack([x, y, z], axis=1)


def _place_on_landmarks(body: BodyLandmarks, camera: CameraModel) -> tuple[np.ndarray, float] | None:
    """The metric body (33, 3) [m, exo camera frame] placed on the head and shoulder landmarks' rays, and the
    placement's misfit; None with too few landmarks seen (both eyes or both ears, the nose, and 4 of the head and
    shoulder ones) or when the placement fails."""
    if body.body_m is None:
        raise ValueError("placing the body needs the metric body (BodyLandmarks.body_m)")
    seen = body.visibility > _SEEN
    use = np.zeros(len(seen), bool)
    for name in _PLACEMENT_LANDMARKS:
        use[BODY_INDEX[name]] = seen[BODY_INDEX[name]]
    eyes_seen = body.seen("left_eye") and body.seen("right_eye")
    ears_seen = body.seen("left_ear") and body.seen("right_ear")
    if int(use.sum()) < 4 or not (eyes_seen or ears_seen) or not body.seen("nose", 0.1):
        return None
    rays = _unproject_rays(camera, body.uv_px)
    use &= np.isfinite(rays).all(axis=1)
    if int(use.sum()) < 4:
        return None
    placement = _place_body(body, rays, use)
    if placement is None:
        return None
    t, misfit = placement
    return body.body_m + t, misfit


def _place_with_depth(body: BodyLandmarks, camera: CameraModel, depth_m: np.ndarray | None,
                      mask: np.ndarray | None, config: HeadPoseConfig) -> tuple[np.ndarray, float, float | None] | None:
    """(placed body, misfit, depth scale or None without usable depth) as _place_on_landmarks places it and
    _depth_scale measures it; None when the body cannot be placed."""
    placement = _place_on_landmarks(body, camera)
    if placement is None:
        return None
    placed, misfit = placement
    scale = None if depth_m is None else _depth_scale(body, placed, np.asarray(depth_m), mask, config)
    return placed, misfit, scale


def is_person_sized(observation: PersonObservation, camera: CameraModel, depth_m: np.ndarray | None,
                    config: HeadPoseConfig) -> bool:
    """False when the depth shows that what the detector took for a person is far smaller than one (below
    MIN_HUMAN_SCALE of an adult placed on its landmarks: a toy, a jug on a desk); True otherwise, including whenever
    there is nothing to measure (no depth, no metric body, too few landmarks): the evidence must speak against a
    person. The same rule as measure_body_head's, so the mask and the head agree."""
    body = observation.body
    if depth_m is None or body is None or body.body_m is None:
        return True
    placement = _place_with_depth(body, camera, depth_m, observation.mask, config)
    return placement is None or placement[2] is None or placement[2] >= MIN_HUMAN_SCALE


def measure_body_head(body: BodyLandmarks, camera: CameraModel, depth_m: np.ndarray | None,
                      config: HeadPoseConfig, mask: np.ndarray | None = None, face_seen: bool = False,
                      world_T_exo: np.ndarray | None = None) -> HeadMeasurement | None:
    """The head from whole-body landmarks (see the module docstring). body.body_m must be set.

    depth_m: (H, W) float32 [m] registered to the exo image, or None. mask: (H, W) bool person mask or None.
    world_T_exo: (4, 4) exo camera pose in a z-up world, for "down"; None: the camera's y axis is down.
    Returns None with too few landmarks seen (both eyes or both ears, and 4 of the head and shoulder ones),
    when the placement fails, or when the depth shows something much smaller than a person.
    """
    placement = _place_with_depth(body, camera, depth_m, mask, config)
    if placement is None:
        return None
    placed, misfit, depth_scale = placement
    whole_body = all(body.seen(n) for n in _WHOLE_BODY)
    body_sigma = BODY_SIZE_SIGMA if whole_body else PARTIAL_BODY_SIGMA
    position_source, depth_rejected, scale, relative_sigma = "body", False, 1.0, body_sigma
    if depth_scale is not None:
        if depth_scale < MIN_HUMAN_SCALE:
            return None                       # far smaller than a person: not a person
        if 1.0 / DEPTH_VS_MODEL_RATIO <= depth_scale <= DEPTH_VS_MODEL_RATIO:
            # inverse-variance mean of the two log distances (the body's is log 1 = 0)
            depth_sigma = max(float(np.hypot(config.depth_sigma_relative, config.depth_sigma_per_m
                                             * float(placed[BODY_INDEX["nose"], 2]) * depth_scale)), 1e-3)
            weight = body_sigma**2 / (body_sigma**2 + depth_sigma**2)
            scale, position_source = float(np.exp(weight * np.log(depth_scale))), "depth"
            relative_sigma = float(np.sqrt(1.0 / (1.0 / body_sigma**2 + 1.0 / depth_sigma**2)))
        else:
            depth_rejected = True
    placed = placed * scale
    eyes = 0.5 * (placed[BODY_INDEX["left_eye"]] + placed[BODY_INDEX["right_eye"]])
    if world_T_exo is not None:
        down = np.asarray(world_T_exo, np.float64)[:3, :3].T @ np.array([0.0, 0.0, -1.0])
    else:
        down = np.array([0.0, 1.0, 0.0])
    rotation = _head_rotation(body, placed, face_seen, down, config.min_pitch_down_deg)
    if rotation is None or eyes[2] <= 0:
        return None
    exo_T_head = np.eye(4)
    exo_T_head[:3, :3] = rotation
    exo_T_head[:3, 3] = eyes
    distance_m = float(np.linalg.norm(eyes))
    key = float(np.mean([body.visibility[BODY_INDEX[n]] for n in _PLACEMENT_LANDMARKS]))
    # Confidence: the head and shoulder landmarks' visibility, less for a face not seen and for a poor placement
    # (a misfit of more than ~30 % of the landmarks' spread: the body model does not fit the pose it is given;
    # on the development clips good fits left 0.1-0.3: a seated person seen from behind the most).
    confidence = key * (1.0 if face_seen else 0.8) / (1.0 + (misfit / 0.3) ** 2)
    rms_px = misfit * float(camera.fx)
    position_sigma_m = _HEAD_CAMERA_OFFSET_M + relative_sigma * distance_m
    rotation_sigma_rad = _ROTATION_SIGMA_FACE_RAD if face_seen else _ROTATION_SIGMA_BODY_RAD
    return HeadMeasurement(exo_T_head=exo_T_head, position_source=position_source,
                           orientation_source="face" if face_seen else "pose", rms_px=float(rms_px),
                           confidence=float(np.clip(confidence, 0.0, 1.0)),
                           position_sigma_m=float(position_sigma_m), rotation_sigma_rad=float(rotation_sigma_rad),
                           depth_rejected=depth_rejected)


def measure_person_head(observation: PersonObservation, camera: CameraModel, depth_m: np.ndarray | None,
                        config: HeadPoseConfig, world_T_exo: np.ndarray | None = None) -> HeadMeasurement | None:
    """The head in the exo camera frame from one observation, or None without a usable head: from the whole body
    when the observation has it (measure_body_head), else from the head keypoints (head_geometry.measure_head)."""
    if observation.body is not None and observation.body.body_m is not None:
        return measure_body_head(observation.body, camera, depth_m, config, observation.mask,
                                 observation.face_seen, world_T_exo)
    if observation.head is None:
        return None
    return measure_head(observation.head, camera, depth_m, config, observation.mask)
