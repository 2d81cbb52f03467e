"""The EgoX diffusion pipeline: Wan 2.1 image-to-video with the EgoX LoRA and geometry-guided attention, its weight
files and its input canvas. Imports core.config, core.geometry, core.io and core.attention."""
