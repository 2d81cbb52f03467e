"""Camera models in torch: pinhole (plumb_bob / rational_polynomial distortion), fisheye (Kannala-Brandt) and
the Project Aria fisheye (FisheyeRadTanThinPrism).

Conventions
-----------
* Camera axes as in OpenCV: x right, y down, z forward (metres).
* Pixel coordinates ``(u, v)``: ``u`` along the image width, ``v`` down the
  height; the *centre* of pixel column ``i`` / row ``j`` is at ``u = i``,
  ``v = j`` (OpenCV / ROS CameraInfo convention), so the image spans
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.
* :class:`PinholeCamera` distorts normalised coordinates ``x = X / Z``,
  ``y = Y / Z`` as OpenCV does, with ``r^2 = x^2 + y^2``:
  ``x_d = x R + 2 p1 x y + p2 (r^2 + 2 x^2)``,
  ``y_d = y R + p1 (r^2 + 2 y^2) + 2 p2 x y``, where
  ``R = 1 + k1 r^2 + k2 r^4 + k3 r^6`` (ROS ``plumb_bob``: ``k1 k2 p1 p2 [k3]``)
  or ``R = (1 + k1 r^2 + k2 r^4 + k3 r^6) / (1 + k4 r^2 + k5 r^4 + k6 r^6)``
  (ROS ``rational_polynomial``: ``k1 k2 p1 p2 k3 k4 k5 k6``);
  then ``u = fx x_d + cx``, ``v = fy y_d + cy``.
* :class:`FisheyeCamera` is the Kannala-Brandt model of OpenCV's fisheye
  module (ROS ``equidistant``, coefficients ``k1..k4``): with
  ``r = sqrt(X^2 + Y^2)`` and ``theta = atan2(r, Z)`` (the angle from the
  optical axis, up to 180 degrees),
  ``theta_d = theta (1 + k1 theta^2 + k2 theta^4 + k3 theta^6 + k4 theta^8)``,
  ``u = fx theta_d X / r + cx``, ``v = fy theta_d Y / r + cy``.
* :class:`AriaFisheyeCamera` is Project Aria's ``FisheyeRadTanThinPrism``
  ("Fisheye624": 6 radial, 2 tangential, 4 thin-prism coefficients), the head
  camera model of Ego-Exo4D.  Written from the model's definition in
  facebookresearch/projectaria_tools,
  ``core/calibration/camera_projections/FisheyeRadTanThinPrism.h``: with
  ``theta = atan2(r, Z)`` as above (Aria takes atan of the normalised radius:
  the same in front of the camera, the only region this class accepts),
  ``th_r = theta (1 + k0 theta^2 + k1 theta^4 + ... + k5 theta^12)``,
  ``(x_r, y_r) = th_r (X, Y) / r`` and ``rd^2 = x_r^2 + y_r^2``,
  ``x_d = x_r + p0 (2 x_r^2 + rd^2) + 2 p1 x_r y_r + s0 rd^2 + s1 rd^4``,
  ``y_d = y_r + p1 (2 y_r^2 + rd^2) + 2 p0 x_r y_r + s2 rd^2 + s3 rd^4``,
  ``u = fx x_d + cx``, ``v = fy y_d + cy``.  Aria calibrations have one focal
  length (parameters ``f cx cy k0..k5 p0 p1 s0..s3``): set ``fx = fy = f``.
  Note that Aria's ``p0`` multiplies ``2 x^2 + r^2`` (OpenCV's ``p2`` does),
  and its ``p1`` OpenCV's ``p1``.

Every model is a frozen dataclass deriving from :class:`CameraModel`, the
interface the renderer and the lifting rely on.  All tensor maths runs in
float32 on the device of the input tensor, except in :class:`AriaFisheyeCamera`:
its ``project`` evaluates the model in float64 for float64 input, and its
unprojection solves in float64 (both still return float32).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from functools import lru_cache
from typing import ClassVar, Sequence

import numpy as np
import torch

# ROS CameraInfo distortion models understood by camera_from_camera_info.
# ROS has no standard name for Project Aria's FisheyeRadTanThinPrism model; this package writes
# ARIA_DISTORTION_MODEL (12 coefficients k0..k5 p0 p1 s0..s3) and also reads "fisheye624", Aria's own short name.
ARIA_DISTORTION_MODEL = "fisheye_rad_tan_thin_prism"
ARIA_DISTORTION_ALIASES = (ARIA_DISTORTION_MODEL, "fisheye624")
SUPPORTED_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant") + ARIA_DISTORTION_ALIASES + (
    "none", "")

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

# Newton steps on theta used by FisheyeCamera.unproject_rays, started at
# theta = theta_d and clamped to [0, max_theta].  Worst-case round-trip error
# over all pixels inside the image circle: pure equidistant needs 0 steps
# (4e-5 px); a T265-like lens (848x800, f = 286, k1..k4 = -0.0057, 0.0421,
# -0.0392, 0.0073) 1.4 px after 1, 4e-3 px after 2 and the float32 floor of
# 1.4e-4 px after 3; a strongly compressing lens (640x480, f = 200, k1..k3 =
# -0.08, 0.012, -0.001) 1.1 px after 1 and 7e-5 px after 5.  8 leaves margin.
FISHEYE_NEWTON_ITERATIONS = 8

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

_MIN_Z = 1e-6


def _as_pixels(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise ValueError(f"{name} must be an integer number of pixels, got {value!r}")
    if value <= 0:
        raise ValueError(f"{name} must be positive, got {value}")
    return int(value)


@dataclass(frozen=True)
class CameraModel:
    """Interface shared by every camera model (abstract; use a subclass).

    ``width``/``height`` in pixels; ``fx``, ``fy``, ``cx``, ``cy`` in pixels
    (zero skew); ``distortion`` the model's coefficients in ROS CameraInfo
    order (empty or all zeros: none).  Instances are immutable and hashable;
    ``ray_grid`` results are cached per camera.
    """

    width: int
    height: int
    fx: float
    fy: float
    cx: float
    cy: float
    distortion: tuple[float, ...] = ()

    # Coefficient counts accepted by the subclass, and how to describe them in an error.
    _DISTORTION_COUNTS: ClassVar[tuple[int, ...]] = (0,)
    _DISTORTION_HELP: ClassVar[str] = "0"

    def __post_init__(self) -> None:
        if type(self) is CameraModel:
            raise TypeError("CameraModel is abstract; use PinholeCamera, FisheyeCamera or AriaFisheyeCamera")
        object.__setattr__(self, "width", _as_pixels("width", self.width))
        object.__setattr__(self, "height", _as_pixels("height", self.height))
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
        if len(coeffs) not in self._DISTORTION_COUNTS:
            raise ValueError(f"{type(self).__name__} distortion must have {self._DISTORTION_HELP} coefficients, "
                             f"got {len(coeffs)}")
        if not all(math.isfinite(c) for c in coeffs):
            raise ValueError(f"distortion coefficients must be finite, got {coeffs}")
        object.__setattr__(self, "distortion", coeffs)

    # ------------------------------------------------------------------ constructors

    @classmethod
    def from_camera_info(cls, width: int, height: int, k: Sequence[float], d: Sequence[float],
                         distortion_model: str) -> "CameraModel":
        """Build from ROS ``sensor_msgs/CameraInfo`` fields; see :func:`camera_from_camera_info`.

        Raises ValueError as that function does, and also when the model is not
        one ``cls`` represents (e.g. ``PinholeCamera.from_camera_info`` with
        ``equidistant``).
        """
        camera = camera_from_camera_info(width, height, k, d, distortion_model)
        if not isinstance(camera, cls):
            raise ValueError(f"distortion model {distortion_model!r} gives a {type(camera).__name__}, not a "
                             f"{cls.__name__}; use camera_from_camera_info for any supported model "
                             f"(plumb_bob, rational_polynomial, equidistant, {ARIA_DISTORTION_MODEL}, none)")
        return camera

    def with_size(self, width: int, height: int) -> "CameraModel":
        """The same camera for the image resized to ``width`` x ``height``.

        Focal lengths scale with the size; principal points follow the
        pixel-centre convention ``c' = (c + 0.5) * s - 0.5``.  Distortion acts on
        normalised coordinates / angles, so it is unchanged.
        """
        if isinstance(width, bool) or isinstance(height, bool) or width <= 0 or height <= 0:
            raise ValueError(f"size must be positive, got {width}x{height}")
        sx = width / self.width
        sy = height / self.height
        return dataclasses.replace(self, width=int(width), height=int(height), fx=self.fx * sx, fy=self.fy * sy,
                                   cx=(self.cx + 0.5) * sx - 0.5, cy=(self.cy + 0.5) * sy - 0.5)

    def cropped(self, x0: int, y0: int, width: int, height: int) -> "CameraModel":
        """The same camera for the ``width`` x ``height`` window of the image whose top-left pixel is (x0, y0)."""
        if not (0 <= x0 and 0 <= y0 and 0 < width and 0 < height and x0 + width <= self.width
                and y0 + height <= self.height):
            raise ValueError(f"crop {width}x{height} at ({x0}, {y0}) is outside the {self.width}x{self.height} image")
        return dataclasses.replace(self, width=int(width), height=int(height), cx=self.cx - x0, cy=self.cy - y0)

    def rotated_90(self, clockwise: bool = True) -> "CameraModel":
        """The same camera for its image rotated by 90 degrees (clockwise: ``np.rot90(image, k=-1)``).

        Width and height swap.  The rotated camera's optical frame is the
        original one turned about its z axis, so it must be placed at
        :func:`rotated_90_pose` of the original pose: a world point then lands,
        clockwise, on ``(u', v') = (H - 1 - v, u)`` and, counter-clockwise
        (``np.rot90(image, k=1)``), on ``(v, W - 1 - u)``, where ``(u, v)`` is
        its pixel in the original ``W x H`` image.  (The renderer of the
        released EgoX priors turns the sideways Aria image upright this way.)
        Distortion terms that are not radially symmetric (tangential, thin
        prism) are rotated with the image, so the mapping is exact.
        """
        if clockwise:   # (u', v') = (H - 1 - v, u); frame: x' = -y, y' = x
            cx, cy = self.height - 1.0 - self.cy, self.cx
        else:           # (u', v') = (v, W - 1 - u); frame: x' = y, y' = -x
            cx, cy = self.cy, self.width - 1.0 - self.cx
        return dataclasses.replace(self, width=self.height, height=self.width, fx=self.fy, fy=self.fx, cx=cx, cy=cy,
                                   distortion=self._rotated_distortion_90(bool(clockwise)))

    def _rotated_distortion_90(self, clockwise: bool) -> tuple[float, ...]:
        """The distortion coefficients in the optical frame of :meth:`rotated_90` (radially symmetric: unchanged)."""
        return self.distortion

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
    def camera_info_distortion(self) -> tuple[str, tuple[float, ...]]:
        """``(distortion_model, d)`` for a ROS CameraInfo describing this camera."""
        raise NotImplementedError

    # ------------------------------------------------------------------ projection

    def project(self, points_cam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Camera-frame points ``(..., 3)`` [m] -> pixels ``(..., 2)`` float32 and validity ``(...)`` bool.

        Pixels of invalid points are finite but meaningless.  Validity does not
        check the image bounds.
        """
        raise NotImplementedError

    def unproject_rays(self, uv: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` -> rays ``(x, y, 1)`` ``(..., 3)`` float32 with unit z (NaN where undefined)."""
        raise NotImplementedError

    def unproject(self, uv: torch.Tensor, depth_m: torch.Tensor) -> torch.Tensor:
        """Pixels ``(..., 2)`` with depths ``(...)`` [m, along the camera z axis] -> points ``(..., 3)`` float32."""
        if uv.shape[-1] != 2:
            raise ValueError(f"uv must have shape (..., 2), got {tuple(uv.shape)}")
        rays = self.unproject_rays(uv)
        depth = depth_m.to(device=uv.device, dtype=torch.float32)
        return rays * depth.unsqueeze(-1)

    def unproject_directions(self, uv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Pixels ``(..., 2)`` -> unit-norm viewing directions ``(..., 3)`` float32 and validity ``(...)`` bool."""
        rays = self.unproject_rays(uv)
        valid = torch.isfinite(rays).all(dim=-1)
        rays = torch.where(valid.unsqueeze(-1), rays, torch.zeros_like(rays))
        return torch.nn.functional.normalize(rays, dim=-1), valid

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


def rotated_90_pose(world_T_camera, clockwise: bool = True):
    """The pose of :meth:`CameraModel.rotated_90`'s camera: ``world_T_camera @ R``, R a quarter turn about z.

    Clockwise, the rotated frame has ``x' = -y``, ``y' = x``, ``z' = z``
    (counter-clockwise ``x' = y``, ``y' = -x``).  ``world_T_camera``: a 4x4
    numpy array or torch tensor (camera-to-world); returns the same type,
    dtype and device.
    """
    r = np.eye(4)
    r[:2, :2] = [[0.0, 1.0], [-1.0, 0.0]] if clockwise else [[0.0, -1.0], [1.0, 0.0]]
    if torch.is_tensor(world_T_camera):
        if world_T_camera.shape[-2:] != (4, 4):
            raise ValueError(f"pose must be 4x4, got shape {tuple(world_T_camera.shape)}")
        return world_T_camera @ torch.as_tensor(r, dtype=world_T_camera.dtype, device=world_T_camera.device)
    pose = np.asarray(world_T_camera)
    if pose.shape[-2:] != (4, 4):
        raise ValueError(f"pose must be 4x4, got shape {pose.shape}")
    return pose @ r.astype(pose.dtype if np.issubdtype(pose.dtype, np.floating) else np.float64)


def camera_from_camera_info(width: int, height: int, k: Sequence[float], d: Sequence[float],
                            distortion_model: str) -> CameraModel:
    """Camera model from the fields of a ROS ``sensor_msgs/CameraInfo``.

    ``k``: row-major 3x3 intrinsic matrix (9 values, zero skew, finite,
    positive focal lengths); ``d``: distortion coefficients.  Models:
    ``plumb_bob`` (0, 4 or 5 coefficients) and ``rational_polynomial`` (0 or 8;
    trailing thin-prism / tilt terms are accepted when zero) give a
    :class:`PinholeCamera`; ``equidistant`` (0 or 4) a :class:`FisheyeCamera`;
    ``fisheye_rad_tan_thin_prism`` (or ``fisheye624``; 0 or 12: k0..k5 p0 p1
    s0..s3) an :class:`AriaFisheyeCamera` -- not a ROS standard name, ROS has
    none for Project Aria's model, so only this package writes and reads it;
    ``""`` / ``"none"`` (no coefficients, or all zeros) an undistorted
    :class:`PinholeCamera`.  Raises ValueError naming the problem.
    """
    model = (distortion_model or "").strip().lower()
    if model not in SUPPORTED_DISTORTION_MODELS:
        raise ValueError(f"unsupported distortion model {distortion_model!r}; supported: 'plumb_bob', "
                         f"'rational_polynomial', 'equidistant', '{ARIA_DISTORTION_MODEL}' (Project Aria), 'none' "
                         f"or ''")
    try:
        kk = np.asarray(list(k), dtype=np.float64).reshape(-1)
    except (TypeError, ValueError):
        raise ValueError(f"K must be 9 numbers, got {k!r}") from None
    if kk.shape != (9,):
        raise ValueError(f"K must have 9 values (row-major 3x3), got {kk.size}")
    km = kk.reshape(3, 3)
    if not np.all(np.isfinite(km)):
        raise ValueError(f"K must be finite, got {kk.tolist()}")
    if abs(km[0, 1]) > 1e-9 or abs(km[1, 0]) > 1e-9 or not np.allclose(km[2], [0.0, 0.0, 1.0]):
        raise ValueError(f"K must be [[fx, 0, cx], [0, fy, cy], [0, 0, 1]], got {kk.tolist()}")
    if km[0, 0] <= 0.0 or km[1, 1] <= 0.0:
        raise ValueError(f"focal lengths must be positive, got fx={km[0, 0]}, fy={km[1, 1]} (an uncalibrated camera?)")
    try:
        coeffs = tuple(float(c) for c in d)
    except (TypeError, ValueError):
        raise ValueError(f"D must be numbers, got {d!r}") from None
    if not all(math.isfinite(c) for c in coeffs):
        raise ValueError(f"distortion coefficients must be finite, got {coeffs}")
    if model == "rational_polynomial" and len(coeffs) > 8:
        if any(c != 0.0 for c in coeffs[8:]):
            raise ValueError(f"rational_polynomial: thin-prism / tilt coefficients (d[8:]) are not supported, got "
                             f"{coeffs[8:]}")
        coeffs = coeffs[:8]
    if model in ARIA_DISTORTION_ALIASES:
        model = ARIA_DISTORTION_MODEL
    counts = {"plumb_bob": (0, 4, 5), "rational_polynomial": (0, 8), "equidistant": (0, 4),
              ARIA_DISTORTION_MODEL: (0, 12)}.get(model)
    if counts is None:  # "" / "none"
        if any(c != 0.0 for c in coeffs):
            raise ValueError(f"distortion model {distortion_model!r} takes no coefficients, got {coeffs}")
        coeffs = ()
    elif len(coeffs) not in counts:
        raise ValueError(f"distortion model {model!r} needs {' or '.join(map(str, counts))} coefficients, "
                         f"got {len(coeffs)}")
    cls = {"equidistant": FisheyeCamera, ARIA_DISTORTION_MODEL: AriaFisheyeCamera}.get(model, PinholeCamera)
    return cls(width=width, height=height, fx=float(km[0, 0]), fy=float(km[1, 1]), cx=float(km[0, 2]),
               cy=float(km[1, 2]), distortion=coeffs)


def _first_positive_root(coeffs_ascending: Sequence[float]) -> float:
    poly = np.polynomial.Polynomial(np.asarray(coeffs_ascending, dtype=np.float64)).trim()
    if poly.degree() < 1:
        return math.inf
    positive = [r.real for r in poly.roots() if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and r.real > 0.0]
    return float(min(positive)) if positive else math.inf


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


def _monotonic_theta_limit(k: tuple[float, float, float, float]) -> float:
    """First theta > 0 where d theta_d / d theta = 1 + 3 k1 t^2 + 5 k2 t^4 + 7 k3 t^6 + 9 k4 t^8 vanishes."""
    s = _first_positive_root([1.0, 3.0 * k[0], 5.0 * k[1], 7.0 * k[2], 9.0 * k[3]])
    return math.sqrt(s)


def _aria_th_r(theta: float, k: Sequence[float]) -> float:
    """``theta (1 + k0 theta^2 + ... + k5 theta^12)`` for one angle."""
    t2 = theta * theta
    return theta * (1.0 + sum(c * t2 ** (i + 1) for i, c in enumerate(k)))


def _theta_d(theta: float, k: tuple[float, float, float, float]) -> float:
    t2 = theta * theta
    return theta * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))))


def _theta_d_tensor(theta: torch.Tensor, k: tuple[float, float, float, float]) -> torch.Tensor:
    if not any(k):
        return theta
    t2 = theta * theta
    return theta * (1.0 + t2 * (k[0] + t2 * (k[1] + t2 * (k[2] + t2 * k[3]))))


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return int(stride)


@lru_cache(maxsize=16)
def _cached_ray_grid(camera: CameraModel, stride: int, device: str) -> torch.Tensor:
    return camera.unproject_rays(camera.pixel_grid(stride, device=device))
