"""The pure core of egox_ros: everything but ROS (no rclpy, nothing from egox_ros.ros), in parts that each import
only the parts listed before them (test/test_layout.py checks it):

- ``config``: the typed config of every component (dataclasses with ranges), used by every part.
- ``geometry``: cameras (one file per model family), rigid transforms, exo frames, depth alignment, point-cloud
  fusion, rendering (the soft-splat and voxel kernels) and point-cloud files.
- ``io``: image codecs, compressed images, contact sheets, folder listings, the open3d import, image comparison.
- ``depth``, ``demonstrator``, ``attention``: depth sources; the person detector and the head from the exo camera;
  geometry-guided attention (GGA).
- ``egox``: the EgoX diffusion pipeline (Wan 2.1 image-to-video + LoRA + GGA), its weights and canvas.
- ``generators``: the generators behind one interface (prior, egox) and the pool that runs them (threads or Ray).
- ``runtime``: the engine the node and `egox process` drive, the frame synchroniser, the TF buffer, and the
  pipeline from a window of exo frames to an ego clip.
"""
