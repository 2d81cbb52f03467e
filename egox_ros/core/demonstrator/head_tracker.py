"""Temporal filtering of the demonstrator's head pose in the world frame (pure numpy).

``HeadTracker.update`` takes each exo frame's ``HeadMeasurement`` (exo camera frame, from ``head_geometry``) and
the exo camera's pose ``world_T_exo`` of that frame (it may move), and returns a filtered ``HeadEstimate`` in the
world: position by a constant-velocity Kalman filter, orientation by exponential slerp smoothing. When the head is
not seen (no or low-confidence measurement) the last filtered pose is held for up to ``hold_s``; after that the
tracker returns None (the caller drops the frame as ``head_not_visible``).

Poses are (4, 4) float64 ``a_T_b`` (points in b -> a), metres; stamps are integer nanoseconds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from egox_ros.core.demonstrator.head_geometry import HeadMeasurement, HeadPoseConfig
from egox_ros.core.geometry.transforms import matrix_to_quat, quat_slerp, quat_to_matrix

# Nominal growth of the orientation uncertainty while a pose is held (a head turns at up to ~1 rad/s) [rad/s].
_HELD_ROTATION_RATE_RADPS = 1.0


class ConstantVelocityFilter:
    """Kalman filter of a 3-vector with a constant-velocity model, independent per axis (state [p, v] per axis).

    Process noise: white acceleration with 1-sigma ``acceleration_noise_mps2`` [m/s^2] (discrete white-noise
    acceleration model). Measurement noise per update: ``sigma_m`` [m], isotropic. The first update initialises
    the position (velocity 0, velocity sigma ``initial_velocity_sigma_mps``).
    """

    def __init__(self, acceleration_noise_mps2: float, initial_velocity_sigma_mps: float = 1.0) -> None:
        if acceleration_noise_mps2 <= 0 or initial_velocity_sigma_mps <= 0:
            raise ValueError("ConstantVelocityFilter needs positive acceleration and velocity noise")
        self.acceleration_noise_mps2 = float(acceleration_noise_mps2)
        self.initial_velocity_sigma_mps = float(initial_velocity_sigma_mps)
        self.reset()

    def reset(self) -> None:
        """Forget the state; the next update initialises it."""
        self._x = np.zeros((3, 2))            # per axis [p (m), v (m/s)]
        self._p = np.zeros((3, 2, 2))         # per axis 2x2 covariance
        self._stamp_ns: int | None = None

    @property
    def initialised(self) -> bool:
        return self._stamp_ns is not None

    @property
    def stamp_ns(self) -> int | None:
        """Stamp of the last update [ns], None before the first."""
        return self._stamp_ns

    @property
    def position_m(self) -> np.ndarray:
        """(3,) float64 filtered position [m] at the last update."""
        return self._x[:, 0].copy()

    @property
    def velocity_mps(self) -> np.ndarray:
        """(3,) float64 filtered velocity [m/s] at the last update."""
        return self._x[:, 1].copy()

    @property
    def position_variance_m2(self) -> np.ndarray:
        """(3,) float64 position variances [m^2] at the last update."""
        return self._p[:, 0, 0].copy()

    @property
    def velocity_variance_m2ps2(self) -> np.ndarray:
        """(3,) float64 velocity variances [(m/s)^2] at the last update."""
        return self._p[:, 1, 1].copy()

    def update(self, stamp_ns: int, position_m: np.ndarray, sigma_m: float) -> np.ndarray:
        """Predict to ``stamp_ns`` and fuse one (3,) position measurement [m] with 1-sigma ``sigma_m`` [m].

        Returns the filtered (3,) position [m]. Raises ValueError when the stamp is not after the last one.
        """
        z = np.asarray(position_m, np.float64).reshape(3)
        r = float(sigma_m) ** 2
        if r <= 0:
            raise ValueError(f"measurement sigma must be positive, got {sigma_m}")
        if self._stamp_ns is None:
            self._x[:, 0] = z
            self._x[:, 1] = 0.0
            self._p[:] = np.diag([r, self.initial_velocity_sigma_mps**2])
            self._stamp_ns = int(stamp_ns)
            return self.position_m
        if stamp_ns <= self._stamp_ns:
            raise ValueError(f"stamp {stamp_ns} ns is not after the last update {self._stamp_ns} ns")
        dt = (int(stamp_ns) - self._stamp_ns) * 1e-9
        f = np.array([[1.0, dt], [0.0, 1.0]])
        q = self.acceleration_noise_mps2**2 * np.array([[dt**4 / 4, dt**3 / 2], [dt**3 / 2, dt**2]])
        x = self._x @ f.T                                   # (3, 2)
        p = f @ self._p @ f.T + q                           # (3, 2, 2)
        s = p[:, 0, 0] + r                                  # (3,)
        k = p[:, :, 0] / s[:, None]                         # (3, 2) gain per axis
        innovation = z - x[:, 0]
        self._x = x + k * innovation[:, None]
        h_row = np.array([1.0, 0.0])
        i_kh = np.eye(2)[None] - k[:, :, None] * h_row[None, None, :]
        self._p = i_kh @ p @ i_kh.transpose(0, 2, 1) + r * k[:, :, None] * k[:, None, :]   # Joseph form
        self._stamp_ns = int(stamp_ns)
        return self.position_m


@dataclass
class HeadEstimate:
    """The demonstrator's filtered head pose for one frame.

    stamp_ns: the frame's stamp [ns].
    world_T_head: (4, 4) float64, head frame -> world [m].
    confidence: in [0, 1] (decays linearly to 0 over hold_s while held).
    covariance: (6, 6) float64, order x, y, z [m^2], rot_x, rot_y, rot_z [rad^2] in the world frame (as
        geometry_msgs/PoseWithCovariance); position from the filter, rotation NOMINAL (from the measurements'
        nominal sigmas and the smoothing), both growing while held.
    state: 'measured' (this frame's measurement was used) or 'held' (the last filtered pose, no extrapolation).
    age_s: time since the last accepted measurement [s] (0 when measured).
    measurement: this frame's HeadMeasurement (also when it was rejected for low confidence), or None.
    """
    stamp_ns: int
    world_T_head: np.ndarray
    confidence: float
    covariance: np.ndarray
    state: str
    age_s: float
    measurement: HeadMeasurement | None


class HeadTracker:
    """Filters per-frame head measurements into a world head pose; see the module docstring."""

    def __init__(self, config: HeadPoseConfig | None = None) -> None:
        self.config = config or HeadPoseConfig()
        self._position = ConstantVelocityFilter(self.config.acceleration_noise_mps2)
        self.reset()

    def reset(self) -> None:
        """Forget the track and the last stamp."""
        self._position.reset()
        self._last_stamp_ns: int | None = None
        self._accepted_stamp_ns: int | None = None
        self._quat_xyzw: np.ndarray | None = None
        self._rotation_variance_rad2 = 0.0
        self._confidence = 0.0

    def _pose(self) -> np.ndarray:
        m = np.eye(4)
        m[:3, :3] = quat_to_matrix(self._quat_xyzw)
        m[:3, 3] = self._position.position_m
        return m

    def update(self, stamp_ns: int, measurement: HeadMeasurement | None,
               world_T_exo: np.ndarray) -> HeadEstimate | None:
        """One exo frame: its stamp [ns], its head measurement (exo frame) or None, and the exo camera pose (4, 4).

        Returns the filtered estimate ('measured' or 'held'), or None when the head has not been seen (with enough
        confidence) for more than hold_s. Raises ValueError when ``stamp_ns`` is not after the previous call's.
        """
        stamp_ns = int(stamp_ns)
        if self._last_stamp_ns is not None and stamp_ns <= self._last_stamp_ns:
            raise ValueError(f"HeadTracker stamps must increase: {stamp_ns} ns after {self._last_stamp_ns} ns "
                             "(call reset() to start over)")
        self._last_stamp_ns = stamp_ns
        cfg = self.config
        hold_ns = int(round(cfg.hold_s * 1e9))
        if self._accepted_stamp_ns is not None and stamp_ns - self._accepted_stamp_ns > hold_ns:
            # The track was lost: the next measurement starts a new one.
            self._position.reset()
            self._quat_xyzw = None
            self._accepted_stamp_ns = None

        if measurement is not None and measurement.confidence >= cfg.min_confidence:
            world_T_head = np.asarray(world_T_exo, np.float64) @ np.asarray(measurement.exo_T_head, np.float64)
            sigma_m = max(cfg.position_noise_m, float(measurement.position_sigma_m))
            q_meas = matrix_to_quat(world_T_head[:3, :3])
            rot_var_meas = float(measurement.rotation_sigma_rad) ** 2
            confidence = float(np.clip(measurement.confidence, 0.0, 1.0))
            if self._quat_xyzw is None:
                self._quat_xyzw = q_meas
                self._rotation_variance_rad2 = rot_var_meas
            else:
                dt_s = (stamp_ns - self._accepted_stamp_ns) * 1e-9
                tau = cfg.rotation_time_constant_s
                alpha = 1.0 if tau <= 0 else 1.0 - np.exp(-dt_s / tau)
                alpha *= confidence
                self._quat_xyzw = quat_slerp(self._quat_xyzw, q_meas, alpha)
                # Nominal variance of an exponential average: the prior (grown by head motion over dt) shrunk by
                # (1 - alpha)^2, plus alpha^2 of the measurement's.
                prior = self._rotation_variance_rad2 + (_HELD_ROTATION_RATE_RADPS * dt_s) ** 2
                self._rotation_variance_rad2 = (1 - alpha) ** 2 * prior + alpha**2 * rot_var_meas
            self._position.update(stamp_ns, world_T_head[:3, 3], sigma_m)
            self._accepted_stamp_ns = stamp_ns
            self._confidence = confidence
            cov = np.zeros((6, 6))
            cov[[0, 1, 2], [0, 1, 2]] = self._position.position_variance_m2
            cov[[3, 4, 5], [3, 4, 5]] = self._rotation_variance_rad2
            return HeadEstimate(stamp_ns=stamp_ns, world_T_head=self._pose(), confidence=confidence,
                                covariance=cov, state="measured", age_s=0.0, measurement=measurement)

        if self._accepted_stamp_ns is None:
            return None
        age_s = (stamp_ns - self._accepted_stamp_ns) * 1e-9
        fade = 1.0 - age_s / cfg.hold_s if cfg.hold_s > 0 else 0.0
        # Held: the pose stays; its uncertainty grows as the head may have moved (velocity and acceleration).
        pos_var = (self._position.position_variance_m2 + self._position.velocity_variance_m2ps2 * age_s**2
                   + (np.linalg.norm(self._position.velocity_mps) * age_s) ** 2
                   + (0.5 * cfg.acceleration_noise_mps2 * age_s**2) ** 2)
        cov = np.zeros((6, 6))
        cov[[0, 1, 2], [0, 1, 2]] = pos_var
        cov[[3, 4, 5], [3, 4, 5]] = self._rotation_variance_rad2 + (_HELD_ROTATION_RATE_RADPS * age_s) ** 2
        return HeadEstimate(stamp_ns=stamp_ns, world_T_head=self._pose(),
                            confidence=float(np.clip(self._confidence * fade, 0.0, 1.0)), covariance=cov,
                            state="held", age_s=float(age_s), measurement=measurement)
