"""The built-in person detector: MediaPipe pose (with segmentation), face detection and face mesh.

All three models ship inside the ``mediapipe==0.10.21`` wheel (later releases download them at run time, which a
robot without internet cannot do), so nothing is downloaded. Per image:

1. the pose landmarker with segmentation (33 body landmarks with visibilities, a person mask) tracks the person in a
   fixed region around them (set anew when they near its edge);
2. without a tracked person, a search: first the pose model with its own detector on a region around the largest
   face found by the full-range face detector (people 1-5 m away, small in the image, facing the camera), then,
   without a face, the pose model on the whole image: it finds people whose face is turned away or too small
   (the released Ego-Exo4D clips: a soccer player 3-4 m away, a seated person with her back to the camera), and
   when that finds nobody either, on every other such image, the pose model on one square tile of the image (its
   short side; the tiles overlap and take turns), where people look about twice as large as in the whole image:
   people farther away (below). A whole-image or tile find must be found again in the region it would be tracked
   in (``_confirmed``: desk objects are not). On the TUM fr1_rpy frames the seated person is still found by his
   face. Non-humans that get through are rejected by their metric size at the head estimate (estimate.py), where
   the depth is known. A tracked person who is lost is first looked for again around where they were, so that
   someone else in view does not take their place;
3. with a head hint (the head TF projected into the image, when the head pose is recorded rather than estimated from
   this image): when the person tracked or found lies more than ``_HINT_CHECK_M`` from it, or nobody was found, a
   person found on a region around the hinted head, and closer to it, takes their place, so that in a crowd the
   mask stays on the demonstrator. The hint only steers: a person alone is found as without it (the same masks),
   and with nobody at the hint the detector keeps whom it found (a head TF a little off, e.g. an exo focal length
   that does not fit the video, costs no mask);
4. with ``person.other_people`` N > 0, up to N other people are masked too (the released priors leave out every
   person; a goalkeeper beside the soccer player otherwise stands in the player's view): each is tracked like the
   demonstrator in its own region, on the image with the demonstrator and the others found before blanked out
   (grey, grown by ``_BLANK_PX``); a free place searches the image so blanked (by the face, then the whole image
   and one of the tiles, with the second look) every other image. They are ``PersonObservation.others`` (mask and
   body each); the demonstrator's head and mask stay apart;
5. with ``person.face_mesh``, the face mesh (with irises) on a crop around the head: eyes, nose and mouth from it,
   ears from the pose model (the face mesh has none).

On the TUM fr1_rpy frames with a seated person about 2 m away behind a monitor, the pose model on the whole image
found him in 2 of 12 frames; this search and tracking find him in all 12.

Farther away and beside other people (the Ego-Exo4D development clips with the exo image shrunk about its principal
point by s, the person then looking as if 1 / s times as far; docs/benchmarks.md): before the tiles the soccer
player (4.25 m, a goalkeeper 1.5 m beside him) was found in 9 of 49 images at s = 0.6 and none at 0.5; with them in
all 49 down to s = 0.4 (about 10 m). Before the tracked region moved in bounded steps (``_FOLLOW_STEP``), the
tracker took the goalkeeper for him from s = 0.85: a region moved at once leaves the pose tracker looking where the
person was in the old region's coordinates, and a person that small has a neighbour there.
"""
from __future__ import annotations

import math
import time

import cv2  # opencv-python-headless: installed with mediapipe, which needs it
import numpy as np

from egox_ros.core.demonstrator.detector import PersonConfig, dilate_mask
from egox_ros.core.demonstrator.landmarks import (BODY_INDEX, BodyLandmarks, HEAD_KEYPOINTS, HeadHint, HeadLandmarks,
                                                  PersonObservation, shoulder_width_px)

# Face mesh (478 landmarks with irises) index of each head keypoint it has; the demonstrator's own left/right.
_FACE_MESH_INDEX = {"nose": 1, "left_eye": 473, "right_eye": 468, "left_eye_inner": 362, "left_eye_outer": 263,
                    "right_eye_inner": 133, "right_eye_outer": 33, "mouth_left": 291, "mouth_right": 61}
_FACE_MESH_WEIGHT = 0.95       # face mesh landmarks carry no visibility; it only answers for a visible face
_FACE_MESH_MIN_PX = 40.0       # smaller heads (ear to ear) skip the face mesh: it rarely finds them (1 of 12 TUM
                               # frames at 25 px) and then disagrees with the pose model by half the face
_TRACK_PX = 256                # tracked regions go in at this size (the tracker needs one size; the model's own)
_FACE_CROP_PX = 128            # the crop around a tracked head goes to the close-range face detector at this size
_FACE_SEEN_SCORE = 0.7         # and a face counts as seen from this score (on the Ego-Exo4D development clips a
                               # face seen scored 0.72-0.82, the back and side of heads 0.6-0.61)
_FOLLOW_STEP = 0.1             # the tracked region's centre moves by at most this fraction of its side per image
                               # (the tracker carries its landmarks over in the region's coordinates)
_HINT_REGIONS = ((0.8, 96.0), (2.4, 128.0))   # the regions looked at around a hinted head, in turn until someone
                               # is found there: squares this many metres wide at the head's depth (at least so many
                               # pixels), the head 20 % from their top. Head and shoulders first, which the pose
                               # model's detector anchors on (the seated TUM person twice side by side: found in 12 of
                               # 12 images, at 2.4 m in none); then the whole body (the soccer player twice side by
                               # side, bent over the ball, 87 px/m: 14 of 25 images at 0.8 m, 22 at 2.4 m, 25 with both)
_HINT_CHECK_M = 0.3            # a head found farther than this from the hint makes the detector look at the hint
                               # (the recorded heads of the development clips lie a median 0.03-0.04 m from the
                               # pose's head with the exo camera that fits the videos, 0.09-0.28 m with the released
                               # one, whose focal length is 1.42 times too short)
_HINT_CLOSER_M = 0.2           # and a person found there takes the place when their head is this much closer to it
_HINT_RECHECK_IMAGES = 4       # a look that changed nothing is not repeated for this many images
_BLANK_PX = 15                 # people already masked are blanked out, grown by this, before others are looked for


def _import_mediapipe():
    try:
        import mediapipe as mp
    except ImportError as e:
        raise RuntimeError("person.source 'mediapipe' needs the mediapipe package: pip install --no-deps "
                           "mediapipe==0.10.21 (see requirements-no-deps.txt; later releases do not bundle their "
                           f"models); or set person.source to 'topic' or 'none' ({e})") from e
    return mp


Box = tuple[int, int, int]     # a square region (x0, y0, side) in image pixels; it may reach past the image


def _square(cx: float, cy: float, side: float) -> Box:
    side = max(int(round(side)), 32)
    return int(round(cx - side / 2)), int(round(cy - side / 2)), side


def _crop(image: np.ndarray, box: Box, out_px: int | None) -> np.ndarray:
    """The box's pixels (zeros outside the image), resized to out_px x out_px when given; contiguous."""
    x0, y0, side = box
    h, w = image.shape[:2]
    canvas = np.zeros((side, side) + image.shape[2:], image.dtype)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if ix1 > ix0 and iy1 > iy0:
        canvas[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0] = image[iy0:iy1, ix0:ix1]
    if out_px is not None and out_px != side:
        canvas = cv2.resize(canvas, (out_px, out_px), interpolation=cv2.INTER_AREA if side > out_px
                            else cv2.INTER_LINEAR)
    return np.ascontiguousarray(canvas)


def _paste(target: np.ndarray, box: Box, values: np.ndarray) -> None:
    """Write values (any square size; resized to the box) into target where the box overlaps it."""
    x0, y0, side = box
    h, w = target.shape[:2]
    if values.shape[0] != side:
        values = cv2.resize(values, (side, side), interpolation=cv2.INTER_LINEAR)
    ix0, iy0, ix1, iy1 = max(x0, 0), max(y0, 0), min(x0 + side, w), min(y0 + side, h)
    if ix1 > ix0 and iy1 > iy0:
        target[iy0:iy1, ix0:ix1] = values[iy0 - y0:iy1 - y0, ix0 - x0:ix1 - x0]


def _towards(box: Box, target: Box, step: float) -> Box:
    """``target``'s size, its centre moved from ``box``'s by at most ``step`` times ``box``'s side along each axis."""
    x0, y0, side = box
    tx0, ty0, target_side = target
    reach = step * side
    cx = x0 + side / 2 + float(np.clip(tx0 + target_side / 2 - (x0 + side / 2), -reach, reach))
    cy = y0 + side / 2 + float(np.clip(ty0 + target_side / 2 - (y0 + side / 2), -reach, reach))
    return _square(cx, cy, target_side)


def _blanked(image: np.ndarray, taken: np.ndarray) -> np.ndarray:
    """The image with the ``taken`` pixels (grown by ``_BLANK_PX``) grey: people masked already are not found again."""
    if not taken.any():
        return image
    out = image.copy()
    out[dilate_mask(taken, _BLANK_PX)] = 127
    return out


def search_tiles(height: int, width: int) -> list[Box]:
    """Square tiles as large as the image's short side along its long side, overlapping, covering it: 2 for 640x480,
    3 for 784x448 and 1280x720, 1 for a square image."""
    side, long = min(height, width), max(height, width)
    n = max(1, math.ceil(2 * long / side) - 1)
    starts = [round(i * (long - side) / max(n - 1, 1)) for i in range(n)]
    return [(s, 0, side) if width >= height else (0, s, side) for s in starts]


# The body's outline around its skeleton, in shoulder widths (sw, in pixels): limbs and neck as capsules, the torso
# as its polygon grown by a margin, the head as a disc. Segmentation beyond it (a pot on the counter, a cup held out
# in front, the table under the hands) is not the person. Segments: (landmark a, landmark b, half-width in sw).
_BODY_SEGMENTS = ((11, 13, 0.35), (13, 15, 0.3), (12, 14, 0.35), (14, 16, 0.3),       # arms
                  (15, 19, 0.22), (16, 20, 0.22), (15, 17, 0.22), (16, 18, 0.22),        # hands (to the fingers)
                  (23, 25, 0.45), (25, 27, 0.38), (24, 26, 0.45), (26, 28, 0.38),        # legs
                  (27, 31, 0.28), (28, 32, 0.28))                                        # feet
_TORSO = (11, 12, 24, 23)
_TORSO_MARGIN_SW = 0.45
_HEAD_RADIUS_SW = 0.8


def body_region(landmarks_uv: np.ndarray, shape: tuple[int, int],
                visibility: np.ndarray | None = None) -> np.ndarray:
    """(H, W) bool: where the body can be, from the pose's 33 landmark pixels. Limbs whose ends are both hidden
    (visibility <= 0.5) are not drawn, and with the hips hidden (behind a desk, a monitor) the torso ends 0.6
    shoulder widths below the shoulders: the model places hidden landmarks where they would be, over whatever hides
    them. Drawn with OpenCV, about 1 ms."""
    h, w = shape
    lm = np.asarray(landmarks_uv, np.float64)
    seen = np.ones(len(lm), bool) if visibility is None else np.asarray(visibility) > 0.5
    sw = shoulder_width_px(lm)                              # a side view shows the shoulders foreshortened
    scale = 4                                               # sub-pixel drawing: cv2 takes integer points
    region = np.zeros((h, w), np.uint8)
    pts = np.round(lm * scale).astype(np.int64)
    if not np.all(np.abs(pts) < 2**28):
        return np.ones((h, w), bool)
    for a, b, half in _BODY_SEGMENTS:
        if not (seen[a] or seen[b]):
            continue
        cv2.line(region, tuple(map(int, pts[a])), tuple(map(int, pts[b])), 1,
                 thickness=max(1, int(round(2 * half * sw))), lineType=cv2.LINE_8, shift=2)
    torso = lm[list(_TORSO)]
    if not (seen[23] and seen[24]):
        for hip, shoulder in ((2, 1), (3, 0)):          # rows: 11, 12, 24, 23
            step = torso[hip] - torso[shoulder]
            torso[hip] = torso[shoulder] + step * min(1.0, 0.6 * sw / max(float(np.linalg.norm(step)), 1e-6))
    centre = torso.mean(axis=0)
    grown = torso + _TORSO_MARGIN_SW * sw * (torso - centre) / np.maximum(
        np.linalg.norm(torso - centre, axis=1, keepdims=True), 1e-6)
    cv2.fillConvexPoly(region, np.round(grown * scale).astype(np.int32), 1, lineType=cv2.LINE_8, shift=2)
    neck = 0.5 * (lm[11] + lm[12])
    head = lm[:11].mean(axis=0)
    cv2.line(region, tuple(map(int, np.round(neck * scale))), tuple(map(int, np.round(head * scale))), 1,
             thickness=max(1, int(round(0.5 * sw))), shift=2)
    cv2.circle(region, tuple(map(int, np.round(head * scale))), int(round(_HEAD_RADIUS_SW * sw * scale)), 1,
               thickness=-1, shift=2)
    return region.astype(bool)


def _body_of(found) -> BodyLandmarks:
    """A find's (pose landmarks, segmentation, metric body) as BodyLandmarks."""
    pose_lm, _, body_m = found
    return BodyLandmarks(uv_px=pose_lm[:, :2], visibility=pose_lm[:, 2], body_m=body_m)


class _OtherPerson:
    """Another person in view (person.other_people): their own pose tracker and the region it tracks them in."""

    def __init__(self, pose):
        self.pose = pose
        self.box: Box | None = None


class MediapipePersonDetector:
    """See the module docstring. Not thread-safe: one instance per stream (AsyncPersonDetector runs it)."""
    name = "mediapipe"

    def __init__(self, config: PersonConfig | None = None):
        self.config = config or PersonConfig()
        mp = _import_mediapipe()
        conf = self.config.min_detection_confidence
        # Two pose instances: one searches a new region (detector + landmarks), one tracks in a fixed region
        # (landmarks from the previous image's, no detector: about 15 ms less per image on a 2-core CPU).
        self._pose_find = mp.solutions.pose.Pose(static_image_mode=True, model_complexity=1,
                                                 enable_segmentation=True, min_detection_confidence=conf)
        # Its landmarks are not smoothed: that lags a moving head, and the head tracker filters over time anyway.
        self._pose_track = mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                                                  smooth_landmarks=False, enable_segmentation=True,
                                                  min_detection_confidence=conf)
        self._faces = mp.solutions.face_detection.FaceDetection(model_selection=1, min_detection_confidence=conf)
        # A close-range (model 0, 128 px input) detector for the crop around a tracked head: is the face seen?
        self._faces_near = mp.solutions.face_detection.FaceDetection(model_selection=0,
                                                                     min_detection_confidence=_FACE_SEEN_SCORE)
        self._mesh = (mp.solutions.face_mesh.FaceMesh(static_image_mode=True, refine_landmarks=True,
                                                      max_num_faces=1, min_detection_confidence=conf)
                      if self.config.face_mesh else None)
        self._others = [_OtherPerson(mp.solutions.pose.Pose(static_image_mode=False, model_complexity=1,
                                                             smooth_landmarks=False, enable_segmentation=True,
                                                             min_detection_confidence=conf))
                        for _ in range(self.config.other_people)]
        self._other_searches = 0       # images with a free place for another person (every other: a search)
        self._track_box: Box | None = None
        self._searches = 0             # searched images with nobody in the whole image (every other: a tile)
        self._hint_wait = 0            # images before the region at the hint is looked at again

    def reset(self) -> None:
        self._track_box = None
        self._hint_wait = 0
        self._pose_track.reset()
        for other in self._others:
            other.box = None
            other.pose.reset()

    def close(self) -> None:
        for model in (self._pose_find, self._pose_track, self._faces, self._faces_near, self._mesh,
                      *(other.pose for other in self._others)):
            if model is not None:
                model.close()

    # ------------------------------------------------------------------ steps
    def _face_box(self, rgb: np.ndarray) -> Box | None:
        """Upper-body box around the largest face: 6 face widths square, the face centre 30 % from its top."""
        result = self._faces.process(rgb)
        if not result.detections:
            return None
        h, w = rgb.shape[:2]
        boxes = [d.location_data.relative_bounding_box for d in result.detections]
        b = max(boxes, key=lambda b: b.width * b.height)
        face_px = max(b.width * w, b.height * h)
        cx, cy = (b.xmin + b.width / 2) * w, (b.ymin + b.height / 2) * h
        side = 6.0 * face_px
        return _square(cx, cy + 0.2 * side, side)

    def _pose_in(self, rgb: np.ndarray, box: Box, pose, size_px: int | None):
        """(landmarks (33, 3) [u_px, v_px, visibility], segmentation (H, W) float32 or None, metric body
        (33, 3) [m] or None) in full-image pixels, or None without a person in the box. box None: the whole
        image. size_px: the crop's size given to the model (None: as is)."""
        if box is None:
            h, w = rgb.shape[:2]
            result = pose.process(rgb)
            x0 = y0 = 0
            sx, sy = w, h
        else:
            x0, y0, side = box
            result = pose.process(_crop(rgb, box, size_px))
            sx = sy = side
        if result.pose_landmarks is None:
            return None
        lm = np.array([(x0 + p.x * sx, y0 + p.y * sy, p.visibility) for p in result.pose_landmarks.landmark])
        seg = None
        if result.segmentation_mask is not None:
            if box is None:
                seg = np.asarray(result.segmentation_mask, np.float32)
            else:
                seg = np.zeros(rgb.shape[:2], np.float32)
                _paste(seg, box, result.segmentation_mask)
        body_m = None
        if result.pose_world_landmarks is not None:
            body_m = np.array([(p.x, p.y, p.z) for p in result.pose_world_landmarks.landmark])
        return lm, seg, body_m

    def _face_mesh_in(self, rgb: np.ndarray, pose_lm: np.ndarray) -> np.ndarray | None:
        """Face mesh landmarks (478, 2) in full-image pixels on a crop around the head, or None."""
        head = pose_lm[:11]
        seen = head[head[:, 2] > 0.3]
        if len(seen) < 3:
            return None
        spread = float(np.max(np.ptp(seen[:, :2], axis=0)))
        if spread < _FACE_MESH_MIN_PX:
            return None
        box = _square(float(np.mean(seen[:, 0])), float(np.mean(seen[:, 1])), max(3.0 * spread, 48.0))
        x0, y0, side = box
        result = self._mesh.process(_crop(rgb, box, None))
        if not result.multi_face_landmarks:
            return None
        return np.array([(x0 + p.x * side, y0 + p.y * side) for p in result.multi_face_landmarks[0].landmark])

    def _face_on_head(self, rgb: np.ndarray, pose_lm: np.ndarray) -> bool:
        """Whether the close-range face detector finds a face (score >= _FACE_SEEN_SCORE) on a crop around the
        pose's head: a face turned away or too small has none (the pose model places eyes and a nose on the back
        of a head too, with full visibility). About 2 ms."""
        head = pose_lm[:11, :2]
        spread = float(np.max(np.ptp(head, axis=0)))
        box = _square(float(np.mean(head[:, 0])), float(np.mean(head[:, 1])), max(3.0 * spread, 48.0))
        result = self._faces_near.process(_crop(rgb, box, _FACE_CROP_PX))
        return bool(result.detections)

    def _tile_search(self, rgb: np.ndarray):
        """Every other image whose search found nobody in the whole image: the person in the next tile
        (``_in_tile``; they take turns), else None. A tile's pose run found something in clutter in a third of the
        empty TUM frames (37 ms with its landmarks, and the second look after it), hence not on every image."""
        self._searches += 1
        return None if self._searches % 2 else self._in_tile(rgb, self._searches // 2)

    def _in_tile(self, rgb: np.ndarray, turn: int):
        """The person the pose model finds in tile ``turn`` (modulo their number) of :func:`search_tiles`, with the
        second look, or None."""
        tiles = search_tiles(*rgb.shape[:2])
        return self._confirmed(rgb, self._pose_in(rgb, tiles[turn % len(tiles)], self._pose_find, None))

    def _at_hint(self, rgb: np.ndarray, hint: HeadHint):
        """The person the pose model finds in the first of ``_HINT_REGIONS`` around the hinted head that has one
        (at most the image's long side), or None."""
        long_side = float(max(rgb.shape[:2]))
        for size_m, min_px in _HINT_REGIONS:
            side = min(max(size_m * hint.px_per_m, min_px), long_side)
            found = self._pose_in(rgb, _square(hint.uv_px[0], hint.uv_px[1] + 0.3 * side, side), self._pose_find,
                                  None)
            if found is not None:
                return found
        return None

    @staticmethod
    def _hint_distance_m(pose_lm: np.ndarray, hint: HeadHint) -> float:
        """How far the pose's head (its 11 head landmarks' mean) lies from the hint, across the view [m]."""
        return float(np.linalg.norm(pose_lm[:11, :2].mean(axis=0) - np.asarray(hint.uv_px))) / hint.px_per_m

    def _follow_hint(self, rgb: np.ndarray, found, hint: HeadHint):
        """``found`` (the tracked or searched-for person, or None), or the person found around the hinted head
        (``_at_hint``) instead, when nobody was found or found's head lies more than ``_HINT_CHECK_M`` from the hint
        and theirs ``_HINT_CLOSER_M`` closer (a tracker that followed someone else starts again). A look that
        changes nothing waits ``_HINT_RECHECK_IMAGES`` images before the next (a head TF that is a little off
        costs one pose run per so many images, not one per image)."""
        distance_m = None if found is None else self._hint_distance_m(found[0], hint)
        if distance_m is not None and distance_m <= _HINT_CHECK_M:
            self._hint_wait = 0
            return found
        if self._hint_wait > 0:
            self._hint_wait -= 1
            return found
        hinted = self._at_hint(rgb, hint)
        if hinted is None or (distance_m is not None
                              and self._hint_distance_m(hinted[0], hint) > distance_m - _HINT_CLOSER_M):
            self._hint_wait = _HINT_RECHECK_IMAGES
            return found
        if self._track_box is not None:
            self._track_box = None
            self._pose_track.reset()    # it carries the other person's landmarks over (80-120 ms, once)
        return hinted

    @staticmethod
    def _region(pose_lm: np.ndarray) -> Box | None:
        """A square region around the visible landmarks, grown by 60 %: where the next images are tracked."""
        seen = pose_lm[pose_lm[:, 2] > 0.5, :2]
        if len(seen) < 4:
            return None
        lo, hi = seen.min(axis=0), seen.max(axis=0)
        side = 1.6 * float(max(hi - lo)) + 32.0
        return _square(float(lo[0] + hi[0]) / 2, float(lo[1] + hi[1]) / 2, side)

    @classmethod
    def _followed(cls, box: Box | None, pose_lm: np.ndarray) -> Box | None:
        """The region to track a person in next: around their landmarks when new (box None), else the box, or when
        they near its edge the box moved towards the new region in a step. The tracker's graph is not reset (that
        costs 80-120 ms): it carries its landmarks over in the region's coordinates, so a region moved at once
        would leave it looking beside the person (module docstring); a step is as far as the person moves."""
        if box is None:
            return cls._region(pose_lm)
        if cls._still_fits(pose_lm, box):
            return box
        target = cls._region(pose_lm)
        return None if target is None else _towards(box, target, _FOLLOW_STEP)

    def _mask_of(self, found, h: int, w: int) -> np.ndarray:
        """(H, W) bool: a found person's segmentation kept to their body's outline (person.body_region), grown by
        person.dilate_px."""
        pose_lm, seg, _ = found
        mask = np.zeros((h, w), bool) if seg is None else seg > self.config.mask_threshold
        if self.config.body_region:
            mask &= body_region(pose_lm[:, :2], (h, w), pose_lm[:, 2])
        return dilate_mask(mask, self.config.dilate_px)

    def _other_people(self, rgb: np.ndarray, taken: np.ndarray) -> tuple[PersonObservation, ...]:
        """The other people (module docstring, step 4), ``taken`` the demonstrator's mask."""
        h, w = rgb.shape[:2]
        taken, others = taken.copy(), []
        search = False
        if any(other.box is None for other in self._others):
            self._other_searches += 1
            search = self._other_searches % 2 == 1
        for other in self._others:
            found = None
            if other.box is not None:
                found = self._pose_in(_blanked(rgb, taken), other.box, other.pose, _TRACK_PX)
            elif search:                # one search per image: face, whole image, then one tile in turn
                image = _blanked(rgb, taken)
                found = self._search(image)
                if found is None:
                    found = self._in_tile(image, self._other_searches // 2)
                search = False
            other.box = None if found is None else self._followed(other.box, found[0])
            if found is not None:
                mask = self._mask_of(found, h, w)
                taken |= mask
                others.append(PersonObservation(mask=mask, head=None, body=_body_of(found)))
        return tuple(others)

    @staticmethod
    def _still_fits(pose_lm: np.ndarray, box: Box) -> bool:
        """The visible landmarks stay inside the box's central 80 % and fill at least a third of it."""
        seen = pose_lm[pose_lm[:, 2] > 0.5, :2]
        if len(seen) < 4:
            return False
        x0, y0, side = box
        lo, hi = seen.min(axis=0), seen.max(axis=0)
        inside = np.all(lo >= np.array([x0, y0]) + 0.1 * side) and np.all(hi <= np.array([x0, y0]) + 0.9 * side)
        return bool(inside and max(hi - lo) >= side / 3)

    def _search(self, rgb: np.ndarray):
        """A person found by the face first (the pose model around the largest face), else on the whole image
        (with the second look), or None."""
        box = self._face_box(rgb)
        found = self._pose_in(rgb, box, self._pose_find, None) if box else None
        return found if found is not None else self._confirmed(rgb, self._pose_in(rgb, None, self._pose_find, None))

    def _confirmed(self, rgb: np.ndarray, found):
        """A whole-image find (no face anchors it) kept only when the pose model finds a person again in the region
        it would be tracked in, at the tracker's scale: a second look. On the TUM fr1_rpy frames at 320x240 the
        whole-image pass took a red object on the desk for a person in frames 3, 29, 39 and 40 (30: tracked on), and the
        second look found nobody in any of them; it found the people of the three Ego-Exo4D development clips in
        every frame tried. About one more pose run (20-30 ms), only on a new whole-image find."""
        if found is None:
            return None
        box = self._region(found[0])
        if box is None or self._pose_in(rgb, box, self._pose_find, _TRACK_PX) is None:
            return None
        return found

    # ------------------------------------------------------------------ detect
    def detect(self, rgb: np.ndarray, head_hint: HeadHint | None = None) -> PersonObservation:
        """See PersonDetector.detect and the module docstring."""
        started = time.perf_counter()
        if rgb.ndim != 3 or rgb.shape[2] != 3 or rgb.dtype != np.uint8:
            raise ValueError(f"expected an (H, W, 3) uint8 image, got {rgb.shape} {rgb.dtype}")
        rgb = np.ascontiguousarray(rgb)
        h, w = rgb.shape[:2]
        found = self._pose_in(rgb, self._track_box, self._pose_track, _TRACK_PX) if self._track_box else None
        if found is None and self._track_box is not None:
            # Lost: look again, with the detector, around where they were (fast motion), before anyone else is
            # searched for (another person elsewhere in the image must not take the demonstrator's place).
            x0, y0, side = self._track_box
            found = self._pose_in(rgb, _square(x0 + side / 2, y0 + side / 2, 1.5 * side), self._pose_find, None)
            self._track_box = None
        if found is None:   # search (see the module docstring)
            found = self._search(rgb)
            if found is None:
                found = self._tile_search(rgb)
        if head_hint is not None:
            found = self._follow_hint(rgb, found, head_hint)
        mask = np.zeros((h, w), bool) if found is None else self._mask_of(found, h, w)
        others = self._other_people(rgb, mask) if self._others else ()
        if found is None:
            return PersonObservation(mask=mask, head=None, others=others,
                                     detector_ms=(time.perf_counter() - started) * 1e3)
        pose_lm = found[0]
        self._track_box = self._followed(self._track_box, pose_lm)

        uv = np.array([pose_lm[BODY_INDEX[k], :2] for k in HEAD_KEYPOINTS])
        weight = np.array([pose_lm[BODY_INDEX[k], 2] for k in HEAD_KEYPOINTS])
        source = "pose"
        mesh = self._face_mesh_in(rgb, pose_lm) if self._mesh is not None else None
        if mesh is not None:
            for i, k in enumerate(HEAD_KEYPOINTS):
                if k in _FACE_MESH_INDEX:
                    uv[i], weight[i] = mesh[_FACE_MESH_INDEX[k]], _FACE_MESH_WEIGHT
            source = "face_mesh"
        head = HeadLandmarks(uv_px=uv, weight=weight, source=source)
        face_seen = self._face_on_head(rgb, pose_lm)
        return PersonObservation(mask=mask, head=head, body=_body_of(found), face_seen=face_seen, others=others,
                                 detector_ms=(time.perf_counter() - started) * 1e3)
