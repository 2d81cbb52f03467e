"""What a person detector reports about the demonstrator in one exo image, and the head hint it may be given.

Conventions: pixel coordinates (u right, v down) in the exo image as it arrived (before any crop), float64.
"left" and "right" are the demonstrator's own sides (MediaPipe's convention): facing the camera, their left eye
appears on the image's right.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# Head keypoints every detector maps its landmarks to (the rows of HeadLandmarks.uv_px). The metric head model in
# head_geometry.py gives each a position in the head frame.
HEAD_KEYPOINTS: tuple[str, ...] = (
    "nose", "left_eye", "right_eye", "left_eye_inner", "left_eye_outer", "right_eye_inner", "right_eye_outer",
    "left_ear", "right_ear", "mouth_left", "mouth_right",
)
KEYPOINT_INDEX = {name: i for i, name in enumerate(HEAD_KEYPOINTS)}


@dataclass
class HeadLandmarks:
    """Head keypoints of one person in one exo image.

    uv_px: (K, 2) float64 pixel positions, K = len(HEAD_KEYPOINTS), rows in HEAD_KEYPOINTS order.
    weight: (K,) float64 in [0, 1]: how far to trust each keypoint (the detector's visibility / presence); 0 = not
        seen (its uv_px is ignored).
    source: 'face_mesh' (dense face landmarks: the face is visible, orientation is reliable) or 'pose' (body
        landmarks only: eyes, ears, nose and mouth from the pose model).
    """
    uv_px: np.ndarray
    weight: np.ndarray
    source: str

    def __post_init__(self) -> None:
        self.uv_px = np.asarray(self.uv_px, np.float64)
        self.weight = np.clip(np.asarray(self.weight, np.float64), 0.0, 1.0)
        k = len(HEAD_KEYPOINTS)
        if self.uv_px.shape != (k, 2) or self.weight.shape != (k,):
            raise ValueError(f"HeadLandmarks needs uv_px (K, 2) and weight (K,) with K = {k}; got "
                             f"{self.uv_px.shape} and {self.weight.shape}")
        if self.source not in ("face_mesh", "pose"):
            raise ValueError(f"HeadLandmarks.source = {self.source!r}; expected 'face_mesh' or 'pose'")

    def get(self, name: str) -> tuple[np.ndarray, float]:
        """(uv_px (2,), weight) of one keypoint."""
        i = KEYPOINT_INDEX[name]
        return self.uv_px[i], float(self.weight[i])


# MediaPipe pose (BlazePose) landmark indices of the head keypoints and of what the body head estimate uses;
# "left" / "right" are the person's own.
BODY_INDEX = {"nose": 0, "left_eye_inner": 1, "left_eye": 2, "left_eye_outer": 3, "right_eye_inner": 4,
              "right_eye": 5, "right_eye_outer": 6, "left_ear": 7, "right_ear": 8, "mouth_left": 9, "mouth_right": 10,
              "left_shoulder": 11, "right_shoulder": 12, "left_hip": 23, "right_hip": 24, "left_ankle": 27,
              "right_ankle": 28}
BODY_LANDMARKS = 33


@dataclass
class BodyLandmarks:
    """Whole-body landmarks of one person in one exo image (MediaPipe pose's 33, BlazePose order).

    uv_px: (33, 2) float64 pixel positions in the exo image as it arrived.
    visibility: (33,) float64 in [0, 1] (the model's visibility; 0 = not seen).
    body_m: (33, 3) float64 [m]: the model's metric body shape ("world landmarks": origin between the hips, axes
        along the exo camera's x right, y down, z away from it, for an average adult's size), or None.
    """
    uv_px: np.ndarray
    visibility: np.ndarray
    body_m: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.uv_px = np.asarray(self.uv_px, np.float64)
        self.visibility = np.clip(np.asarray(self.visibility, np.float64), 0.0, 1.0)
        if self.body_m is not None:
            self.body_m = np.asarray(self.body_m, np.float64)
        if self.uv_px.shape != (BODY_LANDMARKS, 2) or self.visibility.shape != (BODY_LANDMARKS,) or (
                self.body_m is not None and self.body_m.shape != (BODY_LANDMARKS, 3)):
            raise ValueError(f"BodyLandmarks needs uv_px (33, 2), visibility (33,) and body_m (33, 3) or None; got "
                             f"{self.uv_px.shape}, {self.visibility.shape}, "
                             f"{None if self.body_m is None else self.body_m.shape}")

    def seen(self, name: str, threshold: float = 0.5) -> bool:
        return bool(self.visibility[BODY_INDEX[name]] > threshold)


@dataclass
class PersonObservation:
    """The demonstrator in one exo image: where they are (mask) and where their head is (landmarks).

    mask: (H, W) bool, True on the person (the exo image's size), or None when the source gives no mask.
    head: the head keypoints, or None when no head was found (no person, back view, occluded face).
    detector_ms: time the detector spent on this image [ms] (0 for masks from a topic).
    body: the whole-body landmarks, or None (no person, or a source without them).
    face_seen: the close-range face detector found a face on the head crop, not only the body's head landmarks.
    others: the other people in view (person.other_people), each with its own mask and body landmarks (no head).
    """
    mask: np.ndarray | None
    head: HeadLandmarks | None
    detector_ms: float = 0.0
    body: BodyLandmarks | None = None
    face_seen: bool = False
    others: tuple["PersonObservation", ...] = ()

    @property
    def people_mask(self) -> np.ndarray | None:
        """What the prior leaves out: the demonstrator's mask joined with the other people's (None without any)."""
        masks = [m for m in (self.mask, *(o.mask for o in self.others)) if m is not None]
        return None if not masks else masks[0] if len(masks) == 1 else np.logical_or.reduce(masks)

    @property
    def found(self) -> bool:
        return self.head is not None or self.body is not None or (self.mask is not None and bool(self.mask.any()))


@dataclass(frozen=True)
class HeadHint:
    """Where the head TF puts the demonstrator's head in one exo image: a detector's hint which person to follow.

    uv_px: (u, v) float pixel of the head frame's origin (the head camera) in the exo image as it arrived.
    px_per_m: pixels per metre across the view at the head's depth (the exo focal length over the depth).
    """
    uv_px: tuple[float, float]
    px_per_m: float


def shoulder_width_px(landmarks_uv: np.ndarray) -> float:
    """The body's scale in pixels from its 33 landmark pixels: the shoulder width, or from the ears and the torso
    when the shoulders are foreshortened (a side view); at least 4 px."""
    lm = np.asarray(landmarks_uv, np.float64)
    shoulder_px = float(np.linalg.norm(lm[11] - lm[12]))
    ears_px = float(np.linalg.norm(lm[7] - lm[8]))
    torso_px = float(np.linalg.norm(0.5 * (lm[11] + lm[12]) - 0.5 * (lm[23] + lm[24])))
    return max(shoulder_px, 2.2 * ears_px, 0.6 * torso_px, 4.0)
