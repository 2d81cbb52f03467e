"""The runtime, the top of the core: the engine (EgoEngine) that the ROS node and `egox process` drive, the frame
synchroniser, the TF buffer, and the pipeline from a window of exo frames to an ego clip (prior, then generator).
May import every other part of the core; nothing in the core imports it."""
