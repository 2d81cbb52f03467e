"""Depth of the exo frames from a sensor topic or from the image alone (monocular and temporal models).
Imports core.config, core.geometry and core.io only."""
