"""Build the sample rosbag2 (MCAP) bag ``sample/tum_fr1_rpy`` from real TUM RGB-D data.

The TUM ``fr1_rpy`` subset is one hand-held Kinect with motion-capture poses.  It
stands in for an exo camera and a moving head: exo frame ``i`` is paired with the
camera's own recorded pose ``--head-offset`` frames later as the "head", and the
colour image recorded at that later pose is the ground-truth ego view.

Run from the repository root::

    python -m egox_ros.tools.make_sample_bag --force

No ROS installation is needed (pure Python ``rosbags``).  The output is
deterministic: the same inputs and options give the same messages and files.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from egox_ros.tools.tum import read_associations, read_groundtruth

REPO_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_SOURCE = REPO_ROOT.parent / "shared" / "data" / "tum_rgbd" / "fr1_rpy_60"
DEFAULT_OUTPUT = REPO_ROOT / "sample" / "tum_fr1_rpy"

# freiburg1 Kinect colour intrinsics, OpenCV plumb_bob order (k1 k2 p1 p2 k3).
FX, FY, CX, CY = 517.3, 516.5, 318.6, 255.3
DISTORTION = (0.2624, -0.9531, -0.0054, 0.0026, 1.1633)
TUM_DEPTH_PER_MM = 5  # TUM depth PNG: metres = value / 5000, i.e. millimetres = value / 5

WORLD_FRAME = "world"
EXO_FRAME = "exo_camera_optical"
HEAD_FRAME = "head"

TOPIC_TF = "/tf"
TOPIC_EXO_INFO = "/exo/camera_info"
TOPIC_EXO_DEPTH = "/exo/depth/image_raw"
TOPIC_GT_INFO = "/ego/ground_truth/camera_info"
TOPIC_GT_IMAGE = "/ego/ground_truth/image_raw"
TOPIC_EXO_IMAGE = "/exo/image_raw"

# (topic, type) in the order they are written for every frame: the exo image last.
TOPICS: tuple[tuple[str, str], ...] = (
    (TOPIC_TF, "tf2_msgs/msg/TFMessage"),
    (TOPIC_EXO_INFO, "sensor_msgs/msg/CameraInfo"),
    (TOPIC_EXO_DEPTH, "sensor_msgs/msg/Image"),
    (TOPIC_GT_INFO, "sensor_msgs/msg/CameraInfo"),
    (TOPIC_GT_IMAGE, "sensor_msgs/msg/Image"),
    (TOPIC_EXO_IMAGE, "sensor_msgs/msg/Image"),
)

_BAG_FILE_SUFFIXES = {".mcap", ".yaml", ".db3", ".zstd"}


@dataclass(frozen=True)
class Intrinsics:
    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled(self, scale: float) -> "Intrinsics":
        """Resample by ``scale`` with the pixel-centre convention c' = (c + 0.5) s - 0.5."""
        return Intrinsics(
            fx=self.fx * scale,
            fy=self.fy * scale,
            cx=(self.cx + 0.5) * scale - 0.5,
            cy=(self.cy + 0.5) * scale - 0.5,
            width=round(self.width * scale),
            height=round(self.height * scale),
        )


# --------------------------------------------------------------------------- inputs


def _slerp(q0: np.ndarray, q1: np.ndarray, a: float) -> np.ndarray:
    q0 = q0 / np.linalg.norm(q0)
    q1 = q1 / np.linalg.norm(q1)
    dot = float(np.dot(q0, q1))
    if dot < 0.0:
        q1, dot = -q1, -dot
    if dot > 0.9995:
        q = q0 + a * (q1 - q0)
    else:
        theta = np.arccos(min(dot, 1.0))
        q = (np.sin((1.0 - a) * theta) * q0 + np.sin(a * theta) * q1) / np.sin(theta)
    return q / np.linalg.norm(q)


def interpolate_pose(
    stamp_ns: int, gt: tuple[np.ndarray, np.ndarray, np.ndarray], max_gap_ns: int = 50_000_000
) -> tuple[np.ndarray, np.ndarray]:
    """Camera-to-world (translation, quaternion xyzw) at ``stamp_ns``: lerp + slerp of the neighbours."""
    stamps, trans, quats = gt
    k = int(np.searchsorted(stamps, stamp_ns))
    if k == 0 or k == len(stamps):
        raise ValueError(f"frame stamp {stamp_ns} ns is outside the ground-truth range")
    t0, t1 = int(stamps[k - 1]), int(stamps[k])
    if t1 - t0 > max_gap_ns:
        raise ValueError(f"ground-truth gap of {(t1 - t0) / 1e6:.1f} ms around frame stamp {stamp_ns} ns")
    a = (stamp_ns - t0) / (t1 - t0)
    t = trans[k - 1] + a * (trans[k] - trans[k - 1])
    q = _slerp(quats[k - 1], quats[k], a)
    if q[3] < 0:  # canonical sign, so equal poses serialise identically
        q = -q
    return t, q


def _read_png(path: Path, mode: str) -> np.ndarray:
    with Image.open(path) as img:
        if img.mode != mode:
            raise ValueError(f"{path}: expected PNG mode {mode}, got {img.mode}")
        return np.asarray(img)


def downscale_rgb(rgb: np.ndarray, factor: int) -> np.ndarray:
    """Area average over factor x factor blocks (rounded to nearest), uint8 in and out."""
    if factor == 1:
        return np.ascontiguousarray(rgb)
    h, w, c = rgb.shape
    blocks = rgb.reshape(h // factor, factor, w // factor, factor, c).astype(np.uint32)
    total = blocks.sum(axis=(1, 3))
    n = factor * factor
    return ((total + n // 2) // n).astype(np.uint8)


def downscale_depth_mm(depth_tum: np.ndarray, factor: int) -> np.ndarray:
    """TUM depth units -> millimetres (rounded, 0 stays 0), top-left pixel of each block (no averaging)."""
    d = depth_tum[::factor, ::factor].astype(np.uint32)
    return ((d + TUM_DEPTH_PER_MM // 2) // TUM_DEPTH_PER_MM).astype(np.uint16)


# --------------------------------------------------------------------------- messages


class _MessageFactory:
    def __init__(self, typestore) -> None:
        self.ts = typestore
        t = typestore.types
        self.Time = t["builtin_interfaces/msg/Time"]
        self.Header = t["std_msgs/msg/Header"]
        self.Image = t["sensor_msgs/msg/Image"]
        self.CameraInfo = t["sensor_msgs/msg/CameraInfo"]
        self.RegionOfInterest = t["sensor_msgs/msg/RegionOfInterest"]
        self.TFMessage = t["tf2_msgs/msg/TFMessage"]
        self.TransformStamped = t["geometry_msgs/msg/TransformStamped"]
        self.Transform = t["geometry_msgs/msg/Transform"]
        self.Vector3 = t["geometry_msgs/msg/Vector3"]
        self.Quaternion = t["geometry_msgs/msg/Quaternion"]

    def header(self, stamp_ns: int, frame_id: str):
        sec, nanosec = divmod(stamp_ns, 1_000_000_000)
        return self.Header(stamp=self.Time(sec=sec, nanosec=nanosec), frame_id=frame_id)

    def transform(self, stamp_ns: int, parent: str, child: str, t: np.ndarray, q: np.ndarray):
        return self.TransformStamped(
            header=self.header(stamp_ns, parent),
            child_frame_id=child,
            transform=self.Transform(
                translation=self.Vector3(x=float(t[0]), y=float(t[1]), z=float(t[2])),
                rotation=self.Quaternion(x=float(q[0]), y=float(q[1]), z=float(q[2]), w=float(q[3])),
            ),
        )

    def tf(self, transforms):
        return self.TFMessage(transforms=list(transforms))

    def camera_info(self, stamp_ns: int, frame_id: str, k: Intrinsics):
        return self.CameraInfo(
            header=self.header(stamp_ns, frame_id),
            height=k.height,
            width=k.width,
            distortion_model="plumb_bob",
            d=np.asarray(DISTORTION, np.float64),
            k=np.array([k.fx, 0.0, k.cx, 0.0, k.fy, k.cy, 0.0, 0.0, 1.0], np.float64),
            r=np.eye(3, dtype=np.float64).ravel(),
            p=np.array([k.fx, 0.0, k.cx, 0.0, 0.0, k.fy, k.cy, 0.0, 0.0, 0.0, 1.0, 0.0], np.float64),
            binning_x=0,
            binning_y=0,
            roi=self.RegionOfInterest(x_offset=0, y_offset=0, height=0, width=0, do_rectify=False),
        )

    def image(self, stamp_ns: int, frame_id: str, array: np.ndarray, encoding: str):
        from egox_ros.core.io.image_codec import encode_image

        data, step = encode_image(array, encoding)
        return self.Image(
            header=self.header(stamp_ns, frame_id),
            height=array.shape[0],
            width=array.shape[1],
            encoding=encoding,
            is_bigendian=0,
            step=step,
            data=np.frombuffer(data, np.uint8),
        )

    def serialize(self, msg) -> bytes:
        return bytes(self.ts.serialize_cdr(msg, msg.__msgtype__))


# --------------------------------------------------------------------------- building


# The ground-truth ego image of exo frame i is the exo image of frame i + offset, so
# every ground-truth image but the last ``offset`` repeats an exo image about
# ``offset`` frames (several MB) later in the bag.  rosbags cuts MCAP chunks at
# 1 MiB and compresses them with plain zstd, which cannot see that repetition and
# leaves the noisy sensor images nearly incompressible (about 20.9 MB here).
# The writer below keeps rosbags' MCAP layout but uses larger chunks and zstd
# long-distance matching, so the repeats compress away (about 13 MB).  Both
# rosbags and the mcap/mcap_ros2 readers decode it (standard zstd frames with a
# window below the decoders' default 128 MiB limit).
CHUNK_BYTES = 48 * 2**20
ZSTD_WINDOW_LOG = 26  # 64 MiB
ZSTD_LEVEL = 3


def _make_writer_class():
    """A rosbags ``Writer`` whose MCAP storage uses big, long-distance-matched zstd chunks.

    Falls back to the stock ``Writer`` (1 MiB plain zstd chunks) if the rosbags
    internals this relies on are not there.
    """
    from rosbags.rosbag2 import CompressionMode, StoragePlugin, Writer

    try:
        from rosbags.rosbag2.storage_mcap import McapWriter

        try:
            from compression import zstd  # Python >= 3.14
        except ImportError:
            from backports import zstd
        params = {
            zstd.CompressionParameter.compression_level: ZSTD_LEVEL,
            zstd.CompressionParameter.enable_long_distance_matching: 1,
            zstd.CompressionParameter.window_log: ZSTD_WINDOW_LOG,
        }
    except (ImportError, AttributeError):
        return Writer

    if not all(hasattr(McapWriter, name) for name in ("close_chunk", "close", "write")):
        return Writer

    class LongRangeMcapWriter(McapWriter):
        def __init__(self, path, compression) -> None:
            super().__init__(path, compression)
            self._flushing = False
            if compression == CompressionMode.STORAGE:
                self.compressor = lambda data: zstd.compress(data, options=params)

        def close_chunk(self) -> None:
            # rosbags asks for a new chunk after every 1 MiB; only honour that at CHUNK_BYTES.
            if self._flushing or self.chunk.bio.tell() >= CHUNK_BYTES:
                super().close_chunk()

        def close(self, version, metadata) -> None:
            self._flushing = True
            super().close(version, metadata)

    class SampleBagWriter(Writer):
        STORAGE_PLUGINS = {**Writer.STORAGE_PLUGINS, StoragePlugin.MCAP: LongRangeMcapWriter}

    return SampleBagWriter



def _scale_factor(scale: float) -> int:
    if not (0 < scale <= 1):
        raise ValueError(f"--scale must be in (0, 1], got {scale}")
    factor = round(1.0 / scale)
    if abs(factor * scale - 1.0) > 1e-9:
        raise ValueError(f"--scale must be 1/n for an integer n (0.5, 0.25, ...), got {scale}")
    return factor


def _remove_existing_bag(path: Path) -> None:
    """Delete a previous output, refusing anything that does not look like a bag directory."""
    if not path.is_dir():
        raise ValueError(f"{path} exists and is not a directory; not removing it")
    strangers = [p.name for p in path.iterdir() if p.is_dir() or p.suffix not in _BAG_FILE_SUFFIXES]
    if strangers:
        raise ValueError(f"{path} does not look like a rosbag2 directory (contains {strangers}); not removing it")
    shutil.rmtree(path)


def dir_size(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def build_bag(source: Path, output: Path, head_offset: int = 10, scale: float = 0.5, first_frame: int = 0,
              head_tf: bool = True) -> dict:
    """Write the bag; returns a small summary dict (frames, size_bytes, topics). Exo frames start at first_frame;
    head_tf False leaves the head out of /tf (a recording without a head tracker: inputs.head_source 'exo')."""
    from rosbags.rosbag2 import CompressionFormat, CompressionMode, StoragePlugin
    from rosbags.typesys import Stores, get_typestore

    factor = _scale_factor(scale)
    frames = read_associations(source)
    if not 1 <= head_offset < len(frames) - first_frame or first_frame < 0:
        raise ValueError(f"need 0 <= --first-frame and 1 <= --head-offset < {len(frames)} - --first-frame; got "
                         f"{first_frame} and {head_offset}")
    gt = read_groundtruth(source)
    poses = [interpolate_pose(f.stamp_ns, gt) for f in frames]

    first_rgb = _read_png(frames[0].rgb_path, "RGB")
    full_h, full_w = first_rgb.shape[:2]
    if full_h % factor or full_w % factor:
        raise ValueError(f"image size {full_w}x{full_h} is not divisible by 1/scale = {factor}")
    intr = Intrinsics(FX, FY, CX, CY, full_w, full_h).scaled(1.0 / factor)

    def small_rgb(j: int) -> np.ndarray:
        rgb = _read_png(frames[j].rgb_path, "RGB")
        if rgb.shape[:2] != (full_h, full_w):
            raise ValueError(f"{frames[j].rgb_path}: size {rgb.shape[1]}x{rgb.shape[0]} != {full_w}x{full_h}")
        return downscale_rgb(rgb, factor)

    rgb_small = {j: small_rgb(j) for j in range(first_frame, len(frames))}  # about 14 MB at 320x240

    typestore = get_typestore(Stores.ROS2_KILTED)
    mk = _MessageFactory(typestore)
    n_exo = len(frames) - head_offset

    writer = _make_writer_class()(output, version=9, storage_plugin=StoragePlugin.MCAP)
    # STORAGE mode = zstd-compressed MCAP chunks (readable by rosbags and by the mcap library).
    writer.set_compression(CompressionMode.STORAGE, CompressionFormat.ZSTD)
    writer.set_custom_data("egox.source", "TUM RGB-D rgbd_dataset_freiburg1_rpy (first 60 frames)")
    writer.set_custom_data("egox.head_offset_frames", str(head_offset))
    writer.set_custom_data("egox.scale", repr(1.0 / factor))
    with writer:
        conns = {topic: writer.add_connection(topic, msgtype, typestore=typestore) for topic, msgtype in TOPICS}
        for i in range(first_frame, n_exo):
            j = i + head_offset
            stamp = frames[i].stamp_ns
            exo_t, exo_q = poses[i]
            head_t, head_q = poses[j]
            depth_mm = downscale_depth_mm(_read_png(frames[i].depth_path, "I;16"), factor)
            if depth_mm.shape != (intr.height, intr.width):
                raise ValueError(f"{frames[i].depth_path}: depth size does not match the colour image")
            msgs = {
                TOPIC_TF: mk.tf(
                    [mk.transform(stamp, WORLD_FRAME, EXO_FRAME, exo_t, exo_q)]
                    + ([mk.transform(stamp, WORLD_FRAME, HEAD_FRAME, head_t, head_q)] if head_tf else [])
                ),
                TOPIC_EXO_INFO: mk.camera_info(stamp, EXO_FRAME, intr),
                TOPIC_EXO_DEPTH: mk.image(stamp, EXO_FRAME, depth_mm, "16UC1"),
                TOPIC_GT_INFO: mk.camera_info(stamp, HEAD_FRAME, intr),
                TOPIC_GT_IMAGE: mk.image(stamp, HEAD_FRAME, rgb_small[j], "rgb8"),
                TOPIC_EXO_IMAGE: mk.image(stamp, EXO_FRAME, rgb_small[i], "rgb8"),
            }
            for topic, _ in TOPICS:
                writer.write(conns[topic], stamp, mk.serialize(msgs[topic]))
    return {"frames": n_exo - first_frame, "size_bytes": dir_size(output), "topics": [t for t, _ in TOPICS]}


def parse_args(argv=None, prog: str = "python -m egox_ros.tools.make_sample_bag") -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog=prog,
        description="Build the sample rosbag2 (MCAP) bag from the TUM RGB-D fr1_rpy subset.",
    )
    p.add_argument("--source", type=Path, default=DEFAULT_SOURCE, help="TUM sequence directory (default: %(default)s)")
    p.add_argument("-o", "--output", type=Path, default=DEFAULT_OUTPUT, help="bag directory to write (default: %(default)s)")
    p.add_argument("--head-offset", type=int, default=10, help="head pose = camera pose this many frames later (default: 10)")
    p.add_argument("--scale", type=float, default=0.5, help="image scale, 1/n for integer n (default: 0.5)")
    p.add_argument("--first-frame", type=int, default=0, help="first exo frame (default: 0; the seated person is "
                                                              "in frames 48-59)")
    p.add_argument("--no-head-tf", action="store_true", help="leave the head out of /tf (for inputs.head_source "
                                                             "'exo')")
    p.add_argument("--force", action="store_true", help="overwrite an existing output bag")
    p.add_argument("--max-size-mb", type=float, default=20.0, help="fail if the bag is larger (default: 20)")
    return p.parse_args(argv)


def main(argv=None, prog: str = "python -m egox_ros.tools.make_sample_bag") -> int:
    args = parse_args(argv, prog)
    source, output = args.source, args.output
    if not (source / "associations.txt").is_file():
        print(f"error: {source} is not a TUM sequence directory (no associations.txt)", file=sys.stderr)
        return 2
    try:
        if output.exists():
            if not args.force:
                print(f"error: {output} already exists; pass --force to overwrite it", file=sys.stderr)
                return 1
            _remove_existing_bag(output)
        output.parent.mkdir(parents=True, exist_ok=True)
        summary = build_bag(source, output, head_offset=args.head_offset, scale=args.scale,
                            first_frame=args.first_frame, head_tf=not args.no_head_tf)
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    size_mb = summary["size_bytes"] / 1e6
    print(f"wrote {output}: {summary['frames']} exo frames, {len(summary['topics'])} topics, {size_mb:.2f} MB")
    if size_mb > args.max_size_mb:
        print(f"error: bag is {size_mb:.2f} MB, over the {args.max_size_mb} MB limit", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
