"""Codecs and file helpers: image codecs (ROS encodings, PNG/JPEG), compressed images, contact sheets, folder
listings, the open3d import, and image comparison (masked PSNR, resampling into another camera).
Imports core.config and core.geometry only."""
