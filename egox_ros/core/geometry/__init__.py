"""Geometry, the bottom of the core: camera models (cameras/), rigid transforms, exo frames and their window,
depth alignment, point-cloud fusion, the prior's renderer with its compiled kernels, point-cloud files.
Imports core.config only."""
