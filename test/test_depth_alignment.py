"""Depth alignment (relative inverse depth -> metric depth) on synthetic sources built from a real TUM depth frame."""
from __future__ import annotations

import math
from functools import lru_cache
from pathlib import Path

import numpy as np
import pytest
import torch

from egox_ros.core.geometry.depth_alignment import (AffineFit, AlignedDepth, DepthAlignmentConfig,
                                                    StreamingDepthAligner, align_or_pass_through,
                                                    fit_inverse_depth_affine)

TUM = Path(__file__).resolve().parents[2] / "shared" / "data" / "tum_rgbd"
DEPTH_DIR = TUM / "fr3_cabinet_keyframes" / "depth_imgs"


@lru_cache(maxsize=None)
def _tum_depth_np(index: int) -> np.ndarray:
    from PIL import Image
    path = DEPTH_DIR / f"{index:04d}_depth_raw.png"
    if not path.exists():
        pytest.skip(f"TUM RGB-D data not found at {path}")
    raw = np.array(Image.open(path))
    assert raw.dtype == np.uint16
    return raw.astype(np.float32) / 5000.0          # metres, 0 = no reading


def tum_depth(index: int = 10) -> torch.Tensor:
    """Real metric depth (480, 640) float32 metres; 0 where the Kinect had no reading."""
    return torch.from_numpy(_tum_depth_np(index).copy())


def relative_from_metric(depth_m: torch.Tensor, alpha: float, beta: float) -> torch.Tensor:
    """The relative inverse depth r with alpha * r + beta = 1 / depth (0 = invalid where depth is missing)."""
    valid = depth_m > 0
    inv = torch.where(valid, depth_m, torch.ones_like(depth_m)).reciprocal()
    return torch.where(valid, (inv - beta) / alpha, torch.zeros_like(depth_m)).to(torch.float32)


def cfg(**kw) -> DepthAlignmentConfig:
    kw.setdefault("fit_stride", 1)
    return DepthAlignmentConfig(**kw)


# ----------------------------------------------------------------------------- config


def test_config_defaults_and_validation():
    c = DepthAlignmentConfig()
    assert (c.momentum, c.quantile_low, c.quantile_high, c.eps) == (0.99, 0.1, 0.9, 1e-6)
    assert c.min_pixels >= 2 and c.fit_stride >= 1
    for bad in (dict(momentum=1.0), dict(momentum=-0.1), dict(quantile_low=0.9, quantile_high=0.1),
                dict(quantile_low=0.5, quantile_high=0.5), dict(quantile_high=1.5), dict(fit_stride=0),
                dict(eps=0.0), dict(min_pixels=1)):
        with pytest.raises(ValueError):
            DepthAlignmentConfig(**bad)


# ----------------------------------------------------------------------------- single-frame fit


@pytest.mark.parametrize("alpha,beta", [(2.5, -0.02), (0.37, 0.11), (40.0, 0.0)])
def test_fit_recovers_known_affine_on_real_depth(alpha, beta):
    depth = tum_depth(10)
    rel = relative_from_metric(depth, alpha, beta)
    fit = fit_inverse_depth_affine(rel, depth)
    assert isinstance(fit, AffineFit)
    assert fit.alpha == pytest.approx(alpha, rel=1e-5)
    assert fit.beta == pytest.approx(beta, abs=1e-5 * (1.0 + abs(beta)))
    assert fit.residual_rms < 1e-5
    n_valid = int((depth > 0).sum())
    # Inside the 10-90 % range of both sources: about 80 % of the valid pixels (ranks coincide here).
    assert 0.7 * n_valid < fit.pixels < 0.85 * n_valid


def test_fit_stride_uses_fewer_pixels_same_answer():
    depth = tum_depth(10)
    rel = relative_from_metric(depth, 2.5, -0.02)
    full = fit_inverse_depth_affine(rel, depth)
    for stride in (2, 4):
        sub = fit_inverse_depth_affine(rel, depth, stride=stride)
        assert sub.pixels < full.pixels / (stride * stride) * 1.2
        assert sub.alpha == pytest.approx(2.5, rel=1e-5) and sub.beta == pytest.approx(-0.02, abs=1e-5)


def test_fit_ignores_outliers_beyond_quantiles():
    torch.manual_seed(1)
    depth = tum_depth(10)
    rel = relative_from_metric(depth, 2.5, -0.02)
    metric = depth.clone()
    valid_idx = torch.nonzero((depth > 0).reshape(-1)).squeeze(1)
    pick = valid_idx[torch.randperm(valid_idx.numel())[: valid_idx.numel() * 4 // 100]]   # 4 % garbage
    half = pick.numel() // 2
    flat = metric.view(-1)
    flat[pick[:half]] = 500.0 + 100.0 * torch.rand(half)           # far beyond the 90 % depth quantile
    flat[pick[half:]] = 0.001 * torch.rand(pick.numel() - half) + 1e-4   # far below the 10 % quantile
    rflat = rel.view(-1)
    pick2 = valid_idx[torch.randperm(valid_idx.numel())[: valid_idx.numel() * 3 // 100]]  # 3 % relative garbage
    rflat[pick2] = 1e3 + torch.rand(pick2.numel())
    fit = fit_inverse_depth_affine(rel, metric)
    assert fit.alpha == pytest.approx(2.5, rel=1e-4)
    assert fit.beta == pytest.approx(-0.02, abs=1e-4)
    # The trimming is what saves it: with the full range the same data gives a badly wrong fit.
    untrimmed = fit_inverse_depth_affine(rel, metric, quantiles=(0.0, 1.0))
    assert untrimmed is not None and abs(untrimmed.alpha - 2.5) > 1.0


def test_fit_excludes_masked_dynamic_pixels():
    torch.manual_seed(2)
    depth = tum_depth(16)
    rel = relative_from_metric(depth, 1.7, 0.05)
    metric = depth.clone()
    # A "person": a block whose metric depth is garbage well inside the normal range (quantiles cannot catch it).
    lo, hi = float(depth[depth > 0].quantile(0.3)), float(depth[depth > 0].quantile(0.7))
    person = torch.zeros_like(depth, dtype=torch.bool)
    person[100:400, 200:380] = True
    metric[person] = lo + (hi - lo) * torch.rand(int(person.sum()))
    static = ~person
    fit = fit_inverse_depth_affine(rel, metric, static_mask=static)
    assert fit.alpha == pytest.approx(1.7, rel=1e-5) and fit.beta == pytest.approx(0.05, abs=1e-5)
    unmasked = fit_inverse_depth_affine(rel, metric)
    assert abs(unmasked.alpha - 1.7) > 0.05
    with pytest.raises(TypeError):
        fit_inverse_depth_affine(rel, metric, static_mask=static.to(torch.uint8))


def test_fit_failures_return_none():
    depth = tum_depth(10)
    rel = relative_from_metric(depth, 2.5, -0.02)
    few = torch.zeros_like(depth)
    few[:5, :5] = depth[:5, :5].clamp_min(1.0)
    assert fit_inverse_depth_affine(rel, few) is None                                    # too few pixels
    assert fit_inverse_depth_affine(torch.full_like(depth, 0.3), depth) is None          # constant: degenerate
    assert fit_inverse_depth_affine(rel, torch.where(depth > 0, 1.0 / depth.clamp_min(1e-3), depth)) is None  # alpha<0
    nan = torch.full_like(depth, float("nan"))
    assert fit_inverse_depth_affine(nan, nan) is None                                    # all invalid
    with pytest.raises(ValueError):
        fit_inverse_depth_affine(rel, depth[:, :-1])
    with pytest.raises(ValueError):
        fit_inverse_depth_affine(rel, depth, quantiles=(0.9, 0.1))


# ----------------------------------------------------------------------------- streaming with momentum


def test_first_frame_initialises_without_momentum():
    depth = tum_depth(10)
    aligner = StreamingDepthAligner(cfg(momentum=0.99))
    assert not aligner.initialized and math.isnan(aligner.alpha) and math.isnan(aligner.beta)
    out = aligner.update(relative_from_metric(depth, 3.0, 0.01), depth)
    assert isinstance(out, AlignedDepth) and out.fit_ok and out.reason is None and not out.passthrough
    assert out.alpha == pytest.approx(3.0, rel=1e-5) and out.beta == pytest.approx(0.01, abs=1e-6)
    assert aligner.initialized and aligner.alpha == out.alpha and aligner.beta == out.beta
    # The aligned depth reproduces the metric depth where both are valid, NaN where the relative one is missing.
    valid = depth > 0
    assert torch.allclose(out.depth_m[valid], depth[valid], rtol=1e-4)
    assert torch.isnan(out.depth_m[~valid]).all()
    assert out.depth_m.dtype == torch.float32 and out.depth_m.shape == (480, 640)
    assert out.depth_m.device.type == "cpu"


def test_momentum_follows_formula_over_three_frames():
    m = 0.9
    depths = [tum_depth(10), tum_depth(16), tum_depth(24)]
    truth = [(2.0, 0.10), (2.6, -0.05), (1.5, 0.02)]
    aligner = StreamingDepthAligner(cfg(momentum=m))
    fits, outs = [], []
    for depth, (a, b) in zip(depths, truth):
        rel = relative_from_metric(depth, a, b)
        outs.append(aligner.update(rel, depth))
        fits.append(outs[-1].fit)
    assert all(o.fit_ok for o in outs)
    for f, (a, b) in zip(fits, truth):          # raw per-frame fits are the truth
        assert f.alpha == pytest.approx(a, rel=1e-5) and f.beta == pytest.approx(b, abs=1e-5)
    exp_a, exp_b = fits[0].alpha, fits[0].beta
    assert outs[0].alpha == exp_a and outs[0].beta == exp_b
    for k in (1, 2):
        exp_a = m * exp_a + (1 - m) * fits[k].alpha
        exp_b = m * exp_b + (1 - m) * fits[k].beta
        assert outs[k].alpha == pytest.approx(exp_a, rel=1e-12)
        assert outs[k].beta == pytest.approx(exp_b, rel=1e-12, abs=1e-15)
    # With the truth: alpha_2 = 0.9*2.0 + 0.1*2.6 = 2.06, alpha_3 = 0.9*2.06 + 0.1*1.5 = 2.004.
    assert outs[1].alpha == pytest.approx(2.06, rel=1e-5) and outs[2].alpha == pytest.approx(2.004, rel=1e-5)
    assert outs[1].beta == pytest.approx(0.085, abs=1e-5) and outs[2].beta == pytest.approx(0.0785, abs=1e-5)
    # The depth of frame 3 uses the smoothed parameters: 1 / max(alpha * rel + beta, eps).
    rel3 = relative_from_metric(depths[2], *truth[2])
    v = depths[2] > 0
    expected = 1.0 / (outs[2].alpha * rel3[v].double() + outs[2].beta).clamp_min(1e-6)
    assert torch.allclose(outs[2].depth_m[v].double(), expected, rtol=1e-5)


def test_default_momentum_barely_moves():
    depth = tum_depth(10)
    aligner = StreamingDepthAligner(cfg())
    aligner.update(relative_from_metric(depth, 2.0, 0.0), depth)
    out = aligner.update(relative_from_metric(depth, 4.0, 0.0), depth)
    assert out.alpha == pytest.approx(0.99 * 2.0 + 0.01 * 4.0, rel=1e-5)


def test_failed_fit_reuses_previous_parameters_with_reason():
    depth = tum_depth(10)
    aligner = StreamingDepthAligner(cfg(momentum=0.5, min_pixels=500))
    rel = relative_from_metric(depth, 2.0, 0.05)
    first = aligner.update(rel, depth)
    # Too few pixels: metric depth only in a 10x10 corner.
    sparse = torch.zeros_like(depth)
    sparse[200:210, 300:310] = depth[200:210, 300:310]
    out = aligner.update(rel, sparse)
    assert not out.fit_ok and out.fit is None and "too few" in out.reason and "previous" in out.reason
    assert (out.alpha, out.beta) == (first.alpha, first.beta)
    assert torch.equal(torch.isnan(out.depth_m), torch.isnan(first.depth_m))
    assert torch.allclose(out.depth_m[depth > 0], first.depth_m[depth > 0])
    # Degenerate relative depth (constant).
    out = aligner.update(torch.full_like(depth, 0.4), depth)
    assert not out.fit_ok and "degenerate" in out.reason and out.alpha == first.alpha
    assert torch.allclose(out.depth_m, torch.full_like(depth, 1.0 / (first.alpha * 0.4 + first.beta)))
    # Inverted relation: alpha <= 0.
    out = aligner.update(relative_from_metric(depth, 2.0, 0.05).reciprocal().nan_to_num(0.0, 0.0, 0.0), depth)
    assert not out.fit_ok and "alpha" in out.reason and out.alpha == first.alpha
    assert aligner.failed_fits == 3 and aligner.frames == 4
    # A good frame after failures blends with the kept parameters.
    out = aligner.update(relative_from_metric(depth, 3.0, 0.05), depth)
    assert out.fit_ok and out.alpha == pytest.approx(0.5 * 2.0 + 0.5 * 3.0, rel=1e-5)


def test_all_invalid_input():
    nan = torch.full((48, 64), float("nan"))
    aligner = StreamingDepthAligner(cfg(min_pixels=10))
    out = aligner.update(nan, nan)
    assert not out.fit_ok and "no previous parameters" in out.reason
    assert math.isnan(out.alpha) and math.isnan(out.beta) and not aligner.initialized
    assert out.depth_m.shape == (48, 64) and out.depth_m.dtype == torch.float32 and torch.isnan(out.depth_m).all()
    out = aligner.update(torch.zeros(48, 64), torch.full((48, 64), -1.0))   # zeros / negatives are invalid too
    assert not out.fit_ok and torch.isnan(out.depth_m).all()
    # The first good frame after that initialises (no momentum against nothing).
    depth = tum_depth(10)[::10, ::10].contiguous()
    out = aligner.update(relative_from_metric(depth, 2.0, 0.1), depth)
    assert out.fit_ok and out.alpha == pytest.approx(2.0, rel=1e-5)
    # Then an all-invalid metric frame keeps the parameters and still aligns the valid relative pixels.
    out = aligner.update(relative_from_metric(depth, 2.0, 0.1), torch.zeros_like(depth))
    assert not out.fit_ok and out.alpha == pytest.approx(2.0, rel=1e-5)
    assert torch.isfinite(out.depth_m[depth > 0]).all()


def test_eps_clamps_negative_inverse_depth():
    rel = torch.tensor([[1.0, 0.5], [0.01, float("inf")]])
    aligner = StreamingDepthAligner(cfg(min_pixels=2, eps=1e-3))
    aligner._alpha, aligner._beta = 1.0, -0.1    # white-box: set parameters to check the formula alone
    metric = torch.full_like(rel, float("nan"))
    out = aligner.update(rel, metric)
    assert not out.fit_ok
    assert out.depth_m[0, 0].item() == pytest.approx(1.0 / 0.9)
    assert out.depth_m[0, 1].item() == pytest.approx(1.0 / 0.4)
    assert out.depth_m[1, 0].item() == pytest.approx(1.0 / 1e-3)    # 0.01 - 0.1 < eps -> clamped
    assert math.isnan(out.depth_m[1, 1].item())


def test_reset_forgets_parameters():
    depth = tum_depth(10)
    aligner = StreamingDepthAligner(cfg(momentum=0.9))
    aligner.update(relative_from_metric(depth, 2.0, 0.0), depth)
    aligner.reset()
    assert not aligner.initialized and aligner.frames == 0
    out = aligner.update(relative_from_metric(depth, 5.0, 0.0), depth)
    assert out.alpha == pytest.approx(5.0, rel=1e-5)


# ----------------------------------------------------------------------------- single source


def test_metric_only_passes_through_unchanged():
    depth = tum_depth(10)
    aligner = StreamingDepthAligner(cfg())
    out = align_or_pass_through(aligner, None, depth)
    assert out.passthrough and not out.fit_ok and out.fit is None
    assert torch.equal(out.depth_m, depth) and out.depth_m.dtype == torch.float32
    assert not aligner.initialized and aligner.frames == 0
    assert align_or_pass_through(None, None, depth.double()).depth_m.dtype == torch.float32


def test_relative_only_is_an_error():
    depth = tum_depth(10)
    rel = relative_from_metric(depth, 2.0, 0.0)
    with pytest.raises(ValueError, match="cannot be made metric"):
        align_or_pass_through(StreamingDepthAligner(cfg()), rel, None)
    with pytest.raises(ValueError):
        align_or_pass_through(StreamingDepthAligner(cfg()), None, None)


def test_both_sources_align():
    depth = tum_depth(10)
    aligner = StreamingDepthAligner(cfg())
    out = align_or_pass_through(aligner, relative_from_metric(depth, 2.0, 0.03), depth)
    assert out.fit_ok and not out.passthrough and out.alpha == pytest.approx(2.0, rel=1e-5)
    with pytest.raises(ValueError):
        align_or_pass_through(None, relative_from_metric(depth, 2.0, 0.03), depth)


def test_float64_inputs_give_float32_output():
    depth = tum_depth(10).double()
    out = StreamingDepthAligner(cfg(fit_stride=2)).update(relative_from_metric(depth.float(), 2.0, 0.0).double(), depth)
    assert out.fit_ok and out.depth_m.dtype == torch.float32 and out.depth_m.shape == depth.shape


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_cuda_matches_cpu():
    depth = tum_depth(10)
    rel = relative_from_metric(depth, 2.0, 0.03)
    cpu = StreamingDepthAligner(cfg()).update(rel, depth)
    gpu = StreamingDepthAligner(cfg()).update(rel.cuda(), depth.cuda())
    assert gpu.depth_m.device.type == "cuda"
    assert gpu.alpha == pytest.approx(cpu.alpha, rel=1e-6)
    assert torch.allclose(gpu.depth_m.cpu(), cpu.depth_m, rtol=1e-5, equal_nan=True)
