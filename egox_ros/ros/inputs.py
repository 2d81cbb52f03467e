"""The node's input messages into the core engine: which inputs a configuration takes (topic names relative to the
node, message types) and how each message is decoded. One place for the live node and `egox process`."""
from __future__ import annotations

from typing import Callable

from geometry_msgs.msg import PoseStamped
from sensor_msgs.msg import CameraInfo, CompressedImage, Image

from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.io.image_codec import ImageDecodeError, depth_implausible
from egox_ros.core.runtime.engine import EgoEngine
from egox_ros.ros import conversions as conv


def fixed_exo_pose(inputs) -> RigidTransform:
    """world_T_frame of a fixed exo camera's exo_pose_frame from inputs.exo_xyz_m / exo_rpy_rad (roll, pitch, yaw
    about fixed axes)."""
    return RigidTransform.from_xyz_rpy(inputs.exo_xyz_m, inputs.exo_rpy_rad)


class EngineInputs:
    """Decodes input messages and hands them to `engine`; ``inputs`` is the InputsConfig. With
    inputs.exo_pose_source 'parameters', the first image puts the fixed world -> exo_pose_frame (or, without one,
    -> its exo frame) transform into the engine's TF (static) and calls on_fixed_exo(frame_id, world_T_frame, stamp)
    (the node publishes it)."""

    def __init__(self, engine: EgoEngine, inputs, on_fixed_exo: Callable | None = None):
        self.engine, self.inputs = engine, inputs
        self.on_fixed_exo = on_fixed_exo
        self._fixed_exo_frames: set[str] = set()

    def topics(self) -> dict[str, tuple[type, Callable]]:
        """Input name (relative topic, e.g. 'exo/image_raw') -> (message class, handler) for this configuration;
        TF ('/tf', '/tf_static') is always taken and not listed."""
        engine, inputs = self.engine, self.inputs
        if inputs.exo_transport == "compressed":
            taken = {"exo/image_raw/compressed": (CompressedImage, self.image)}
        else:
            taken = {"exo/image_raw": (Image, self.image)}
        taken["exo/camera_info"] = (CameraInfo, self.camera_info)
        if engine.depth_topic and inputs.depth_transport == "compressedDepth":
            taken["exo/depth/image_raw/compressedDepth"] = (CompressedImage, self.depth)
        elif engine.depth_topic:
            taken["exo/depth/image_raw"] = (Image, self.depth)
        if inputs.head_source == "pose_topic":
            taken["head/pose"] = (PoseStamped, self.head_pose)
        if engine.person_config.source == "topic":
            taken["exo/person_mask"] = (Image, self.person_mask)
        return taken

    def image(self, msg: Image | CompressedImage) -> None:
        try:
            rgb, problem = conv.image_to_rgb(msg), None
        except ImageDecodeError as e:
            rgb, problem = None, str(e)
        frame = self.inputs.exo_pose_frame or self.inputs.exo_frame or msg.header.frame_id
        if self.inputs.exo_pose_source == "parameters" and frame and frame not in self._fixed_exo_frames:
            self._fixed_exo_frames.add(frame)
            pose = fixed_exo_pose(self.inputs)
            self.engine.add_transforms([(self.inputs.world_frame, frame, 0, pose, None)], static=True)
            if self.on_fixed_exo is not None:
                self.on_fixed_exo(frame, pose, msg.header.stamp)
        self.engine.add_image(conv.stamp_to_ns(msg.header.stamp), rgb, msg.header.frame_id, rejected=problem)

    def camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = conv.camera_info_to_camera(msg)
        except ValueError as e:
            self.engine.set_camera_info(None, rejected=str(e))
            return
        self.engine.set_camera_info(camera, msg.height, msg.width)

    def depth(self, msg: Image | CompressedImage) -> None:
        try:
            depth_m = conv.image_to_depth_m(msg)
            problem = depth_implausible(depth_m, conv.depth_encoding(msg))
        except ImageDecodeError as e:
            depth_m, problem = None, str(e)
        self.engine.add_depth(conv.stamp_to_ns(msg.header.stamp), depth_m, rejected=problem)

    def tf(self, msg, static: bool) -> None:
        self.engine.add_transforms([(t.header.frame_id, t.child_frame_id, conv.stamp_to_ns(t.header.stamp),
                                     *conv.rigid_or_problem(t.transform)) for t in msg.transforms], static=static)

    def head_pose(self, msg: PoseStamped) -> None:
        parent = msg.header.frame_id or self.inputs.world_frame
        self.engine.add_transforms([(parent, self.inputs.head_frame, conv.stamp_to_ns(msg.header.stamp),
                                     *conv.rigid_or_problem(msg.pose, conv.pose_msg_to_rigid))],
                                   what="bad_head_pose")

    def person_mask(self, msg: Image) -> None:
        """A mask from another segmenter (person.source 'topic'): mono8/8UC1, nonzero = person."""
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        try:
            mask = conv.image_to_mask(msg)
        except ImageDecodeError as e:
            self.engine.note("bad_person_mask", f"person mask at {stamp_ns * 1e-9:.3f} s rejected: {e}")
            return
        self.engine.add_person_mask(stamp_ns, mask)
