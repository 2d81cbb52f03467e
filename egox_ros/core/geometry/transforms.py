"""Rigid transforms and quaternion helpers (numpy only, no ROS).

Conventions
-----------
* Quaternions use ROS order ``(x, y, z, w)``.
* A transform ``a_T_b`` maps points expressed in frame ``b`` into frame ``a``:
  ``p_a = R p_b + t``.  Translations are in metres.
* ``a_T_b.compose(b_T_c)`` (or ``a_T_b @ b_T_c``) is ``a_T_c``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

_RIGID_TOL = 1e-6


def _as_quat(q) -> np.ndarray:
    q = np.asarray(q, dtype=np.float64)
    if q.shape != (4,):
        raise ValueError(f"quaternion must have shape (4,), got {q.shape}")
    if not np.all(np.isfinite(q)):
        raise ValueError("quaternion must be finite")
    n = np.linalg.norm(q)
    if n < 1e-9:
        raise ValueError(f"quaternion norm {n:g} is too small to normalise")
    return q / n


QUATERNION_UNIT_TOLERANCE = 1e-2   # | |q|^2 - 1 | above this is rejected, as tf2's BufferCore does


def check_unit_quaternion(q_xyzw) -> None:
    """Raise ValueError unless q (x, y, z, w) is finite and of unit length within QUATERNION_UNIT_TOLERANCE (on the
    squared norm, tf2's rule): a message's quaternion is used as sent or rejected, never silently normalised."""
    q = np.asarray(q_xyzw, dtype=np.float64)
    if q.shape != (4,) or not np.all(np.isfinite(q)):
        raise ValueError(f"quaternion must be 4 finite numbers, got {q.tolist()}")
    norm2 = float(q @ q)
    if abs(norm2 - 1.0) > QUATERNION_UNIT_TOLERANCE:
        raise ValueError(f"quaternion {q.round(6).tolist()} is not normalised (|q| = {norm2 ** 0.5:.6g})")


def quat_to_matrix(q_xyzw) -> np.ndarray:
    """Unit quaternion ``(x, y, z, w)`` -> (3, 3) rotation matrix (normalises input)."""
    x, y, z, w = _as_quat(q_xyzw)
    xx, yy, zz = x * x, y * y, z * z
    xy, xz, yz = x * y, x * z, y * z
    wx, wy, wz = w * x, w * y, w * z
    return np.array(
        [
            [1 - 2 * (yy + zz), 2 * (xy - wz), 2 * (xz + wy)],
            [2 * (xy + wz), 1 - 2 * (xx + zz), 2 * (yz - wx)],
            [2 * (xz - wy), 2 * (yz + wx), 1 - 2 * (xx + yy)],
        ],
        dtype=np.float64,
    )


def matrix_to_quat(r) -> np.ndarray:
    """(3, 3) rotation matrix -> unit quaternion ``(x, y, z, w)`` with ``w >= 0``.

    Branches on the largest diagonal term, so it is stable for all rotations
    including 180-degree ones.
    """
    m = np.asarray(r, dtype=np.float64)
    if m.shape != (3, 3):
        raise ValueError(f"rotation matrix must have shape (3, 3), got {m.shape}")
    trace = m[0, 0] + m[1, 1] + m[2, 2]
    if trace > 0.0:
        s = 2.0 * np.sqrt(trace + 1.0)
        q = [(m[2, 1] - m[1, 2]) / s, (m[0, 2] - m[2, 0]) / s, (m[1, 0] - m[0, 1]) / s, 0.25 * s]
    elif m[0, 0] >= m[1, 1] and m[0, 0] >= m[2, 2]:
        s = 2.0 * np.sqrt(max(1.0 + m[0, 0] - m[1, 1] - m[2, 2], 0.0))
        q = [0.25 * s, (m[0, 1] + m[1, 0]) / s, (m[0, 2] + m[2, 0]) / s, (m[2, 1] - m[1, 2]) / s]
    elif m[1, 1] >= m[2, 2]:
        s = 2.0 * np.sqrt(max(1.0 + m[1, 1] - m[0, 0] - m[2, 2], 0.0))
        q = [(m[0, 1] + m[1, 0]) / s, 0.25 * s, (m[1, 2] + m[2, 1]) / s, (m[0, 2] - m[2, 0]) / s]
    else:
        s = 2.0 * np.sqrt(max(1.0 + m[2, 2] - m[0, 0] - m[1, 1], 0.0))
        q = [(m[0, 2] + m[2, 0]) / s, (m[1, 2] + m[2, 1]) / s, 0.25 * s, (m[1, 0] - m[0, 1]) / s]
    q = np.asarray(q, dtype=np.float64)
    q /= np.linalg.norm(q)
    return -q if q[3] < 0 else q


def quat_slerp(q0_xyzw, q1_xyzw, fraction: float) -> np.ndarray:
    """Spherical linear interpolation along the shortest arc, ``(x, y, z, w)``.

    ``fraction`` 0 gives ``q0``, 1 gives ``q1`` (possibly sign-flipped, which is
    the same rotation).  Nearly parallel inputs fall back to normalised lerp.
    """
    q0 = _as_quat(q0_xyzw)
    q1 = _as_quat(q1_xyzw)
    f = float(fraction)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:  # q and -q are the same rotation: take the short way round
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + f * (q1 - q0)
        return q / np.linalg.norm(q)
    theta = np.arccos(min(dot, 1.0))
    sin_theta = np.sin(theta)
    q = (np.sin((1.0 - f) * theta) * q0 + np.sin(f * theta) * q1) / sin_theta
    return q / np.linalg.norm(q)


@dataclass(frozen=True, eq=False)
class RigidTransform:
    """Rigid transform ``parent_T_child``: ``p_parent = R p_child + t``.

    ``translation_m``: (3,) float64 metres; ``rotation_xyzw``: (4,) float64 unit
    quaternion in ROS order.  Arrays are copied, normalised and made read-only.
    """

    translation_m: np.ndarray
    rotation_xyzw: np.ndarray

    def __post_init__(self) -> None:
        t = np.array(self.translation_m, dtype=np.float64)
        if t.shape != (3,):
            raise ValueError(f"translation_m must have shape (3,), got {t.shape}")
        if not np.all(np.isfinite(t)):
            raise ValueError("translation_m must be finite")
        q = _as_quat(self.rotation_xyzw).copy()
        t.setflags(write=False)
        q.setflags(write=False)
        object.__setattr__(self, "translation_m", t)
        object.__setattr__(self, "rotation_xyzw", q)

    @classmethod
    def identity(cls) -> "RigidTransform":
        return cls(np.zeros(3), np.array([0.0, 0.0, 0.0, 1.0]))

    @classmethod
    def from_xyz_rpy(cls, xyz_m, rpy_rad) -> "RigidTransform":
        """From a translation (3,) [m] and roll, pitch, yaw [rad] about fixed axes (x, then y, then z), as ROS
        parameters and static_transform_publisher give a pose."""
        import transforms3d
        quat_wxyz = transforms3d.euler.euler2quat(*rpy_rad, axes="sxyz")
        return cls(np.array(xyz_m, float), np.roll(quat_wxyz, -1))

    @classmethod
    def from_matrix(cls, m4x4) -> "RigidTransform":
        """Build from a (4, 4) homogeneous matrix; raises ValueError if not rigid."""
        m = np.asarray(m4x4, dtype=np.float64)
        if m.shape != (4, 4):
            raise ValueError(f"matrix must have shape (4, 4), got {m.shape}")
        if not np.all(np.isfinite(m)):
            raise ValueError("matrix must be finite")
        if not np.allclose(m[3], [0.0, 0.0, 0.0, 1.0], atol=_RIGID_TOL):
            raise ValueError(f"bottom row must be [0, 0, 0, 1], got {m[3]}")
        r = m[:3, :3]
        if not np.allclose(r.T @ r, np.eye(3), atol=_RIGID_TOL) or np.linalg.det(r) < 0.0:
            raise ValueError("upper-left 3x3 block is not a proper rotation (orthonormal, det +1)")
        return cls(m[:3, 3].copy(), matrix_to_quat(r))

    def rotation_matrix(self) -> np.ndarray:
        """(3, 3) rotation matrix R."""
        return quat_to_matrix(self.rotation_xyzw)

    def as_matrix(self) -> np.ndarray:
        """(4, 4) float64 homogeneous matrix."""
        m = np.eye(4)
        m[:3, :3] = self.rotation_matrix()
        m[:3, 3] = self.translation_m
        return m

    def inverse(self) -> "RigidTransform":
        """``child_T_parent`` for ``self == parent_T_child``."""
        x, y, z, w = self.rotation_xyzw
        q_inv = np.array([-x, -y, -z, w])
        return RigidTransform(-(quat_to_matrix(q_inv) @ self.translation_m), q_inv)

    def compose(self, other: "RigidTransform") -> "RigidTransform":
        """``self ∘ other``: ``a_T_b.compose(b_T_c) == a_T_c``."""
        x1, y1, z1, w1 = self.rotation_xyzw
        x2, y2, z2, w2 = other.rotation_xyzw
        q = np.array(
            [
                w1 * x2 + x1 * w2 + y1 * z2 - z1 * y2,
                w1 * y2 - x1 * z2 + y1 * w2 + z1 * x2,
                w1 * z2 + x1 * y2 - y1 * x2 + z1 * w2,
                w1 * w2 - x1 * x2 - y1 * y2 - z1 * z2,
            ]
        )
        t = self.rotation_matrix() @ other.translation_m + self.translation_m
        return RigidTransform(t, q)

    def __matmul__(self, other):
        if not isinstance(other, RigidTransform):
            return NotImplemented
        return self.compose(other)

    def apply(self, points) -> np.ndarray:
        """Map points (..., 3) from the child frame into the parent frame."""
        p = np.asarray(points, dtype=np.float64)
        if p.ndim == 0 or p.shape[-1] != 3:
            raise ValueError(f"points must have shape (..., 3), got {p.shape}")
        return p @ self.rotation_matrix().T + self.translation_m

    def allclose(self, other: "RigidTransform", atol: float = 1e-9) -> bool:
        """True if both transforms are the same rigid motion (q and -q are equal)."""
        return bool(
            np.allclose(self.translation_m, other.translation_m, atol=atol)
            and np.allclose(self.rotation_matrix(), other.rotation_matrix(), atol=atol)
        )

    def __repr__(self) -> str:
        t = np.array2string(np.asarray(self.translation_m), precision=6)
        q = np.array2string(np.asarray(self.rotation_xyzw), precision=6)
        return f"RigidTransform(translation_m={t}, rotation_xyzw={q})"


def interpolate(t0: RigidTransform, t1: RigidTransform, fraction: float) -> RigidTransform:
    """Linear interpolation of translation, slerp of rotation (fraction 0 -> t0, 1 -> t1)."""
    f = float(fraction)
    t = (1.0 - f) * t0.translation_m + f * t1.translation_m
    return RigidTransform(t, quat_slerp(t0.rotation_xyzw, t1.rotation_xyzw, f))
