"""egox bench soak --crop: the 1280x720 @ 15 Hz case of issue 18 from the 320x240 sample (x4, central crop)."""
from __future__ import annotations

import numpy as np
import pytest

from egox_ros.bench.soak import SoakError, load_sample


def test_crop_keeps_the_centre_and_moves_the_principal_point_with_it():
    full = load_sample(upscale=4)
    cropped = load_sample(upscale=4, crop=(1280, 720))
    assert (full.width, full.height) == (1280, 960) and (cropped.width, cropped.height) == (1280, 720)
    assert len(cropped.frames) == len(full.frames)
    rgb = np.frombuffer(full.frames[3].rgb, np.uint8).reshape(960, 1280, 3)
    depth = np.frombuffer(full.frames[3].depth, "<u2").reshape(960, 1280)
    assert np.array_equal(np.frombuffer(cropped.frames[3].rgb, np.uint8).reshape(720, 1280, 3), rgb[120:840])
    assert np.array_equal(np.frombuffer(cropped.frames[3].depth, "<u2").reshape(720, 1280), depth[120:840])
    # The same ray lands 120 rows higher: cy moves by the crop's top offset, the rest of K stays.
    k_full, k_crop = np.array(full.info["k"]), np.array(cropped.info["k"])
    assert k_crop[5] == pytest.approx(k_full[5] - 120) and np.allclose(np.delete(k_crop, 5), np.delete(k_full, 5))
    assert cropped.info["p"][6] == pytest.approx(full.info["p"][6] - 120)


def test_a_crop_larger_than_the_frames_is_refused():
    with pytest.raises(SoakError, match="does not fit"):
        load_sample(upscale=2, crop=(1280, 720))
