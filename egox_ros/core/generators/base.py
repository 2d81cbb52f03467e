"""The generator interface: priors of a clip in, ego images out."""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass

import numpy as np

from egox_ros.core.geometry.cameras import PinholeCamera
from egox_ros.core.geometry.frames import ExoFrame


@dataclass
class Prior:
    """The ego prior of one frame. rgb (H, W, 3) uint8, black where uncovered; mask (H, W) bool; depth_m (H, W) float32, 0 where uncovered.
    person_fraction: fraction of the covered pixels drawn from the demonstrator's own points (person masks)."""
    rgb: np.ndarray
    mask: np.ndarray
    depth_m: np.ndarray
    person_fraction: float = 0.0

    @property
    def coverage(self) -> float:
        """Fraction of ego pixels the prior covers."""
        return float(self.mask.mean()) if self.mask.size else 0.0


@dataclass
class ClipRequest:
    """A clip to generate: exo frames (oldest first), their priors and the ego camera."""
    frames: list[ExoFrame]
    priors: list[Prior]
    ego_camera: PinholeCamera


@dataclass
class ClipResult:
    """Generated ego frames, one per request frame: rgb (H, W, 3) uint8 and valid (H, W) bool
    (False where the generator had nothing to go on, e.g. a hole in the prior)."""
    rgb: list[np.ndarray]
    valid: list[np.ndarray]


class EgoGenerator(ABC):
    """Turns the priors of a clip into ego images. Implementations are registered in generators/__init__.py."""

    name: str = ""

    @property
    def clip_frames(self) -> int:
        """Frames per clip; the node collects this many synchronised frames before calling generate()."""
        return 1

    def check_ego_camera(self, camera: PinholeCamera) -> None:
        """Raise ValueError if this generator cannot produce images for `camera` (checked once, at node start)."""

    def prepare(self) -> None:
        """Load what generation needs (models); called once on the node's worker thread before the first clip.
        Raises if that fails; the caller reports it and falls back."""

    def settings(self) -> dict[str, str]:
        """Settings worth recording next to the output (clip metadata)."""
        return {}

    @abstractmethod
    def generate(self, request: ClipRequest) -> ClipResult:
        """Generate one clip. Raises on failure; the caller reports the clip as failed and keeps running."""
