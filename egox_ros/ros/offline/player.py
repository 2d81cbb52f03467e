"""The DDS side of `egox replay`: plays a bag into the graph in lockstep with the egox node and records what the
node publishes.

BagPlayer publishes the bag's messages (raw CDR) with /clock and sends each exo image only once the node's
egox_msgs/NodeProgress says it has taken the previous ones and has room; OutputRecorder writes the node's outputs
(OUTPUT_TOPICS) into an MCAP bag at their header stamps.
"""
from __future__ import annotations

import threading
import time
from collections import deque
from pathlib import Path

from egox_ros.ros.mcap_bag import McapBag
from egox_ros.ros.offline.plan import OUTPUT_TOPICS, ReplayError, message_class, until_damaged
from egox_ros.ros.stamps import ns_to_stamp, stamp_to_ns


# Exo images the replay holds back at most while it plays the messages logged after them (inputs of the frames the
# node waits on): about a second of a 30 Hz camera, well within the node's input queues (qos.input_depth 100).
LOOKAHEAD_IMAGES = 32


class OutputRecorder:
    """Subscribes (raw CDR) to the node's outputs and writes them to an MCAP bag, logged at their header stamps;
    a message stamped 0 (the node published it under use_sim_time before the first /clock, e.g. /diagnostics) is
    logged at `start_ns`, the input bag's start where the replay's /clock begins, not at 1970."""

    def __init__(self, node, out_bag: Path, typestore, ego_frame: str, start_ns: int):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        self.typestore = typestore
        self.ego_frame = ego_frame
        self.start_ns = start_ns
        self.bag = McapBag(out_bag, typestore)
        self.lock = threading.Lock()           # guards metadata
        self.metadata: list = []   # deserialised ClipMetadata
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = []
        for topic, type_name in OUTPUT_TOPICS.items():
            self.bag.add_topic(topic, type_name)
            self.subscriptions.append(node.create_subscription(
                message_class(type_name), topic, lambda raw, t=topic, n=type_name: self._on(t, n, raw), qos,
                raw=True))

    def _on(self, topic: str, type_name: str, raw: bytes) -> None:
        msg = self.typestore.deserialize_cdr(raw, type_name)
        if topic == "/tf":
            if not any(t.child_frame_id == self.ego_frame for t in msg.transforms):
                return  # the replayed bag's own TF, not an output
            stamp = msg.transforms[0].header.stamp
        else:
            stamp = msg.header.stamp
        if self.bag.write(topic, stamp_to_ns(stamp) or self.start_ns, raw) and topic == "/ego/clip_metadata":
            with self.lock:
                self.metadata.append(msg)

    @property
    def counts(self) -> dict[str, int]:
        """Messages recorded per output topic."""
        return self.bag.counts

    def frames_accounted(self) -> int:
        with self.lock:
            return sum(len(m.source_stamps) for m in self.metadata)

    def close(self) -> None:
        self.bag.close()


class BagPlayer:
    """Plays a bag's messages as raw CDR on matching publishers, with /clock; tracks the node's NodeProgress."""

    def __init__(self, node, reader, exo_topic: str):
        from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosgraph_msgs.msg import Clock
        from std_msgs.msg import Empty
        from egox_msgs.msg import NodeProgress
        self.node = node
        self.exo_topic = exo_topic
        self.publishers = {}
        self.skipped: dict[str, str] = {}
        reliable = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        for conn in reader.connections:
            if conn.topic in self.publishers or conn.topic in self.skipped:
                continue
            try:
                cls = message_class(conn.msgtype)
            except (ImportError, AttributeError, ValueError):
                self.skipped[conn.topic] = conn.msgtype
                continue
            qos = reliable
            if conn.topic == "/tf_static":
                qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                 durability=DurabilityPolicy.TRANSIENT_LOCAL)
            self.publishers[conn.topic] = node.create_publisher(cls, conn.topic, qos)
        self.clock_pub = node.create_publisher(Clock, "/clock", 10)
        self.clock_ns = -1                 # the last /clock published
        self.flush_pub = node.create_publisher(Empty, "/egox/flush", 10)
        self.progress = None
        self.progress_changed = threading.Condition()
        from egox_ros.ros.node import PROGRESS_QOS
        node.create_subscription(NodeProgress, "/egox/progress", self._on_progress, PROGRESS_QOS)

    def _on_progress(self, msg) -> None:
        with self.progress_changed:
            self.progress = msg
            self.progress_changed.notify_all()

    def wait_delivered(self, timeout_s: float) -> bool:
        """Block until the node has acknowledged every message played so far (all in its queues), or timeout."""
        from rclpy.duration import Duration
        return all(pub.wait_for_all_acked(Duration(seconds=timeout_s)) for pub in self.publishers.values())

    def publish_clock(self, stamp_ns: int) -> None:
        from rosgraph_msgs.msg import Clock
        self.clock_pub.publish(Clock(clock=ns_to_stamp(stamp_ns)))
        self.clock_ns = stamp_ns

    def _has_room(self, images_sent: int) -> bool:
        """The node has taken every exo image sent so far, and its waiting plus queued frames leave room for one
        more (call with progress_changed held)."""
        p = self.progress
        return images_taken(p) >= images_sent and p.frames_waiting + p.frames_queued < p.queue_capacity

    def play(self, messages, stall_timeout_s: float, alive, on_image) -> tuple[int, str | None]:
        """Publish `messages` ((topic, log_ns, raw CDR) in log-time order) with /clock, in lockstep with the node.

        Exo images go out one at a time, each once the node has taken the previous ones and has room for it
        (_has_room); every other message goes out as it comes. A frame that waits for inputs logged after later
        exo images (a bag recorded at receive time, with per-topic latencies or reordering) therefore gets them
        while the next images are held back here, at most LOOKAHEAD_IMAGES of them (then the replay waits for
        room). Returns (exo images sent, why the bag ended early or None); on_image() after each image sent."""
        held: deque = deque()
        sent = 0

        def send(block: bool) -> None:
            nonlocal sent
            while held:
                if block:
                    n = sent
                    wait_for(self.progress_changed, lambda: self._has_room(n), f"the node to take exo image {n}",
                          stall_timeout_s, alive, lambda: self.progress)
                    block = False
                else:
                    with self.progress_changed:
                        if not self._has_room(sent):
                            return
                self.publishers[self.exo_topic].publish(held.popleft())
                sent += 1
                on_image()

        damage: list[str] = []
        for topic, log_ns, raw in until_damaged(messages, damage):
            if topic not in self.publishers:
                continue
            if log_ns > self.clock_ns:
                self.publish_clock(log_ns)
            if topic == self.exo_topic:
                held.append(raw)
            else:
                self.publishers[topic].publish(raw)
            send(block=len(held) > LOOKAHEAD_IMAGES)
        while held:
            send(block=True)
        return sent, (damage[0] if damage else None)


def images_taken(progress) -> int:
    """Exo images the node has taken or knows it lost (its input queue overflowed)."""
    return progress.frames_received + progress.frames_lost


def wait_for(condition, predicate, what: str, stall_timeout_s: float, alive, snapshot) -> None:
    """Wait until predicate() holds; fail if snapshot() stays the same for stall_timeout_s or the node died."""
    deadline = time.monotonic() + stall_timeout_s
    last = None
    with condition:
        while not predicate():
            state = alive()
            if state is not None:
                raise ReplayError(f"while waiting for {what}: {state}")
            state = repr(snapshot())
            if state != last:
                last, deadline = state, time.monotonic() + stall_timeout_s
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ReplayError(f"no progress for {stall_timeout_s:.0f} s while waiting for {what}")
            condition.wait(timeout=min(0.5, remaining))


def wait_for_matches(node, endpoints, timeout_s: float, alive) -> None:
    """Wait until every (kind, entity) pair has matched: ('pub', publisher) needs a subscriber, ('sub', sub) a publisher."""
    deadline = time.monotonic() + timeout_s
    while True:
        missing = [name for kind, ent, name in endpoints
                   if (ent.get_subscription_count() if kind == "pub" else ent.get_publisher_count()) == 0]
        if not missing:
            return
        state = alive()
        if state is not None:
            raise ReplayError(f"while waiting for the node's topics: {state}")
        if time.monotonic() > deadline:
            raise ReplayError(f"these topics did not match the node within {timeout_s:.0f} s: {missing}. "
                              "Is the node running in the same ROS_DOMAIN_ID with the same topic names?")
        time.sleep(0.05)
