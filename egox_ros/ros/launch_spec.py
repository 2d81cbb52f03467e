"""What `ros2 launch egox_ros egox.launch.py` and `egox launch` start: the one source of truth for both.

No launch or rclpy import here, so the CLI can read it on machines without the launch packages.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

PACKAGE = "egox_ros"


@dataclass(frozen=True)
class LaunchArgument:
    name: str
    default: str
    description: str


@dataclass(frozen=True)
class NodeSpec:
    executable: str
    name: str
    # (from, to) remappings; `to` may use $(var NAME) launch arguments, resolved by both launchers.
    remappings: tuple[tuple[str, str], ...] = field(default_factory=tuple)


LAUNCH_ARGUMENTS = (
    LaunchArgument("params_file", "", "parameter YAML; empty = the package's config/egox.yaml"),
    LaunchArgument("namespace", "", "namespace of the egox node"),
    LaunchArgument("use_sim_time", "false", "follow /clock (true for rosbag replay)"),
    LaunchArgument("exo_image", "exo/image_raw", "exo camera image topic (sensor_msgs/Image)"),
    LaunchArgument("exo_camera_info", "exo/camera_info", "exo camera info topic"),
    LaunchArgument("exo_depth", "exo/depth/image_raw", "exo depth image topic (16UC1 mm or 32FC1 m)"),
    LaunchArgument("head_pose", "head/pose", "head pose topic (with inputs.head_source: pose_topic)"),
)

NODES = (
    NodeSpec(
        executable="egox_node",
        name="egox",
        remappings=(
            ("exo/image_raw", "$(var exo_image)"),
            ("exo/camera_info", "$(var exo_camera_info)"),
            ("exo/depth/image_raw", "$(var exo_depth)"),
            ("head/pose", "$(var head_pose)"),
        ),
    ),
)


def default_params_file() -> Path:
    """config/egox.yaml: from the ament share directory when installed by colcon, else from the source tree."""
    try:
        from ament_index_python.packages import PackageNotFoundError, get_package_share_directory
        try:
            candidate = Path(get_package_share_directory(PACKAGE)) / "config" / "egox.yaml"
            if candidate.is_file():
                return candidate
        except (PackageNotFoundError, ValueError, KeyError, OSError):  # OSError: AMENT_PREFIX_PATH unset
            pass
    except ImportError:
        pass
    return Path(__file__).resolve().parents[2] / "config" / "egox.yaml"


def resolve(text: str, arguments: dict[str, str]) -> str:
    """Substitute $(var NAME) with the launch argument's value."""
    for name, value in arguments.items():
        text = text.replace(f"$(var {name})", value)
    return text
