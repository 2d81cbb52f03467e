"""Thin ROS 2 layer over egox_ros.core: node, conversions, replay."""
