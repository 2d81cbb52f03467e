"""Typed configuration of the core components.

Each component has one dataclass. Field metadata (``help``, ``range``, ``choices``) describes the ROS parameter the
node declares for it (``<section>.<field>``), so the parameters, their descriptors and ``config/egox.yaml`` stay in
step with the code. Construct them directly in Python; the node builds them from its parameters.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any


def param(default: Any, help: str, range: tuple[float, float] | None = None,
          choices: tuple[str, ...] | None = None) -> Any:
    """A dataclass field with the metadata of the ROS parameter that sets it."""
    meta = {"help": help, "range": range, "choices": choices}
    if isinstance(default, (list, tuple)):
        return field(default_factory=lambda: list(default), metadata=meta)
    return field(default=default, metadata=meta)


def validate(config: Any) -> None:
    """Check every field against its declared range / choices; raises ValueError naming the field."""
    for f in fields(config):
        value = getattr(config, f.name)
        lo_hi = f.metadata.get("range")
        if lo_hi is not None:
            items = value if isinstance(value, (list, tuple)) else [value]
            for v in items:
                if not (lo_hi[0] <= v <= lo_hi[1]):
                    raise ValueError(f"{type(config).__name__}.{f.name} = {value!r} is outside [{lo_hi[0]}, {lo_hi[1]}]")
        choices = f.metadata.get("choices")
        if choices is not None and value not in choices:
            raise ValueError(f"{type(config).__name__}.{f.name} = {value!r}; expected one of {list(choices)}")


EGO_CAMERA_MODELS = ("pinhole", "equidistant", "aria")


@dataclass
class EgoCameraConfig:
    """Camera model and intrinsics of the generated ego view (OpenCV optical axes), pixels."""
    width: int = param(448, "ego image width [px]; the released EgoX weights expect 448", (16, 4096))
    height: int = param(448, "ego image height [px]; the released EgoX weights expect 448", (16, 4096))
    fx: float = param(224.0, "ego focal length x [px] (224 px at 448 px width = 90 degrees field of view)", (1.0, 1e5))
    fy: float = param(224.0, "ego focal length y [px]", (1.0, 1e5))
    cx: float = param(223.5, "ego principal point x [px]", (-1e4, 1e4))
    cy: float = param(223.5, "ego principal point y [px]", (-1e4, 1e4))
    model: str = param("pinhole", "ego camera model: 'pinhole' (OpenCV plumb_bob / rational_polynomial distortion), "
                       "'equidistant' (Kannala-Brandt fisheye, as OpenCV fisheye) or 'aria' (Project Aria "
                       "FisheyeRadTanThinPrism, the Ego-Exo4D head camera the released EgoX priors were rendered "
                       "with; fx = fy = Aria's f)",
                       choices=EGO_CAMERA_MODELS)
    distortion: list = param([0.0, 0.0, 0.0, 0.0], "distortion coefficients, all zeros = none; pinhole: 4 or 5 "
                             "(k1 k2 p1 p2 [k3], plumb_bob) or 8 (k1 k2 p1 p2 k3 k4 k5 k6, rational_polynomial); "
                             "equidistant: 4 (k1 k2 k3 k4); aria: 12 (k0 k1 k2 k3 k4 k5 p0 p1 s0 s1 s2 s3, Aria's "
                             "order), where all zeros (of any count, e.g. this default) is the pure equidistant "
                             "fisheye r = f theta", (-1e3, 1e3))

    def __post_init__(self) -> None:
        self.distortion = [float(c) for c in self.distortion]
        validate(self)
        counts = {"pinhole": (0, 4, 5, 8), "equidistant": (0, 4), "aria": (0, 12)}[self.model]
        aria_none = self.model == "aria" and not any(self.distortion)   # any all-zero list: no coefficients
        if len(self.distortion) not in counts and not aria_none:
            raise ValueError(f"EgoCameraConfig.distortion has {len(self.distortion)} coefficients; the "
                             f"{self.model!r} model takes {', '.join(map(str, counts))}")


@dataclass
class WindowConfig:
    """Rolling window of synchronised exo frames."""
    max_frames: int = param(30, "frames kept in the rolling window", (1, 10000))
    max_age_s: float = param(2.0, "frames older than this (relative to the newest stamp) leave the window [s]",
                             (0.0, 3600.0))

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class PriorConfig:
    """Ego prior rendering: the fused window cloud (see FusionConfig) splatted into the ego camera."""
    splat: str = param("soft", "'soft': discs of splat_radius_px with alpha 1 - d^2/r^2, the points_per_pixel "
                               "nearest alpha-composited front to back (the released EgoX prior renderer, PyTorch3D's "
                               "PointsRasterizer + AlphaCompositor, which the EgoX weights saw; a compiled kernel, "
                               "about 20 ms per 448x448 prior on one CPU core); 'hard': z-buffered squares of "
                               "point_radius_px (8 ms, a third fewer pixels covered)", choices=("soft", "hard"))
    splat_radius_px: float = param(5.0, "soft disc radius in the ego image [px]; the released tool's point_size 5 "
                                        "is an NDC radius of 5 * 2 / max(W, H), i.e. 5 * min(W, H) / max(W, H) px: "
                                        "5 px on its 448x448 prior", (0.5, 32.0))
    points_per_pixel: int = param(20, "soft: the nearest points composited per pixel (released: 20)", (1, 64))
    point_radius_px: int = param(1, "hard: splat radius of each point in the ego image [px] (0 = one pixel)",
                                 (0, 16))
    min_distance_m: float = param(0.0, "points closer than this to the ego camera centre are never drawn (0 = "
                                       "all are): the person masks keep the demonstrator's own body out of the "
                                       "prior; a distance cut would also remove what they hold [m]", (0.0, 10.0))
    person_points: str = param("none", "the demonstrator's points (person masks, section person): 'none' (left "
                                       "out, as in the priors the released EgoX weights were trained on) or "
                                       "'per_frame' (each frame's own, never fused into the background)",
                               choices=("none", "per_frame"))

    def __post_init__(self) -> None:
        validate(self)


@dataclass
class GeneratorConfig:
    """Which generator turns priors into ego images, and its shared settings."""
    name: str = param("prior", "generator: 'prior' (the ego image is the prior) or 'egox' (the EgoX diffusion "
                      "model, section egox; without its weights the node says so and publishes priors)",
                      choices=("prior", "egox"))
    device: str = param("cpu", "torch device for rendering and generation ('cpu', 'cuda', 'cuda:1', ...)")
    backend: str = param("local", "'local': the generator runs in the node's process; 'ray': on a pool of "
                                  "`replicas` Ray actors (one GPU each with a CUDA device), clips in flight on all "
                                  "of them, results published in stamp order", choices=("local", "ray"))
    replicas: int = param(2, "generator replicas with backend 'ray'", (1, 1024))
    ray_address: str = param("", "Ray cluster for backend 'ray' ('auto', 'ray://host:10001'); empty = a local Ray "
                                 "instance on this machine, started and stopped by the node")
    prior_clip_frames: int = param(1, "generator 'prior' (and the prior published in place of one that cannot "
                                      "run): frames drawn together as one clip. 1: each frame as it comes, over the "
                                      "frames up to it (live). More (egox replay and egox process set 49 unless "
                                      "given): with a still exo camera (fusion.mode auto or static, "
                                      "fusion.clip_background) every frame of a clip is drawn over one background, "
                                      "the per-pixel mean of the whole clip's static pixels, as the released EgoX "
                                      "priors were made; frames are published a clip at a time", (1, 1001))

    def __post_init__(self) -> None:
        validate(self)


DEPTH_SOURCES = ("topic", "model", "video")


@dataclass
class DepthConfig:
    """Where the exo depth comes from: a registered depth topic, or models run on the exo image alone."""
    source: str = param("topic", "'topic': depth images on exo/depth/image_raw (inputs.use_depth); 'model': a "
                                 "per-frame metric depth model (model_path); 'video': a temporally stabilised "
                                 "relative model (video_model_path) aligned to the metric model (model_path)",
                        choices=DEPTH_SOURCES)
    model_path: str = param("", "local Hugging Face folder of a metric depth-estimation model (e.g. Depth Anything "
                                "V2 Metric): the 'model' source, the metric reference of 'video', and the fallback "
                                "of 'topic' when the depth topic stops")
    video_model_path: str = param("", "local Hugging Face folder of a relative depth model that the 'video' source "
                                      "stabilises over time (e.g. Depth Anything V2 relative)")
    device: str = param("cpu", "torch device of the depth models ('cpu', 'cuda', ...)")
    dtype: str = param("auto", "depth model dtype; 'auto' = half precision on CUDA where supported, float32 on CPU",
                       choices=("auto", "float32", "float16", "bfloat16"))
    max_lag_s: float = param(5.0, "a frame uses the model estimate nearest to its stamp (an older frame's when the "
                                  "model is slower than the camera) if it is at most this far away [s]; otherwise "
                                  "it waits (up to sync.timeout_s)", (0.0, 3600.0))
    topic_timeout_s: float = param(2.0, "with source 'topic': no depth image for this long while images arrive "
                                        "switches to the model at model_path, if set [s]", (0.1, 3600.0))

    def __post_init__(self) -> None:
        validate(self)
        if self.source in ("model", "video") and not self.model_path:
            raise ValueError(f"DepthConfig.source = {self.source!r} needs depth.model_path (a local metric "
                             "depth model folder)")
        if self.source == "video" and not self.video_model_path:
            raise ValueError("DepthConfig.source = 'video' needs depth.video_model_path (a local relative depth "
                             "model folder)")


DEFAULT_PROMPT = ("[Exo view] A person works with their hands at a table, seen from a camera across the room. "
                  "[Ego view] The same scene from the person's own eyes: their hands and the objects they handle, "
                  "close up.")
DEFAULT_NEGATIVE_PROMPT = ""   # the released inference passes none (the empty prompt)


@dataclass
class EgoxConfig:
    """The EgoX generator (Wan 2.1 image-to-video 14B + the EgoX LoRA): weights, canvas, sampling and GGA."""
    model_path: str = param("", "local diffusers folder of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers (never downloaded)")
    lora_path: str = param("", "EgoX LoRA: pytorch_lora_weights.safetensors from DAVIAN-Robotics/EgoX, or its "
                               "folder; empty = base model only")
    lora_scale: float = param(1.0, "strength of the fused LoRA", (0.0, 4.0))
    clip_frames: int = param(49, "frames per generated clip, 4k + 1 (the released weights: 49)", (1, 1001))
    exo_width: int = param(784, "exo half of the canvas [px]; frames are fitted to it as exo_fit says "
                                "(released: 784)", (16, 4096))
    exo_height: int = param(448, "canvas height [px], shared by the exo and ego halves; must equal "
                                 "ego_camera.height (released: 448)", (16, 4096))
    steps: int = param(50, "denoising steps", (1, 1000))
    guidance_scale: float = param(5.0, "classifier-free guidance (<= 1: one transformer pass per step)", (0.0, 50.0))
    seed: int = param(42, "noise seed of every clip (same inputs and seed, same clip; the released Ego-Exo4D script "
                          "uses 42)", (0, 2**31 - 1))
    prompt: str = param(DEFAULT_PROMPT, "two-part caption: '[Exo view] ... [Ego view] ...'")
    negative_prompt: str = param(DEFAULT_NEGATIVE_PROMPT, "negative prompt for classifier-free guidance (released "
                                                          "inference: none, the empty string)")
    clip_image: str = param("released", "what the CLIP image encoder sees: 'released' (frame 0 of the VAE decode of "
                                        "[clean exo latent | the clip's initial noise], as the released inference; "
                                        "one extra VAE decode of a latent frame), 'training' (what the released "
                                        "training's CLIP saw: frame 0 of [exo | prior] divided by 255, nearly "
                                        "black), 'canvas' (frame 0 of [exo | prior]) or 'exo' (the exo frame, as "
                                        "plain Wan I2V)", choices=("released", "training", "canvas", "exo"))
    exo_latent: str = param("sample", "exo latent: 'sample' (a draw from the VAE posterior, seeded by seed, as the "
                                      "released code) or 'mean' (the posterior mean)", choices=("sample", "mean"))
    posterior_noise: str = param("released", "noise of the posterior samples: 'released' (the stream of the global RNG "
                                             "that the released inference seeds with seed, on the model's device; "
                                             "the process's own global RNG is left alone) or 'after_initial_noise' "
                                             "(drawn after the initial noise from its CPU generator)",
                                 choices=("released", "after_initial_noise"))
    prior_latent: str = param("sample", "ego prior latent: 'sample' (a draw from the VAE posterior, seeded by seed, "
                                        "as the released code) or 'mean'", choices=("sample", "mean"))
    exo_fit: str = param("released", "exo frames to the exo_width x exo_height canvas half: 'released' (a 16:9 frame "
                                     "of the canvas height, the released depth maps' 796x448, centre-cropped to the "
                                     "canvas as the released data and GGA crop it; any other size as 'resize'), "
                                     "'resize' (stretched without cropping, bicubic, the exo camera's principal point "
                                     "moved to the image centre, as the released inference) or 'crop' "
                                     "(centre-cropped to the canvas aspect, then resized; the camera follows exactly)",
                         choices=("released", "resize", "crop"))
    gga: str = param("released", "geometry-guided attention: 'released' (the released weights' semantics), "
                                 "'paper' (the paper's formula) or 'off'", choices=("released", "paper", "off"))
    gga_strength: float = param(3.0, "GGA strength s (released inference: 3.0)", (0.0, 100.0))
    gga_rays: str = param("released", "GGA ego query rays: 'released' (the released inference's fixed rays: its 12 "
                                      "lens coefficients through OpenCV's pinhole rational + thin-prism model, f 150 "
                                      "px, c 255.5 px on the 448 px canvas, for every input) or 'camera' (the rays of "
                                      "ego_camera's own model, e.g. the true Aria fisheye)",
                          choices=("released", "camera"))
    gga_backend: str = param("auto", "GGA kernel: 'flex' (bias inside a compiled FlexAttention kernel), 'chunked' "
                                     "(exact, chunks of query rows) or 'auto' (flex on CUDA, chunked elsewhere)",
                             choices=("auto", "flex", "chunked"))
    output_uint8: str = param("truncate", "generated frames to uint8: 'truncate' (as the released code writes them) "
                                          "or 'round'", choices=("truncate", "round"))
    dtype: str = param("auto", "transformer and text encoder dtype; 'auto' = bfloat16 on CUDA, float32 on CPU",
                       choices=("auto", "bfloat16", "float16", "float32"))
    offload: str = param("none", "'none' (all on the device, >= 80 GB GPU), 'model' (each model on the GPU only "
                                 "while it runs) or 'sequential' (layer by layer; least memory, slowest)",
                         choices=("none", "model", "sequential"))

    def __post_init__(self) -> None:
        validate(self)
        if (self.clip_frames - 1) % 4:
            raise ValueError(f"EgoxConfig.clip_frames = {self.clip_frames}; Wan needs 4k + 1 frames (e.g. 49)")
        for name in ("exo_width", "exo_height"):
            if getattr(self, name) % 16:
                raise ValueError(f"EgoxConfig.{name} = {getattr(self, name)} must be a multiple of 16")


@dataclass
class InputsConfig:
    """Where the exo frames and the head pose come from."""
    use_depth: bool = param(True, "subscribe to exo/depth/image_raw (16UC1 mm or 32FC1 m, registered to the exo image)")
    head_source: str = param("tf", "head pose from 'tf' (head_frame in the TF tree), 'pose_topic' (head/pose, "
                                   "geometry_msgs/PoseStamped) or 'exo' (estimated from the exo image: needs "
                                   "person.source 'mediapipe'; section head)", choices=("tf", "pose_topic", "exo"))
    head_frame: str = param("head", "frame of the demonstrator's head (TF child frame, or the frame the pose topic "
                                    "sets; with 'exo' the node publishes it: OpenCV axes at the eyes, z forward)")
    world_frame: str = param("world", "fixed frame: point clouds are fused and the ego frame published in it")
    exo_frame: str = param("", "exo optical frame; empty = the exo image's header.frame_id")
    exo_pose_source: str = param("tf", "where the exo camera's pose comes from: 'tf' (world_frame -> exo frame in the "
                                       "TF tree) or 'parameters' (a fixed camera: world_frame -> exo_pose_frame is "
                                       "exo_xyz_m / exo_rpy_rad, no TF publisher needed; the node publishes it on "
                                       "/tf_static)", choices=("tf", "parameters"))
    exo_pose_frame: str = param("", "with exo_pose_source 'parameters': the frame whose pose exo_xyz_m / exo_rpy_rad "
                                    "give; empty = the exo optical frame. For a camera driver that publishes its own "
                                    "frames (realsense2_camera: camera_link -> ... -> camera_color_optical_frame on "
                                    "/tf_static) give their root, e.g. camera_link, so every frame keeps one parent")
    exo_xyz_m: list = param([0.0, 0.0, 0.0], "with exo_pose_source 'parameters': position of exo_pose_frame in "
                                             "world_frame [m]", (-1e4, 1e4))
    exo_rpy_rad: list = param([0.0, 0.0, 0.0], "with exo_pose_source 'parameters': rotation of exo_pose_frame in "
                                               "world_frame, roll pitch yaw about fixed x, y, z [rad] (tf2's setRPY); "
                                               "an optical frame has x right, y down, z forward, a REP-103 camera_link "
                                               "x forward, z up", (-7.0, 7.0))
    exo_transport: str = param("raw", "exo image transport: 'raw' (sensor_msgs/Image on exo/image_raw) or "
                                      "'compressed' (CompressedImage, JPEG/PNG, on exo/image_raw/compressed)",
                               choices=("raw", "compressed"))
    depth_transport: str = param("raw", "depth transport: 'raw' (Image on exo/depth/image_raw) or 'compressedDepth' "
                                        "(CompressedImage, PNG 16UC1/32FC1 as image_transport writes it, on "
                                        "exo/depth/image_raw/compressedDepth)", choices=("raw", "compressedDepth"))

    def __post_init__(self) -> None:
        validate(self)
        if not self.head_frame or not self.world_frame:
            raise ValueError("inputs.head_frame and inputs.world_frame must not be empty")
        if len(self.exo_xyz_m) != 3 or len(self.exo_rpy_rad) != 3:
            raise ValueError("inputs.exo_xyz_m and inputs.exo_rpy_rad need 3 values each")


@dataclass
class OutputsConfig:
    """The generated view's frame and where it sits on the head."""
    ego_frame: str = param("ego_camera_optical", "optical frame (OpenCV axes) of the generated ego view")
    head_to_ego_xyz_m: list = param([0.0, 0.0, 0.0], "position of the ego optical frame in the head frame [m]",
                                    (-10.0, 10.0))
    head_to_ego_rpy_rad: list = param([0.0, 0.0, 0.0], "rotation of the ego optical frame in the head frame, roll "
                                      "pitch yaw [rad]; use [-1.5708, 0, -1.5708] for a REP-103 head (x forward, z up)",
                                      (-7.0, 7.0))
    publish_tf: bool = param(True, "publish world -> ego_frame on /tf at every output stamp")
    publish_cloud: bool = param(False, "publish the fused window cloud (world frame) on ego/prior/cloud with every "
                                       "clip, for RViz")

    def __post_init__(self) -> None:
        validate(self)
        if len(self.head_to_ego_xyz_m) != 3 or len(self.head_to_ego_rpy_rad) != 3:
            raise ValueError("outputs.head_to_ego_xyz_m and outputs.head_to_ego_rpy_rad need 3 values each")


@dataclass
class RuntimeConfig:
    """How the node uses the machine."""
    torch_threads: int = param(1, "CPU threads for torch (fusion, rendering, depth and person models, the generator "
                                  "on CPU); 0 = torch's default (all cores). 1 keeps 30 Hz on a busy 2-core machine "
                                  "(docs/benchmarks.md, soak)", (0, 1024))
    person_stride: int = param(0, "run the person detector (person.source 'mediapipe') on every n-th exo image; the "
                                  "images between take the mask of the newest detected one, moved along the "
                                  "person's track, and the head tracker holds the head. MediaPipe costs 30-40 ms of "
                                  "CPU per 640x480 image, a whole core at 30 Hz. 0: 3 with sync.overload "
                                  "'drop_oldest' (the live node; 6 while it drops frames for lack of time, within 1 s "
                                  "of a frame replaced in the full generator queue), 1 (every image) with 'keep_all' "
                                  "(egox replay, egox process)", (0, 30))
    splat_threads: int = param(1, "CPU threads compositing each soft prior (prior.splat 'soft' on the CPU; bands of "
                                  "rows at once, the same image for any count). More than 1 draws a prior sooner "
                                  "where cores are idle, at more CPU in all: on the 2-core test machine, whose "
                                  "cores the live node keeps busy, 2 gained nothing at 640x480 @ 30 Hz "
                                  "(docs/benchmarks.md)", (1, 64))

    def __post_init__(self) -> None:
        validate(self)
