"""Write a variant of a rosbag2 bag: topics renamed or left out, TF frames left out, log times shifted, fewer frames.

Builds the bags the replay is tested with from the bundled sample, for example a bag with a RealSense driver's topic
names (raw images only) or one recorded like ``ros2 bag record`` does (log times later than the header stamps)::

    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/realsense --preset realsense
    python -m egox_ros.tools.rewrite_bag sample/tum_fr1_rpy out/late --log-offset-ms 40

The output must not exist (the input and anything else are never touched). Pure Python (``rosbags``).
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

# A RealSense driver's raw topics for the sample's inputs (see `egox replay --preset realsense`).
REALSENSE_RENAMES = {
    "/exo/image_raw": "/camera/color/image_raw",
    "/exo/camera_info": "/camera/color/camera_info",
    "/exo/depth/image_raw": "/camera/aligned_depth_to_color/image_raw",
}


def rewrite_bag(src: Path, dst: Path, rename: dict[str, str] | None = None, drop_topics=(), drop_frames=(),
                log_offset_ns: int = 0, max_frames: int | None = None, frame_topic: str = "/exo/image_raw",
                storage: str = "mcap") -> dict[str, int]:
    """Copy `src` to the new bag `dst`: topic `a` becomes `rename[a]`, topics in `drop_topics` and TF transforms whose
    child frame is in `drop_frames` are left out (a TF message left empty is dropped), every log time is shifted by
    `log_offset_ns` (header stamps unchanged) and the copy stops before the (max_frames + 1)-th `frame_topic`
    message. Returns the message count per written topic."""
    from rosbags.highlevel import AnyReader
    from rosbags.rosbag2 import StoragePlugin, Writer
    from egox_ros.ros.replay import typestore_with_egox_msgs
    rename, drop_topics, drop_frames = dict(rename or {}), set(drop_topics), set(drop_frames)
    store = typestore_with_egox_msgs()
    plugin = {"mcap": StoragePlugin.MCAP, "sqlite3": StoragePlugin.SQLITE3}[storage]
    counts: dict[str, int] = {}
    with AnyReader([Path(src)], default_typestore=store) as reader, \
            Writer(Path(dst), version=8, storage_plugin=plugin) as writer:
        conns = {}
        for c in reader.connections:
            if c.topic not in drop_topics and c.topic not in conns:
                conns[c.topic] = writer.add_connection(rename.get(c.topic, c.topic), c.msgtype, typestore=store)
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
            writer.write(conns[conn.topic], log_ns + log_offset_ns, bytes(raw))
            name = rename.get(conn.topic, conn.topic)
            counts[name] = counts.get(name, 0) + 1
    return counts


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
    args = p.parse_args(argv)
    rename = dict(REALSENSE_RENAMES) if args.preset == "realsense" else {}
    for item in args.rename:
        a, sep, b = item.partition(":=")
        if not sep or not a or not b:
            print(f"rewrite_bag: error: --rename takes FROM:=TO, got {item!r}", file=sys.stderr)
            return 2
        rename["/" + a.lstrip("/")] = "/" + b.lstrip("/")
    if not args.src.exists():
        print(f"rewrite_bag: error: input bag {args.src} does not exist", file=sys.stderr)
        return 2
    if args.dst.exists():
        print(f"rewrite_bag: error: {args.dst} exists; choose a new output path", file=sys.stderr)
        return 2
    try:
        counts = rewrite_bag(args.src, args.dst, rename, args.drop_topic, args.drop_frame,
                             round(args.log_offset_ms * 1e6), args.max_frames, storage=args.storage)
    except Exception as e:  # noqa: BLE001 - one line for any unreadable bag
        print(f"rewrite_bag: error: {type(e).__name__}: {e}".replace("\n", " "), file=sys.stderr)
        return 2
    print(f"wrote {args.dst}: " + ", ".join(f"{t} {n}" for t, n in counts.items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
