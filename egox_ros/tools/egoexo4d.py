"""Ego-Exo4D clips as the released EgoX repository ships them -> rosbag2 (MCAP) bags the node can replay.

Input layout (the released ``example/egoexo4D/`` folder, "ROOT")::

    ROOT/meta.json                                   {"test_datasets": [{exo_path, ego_gt_path, ego_prior_path,
                                                       camera_intrinsics, camera_extrinsics, ego_intrinsics,
                                                       ego_extrinsics (F x 3 x 4)}, ...]}
    ROOT/videos/CLIP/{exo,ego_GT,ego_Prior}.mp4      784x448 exo, 448x448 ego (ground truth / released prior)
    ROOT/depth_maps/CLIP/00000.npy ...               (448, 796) float32 exo depth [m, z]

Facts of the released data and code this module relies on (see issue 17):

* meta ``camera_intrinsics`` are given at 3840x2160. The released depth maps (ViPE's, 796x448) were made with
  ``fx' = fx * 224 / cy``, ``cx' = 398``, ``cy' = 224`` (ViPE's ``GTIntrinsicsProcessor`` scales a given K so;
  the released GGA code rescales it the same way), and ``exo.mp4`` is the centre crop ``[:, 6:790]`` of those
  frames, so at 784x448 the released camera is ``fx'``, ``cx = 392``, ``cy = 224``; the depth is cropped the same
  way. The released priors were lifted with exactly that camera: with the ego camera below, the mask IoU
  against the released priors peaks at 1.00 times ``fx'`` (0.80; 0.98 and 1.02: 0.79); ``--exo-focal-scale 1``
  writes it. But it does not fit the videos: about 1.42 times it does (a 2D fit on the video; the recorded head
  camera then projects onto the person's head), so the bag's camera info is that camera
  (``DEFAULT_EXO_FOCAL_SCALE`` = 1.42), as a robot's calibrated exo camera would be. The head estimated from the
  exo image needs it (with the released camera the soccer player's head is 1.1 m off and the covid clip's is not
  found at all), and the prior from the recorded head then matches the real head camera's video better than the
  released prior does, at a lower IoU with the released prior (docs/benchmarks.md has both).
* every extrinsic is world -> camera (3x4), OpenCV axes, world z up. The exo camera is static.
* ego extrinsics are the Aria RGB camera in its native (sideways) orientation; the released renderer turns it 90
  degrees clockwise about the optical axis (upright x = -native y, upright y = native x), as ``ego_GT.mp4`` is
  upright. The bag's head frame is that upright camera (OpenCV axes), so ``outputs.head_to_ego_*`` stay identity.
* 49 depth maps and ego poses per clip; the mp4 files have 50 frames (the last repeats) and are played at 30 fps
  (their header says 20). The bag has one frame per depth map.
* the ego camera, as released: the released renderer (EgoX-EgoPriorRenderer ``scripts/render_vipe_pointcloud.py``,
  ``render_points_fisheye``, run by ``data_preprocess/scripts/infer_vipe_all_takes.sh`` with the take's
  ``online_calibration.jsonl``) takes the Aria RGB calibration's f, cx, cy (at 2880 px) scaled to the 448 px
  prior and its 12 coefficients, hands them to PyTorch3D's ``FishEyeCameras`` (f, c in NDC: ``2 f / W``,
  ``2 cx / W - 1``, ``1 - 2 cy / H``) with a world -> view rotation that turns the native camera a quarter
  clockwise and flips x and y, and renders the upright image directly. The principal point is not turned with
  the camera: a native point lands at column ``W - cx + f x_d`` and row ``cy + f y_d`` of the upright image
  (OpenCV coordinates, pixel centres at i + 0.5), where ``(x_d, y_d)`` is the fisheye projection of the upright
  ray; the tangential and thin-prism terms act in PyTorch3D's flipped frame, i.e. with their signs negated in the
  upright one. The takes' calibrations are not shipped; the calibration the renderer repository ships as its
  example (``RELEASED_PRIOR_ARIA_CALIBRATION``) reproduces the released priors of all three development clips
  best (mask IoU against ``ego_Prior.mp4`` 0.80, against 0.78 for f, cx, cy fitted with the released
  coefficients of infer.py and 0.45-0.52 for meta's ``ego_intrinsics``, f 150, c 255.5, which the released
  renderer uses only without a calibration file), and f, cx, cy fitted with its coefficients land within 0.8 px
  of it. :func:`released_prior_camera` is that camera, upright; both ego camera infos carry it (the real head
  camera's own calibration is not shipped either). docs/benchmarks.md has the evidence.

Output bag (MCAP, zstd), frames stamped ``--start-s + i / --fps``:

=================================  =================================  =============================================
topic                              type                               content
=================================  =================================  =============================================
``/tf_static``                     tf2_msgs/TFMessage                 world -> exo optical frame (once)
``/tf``                            tf2_msgs/TFMessage                 world -> head (the recorded head camera) per
                                                                      frame (left out with ``--no-head-tf``)
``/exo/image_raw``                 sensor_msgs/Image rgb8             the exo frame, 784x448
``/exo/camera_info``               sensor_msgs/CameraInfo             its pinhole camera (no distortion)
``/exo/depth/image_raw``           sensor_msgs/Image 32FC1            the released depth, cropped as the video [m]
``/ego/ground_truth/image_raw``    sensor_msgs/Image rgb8             ego_GT.mp4 (the real head camera's video)
``/ego/ground_truth/camera_info``  sensor_msgs/CameraInfo             its Aria camera (see above), frame ``head``
``/ego/released_prior/image_raw``  sensor_msgs/Image rgb8             ego_Prior.mp4 (the released prior)
``/ego/released_prior/camera_info`` sensor_msgs/CameraInfo            the same camera, frame ``head``
=================================  =================================  =============================================

The Ego-Exo4D data is licensed: bags made from it must not be published or committed.

Usage::

    egox tools egoexo4d ROOT --clip iiith_cooking_57_2_2451_2499 -o out/cooking_bag
    egox tools egoexo4d ROOT/videos/iiith_cooking_57_2_2451_2499 -o out/cooking_bag     # the clip's folder
    egox tools egoexo4d ROOT --all -o out/egoexo4d_bags                                  # OUT/CLIP per clip
"""
from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

import numpy as np

if TYPE_CHECKING:     # the camera models load torch: imported where used, so the egox command line starts fast
    from egox_ros.core.geometry.cameras import AriaFisheyeCamera, CameraModel, PinholeCamera

WORLD_FRAME = "world"
EXO_FRAME = "exo_camera_optical"
HEAD_FRAME = "head"

TOPIC_TF = "/tf"
TOPIC_TF_STATIC = "/tf_static"
TOPIC_EXO_IMAGE = "/exo/image_raw"
TOPIC_EXO_INFO = "/exo/camera_info"
TOPIC_EXO_DEPTH = "/exo/depth/image_raw"
TOPIC_GT_IMAGE = "/ego/ground_truth/image_raw"
TOPIC_GT_INFO = "/ego/ground_truth/camera_info"
TOPIC_PRIOR_IMAGE = "/ego/released_prior/image_raw"
TOPIC_PRIOR_INFO = "/ego/released_prior/camera_info"

# The released depth maps' geometry (see the module docstring).
DEPTH_HALF_HEIGHT_PX = 224.0        # cy' of the released depth maps; fx' = fx * 224 / cy
RELEASED_CROP_X0 = 6                # exo.mp4 = depth-map frame [:, 6:790]
DEFAULT_FPS = 30.0
DEFAULT_EXO_FOCAL_SCALE = 1.42      # the camera that fits the videos
RELEASED_EXO_FOCAL_SCALE = 1.0      # the released camera, which the released priors were lifted with
# The native (sideways) Aria RGB camera the released priors were rendered with (see above): the camera-rgb
# FisheyeRadTanThinPrism calibration (f, cx, cy at 2880 px, then k0..k5 p0 p1 s0..s3) that EgoX-EgoPriorRenderer
# ships as its example (data_preprocess/example/takes/cmu_bike08_2/trajectory/online_calibration.jsonl, first line);
# fitted f, cx, cy on the development clips agree with it within 0.8 px at 448 (docs/benchmarks.md).
ARIA_RGB_CALIBRATION_SIZE_PX = 2880
RELEASED_PRIOR_ARIA_CALIBRATION = (
    1220.592182729911, 1464.618192267255, 1442.370245962395,
    0.4143793791836057, -0.4859785980738274, 0.1384912170175902, 1.146000597558113, -1.66762626342011,
    0.6300994877479119, 0.0007903390814906743, -0.0003460749279699183, -0.001078250965388323,
    7.704910825386041e-05, 0.0005214350246391408, -0.0001066039798202996)


class ClipError(ValueError):
    """A clip folder or meta.json that cannot be converted (one line saying why)."""


def _pose_from_extrinsic(extrinsic) -> np.ndarray:
    """world -> camera 3x4 (or 4x4) -> camera -> world (4, 4) float64 (world_T_camera)."""
    e = np.asarray(extrinsic, np.float64)
    if e.shape not in ((3, 4), (4, 4)) or not np.all(np.isfinite(e)):
        raise ClipError(f"an extrinsic must be a finite 3x4 matrix, got shape {e.shape}")
    m = np.eye(4)
    m[:3, :] = e[:3, :]
    r = m[:3, :3]
    if abs(np.linalg.det(r) - 1.0) > 1e-3 or np.abs(r @ r.T - np.eye(3)).max() > 1e-3:
        raise ClipError("an extrinsic's rotation is not a rotation matrix")
    return np.linalg.inv(m)


def exo_camera_from_meta(intrinsics, width: int, height: int, focal_scale: float = 1.0) -> PinholeCamera:
    """The exo camera of the released video (width x height, normally 784 x 448) from meta's 3840x2160 K."""
    from egox_ros.core.geometry.cameras import PinholeCamera
    k = np.asarray(intrinsics, np.float64)
    if k.shape != (3, 3) or k[0, 0] <= 0 or k[1, 2] <= 0:
        raise ClipError(f"camera_intrinsics must be a 3x3 K with positive focal length and cy, got {k.tolist()}")
    s = height / 2.0 / float(k[1, 2])       # fx' = fx * 224 / cy at 448 px height
    return PinholeCamera(width, height, float(k[0, 0]) * s * focal_scale, float(k[1, 1]) * s * focal_scale,
                         width / 2.0, height / 2.0)


def released_prior_camera(size_px: int = 448) -> AriaFisheyeCamera:
    """The upright camera of the released priors (see the module docstring) for a size_px x size_px prior (448 as
    released): the Aria calibration's f, cx, cy scaled by size_px / 2880 as the released ``scale_intrinsics`` does,
    the principal point at (W - cx, cy) (not turned with the camera), the tangential and thin-prism coefficients
    negated. Rendered with ``render_points_soft``'s default ``center_offset_px`` 0.5 (PyTorch3D's pixel centres at
    i + 0.5), it puts every point where the released renderer does."""
    from egox_ros.core.geometry.cameras import AriaFisheyeCamera
    s = size_px / ARIA_RGB_CALIBRATION_SIZE_PX
    f, cx, cy = (v * s for v in RELEASED_PRIOR_ARIA_CALIBRATION[:3])
    coeffs = RELEASED_PRIOR_ARIA_CALIBRATION[3:]
    distortion = tuple(coeffs[:6]) + tuple(-c for c in coeffs[6:])
    return AriaFisheyeCamera(size_px, size_px, f, f, size_px - cx, cy, distortion)


def ego_camera_parameters(camera: AriaFisheyeCamera) -> list[str]:
    """``-p NAME:=VALUE`` node parameters that make the node's ego camera ``camera`` (egox replay / process)."""
    distortion = "[" + ",".join(repr(float(c)) for c in camera.distortion) + "]"     # one shell word
    values = {"model": "aria", "width": camera.width, "height": camera.height, "fx": camera.fx, "fy": camera.fy,
              "cx": camera.cx, "cy": camera.cy, "distortion": distortion}
    return [f"ego_camera.{name}:={value}" for name, value in values.items()]


def _read_video(path: Path, frames: int) -> list[np.ndarray]:
    """The first `frames` frames of an mp4 as (H, W, 3) uint8 RGB."""
    import cv2
    if not path.is_file():
        raise ClipError(f"{path} is missing")
    cap = cv2.VideoCapture(str(path))
    out = []
    try:
        while len(out) < frames:
            ok, bgr = cap.read()
            if not ok:
                break
            out.append(cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB))
    finally:
        cap.release()
    if len(out) < frames:
        raise ClipError(f"{path} has {len(out)} readable frames, {frames} needed (one per depth map)")
    return out


@dataclass
class EgoExoClip:
    """One released clip, read into memory (about 100 MB for 49 frames).

    name: the clip's folder name. exo_rgb / gt_rgb / prior_rgb: F lists of (H, W, 3) uint8 RGB.
    depth_m: F arrays (448, 784) float32 [m, z], cropped as the exo video. exo_camera: the exo video's pinhole camera.
    world_T_exo: (4, 4) float64, static. world_T_head: (F, 4, 4) float64, the upright head (Aria RGB) camera.
    ego_camera: the released priors' camera, upright (:func:`released_prior_camera` at the ego video's size).
    """
    name: str
    exo_rgb: list[np.ndarray]
    depth_m: list[np.ndarray]
    gt_rgb: list[np.ndarray]
    prior_rgb: list[np.ndarray]
    exo_camera: PinholeCamera
    world_T_exo: np.ndarray
    world_T_head: np.ndarray
    ego_camera: CameraModel

    @property
    def frames(self) -> int:
        return len(self.depth_m)


def clip_names(root: Path) -> list[str]:
    """The clip names meta.json lists (in its order)."""
    return [_entry_name(e) for e in _meta_entries(root)]


def selected_clips(root: Path, wanted: Sequence[str] | None = None) -> list[str]:
    """The clips to run, in meta.json's order: all it lists when ``wanted`` is None, else those named (each once);
    a name meta.json does not list is a ClipError naming the ones it does."""
    names = clip_names(root)
    if wanted is None:
        return names
    unknown = [c for c in wanted if c not in names]
    if unknown:
        raise ClipError(f"clip {unknown[0]!r} is not in {root}/meta.json ({', '.join(names)})")
    return [n for n in names if n in set(wanted)]


def _meta_entries(root: Path) -> list[dict]:
    meta_path = root / "meta.json"
    if not meta_path.is_file():
        raise ClipError(f"{root} has no meta.json (expected the released example/egoexo4D folder)")
    try:
        meta = json.loads(meta_path.read_text())
        entries = meta["test_datasets"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
        raise ClipError(f"{meta_path} is not a released meta.json (a 'test_datasets' list): {e}") from e
    if not isinstance(entries, list) or not entries:
        raise ClipError(f"{meta_path} lists no clips")
    return entries


def _entry_name(entry: dict) -> str:
    try:
        return Path(entry["exo_path"]).parent.name
    except (KeyError, TypeError) as e:
        raise ClipError(f"a meta.json entry has no exo_path: {e}") from e


def resolve_clip(path: Path, clip: str | None) -> tuple[Path, str]:
    """(ROOT, clip name) from a ROOT folder (+ clip name; optional when meta.json lists one clip) or a clip's
    folder ROOT/videos/CLIP."""
    path = Path(path)
    if not path.is_dir():
        raise ClipError(f"{path} is not a folder")
    if (path / "meta.json").is_file():
        names = clip_names(path)
        if clip is None:
            if len(names) != 1:
                raise ClipError(f"{path}/meta.json lists {len(names)} clips; pick one with --clip "
                                f"({', '.join(names)}) or convert all with --all")
            clip = names[0]
        selected_clips(path, [clip])           # a clip meta.json does not list: ClipError
        return path, clip
    root = path.parent.parent
    if path.parent.name == "videos" and (root / "meta.json").is_file():
        if clip is not None and clip != path.name:
            raise ClipError(f"--clip {clip!r} does not match the clip folder {path.name!r}")
        if path.name not in clip_names(root):
            raise ClipError(f"clip {path.name!r} is not in {root}/meta.json")
        return root, path.name
    raise ClipError(f"{path} is neither a folder with meta.json nor a clip folder ROOT/videos/CLIP")


def load_clip(root: Path, clip: str, exo_focal_scale: float = DEFAULT_EXO_FOCAL_SCALE) -> EgoExoClip:
    """Read one clip (see the module docstring for the conventions). Raises ClipError saying what is wrong."""
    from egox_ros.core.geometry.cameras import rotated_90_pose
    root = Path(root)
    entry = next((e for e in _meta_entries(root) if _entry_name(e) == clip), None)
    if entry is None:
        raise ClipError(f"clip {clip!r} is not in {root}/meta.json")
    for key in ("camera_intrinsics", "camera_extrinsics", "ego_extrinsics"):
        if key not in entry:
            raise ClipError(f"{root}/meta.json entry {clip!r} has no {key}")
    depth_dir = root / "depth_maps" / clip
    depth_files = sorted(depth_dir.glob("*.npy")) if depth_dir.is_dir() else []
    if not depth_files:
        raise ClipError(f"{depth_dir} has no depth maps (*.npy)")
    n = len(depth_files)
    ego_extrinsics = entry["ego_extrinsics"]
    if len(ego_extrinsics) < n:
        raise ClipError(f"{clip}: {len(ego_extrinsics)} ego extrinsics for {n} depth maps")
    video_dir = root / "videos" / clip
    exo = _read_video(video_dir / "exo.mp4", n)
    gt = _read_video(video_dir / "ego_GT.mp4", n)
    prior = _read_video(video_dir / "ego_Prior.mp4", n)
    h, w = exo[0].shape[:2]
    depths = []
    for f in depth_files:
        d = np.load(f)
        if d.ndim != 2 or d.shape[0] != h or d.shape[1] < w + RELEASED_CROP_X0:
            raise ClipError(f"{f}: depth of shape {d.shape} does not fit the {w}x{h} exo video with the released "
                            f"crop at x = {RELEASED_CROP_X0}")
        x0 = (d.shape[1] - w) // 2
        depths.append(np.ascontiguousarray(d[:, x0:x0 + w], np.float32))
    if gt[0].shape[0] != gt[0].shape[1]:
        raise ClipError(f"{video_dir / 'ego_GT.mp4'} is {gt[0].shape[1]}x{gt[0].shape[0]}; a square ego video "
                        "is expected")
    world_T_head = np.stack([rotated_90_pose(_pose_from_extrinsic(e), clockwise=True)
                             for e in ego_extrinsics[:n]])
    return EgoExoClip(name=clip, exo_rgb=exo, depth_m=depths, gt_rgb=gt, prior_rgb=prior,
                      exo_camera=exo_camera_from_meta(entry["camera_intrinsics"], w, h, exo_focal_scale),
                      world_T_exo=_pose_from_extrinsic(entry["camera_extrinsics"]), world_T_head=world_T_head,
                      ego_camera=released_prior_camera(gt[0].shape[0]))


def shrunk_exo(clip: EgoExoClip, scale: float) -> EgoExoClip:
    """The clip as a camera with ``scale`` times the focal length (0 < scale <= 1) would see it from the same place:
    the exo image and depth shrunk by ``scale`` about the principal point, people ``scale`` times as large in
    pixels as if they stood ``1 / scale`` times as far away (`egox bench demonstrator --exo-shrink`). The border
    the smaller image leaves repeats its edge pixels (nothing new, nobody copied); the depth there is 0 (no
    reading). Depth values, poses and the ego videos stay as they are."""
    import cv2
    if not 0.0 < scale <= 1.0:
        raise ClipError(f"the exo shrink factor must be in (0, 1], got {scale}")
    cam = clip.exo_camera
    h, w = clip.depth_m[0].shape
    small_camera = cam.with_size(max(1, round(w * scale)), max(1, round(h * scale)))
    small_w, small_h = small_camera.width, small_camera.height
    # the offset of the small image in the canvas: the principal point stays where it was
    x0, y0 = round(cam.cx * (1.0 - small_w / w)), round(cam.cy * (1.0 - small_h / h))

    def shrink(image: np.ndarray, interpolation: int, border: int) -> np.ndarray:
        small = cv2.resize(image, (small_w, small_h), interpolation=interpolation)
        return cv2.copyMakeBorder(small, y0, h - small_h - y0, x0, w - small_w - x0, border, value=0)

    camera = replace(small_camera, width=w, height=h, cx=small_camera.cx + x0, cy=small_camera.cy + y0)
    return replace(clip, exo_camera=camera,
                   exo_rgb=[shrink(f, cv2.INTER_AREA, cv2.BORDER_REPLICATE) for f in clip.exo_rgb],
                   depth_m=[shrink(d, cv2.INTER_NEAREST, cv2.BORDER_CONSTANT) for d in clip.depth_m])


# --------------------------------------------------------------------------- bag

def _camera_info(mk, stamp_ns: int, frame_id: str, camera: CameraModel):
    model, d = camera.camera_info_distortion
    return mk.CameraInfo(
        header=mk.header(stamp_ns, frame_id), height=camera.height, width=camera.width, distortion_model=model,
        d=np.asarray(d, np.float64),
        k=np.array([camera.fx, 0.0, camera.cx, 0.0, camera.fy, camera.cy, 0.0, 0.0, 1.0], np.float64),
        r=np.eye(3, dtype=np.float64).ravel(),
        p=np.array([camera.fx, 0.0, camera.cx, 0.0, 0.0, camera.fy, camera.cy, 0.0, 0.0, 0.0, 1.0, 0.0],
                   np.float64),
        binning_x=0, binning_y=0,
        roi=mk.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False))


def write_bag(clip: EgoExoClip, output: Path, fps: float = DEFAULT_FPS, start_s: float = 1.0,
              head_tf: bool = True) -> dict:
    """Write the clip as an MCAP bag at `output` (must not exist). Returns {frames, topics, size_bytes}."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from egox_ros.core.geometry.transforms import matrix_to_quat
    from egox_ros.tools.make_sample_bag import _MessageFactory, dir_size

    typestore = get_typestore(Stores.ROS2_KILTED)
    mk = _MessageFactory(typestore)
    topics = [(TOPIC_TF_STATIC, "tf2_msgs/msg/TFMessage")]
    if head_tf:
        topics.append((TOPIC_TF, "tf2_msgs/msg/TFMessage"))
    topics += [(TOPIC_EXO_INFO, "sensor_msgs/msg/CameraInfo"), (TOPIC_EXO_DEPTH, "sensor_msgs/msg/Image"),
               (TOPIC_GT_INFO, "sensor_msgs/msg/CameraInfo"), (TOPIC_GT_IMAGE, "sensor_msgs/msg/Image"),
               (TOPIC_PRIOR_INFO, "sensor_msgs/msg/CameraInfo"), (TOPIC_PRIOR_IMAGE, "sensor_msgs/msg/Image"),
               (TOPIC_EXO_IMAGE, "sensor_msgs/msg/Image")]       # the exo image last in every frame

    def transform(stamp_ns, parent, child, pose):
        return mk.transform(stamp_ns, parent, child, pose[:3, 3], matrix_to_quat(pose[:3, :3]))

    stamps = [int(round((start_s + i / fps) * 1e9)) for i in range(clip.frames)]
    writer = Writer(output, version=9, storage_plugin=StoragePlugin.MCAP)
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.set_custom_data("egox.source", f"Ego-Exo4D clip {clip.name} as released with EgoX (licensed data: do "
                                          "not publish)")
    writer.set_custom_data("egox.fps", repr(fps))
    with writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=typestore) for topic, msgtype in topics}
        writer.write(conns[TOPIC_TF_STATIC], stamps[0],
                     mk.serialize(mk.tf([transform(stamps[0], WORLD_FRAME, EXO_FRAME, clip.world_T_exo)])))
        for i, stamp in enumerate(stamps):
            msgs = {
                TOPIC_TF: mk.tf([transform(stamp, WORLD_FRAME, HEAD_FRAME, clip.world_T_head[i])]),
                TOPIC_EXO_INFO: _camera_info(mk, stamp, EXO_FRAME, clip.exo_camera),
                TOPIC_EXO_DEPTH: mk.image(stamp, EXO_FRAME, clip.depth_m[i], "32FC1"),
                TOPIC_GT_INFO: _camera_info(mk, stamp, HEAD_FRAME, clip.ego_camera),
                TOPIC_GT_IMAGE: mk.image(stamp, HEAD_FRAME, clip.gt_rgb[i], "rgb8"),
                TOPIC_PRIOR_INFO: _camera_info(mk, stamp, HEAD_FRAME, clip.ego_camera),
                TOPIC_PRIOR_IMAGE: mk.image(stamp, HEAD_FRAME, clip.prior_rgb[i], "rgb8"),
                TOPIC_EXO_IMAGE: mk.image(stamp, EXO_FRAME, clip.exo_rgb[i], "rgb8"),
            }
            for topic, _ in topics[1:]:
                writer.write(conns[topic], stamp, mk.serialize(msgs[topic]))
    return {"frames": clip.frames, "topics": [t for t, _ in topics], "size_bytes": dir_size(output)}


# --------------------------------------------------------------------------- command line

def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("source", type=Path, help="the released example/egoexo4D folder (with meta.json), or one clip's "
                                             "folder ROOT/videos/CLIP")
    p.add_argument("-o", "--output", type=Path, required=True,
                   help="bag directory to write (must not exist); with --all a folder that gets one bag per clip")
    p.add_argument("--clip", help="the clip to convert (its folder name in videos/); needed when meta.json lists "
                                  "several and --all is not given")
    p.add_argument("--all", action="store_true", help="convert every clip meta.json lists into OUTPUT/CLIP")
    p.add_argument("--fps", type=float, default=DEFAULT_FPS, help="frame rate of the stamps (default: 30, the "
                                                                  "clips' rate)")
    p.add_argument("--start-s", type=float, default=1.0, help="stamp of the first frame [s] (default: 1)")
    p.add_argument("--exo-focal-scale", type=float, default=DEFAULT_EXO_FOCAL_SCALE,
                   help="the released exo focal length times this (default 1.42: the camera that fits the videos; "
                        "1: the released camera, with which the released priors were lifted)")
    p.add_argument("--no-head-tf", action="store_true",
                   help="leave the recorded head out of /tf (a recording without a head tracker)")


def run(args: argparse.Namespace) -> int:
    prog = "egox tools egoexo4d"
    try:
        if args.fps <= 0 or args.start_s < 0 or args.exo_focal_scale <= 0:
            raise ClipError("--fps and --exo-focal-scale must be positive, --start-s not negative")
        if args.output.exists() or args.output.is_symlink():
            raise ClipError(f"{args.output} already exists; nothing is overwritten: pick a new -o")
        if args.all:
            if args.clip is not None:
                raise ClipError("--all and --clip exclude each other")
            root = Path(args.source)
            names = clip_names(root)
            jobs = [(root, name, args.output / name) for name in names]
        else:
            root, name = resolve_clip(args.source, args.clip)
            jobs = [(root, name, args.output)]
        if not args.output.parent.is_dir():
            raise ClipError(f"the folder of {args.output} does not exist")
        clips = [(load_clip(root, name, args.exo_focal_scale), out) for root, name, out in jobs[:1]]
    except ClipError as e:
        print(f"{prog}: error: {e}", file=sys.stderr)
        return 2
    if args.all:
        args.output.mkdir()
    for k, (root, name, out) in enumerate(jobs):
        try:
            clip = clips[0][0] if k == 0 else load_clip(root, name, args.exo_focal_scale)
        except ClipError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return 1
        summary = write_bag(clip, out, fps=args.fps, start_s=args.start_s, head_tf=not args.no_head_tf)
        print(f"wrote {out}: {summary['frames']} frames of {name}, {len(summary['topics'])} topics, "
              f"{summary['size_bytes'] / 1e6:.1f} MB (Ego-Exo4D licence: do not publish)")
    print("the released priors' ego camera (replay / process with it to compare with them): "
          + " ".join(f"-p {p}" for p in ego_camera_parameters(clips[0][0].ego_camera)))
    return 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m egox_ros.tools.egoexo4d", description=__doc__.split("\n")[0])
    add_arguments(p)
    return run(p.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
