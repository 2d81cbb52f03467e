"""The thin ROS 2 layer over egox_ros.core: the node (node.py, with its inputs, outputs, parameters and
conversions), the DDS set-up, `egox record`, and the bag-in, bag-out commands in offline/."""
