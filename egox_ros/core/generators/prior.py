"""The `prior` generator: the ego image is the prior itself, holes marked invalid."""
from __future__ import annotations

from egox_ros.core.generators.base import ClipRequest, ClipResult, EgoGenerator


class PriorGenerator(EgoGenerator):
    """Publishes the rendered prior unchanged: a geometric ego view with black, invalid holes."""

    name = "prior"

    def generate(self, request: ClipRequest) -> ClipResult:
        return ClipResult(rgb=[p.rgb for p in request.priors], valid=[p.mask for p in request.priors])
