"""The temporally stable relative depth sources (egox_ros.core.depth.temporal) on synthetic sequences of a known scene.

The scene is a few planes (back wall, floor, side wall, a box) with known inverse depth 1 / D [1/m]. Each exo image
is that inverse depth shaded into grey plus sensor noise. The test's per-frame "relative model" reads the image and
returns ``a_t * image + b_t`` plus noise, with a_t, b_t drawn per frame from a seed hashed from the image (the same
image gives the same output, as a real model would): an affine flicker of ~40 %. The "metric model" returns D with
a per-frame scale flicker of 2 % and 1 % pixel noise.
"""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
import torch

from egox_ros.core.depth.base import DepthMap, DepthSource
from egox_ros.core.depth.temporal import (AffineFitConfig, TemporalDepthConfig, TemporalRelativeDepth, VideoDepthModel,
                                          WindowedDepthConfig, WindowedVideoDepth, WindowMedianModel,
                                          fit_affine_to_reference)
from egox_ros.core.geometry.depth_alignment import DepthAlignmentConfig, StreamingDepthAligner, align_or_pass_through

H, W = 48, 64


def scene_inverse_depth(t: int = 0, moving: bool = False) -> np.ndarray:
    """Inverse depth [1/m] (H, W) of the planes; with moving=True the box shifts one column per frame (12 cycle)."""
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    inv = np.full((H, W), 0.2)                                          # back wall at 5 m
    inv = np.maximum(inv, np.where(y > 24, 0.2 + (y - 24) * 0.03, 0))   # floor, up to ~1.1 m
    inv = np.maximum(inv, np.where(x < 12, 0.2 + (12 - x) * 0.04, 0))   # side wall
    left = 30 + t % 12 if moving else 36
    box = (y >= 16) & (y < 34) & (x >= left) & (x < left + 14)
    return np.where(box, 0.5 + 0.005 * (x - left), inv)                 # a slanted box front at ~2 m


def exo_image(t: int, moving: bool = False) -> np.ndarray:
    rng = np.random.default_rng(1000 + t)
    grey = scene_inverse_depth(t, moving)[..., None] * 255 + rng.normal(0, 1, (H, W, 3))
    return np.clip(grey, 0, 255).astype(np.uint8)


def _rng(tag: bytes, image: np.ndarray) -> np.random.Generator:
    return np.random.default_rng(int.from_bytes(hashlib.sha1(tag + image.tobytes()).digest()[:8], "little"))


class FlickeringRelativeModel(DepthSource):
    """Per-frame relative inverse depth a_t * (image / 255) + b_t + noise; a_t, b_t differ per frame."""
    name = "flickering_relative"

    def __init__(self, noise: float = 0.004):
        self.noise = noise
        self.frames_seen = 0

    @property
    def kind(self):
        return "relative_inverse"

    @staticmethod
    def affine(image: np.ndarray) -> tuple[float, float, np.random.Generator]:
        rng = _rng(b"relative", image)
        a = float(np.exp(rng.normal(0, 0.3)))
        return a, a * float(rng.uniform(-0.1, 0.5)), rng

    def estimate(self, images):
        out = []
        for image in images:
            self.frames_seen += 1
            a, b, rng = self.affine(image)
            values = a * image[..., 0] / 255.0 + b + rng.normal(0, self.noise * a, image.shape[:2])
            out.append(DepthMap(values.astype(np.float32), "relative_inverse"))
        return out


class FlickeringMetricModel(DepthSource):
    """Metric depth D of the static scene with a per-frame scale flicker (2 %) and pixel noise (1 %)."""
    name = "flickering_metric"

    @property
    def kind(self):
        return "metric"

    def estimate(self, images):
        depth = 1.0 / scene_inverse_depth()
        out = []
        for image in images:
            rng = _rng(b"metric", image)
            values = depth * (1 + rng.normal(0, 0.02)) * (1 + rng.normal(0, 0.01, depth.shape))
            out.append(DepthMap(values.astype(np.float32), "metric"))
        return out


def flicker(frames: list[np.ndarray]) -> tuple[float, float]:
    """(relative std over time of the per-frame median, median over time of the median |frame-to-frame change|
    relative to the sequence median)."""
    seq = np.stack(frames).reshape(len(frames), -1)
    medians = np.nanmedian(seq, axis=1)
    changes = np.nanmedian(np.abs(np.diff(seq, axis=0)), axis=1) / np.nanmedian(seq)
    return float(medians.std() / medians.mean()), float(np.median(changes))


def correlation(a: np.ndarray, b: np.ndarray) -> float:
    valid = np.isfinite(a) & np.isfinite(b)
    return float(np.corrcoef(a[valid], b[valid])[0, 1])


def values_of(maps: list[DepthMap]) -> list[np.ndarray]:
    assert all(m.kind == "relative_inverse" and m.values.shape == (H, W) for m in maps)
    return [m.values for m in maps]


STATIC = [exo_image(t) for t in range(60)]


# ----------------------------------------------------------------------------- configs and the fit


def test_configs_validate():
    assert TemporalDepthConfig().smoothing == 0.0 and TemporalDepthConfig().fit_method == "symmetric"
    assert (WindowedDepthConfig().window, WindowedDepthConfig().overlap) == (8, 4)
    for bad in (dict(smoothing=1.0), dict(quantile_low=0.9, quantile_high=0.1), dict(fit_method="ransac"),
                dict(min_pixels=1), dict(fit_stride=0)):
        with pytest.raises(ValueError):
            TemporalDepthConfig(**bad)
    for bad in (dict(window=4, overlap=4), dict(window=1), dict(overlap=0)):
        with pytest.raises(ValueError):
            WindowedDepthConfig(**bad)


@pytest.mark.parametrize("method", ["symmetric", "least_squares"])
def test_fit_recovers_an_exact_affine_map(method):
    reference = torch.from_numpy(scene_inverse_depth()).float()
    values = (reference - 0.05) / 2.5
    values[:5] = float("nan")                          # holes are left out
    scale, shift = fit_affine_to_reference(values, reference, AffineFitConfig(fit_method=method))
    assert scale == pytest.approx(2.5, rel=1e-4) and shift == pytest.approx(0.05, abs=1e-4)
    assert fit_affine_to_reference(torch.full((H, W), float("nan")), reference, AffineFitConfig()) is None


def test_sources_refuse_a_metric_source():
    for wrap in (TemporalRelativeDepth, WindowMedianModel):
        with pytest.raises(ValueError, match="metric"):
            wrap(FlickeringMetricModel())


# ----------------------------------------------------------------------------- TemporalRelativeDepth


def test_temporal_source_removes_the_flicker_and_keeps_the_structure():
    raw = values_of(FlickeringRelativeModel().estimate(STATIC))
    source = TemporalRelativeDepth(FlickeringRelativeModel())
    assert source.name == "video" and source.kind == "relative_inverse"
    stable = values_of(source.estimate(STATIC[:7]) + source.estimate(STATIC[7:8]) + source.estimate(STATIC[8:]))
    raw_median, raw_change = flicker(raw)
    median, change = flicker(stable)
    assert raw_median > 0.2 and raw_change > 0.2                       # the model flickers by tens of percent
    assert raw_median / median > 30 and raw_change / change > 15       # measured: ~150x and ~35x
    assert min(correlation(v, scene_inverse_depth()) for v in stable) > 0.999
    np.testing.assert_allclose(stable[0], raw[0], rtol=1e-6)          # the first frame anchors the scale
    assert source.frames == 60 and source.failed_fits == 0


def test_per_pixel_smoothing_averages_noise_without_drift():
    plain = values_of(TemporalRelativeDepth(FlickeringRelativeModel()).estimate(STATIC))
    smoothed = values_of(TemporalRelativeDepth(FlickeringRelativeModel(), TemporalDepthConfig(smoothing=0.5))
                         .estimate(STATIC))
    assert flicker(smoothed)[1] < 0.6 * flicker(plain)[1]
    scale, _ = fit_affine_to_reference(torch.from_numpy(smoothed[-1]), torch.from_numpy(smoothed[0]),
                                       AffineFitConfig())
    assert scale == pytest.approx(1.0, abs=0.02)


def test_symmetric_fit_does_not_shrink_the_scale_over_a_long_stream():
    images = [exo_image(t) for t in range(300)]
    drift = {}
    for method in ("symmetric", "least_squares"):
        out = values_of(TemporalRelativeDepth(FlickeringRelativeModel(), TemporalDepthConfig(fit_method=method))
                        .estimate(images))
        drift[method] = fit_affine_to_reference(torch.from_numpy(out[-1]), torch.from_numpy(out[0]),
                                                AffineFitConfig())[0]
    # Least squares of each frame on the previous one is diluted by the frame's noise, compounding per frame
    # (measured: the last frame's scale is ~1/1.29 of the first); the symmetric fit stays within ~1 %.
    assert drift["symmetric"] == pytest.approx(1.0, abs=0.03)
    assert drift["least_squares"] > 1.1


def test_reset_forgets_the_anchor():
    source = TemporalRelativeDepth(FlickeringRelativeModel())
    source.estimate(STATIC[:10])
    source.reset()
    assert source.frames == 0
    first = source.estimate(STATIC[20:21])[0].values
    np.testing.assert_allclose(first, FlickeringRelativeModel().estimate(STATIC[20:21])[0].values, rtol=1e-6)
    again = source.estimate(STATIC[21:22])[0].values                  # mapped onto the new anchor
    assert np.nanmedian(again) == pytest.approx(np.nanmedian(first), rel=0.01)


def test_failed_fit_reuses_the_map_and_a_new_resolution_keeps_the_scale():
    class HoleyModel(FlickeringRelativeModel):
        def estimate(self, images):
            maps = super().estimate(images)
            for image, m in zip(images, maps):
                if image.shape[0] == H and image[0, 0, 1] == 0:          # marked frames: no estimate at all
                    m.values[:] = np.nan
            return maps

    marked = STATIC[5].copy()
    marked[0, 0, 1] = 0
    source = TemporalRelativeDepth(HoleyModel())
    out = values_of(source.estimate(STATIC[:5] + [marked] + STATIC[6:10]))
    assert np.isnan(out[5]).all() and source.failed_fits == 1
    assert np.nanmedian(out[6]) == pytest.approx(np.nanmedian(out[4]), rel=0.01)
    small = [np.ascontiguousarray(image[::2, ::2]) for image in STATIC[10:12]]
    half = [m.values for m in source.estimate(small)]
    assert half[0].shape == (H // 2, W // 2)
    assert np.nanmedian(half[1]) == pytest.approx(np.nanmedian(out[9][::2, ::2]), rel=0.02)


# ----------------------------------------------------------------------------- WindowedVideoDepth


class RecordingMedianModel(WindowMedianModel):
    """The real WindowMedianModel, remembering the window sizes it was given."""

    def __init__(self, *args, **kw):
        super().__init__(*args, **kw)
        self.window_sizes: list[int] = []

    def estimate_window(self, images):
        self.window_sizes.append(len(images))
        return super().estimate_window(images)


def test_window_median_model_makes_a_window_consistent():
    window = STATIC[:8]
    out = WindowMedianModel(FlickeringRelativeModel()).estimate_window(window)
    assert len(out) == 8 and all(o.shape == (H, W) for o in out)
    medians = [np.nanmedian(o) for o in out]
    assert np.std(medians) / np.mean(medians) < 0.01                  # raw: ~40 %
    assert min(correlation(o, scene_inverse_depth()) for o in out) > 0.999
    assert isinstance(WindowMedianModel(FlickeringRelativeModel()), VideoDepthModel)


@pytest.mark.parametrize("call_sizes", [[40], [1] * 40, [1, 5, 3, 1, 7, 6, 2, 9, 1, 5]])
def test_windowed_source_returns_every_frame_once_in_order(call_sizes):
    images = [exo_image(t, moving=True) for t in range(40)]
    model = RecordingMedianModel(FlickeringRelativeModel())
    source = WindowedVideoDepth(model, WindowedDepthConfig(window=8, overlap=3))
    out, start = [], 0
    for n in call_sizes:
        maps = source.estimate(images[start:start + n])
        assert len(maps) == n
        out += values_of(maps)
        start += n
    assert len(out) == 40 and source.frames == 40
    seen = 0                                                           # each window: <= 3 returned frames + new ones
    for size in model.window_sizes:
        assert size <= 8
        seen += size - min(3, seen)
    assert seen == 40
    for t, values in enumerate(out):                                   # frame t shows the box where frame t has it
        scores = {s: correlation(values, scene_inverse_depth(s, moving=True)) for s in range(max(0, t - 3), t + 4)}
        assert max(scores, key=scores.get) == t and scores[t] > 0.999
    assert flicker(out)[0] < 0.01


def test_windowed_source_is_consistent_across_window_boundaries():
    model = WindowMedianModel(FlickeringRelativeModel())
    source = WindowedVideoDepth(model, WindowedDepthConfig(window=8, overlap=3))
    out = values_of(source.estimate(STATIC[:38]))
    assert source.windows == 7                                         # frames 0-7, then 5 new frames per window
    medians = np.array([np.nanmedian(v) for v in out])
    jumps = np.abs(np.diff(medians)) / medians.mean()
    boundaries = [8, 13, 18, 23, 28, 33]
    assert jumps[[b - 1 for b in boundaries]].max() < 0.01
    # The same model on disjoint windows, without the overlap fit: every window has its own scale.
    disjoint = [v for s in range(0, 40, 8) for v in model.estimate_window(STATIC[s:s + 8])]
    disjoint_medians = np.array([np.nanmedian(v) for v in disjoint])
    assert (np.abs(np.diff(disjoint_medians)) / disjoint_medians.mean())[[7, 15, 23, 31]].max() > 0.05


def test_windowed_source_reset_anchors_anew():
    source = WindowedVideoDepth(WindowMedianModel(FlickeringRelativeModel()), WindowedDepthConfig(window=6, overlap=2))
    source.estimate(STATIC[:10])
    source.reset()
    assert source.frames == 0 and source.windows == 0
    first = source.estimate(STATIC[30:31])[0].values                   # a window of one frame: its own values
    np.testing.assert_allclose(first, FlickeringRelativeModel().estimate(STATIC[30:31])[0].values, rtol=1e-4,
                               atol=1e-5)


# ----------------------------------------------------------------------------- end to end with the alignment


def _align(relative: DepthSource, momentum: float = 0.95):
    """Align the relative source to the flickering metric model frame by frame; per-frame median relative errors.
    Momentum 0.95 rather than the default 0.99: 60 frames are too few for 0.99 to average the metric flicker."""
    aligner = StreamingDepthAligner(DepthAlignmentConfig(momentum=momentum, fit_stride=1))
    metric = FlickeringMetricModel()
    errors = []
    truth = 1.0 / scene_inverse_depth()
    for image in STATIC:
        r = relative.estimate([image])[0]
        m = metric.estimate([image])[0]
        assert (r.kind, m.kind) == ("relative_inverse", "metric")
        aligned = align_or_pass_through(aligner, torch.from_numpy(r.values), torch.from_numpy(m.values))
        errors.append(float(np.median(np.abs(aligned.depth_m.numpy() - truth) / truth)))
    return aligner, errors


@pytest.mark.parametrize("make", [lambda: TemporalRelativeDepth(FlickeringRelativeModel()),
                                  lambda: WindowedVideoDepth(WindowMedianModel(FlickeringRelativeModel()))],
                         ids=["temporal", "windowed"])
def test_alignment_recovers_the_known_relation_after_stabilisation(make):
    relative = make()
    aligner, errors = _align(relative)
    assert max(errors[-20:]) < 0.02           # measured: ~1.3 %, the mean metric flicker of the last ~20 frames
    # The stabilised sequence keeps the scale of its anchor; for the temporal source that is the first frame's
    # a_0 * (1 / D) + b_0, so 1 / D = alpha * relative + beta with alpha = 1 / a_0, beta = -b_0 / a_0.
    if isinstance(relative, TemporalRelativeDepth):
        a0, b0, _ = FlickeringRelativeModel.affine(STATIC[0])
        assert aligner.alpha == pytest.approx(1 / a0, rel=0.02)
        assert aligner.beta == pytest.approx(-b0 / a0, abs=0.01)      # 1/m; scene inverse depth 0.2 .. 1.1


def test_alignment_of_the_unstabilised_model_is_far_off():
    _, errors = _align(FlickeringRelativeModel())
    assert np.median(errors[-20:]) > 0.1                              # measured: ~15 % and more
