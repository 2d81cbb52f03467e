"""The demonstrator seen from the exo camera: who they are (person masks) and where their head is.

detector.py: the person detector's interface, its config and its worker thread; mediapipe_detector.py: the bundled
MediaPipe models behind it; mask_depth.py: the mask kept to the person's own depth (person.depth_tolerance_m);
landmarks.py: the landmark types and indices; head_geometry.py, estimate.py: the head
camera's pose from face and body landmarks (and depth); head_tracker.py: hold and smoothing over time.
Imports core.config and core.geometry only (and, lazily, MediaPipe).
"""
from __future__ import annotations

from egox_ros.core.demonstrator.detector import PersonConfig, PersonDetector


def make_person_detector(config: PersonConfig) -> PersonDetector | None:
    """The detector for config.source ('mediapipe'), or None ('none', 'topic': nothing to run; resolve 'auto'
    first with resolve_person_source)."""
    if config.source != "mediapipe":
        return None
    from egox_ros.core.demonstrator.mediapipe_detector import MediapipePersonDetector
    return MediapipePersonDetector(config)
