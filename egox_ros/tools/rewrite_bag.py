"""Write a variant of a rosbag2 bag: topics renamed or left out, TF frames left out, log times shifted, fewer frames,
images compressed.

Builds the bags the replay is tested with from the bundled sample, for example a bag with a RealSense driver's topic
names, one recorded like ``ros2 bag record`` does (log times later than the header stamps), one without the head
TF, or one with image_transport's compressed images (``--compress``: the exo image as a JPEG
``sensor_msgs/CompressedImage`` on ``<topic>/compressed``, the depth as a compressedDepth PNG on
``<topic>/compressedDepth``, both replacing the raw topics)::

    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/realsense --preset realsense
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/realsense_jpeg --preset realsense --compress
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/late --log-offset-ms 40
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/no_head --drop-frame head

The output must not exist (the input and anything else are never touched). Pure Python (``rosbags``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def _realsense_renames() -> dict[str, str]:
    """A RealSense driver's raw topics for the sample's inputs: `egox replay --preset realsense` without the
    compressed variants (--compress appends image_transport's suffixes to the renamed topics)."""
    from egox_ros.ros.replay import PRESETS
    return {"/" + src: dst for src, dst in PRESETS["realsense"].items()
            if not src.endswith(("/compressed", "/compressedDepth"))}


REALSENSE_RENAMES = _realsense_renames()


# image_transport's default JPEG quality (compressed_image_transport's jpeg_quality parameter).
JPEG_QUALITY = 95


def rewrite_bag(src: Path, dst: Path, rename: dict[str, str] | None = None, drop_topics=(), drop_frames=(),
                log_offset_ns: int = 0, max_frames: int | None = None, frame_topic: str = "/exo/image_raw",
                storage: str = "mcap", compress: bool = False, depth_topic: str = "/exo/depth/image_raw",
                jpeg_quality: int = JPEG_QUALITY) -> dict[str, int]:
    """Copy `src` to the new bag `dst`: topic `a` becomes `rename[a]`, topics in `drop_topics` and TF transforms whose
    child frame is in `drop_frames` are left out (a TF message left empty is dropped), every log time is shifted by
    `log_offset_ns` (header stamps unchanged) and the copy stops before the (max_frames + 1)-th `frame_topic`
    message. With `compress`, the `frame_topic` images become JPEG CompressedImage messages on
    `<renamed topic>/compressed` and the `depth_topic` images compressedDepth PNG on `<renamed topic>/compressedDepth`
    (image_transport's names and payloads). Returns the message count per written topic."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from egox_ros.ros.replay import typestore_with_egox_msgs
    rename, drop_topics, drop_frames = dict(rename or {}), set(drop_topics), set(drop_frames)
    store = typestore_with_egox_msgs()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    counts: dict[str, int] = {}
    with AnyReader([Path(src)], default_typestore=store) as reader, \
            Writer(Path(dst), version=8, storage_plugin=plugin) as writer:
        conns, names = {}, {}
        compressed = {frame_topic: "/compressed", depth_topic: "/compressedDepth"} if compress else {}
        for c in reader.connections:
            if c.topic not in drop_topics and c.topic not in conns:
                name, msgtype = rename.get(c.topic, c.topic), c.msgtype
                if c.topic in compressed and msgtype == "sensor_msgs/msg/Image":
                    name, msgtype = name + compressed[c.topic], "sensor_msgs/msg/CompressedImage"
                names[c.topic] = name
                conns[c.topic] = writer.add_connection(name, msgtype, typestore=store)
        frames = 0
        for conn, log_ns, raw in reader.messages([c for c in reader.connections if c.topic in conns]):
            if conn.topic == frame_topic:
                if max_frames is not None and frames >= max_frames:
                    break
                frames += 1
            if drop_frames and conn.msgtype == "tf2_msgs/msg/TFMessage":
                msg = reader.deserialize(raw, conn.msgtype)
                kept = [t for t in msg.transforms if t.child_frame_id not in drop_frames]
                if not kept:
                    continue
                if len(kept) != len(msg.transforms):
                    msg.transforms = kept
                    raw = store.serialize_cdr(msg, conn.msgtype)
            if conn.topic in compressed and conns[conn.topic].msgtype != conn.msgtype:
                raw = _compress(store, reader.deserialize(raw, conn.msgtype), conn.topic == frame_topic,
                                jpeg_quality)
            writer.write(conns[conn.topic], log_ns + log_offset_ns, bytes(raw))
            name = names[conn.topic]
            counts[name] = counts.get(name, 0) + 1
    return counts


def _compress(store, msg, colour: bool, jpeg_quality: int) -> bytes:
    """CDR of a CompressedImage for an Image message: JPEG colour, or compressedDepth PNG in the depth's encoding."""
    import numpy as np
    from egox_ros.core.compressed_image import encode_compressed_depth, encode_compressed_rgb
    from egox_ros.core.image_codec import decode_depth_m, decode_rgb
    args = (msg.data, msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian))
    if colour:
        payload, fmt = encode_compressed_rgb(decode_rgb(*args), "jpeg", quality=jpeg_quality)
    else:
        encoding = msg.encoding if msg.encoding in ("16UC1", "32FC1") else "16UC1"
        payload, fmt = encode_compressed_depth(decode_depth_m(*args), encoding)
    cls = store.types["sensor_msgs/msg/CompressedImage"]
    return store.serialize_cdr(cls(header=msg.header, format=fmt, data=np.frombuffer(payload, np.uint8)),
                               "sensor_msgs/msg/CompressedImage")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="rewrite_bag", description=__doc__.split("\n\n")[0])
    p.add_argument("src", type=Path, help="input bag")
    p.add_argument("dst", type=Path, help="output bag directory (must not exist)")
    p.add_argument("--rename", action="append", default=[], metavar="FROM:=TO", help="rename a topic (repeatable)")
    p.add_argument("--preset", choices=("realsense",), help="rename the exo topics to a RealSense driver's")
    p.add_argument("--drop-topic", action="append", default=[], metavar="TOPIC", help="leave a topic out")
    p.add_argument("--drop-frame", action="append", default=[], metavar="FRAME",
                   help="leave TF transforms to this child frame out")
    p.add_argument("--log-offset-ms", type=float, default=0.0, help="shift every log time (not the header stamps)")
    p.add_argument("--max-frames", type=int, help="keep this many exo frames")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--compress", action="store_true",
                   help="exo image -> JPEG CompressedImage on <topic>/compressed, depth -> compressedDepth PNG on "
                        "<topic>/compressedDepth (image_transport's names), instead of the raw topics")
    p.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, help="JPEG quality with --compress (1-100)")
    args = p.parse_args(argv)
    rename = dict(REALSENSE_RENAMES) if args.preset == "realsense" else {}
    for item in args.rename:
        a, sep, b = item.partition(":=")
        if not sep or not a or not b:
            print(f"rewrite_bag: error: --rename takes FROM:=TO, got {item!r}", file=sys.stderr)
            return 2
        rename["/" + a.lstrip("/")] = "/" + b.lstrip("/")
    if not 1 <= args.jpeg_quality <= 100:
        print(f"rewrite_bag: error: --jpeg-quality must be 1-100, got {args.jpeg_quality}", file=sys.stderr)
        return 2
    if not args.src.exists():
        print(f"rewrite_bag: error: input bag {args.src} does not exist", file=sys.stderr)
        return 2
    if args.dst.exists():
        print(f"rewrite_bag: error: {args.dst} exists; choose a new output path", file=sys.stderr)
        return 2
    try:
        counts = rewrite_bag(args.src, args.dst, rename, args.drop_topic, args.drop_frame,
                             round(args.log_offset_ms * 1e6), args.max_frames, storage=args.storage,
                             compress=args.compress, jpeg_quality=args.jpeg_quality)
    except Exception as e:  # noqa: BLE001 - one line for any unreadable bag
        print(f"rewrite_bag: error: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
