"""Synchronised exo frames and the rolling window that holds them."""
from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field

import numpy as np

from egox_ros.core.config import WindowConfig
from egox_ros.core.geometry.cameras import CameraModel


@dataclass
class ExoFrame:
    """One exo image with everything synchronised to its stamp.

    rgb: (H, W, 3) uint8. depth_m: (H, W) float32 metres, NaN = no reading, or None without a depth source.
    world_T_exo / world_T_ego: (4, 4) float64 poses of the exo and ego optical frames (OpenCV axes) in the world frame.
    person_mask: (H, W) bool, True on the demonstrator (kept out of the background cloud), or None without masks.
    """
    stamp_ns: int
    rgb: np.ndarray
    depth_m: np.ndarray | None
    camera: CameraModel
    world_T_exo: np.ndarray
    world_T_ego: np.ndarray
    exo_frame_id: str
    person_mask: np.ndarray | None = None
    cache: dict = field(default_factory=dict, repr=False)  # derived data (e.g. the lifted point cloud)


class FrameWindow:
    """The newest frames, bounded by count and by age relative to the newest stamp. Thread-safe."""

    def __init__(self, config: WindowConfig):
        self.config = config
        self._frames: deque[ExoFrame] = deque()
        self._lock = threading.Lock()

    def append(self, frame: ExoFrame) -> None:
        """Add a frame (stamps must increase; the node drops out-of-order frames before this)."""
        with self._lock:
            if self._frames and frame.stamp_ns <= self._frames[-1].stamp_ns:
                raise ValueError(f"stamp {frame.stamp_ns} ns is not after the window's newest "
                                 f"{self._frames[-1].stamp_ns} ns")
            self._frames.append(frame)
            oldest_ns = frame.stamp_ns - int(self.config.max_age_s * 1e9)
            while len(self._frames) > self.config.max_frames or self._frames[0].stamp_ns < oldest_ns:
                self._frames.popleft()

    def newest(self, count: int, up_to_ns: int | None = None) -> list[ExoFrame]:
        """Up to `count` newest frames with stamp <= up_to_ns (all if None), oldest first."""
        with self._lock:
            frames = [f for f in self._frames if up_to_ns is None or f.stamp_ns <= up_to_ns]
        return frames[-count:]

    def clear(self) -> None:
        with self._lock:
            self._frames.clear()

    def __len__(self) -> int:
        with self._lock:
            return len(self._frames)
