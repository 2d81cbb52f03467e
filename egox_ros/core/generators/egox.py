"""The `egox` generator: clips of N synchronised frames through the EgoX diffusion model.

Construction only checks that the weight files are there (fast; WeightsError otherwise); `prepare()` loads the model
(minutes for the 14B checkpoint) and is called by the node's worker thread, so the node keeps receiving meanwhile.
Per clip: the exo frames are fitted to the canvas (`exo_fit`: as released, resized without cropping or
centre-cropped to the canvas aspect; the exo camera and depth follow), the priors form the ego half, and the GGA
direction tables come from the exo depth and both cameras' poses (ego query rays as released or from the ego camera).
"""
from __future__ import annotations

import dataclasses
import threading

import numpy as np
import torch
import torch.nn.functional as F

from egox_ros.core.config import EgoxConfig
from egox_ros.core.generators.base import ClipRequest, ClipResult, EgoGenerator
from egox_ros.core.geometry.cameras import CameraModel

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


EXO_FITS = ("released", "resize", "crop")


def is_released_depth_shape(width: int, height: int, canvas_width: int, canvas_height: int) -> bool:
    """Whether a width x height exo frame has the released depth maps' shape for this canvas: a 16:9 frame of the
    canvas height, wider than the canvas (796 x 448 for the released 784 x 448). The released exo videos are the
    central canvas-wide crop of such frames, and the released GGA code crops its point map to the same columns."""
    return height == canvas_height and width == round(canvas_height * 16 / 9) and width > canvas_width


def centred_principal_point(camera: CameraModel) -> CameraModel:
    """The released inference's exo intrinsics (infer.py of DAVIAN-Robotics/EgoX): principal point forced to
    (W/2, H/2) and each focal length scaled by the same factor as its principal point coordinate,
    f' = f * (W/2) / c. Only the GGA geometry uses it; the image itself is not moved."""
    cx, cy = camera.width / 2.0, camera.height / 2.0
    fx = camera.fx * cx / camera.cx if camera.cx > 0 else camera.fx
    fy = camera.fy * cy / camera.cy if camera.cy > 0 else camera.fy
    return dataclasses.replace(camera, fx=fx, fy=fy, cx=cx, cy=cy)


def fit_exo_frame(rgb: np.ndarray, depth_m: np.ndarray | None, camera: CameraModel, width: int, height: int,
                  fit: str = "released") -> tuple[torch.Tensor, torch.Tensor | None, CameraModel]:
    """Fit an exo frame to the width x height exo half of the canvas.

    fit 'resize' (the released inference): the whole frame resized to width x height, each axis by its own factor
    (bicubic, antialiased, as PIL's default resize the released code uses), the camera scaled per axis and its
    principal point then moved to the centre as the released code does (centred_principal_point). fit 'crop':
    centre-cropped to width:height, then resized (bilinear, antialiased); the camera cropped and scaled exactly.
    fit 'released': a frame of the released depth maps' shape (is_released_depth_shape: 796 x 448) is cut to its
    central width x height window without resizing, as the released exo videos and the released GGA point map are,
    its camera's principal point first moved to the centre of the whole frame as the released code does; any
    other frame as 'resize'.
    rgb (H, W, 3) uint8 -> (height, width, 3) uint8 tensor; depth_m (H, W) float32 metres -> (height, width)
    (nearest, so no depth is invented across edges) or None."""
    if fit not in EXO_FITS:
        raise ValueError(f"exo fit must be one of {list(EXO_FITS)}, got {fit!r}")
    h, w = rgb.shape[:2]
    if (camera.width, camera.height) != (w, h):
        raise ValueError(f"exo image is {w}x{h} but its camera info says {camera.width}x{camera.height}")
    if fit == "released":
        if not is_released_depth_shape(w, h, width, height):
            fit = "resize"
        else:
            x0, y0 = (w - width) // 2, (h - height) // 2       # infer.py: [(H - 448) // 2 : ..., (W - 784) // 2 : ...]
            camera = centred_principal_point(camera).cropped(x0, y0, width, height)
            image = torch.from_numpy(np.ascontiguousarray(rgb[y0:y0 + height, x0:x0 + width]))
            depth = None if depth_m is None else torch.from_numpy(
                np.ascontiguousarray(depth_m[y0:y0 + height, x0:x0 + width], dtype=np.float32))
            return image, depth, camera
    if fit == "resize":
        crop_w, crop_h = w, h
    else:
        crop_w, crop_h = (w, round(w * height / width)) if w * height <= h * width else (round(h * width / height), h)
    x0, y0 = (w - crop_w) // 2, (h - crop_h) // 2
    camera = camera.cropped(x0, y0, crop_w, crop_h).with_size(width, height)
    if fit == "resize":
        camera = centred_principal_point(camera)
    image = torch.from_numpy(np.ascontiguousarray(rgb[y0:y0 + crop_h, x0:x0 + crop_w])).permute(2, 0, 1)[None]
    image = F.interpolate(image.float(), size=(height, width), mode="bicubic" if fit == "resize" else "bilinear",
                          antialias=True, align_corners=False)
    image = image[0].permute(1, 2, 0).round().clamp(0, 255).to(torch.uint8)
    depth = None
    if depth_m is not None:
        crop = torch.from_numpy(np.ascontiguousarray(depth_m[y0:y0 + crop_h, x0:x0 + crop_w], dtype=np.float32))
        depth = F.interpolate(crop[None, None], size=(height, width), mode="nearest-exact")[0, 0]
    return image, depth, camera


class EgoxGenerator(EgoGenerator):
    """EgoX on the node's device; see the module docstring. Thread-safe (one clip at a time)."""

    name = "egox"

    def __init__(self, config: EgoxConfig, device: str = "cpu"):
        from egox_ros.core.egox.weights import check_model_folder, lora_file   # fast: files only, no torch model
        self.config = config
        self.device = torch.device(device)
        self.model_path = check_model_folder(config.model_path)
        self.lora_path = lora_file(config.lora_path) if config.lora_path else None
        self.dtype = DTYPES.get(config.dtype) or (torch.bfloat16 if self.device.type == "cuda" else torch.float32)
        self.pipe = None
        self.last_gga = "not run yet"     # what GGA did in the newest clip (clip metadata)
        self._lock = threading.Lock()

    @property
    def clip_frames(self) -> int:
        return self.config.clip_frames

    def prepare(self) -> None:
        """Load the base checkpoint and fuse the LoRA (once)."""
        from egox_ros.core.egox.pipeline import EgoxPipeline
        with self._lock:
            if self.pipe is not None:
                return
            # from_local fuses the LoRA before it installs any offload hooks
            pipe = EgoxPipeline.from_local(self.model_path, self.lora_path, dtype=self.dtype, device=str(self.device),
                                           offload=self.config.offload, lora_scale=self.config.lora_scale)
            if self.config.gga != "off":
                pipe.enable_gga(self.config.gga_strength, self.config.gga, self.config.gga_backend)
            pipe.set_progress_bar_config(disable=True)
            self.pipe = pipe

    def settings(self) -> dict[str, str]:
        c = self.config
        summary = self.pipe.lora if self.pipe is not None else None
        lora = f"{self.lora_path} (rank {summary.rank}, scale {c.lora_scale})" if summary else \
            (str(self.lora_path) if self.lora_path else "none")
        return {"model_path": str(self.model_path), "lora": lora, "clip_frames": str(c.clip_frames),
                "canvas": f"{c.exo_width}+{c.exo_height}x{c.exo_height}", "steps": str(c.steps),
                "guidance_scale": str(c.guidance_scale), "seed": str(c.seed), "prompt": c.prompt,
                "negative_prompt": c.negative_prompt, "clip_image": c.clip_image, "exo_latent": c.exo_latent,
                "prior_latent": c.prior_latent, "posterior_noise": c.posterior_noise, "exo_fit": c.exo_fit,
                "output_uint8": c.output_uint8, "gga": self.last_gga,
                "dtype": str(self.dtype).removeprefix("torch."), "offload": c.offload}

    def _gga_tables(self, request: ClipRequest, exo_depths: list, exo_cameras: list[CameraModel]):
        """The clip's direction tables, or None (and why, in last_gga) when GGA is off or has no geometry."""
        from egox_ros.core.attention.directions import gga_tables_from_geometry
        c = self.config
        if c.gga == "off":
            self.last_gga = "off"
            return None
        missing = sum(d is None for d in exo_depths)
        if missing:
            self.last_gga = f"not applied: {missing} of {len(exo_depths)} frames have no exo depth"
            return None
        self.last_gga = f"{c.gga}, strength {c.gga_strength}, {c.gga_backend}, {c.gga_rays} ego rays"
        if any(c != exo_cameras[0] for c in exo_cameras):
            raise ValueError("the exo camera changed within the clip")
        tables, _ = gga_tables_from_geometry(
            request.ego_camera, torch.from_numpy(np.stack([f.world_T_ego for f in request.frames])),
            exo_cameras[0], torch.from_numpy(np.stack([f.world_T_exo for f in request.frames])),
            torch.stack(exo_depths).to(self.device), ego_rays=c.gga_rays)
        return tables

    def check_ego_camera(self, camera: CameraModel) -> None:
        if camera.height != self.config.exo_height or camera.width % 16:
            raise ValueError(f"the ego camera is {camera.width}x{camera.height}; the canvas needs ego_camera.height = "
                             f"egox.exo_height = {self.config.exo_height} and a width that is a multiple of 16 "
                             "(released: 448x448)")

    def generate(self, request: ClipRequest) -> ClipResult:
        c = self.config
        if len(request.frames) != c.clip_frames:
            raise ValueError(f"a clip needs {c.clip_frames} frames, got {len(request.frames)}")
        self.check_ego_camera(request.ego_camera)
        self.prepare()
        fitted = [fit_exo_frame(f.rgb, f.depth_m, f.camera, c.exo_width, c.exo_height, c.exo_fit)
                  for f in request.frames]
        exo_video = torch.stack([rgb for rgb, _, _ in fitted])
        tables = self._gga_tables(request, [d for _, d, _ in fitted], [cam for _, _, cam in fitted])
        prior_video = np.stack([p.rgb for p in request.priors])
        with self._lock:
            generator, posterior = self.pipe.seeded_generators(c.seed)
            if c.posterior_noise != "released":
                posterior = None                    # drawn from `generator` after the initial noise
            out = self.pipe(exo_video, prior_video, c.prompt, c.negative_prompt, num_inference_steps=c.steps,
                            guidance_scale=c.guidance_scale, gga_tables=tables, clip_image=c.clip_image,
                            exo_latent=c.exo_latent, prior_latent=c.prior_latent, generator=generator,
                            posterior_generator=posterior, output_uint8=c.output_uint8)
        return ClipResult(rgb=list(out.ego), valid=[np.ones(out.ego.shape[1:3], bool)] * len(out.ego))
