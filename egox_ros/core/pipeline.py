"""From synchronised exo frames to ego clips: prior rendering over the rolling window, then the generator."""
from __future__ import annotations

import time
from dataclasses import dataclass

import numpy as np
import torch

from egox_ros.core.camera import PinholeCamera
from egox_ros.core.config import EgoCameraConfig, PriorConfig
from egox_ros.core.frames import ExoFrame
from egox_ros.core.generators import ClipRequest, ClipResult, EgoGenerator, Prior
from egox_ros.core.render import PointCloud, lift_depth, render_points


def ego_camera_from_config(config: EgoCameraConfig) -> PinholeCamera:
    return PinholeCamera(width=config.width, height=config.height, fx=config.fx, fy=config.fy,
                         cx=config.cx, cy=config.cy)


class PriorRenderer:
    """Renders the ego prior of a frame from the point cloud of the newest window frames up to it."""

    def __init__(self, config: PriorConfig, ego_camera: PinholeCamera, device: str = "cpu"):
        self.config = config
        self.ego_camera = ego_camera
        self.device = torch.device(device)

    def cloud_of(self, frame: ExoFrame) -> PointCloud | None:
        """The frame's world point cloud (lifted once, cached on the frame); None without depth."""
        if frame.depth_m is None:
            return None
        key = ("cloud", self.config.lift_stride, self.config.min_depth_m, self.config.max_depth_m, str(self.device))
        if key not in frame.cache:
            frame.cache[key] = lift_depth(
                torch.from_numpy(frame.rgb).to(self.device), torch.from_numpy(frame.depth_m).to(self.device),
                frame.camera, torch.from_numpy(frame.world_T_exo).to(self.device),
                stride=self.config.lift_stride, min_depth_m=self.config.min_depth_m,
                max_depth_m=self.config.max_depth_m)
        return frame.cache[key]

    def render(self, frame: ExoFrame, context: list[ExoFrame]) -> Prior:
        """Prior of `frame` in its ego pose, fusing the clouds of `context` (window frames, oldest first)."""
        # Newest first: on equal depth the z-buffer keeps the earlier point, so the newest colour wins.
        clouds = [c for c in (self.cloud_of(f) for f in reversed(context)) if c is not None]
        h, w = self.ego_camera.height, self.ego_camera.width
        if not clouds:
            return Prior(rgb=np.zeros((h, w, 3), np.uint8), mask=np.zeros((h, w), bool),
                         depth_m=np.zeros((h, w), np.float32))
        view = render_points(PointCloud.concat(clouds), self.ego_camera,
                             torch.from_numpy(frame.world_T_ego).to(self.device),
                             point_radius_px=self.config.point_radius_px)
        return Prior(rgb=view.rgb.cpu().numpy(), mask=view.mask.cpu().numpy(), depth_m=view.depth_m.cpu().numpy())


@dataclass
class ClipOutput:
    """A generated clip with its priors and wall-clock timings [s]."""
    request: ClipRequest
    result: ClipResult
    prior_time_s: float
    generation_time_s: float


class EgoPipeline:
    """Priors for each frame of a clip (each fused with its own window context), then the generator."""

    def __init__(self, renderer: PriorRenderer, generator: EgoGenerator):
        self.renderer = renderer
        self.generator = generator

    def run(self, frames: list[ExoFrame], contexts: list[list[ExoFrame]]) -> ClipOutput:
        """frames: the clip, oldest first; contexts[i]: window frames fused for frames[i]. Raises on generator failure."""
        if len(frames) != len(contexts) or not frames:
            raise ValueError(f"need one context per frame, got {len(frames)} frames and {len(contexts)} contexts")
        t0 = time.perf_counter()
        priors = [self.renderer.render(f, c) for f, c in zip(frames, contexts)]
        t1 = time.perf_counter()
        request = ClipRequest(frames=frames, priors=priors, ego_camera=self.renderer.ego_camera)
        result = self.generator.generate(request)
        t2 = time.perf_counter()
        if len(result.rgb) != len(frames) or len(result.valid) != len(frames):
            raise RuntimeError(f"generator {self.generator.name!r} returned {len(result.rgb)} images "
                               f"for a clip of {len(frames)} frames")
        return ClipOutput(request=request, result=result, prior_time_s=t1 - t0, generation_time_s=t2 - t1)
