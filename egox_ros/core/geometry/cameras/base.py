"""The camera interface every model implements (:class:`CameraModel`), in torch.

Conventions
-----------
* Camera axes as in OpenCV: x right, y down, z forward (metres).
* Pixel coordinates ``(u, v)``: ``u`` along the image width, ``v`` down the
  height; the *centre* of pixel column ``i`` / row ``j`` is at ``u = i``,
  ``v = j`` (OpenCV / ROS CameraInfo convention), so the image spans
  ``[-0.5, W - 0.5] x [-0.5, H - 0.5]``.

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
        from egox_ros.core.geometry.cameras.camera_info import camera_from_camera_info
        camera = camera_from_camera_info(width, height, k, d, distortion_model)
        if not isinstance(camera, cls):
            raise ValueError(f"distortion model {distortion_model!r} gives a {type(camera).__name__}, not a "
                             f"{cls.__name__}; use camera_from_camera_info for any supported model "
                             f"(plumb_bob, rational_polynomial, equidistant, fisheye_rad_tan_thin_prism, none)")
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


def _first_positive_root(coeffs_ascending: Sequence[float]) -> float:
    poly = np.polynomial.Polynomial(np.asarray(coeffs_ascending, dtype=np.float64)).trim()
    if poly.degree() < 1:
        return math.inf
    positive = [r.real for r in poly.roots() if abs(r.imag) <= 1e-9 * max(1.0, abs(r)) and r.real > 0.0]
    return float(min(positive)) if positive else math.inf


def _check_stride(stride: int) -> int:
    if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
        raise ValueError(f"stride must be a positive integer, got {stride!r}")
    return int(stride)


@lru_cache(maxsize=16)
def _cached_ray_grid(camera: CameraModel, stride: int, device: str) -> torch.Tensor:
    return camera.unproject_rays(camera.pixel_grid(stride, device=device))
