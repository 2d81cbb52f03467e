"""The pinhole camera with OpenCV / ROS distortion (plumb_bob, rational_polynomial), in torch.

:class:`PinholeCamera` distorts normalised coordinates ``x = X / Z``,
``y = Y / Z`` as OpenCV does, with ``r^2 = x^2 + y^2``:
``x_d = x R + 2 p1 x y + p2 (r^2 + 2 x^2)``,
``y_d = y R + p1 (r^2 + 2 y^2) + 2 p2 x y``, where
``R = 1 + k1 r^2 + k2 r^4 + k3 r^6`` (ROS ``plumb_bob``: ``k1 k2 p1 p2 [k3]``)
or ``R = (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)``
(ROS ``rational_polynomial``: ``k1 k2 p1 p2 k3 k4 k5 k6``);
then ``u = fx x_d + cx``, ``v = fy y_d + cy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import torch

from egox_ros.core.geometry.cameras.base import _MIN_Z, CameraModel, _first_positive_root

# Pinhole undistortion in ``unproject``: UNDISTORT_ITERATIONS fixed-point steps
# ``x <- (x_d - tangential(x)) / R(r^2)`` bring x into the basin of Newton's
# method, then UNDISTORT_NEWTON_STEPS Newton steps on the 2-D distortion map
# (analytic Jacobian) polish it.  Worst-case round-trip error (unproject, then
# project) over every pixel and the outer image corners:
# * plumb_bob, TUM freiburg1 Kinect (k1..k3 = 0.2624, -0.9531, 1.1633): fixed
#   point alone 13 px after 1 step, 0.44 px after 4, 4.8e-3 px after 8 and
#   the float32 floor of 1.3e-4 px after 12; 8 steps + 2 Newton: 1.3e-4 px.
# * rational_polynomial, Azure-Kinect-colour-like lens (1280x720, fx = 610,
#   k1..k6 = 0.45, -2.6, 1.5, 0.33, -2.4, 1.4, p1, p2 = 5e-4, -3e-4): fixed
#   point alone 0.12 px after 4, 1.3e-3 after 8; with 2 Newton steps the
#   float32 floor of this lens, 1e-3 px, after any number of fixed-point steps
#   (its numerator and denominator cancel to ~0.4 from terms of ~4, so float32
#   evaluation of the model itself is only good to ~1e-3 px at the corners).
# Pixels outside the range where the lens map is invertible (beyond
# ``max_valid_radius2``) get meaningless rays.  Use FisheyeCamera for fisheye lenses.
UNDISTORT_ITERATIONS = 8
UNDISTORT_NEWTON_STEPS = 2


@dataclass(frozen=True)
class PinholeCamera(CameraModel):
    """Pinhole camera with optional OpenCV distortion (see the module docstring).

    ``distortion``: empty (none), ``(k1, k2, p1, p2[, k3])`` (plumb_bob) or
    ``(k1, k2, p1, p2, k3, k4, k5, k6)`` (rational_polynomial); all zeros
    means no distortion.
    """

    _DISTORTION_COUNTS: ClassVar[tuple[int, ...]] = (0, 4, 5, 8)
    _DISTORTION_HELP: ClassVar[str] = ("0, 4 or 5 (plumb_bob: k1 k2 p1 p2 [k3]) or 8 "
                                       "(rational_polynomial: k1 k2 p1 p2 k3 k4 k5 k6)")

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "_max_r2", _monotonic_r2_limit(self._coeffs()))

    @property
    def is_rational(self) -> bool:
        return len(self.distortion) == 8

    @property
    def camera_info_distortion(self) -> tuple[str, tuple[float, ...]]:
        if self.is_rational:
            return "rational_polynomial", self.distortion
        return "plumb_bob", (self.distortion + (0.0,) * 5)[:5]

    @property
    def max_valid_radius2(self) -> float:
        """Largest squared normalised radius ``(X^2 + Y^2) / Z^2`` that ``project`` accepts.

        The radial map ``r R(r^2)`` is only invertible up to its first turning
        point (or a pole of the rational denominator); points beyond it would
        fold back into the image, so ``project`` marks them invalid.  ``inf``
        when it never turns (no distortion, or e.g. the TUM freiburg1 lens).
        """
        return self._max_r2  # type: ignore[attr-defined]

    def _coeffs(self) -> tuple[float, ...]:
        """``(k1, k2, p1, p2, k3, k4, k5, k6)``, zero-padded."""
        return (self.distortion + (0.0,) * 8)[:8]

    def _rotated_distortion_90(self, clockwise: bool) -> tuple[float, ...]:
        # The tangential term is 2 (x . q) x + r^2 q with the in-plane vector q = (p2, p1); it turns with the frame.
        if not self.distortion:
            return self.distortion
        d = list(self.distortion)
        p1, p2 = d[2], d[3]
        d[2], d[3] = (p2, -p1) if clockwise else (-p2, p1)
        return tuple(d)

    # ------------------------------------------------------------------ distortion

    def _radial(self, r2: torch.Tensor) -> torch.Tensor:
        k1, k2, _, _, k3, k4, k5, k6 = self._coeffs()
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        if self.is_rational:
            radial = radial / (1.0 + r2 * (k4 + r2 * (k5 + r2 * k6)))
        return radial

    def _radial_and_slope(self, r2: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Radial factor R(r^2) and its derivative dR / d(r^2)."""
        k1, k2, _, _, k3, k4, k5, k6 = self._coeffs()
        num = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        dnum = k1 + r2 * (2.0 * k2 + r2 * 3.0 * k3)
        if not self.is_rational:
            return num, dnum
        den = 1.0 + r2 * (k4 + r2 * (k5 + r2 * k6))
        dden = k4 + r2 * (2.0 * k5 + r2 * 3.0 * k6)
        return num / den, (dnum * den - num * dden) / (den * den)

    def distort_normalized(self, xy: torch.Tensor) -> torch.Tensor:
        """Apply the distortion to normalised coordinates ``(..., 2)``."""
        if not self.has_distortion:
            return xy
        _, _, p1, p2 = self._coeffs()[:4]
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = self._radial(r2)
        xy2 = 2.0 * x * y
        xd = x * radial + p1 * xy2 + p2 * (r2 + 2.0 * x * x)
        yd = y * radial + p1 * (r2 + 2.0 * y * y) + p2 * xy2
        return torch.stack((xd, yd), dim=-1)

    def undistort_normalized(self, xy_d: torch.Tensor) -> torch.Tensor:
        """Invert ``distort_normalized``: fixed-point steps, then Newton steps (see ``UNDISTORT_ITERATIONS``)."""
        if not self.has_distortion:
            return xy_d
        _, _, p1, p2 = self._coeffs()[:4]
        xd, yd = xy_d[..., 0], xy_d[..., 1]
        x, y = xd, yd
        for _ in range(UNDISTORT_ITERATIONS):
            r2 = x * x + y * y
            inv_radial = 1.0 / self._radial(r2)
            xy2 = 2.0 * x * y
            dx = p1 * xy2 + p2 * (r2 + 2.0 * x * x)
            dy = p1 * (r2 + 2.0 * y * y) + p2 * xy2
            x = (xd - dx) * inv_radial
            y = (yd - dy) * inv_radial
        for _ in range(UNDISTORT_NEWTON_STEPS):
            r2 = x * x + y * y
            radial, slope = self._radial_and_slope(r2)
            xy2 = 2.0 * x * y
            ex = x * radial + p1 * xy2 + p2 * (r2 + 2.0 * x * x) - xd
            ey = y * radial + p1 * (r2 + 2.0 * y * y) + p2 * xy2 - yd
            cross = xy2 * slope + 2.0 * (p1 * x + p2 * y)
            jxx = radial + 2.0 * x * x * slope + 2.0 * p1 * y + 6.0 * p2 * x
            jyy = radial + 2.0 * y * y * slope + 6.0 * p1 * y + 2.0 * p2 * x
            det = jxx * jyy - cross * cross
            det = torch.where(det.abs() > 1e-12, det, 1e-12)
            x = x - (jyy * ex - cross * ey) / det
            y = y - (jxx * ey - cross * ex) / det
        return torch.stack((x, y), dim=-1)

    # ------------------------------------------------------------------ projection

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``(..., 3)`` [m] -> pixels ``(..., 2)`` float32 and validity ``(...)`` bool.

        A point is valid where ``z > 1e-6`` (in front of the camera) and, for
        distorted cameras, where its normalised radius lies inside the range in
        which the distortion is invertible (see ``max_valid_radius2``); pixel
        coordinates of invalid points are finite but meaningless.  Validity does
        not check the image bounds.
        """
        if points_cam.shape[-1] != 3:
            raise ValueError(f"points_cam must have shape (..., 3), got {tuple(points_cam.shape)}")
        p = points_cam.to(torch.float32)
        z = p[..., 2]
        valid = z > _MIN_Z
        inv_z = 1.0 / torch.where(valid, z, torch.ones_like(z))
        xy = p[..., :2] * inv_z.unsqueeze(-1)
        if self.has_distortion:
            if math.isfinite(self._max_r2):  # type: ignore[attr-defined]
                valid = valid & ((xy * xy).sum(dim=-1) < self._max_r2)  # type: ignore[attr-defined]
            # Invalid points are distorted at the centre so that their pixels stay finite.
            xy = self.distort_normalized(torch.where(valid.unsqueeze(-1), xy, 0.0))
        u = xy[..., 0] * self.fx + self.cx
        v = xy[..., 1] * self.fy + self.cy
        return torch.stack((u, v), dim=-1), valid

    def unproject_rays(self, uv: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` -> rays ``(x, y, 1)`` ``(..., 3)`` with unit z (float32)."""
        if uv.shape[-1] != 2:
            raise ValueError(f"uv must have shape (..., 2), got {tuple(uv.shape)}")
        uv = uv.to(torch.float32)
        xy_d = torch.stack(((uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy), dim=-1)
        xy = self.undistort_normalized(xy_d)
        return torch.cat((xy, torch.ones_like(xy[..., :1])), dim=-1)


def _monotonic_r2_limit(coeffs: tuple[float, ...]) -> float:
    """First s = r^2 > 0 where d/dr [r N(s) / D(s)] = 0 or D(s) = 0 (pinhole radial map; coeffs k1 k2 p1 p2 k3..k6).

    The derivative's numerator is ``N D + 2 s (N' D - N D')`` (plumb_bob, D = 1:
    ``1 + 3 k1 s + 5 k2 s^2 + 7 k3 s^3``).
    """
    k1, k2, _, _, k3, k4, k5, k6 = coeffs
    P = np.polynomial.Polynomial
    n, d = P([1.0, k1, k2, k3]), P([1.0, k4, k5, k6])
    s = P([0.0, 1.0])
    slope = n * d + 2.0 * s * (n.deriv() * d - n * d.deriv())
    return min(_first_positive_root(slope.coef), _first_positive_root(d.coef))
