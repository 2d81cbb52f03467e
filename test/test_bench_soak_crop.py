"""egox bench soak's sample stream: --crop (the 1280x720 @ 15 Hz case of issue 18 from the 320x240 sample, x4, central
crop) and --still-exo (a camera on a tripod)."""
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


def test_still_exo_gives_every_frame_the_first_exo_transform_and_keeps_the_head_moving():
    moving, still = load_sample(upscale=1), load_sample(upscale=1, still_exo=True)
    exo = moving.frame_id

    def poses(stream, child):
        return [next(t[2:] for t in f.transforms if t[1] == child) for f in stream.frames]
    head = next(t[1] for t in moving.frames[0].transforms if t[1] != exo)
    assert len(set(poses(moving, exo))) > 10 and set(poses(still, exo)) == {poses(moving, exo)[0]}
    assert poses(still, head) == poses(moving, head) and len(set(poses(still, head))) > 10
    assert [f.rgb for f in still.frames] == [f.rgb for f in moving.frames]
