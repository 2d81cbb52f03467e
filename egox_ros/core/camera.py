"""Pinhole camera with optional OpenCV "plumb_bob" distortion, in torch.

Conventions
-----------
* Camera axes as in OpenCV: x right, y down, z forward (metres).
* Pixel coordinates ``(u, v)``: ``u`` along the image width, ``v`` down the
  height; the *centre* of pixel column ``i`` / row ``j`` is at ``u = i``,
  ``v = j`` (OpenCV / ROS CameraInfo convention), so the image spans
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
* Distortion follows OpenCV's plumb_bob model with coefficients
  ``(k1, k2, p1, p2[, k3])`` applied to normalised coordinates ``x = X / Z``,
  ``y = Y / Z``:
  ``x_d = x (1 + k1 r^2 + k2 r^4 + k3 r^6) + 2 p1 x y + p2 (r^2 + 2 x^2)`` and
  ``y_d = y (1 + k1 r^2 + k2 r^4 + k3 r^6) + p1 (r^2 + 2 y^2) + 2 p2 x y``.

All tensor maths runs in float32 on the device of the input tensor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache
from typing import Sequence

import numpy as np
import torch

_SUPPORTED_MODELS = ("plumb_bob", "none", "")

# Fixed-point iterations used to remove distortion in ``unproject``.  Measured
# on the TUM freiburg1 Kinect (k1..k3 = 0.2624, -0.9531, 1.1633, strongest at
# the image corners): the worst-case reprojection error over all 640x480 pixels
# is 13 px after 1 iteration, 0.45 px after 10 and reaches the float32 floor of
# about 1e-4 px after 12; 16 leaves margin for somewhat stronger lenses.  The
# iteration converges when the distortion is a contraction (typical for
# narrow-angle plumb_bob lenses); it is not meant for fisheye lenses.
UNDISTORT_ITERATIONS = 16

_MIN_Z = 1e-6


@dataclass(frozen=True)
class PinholeCamera:
    """Intrinsics of a pinhole camera plus optional plumb_bob distortion.

    ``width``/``height`` in pixels; ``fx``, ``fy``, ``cx``, ``cy`` in pixels;
    ``distortion`` in OpenCV order ``(k1, k2, p1, p2[, k3])``; empty or all
    zeros means no distortion.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    def __post_init__(self) -> None:
        for name in ("width", "height"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
                raise ValueError(f"{name} must be an integer number of pixels, got {value!r}")
            if value <= 0:
                raise ValueError(f"{name} must be positive, got {value}")
            object.__setattr__(self, name, int(value))
        for name in ("fx", "fy", "cx", "cy"):
            value = getattr(self, name)
            try:
                value = float(value)
            except (TypeError, ValueError):
                raise ValueError(f"{name} must be a number, got {value!r}") from None
            if not math.isfinite(value):
                raise ValueError(f"{name} must be finite, got {value}")
            object.__setattr__(self, name, value)
        if self.fx <= 0.0 or self.fy <= 0.0:
            raise ValueError(f"focal lengths must be positive, got fx={self.fx}, fy={self.fy}")
        try:
            coeffs = tuple(float(c) for c in self.distortion)
        except (TypeError, ValueError):
            raise ValueError(f"distortion must be a sequence of numbers, got {self.distortion!r}") from None
        if len(coeffs) not in (0, 4, 5):
            raise ValueError(
                f"distortion must have 0, 4 (k1 k2 p1 p2) or 5 (k1 k2 p1 p2 k3) coefficients, got {len(coeffs)}"
            )
        if not all(math.isfinite(c) for c in coeffs):
            raise ValueError(f"distortion coefficients must be finite, got {coeffs}")
        object.__setattr__(self, "distortion", coeffs)
        object.__setattr__(self, "_max_r2", _monotonic_r2_limit(coeffs))

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_camera_info(
        cls,
        width: int,
        height: int,
        k: Sequence[float],
        d: Sequence[float],
        distortion_model: str,
    ) -> "PinholeCamera":
        """Build from the fields of a ROS ``sensor_msgs/CameraInfo``.

        ``k`` is the row-major 3x3 intrinsic matrix (9 values, zero skew);
        ``d`` the distortion coefficients.  Supported models: ``plumb_bob``
        (0, 4 or 5 coefficients) and ``""`` / ``"none"`` (no coefficients, or
        all zeros).
        """
        model = (distortion_model or "").strip().lower()
        if model not in _SUPPORTED_MODELS:
            raise ValueError(
                f"unsupported distortion model {distortion_model!r}; supported: 'plumb_bob', 'none' or ''"
            )
        kk = np.asarray(list(k), dtype=np.float64).reshape(-1)
        if kk.shape != (9,):
            raise ValueError(f"K must have 9 values (row-major 3x3), got {kk.size}")
        km = kk.reshape(3, 3)
        if not np.all(np.isfinite(km)):
            raise ValueError(f"K must be finite, got {kk.tolist()}")
        if abs(km[0, 1]) > 1e-9 or abs(km[1, 0]) > 1e-9 or not np.allclose(km[2], [0.0, 0.0, 1.0]):
            raise ValueError(f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {kk.tolist()}")
        coeffs = tuple(float(c) for c in d)
        if model != "plumb_bob" and any(c != 0.0 for c in coeffs):
            raise ValueError(f"distortion model {distortion_model!r} takes no coefficients, got {coeffs}")
        if model != "plumb_bob":
            coeffs = ()
        return cls(
            width=width,
            height=height,
            fx=float(km[0, 0]),
            fy=float(km[1, 1]),
            cx=float(km[0, 2]),
            cy=float(km[1, 2]),
            distortion=coeffs,
        )

    def with_size(self, width: int, height: int) -> "PinholeCamera":
        """The same camera for the image resized to ``width`` x ``height``.

        Focal lengths scale with the size; principal points follow the
        pixel-centre convention ``c' = (c + 0.5) * s - 0.5``.  Distortion acts on
        normalised coordinates, so it is unchanged.
        """
        if isinstance(width, bool) or isinstance(height, bool) or width <= 0 or height <= 0:
            raise ValueError(f"size must be positive, got {width}x{height}")
        sx = width / self.width
        sy = height / self.height
        return PinholeCamera(
            width=int(width),
            height=int(height),
            fx=self.fx * sx,
            fy=self.fy * sy,
            cx=(self.cx + 0.5) * sx - 0.5,
            cy=(self.cy + 0.5) * sy - 0.5,
            distortion=self.distortion,
        )

    # ------------------------------------------------------------------ properties

    @property
    def K(self) -> np.ndarray:  # noqa: N802 (conventional name)
        """3x3 intrinsic matrix (float64)."""
        return np.array(
            [[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]],
            dtype=np.float64,
        )

    @property
    def has_distortion(self) -> bool:
        return any(c != 0.0 for c in self.distortion)

    @property
    def max_valid_radius2(self) -> float:
        """Largest squared normalised radius ``(X^2 + Y^2) / Z^2`` that ``project`` accepts.

        The radial polynomial ``r (1 + k1 r^2 + k2 r^4 + k3 r^6)`` is only
        invertible up to its first turning point; points beyond it would fold
        back into the image, so ``project`` marks them invalid.  ``inf`` when the
        polynomial never turns (no distortion, or e.g. the TUM freiburg1 lens).
        """
        return self._max_r2  # type: ignore[attr-defined]

    def _coeffs(self) -> tuple[float, float, float, float, float]:
        c = self.distortion + (0.0,) * (5 - len(self.distortion))
        return c[0], c[1], c[2], c[3], c[4]

    # ------------------------------------------------------------------ distortion

    def distort_normalized(self, xy: torch.Tensor) -> torch.Tensor:
        """Apply the distortion to normalised coordinates ``(..., 2)``."""
        if not self.has_distortion:
            return xy
        k1, k2, p1, p2, k3 = self._coeffs()
        x, y = xy[..., 0], xy[..., 1]
        r2 = x * x + y * y
        radial = 1.0 + r2 * (k1 + r2 * (k2 + r2 * k3))
        xy2 = 2.0 * x * y
        xd = x * radial + p1 * xy2 + p2 * (r2 + 2.0 * x * x)
        yd = y * radial + p1 * (r2 + 2.0 * y * y) + p2 * xy2
        return torch.stack((xd, yd), dim=-1)

    def undistort_normalized(self, xy_d: torch.Tensor) -> torch.Tensor:
        """Invert ``distort_normalized`` with ``UNDISTORT_ITERATIONS`` fixed-point steps."""
        if not self.has_distortion:
            return xy_d
        k1, k2, p1, p2, k3 = self._coeffs()
        xd, yd = xy_d[..., 0], xy_d[..., 1]
        x, y = xd, yd
        for _ in range(UNDISTORT_ITERATIONS):
            r2 = x * x + y * y
            inv_radial = 1.0 / (1.0 + r2 * (k1 + r2 * (k2 + r2 * k3)))
            xy2 = 2.0 * x * y
            dx = p1 * xy2 + p2 * (r2 + 2.0 * x * x)
            dy = p1 * (r2 + 2.0 * y * y) + p2 * xy2
            x = (xd - dx) * inv_radial
            y = (yd - dy) * inv_radial
        return torch.stack((x, y), dim=-1)

    # ------------------------------------------------------------------ projection

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``(..., 3)`` -> pixels ``(..., 2)`` float32 and validity ``(...)`` bool.

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
        if math.isfinite(self._max_r2):  # type: ignore[attr-defined]
            valid = valid & ((xy * xy).sum(dim=-1) <= self._max_r2)  # type: ignore[attr-defined]
        xy = self.distort_normalized(xy)
        u = xy[..., 0] * self.fx + self.cx
        v = xy[..., 1] * self.fy + self.cy
        return torch.stack((u, v), dim=-1), valid

    def unproject(self, uv: torch.Tensor, depth_m: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` with depths ``(...)`` (metres along z) -> camera-frame points ``(..., 3)``."""
        if uv.shape[-1] != 2:
            raise ValueError(f"uv must have shape (..., 2), got {tuple(uv.shape)}")
        rays = self.unproject_rays(uv)
        depth = depth_m.to(device=uv.device, dtype=torch.float32)
        return rays * depth.unsqueeze(-1)

    def unproject_rays(self, uv: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` -> rays ``(x, y, 1)`` ``(..., 3)`` with unit z (float32)."""
        uv = uv.to(torch.float32)
        xy_d = torch.stack(((uv[..., 0] - self.cx) / self.fx, (uv[..., 1] - self.cy) / self.fy), dim=-1)
        xy = self.undistort_normalized(xy_d)
        return torch.cat((xy, torch.ones_like(xy[..., :1])), dim=-1)

    def pixel_grid(self, stride: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """Pixel-centre coordinates ``(u, v)`` of every ``stride``-th pixel: ``(H', W', 2)`` float32.

        ``H' = ceil(H / stride)``, ``W' = ceil(W / stride)``; the first sample is pixel (0, 0).
        """
        stride = _check_stride(stride)
        us = torch.arange(0, self.width, stride, dtype=torch.float32, device=device)
        vs = torch.arange(0, self.height, stride, dtype=torch.float32, device=device)
        vv, uu = torch.meshgrid(vs, us, indexing="ij")
        return torch.stack((uu, vv), dim=-1)

    def ray_grid(self, stride: int = 1, device: torch.device | str | None = None) -> torch.Tensor:
        """Unit-z rays ``(H', W', 3)`` of ``pixel_grid(stride)``; cached per camera, stride and device.

        Treat the result as read-only (it is shared between calls).
        """
        stride = _check_stride(stride)
        return _cached_ray_grid(self, stride, str(torch.device(device) if device is not None else "cpu"))


def _monotonic_r2_limit(coeffs: tuple[float, ...]) -> float:
    """First positive root s of d/dr [r (1 + k1 s + k2 s^2 + k3 s^3)] = 1 + 3 k1 s + 5 k2 s^2 + 7 k3 s^3 (s = r^2)."""
    if not coeffs:
        return math.inf
    c = coeffs + (0.0,) * (5 - len(coeffs))
    k1, k2, k3 = c[0], c[1], c[4]
    poly = np.array([7.0 * k3, 5.0 * k2, 3.0 * k1, 1.0])
    nonzero = np.flatnonzero(poly)
    roots = np.roots(poly[nonzero[0] :]) if nonzero[0] < 3 else np.array([])
    positive = [r.real for r in roots if abs(r.imag) < 1e-12 and r.real > 0.0]
    return float(min(positive)) if positive else math.inf


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return int(stride)


@lru_cache(maxsize=16)
def _cached_ray_grid(camera: PinholeCamera, stride: int, device: str) -> torch.Tensor:
    return camera.unproject_rays(camera.pixel_grid(stride, device=device))
