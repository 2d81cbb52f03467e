"""EgoX for ROS 2: third-person camera to first-person video."""
