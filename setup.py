"""egox_ros: ament_python package (colcon) that also installs with pip (scripts/setup.sh)."""
from glob import glob

from setuptools import find_packages, setup

PACKAGE = "egox_ros"

setup(
    name=PACKAGE,
    version="0.1.0",
    description="EgoX for ROS 2: third-person camera to first-person video",
    license="Apache-2.0",
    python_requires=">=3.10",
    packages=find_packages(include=[PACKAGE, f"{PACKAGE}.*"]),
    data_files=[
        ("share/ament_index/resource_index/packages", [f"resource/{PACKAGE}"]),
        (f"share/{PACKAGE}", ["package.xml"]),
        (f"share/{PACKAGE}/launch", glob("launch/*.launch.py")),
        (f"share/{PACKAGE}/config", glob("config/*.yaml")),
    ],
    install_requires=["numpy", "pyyaml", "tqdm", "pillow", "transforms3d", "rosbags", "mcap", "mcap-ros2-support"],
    zip_safe=False,
    entry_points={
        "console_scripts": [
            "egox = egox_ros.cli:main",
            "egox_node = egox_ros.ros.node:main",
        ],
    },
)
