"""Conversions between ROS messages and the core's numpy / camera / transform types."""
from __future__ import annotations

import functools

import numpy as np
from builtin_interfaces.msg import Time
from geometry_msgs.msg import Pose, Transform, TransformStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from egox_ros.core.geometry.cameras import CameraModel, camera_from_camera_info
from egox_ros.core.geometry.transforms import RigidTransform, check_unit_quaternion
from egox_ros.core.io.compressed_image import decode_compressed_depth_m, decode_compressed_rgb
from egox_ros.core.io.image_codec import ImageDecodeError, decode_depth_m, decode_image, decode_rgb, encode_image
from egox_ros.ros.stamps import ns_to_stamp, stamp_to_ns  # noqa: F401 - part of this module's interface


def image_to_rgb(msg: Image | CompressedImage) -> np.ndarray:
    """(H, W, 3) uint8 RGB from any supported colour or mono encoding, or a JPEG / PNG CompressedImage; raises
    ImageDecodeError."""
    if isinstance(msg, CompressedImage):
        return decode_compressed_rgb(msg.data, msg.format)
    return decode_rgb(msg.data, msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian))


def depth_encoding(msg: Image | CompressedImage) -> str:
    """The depth encoding a message claims: Image.encoding, or the first field of a compressedDepth format."""
    return msg.format.split(";")[0].strip() if isinstance(msg, CompressedImage) else msg.encoding


def image_to_depth_m(msg: Image | CompressedImage) -> np.ndarray:
    """(H, W) float32 metres (NaN = no reading) from 16UC1 mm or 32FC1 m, raw or compressedDepth; raises
    ImageDecodeError."""
    if isinstance(msg, CompressedImage):
        return decode_compressed_depth_m(msg.data, msg.format)
    return decode_depth_m(msg.data, msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian))


def image_to_mask(msg: Image) -> np.ndarray:
    """(H, W) bool, True where a mono8 / 8UC1 mask is nonzero; raises ImageDecodeError for other encodings."""
    if msg.encoding not in ("mono8", "8UC1"):
        raise ImageDecodeError(f"a mask must be mono8 or 8UC1, got {msg.encoding!r}")
    return decode_image(msg.data, msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian)) > 0


def array_to_image(array: np.ndarray, encoding: str, stamp: Time, frame_id: str) -> Image:
    data, step = encode_image(array, encoding)
    msg = Image(height=array.shape[0], width=array.shape[1], encoding=encoding, is_bigendian=0, step=step)
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.data = data
    return msg


def camera_info_to_camera(msg: CameraInfo) -> CameraModel:
    """Camera model from CameraInfo (plumb_bob, rational_polynomial, equidistant or none).

    Raises ValueError for unsupported distortion models, wrong coefficient counts or bad intrinsics.
    """
    return _camera(msg.width, msg.height, tuple(msg.k), tuple(msg.d), msg.distortion_model)


@functools.lru_cache(maxsize=16)
def _camera(width: int, height: int, k: tuple, d: tuple, distortion_model: str) -> CameraModel:
    """camera_from_camera_info, once per distinct CameraInfo (it arrives with every frame; building a distorted
    model solves for its valid radius, about 1 ms). Camera models are not changed after they are built."""
    return camera_from_camera_info(width, height, list(k), list(d), distortion_model)


def camera_to_camera_info(camera: CameraModel, stamp: Time, frame_id: str) -> CameraInfo:
    """CameraInfo with the camera's intrinsics, distortion model and coefficients (R identity, P = [K | 0])."""
    model, d = camera.camera_info_distortion
    msg = CameraInfo(width=camera.width, height=camera.height, distortion_model=model, d=[float(c) for c in d])
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.k = [camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0]
    msg.r = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0]
    msg.p = [camera.fx, 0.0, camera.cx, 0.0, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0]
    return msg


def transform_msg_to_rigid(msg: Transform) -> RigidTransform:
    """Raises ValueError for a quaternion that is not of unit length (tf2 rejects those too)."""
    t, q = msg.translation, msg.rotation
    check_unit_quaternion([q.x, q.y, q.z, q.w])
    return RigidTransform(np.array([t.x, t.y, t.z]), np.array([q.x, q.y, q.z, q.w]))


def rigid_or_problem(msg, convert=None) -> tuple[RigidTransform | None, str | None]:
    """(RigidTransform, None) from a Transform (or, with convert=pose_msg_to_rigid, a Pose), or (None, why) when it
    cannot be used (e.g. a quaternion that is not normalised)."""
    try:
        return (convert or transform_msg_to_rigid)(msg), None
    except ValueError as e:
        return None, str(e)


def pose_msg_to_rigid(msg: Pose) -> RigidTransform:
    """Raises ValueError for a quaternion that is not of unit length."""
    p, q = msg.position, msg.orientation
    check_unit_quaternion([q.x, q.y, q.z, q.w])
    return RigidTransform(np.array([p.x, p.y, p.z]), np.array([q.x, q.y, q.z, q.w]))


def rigid_to_pose(transform: RigidTransform) -> Pose:
    msg = Pose()
    t, q = transform.translation_m, transform.rotation_xyzw
    msg.position.x, msg.position.y, msg.position.z = map(float, t)
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = map(float, q)
    return msg


def rigid_to_transform_stamped(transform: RigidTransform, parent: str, child: str, stamp: Time) -> TransformStamped:
    msg = TransformStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = parent
    msg.child_frame_id = child
    t, q = transform.translation_m, transform.rotation_xyzw
    msg.transform.translation.x, msg.transform.translation.y, msg.transform.translation.z = map(float, t)
    (msg.transform.rotation.x, msg.transform.rotation.y,
     msg.transform.rotation.z, msg.transform.rotation.w) = map(float, q)
    return msg
