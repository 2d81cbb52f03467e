"""Per-frame alignment of a relative inverse depth to a metric depth, smoothed over time (EgoX method, section 2).

Two depth sources describe the same exo frame:

- ``relative_inv_depth``: a video depth model's *relative inverse* depth (temporally smooth, known only up to an
  affine map), float tensor (H, W), unitless; valid where finite and > 0.
- ``metric_depth_m``: a monocular or sensor *metric* depth (sharp, flickers over time), float tensor (H, W), metres;
  valid where finite and > 0.

Per frame, ``alpha, beta`` are fitted by least squares in inverse-depth space,
``alpha * relative_inv_depth + beta ~= 1 / metric_depth_m``, on pixels that are valid in both sources, static
(``static_mask`` True) and inside the configured quantile range of *both* sources. The parameters are then smoothed
with momentum ``m``: ``p_t = m * p_{t-1} + (1 - m) * p_fit(t)``, initialised by the first successful fit; a failed fit
reuses the previous parameters. The aligned depth is ``1 / max(alpha * relative_inv_depth + beta, eps)`` metres,
NaN where the relative inverse depth is invalid.

If only a metric depth exists (for example an RGB-D camera), :func:`align_or_pass_through` returns it unchanged and no
alignment is attempted; a relative depth without any metric depth cannot be made metric and raises ``ValueError``.

All per-pixel work runs on the device of the input tensors (CPU or CUDA); the fit's sums are taken in float64.
Each :meth:`StreamingDepthAligner.update` reads the fitted scalars back to the host once.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from egox_ros.core.config import param, validate

__all__ = [
    "AffineFit",
    "AlignedDepth",
    "DepthAlignmentConfig",
    "StreamingDepthAligner",
    "align_or_pass_through",
    "fit_inverse_depth_affine",
]


@dataclass
class DepthAlignmentConfig:
    """Alignment of relative inverse depth to metric depth (ROS parameter section ``depth_alignment``)."""
    momentum: float = param(0.99, "temporal momentum m of alpha/beta: p_t = m * p_(t-1) + (1 - m) * p_fit "
                                  "(0 = no smoothing; must be below 1)", (0.0, 1.0))
    quantile_low: float = param(0.1, "per source, pixels below this quantile are left out of the fit", (0.0, 1.0))
    quantile_high: float = param(0.9, "per source, pixels above this quantile are left out of the fit", (0.0, 1.0))
    min_pixels: int = param(100, "a fit with fewer usable pixels (after stride, masks and quantiles) fails",
                            (2, 1_000_000_000))
    eps: float = param(1e-6, "aligned inverse depth is clamped to at least this before inverting [1/m]", (1e-12, 1.0))
    fit_stride: int = param(2, "fit on every n-th pixel in x and y (n^2 fewer pixels); the aligned depth is "
                               "always full resolution", (1, 64))

    def __post_init__(self) -> None:
        validate(self)
        if not self.momentum < 1.0:
            raise ValueError(f"DepthAlignmentConfig.momentum ({self.momentum}) must be below 1")
        if not self.quantile_low < self.quantile_high:
            raise ValueError(f"DepthAlignmentConfig.quantile_low ({self.quantile_low}) must be below "
                             f"quantile_high ({self.quantile_high})")


@dataclass(frozen=True)
class AffineFit:
    """One frame's least-squares fit ``alpha * relative_inv_depth + beta ~= 1 / metric_depth_m``.

    alpha (> 0, metres^-1 per relative unit) and beta (1/m) are Python floats; ``pixels`` is the number of pixels
    used; ``residual_rms`` is the root-mean-square residual of the fit in inverse depth [1/m].
    """
    alpha: float
    beta: float
    pixels: int
    residual_rms: float


@dataclass
class AlignedDepth:
    """Result of one frame.

    depth_m: float32 (H, W) metres on the input device; NaN where no depth can be given.
    alpha, beta: the (smoothed) parameters applied to this frame; NaN when none exist yet or in pass-through.
    fit_ok: whether this frame's own fit succeeded (False in pass-through, where no fit is attempted).
    reason: why the fit failed or was skipped; None when fit_ok.
    fit: this frame's raw (unsmoothed) fit, None when it failed or was skipped.
    passthrough: True when the metric depth was returned as-is (no relative source).
    """
    depth_m: torch.Tensor
    alpha: float
    beta: float
    fit_ok: bool
    reason: str | None = None
    fit: AffineFit | None = None
    passthrough: bool = False


def _check_pair(relative_inv_depth: torch.Tensor, metric_depth_m: torch.Tensor,
                static_mask: torch.Tensor | None) -> None:
    if relative_inv_depth.dim() != 2:
        raise ValueError(f"relative_inv_depth must be (H, W); got shape {tuple(relative_inv_depth.shape)}")
    if metric_depth_m.shape != relative_inv_depth.shape:
        raise ValueError(f"metric_depth_m shape {tuple(metric_depth_m.shape)} differs from relative_inv_depth "
                         f"shape {tuple(relative_inv_depth.shape)}")
    if metric_depth_m.device != relative_inv_depth.device:
        raise ValueError(f"depth tensors on different devices: {relative_inv_depth.device} and {metric_depth_m.device}")
    if not (relative_inv_depth.is_floating_point() and metric_depth_m.is_floating_point()):
        raise TypeError("depth tensors must be floating point")
    if static_mask is not None:
        if static_mask.shape != relative_inv_depth.shape:
            raise ValueError(f"static_mask shape {tuple(static_mask.shape)} differs from depth shape "
                             f"{tuple(relative_inv_depth.shape)}")
        if static_mask.dtype != torch.bool:
            raise TypeError(f"static_mask must be torch.bool (True = static, usable); got {static_mask.dtype}")


def _quantile_bounds(values: torch.Tensor, q_low: float, q_high: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Lower and upper quantiles (nearest rank) of a non-empty 1-D tensor, as 0-d tensors on its device."""
    n = values.numel()
    # kthvalue is a selection (no full sort) and has no input-size limit, unlike torch.quantile.
    k_low = min(n, max(1, int(math.floor(q_low * (n - 1))) + 1))
    k_high = min(n, max(1, int(math.ceil(q_high * (n - 1))) + 1))
    low = values.kthvalue(k_low).values if q_low > 0.0 else values.min()
    high = values.kthvalue(k_high).values if q_high < 1.0 else values.max()
    return low, high


def _fit(relative_inv_depth: torch.Tensor, metric_depth_m: torch.Tensor, static_mask: torch.Tensor | None,
         quantiles: tuple[float, float], min_pixels: int, stride: int) -> tuple[AffineFit | None, str | None]:
    """The fit, or None with the reason it failed."""
    _check_pair(relative_inv_depth, metric_depth_m, static_mask)
    q_low, q_high = float(quantiles[0]), float(quantiles[1])
    if not (0.0 <= q_low < q_high <= 1.0):
        raise ValueError(f"quantiles must satisfy 0 <= low < high <= 1; got {quantiles}")
    if stride > 1:
        relative_inv_depth = relative_inv_depth[::stride, ::stride]
        metric_depth_m = metric_depth_m[::stride, ::stride]
        static_mask = None if static_mask is None else static_mask[::stride, ::stride]
    x = relative_inv_depth.reshape(-1)
    y = metric_depth_m.reshape(-1)
    usable = torch.isfinite(x) & (x > 0) & torch.isfinite(y) & (y > 0)
    if static_mask is not None:
        usable &= static_mask.reshape(-1)
    x = x[usable].to(torch.float32)
    y = y[usable].to(torch.float32).reciprocal()   # metric inverse depth [1/m]; same quantile ranks as depth
    n_usable = x.numel()
    if n_usable < max(min_pixels, 2):
        return None, f"too few usable pixels: {n_usable} valid and static (need {min_pixels})"
    x_low, x_high = _quantile_bounds(x, q_low, q_high)
    y_low, y_high = _quantile_bounds(y, q_low, q_high)
    inside = (x >= x_low) & (x <= x_high) & (y >= y_low) & (y <= y_high)
    x = x[inside].to(torch.float64)
    y = y[inside].to(torch.float64)
    n = x.numel()
    if n < max(min_pixels, 2):
        return None, f"too few pixels inside the quantile ranges: {n} (need {min_pixels})"
    # Closed-form 2x2 normal equations, written on centred data (same solution, no cancellation).
    x_mean = x.mean()
    y_mean = y.mean()
    dx = x - x_mean
    dy = y - y_mean
    sxx = (dx * dx).sum()
    sxy = (dx * dy).sum()
    alpha_t = sxy / sxx
    beta_t = y_mean - alpha_t * x_mean
    resid = alpha_t * dx - dy
    rms_t = (resid * resid).mean().sqrt()
    stats = torch.stack([alpha_t, beta_t, rms_t, sxx, x_mean.abs()]).cpu().tolist()   # one host sync
    alpha, beta, rms, sxx_f, x_scale = stats
    if not (sxx_f > 1e-12 * n * max(x_scale * x_scale, 1e-300)) or not math.isfinite(sxx_f):
        return None, f"degenerate fit: relative inverse depth (nearly) constant over {n} pixels"
    if not (math.isfinite(alpha) and math.isfinite(beta) and math.isfinite(rms)):
        return None, f"non-finite fit: alpha={alpha}, beta={beta}"
    if alpha <= 0.0:
        return None, f"fit gave alpha={alpha:.6g} <= 0 (relative and metric inverse depth not positively related)"
    return AffineFit(alpha=alpha, beta=beta, pixels=n, residual_rms=rms), None


def fit_inverse_depth_affine(relative_inv_depth: torch.Tensor, metric_depth_m: torch.Tensor,
                             static_mask: torch.Tensor | None = None, quantiles: tuple[float, float] = (0.1, 0.9),
                             min_pixels: int = 100, stride: int = 1) -> AffineFit | None:
    """Fit ``alpha * relative_inv_depth + beta ~= 1 / metric_depth_m`` by least squares; None if the fit fails.

    relative_inv_depth: float (H, W), relative inverse depth (unitless). metric_depth_m: float (H, W), metres, same
    device. static_mask: optional bool (H, W), True where a pixel is static and may be used (False for people and
    other dynamic objects). A pixel is used when both depths are finite and > 0, it is static, and both its relative
    inverse depth and its metric inverse depth lie within the ``quantiles`` (low, high) of that source over the
    valid static pixels. ``stride`` n fits on every n-th pixel in x and y. Fails (None) with fewer than
    ``min_pixels`` such pixels, a degenerate (constant) relative depth, a non-finite result, or alpha <= 0.
    """
    return _fit(relative_inv_depth, metric_depth_m, static_mask, quantiles, min_pixels, stride)[0]


def _apply(relative_inv_depth: torch.Tensor, alpha: float, beta: float, eps: float) -> torch.Tensor:
    """Aligned metric depth float32 (H, W) [m]: ``1 / max(alpha * inv + beta, eps)``; NaN where inv is invalid."""
    inv = relative_inv_depth.to(torch.float32)
    valid = torch.isfinite(inv) & (inv > 0)
    depth = (inv * alpha + beta).clamp_min(eps).reciprocal()
    return torch.where(valid, depth, torch.full_like(depth, float("nan")))


class StreamingDepthAligner:
    """Frame-by-frame alignment with momentum-smoothed parameters; feed frames in time order.

    Not thread-safe: one aligner per depth stream, called from one thread (or under the caller's lock).
    """

    def __init__(self, config: DepthAlignmentConfig | None = None) -> None:
        self.config = config if config is not None else DepthAlignmentConfig()
        self._alpha: float | None = None
        self._beta: float | None = None
        self.frames = 0
        self.failed_fits = 0

    def reset(self) -> None:
        """Forget the parameters; the next successful fit initialises them again."""
        self._alpha = None
        self._beta = None
        self.frames = 0
        self.failed_fits = 0

    @property
    def initialized(self) -> bool:
        """True once a fit has succeeded (parameters exist)."""
        return self._alpha is not None

    @property
    def alpha(self) -> float:
        """Current smoothed alpha [1/m per relative unit]; NaN before the first successful fit."""
        return float("nan") if self._alpha is None else self._alpha

    @property
    def beta(self) -> float:
        """Current smoothed beta [1/m]; NaN before the first successful fit."""
        return float("nan") if self._beta is None else self._beta

    def update(self, relative_inv_depth: torch.Tensor, metric_depth_m: torch.Tensor,
               static_mask: torch.Tensor | None = None) -> AlignedDepth:
        """Fit this frame, update the smoothed parameters, and return the aligned depth.

        relative_inv_depth: float (H, W) relative inverse depth; metric_depth_m: float (H, W) metres, same device;
        static_mask: optional bool (H, W), True = static (usable for the fit). Returns :class:`AlignedDepth` with
        depth_m float32 (H, W) metres on the input device. On a failed fit the previous parameters are applied
        (fit_ok False, reason set); before any successful fit, depth_m is all NaN and alpha/beta are NaN.
        """
        cfg = self.config
        fit, reason = _fit(relative_inv_depth, metric_depth_m, static_mask,
                           (cfg.quantile_low, cfg.quantile_high), cfg.min_pixels, cfg.fit_stride)
        self.frames += 1
        if fit is not None:
            if self._alpha is None:
                self._alpha, self._beta = fit.alpha, fit.beta
            else:
                m = cfg.momentum
                self._alpha = m * self._alpha + (1.0 - m) * fit.alpha
                self._beta = m * self._beta + (1.0 - m) * fit.beta
        else:
            self.failed_fits += 1
            if self._alpha is not None:
                reason = f"{reason}; reusing previous parameters"
            else:
                reason = f"{reason}; no previous parameters yet"
        if self._alpha is None:
            depth = torch.full(relative_inv_depth.shape, float("nan"), dtype=torch.float32,
                               device=relative_inv_depth.device)
        else:
            depth = _apply(relative_inv_depth, self._alpha, self._beta, cfg.eps)
        return AlignedDepth(depth_m=depth, alpha=self.alpha, beta=self.beta, fit_ok=fit is not None,
                            reason=reason, fit=fit)


def align_or_pass_through(aligner: StreamingDepthAligner | None, relative_inv_depth: torch.Tensor | None,
                          metric_depth_m: torch.Tensor | None,
                          static_mask: torch.Tensor | None = None) -> AlignedDepth:
    """Align when both sources exist; pass a lone metric depth through unchanged; refuse a lone relative depth.

    - both given: ``aligner.update(relative_inv_depth, metric_depth_m, static_mask)``.
    - only ``metric_depth_m`` (float (H, W) metres, e.g. an RGB-D topic): returned as float32 on its device without
      alignment (passthrough True, fit_ok False, alpha/beta NaN); the aligner (may be None) is left untouched.
    - only ``relative_inv_depth``: ValueError, since an affine-ambiguous depth cannot be made metric.
    - neither: ValueError.
    """
    if relative_inv_depth is None and metric_depth_m is None:
        raise ValueError("no depth source: need a metric depth, optionally with a relative inverse depth")
    if metric_depth_m is None:
        raise ValueError("only a relative (affine-ambiguous) inverse depth is available; it cannot be made metric "
                         "without a metric depth source (configure a metric depth model or an RGB-D depth topic)")
    if relative_inv_depth is None:
        if metric_depth_m.dim() != 2:
            raise ValueError(f"metric_depth_m must be (H, W); got shape {tuple(metric_depth_m.shape)}")
        return AlignedDepth(depth_m=metric_depth_m.to(torch.float32), alpha=float("nan"), beta=float("nan"),
                            fit_ok=False, reason="only metric depth given: used as-is, no alignment",
                            passthrough=True)
    if aligner is None:
        raise ValueError("both depth sources given but no StreamingDepthAligner to align them")
    return aligner.update(relative_inv_depth, metric_depth_m, static_mask)
