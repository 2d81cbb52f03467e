"""Typed configuration of the ROS layer (topics, frames, QoS, synchronisation); see egox_ros.core.config."""
from __future__ import annotations

from dataclasses import dataclass

from egox_ros.core.config import param, validate
from egox_ros.core.synchroniser import SyncConfig  # noqa: F401 - a node section, defined with its component


@dataclass
class InputsConfig:
    """Where the exo frames and the head pose come from."""
    use_depth: bool = param(True, "subscribe to exo/depth/image_raw (16UC1 mm or 32FC1 m, registered to the exo image)")
    head_source: str = param("tf", "head pose from 'tf' (head_frame in the TF tree), 'pose_topic' (head/pose, "
                                   "geometry_msgs/PoseStamped) or 'exo' (estimated from the exo image: needs "
                                   "person.source 'mediapipe'; section head)", choices=("tf", "pose_topic", "exo"))
    head_frame: str = param("head", "frame of the demonstrator's head (TF child frame, or the frame the pose topic "
                                    "sets; with 'exo' the node publishes it: OpenCV axes at the eyes, z forward)")
    world_frame: str = param("world", "fixed frame: point clouds are fused and the ego frame published in it")
    exo_frame: str = param("", "exo optical frame; empty = the exo image's header.frame_id")
    exo_transport: str = param("raw", "exo image transport: 'raw' (sensor_msgs/Image on exo/image_raw) or "
                                      "'compressed' (CompressedImage, JPEG/PNG, on exo/image_raw/compressed)",
                               choices=("raw", "compressed"))
    depth_transport: str = param("raw", "depth transport: 'raw' (Image on exo/depth/image_raw) or 'compressedDepth' "
                                        "(CompressedImage, PNG 16UC1/32FC1 as image_transport writes it, on "
                                        "exo/depth/image_raw/compressedDepth)", choices=("raw", "compressedDepth"))

    def __post_init__(self) -> None:
        validate(self)
        if not self.head_frame or not self.world_frame:
            raise ValueError("inputs.head_frame and inputs.world_frame must not be empty")


@dataclass
class OutputsConfig:
    """The generated view's frame and where it sits on the head."""
    ego_frame: str = param("ego_camera_optical", "optical frame (OpenCV axes) of the generated ego view")
    head_to_ego_xyz_m: list = param([0.0, 0.0, 0.0], "position of the ego optical frame in the head frame [m]",
                                    (-10.0, 10.0))
    head_to_ego_rpy_rad: list = param([0.0, 0.0, 0.0], "rotation of the ego optical frame in the head frame, roll "
                                      "pitch yaw [rad]; use [-1.5708, 0, -1.5708] for a REP-103 head (x forward, z up)",
                                      (-7.0, 7.0))
    publish_tf: bool = param(True, "publish world -> ego_frame on /tf at every output stamp")
    publish_cloud: bool = param(False, "publish the fused window cloud (world frame) on ego/prior/cloud with every "
                                       "clip, for RViz")

    def __post_init__(self) -> None:
        validate(self)
        if len(self.head_to_ego_xyz_m) != 3 or len(self.head_to_ego_rpy_rad) != 3:
            raise ValueError("outputs.head_to_ego_xyz_m and outputs.head_to_ego_rpy_rad need 3 values each")


@dataclass
class QosConfig:
    """QoS of the topics: sensor-data style inputs, reliable outputs by default."""
    input_reliability: str = param("best_effort", "reliability of input subscriptions",
                                   choices=("best_effort", "reliable"))
    input_depth: int = param(5, "history depth of input subscriptions", (1, 1000))
    output_reliability: str = param("reliable", "reliability of output publishers", choices=("best_effort", "reliable"))
    output_depth: int = param(10, "history depth of output publishers", (1, 1000))

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class RuntimeConfig:
    """How the node uses the machine."""
    torch_threads: int = param(1, "CPU threads for torch (fusion, rendering, depth and person models, the generator "
                                  "on CPU); 0 = torch's default (all cores). 1 keeps 30 Hz on a busy 2-core machine "
                                  "(docs/benchmarks.md, soak)", (0, 1024))

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class DiagnosticsConfig:
    period_s: float = param(1.0, "period of /diagnostics [s]", (0.05, 3600.0))

    def __post_init__(self) -> None:
        validate(self)


def parameter_sections() -> dict[str, type]:
    """Every parameter section of the node, in declaration order: `<section>.<field>` is a parameter."""
    from egox_ros.core.config import (DepthConfig, EgoCameraConfig, EgoxConfig, GeneratorConfig, PriorConfig,
                                      WindowConfig)
    from egox_ros.core.demonstrator.detector import PersonConfig
    from egox_ros.core.demonstrator.head_geometry import HeadPoseConfig
    from egox_ros.core.depth_alignment import DepthAlignmentConfig
    from egox_ros.core.fusion import FusionConfig
    return {"inputs": InputsConfig, "outputs": OutputsConfig, "qos": QosConfig, "sync": SyncConfig,
            "runtime": RuntimeConfig, "diagnostics": DiagnosticsConfig, "depth": DepthConfig, "depth_alignment": DepthAlignmentConfig,
            "person": PersonConfig, "head": HeadPoseConfig,
            "ego_camera": EgoCameraConfig, "window": WindowConfig,
            "fusion": FusionConfig, "prior": PriorConfig, "generator": GeneratorConfig,
            "egox": EgoxConfig}


def default_parameters_yaml() -> str:
    """config/egox.yaml with every parameter at its default and its description as a comment."""
    import dataclasses
    import json
    lines = ["# Parameters of the egox node (generated by `egox config`; every parameter is listed with its default).",
             "# Keys apply to any node name (/**). Override on the command line with -p section.name:=value.",
             "/**:", "  ros__parameters:"]
    for section, cls in parameter_sections().items():
        lines.append(f"    {section}:")
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            meta = f.metadata
            comment = meta.get("help", "")
            if meta.get("choices"):
                comment += f" (one of: {', '.join(meta['choices'])})"
            elif meta.get("range"):
                comment += f" (range {meta['range'][0]} .. {meta['range'][1]})"
            lines.append(f"      # {comment}")
            lines.append(f"      {f.name}: {json.dumps(default)}")
    return "\n".join(lines) + "\n"
