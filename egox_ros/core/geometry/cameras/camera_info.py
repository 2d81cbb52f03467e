"""Camera models from ROS ``sensor_msgs/CameraInfo`` fields: the distortion model names this package reads."""
from __future__ import annotations

import math
from typing import Sequence

import numpy as np

from egox_ros.core.geometry.cameras.aria import ARIA_DISTORTION_ALIASES, ARIA_DISTORTION_MODEL, AriaFisheyeCamera
from egox_ros.core.geometry.cameras.base import CameraModel
from egox_ros.core.geometry.cameras.fisheye import FisheyeCamera
from egox_ros.core.geometry.cameras.pinhole import PinholeCamera

# ROS CameraInfo distortion models understood by camera_from_camera_info.
SUPPORTED_DISTORTION_MODELS = ("plumb_bob", "rational_polynomial", "equidistant") + ARIA_DISTORTION_ALIASES + (
    "none", "")


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
