"""`egox record`: record a live node's topics into an MCAP bag without `ros2 bag record` (not in the PyPI setup).

Like `ros2 bag record`, each message is written as it arrived (raw CDR, log time = receive time, wall clock) and
each topic's QoS follows its publishers (best effort if any publisher is, transient local if all are: /tf_static
and ~/progress are latched). Topic types come from the ROS graph; topics that appear later are picked up while it
runs. The bag is written with rosbags (the replay's typestore: ROS 2 Kilted plus egox_msgs), read back at the end,
and never written over an existing path.
"""
from __future__ import annotations

import argparse
import signal
import sys
import threading
import time
from pathlib import Path

from egox_ros.ros.mcap_bag import McapBag
from egox_ros.ros.offline.plan import (OUTPUT_TOPICS, ReplayError, ReplayInputError, message_class,
                                       typestore_with_egox_msgs)

# What `egox record` takes without topic arguments: the node's outputs (OUTPUT_TOPICS, relative to its namespace),
# all of /tf (not only the ego frame, as the replay keeps), /tf_static and the node's progress.
DEFAULT_TOPICS = [t for t in OUTPUT_TOPICS if t != "/tf"] + ["/tf", "/tf_static", "/egox/progress"]
GLOBAL_TOPICS = {"/tf", "/tf_static", "/diagnostics"}    # never namespaced


def default_topics(namespace: str = "") -> list[str]:
    """The node's outputs for a node in `namespace` (e.g. 'robot1': /robot1/ego/image_raw, /robot1/egox/...)."""
    prefix = "/" + namespace.strip("/") if namespace.strip("/") else ""
    return [t if t in GLOBAL_TOPICS else prefix + t for t in DEFAULT_TOPICS]


class Recorder:
    """Subscribes (raw) to `topics` on `node` as they appear in the graph and writes them to an MCAP bag."""

    def __init__(self, node, out_bag: Path, topics: list[str], log=print):
        self.node, self.topics, self.log = node, list(dict.fromkeys(topics)), log
        self.bag = McapBag(out_bag, typestore_with_egox_msgs())
        self.subscriptions: dict[str, object] = {}
        self.skipped: dict[str, str] = {}         # topic -> why it is not recorded

    def discover(self) -> None:
        """Subscribe to every wanted topic that now has a publisher (call it periodically). A topic the graph knows
        only from its subscribers waits: its QoS follows its publishers, and a latched topic subscribed as volatile
        (before the publisher was known) would never get what was published before it matched."""
        types = dict(self.node.get_topic_names_and_types())
        for topic in self.topics:
            if (topic in self.subscriptions or topic in self.skipped or topic not in types
                    or self.node.count_publishers(topic) == 0):
                continue
            type_name = types[topic][0]
            try:
                msg_class = message_class(type_name)
                self.bag.add_topic(topic, type_name)
            except Exception as e:  # noqa: BLE001 - a type without Python bindings or rosbags definition
                self.skipped[topic] = f"{type_name}: {e}"
                self.log(f"egox record: not recording {topic} ({type_name}: {e})")
                continue
            self.subscriptions[topic] = self.node.create_subscription(
                msg_class, topic, lambda raw, t=topic: self._on(t, raw), self._qos(topic), raw=True)

    def _qos(self, topic: str):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        offered = [info.qos_profile for info in self.node.get_publishers_info_by_topic(topic)]
        best_effort = any(q.reliability == ReliabilityPolicy.BEST_EFFORT for q in offered)
        latched = bool(offered) and all(q.durability == DurabilityPolicy.TRANSIENT_LOCAL for q in offered)
        return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000,
                          reliability=ReliabilityPolicy.BEST_EFFORT if best_effort else ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL if latched else DurabilityPolicy.VOLATILE)

    def _on(self, topic: str, raw: bytes) -> None:
        self.bag.write(topic, time.time_ns(), raw)

    def close(self) -> dict[str, int]:
        """Close the bag; messages written per topic."""
        return self.bag.close()


def record(out_bag: Path, topics: list[str], duration_s: float | None = None, stop: threading.Event | None = None,
           log=print, status_period_s: float = 1.0) -> dict[str, int]:
    """Record `topics` into the new MCAP bag `out_bag` until `stop` is set or `duration_s` has passed; returns the
    counts per topic, and logs them every status_period_s while they change. Raises ReplayInputError when out_bag
    exists (nothing is overwritten) or cannot be created."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from egox_ros.ros.dds import BackgroundSpin
    from egox_ros.ros.offline.bag_check import read_back_problem
    out_bag = Path(out_bag)
    if out_bag.exists() or out_bag.is_symlink():
        raise ReplayInputError(f"{out_bag} exists; egox record never writes over anything: give a new path")
    if not out_bag.parent.is_dir():
        raise ReplayInputError(f"{out_bag.parent} is not a directory")
    stop = stop or threading.Event()
    context = rclpy.Context()
    rclpy.init(context=context, signal_handler_options=rclpy.signals.SignalHandlerOptions.NO)
    node = rclpy.create_node("egox_record", context=context)
    executor = SingleThreadedExecutor(context=context)
    executor.add_node(node)
    recorder = Recorder(node, out_bag, topics, log=log)
    spinner = BackgroundSpin(executor, name="egox-record-spin")
    log(f"egox record: recording into {out_bag}: {', '.join(recorder.topics)} (Ctrl-C stops)")
    deadline = None if duration_s is None else time.monotonic() + duration_s
    shown, shown_at = {}, time.monotonic()
    try:
        while not stop.is_set() and (deadline is None or time.monotonic() < deadline):
            recorder.discover()
            stop.wait(0.2 if deadline is None else max(0.0, min(0.2, deadline - time.monotonic())))
            counts = recorder.bag.counts_now()
            if counts != shown and time.monotonic() - shown_at >= status_period_s:   # a live count
                log(f"egox record: {sum(counts.values())} messages so far; "
                    + ", ".join(f"{t} {n}" for t, n in counts.items()))
                shown, shown_at = counts, time.monotonic()
    finally:
        spinner.stop()
        counts = recorder.close()
        node.destroy_node()
        context.try_shutdown()
    problem = read_back_problem(out_bag, counts)
    if problem is not None:
        raise ReplayError(problem)
    return counts


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("topics", nargs="*", metavar="TOPIC",
                   help="topics to record (default: the egox node's outputs, /tf, /tf_static and its progress)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the MCAP bag directory to write (must not exist)")
    p.add_argument("--namespace", default="", help="the egox node's namespace, for the default topics")
    p.add_argument("--duration", type=float, default=None, metavar="S", help="stop after S seconds (default: Ctrl-C)")


def run(args: argparse.Namespace) -> int:
    topics = args.topics or default_topics(args.namespace)
    bad = [t for t in topics if not t.startswith("/")]
    if bad:
        print(f"egox record: error: topics must be absolute (start with /): {', '.join(bad)}", file=sys.stderr)
        return 2
    if args.duration is not None and args.duration <= 0:
        print(f"egox record: error: --duration must be positive, not {args.duration}", file=sys.stderr)
        return 2
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        counts = record(args.output, topics, args.duration, stop, log=lambda s: print(s, file=sys.stderr))
    except ReplayInputError as e:
        print(f"egox record: error: {e}", file=sys.stderr)
        return 2
    except RuntimeError as e:
        print(f"egox record: {e}", file=sys.stderr)
        return 1
    total = sum(counts.values())
    print(f"egox record: {total} messages in {args.output}: "
          + ", ".join(f"{t} {n}" for t, n in counts.items()), file=sys.stderr)
    return 0
