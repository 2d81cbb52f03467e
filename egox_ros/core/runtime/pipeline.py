"""From synchronised exo frames to ego clips: the window fused and rendered as the ego prior, then the generator."""
from __future__ import annotations

import time
from dataclasses import dataclass, replace

import numpy as np
import torch

from egox_ros.core.config import EgoCameraConfig, PriorConfig
from egox_ros.core.generators import ClipRequest, ClipResult, EgoGenerator, Prior
from egox_ros.core.geometry.cameras import AriaFisheyeCamera, CameraModel, FisheyeCamera, PinholeCamera
from egox_ros.core.geometry.frames import ExoFrame
from egox_ros.core.geometry.fusion import CameraMovedError, CloudFusion, FusionConfig, make_fusion
from egox_ros.core.geometry.render import PointCloud, render_points, render_points_soft


def ego_camera_from_config(config: EgoCameraConfig) -> CameraModel:
    """PinholeCamera (model 'pinhole'), FisheyeCamera ('equidistant') or AriaFisheyeCamera ('aria').

    All-zero distortion means none: for the fisheye models that is the pure equidistant projection r = f theta.
    """
    cls = {"equidistant": FisheyeCamera, "aria": AriaFisheyeCamera}.get(config.model, PinholeCamera)
    distortion = tuple(config.distortion) if any(c != 0.0 for c in config.distortion) else ()
    return cls(width=config.width, height=config.height, fx=config.fx, fy=config.fy,
               cx=config.cx, cy=config.cy, distortion=distortion)


class PriorRenderer:
    """Renders the ego prior of each frame from the window frames up to it, fused into one world point cloud.

    Stateful and fed in stamp order (the node's worker renders clips oldest first): each render adds the context
    frames the fusion has not seen, drops those that left the window, and splats the fused cloud plus the frame's
    own dynamic points. A context older than what the fusion holds (a time jump back) restarts the fusion.
    Person masks keep the demonstrator out of the background: their pixels are not lifted (prior.person_points
    'none') or become the frame's dynamic points ('per_frame'); nothing within prior.min_distance_m of the ego
    camera is drawn.
    """

    def __init__(self, config: PriorConfig, fusion_config: FusionConfig, ego_camera: CameraModel,
                 device: str = "cpu", splat_threads: int = 1):
        self.config = config
        self.splat_threads = splat_threads      # CPU threads of the soft splat kernel (runtime.splat_threads)
        self.fusion_config = fusion_config
        self.ego_camera = ego_camera
        self.device = torch.device(device)
        self.fusion: CloudFusion = make_fusion(fusion_config, self.device)
        self._newest_ns: int | None = None   # newest stamp added to the fusion

    def _update_fusion(self, context: list[ExoFrame]) -> None:
        if self._newest_ns is not None and context and context[-1].stamp_ns < self._newest_ns:
            self.fusion.reset()
            self._newest_ns = None
        for f in context:
            if f.depth_m is None or (self._newest_ns is not None and f.stamp_ns <= self._newest_ns):
                continue
            self._add(self.fusion, f)
            self._newest_ns = f.stamp_ns
        if context:
            self.fusion.remove_older_than(context[0].stamp_ns)

    def _add(self, fusion: CloudFusion, f: ExoFrame) -> None:
        """Fuse one frame, its person pixels left out ('none') or kept as its dynamic points ('per_frame')."""
        dynamic_mask = excluded_mask = None
        if f.person_mask is not None and f.person_mask.any():
            if self.config.person_points == "per_frame":
                dynamic_mask = f.person_mask
            else:                       # 'none': the person is not lifted at all
                excluded_mask = f.person_mask
        fusion.add(f.stamp_ns, f.rgb, f.depth_m, f.camera, f.world_T_exo, dynamic_mask=dynamic_mask,
                   excluded_mask=excluded_mask)

    def render(self, frame: ExoFrame, context: list[ExoFrame]) -> Prior:
        """Prior of `frame` in its ego pose; `context`: its window frames, oldest first, ending with `frame`."""
        return self.splat_job(self.prepare(frame, context))

    def prepare(self, frame: ExoFrame, context: list[ExoFrame]) -> "SplatJob":
        """The fusion half of render(): fuse `context` (stamp order, causal) and take the cloud to draw for `frame`.
        The job holds its own cloud (the fusion builds a new one after each change), so splat_job() may run on
        another thread while the next frame is fused here."""
        self._update_fusion(context)
        return self._job(self.fusion, frame)

    def render_clip(self, frames: list[ExoFrame]) -> list[Prior] | None:
        """Priors of a whole clip over one background (prepare_clip), or None where that does not apply."""
        jobs = self.prepare_clip(frames)
        return None if jobs is None else [self.splat_job(j) for j in jobs]

    def prepare_clip(self, frames: list[ExoFrame]) -> list["SplatJob"] | None:
        """Splat jobs of a whole clip over one background, as the released tools make them for a static exo camera:
        the per-pixel mean over all the clip's frames of their static pixels (a StaticCameraFusion as long as the
        clip), plus each frame's own dynamic points. None when it does not apply (fusion.mode 'moving' or
        'concat', fusion.clip_background off, fewer than 2 frames, a frame without depth) or the camera moved
        within the clip (the caller then renders causally)."""
        if self.fusion_config.mode not in ("static", "auto") or not self.fusion_config.clip_background \
                or len(frames) < 2 or any(f.depth_m is None for f in frames):
            return None
        config = replace(self.fusion_config, mode="static", static_window_frames=len(frames), static_on_move="raise")
        fusion = make_fusion(config, self.device)
        try:
            for f in frames:
                self._add(fusion, f)
        except CameraMovedError:
            return None
        return [self._job(fusion, f) for f in frames]

    def _job(self, fusion: CloudFusion, frame: ExoFrame) -> "SplatJob":
        """The fusion's cloud plus the frame's dynamic points (None: nothing fused), to draw at the frame's ego pose."""
        if not len(fusion):
            return SplatJob(None, 0, frame.world_T_ego)
        return SplatJob(fusion.frame_cloud(frame.stamp_ns), fusion.dynamic_points(frame.stamp_ns), frame.world_T_ego)

    def splat_job(self, job: "SplatJob") -> Prior:
        """The splat half of render(): the job's cloud drawn into the ego camera at its ego pose (no fusion state)."""
        cloud = job.cloud
        h, w = self.ego_camera.height, self.ego_camera.width
        if cloud is None or len(cloud) == 0:
            return Prior(rgb=np.zeros((h, w, 3), np.uint8), mask=np.zeros((h, w), bool),
                         depth_m=np.zeros((h, w), np.float32))
        pose = torch.from_numpy(job.world_T_ego)
        if self.config.splat == "soft":
            view = render_points_soft(cloud, self.ego_camera, pose, radius_px=self.config.splat_radius_px,
                                      points_per_pixel=self.config.points_per_pixel,
                                      min_distance_m=self.config.min_distance_m, threads=self.splat_threads)
        else:
            view = render_points(cloud, self.ego_camera, pose, point_radius_px=self.config.point_radius_px,
                                 min_distance_m=self.config.min_distance_m)
        covered = int(view.mask.sum())
        person = int((view.point_index < job.dynamic_points).sum()) if covered else 0
        return Prior(rgb=view.rgb.cpu().numpy(), mask=view.mask.cpu().numpy(), depth_m=view.depth_m.cpu().numpy(),
                     person_fraction=person / covered if covered else 0.0)


@dataclass(frozen=True)
class SplatJob:
    """What one prior draws: ``cloud`` (the fused window plus the frame's dynamic points first; None: nothing fused
    yet), how many of its first points are the frame's dynamic (person) points, and ``world_T_ego`` (4, 4) float64."""
    cloud: PointCloud | None
    dynamic_points: int
    world_T_ego: np.ndarray

    @property
    def background(self) -> PointCloud | None:
        """The fused window alone (the cloud without the frame's dynamic points); None: nothing fused yet."""
        if self.cloud is None or not self.dynamic_points:
            return self.cloud
        return PointCloud(self.cloud.points_world[self.dynamic_points:], self.cloud.colors[self.dynamic_points:])


@dataclass
class ClipOutput:
    """A generated clip with its priors and wall-clock timings [s]."""
    request: ClipRequest
    result: ClipResult
    prior_time_s: float
    generation_time_s: float
    padded_frames: int = 0      # copies of the last frame added to fill the generator's clip, then discarded
    background: PointCloud | None = None    # the fused window drawn for the newest frame (world frame; None: empty)


@dataclass
class PreparedClip:
    """A clip fused and ready to draw: its frames (oldest first), one splat job each, the fusion's wall time [s]."""
    frames: list[ExoFrame]
    jobs: list[SplatJob]
    fusion_time_s: float


@dataclass
class RenderedClip:
    """A clip with its priors, ready for the generator: ``request`` (the real frames) and ``padded`` (what the
    generator gets: the request padded to its clip_frames with the last frame and prior)."""
    request: ClipRequest
    padded: ClipRequest
    padded_frames: int
    prior_time_s: float
    background: PointCloud | None = None    # the fused window drawn for the newest frame


class EgoPipeline:
    """Priors for each frame of a clip (each fused with its own window context), then the generator."""

    def __init__(self, renderer: PriorRenderer, generator: EgoGenerator):
        self.renderer = renderer
        self.generator = generator

    def run(self, frames: list[ExoFrame], contexts: list[list[ExoFrame]]) -> ClipOutput:
        """frames: the clip, oldest first; contexts[i]: window frames fused for frames[i]. Raises on generator failure.

        A clip shorter than the generator's clip_frames (the end of a stream) is padded with its last frame and
        prior, as many times as needed; the output holds the real frames only (``padded_frames`` says how many were
        added and discarded)."""
        return self.run_prepared(self.prepare(frames, contexts))

    def run_prepared(self, prepared: "PreparedClip") -> ClipOutput:
        """run() from the fusion stage's output (prepare): the priors drawn, then the generator."""
        clip = self.draw(prepared)
        t1 = time.perf_counter()
        result = self.generator.generate(clip.padded)
        return self.finish(clip, result, generation_time_s=time.perf_counter() - t1)

    def render(self, frames: list[ExoFrame], contexts: list[list[ExoFrame]]) -> "RenderedClip":
        """The priors of a clip (in order: the fusion is causal) and the request to generate, padded as run() says."""
        return self.draw(self.prepare(frames, contexts))

    def prepare(self, frames: list[ExoFrame], contexts: list[list[ExoFrame]]) -> "PreparedClip":
        """The fusion stage of render(): the clip's splat jobs, fused in order (callers keep clips in stamp order).
        draw() of the result may run on another thread while the next clip is prepared."""
        if len(frames) != len(contexts) or not frames:
            raise ValueError(f"need one context per frame, got {len(frames)} frames and {len(contexts)} contexts")
        t0 = time.perf_counter()
        jobs = self.renderer.prepare_clip(frames) or [self.renderer.prepare(f, c) for f, c in zip(frames, contexts)]
        return PreparedClip(frames, jobs, time.perf_counter() - t0)

    def draw(self, prepared: "PreparedClip") -> "RenderedClip":
        """The splat stage of render(): the prepared clip's priors and its (padded) request."""
        frames = prepared.frames
        t0 = time.perf_counter()
        priors = [self.renderer.splat_job(j) for j in prepared.jobs]
        prior_time_s = prepared.fusion_time_s + time.perf_counter() - t0
        request = ClipRequest(frames=frames, priors=priors, ego_camera=self.renderer.ego_camera)
        pad = max(0, self.generator.clip_frames - len(frames))
        padded = request if not pad else ClipRequest(frames=frames + [frames[-1]] * pad,
                                                     priors=priors + [priors[-1]] * pad,
                                                     ego_camera=request.ego_camera)
        return RenderedClip(request, padded, pad, prior_time_s, prepared.jobs[-1].background)

    def finish(self, clip: "RenderedClip", result: ClipResult, generation_time_s: float) -> ClipOutput:
        """The output of a rendered clip from the generator's result for its padded request (padding dropped)."""
        n = len(clip.padded.frames)
        if len(result.rgb) != n or len(result.valid) != n:
            raise RuntimeError(f"generator {self.generator.name!r} returned {len(result.rgb)} images "
                               f"for a clip of {n} frames")
        if clip.padded_frames:
            keep = len(clip.request.frames)
            result = ClipResult(rgb=result.rgb[:keep], valid=result.valid[:keep])
        return ClipOutput(request=clip.request, result=result, prior_time_s=clip.prior_time_s,
                          generation_time_s=generation_time_s, padded_frames=clip.padded_frames,
                          background=clip.background)
