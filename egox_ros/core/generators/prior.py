"""The `prior` generator: the ego image is the prior itself, holes marked invalid."""
from __future__ import annotations

from egox_ros.core.generators.base import ClipRequest, ClipResult, EgoGenerator


class PriorGenerator(EgoGenerator):
    """Publishes the rendered prior unchanged: a geometric ego view with black, invalid holes."""

    name = "prior"
    _clip_frames = 1        # also for subclasses that do not call __init__

    def __init__(self, clip_frames: int = 1):
        """``clip_frames``: frames per clip (generator.prior_clip_frames); the engine collects that many before a
        clip is drawn, so that a still exo camera's clip can share one background (PriorRenderer.prepare_clip)."""
        if int(clip_frames) != clip_frames or clip_frames < 1:
            raise ValueError(f"clip_frames must be a whole number >= 1, got {clip_frames!r}")
        self._clip_frames = int(clip_frames)

    @property
    def clip_frames(self) -> int:
        return self._clip_frames

    def generate(self, request: ClipRequest) -> ClipResult:
        return ClipResult(rgb=[p.rgb for p in request.priors], valid=[p.mask for p in request.priors])
