"""Where the built-in person detector looks: the search's tiles (people too small for the whole-image pass) and the
tracked region, which follows the person in bounded steps (a region moved at once left MediaPipe's pose tracker
looking beside the person, where a neighbour stood: the goalkeeper next to the soccer player of the Ego-Exo4D
development clip, seen from farther away; docs/benchmarks.md)."""
from __future__ import annotations

import numpy as np
import pytest

from egox_ros.core.demonstrator.mediapipe_detector import _FOLLOW_STEP, _towards, search_tiles


@pytest.mark.parametrize("height, width, count", [(480, 640, 2), (448, 784, 3), (720, 1280, 3), (448, 448, 1),
                                                  (640, 480, 2), (240, 1280, 10)])
def test_search_tiles_are_overlapping_squares_that_cover_the_image(height, width, count):
    tiles = search_tiles(height, width)
    side = min(height, width)
    assert len(tiles) == count
    covered = np.zeros((height, width), bool)
    for x0, y0, s in tiles:
        assert s == side and 0 <= x0 and 0 <= y0 and x0 + s <= width and y0 + s <= height
        covered[y0:y0 + s, x0:x0 + s] = True
    assert covered.all()
    starts = [max(x0, y0) for x0, y0, _ in tiles]
    # Neighbours overlap by at least half a tile: a person up to half a tile wide lies whole inside one of them.
    assert all(b - a <= side / 2 for a, b in zip(starts, starts[1:]))


def test_the_tracked_region_moves_at_most_a_step_and_takes_the_new_size():
    box = (100, 50, 200)
    target = (400, -100, 120)                   # far to the right and up, smaller
    moved = _towards(box, target, _FOLLOW_STEP)
    step = _FOLLOW_STEP * 200
    centre = np.array([moved[0] + moved[2] / 2, moved[1] + moved[2] / 2])
    assert moved[2] == 120
    np.testing.assert_allclose(centre, [200 + step, 150 - step], atol=1.0)     # whole-pixel corners
    # Steps of the region's own side: it reaches a target that stays put, never overshooting.
    target_centre = np.array([460.0, -40.0])
    for _ in range(200):
        before, side = np.array([box[0] + box[2] / 2, box[1] + box[2] / 2]), box[2]
        box = _towards(box, target, _FOLLOW_STEP)
        after = np.array([box[0] + box[2] / 2, box[1] + box[2] / 2])
        assert np.abs(after - before).max() <= _FOLLOW_STEP * side + 1.0
        assert np.linalg.norm(after - target_centre) <= np.linalg.norm(before - target_centre) + 1.0
    np.testing.assert_allclose(after, target_centre, atol=1.0)
    assert _towards(target, target, _FOLLOW_STEP) == target
