"""The fisheye camera of OpenCV's fisheye module (Kannala-Brandt; ROS equidistant), in torch.

:class:`FisheyeCamera` is the Kannala-Brandt model of OpenCV's fisheye
module (ROS ``equidistant``, coefficients ``k1..k4``): with
``r = sqrt(X^2 + Y^2)`` and ``theta = atan2(r, Z)`` (the angle from the
optical axis, up to 180 degrees),
``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``,
``u = fx theta_d X / r + cx``, ``v = fy theta_d Y / r + cy``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch

from egox_ros.core.geometry.cameras.base import _MIN_Z, CameraModel, _first_positive_root

# Newton steps on theta used by FisheyeCamera.unproject_rays, started at
# theta = theta_d and clamped to [0, max_theta].  Worst-case round-trip error
# over all pixels inside the image circle: pure equidistant needs 0 steps
# (4e-5 px); a T265-like lens (848x800, f = 286, k1..k4 = -0.0057, 0.0421,
# -0.0392, 0.0073) 1.4 px after 1, 4e-3 px after 2 and the float32 floor of
# 1.4e-4 px after 3; a strongly compressing lens (640x480, f = 200, k1..k3 =
# -0.08, 0.012, -0.001) 1.1 px after 1 and 7e-5 px after 5.  8 leaves margin.
FISHEYE_NEWTON_ITERATIONS = 8


@dataclass(frozen=True)
class FisheyeCamera(CameraModel):
    """Kannala-Brandt fisheye camera (OpenCV fisheye, ROS ``equidistant``); see the module docstring.

    ``distortion``: empty or ``(k1, k2, k3, k4)``; all zeros is the pure
    equidistant projection ``r_px = f theta``.  ``fov_deg`` is the full field
    of view (default 180 degrees: everything in front of the camera); the
    usable half-angle ``max_theta`` is the smaller of ``fov_deg / 2`` and the
    angle where ``theta_d`` stops increasing.  ``fov_deg`` above 180 lets
    ``project`` accept points behind the image plane (negative z).
    """

    fov_deg: float = 180.0

    _DISTORTION_COUNTS: ClassVar[tuple[int, ...]] = (0, 4)
    _DISTORTION_HELP: ClassVar[str] = "0 or 4 (equidistant: k1 k2 k3 k4)"

    def __post_init__(self) -> None:
        super().__post_init__()
        try:
            fov = float(self.fov_deg)
        except (TypeError, ValueError):
            raise ValueError(f"fov_deg must be a number, got {self.fov_deg!r}") from None
        if not (0.0 < fov <= 360.0):
            raise ValueError(f"fov_deg must be in (0, 360], got {fov}")
        object.__setattr__(self, "fov_deg", fov)
        k = self._coeffs()
        theta_max = min(math.radians(fov) / 2.0, _monotonic_theta_limit(k), math.pi)
        object.__setattr__(self, "_theta_max", theta_max)
        object.__setattr__(self, "_theta_d_max", _theta_d(theta_max, k))

    def _coeffs(self) -> tuple[float, float, float, float]:
        c = (self.distortion + (0.0,) * 4)[:4]
        return c[0], c[1], c[2], c[3]

    @property
    def camera_info_distortion(self) -> tuple[str, tuple[float, ...]]:
        return "equidistant", self._coeffs()

    @property
    def max_theta(self) -> float:
        """Largest angle from the optical axis [rad] that ``project`` accepts (at most pi)."""
        return self._theta_max  # type: ignore[attr-defined]

    @property
    def max_radius_px(self) -> tuple[float, float]:
        """Radius of the model's image circle along u and v [px]: ``(fx, fy) * theta_d(max_theta)``."""
        return self.fx * self._theta_d_max, self.fy * self._theta_d_max  # type: ignore[attr-defined]

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``(..., 3)`` [m] -> pixels ``(..., 2)`` float32 and validity ``(...)`` bool.

        Valid where the angle ``theta`` from the optical axis is at most
        ``max_theta`` (with the default 180 degree field of view: ``z > 0``);
        points beyond (e.g. behind the camera, or where the lens polynomial
        would fold back) and the camera centre itself are invalid.  Pixels of
        invalid points are finite but meaningless.  Validity does not check the
        image bounds.
        """
        if points_cam.shape[-1] != 3:
            raise ValueError(f"points_cam must have shape (..., 3), got {tuple(points_cam.shape)}")
        p = points_cam.to(torch.float32)
        x, y, z = p[..., 0], p[..., 1], p[..., 2]
        r = torch.hypot(x, y)
        theta = torch.atan2(r, z)
        on_axis = r <= 0.0
        # On the axis behind the camera (theta = pi) the direction is undefined.
        valid = (theta <= self._theta_max) & ~(on_axis & (z <= 0.0))  # type: ignore[attr-defined]
        if self._theta_max <= 0.5 * math.pi:  # type: ignore[attr-defined]
            valid &= z > _MIN_Z  # as the pinhole camera: depth (z) must be positive
        theta = torch.where(valid, theta, 0.0)
        theta_d = _theta_d_tensor(theta, self._coeffs())
        scale = torch.where(on_axis | ~valid, 0.0, theta_d / torch.where(on_axis, 1.0, r))
        u = (x * scale) * self.fx + self.cx
        v = (y * scale) * self.fy + self.cy
        return torch.stack((u, v), dim=-1), valid

    def _solve_theta(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(theta, theta_d, xd, yd)`` of pixels ``(..., 2)``; theta by Newton, clamped to ``[0, max_theta]``."""
        if uv.shape[-1] != 2:
            raise ValueError(f"uv must have shape (..., 2), got {tuple(uv.shape)}")
        uv = uv.to(torch.float32)
        xd = (uv[..., 0] - self.cx) / self.fx
        yd = (uv[..., 1] - self.cy) / self.fy
        theta_d = torch.hypot(xd, yd)
        theta_max = self._theta_max  # type: ignore[attr-defined]
        theta = theta_d.clamp(max=theta_max)
        if self.has_distortion:
            k1, k2, k3, k4 = self._coeffs()
            for _ in range(FISHEYE_NEWTON_ITERATIONS):
                t2 = theta * theta
                f = theta * (1.0 + t2 * (k1 + t2 * (k2 + t2 * (k3 + t2 * k4)))) - theta_d
                df = 1.0 + t2 * (3.0 * k1 + t2 * (5.0 * k2 + t2 * (7.0 * k3 + t2 * 9.0 * k4)))
                theta = (theta - f / df.clamp(min=1e-6)).clamp(0.0, theta_max)
        return theta, theta_d, xd, yd

    def unproject_directions(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels ``(..., 2)`` -> unit-norm directions ``(..., 3)`` float32 and validity ``(...)`` bool.

        Valid inside the model's image circle (``theta <= max_theta``), also
        beyond 90 degrees when ``fov_deg > 180``; invalid pixels get ``(0, 0, 1)``.
        """
        theta, theta_d, xd, yd = self._solve_theta(uv)
        valid = theta_d <= self._theta_d_max * (1.0 + 1e-6)  # type: ignore[attr-defined]
        centre = theta_d <= 0.0
        s = torch.where(centre, 1.0, torch.sin(theta) / torch.where(centre, 1.0, theta_d))
        dirs = torch.stack((xd * s, yd * s, torch.cos(theta)), dim=-1)
        dirs = torch.where(valid.unsqueeze(-1), dirs, torch.tensor((0.0, 0.0, 1.0), device=dirs.device))
        return dirs, valid

    def unproject_rays(self, uv: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` -> rays ``(x, y, 1)`` ``(..., 3)`` float32 with unit z.

        Pixels whose ray makes 90 degrees or more with the optical axis (only
        possible with ``fov_deg > 180``), or that lie outside the model's image
        circle, have no unit-z ray: they get NaN (drop them with
        ``torch.isfinite``; ``unproject_directions`` covers the whole sphere).
        """
        theta, theta_d, xd, yd = self._solve_theta(uv)
        valid = (theta_d <= self._theta_d_max * (1.0 + 1e-6)) & (theta < 0.5 * math.pi)  # type: ignore[attr-defined]
        centre = theta_d <= 0.0
        s = torch.where(centre, 1.0, torch.tan(theta) / torch.where(centre, 1.0, theta_d))
        rays = torch.stack((xd * s, yd * s, torch.ones_like(s)), dim=-1)
        return torch.where(valid.unsqueeze(-1), rays, math.nan)

    def unproject(self, uv: torch.Tensor, depth_m: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` with depths ``(...)`` -> points ``(..., 3)`` float32.

        ``depth_m`` is the camera z coordinate [m] (as for the pinhole camera,
        not the distance along the ray); NaN where ``unproject_rays`` is NaN.
        """
        return super().unproject(uv, depth_m)


def _monotonic_theta_limit(k: tuple[float, float, float, float]) -> float:
    """First theta > 0 where d theta_d / d theta = 1 + 3 k1 t^2 + 5 k2 t^4 + 7 k3 t^6 + 9 k4 t^8 vanishes."""
    s = _first_positive_root([1.0, 3.0 * k[0], 5.0 * k[1], 7.0 * k[2], 9.0 * k[3]])
    return math.sqrt(s)


def _theta_d(theta: float, k: tuple[float, float, float, float]) -> float:
    t2 = theta * theta
    return theta * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))))


def _theta_d_tensor(theta: torch.Tensor, k: tuple[float, float, float, float]) -> torch.Tensor:
    if not any(k):
        return theta
    t2 = theta * theta
    return theta * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))))
