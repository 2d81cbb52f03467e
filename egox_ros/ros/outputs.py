"""The node's output messages, built from the engine's events: one place for what the live node publishes and what
`egox process` writes into its bag, so both produce the same messages.

Topics are named as the node names them (relative, private '~/...' or absolute '/tf'); see README's topic table.
"""
from __future__ import annotations

import itertools

import numpy as np
from diagnostic_msgs.msg import KeyValue
from egox_msgs.msg import ClipMetadata
from geometry_msgs.msg import PoseWithCovarianceStamped
from tf2_msgs.msg import TFMessage

from egox_ros.core.config import InputsConfig, OutputsConfig
from egox_ros.core.demonstrator.head_tracker import HeadEstimate
from egox_ros.core.generators import EgoGenerator
from egox_ros.core.geometry.transforms import RigidTransform
from egox_ros.core.runtime.pipeline import ClipOutput
from egox_ros.core.runtime.synchroniser import Drop
from egox_ros.ros import conversions as conv

CLIP_TOPICS = ("ego/image_raw", "ego/camera_info", "ego/prior/image_raw", "ego/prior/mask", "ego/prior/camera_info",
               "ego/clip_metadata", "/tf")


class OutputMessages:
    """Messages for clips, drops, person masks and head estimates. ``generator``: a callable returning the
    generator in use (it can change when loading fails); ``node_name`` prefixes clip ids."""

    def __init__(self, inputs: InputsConfig, outputs: OutputsConfig, ego_camera, generator, node_name: str = "egox"):
        self.inputs, self.outputs, self.ego_camera = inputs, outputs, ego_camera
        self._generator = generator
        self.node_name = node_name
        self._clip_seq = itertools.count()

    @property
    def generator(self) -> EgoGenerator:
        return self._generator()

    def metadata(self, stamps_ns: list[int], status: int, reason: str) -> ClipMetadata:
        meta = ClipMetadata(status=status, reason=reason, generator=self.generator.name,
                            clip_id=f"{self.node_name}-{next(self._clip_seq)}",
                            ego_frame_id=self.outputs.ego_frame, exo_frame_id=self.inputs.exo_frame)
        meta.header.stamp = conv.ns_to_stamp(stamps_ns[0])
        meta.header.frame_id = self.outputs.ego_frame
        meta.source_stamps = [conv.ns_to_stamp(s) for s in stamps_ns]
        meta.generator_settings = [KeyValue(key=k, value=v) for k, v in self.generator.settings().items()]
        return meta

    def clip(self, output: ClipOutput, latency_s: float) -> list[tuple[str, object]]:
        """Per frame: world -> ego TF (outputs.publish_tf), prior, mask, camera infos, ego image; then the clip's
        metadata. (topic, message) pairs in publishing order."""
        messages = []
        frames, ego_frame = output.request.frames, self.outputs.ego_frame
        for frame, prior, rgb, valid in zip(frames, output.request.priors, output.result.rgb, output.result.valid):
            stamp = conv.ns_to_stamp(frame.stamp_ns)
            if self.outputs.publish_tf:
                world_T_ego = RigidTransform.from_matrix(frame.world_T_ego)
                messages.append(("/tf", TFMessage(transforms=[conv.rigid_to_transform_stamped(
                    world_T_ego, self.inputs.world_frame, ego_frame, stamp)])))
            info = conv.camera_to_camera_info(self.ego_camera, stamp, ego_frame)
            messages += [
                ("ego/prior/image_raw", conv.array_to_image(prior.rgb, "rgb8", stamp, ego_frame)),
                ("ego/prior/mask", conv.array_to_image(valid.astype(np.uint8) * 255, "mono8", stamp, ego_frame)),
                ("ego/prior/camera_info", info),     # image_transport / RViz: the prior's and the mask's sibling
                ("ego/camera_info", info),
                ("ego/image_raw", conv.array_to_image(rgb, "rgb8", stamp, ego_frame)),
            ]
        meta = self.metadata([f.stamp_ns for f in frames], ClipMetadata.STATUS_OK, "")
        meta.exo_frame_id = frames[0].exo_frame_id
        meta.prior_coverage = [p.coverage for p in output.request.priors]
        meta.prior_person_fraction = [p.person_fraction for p in output.request.priors]
        meta.prior_time_s = output.prior_time_s
        meta.generation_time_s = output.generation_time_s
        meta.latency_s = latency_s
        messages.append(("ego/clip_metadata", meta))
        return messages

    def drop(self, drop: Drop) -> list[tuple[str, object]]:
        """One ClipMetadata per dropped frame, saying why (STATUS_FAILED for generator_failed)."""
        status = ClipMetadata.STATUS_FAILED if drop.code == "generator_failed" else ClipMetadata.STATUS_DROPPED
        return [("ego/clip_metadata", self.metadata([s], status, f"{drop.code}: {drop.detail}"))
                for s in drop.stamps_ns]

    def person_mask(self, stamp_ns: int, mask: np.ndarray, frame_id: str) -> list[tuple[str, object]]:
        return [("~/person_mask", conv.array_to_image(mask.astype(np.uint8) * 255, "mono8",
                                                      conv.ns_to_stamp(stamp_ns), frame_id))]

    def head(self, stamp_ns: int, estimate: HeadEstimate) -> list[tuple[str, object]]:
        """The estimated head on /tf (inputs.head_frame) and ~/head_pose with its covariance."""
        stamp = conv.ns_to_stamp(stamp_ns)
        world_T_head = RigidTransform.from_matrix(estimate.world_T_head)
        pose = PoseWithCovarianceStamped()
        pose.header.stamp, pose.header.frame_id = stamp, self.inputs.world_frame
        pose.pose.pose = conv.rigid_to_pose(world_T_head)
        pose.pose.covariance = [float(v) for v in np.asarray(estimate.covariance, np.float64).ravel()]
        return [("/tf", TFMessage(transforms=[conv.rigid_to_transform_stamped(
                    world_T_head, self.inputs.world_frame, self.inputs.head_frame, stamp)])),
                ("~/head_pose", pose)]
