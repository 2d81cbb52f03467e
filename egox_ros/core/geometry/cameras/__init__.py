"""Camera models, one file per model family behind one interface (:class:`CameraModel`, base.py):
pinhole with OpenCV / ROS distortion (pinhole.py), Kannala-Brandt fisheye (fisheye.py), Project Aria's
FisheyeRadTanThinPrism (aria.py), and building one from ROS CameraInfo fields (camera_info.py).
Imports nothing of egox_ros outside this folder."""
from egox_ros.core.geometry.cameras.aria import ARIA_DISTORTION_MODEL, AriaFisheyeCamera
from egox_ros.core.geometry.cameras.base import CameraModel, rotated_90_pose
from egox_ros.core.geometry.cameras.camera_info import SUPPORTED_DISTORTION_MODELS, camera_from_camera_info
from egox_ros.core.geometry.cameras.fisheye import FisheyeCamera
from egox_ros.core.geometry.cameras.pinhole import PinholeCamera

__all__ = ["ARIA_DISTORTION_MODEL", "SUPPORTED_DISTORTION_MODELS", "AriaFisheyeCamera", "CameraModel",
           "FisheyeCamera", "PinholeCamera", "camera_from_camera_info", "rotated_90_pose"]
