"""Offline replay: play a rosbag2 bag into the live graph in lockstep with the egox node, record its outputs.

`egox replay IN_BAG -o OUT_DIR` starts the node (unless --attach), plays every message of IN_BAG (sqlite3 or MCAP)
with /clock, sends the next exo image only once the node has taken the previous one and has room in its generator
queue (egox_msgs/NodeProgress), so nothing is dropped however slow the generator is; records every output into
OUT_DIR/bag (MCAP) and writes OUT_DIR/contact_sheet.png and OUT_DIR/metrics.json. All DDS traffic stays on this
machine (shared memory, localhost discovery, a private domain id).

Before anything starts, the bag is checked against what the node's effective parameters need (plan_replay: topics,
TF frames; one line per missing input, exit code 2); `--dry-run` prints that plan. Topic remaps (`--remap`,
`--preset`, the params file's `egox_replay` section) go to the node as `-r FROM:=TO`; compressed images in the bag
switch the node's transports.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import importlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path


from egox_ros.ros.dds import DDS_ENV_KEYS, BackgroundSpin, apply_isolated_env
from egox_ros.ros.stamps import ns_to_stamp, stamp_to_ns

PROGRESS_TYPE = "egox_msgs/msg/NodeProgress"


OUTPUT_TOPICS = {  # topic -> type; all relative to the node's namespace (root by default)
    "/ego/image_raw": "sensor_msgs/msg/Image",
    "/ego/camera_info": "sensor_msgs/msg/CameraInfo",
    "/ego/prior/image_raw": "sensor_msgs/msg/Image",
    "/ego/prior/mask": "sensor_msgs/msg/Image",
    "/ego/prior/camera_info": "sensor_msgs/msg/CameraInfo",
    "/ego/clip_metadata": "egox_msgs/msg/ClipMetadata",
    "/tf": "tf2_msgs/msg/TFMessage",          # only the node's world -> ego frame transforms are recorded
    "/diagnostics": "diagnostic_msgs/msg/DiagnosticArray",
    "/egox/person_mask": "sensor_msgs/msg/Image",              # with person.source 'mediapipe'
    "/egox/head_pose": "geometry_msgs/msg/PoseWithCovarianceStamped",   # with inputs.head_source 'exo'
}


# Outputs the node publishes once for every published frame (ros/outputs.py, OutputMessages.clip).
PER_FRAME_TOPICS = ("/ego/image_raw", "/ego/camera_info", "/ego/prior/image_raw", "/ego/prior/mask",
                    "/ego/prior/camera_info")


class ReplayError(RuntimeError):
    """The replay could not finish; the message says why and what to check."""


class ReplayInputError(ReplayError):
    """Bad input (arguments, input bag, output path): nothing was started; `egox replay` exits with code 2."""


# What the replay writes into its output directory; with --overwrite exactly these are replaced, nothing else.
REPLAY_OUTPUTS = ("bag", "contact_sheet.png", "metrics.json", "node.log")


def _input_root(in_bag: Path) -> Path:
    """The input as a whole: the bag directory (also when a file inside a bag directory is given)."""
    path = in_bag.resolve()
    if path.is_file() and (path.parent / "metadata.yaml").is_file():
        return path.parent
    return path


def _within(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def check_output(in_bag: Path, out_dir: Path, overwrite: bool) -> list[Path]:
    """Refuse an output that would delete, overwrite or mix with the input or a user's files; returns the earlier
    replay outputs in out_dir that --overwrite replaces. Raises ReplayInputError (one line) and changes nothing."""
    protected = _input_root(Path(in_bag))
    out = Path(out_dir)
    resolved = out.resolve()
    if _within(resolved, protected):
        raise ReplayInputError(f"output directory {out} is the input bag {in_bag} or inside it; choose an -o "
                               "outside the input")
    for name in REPLAY_OUTPUTS:
        if _within(protected, (out / name).resolve()):
            raise ReplayInputError(f"the input bag {in_bag} is (inside) {out / name}, which the replay writes; "
                                   "choose another -o")
    if out.exists() and not out.is_dir():
        raise ReplayInputError(f"output path {out} exists and is not a directory")
    if out.is_dir():
        entries = sorted(p.name for p in out.iterdir())
        if entries and not overwrite:
            raise ReplayInputError(
                f"output directory {out} is not empty ({', '.join(entries[:4])}{', ...' if len(entries) > 4 else ''})"
                f"; pass --overwrite to replace what a replay writes there ({', '.join(REPLAY_OUTPUTS)}; nothing "
                "else is touched), or choose another -o")
        if not os.access(out, os.W_OK | os.X_OK):
            raise ReplayInputError(f"output directory {out} is not writable")
        return [out / name for name in REPLAY_OUTPUTS if (out / name).exists() or (out / name).is_symlink()]
    parent = resolved.parent
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise ReplayInputError(f"cannot create output directory {out}: {parent} is not a writable directory")
    return []


def prepare_output(out_dir: Path, replaced: list[Path]) -> None:
    """Create out_dir and remove the earlier replay outputs check_output() listed (never anything else)."""
    out = Path(out_dir)
    try:
        out.mkdir(parents=True, exist_ok=True)
        for path in replaced:
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
            else:
                path.unlink()
    except OSError as e:
        raise ReplayInputError(f"cannot prepare output directory {out}: {e.strerror or e} "
                               f"({e.filename or out})") from e


def typestore_with_egox_msgs():
    """rosbags typestore for ROS 2 Kilted plus egox_msgs (from its installed or source .msg files)."""
    from rosbags.typesys import Stores, get_types_from_msg, get_typestore
    store = get_typestore(Stores.ROS2_KILTED)
    candidates = [Path(__file__).resolve().parents[2] / "msg" / "egox_msgs" / "msg"]
    try:
        from ament_index_python.packages import get_package_share_directory
        candidates.insert(0, Path(get_package_share_directory("egox_msgs")) / "msg")
    except Exception:  # noqa: BLE001 - not installed through ament: use the source tree
        pass
    msg_dir = next((d for d in candidates if d.is_dir()), None)
    if msg_dir is None:
        raise ReplayError(f"egox_msgs .msg files not found in {[str(c) for c in candidates]}")
    types = {}
    for path in sorted(msg_dir.glob("*.msg")):
        types.update(get_types_from_msg(path.read_text(), f"egox_msgs/msg/{path.stem}"))
    store.register(types)
    return store


def message_class(type_name: str):
    package, _, name = type_name.split("/")
    return getattr(importlib.import_module(f"{package}.msg"), name)


@dataclass
class ReplayResult:
    images_sent: int
    out_bag: Path
    metrics_path: Path
    contact_sheet_path: Path
    metrics: dict = field(default_factory=dict)


class _Recorder:
    """Subscribes (raw CDR) to the node's outputs and writes them to an MCAP bag, logged at their header stamps;
    a message stamped 0 (the node published it under use_sim_time before the first /clock, e.g. /diagnostics) is
    logged at `start_ns`, the input bag's start where the replay's /clock begins, not at 1970."""

    def __init__(self, node, out_bag: Path, typestore, ego_frame: str, start_ns: int):
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from rosbags.rosbag2 import StoragePlugin, Writer
        self.typestore = typestore
        self.ego_frame = ego_frame
        self.start_ns = start_ns
        self.writer = Writer(out_bag, version=8, storage_plugin=StoragePlugin.MCAP)
        self.writer.open()
        self.lock = threading.Lock()
        self.connections = {}
        self.counts: dict[str, int] = {}
        self.metadata: list = []   # deserialised ClipMetadata
        qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.subscriptions = []
        for topic, type_name in OUTPUT_TOPICS.items():
            self.connections[topic] = self.writer.add_connection(topic, type_name, typestore=typestore)
            self.counts[topic] = 0
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
        with self.lock:
            if self.writer is None:
                return
            self.writer.write(self.connections[topic], stamp_to_ns(stamp) or self.start_ns, bytes(raw))
            self.counts[topic] += 1
            if topic == "/ego/clip_metadata":
                self.metadata.append(msg)

    def frames_accounted(self) -> int:
        with self.lock:
            return sum(len(m.source_stamps) for m in self.metadata)

    def close(self) -> None:
        with self.lock:
            if self.writer is not None:
                self.writer.close()
                self.writer = None


class _Player:
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
        return _images_taken(p) >= images_sent and p.frames_waiting + p.frames_queued < p.queue_capacity

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
                    _wait(self.progress_changed, lambda: self._has_room(n), f"the node to take exo image {n}",
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


def until_damaged(messages, damage: list[str]):
    """Yield from `messages` (a bag reader's) until reading fails (a damaged chunk, a file cut off mid-write): then
    stop, with the error as one line appended to `damage`, so what was read before is kept."""
    stream = iter(messages)
    while True:
        try:
            item = next(stream)
        except StopIteration:
            return
        except Exception as e:  # noqa: BLE001 - rosbags and its decompressors raise many types for damaged bags
            damage.append(f"{type(e).__name__}: {e}".replace("\n", " "))
            return
        yield item


def _wait(condition, predicate, what: str, stall_timeout_s: float, alive, snapshot) -> None:
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


def _wait_for_matches(node, endpoints, timeout_s: float, alive) -> None:
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


REPLAY_INPUT_TIMEOUT_S = 10.0
# Exo images the replay holds back at most while it plays the messages logged after them (inputs of the frames the
# node waits on): about a second of a 30 Hz camera, well within the node's input queues (qos.input_depth 100).
LOOKAHEAD_IMAGES = 32


# Runs first in the node's process, then becomes the node (exec, same pid): the kernel sends it SIGTERM when the
# replay dies, even by SIGKILL (prctl PR_SET_PDEATHSIG, Linux). No preexec_fn: the replay has DDS threads by then.
_EXEC_WITH_PARENT_DEATH_SIGNAL = """import ctypes, os, signal, sys
try:
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)   # PR_SET_PDEATHSIG
except (AttributeError, OSError):
    pass
if os.getppid() != int(sys.argv[1]):
    sys.exit(1)   # the replay died before the line above
os.execv(sys.executable, [sys.executable] + sys.argv[2:])
"""


def _node_arguments(plan: "ReplayPlan") -> list[str]:
    """The node's ROS arguments (after --ros-args) for a replay plan."""
    from egox_ros.ros.launch_spec import default_params_file
    args = ["-r", "__node:=egox"] + [a for src, dst in plan.remaps.items() for a in ("-r", f"{src}:={dst}")]
    args += ["--params-file", plan.params_file or str(default_params_file())]
    # Lockstep needs lossless inputs (reliable, deep enough for the TF and depth between two images) and sim time.
    args += ["-p", "use_sim_time:=true", "-p", "qos.input_reliability:=reliable", "-p", "qos.input_depth:=100"]
    for o in plan.replay_params + plan.overrides:
        args += ["-p", o]
    return args


def _start_node(plan: "ReplayPlan", log_path: Path) -> subprocess.Popen:
    """The node in its own session (its own process group: a terminal's Ctrl-C reaches the replay, which stops it),
    stopped by the kernel if the replay dies without stopping it."""
    cmd = [sys.executable, "-c", _EXEC_WITH_PARENT_DEATH_SIGNAL, str(os.getpid()),
           "-m", "egox_ros.ros.node", "--ros-args"] + _node_arguments(plan)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=os.environ.copy(),
                                start_new_session=True)
    return proc


def _stop_node(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGINT to the node's process group, SIGKILL after grace_s; reaps it."""
    if proc.poll() is None:
        try:
            os.killpg(proc.pid, signal.SIGINT)
            proc.wait(timeout=grace_s)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        except ProcessLookupError:
            pass


class ReplayInterrupted(BaseException):
    """SIGTERM, SIGINT or SIGHUP reached the replay (raised from its signal handler, so every cleanup runs)."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def _raise_interrupted(signum, _frame):
    for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):   # a second signal must not cut the cleanup short
        signal.signal(s, signal.SIG_IGN)
    raise ReplayInterrupted(signum)


def _egox_publishers(node) -> list[str]:
    """'node on topic' for every NodeProgress publisher (one per egox node) this node sees in its domain."""
    found = []
    for topic, types in node.get_topic_names_and_types():
        if PROGRESS_TYPE in types:
            for info in node.get_publishers_info_by_topic(topic):
                known = "UNKNOWN" not in info.node_name   # the node's name may not be discovered yet
                found.append(f"{info.node_namespace.rstrip('/')}/{info.node_name} on {topic}" if known else topic)
    return sorted(found)


def _other_egox_nodes(node, watch_s: float) -> list[str]:
    """The egox nodes the fresh `node` sees within watch_s (returns as soon as one shows up)."""
    deadline = time.monotonic() + watch_s
    while True:
        found = _egox_publishers(node)
        if found or time.monotonic() >= deadline:
            return found
        time.sleep(0.05)


def _refuse_other_egox_nodes(node, allowed: int) -> None:
    """Raise ReplayInputError when the domain has more than `allowed` egox nodes (0 before the replay starts its
    own, 1 once it has, or when it attaches to one)."""
    found = _egox_publishers(node)
    if len(found) > allowed:
        raise ReplayInputError(f"another egox node is already running in ROS_DOMAIN_ID "
                               f"{os.environ.get('ROS_DOMAIN_ID', '0')} ({'; '.join(found)}); stop it or choose "
                               "another --domain-id")


# How long a fresh replay watches its domain for another egox node before it starts its own (discovery on this
# machine takes well under that; one that shows up later is still caught before the first frame is played).
DOMAIN_CHECK_S = 1.0


# ------------------------------------------------------------------------------------------------ the replay's plan
# The node's input topics, as it names them (relative to its namespace, the root in a replay), and their types.
NODE_INPUTS = {
    "exo/image_raw": "sensor_msgs/msg/Image",
    "exo/image_raw/compressed": "sensor_msgs/msg/CompressedImage",
    "exo/camera_info": "sensor_msgs/msg/CameraInfo",
    "exo/depth/image_raw": "sensor_msgs/msg/Image",
    "exo/depth/image_raw/compressedDepth": "sensor_msgs/msg/CompressedImage",
    "head/pose": "geometry_msgs/msg/PoseStamped",
    "exo/person_mask": "sensor_msgs/msg/Image",
}
IMAGE_TYPE, COMPRESSED_TYPE, TF_TYPE = ("sensor_msgs/msg/Image", "sensor_msgs/msg/CompressedImage",
                                        "tf2_msgs/msg/TFMessage")

# `--preset NAME`: remaps of the node's inputs to a driver's topics, raw and image_transport's compressed variants.
# realsense: realsense-ros (realsense2_camera) 4.54 and later, the ROS 2 wrapper's current layout
# /<camera_namespace>/<camera_name>/... with both 'camera' by default, launched with align_depth.enable:=true (the
# colour stream and the depth aligned to it); realsense_legacy: realsense-ros before 4.54 and the ROS 1 wrapper
# (/camera/color/...).
def _realsense(prefix: str) -> dict[str, str]:
    return {
        "exo/image_raw": f"{prefix}/color/image_raw",
        "exo/image_raw/compressed": f"{prefix}/color/image_raw/compressed",
        "exo/camera_info": f"{prefix}/color/camera_info",
        "exo/depth/image_raw": f"{prefix}/aligned_depth_to_color/image_raw",
        "exo/depth/image_raw/compressedDepth": f"{prefix}/aligned_depth_to_color/image_raw/compressedDepth",
    }


PRESETS = {"realsense": _realsense("/camera/camera"), "realsense_legacy": _realsense("/camera")}
PRESET_HELP = {"realsense": "realsense-ros 4.54+ defaults, /camera/camera/color/image_raw, "
                            "/camera/camera/aligned_depth_to_color/image_raw (align_depth.enable:=true), ...",
               "realsense_legacy": "realsense-ros before 4.54 and ROS 1, /camera/color/image_raw, ..."}

# The replay's own section of a params file: `egox_replay: {ros__parameters: {preset: realsense, remap: [...]}}`.
# The node (named egox) ignores it; other sections (including /**) are the node's, never the replay's.
REPLAY_SECTION = "egox_replay"
NODE_NAME = "egox"


def _load_params_file(params_file: str) -> dict:
    """The params file (egox_ros.ros.params.read_params_file); a bad one is a ReplayInputError (one line)."""
    from egox_ros.ros.params import read_params_file
    try:
        return read_params_file(params_file)
    except ValueError as e:
        raise ReplayInputError(str(e)) from e


def node_parameters(params_file: str | None, overrides: list[str]) -> tuple[dict, set[str]]:
    """The egox node's effective parameters as the replay starts it, dotted names -> values: config/egox.yaml's
    defaults, then the params file's sections for the node, then the `-p NAME:=VALUE` overrides (YAML values, as
    ROS reads them; egox_ros.ros.params.load_parameters); and the names the user set (file or -p)."""
    import yaml
    from egox_ros.ros.launch_spec import default_params_file
    from egox_ros.ros.params import load_parameters
    try:       # a missing or unreadable params file: load_parameters' one line (read_params_file)
        values = load_parameters(default_params_file(), [], NODE_NAME)
        user = load_parameters(params_file, list(overrides), NODE_NAME)
    except (ValueError, OSError, yaml.YAMLError) as e:
        raise ReplayInputError(f"{e}".replace("\n", " ")) from e
    values.update(user)
    return values, set(user)


def _replay_section(params_file: str | None) -> dict:
    """ros__parameters of the replay's own section (egox_replay) of the params file: preset, remap."""
    if not params_file:
        return {}
    found: dict = {}
    for key, section in _load_params_file(params_file).items():
        if str(key).lstrip("/") == REPLAY_SECTION and isinstance(section, dict):
            found.update(section.get("ros__parameters") or {})
    unknown = sorted(set(found) - {"preset", "remap"})
    if unknown:
        raise ReplayInputError(f"{params_file}: {REPLAY_SECTION} has unknown settings {unknown}; it takes preset "
                               "and remap")
    if isinstance(found.get("remap"), str):
        found["remap"] = [found["remap"]]
    if not isinstance(found.get("remap", []), list):
        raise ReplayInputError(f"{params_file}: {REPLAY_SECTION} remap must be a list of 'FROM:=TO' strings")
    return found


def parse_remaps(items, source: str) -> dict[str, str]:
    """{'exo/image_raw': '/camera/color/image_raw'} from ['exo/image_raw:=/camera/color/image_raw', ...]; FROM must
    be one of the node's inputs (a leading '/' is allowed: the node runs in the root namespace)."""
    rules = {}
    for item in items:
        src, sep, dst = str(item).partition(":=")
        src, dst = src.strip().lstrip("/"), dst.strip()
        if not sep or not src or not dst.strip("/"):
            raise ReplayInputError(f"{source} takes FROM:=TO (e.g. exo/image_raw:=/camera/color/image_raw), "
                                   f"got {item!r}")
        if src not in NODE_INPUTS:
            raise ReplayInputError(f"{source} {item!r}: {src} is not an input of the node; its inputs: "
                                   f"{', '.join(NODE_INPUTS)}")
        rules[src] = "/" + dst.lstrip("/")
    return rules


@dataclass
class ReplayPlan:
    """What a replay does with a bag, decided before anything is started (`egox replay --dry-run` prints it)."""
    in_bag: Path
    params_file: str | None
    overrides: list[str]
    params: dict                       # the node's effective parameters (dotted names)
    user_set: set[str]                 # parameters the user set (file or -p)
    remaps: dict[str, str]             # node input -> bag topic, passed to the node as -r
    replay_params: list[str]           # -p NAME:=VALUE the replay adds (transports it detected, sync.timeout_s)
    topics: dict[str, tuple[str, int]]  # every topic of the bag: (type, messages)
    exo_topic: str = ""                # bag topic of the exo images (played in lockstep)
    exo_type: str = IMAGE_TYPE
    camera_info_topic: str = ""
    gt_topic: str = ""
    gt_info_topic: str = ""
    preset: str | None = None
    inputs: list[tuple[str, str]] = field(default_factory=list)   # (input, what the bag has for it)
    problems: list[str] = field(default_factory=list)             # one line per missing input
    input_topics: set[str] = field(default_factory=set)          # bag topics the node takes
    configs: dict = field(default_factory=dict)                   # section -> typed config, as the node builds them
    warnings: list[str] = field(default_factory=list)             # unknown parameter names (typos), one line each

    def param(self, name: str):
        return self.params.get(name)

    def describe(self, out_dir: Path | None = None) -> str:
        """The plan as text: inputs found, parameters that matter, remaps, the node's command, output paths."""
        lines = [f"input bag: {self.in_bag} ({sum(n for _, n in self.topics.values())} messages, "
                 f"{len(self.topics)} topics)", "inputs of the node:"]
        lines += [f"  {what:<16} {found}" for what, found in self.inputs]
        others = [f"{t} ({ty.rsplit('/', 1)[-1]}, {n})" for t, (ty, n) in sorted(self.topics.items())
                  if t not in self.input_topics and t not in ("/tf", "/tf_static")]
        if others:
            lines.append("other topics (played, not taken by the node): " + ", ".join(others))
        gt = (f"{self.gt_topic} with {self.gt_info_topic}" if self.gt_topic in self.topics
              and self.gt_info_topic in self.topics else f"none ({self.gt_topic} and {self.gt_info_topic} not both "
                                                         "in the bag; no PSNR)")
        lines.append(f"ground truth for the report: {gt}")
        shown = ["inputs.exo_transport", "inputs.depth_transport", "inputs.use_depth", "depth.source",
                 "inputs.head_source", "inputs.head_frame", "inputs.world_frame", "inputs.exo_frame",
                 "person.source", "generator.name", "sync.timeout_s", "sync.queue_capacity", "outputs.ego_frame"]
        added = dict(p.split(":=", 1) for p in self.replay_params)
        lines.append("node parameters: " + ", ".join(
            f"{n}={added[n] + ' (set by the replay)' if n in added else repr(self.params.get(n))}"
            + (" (yours)" if n in self.user_set else "") for n in shown))
        lines.append("remaps: " + (" ".join(f"{a}:={b}" for a, b in self.remaps.items()) or "none")
                     + (f" (preset {self.preset})" if self.preset else ""))
        lines.append("node: python -m egox_ros.ros.node --ros-args " + " ".join(_node_arguments(self)))
        if out_dir is not None:
            lines.append("outputs: " + ", ".join(str(Path(out_dir) / n) for n in REPLAY_OUTPUTS))
        return "\n".join(lines)


def _tf_parents(reader, conns: list, needed: list[str], world: str) -> dict[str, tuple[str, str]]:
    """child -> (parent, topic) of the bag's TF connections `conns` (not empty: rosbags reads connections=[] as
    every connection), first seen, read until every needed frame connects to `world` (a whole bag's TF when one
    does not)."""
    parents: dict[str, tuple[str, str]] = {}
    for conn, _, raw in reader.messages(connections=conns):
        for t in reader.deserialize(raw, conn.msgtype).transforms:
            parents.setdefault(t.child_frame_id.lstrip("/"), (t.header.frame_id.lstrip("/"), conn.topic))
        if all(_tf_root(parents, f) == _tf_root(parents, world) for f in needed):
            break
    return parents


def _tf_root(parents: dict, frame: str) -> str:
    seen = set()
    while frame in parents and frame not in seen:
        seen.add(frame)
        frame = parents[frame][0]
    return frame


def _check_parameters(params_file: str | None, overrides: list[str]) -> tuple[dict, list[str]]:
    """Every section's config built from the params file and overrides exactly as the node builds it (types,
    ranges); a bad value is a ReplayInputError (one line) before anything starts. Returns (configs, warnings for
    unknown names)."""
    from egox_ros.ros.config import parameter_sections
    from egox_ros.ros.params import configs_from_parameters, load_parameters
    try:
        return configs_from_parameters(load_parameters(params_file, overrides, NODE_NAME), parameter_sections())
    except ValueError as e:
        raise ReplayInputError(f"bad parameters: {e}".replace("\n", " ")) from e


def _read(in_bag: Path, what: str, read):
    """read() (a pass over the bag's messages); an unreadable bag (a damaged chunk, a truncated file) is a
    ReplayInputError naming it, not a traceback."""
    try:
        return read()
    except Exception as e:  # noqa: BLE001 - rosbags and its decompressors raise many types for damaged bags
        raise ReplayInputError(f"cannot read {in_bag} ({what}): {type(e).__name__}: {e}; the bag is damaged "
                               "(a corrupt or truncated chunk?)".replace("\n", " ")) from e


def plan_replay(reader, in_bag: Path, params_file: str | None = None, overrides: list[str] | None = None,
                remaps: list[str] | None = None, preset: str | None = None, exo_topic: str | None = None,
                gt_topic: str = "/ego/ground_truth/image_raw", gt_info_topic: str | None = None) -> ReplayPlan:
    """Decide what the node needs from the bag (from its effective parameters) and where the bag has it: remaps
    (preset, then the params file's egox_replay remap, then --remap; --exo-topic is the exo/image_raw remap),
    compressed transports detected from the bag's types, and one problem line per missing input."""
    overrides = list(overrides or [])
    params, user_set = node_parameters(params_file, overrides)
    section = _replay_section(params_file)
    preset = preset or section.get("preset")
    if preset is not None and preset not in PRESETS:
        raise ReplayInputError(f"unknown preset {preset!r}; presets: {', '.join(PRESETS)}")
    rules = dict(PRESETS.get(preset, {}))
    rules.update(parse_remaps(section.get("remap", []), f"{params_file}: {REPLAY_SECTION} remap"))
    rules.update(parse_remaps(remaps or [], "--remap"))
    if exo_topic:
        rules["exo/image_raw"] = "/" + exo_topic.strip().lstrip("/")
    topics: dict[str, tuple[str, int]] = {}
    for c in reader.connections:
        old = topics.get(c.topic, (c.msgtype, 0))
        topics[c.topic] = (old[0], old[1] + c.msgcount)
    plan = ReplayPlan(Path(in_bag), params_file, overrides, params, user_set, {}, [], topics, preset=preset,
                      gt_topic=gt_topic, gt_info_topic=gt_info_topic or gt_topic.rsplit("/", 1)[0] + "/camera_info")

    def bag_topic(node_input: str) -> str:
        return rules.get(node_input, "/" + node_input)

    def type_of(topic: str) -> str | None:
        return topics.get(topic, (None, 0))[0]

    def choose_transport(param: str, raw_input: str, compressed_input: str, compressed_value: str):
        """(transport, node input, bag topic): raw unless the bag has CompressedImage there (or only the
        image_transport topic <raw>/<suffix>) and the user did not choose."""
        raw = bag_topic(raw_input)
        compressed = rules.get(compressed_input, raw + "/" + compressed_input.rsplit("/", 1)[1])
        if param in user_set:
            transport = str(params.get(param))
        elif type_of(raw) == COMPRESSED_TYPE or (type_of(raw) is None and type_of(compressed) == COMPRESSED_TYPE):
            transport = compressed_value
            plan.replay_params.append(f"{param}:={compressed_value}")
        else:
            transport = "raw"
        params[param] = transport
        if transport != compressed_value:
            return transport, raw_input, raw
        if type_of(compressed) is None and type_of(raw) == COMPRESSED_TYPE:
            compressed = raw   # compressed images under the raw name: the node's compressed input is remapped there
        return transport, compressed_input, compressed

    def need(what: str, node_input: str, topic: str, note: str = "") -> bool:
        """An input topic: found (listed) or a problem line."""
        expected = NODE_INPUTS[node_input]
        if topic != "/" + node_input:
            plan.remaps[node_input] = topic
        found = type_of(topic)
        count = topics.get(topic, (None, 0))[1]
        remap_hint = f"--remap {node_input}:=TOPIC"
        if found is None:
            similar = sorted(t for t, (ty, _) in topics.items() if ty == expected)
            plan.problems.append(
                f"no {what}: the bag has no {topic} ({expected}) for the node's {node_input}{note}; "
                + (f"its {expected.rsplit('/', 1)[-1]} topics: {', '.join(similar)}; " if similar else "")
                + f"map one with {remap_hint} or --preset {'|'.join(PRESETS)}")
            plan.inputs.append((what, f"MISSING {topic} ({expected})"))
            return False
        if found != expected:
            plan.problems.append(f"{what}: {topic} in the bag is {found}, the node's {node_input}{note} takes "
                                 f"{expected}")
            plan.inputs.append((what, f"WRONG TYPE {topic} ({found})"))
            return False
        if count == 0:
            plan.problems.append(f"no {what}: {topic} in the bag has no messages")
            plan.inputs.append((what, f"EMPTY {topic} ({found})"))
            return False
        plan.inputs.append((what, f"{topic} ({found}, {count} messages) -> node {node_input}"))
        plan.input_topics.add(topic)
        return True

    exo_transport, exo_input, plan.exo_topic = choose_transport(
        "inputs.exo_transport", "exo/image_raw", "exo/image_raw/compressed", "compressed")
    plan.exo_type = NODE_INPUTS[exo_input]
    exo_ok = need("exo image", exo_input, plan.exo_topic, f" (inputs.exo_transport {exo_transport})")
    plan.camera_info_topic = bag_topic("exo/camera_info")
    need("exo camera info", "exo/camera_info", plan.camera_info_topic)
    if params.get("inputs.use_depth") is True and params.get("depth.source") == "topic":
        depth_transport, depth_input, depth_topic = choose_transport(
            "inputs.depth_transport", "exo/depth/image_raw", "exo/depth/image_raw/compressedDepth", "compressedDepth")
        need("depth", depth_input, depth_topic, f" (inputs.use_depth with depth.source 'topic', "
                                                f"inputs.depth_transport {depth_transport})")
    else:
        plan.inputs.append(("depth", f"not from the bag (inputs.use_depth {params.get('inputs.use_depth')}, "
                                     f"depth.source {params.get('depth.source')!r})"))
    head_source = params.get("inputs.head_source")
    if head_source == "pose_topic":
        need("head pose", "head/pose", bag_topic("head/pose"), " (inputs.head_source 'pose_topic')")
    elif head_source == "exo":
        plan.inputs.append(("head", "estimated from the exo image (inputs.head_source 'exo')"))
    person_source = params.get("person.source")
    if person_source == "topic":
        need("person mask", "exo/person_mask", bag_topic("exo/person_mask"), " (person.source 'topic')")
    else:
        if person_source == "auto":   # as the node decides it
            from egox_ros.core.demonstrator.detector import PersonConfig, resolve_person_source
            person_source = resolve_person_source(PersonConfig(source="auto"))
            person_source = f"'auto': {person_source}"
        plan.inputs.append(("person mask", f"not from the bag (person.source {person_source})"))
    # Every remap the user gave reaches the node, also for inputs this configuration does not take.
    for node_input, topic in rules.items():
        if topic != "/" + node_input:
            plan.remaps.setdefault(node_input, topic)
    if params.get("sync.timeout_s") is not None and "sync.timeout_s" not in user_set:
        plan.replay_params.append(f"sync.timeout_s:={REPLAY_INPUT_TIMEOUT_S}")
        params["sync.timeout_s"] = REPLAY_INPUT_TIMEOUT_S
    if params.get("sync.overload") is not None and "sync.overload" not in user_set:
        plan.replay_params.append("sync.overload:=keep_all")    # a recording: every frame, none dropped for room
        params["sync.overload"] = "keep_all"
    plan.configs, plan.warnings = _check_parameters(params_file, overrides + plan.replay_params)

    # TF: transforms to the exo camera frame and (head_source 'tf') the head frame, connected to the world frame.
    world = str(params.get("inputs.world_frame") or "world").lstrip("/")
    frames = []
    exo_frame = str(params.get("inputs.exo_frame") or "").lstrip("/")
    if not exo_frame and exo_ok:
        conn = next(c for c in reader.connections if c.topic == plan.exo_topic)

        def first_frame_id() -> str:
            for _, _, raw in reader.messages(connections=[conn]):
                return reader.deserialize(raw, conn.msgtype).header.frame_id.lstrip("/")
            return ""
        exo_frame = _read(in_bag, f"the first message on {plan.exo_topic}", first_frame_id)
        if not exo_frame:
            plan.problems.append(f"the exo images on {plan.exo_topic} have an empty header.frame_id and "
                                 "inputs.exo_frame is not set: the node cannot look up the exo camera's pose")
    if exo_frame:
        frames.append(("exo camera TF", exo_frame, "the exo camera frame" + (
            " (inputs.exo_frame)" if params.get("inputs.exo_frame") else f" (header.frame_id of {plan.exo_topic})")))
    if head_source == "tf":
        head = str(params.get("inputs.head_frame") or "head").lstrip("/")
        frames.append(("head TF", head, "inputs.head_frame (inputs.head_source 'tf'; without a head TF, "
                                        "-p inputs.head_source:=exo estimates the head from the exo image)"))
    tf_conns = [c for c in reader.connections if c.topic in ("/tf", "/tf_static") and c.msgtype == TF_TYPE]
    parents: dict[str, tuple[str, str]] = {}
    if frames and tf_conns:
        parents = _read(in_bag, "/tf and /tf_static",
                        lambda: _tf_parents(reader, tf_conns, [f for _, f, _ in frames], world))
    if exo_frame and params.get("inputs.exo_pose_source") == "parameters":   # the node adds world -> this frame
        fixed = str(params.get("inputs.exo_pose_frame") or exo_frame).lstrip("/")
        parents[fixed] = (world, "inputs.exo_pose_source 'parameters'")
    unresolved = [(what, frame) for what, frame, _ in frames if frame not in parents]
    if unresolved and not tf_conns:
        plan.problems.append(
            "no TF: the bag has no /tf or /tf_static (tf2_msgs/msg/TFMessage); the node needs "
            + " and ".join(f"{world} -> '{frame}' ({what})" for what, frame in unresolved)
            + ("; -p inputs.head_source:=exo estimates the head from the exo image" if head_source == "tf" else "")
            + ("; inputs.exo_pose_source 'parameters' gives a fixed exo camera's pose" if "exo camera TF" in
               dict(unresolved) else ""))
    for what, frame, why in frames:
        if frame not in parents:
            if not tf_conns:
                plan.inputs.append((what, f"MISSING transform to '{frame}' (no TF in the bag)"))
                continue
            children = sorted(parents)
            plan.problems.append(
                f"no {what}: /tf and /tf_static have no transform whose child is '{frame}', {why}; the bag's "
                f"TF child frames: {', '.join(children) if children else 'none'}")
            plan.inputs.append((what, f"MISSING transform to '{frame}'"))
        elif _tf_root(parents, frame) != _tf_root(parents, world):
            plan.problems.append(
                f"{what}: the transform to '{frame}' does not connect to inputs.world_frame '{world}' (its tree's "
                f"root is '{_tf_root(parents, frame)}')")
            plan.inputs.append((what, f"NOT CONNECTED '{frame}' (root '{_tf_root(parents, frame)}')"))
        else:
            parent, topic = parents[frame]
            plan.inputs.append((what, f"{parent} -> {frame} on {topic}"))
    return plan


def _open_bag(in_bag: Path, typestore):
    from rosbags.highlevel import AnyReader
    if not Path(in_bag).exists():
        raise ReplayInputError(f"input bag {in_bag} does not exist")
    try:
        reader = AnyReader([Path(in_bag)], default_typestore=typestore)
        reader.open()
    except Exception as e:  # noqa: BLE001 - rosbags raises several types for broken bags
        raise ReplayInputError(f"cannot open {in_bag} as a rosbag2 bag (sqlite3 or MCAP): "
                               f"{type(e).__name__}: {e}".replace("\n", " ")) from e
    return reader


def make_plan(in_bag: Path, typestore=None, **kwargs) -> ReplayPlan:
    """plan_replay on a bag opened (and closed) here; see plan_replay for the arguments."""
    reader = _open_bag(in_bag, typestore or typestore_with_egox_msgs())
    try:
        return plan_replay(reader, in_bag, **kwargs)
    finally:
        reader.close()


def replay(in_bag: Path, out_dir: Path, params_file: str | None = None, overrides: list[str] | None = None,
           exo_topic: str | None = None, gt_topic: str = "/ego/ground_truth/image_raw",
           overwrite: bool = False, attach: bool = False, stall_timeout_s: float = 300.0, sheet_frames: int = 6,
           progress_bar: bool = True, domain_id: int | None = None, remaps: list[str] | None = None,
           preset: str | None = None, gt_info_topic: str | None = None) -> ReplayResult:
    """Run the whole replay; see the module docstring. Raises ReplayInputError (nothing started: bad arguments,
    output path, or a bag without what the node needs) or ReplayError with a clear message on failure."""
    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from rclpy.signals import SignalHandlerOptions
    from tqdm import tqdm

    in_bag = Path(in_bag)
    if not in_bag.exists():
        raise ReplayInputError(f"input bag {in_bag} does not exist")
    out_dir = Path(out_dir)
    out_bag = out_dir / "bag"
    replaced = check_output(in_bag, out_dir, overwrite)
    typestore = typestore_with_egox_msgs()
    reader = _open_bag(in_bag, typestore)
    try:
        plan = plan_replay(reader, in_bag, params_file, overrides, remaps, preset, exo_topic, gt_topic,
                           gt_info_topic)
        if plan.problems:   # the node would wait sync.timeout_s per frame and publish nothing: say why, up front
            raise ReplayInputError("\n".join(plan.problems))
        _print_warnings(plan.warnings)
        prepare_output(out_dir, replaced)
    except ReplayInputError:
        reader.close()
        raise
    exo_topic = plan.exo_topic
    total_images = plan.topics[exo_topic][1]

    node_proc = stopper = context = node = executor = recorder = spinner = None
    node_log = out_dir / "node.log"
    playing = False

    def alive():
        if not playing:   # until the first frame: the node we talk to must be the only egox node in the domain
            _refuse_other_egox_nodes(node, 1)
        if node_proc is not None and node_proc.poll() is not None:
            tail = node_log.read_text()[-3000:] if node_log.exists() else ""
            return f"the egox node exited with code {node_proc.returncode}; its log ({node_log}):\n{tail}"
        return None

    saved_env = {k: os.environ.get(k) for k in DDS_ENV_KEYS}    # restored below: callers keep their own domain
    try:
        # A private domain (random unless --domain-id) that no other egox node uses: a random one that is taken is
        # swapped for another, a given one is refused. --attach uses the environment's domain and its node.
        for _ in range(1 if attach or domain_id is not None else 5):
            if not attach:
                apply_isolated_env(domain_id)
            context = rclpy.Context()  # own context: callers (tests, tools) may already use the default one
            rclpy.init(context=context, signal_handler_options=SignalHandlerOptions.NO)
            node = rclpy.create_node("egox_replay", context=context)
            if attach or not _other_egox_nodes(node, DOMAIN_CHECK_S):
                break
            if domain_id is not None:
                _refuse_other_egox_nodes(node, 0)
            node.destroy_node()
            rclpy.try_shutdown(context=context)
            node = None
        if node is None:
            raise ReplayInputError("every random ROS_DOMAIN_ID tried had an egox node running; pass --domain-id")
        ros_domain_id = int(os.environ.get("ROS_DOMAIN_ID", "0"))
        if not attach:
            node_proc = _start_node(plan, node_log)
            stopper = functools.partial(_stop_node, node_proc, 3.0)
            atexit.register(stopper)   # the replay ending any other way; the kernel's SIGTERM if it is killed
        executor = SingleThreadedExecutor(context=context)
        executor.add_node(node)
        player = _Player(node, reader, exo_topic)
        recorder = _Recorder(node, out_bag, typestore,
                             ego_frame=str(plan.param("outputs.ego_frame") or "ego_camera_optical"),
                             start_ns=reader.start_time)
        spinner = BackgroundSpin(executor, name="egox-replay-spin")
        started = time.monotonic()
        endpoints = [("pub", player.publishers[t], t) for t in (exo_topic, plan.camera_info_topic)
                     if t in player.publishers]
        endpoints += [("sub", s, t) for s, t in zip(recorder.subscriptions, OUTPUT_TOPICS) if t == "/ego/clip_metadata"]
        _wait_for_matches(node, endpoints, 60.0, alive)
        with player.progress_changed:
            player.progress_changed.wait_for(lambda: player.progress is not None, timeout=30.0)
        if player.progress is None:
            raise ReplayError("the node's /egox/progress never arrived; is the node an egox node?")
        alive()
        playing = True
        bar = tqdm(total=total_images, unit="frame", desc="replay", disable=not progress_bar)
        images_sent, truncated = player.play(((c.topic, t, raw) for c, t, raw in reader.messages()),
                                             stall_timeout_s, alive, on_image=lambda: bar.update(1))
        if truncated is not None:
            node.get_logger().error(f"input bag ended early after {images_sent} exo images: {truncated}")
        bar.close()
        # End of stream only once the node holds everything played: a flush overtaking the last TF or depth message
        # (another topic, another writer) would drop the last frame as end_of_stream.
        if not player.wait_delivered(30.0):
            node.get_logger().warning("the node did not acknowledge every message within 30 s; flushing anyway")
        player.flush_pub.publish(_empty())
        _wait(player.progress_changed,
              lambda: _images_taken(player.progress) >= images_sent and player.progress.frames_waiting == 0
              and player.progress.frames_queued == 0,
              "the node to finish every frame", stall_timeout_s, alive, lambda: player.progress)
        deadline = time.monotonic() + 30.0
        images_seen = images_sent - player.progress.frames_lost  # lost images never reached the node
        # Every output of every published frame: each topic has its own DDS reader, so the ClipMetadata (published
        # last) can be recorded before a mask or prior of the same frames.
        # The demonstrator's outputs likewise: as many as the node says it published.
        def short() -> list[str]:
            p = player.progress
            expected = {t: p.frames_published for t in PER_FRAME_TOPICS}
            expected.update({"/egox/person_mask": p.person_masks_published,
                             "/egox/head_pose": p.head_poses_published})
            return [f"{t} ({recorder.counts[t]} of {n})" for t, n in expected.items() if recorder.counts[t] < n]

        missing = short()
        while recorder.frames_accounted() < images_seen or missing:
            if time.monotonic() > deadline:
                raise ReplayError(f"recorded outputs account for {recorder.frames_accounted()} of {images_seen} "
                                  f"frames after the node finished" + (f"; fewer messages than the node published "
                                                                       f"on {', '.join(missing)}" if missing else ""))
            time.sleep(0.05)
            missing = short()
        progress = player.progress
    finally:  # whatever failed above, the node we started must not outlive the replay
        if recorder is not None:
            recorder.close()
        if spinner is not None:
            spinner.stop()
        elif executor is not None:
            executor.shutdown()
        if node is not None:
            node.destroy_node()
        if context is not None:
            rclpy.try_shutdown(context=context)
        reader.close()
        if node_proc is not None:
            _stop_node(node_proc)
            atexit.unregister(stopper)
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
    wall_s = time.monotonic() - started
    from egox_ros.ros.bag_check import read_back_problem
    problem = read_back_problem(out_bag, recorder.counts)
    if problem is not None:
        raise ReplayError(problem)

    metrics = report(in_bag, out_bag, out_dir, exo_topic=exo_topic, gt_topic=gt_topic,
                     gt_info_topic=plan.gt_info_topic, typestore=typestore, sheet_frames=sheet_frames,
                     world_frame=str(plan.param("inputs.world_frame") or "world"),
                     head_frame=str(plan.param("inputs.head_frame") or "head"),
                     torch_threads=int(plan.param("runtime.torch_threads")), progress_bar=progress_bar)
    metrics["run"] = {"input_bag": str(in_bag), "ros_domain_id": ros_domain_id, "images_sent": images_sent, "wall_time_s": round(wall_s, 3),
                      "frames_per_second": round(images_sent / wall_s, 3) if wall_s > 0 else None,
                      "frames_received_by_node": int(progress.frames_received),
                      "frames_published": int(progress.frames_published),
                      "frames_dropped": int(progress.frames_dropped),
                      "frames_lost_before_node": int(progress.frames_lost),
                      "input_truncated": truncated, "skipped_topics": player.skipped,
                      "recorded_messages": dict(recorder.counts), "exo_topic": exo_topic,
                      "remaps": dict(plan.remaps), "parameters_set_by_replay": list(plan.replay_params)}
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2))
    check_report(metrics, exo_topic, metrics_path)
    return ReplayResult(images_sent, out_bag, metrics_path, out_dir / "contact_sheet.png", metrics)


def report(in_bag: Path, out_bag: Path, out_dir: Path, **kwargs) -> dict:
    """egox_ros.ros.replay_report.write_report; an input bag that cannot be read again (a damaged chunk after the
    frames played) is a ReplayError naming it, the outputs written so far stay."""
    from egox_ros.ros.replay_report import write_report
    try:
        return write_report(in_bag, out_bag, out_dir, **kwargs)
    except Exception as e:  # noqa: BLE001 - rosbags and its decompressors raise many types for damaged bags
        raise ReplayError(f"the report could not read {in_bag} again ({type(e).__name__}: {e}); the outputs "
                          f"written so far are in {out_bag}".replace("\n", " ")) from e


def check_report(metrics: dict, exo_topic: str, metrics_path: Path) -> None:
    """Never a silent zero: raise ReplayError (one line) when the report matched fewer exo frames to outputs than
    the node says it published."""
    published, matched = metrics["run"]["frames_published"], metrics["summary"]["frames_published"]
    if matched < published:
        raise ReplayError(f"the node published {published} frames but the report found outputs for only {matched} "
                          f"of the exo images on {exo_topic} (matched by header stamp); see {metrics_path}")


def _images_taken(progress) -> int:
    """Exo images the node has taken or knows it lost (its input queue overflowed)."""
    return progress.frames_received + progress.frames_lost


def _empty():
    from std_msgs.msg import Empty
    return Empty()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("in_bag", type=Path, help="rosbag2 bag (directory or .mcap/.db3 file)")
    parser.add_argument("-o", "--out", type=Path,
                        help="output directory: bag/, contact_sheet.png, metrics.json, node.log; it must be new or "
                             "empty unless --overwrite, and outside the input bag (required unless --dry-run)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an earlier replay's files in a non-empty output directory (only bag/, "
                             "contact_sheet.png, metrics.json, node.log; nothing else, never the input)")
    parser.add_argument("--params-file", help="node parameter YAML (default: the package's config/egox.yaml); an "
                                              f"'{REPLAY_SECTION}: ros__parameters: {{preset: ..., remap: [...]}}' "
                                              "section in it sets the replay's preset and remaps")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="override a node parameter, e.g. -p prior.point_radius_px:=2")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="read the node's input FROM from the bag topic TO, e.g. "
                             "exo/image_raw:=/camera/color/image_raw (repeatable; applied to the node as -r; inputs: "
                             + ", ".join(NODE_INPUTS) + ")")
    parser.add_argument("--preset", choices=sorted(PRESETS),
                        help="remaps for a driver's topics, with their compressed / compressedDepth variants "
                             "(--remap wins): " + "; ".join(f"{k} = {v}" for k, v in PRESET_HELP.items()))
    parser.add_argument("--exo-topic", metavar="TOPIC",
                        help="the bag's exo image topic (same as --remap exo/image_raw:=TOPIC)")
    parser.add_argument("--gt-topic", default="/ego/ground_truth/image_raw",
                        help="ground-truth ego image topic in the input bag (metrics when present)")
    parser.add_argument("--gt-info-topic", metavar="TOPIC",
                        help="camera info of the ground-truth images (default: camera_info beside --gt-topic, e.g. "
                             "/ego/ground_truth/camera_info)")
    parser.add_argument("--dry-run", action="store_true",
                        help="check the bag and print the plan (inputs found, node parameters, remaps, outputs); "
                             "start nothing, write nothing")
    parser.add_argument("--attach", action="store_true",
                        help="use an already running egox node (same ROS_DOMAIN_ID) instead of starting one; its "
                             "remaps are its own (--remap/--preset only choose the bag topics played and checked)")
    parser.add_argument("--stall-timeout", type=float, default=300.0,
                        help="give up when the node makes no progress for this long [s]")
    parser.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID for the replay (default: random 1..100)")


def run(args: argparse.Namespace) -> int:
    """`egox replay`: exit 0 done, 1 failed, 2 bad input, 128 + N stopped by signal N (the node stopped too)."""
    handlers = {s: signal.signal(s, _raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return _run(args)
    except ReplayInterrupted as e:
        print(f"egox replay: stopped by {e}; the node it started is stopped too", file=sys.stderr)
        return 128 + e.signum
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


def dry_run(in_bag: Path, out_dir: Path | None = None, overwrite: bool = False, **plan_args) -> ReplayPlan:
    """Check the output path (when given) and the bag, as a replay would, and return the plan; starts and writes
    nothing. The plan's problems are left for the caller to report."""
    if out_dir is not None:
        check_output(Path(in_bag), Path(out_dir), overwrite)
    return make_plan(Path(in_bag), **plan_args)


def _print_warnings(lines: list[str]) -> None:
    """Warnings the node would only write to its log (unknown parameters), on the terminal."""
    for line in lines:
        print(f"egox replay: warning: {line}", file=sys.stderr)


def _print_errors(text: str) -> None:
    for line in text.splitlines():
        print(f"egox replay: error: {line}", file=sys.stderr)


def _run(args: argparse.Namespace) -> int:
    plan_args = dict(params_file=args.params_file, overrides=args.param, remaps=args.remap, preset=args.preset,
                     exo_topic=args.exo_topic, gt_topic=args.gt_topic, gt_info_topic=args.gt_info_topic)
    try:
        if args.dry_run:
            plan = dry_run(args.in_bag, args.out, args.overwrite, **plan_args)
            print("egox replay --dry-run: nothing started, nothing written")
            print(plan.describe(args.out))
            _print_warnings(plan.warnings)
            if plan.problems:
                _print_errors("\n".join(plan.problems))
                return 2
            return 0
        if args.out is None:
            raise ReplayInputError("-o/--out OUT_DIR is required (except with --dry-run)")
        result = replay(args.in_bag, args.out, overwrite=args.overwrite, attach=args.attach,
                        stall_timeout_s=args.stall_timeout, domain_id=args.domain_id, **plan_args)
    except ReplayInputError as e:   # bad input: nothing was started, one line per problem
        _print_errors(str(e))
        return 2
    except ReplayError as e:
        print(f"egox replay: error: {e}", file=sys.stderr)
        return 1
    run_info = result.metrics["run"]
    summary = result.metrics.get("summary", {})
    print(f"replayed {result.images_sent} exo frames in {run_info['wall_time_s']:.1f} s "
          f"({run_info['frames_per_second']} frames/s): {run_info['frames_published']} published, "
          f"{run_info['frames_dropped']} dropped"
          + (f", {run_info['frames_lost_before_node']} lost before the node" if run_info["frames_lost_before_node"]
             else ""))
    if summary.get("head_position_error_m_median") is not None:
        print(f"estimated head vs the bag's head TF: position error median "
              f"{summary['head_position_error_m_median']:.3f} m (90th percentile "
              f"{summary['head_position_error_m_p90']:.3f} m), forward direction error median "
              f"{summary['head_forward_error_deg_median']:.1f} deg over {summary['head_frames_evaluated']} frames")
    if summary.get("mean_masked_psnr_db") is not None:
        print(f"ego vs ground truth: mean coverage {summary['mean_coverage']:.3f}, "
              f"mean masked PSNR {summary['mean_masked_psnr_db']:.2f} dB")
    print(f"bag: {result.out_bag}\ncontact sheet: {result.contact_sheet_path}\nmetrics: {result.metrics_path}")
    print(outcome_line(result.metrics))
    return 0


def outcome_line(metrics: dict) -> str:
    """The last line of a replay: every frame published, or how many were not and why (never only a count in the
    middle of the output)."""
    run, summary = metrics["run"], metrics.get("summary", {})
    images = run["images_sent"]
    missing = images - run["frames_published"]
    if not missing and not run.get("input_truncated"):
        return f"done: all {images} exo frames published"
    reasons = dict(summary.get("frames_dropped_by_reason") or {})
    if run.get("frames_lost_before_node"):
        reasons["lost_before_node"] = run["frames_lost_before_node"]
    text = f"WARNING: {missing} of {images} exo frames not published"
    text += f" ({', '.join(f'{k} {v}' for k, v in sorted(reasons.items(), key=lambda kv: -kv[1]))})" if reasons else ""
    if run.get("input_truncated"):
        text += f"; the input bag ended early ({run['input_truncated']})"
    return text + "; see metrics.json"
