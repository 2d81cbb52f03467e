"""ros2 launch egox_ros egox.launch.py [params_file:=...] [use_sim_time:=true] [exo_image:=/camera/color/image_raw] ...

Built from egox_ros.ros.launch_spec, which `egox launch` also reads (machines without ros2cli).
"""
from launch import LaunchDescription
from launch.actions import DeclareLaunchArgument, OpaqueFunction
from launch.substitutions import LaunchConfiguration
from launch_ros.actions import Node

from egox_ros.ros.launch_spec import LAUNCH_ARGUMENTS, NODES, PACKAGE, default_params_file, resolve


def _nodes(context):
    args = {a.name: LaunchConfiguration(a.name).perform(context) for a in LAUNCH_ARGUMENTS}
    params_file = args["params_file"] or str(default_params_file())
    return [
        Node(package=PACKAGE, executable=spec.executable, name=spec.name, namespace=args["namespace"],
             parameters=[params_file, {"use_sim_time": args["use_sim_time"].lower() == "true"}],
             remappings=[(src, resolve(dst, args)) for src, dst in spec.remappings], output="screen")
        for spec in NODES
    ]


def generate_launch_description():
    return LaunchDescription(
        [DeclareLaunchArgument(a.name, default_value=a.default, description=a.description) for a in LAUNCH_ARGUMENTS]
        + [OpaqueFunction(function=_nodes)])
