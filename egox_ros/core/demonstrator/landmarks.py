"""What a person detector reports about the demonstrator in one exo image.

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


@dataclass
class PersonObservation:
    """The demonstrator in one exo image: where they are (mask) and where their head is (landmarks).

    mask: (H, W) bool, True on the person (the exo image's size), or None when the source gives no mask.
    head: the head keypoints, or None when no head was found (no person, back view, occluded face).
    detector_ms: time the detector spent on this image [ms] (0 for masks from a topic).
    """
    mask: np.ndarray | None
    head: HeadLandmarks | None
    detector_ms: float = 0.0

    @property
    def found(self) -> bool:
        return self.head is not None or (self.mask is not None and bool(self.mask.any()))
