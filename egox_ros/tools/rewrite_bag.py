"""Write a variant of a rosbag2 bag: topics renamed or left out, TF frames left out, log times shifted, fewer frames,
images compressed, log times delayed per topic (in order or reordered within a topic).

Builds the bags the replay is tested with from the bundled sample, for example a bag with a RealSense driver's topic
names, one recorded like ``ros2 bag record`` does (log times later than the header stamps), one without the head
TF, or one with image_transport's compressed images (``--compress``: the exo image as a JPEG
``sensor_msgs/CompressedImage`` on ``<topic>/compressed``, the depth as a compressedDepth PNG on
``<topic>/compressedDepth``, both replacing the raw topics)::

    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/realsense --preset realsense
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/realsense_jpeg --preset realsense --compress
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/late --log-offset-ms 40
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/no_head --drop-frame head
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/recorded --log-offset-ms 3600000 \
        --latency-ms /exo/image_raw:=40:140 --latency-ms /exo/depth/image_raw:=40:140 --reorder

``--latency-ms TOPIC:=LO:HI`` delays each message of TOPIC by a latency drawn uniformly from [LO, HI] ms (``--seed``),
as ``ros2 bag record`` logs a message when it arrives: each topic stays in order (a message is never logged before
the one published before it on its topic) unless ``--reorder`` lets a later message overtake an earlier one.

The output must not exist (the input and anything else are never touched). Pure Python (``rosbags``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path


def preset_renames(preset: str) -> dict[str, str]:
    """A driver's raw topics for the sample's inputs: `egox replay --preset NAME` without the compressed variants
    (--compress appends image_transport's suffixes to the renamed topics)."""
    from egox_ros.ros.offline.plan import PRESETS
    return {"/" + src: dst for src, dst in PRESETS[preset].items()
            if not src.endswith(("/compressed", "/compressedDepth"))}


REALSENSE_RENAMES = preset_renames("realsense")

# image_transport's default JPEG quality (compressed_image_transport's jpeg_quality parameter).
JPEG_QUALITY = 95


def rewrite_bag(src: Path, dst: Path, rename: dict[str, str] | None = None, drop_topics=(), drop_frames=(),
                log_offset_ns: int = 0, max_frames: int | None = None, frame_topic: str = "/exo/image_raw",
                storage: str = "mcap", compress: bool = False, depth_topic: str = "/exo/depth/image_raw",
                jpeg_quality: int = JPEG_QUALITY, latency_ns: dict[str, tuple[int, int]] | None = None,
                reorder: bool = False, seed: int = 0) -> dict[str, int]:
    """Copy `src` to the new bag `dst`: topic `a` becomes `rename[a]`, topics in `drop_topics` and TF transforms whose
    child frame is in `drop_frames` are left out (a TF message left empty is dropped), every log time is shifted by
    `log_offset_ns` (header stamps unchanged) and the copy stops before the (max_frames + 1)-th `frame_topic`
    message. With `compress`, the `frame_topic` images become JPEG CompressedImage messages on
    `<renamed topic>/compressed` and the `depth_topic` images compressedDepth PNG on `<renamed topic>/compressedDepth`
    (image_transport's names and payloads). `latency_ns` {topic: (lo, hi)} delays each message of a topic (named as
    in `src`) by a latency drawn uniformly from [lo, hi] (numpy generator seeded with `seed`); each topic stays in
    log-time order unless `reorder`. With latencies the messages are held in memory and written sorted by their new
    log time. Returns the message count per written topic."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from egox_ros.ros.offline.plan import typestore_with_egox_msgs
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
        delayed = _Delays(latency_ns or {}, reorder, seed)
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
            log_ns = delayed.log_time(conn.topic, log_ns + log_offset_ns)
            if delayed:
                delayed.held.append((log_ns, len(delayed.held), conn.topic, bytes(raw)))
                continue
            writer.write(conns[conn.topic], log_ns, bytes(raw))
            name = names[conn.topic]
            counts[name] = counts.get(name, 0) + 1
        for log_ns, _, topic, raw in sorted(delayed.held):
            writer.write(conns[topic], log_ns, raw)
            counts[names[topic]] = counts.get(names[topic], 0) + 1
    return counts


class _Delays:
    """Receive-time log times: each message of a delayed topic gets a random latency; a topic stays in order (the
    next message is logged no earlier than the previous one) unless `reorder`."""

    def __init__(self, latency_ns: dict[str, tuple[int, int]], reorder: bool, seed: int):
        import numpy as np
        self.latency_ns, self.reorder = dict(latency_ns), reorder
        self.rng = np.random.default_rng(seed)
        self.last: dict[str, int] = {}
        self.held: list[tuple[int, int, str, bytes]] = []

    def __bool__(self) -> bool:
        return bool(self.latency_ns)

    def log_time(self, topic: str, log_ns: int) -> int:
        if topic not in self.latency_ns:
            return log_ns
        lo, hi = self.latency_ns[topic]
        log_ns += int(self.rng.integers(lo, hi + 1))
        if not self.reorder:
            log_ns = max(log_ns, self.last.get(topic, log_ns))
        self.last[topic] = log_ns
        return log_ns


def _compress(store, msg, colour: bool, jpeg_quality: int) -> bytes:
    """CDR of a CompressedImage for an Image message: JPEG colour, or compressedDepth PNG in the depth's encoding."""
    import numpy as np
    from egox_ros.core.io.compressed_image import encode_compressed_depth, encode_compressed_rgb
    from egox_ros.core.io.image_codec import decode_depth_m, decode_rgb
    args = (msg.data, msg.encoding, msg.height, msg.width, msg.step, bool(msg.is_bigendian))
    if colour:   # a JPEG with the image's true colours, labelled as compressed_image_transport labels it
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
    from egox_ros.ros.offline.plan import PRESET_HELP
    p.add_argument("--preset", choices=sorted(PRESET_HELP),
                   help="rename the exo topics to a driver's, as `egox replay --preset` reads them: "
                        + "; ".join(f"{k} = {v}" for k, v in PRESET_HELP.items()))
    p.add_argument("--drop-topic", action="append", default=[], metavar="TOPIC", help="leave a topic out")
    p.add_argument("--drop-frame", action="append", default=[], metavar="FRAME",
                   help="leave TF transforms to this child frame out")
    p.add_argument("--log-offset-ms", type=float, default=0.0, help="shift every log time (not the header stamps)")
    p.add_argument("--latency-ms", action="append", default=[], metavar="TOPIC:=LO:HI",
                   help="delay each message of TOPIC (its name in the input) by a random latency in [LO, HI] ms, as a "
                        "recorder logging at receive time (repeatable)")
    p.add_argument("--reorder", action="store_true",
                   help="with --latency-ms: a message may be logged before an earlier one of its topic")
    p.add_argument("--seed", type=int, default=0, help="seed of the random latencies")
    p.add_argument("--max-frames", type=int, help="keep this many exo frames")
    p.add_argument("--storage", choices=("mcap", "sqlite3"), default="mcap")
    p.add_argument("--compress", action="store_true",
                   help="exo image -> JPEG CompressedImage on <topic>/compressed, depth -> compressedDepth PNG on "
                        "<topic>/compressedDepth (image_transport's names), instead of the raw topics")
    p.add_argument("--jpeg-quality", type=int, default=JPEG_QUALITY, help="JPEG quality with --compress (1-100)")
    args = p.parse_args(argv)
    rename = preset_renames(args.preset) if args.preset else {}
    for item in args.rename:
        a, sep, b = item.partition(":=")
        if not sep or not a or not b:
            print(f"rewrite_bag: error: --rename takes FROM:=TO, got {item!r}", file=sys.stderr)
            return 2
        rename["/" + a.lstrip("/")] = "/" + b.lstrip("/")
    latency_ns = {}
    for item in args.latency_ms:
        topic, sep, span = item.partition(":=")
        lo, colon, hi = span.partition(":")
        try:
            lo_ns, hi_ns = round(float(lo) * 1e6), round(float(hi if colon else lo) * 1e6)
        except ValueError:
            lo_ns = hi_ns = -1
        if not sep or not topic or not 0 <= lo_ns <= hi_ns:
            print(f"rewrite_bag: error: --latency-ms takes TOPIC:=LO:HI with 0 <= LO <= HI, got {item!r}",
                  file=sys.stderr)
            return 2
        latency_ns["/" + topic.lstrip("/")] = (lo_ns, hi_ns)
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
                             compress=args.compress, jpeg_quality=args.jpeg_quality, latency_ns=latency_ns,
                             reorder=args.reorder, seed=args.seed)
    except Exception as e:  # noqa: BLE001 - one line for any unreadable bag
        print(f"rewrite_bag: error: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
