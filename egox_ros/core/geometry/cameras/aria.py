"""The Project Aria fisheye camera (FisheyeRadTanThinPrism, "Fisheye624"), in torch.

:class:`AriaFisheyeCamera` is Project Aria's ``FisheyeRadTanThinPrism``
("Fisheye624": 6 radial, 2 tangential, 4 thin-prism coefficients), the head
camera model of Ego-Exo4D.  Written from the model's definition in
facebookresearch/projectaria_tools,
``core/calibration/camera_projections/FisheyeRadTanThinPrism.h``: with
``r = sqrt(X^2 + Y^2)`` and ``theta = atan2(r, Z)`` (Aria takes atan of the normalised radius:
the same in front of the camera, the only region this class accepts),
``th_r = theta (1 + k0 theta^2 + k1 theta^4 + ... + k5 theta^12)``,
``(x_r, y_r) = th_r (X, Y) / r`` and ``rd^2 = x_r^2 + y_r^2``,
``x_d = x_r + p0 (2 x_r^2 + rd^2) + 2 p1 x_r y_r + s0 rd^2 + s1 rd^4``,
``y_d = y_r + p1 (2 y_r^2 + rd^2) + 2 p0 x_r y_r + s2 rd^2 + s3 rd^4``,
``u = fx x_d + cx``, ``v = fy y_d + cy``.  Aria calibrations have one focal
length (parameters ``f cx cy k0..k5 p0 p1 s0..s3``): set ``fx = fy = f``.
Note that Aria's ``p0`` multiplies ``2 x^2 + r^2`` (OpenCV's ``p2`` does),
and its ``p1`` OpenCV's ``p1``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from egox_ros.core.geometry.cameras.base import _MIN_Z, CameraModel, _first_positive_root

# ROS has no standard name for Project Aria's FisheyeRadTanThinPrism model; this package writes
# ARIA_DISTORTION_MODEL (12 coefficients k0..k5 p0 p1 s0..s3) and also reads "fisheye624", Aria's own short name.
ARIA_DISTORTION_MODEL = "fisheye_rad_tan_thin_prism"
ARIA_DISTORTION_ALIASES = (ARIA_DISTORTION_MODEL, "fisheye624")

# AriaFisheyeCamera.unproject_rays runs in float64: at most ARIA_UNDISTORT_NEWTON_STEPS Newton steps on the 2-D
# tangential + thin-prism map (started at the distorted point; these terms are small, so its Jacobian is near the
# identity), then at most ARIA_THETA_ITERATIONS bracketed Newton steps on theta in [0, max_theta] (a step that would
# leave the bracket bisects it instead, so it converges wherever th_r(theta) is monotonic).  Each loop stops once
# its largest step is below ARIA_STEP_TOLERANCE (Newton converges quadratically: the error left is ~its square).
# On the Aria-like test lenses (480x480, f = 130 and 200 px, see test/test_camera_aria.py) the 2-D steps fall to
# 6.6e-16 after 3 and the theta steps to 4e-16 after 5; 2 and 3 steps already give the float32 floor of the round
# trip (1.7e-5 px).  The caps leave a wide margin.  Pixels whose 2-D solve does not reproduce them
# to ARIA_UNDISTORT_TOLERANCE (normalised units, ~2e-7 px at f = 200) are treated as outside the image (NaN rays).
ARIA_UNDISTORT_NEWTON_STEPS = 12
ARIA_THETA_ITERATIONS = 40
ARIA_STEP_TOLERANCE = 1e-12
ARIA_UNDISTORT_TOLERANCE = 1e-9


@dataclass(frozen=True)
class AriaFisheyeCamera(CameraModel):
    """Project Aria fisheye camera, ``FisheyeRadTanThinPrism`` (see the module docstring).

    ``distortion``: 12 coefficients ``(k0, k1, k2, k3, k4, k5, p0, p1, s0, s1,
    s2, s3)``, Aria's order after the focal length and principal point; empty
    means all zeros, which is the pure equidistant projection ``r_px = f theta``
    (the same pixels as a :class:`FisheyeCamera` without coefficients), so the
    stored ``distortion`` always has 12 entries.  Aria calibrations have one
    focal length: use ``fx = fy = f`` (two are kept so that ``with_size`` can
    scale the axes independently).  ``fov_deg`` (at most 180) is the full field
    of view; the usable half-angle ``max_theta`` is the smallest of
    ``fov_deg / 2``, 90 degrees and the angle where ``th_r(theta)`` stops
    increasing.  The tangential and thin-prism terms are assumed small, as in
    real calibrations (their 2-D map must stay invertible over the image;
    pixels where it cannot be inverted get NaN rays).

    Ray contract (as :class:`FisheyeCamera`): ``unproject_rays`` is NaN for
    pixels outside the image circle (``theta > max_theta``, or 90 degrees and
    more), which a real Aria image has in its corners; ``unproject_directions``
    gives ``(0, 0, 1)`` and ``valid = False`` there.  Consumers of ``ray_grid``
    must drop non-finite rays (``lift_depth`` does).
    """

    fov_deg: float = 180.0

    _DISTORTION_COUNTS: ClassVar[tuple[int, ...]] = (0, 12)
    _DISTORTION_HELP: ClassVar[str] = "0 or 12 (fisheye_rad_tan_thin_prism: k0 k1 k2 k3 k4 k5 p0 p1 s0 s1 s2 s3)"

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.distortion:
            object.__setattr__(self, "distortion", (0.0,) * 12)
        try:
            fov = float(self.fov_deg)
        except (TypeError, ValueError):
            raise ValueError(f"fov_deg must be a number, got {self.fov_deg!r}") from None
        if not (0.0 < fov <= 180.0):
            raise ValueError(f"fov_deg must be in (0, 180] (the model is only defined in front of the camera), "
                             f"got {fov}")
        object.__setattr__(self, "fov_deg", fov)
        k = self.radial_coeffs
        slope = [1.0] + [(2 * i + 3) * k[i] for i in range(6)]   # d th_r / d theta, in theta^2
        theta_max = min(math.radians(fov) / 2.0, math.sqrt(_first_positive_root(slope)), 0.5 * math.pi)
        object.__setattr__(self, "_theta_max", theta_max)
        object.__setattr__(self, "_th_r_max", _aria_th_r(theta_max, k))

    # ------------------------------------------------------------------ coefficients

    @property
    def radial_coeffs(self) -> tuple[float, ...]:
        """``(k0, ..., k5)``."""
        return self.distortion[:6]

    @property
    def tangential_coeffs(self) -> tuple[float, float]:
        """``(p0, p1)``."""
        return self.distortion[6], self.distortion[7]

    @property
    def thin_prism_coeffs(self) -> tuple[float, float, float, float]:
        """``(s0, s1, s2, s3)``."""
        return self.distortion[8], self.distortion[9], self.distortion[10], self.distortion[11]

    @property
    def camera_info_distortion(self) -> tuple[str, tuple[float, ...]]:
        return ARIA_DISTORTION_MODEL, self.distortion

    @property
    def max_theta(self) -> float:
        """Largest angle from the optical axis [rad] that ``project`` accepts (at most 90 degrees)."""
        return self._theta_max  # type: ignore[attr-defined]

    @property
    def max_radius_px(self) -> tuple[float, float]:
        """Image circle radius along u and v [px], tangential / thin-prism terms left out: ``f th_r(max_theta)``."""
        return self.fx * self._th_r_max, self.fy * self._th_r_max  # type: ignore[attr-defined]

    def _rotated_distortion_90(self, clockwise: bool) -> tuple[float, ...]:
        # (p0, p1), (s0, s2) and (s1, s3) are in-plane vectors: tangential 2 (x_r . p) x_r + rd^2 p, thin prism
        # (s0, s2) rd^2 + (s1, s3) rd^4.  They turn with the frame: clockwise (x, y) -> (-y, x).
        def turn(a: float, b: float) -> tuple[float, float]:
            return (-b, a) if clockwise else (b, -a)
        s0, s1, s2, s3 = self.thin_prism_coeffs
        (p0, p1), (s0, s2), (s1, s3) = turn(*self.tangential_coeffs), turn(s0, s2), turn(s1, s3)
        return self.radial_coeffs + (p0, p1, s0, s1, s2, s3)

    # ------------------------------------------------------------------ model

    def _th_r(self, theta: torch.Tensor) -> torch.Tensor:
        t2 = theta * theta
        k0, k1, k2, k3, k4, k5 = self.radial_coeffs
        return theta * (1.0 + t2 * (k0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * (k4 + t2 * k5))))))

    def _th_r_slope(self, theta: torch.Tensor) -> torch.Tensor:
        t2 = theta * theta
        k0, k1, k2, k3, k4, k5 = self.radial_coeffs
        return 1.0 + t2 * (3.0 * k0 + t2 * (5.0 * k1 + t2 * (7.0 * k2 + t2 * (9.0 * k3 + t2 * (11.0 * k4
                                                                                              + t2 * 13.0 * k5)))))

    @property
    def _has_tan_prism(self) -> bool:
        return any(c != 0.0 for c in self.distortion[6:])

    def _tan_prism(self, xr: torch.Tensor, yr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_d, y_d)``: the tangential and thin-prism terms added to the radially distorted point."""
        p0, p1 = self.tangential_coeffs
        s0, s1, s2, s3 = self.thin_prism_coeffs
        rd2 = xr * xr + yr * yr
        cross = 2.0 * xr * yr
        xd = xr + p0 * (2.0 * xr * xr + rd2) + p1 * cross + rd2 * (s0 + s1 * rd2)
        yd = yr + p1 * (2.0 * yr * yr + rd2) + p0 * cross + rd2 * (s2 + s3 * rd2)
        return xd, yd

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``(..., 3)`` [m] -> pixels ``(..., 2)`` float32 and validity ``(...)`` bool.

        Valid where ``z > 1e-6`` and the angle from the optical axis is at most
        ``max_theta``; pixels of invalid points are finite but meaningless.
        Validity does not check the image bounds.  The model is evaluated in
        float64 for float64 input, else in float32.
        """
        if points_cam.shape[-1] != 3:
            raise ValueError(f"points_cam must have shape (..., 3), got {tuple(points_cam.shape)}")
        dtype = torch.float64 if points_cam.dtype == torch.float64 else torch.float32
        p = points_cam.to(dtype)
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        r = torch.hypot(x, y)
        theta = torch.atan2(r, z)
        valid = (z > _MIN_Z) & (theta <= self._theta_max)  # type: ignore[attr-defined]
        theta = torch.where(valid, theta, 0.0)
        on_axis = r <= 0.0
        scale = torch.where(on_axis | ~valid, 0.0, self._th_r(theta) / torch.where(on_axis, 1.0, r))
        xd, yd = x * scale, y * scale
        if self._has_tan_prism:
            xd, yd = self._tan_prism(xd, yd)
        uv = torch.stack((xd * self.fx + self.cx, yd * self.fy + self.cy), dim=-1)
        return uv.to(torch.float32), valid

    def _solve(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(theta, x_r, y_r, rho, inside)`` of pixels ``(..., 2)``, float64.

        ``(x_r, y_r)`` by Newton on the tangential + thin-prism map, ``rho`` its
        norm, theta with ``th_r(theta) = rho`` by bracketed Newton on
        ``[0, max_theta]``; ``inside`` where the 2-D solve reproduces the pixel
        and ``rho <= th_r(max_theta)`` (the image circle).
        """
        if uv.shape[-1] != 2:
            raise ValueError(f"uv must have shape (..., 2), got {tuple(uv.shape)}")
        uv = uv.to(torch.float64)
        ud = (uv[..., 0] - self.cx) / self.fx
        vd = (uv[..., 1] - self.cy) / self.fy
        xr, yr = ud, vd
        converged = torch.isfinite(ud) & torch.isfinite(vd)
        if self._has_tan_prism:
            p0, p1 = self.tangential_coeffs
            s0, s1, s2, s3 = self.thin_prism_coeffs
            for _ in range(ARIA_UNDISTORT_NEWTON_STEPS):
                ex, ey = self._tan_prism(xr, yr)
                ex, ey = ex - ud, ey - vd
                rd2 = xr * xr + yr * yr
                gx = 2.0 * (s0 + 2.0 * s1 * rd2)   # d(thin prism x) / d(rd^2), times 2
                gy = 2.0 * (s2 + 2.0 * s3 * rd2)
                jxx = 1.0 + 6.0 * p0 * xr + 2.0 * p1 * yr + gx * xr
                jxy = 2.0 * p0 * yr + 2.0 * p1 * xr + gx * yr
                jyx = 2.0 * p1 * xr + 2.0 * p0 * yr + gy * xr
                jyy = 1.0 + 6.0 * p1 * yr + 2.0 * p0 * xr + gy * yr
                det = jxx * jyy - jxy * jyx
                det = torch.where(det.abs() > 1e-12, det, 1e-12)
                dx = (jyy * ex - jxy * ey) / det
                dy = (jxx * ey - jyx * ex) / det
                xr, yr = xr - dx, yr - dy
                largest = torch.nan_to_num(torch.maximum(dx.abs(), dy.abs()), nan=0.0)   # NaN pixels: no ray anyway
                if largest.numel() == 0 or float(largest.max()) <= ARIA_STEP_TOLERANCE:
                    break
            ex, ey = self._tan_prism(xr, yr)
            converged &= torch.hypot(ex - ud, ey - vd) <= ARIA_UNDISTORT_TOLERANCE
        rho = torch.hypot(xr, yr)
        th_r_max = self._th_r_max  # type: ignore[attr-defined]
        theta_max = self._theta_max  # type: ignore[attr-defined]
        inside = converged & (rho <= th_r_max * (1.0 + 1e-9))
        target = torch.where(inside, rho, 0.0).clamp(max=th_r_max)
        if any(self.radial_coeffs):
            # Bracketed Newton: th_r is increasing on [lo, hi] = [0, max_theta]; a step leaving the bracket bisects.
            lo, hi = torch.zeros_like(target), torch.full_like(target, theta_max)
            theta = target.clamp(max=theta_max)
            for _ in range(ARIA_THETA_ITERATIONS):
                f = self._th_r(theta) - target
                df = self._th_r_slope(theta)
                lo = torch.where(f <= 0.0, theta, lo)
                hi = torch.where(f >= 0.0, theta, hi)
                step = theta - f / torch.where(df > 0.0, df, 1.0)
                new = torch.where((df > 0.0) & (step >= lo) & (step <= hi), step, 0.5 * (lo + hi))
                done = theta.numel() == 0 or float((new - theta).abs().max()) <= ARIA_STEP_TOLERANCE
                theta = new
                if done:
                    break
        else:
            theta = target
        return theta, xr, yr, rho, inside

    def unproject_rays(self, uv: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` -> rays ``(x, y, 1)`` ``(..., 3)`` float32 with unit z.

        NaN outside the image circle (see the class docstring) and where the ray
        makes 90 degrees with the optical axis.  Solved in float64.
        """
        theta, xr, yr, rho, inside = self._solve(uv)
        valid = inside & (theta < 0.5 * math.pi)
        centre = rho <= 0.0
        s = torch.where(centre, 1.0, torch.tan(torch.where(valid, theta, 0.0)) / torch.where(centre, 1.0, rho))
        rays = torch.stack((xr * s, yr * s, torch.ones_like(s)), dim=-1)
        return torch.where(valid.unsqueeze(-1), rays, math.nan).to(torch.float32)

    def unproject_directions(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels ``(..., 2)`` -> unit-norm directions ``(..., 3)`` float32 and validity ``(...)`` bool.

        Valid inside the image circle; invalid pixels get ``(0, 0, 1)``.
        """
        theta, xr, yr, rho, inside = self._solve(uv)
        centre = rho <= 0.0
        s = torch.where(centre, 1.0, torch.sin(theta) / torch.where(centre, 1.0, rho))
        dirs = torch.stack((xr * s, yr * s, torch.cos(theta)), dim=-1)
        dirs = torch.where(inside.unsqueeze(-1), dirs, torch.tensor((0.0, 0.0, 1.0), dtype=dirs.dtype,
                                                                     device=dirs.device))
        return dirs.to(torch.float32), inside

    def unproject(self, uv: torch.Tensor, depth_m: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` with depths ``(...)`` -> points ``(..., 3)`` float32.

        ``depth_m`` is the camera z coordinate [m] (not the distance along the
        ray); NaN where ``unproject_rays`` is NaN.
        """
        return super().unproject(uv, depth_m)


def _aria_th_r(theta: float, k: Sequence[float]) -> float:
    """``theta (1 + k0 theta^2 + ... + k5 theta^12)`` for one angle."""
    t2 = theta * theta
    return theta * (1.0 + sum(c * t2 ** (i + 1) for i, c in enumerate(k)))
