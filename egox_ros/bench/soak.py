"""`egox bench soak`: the egox node (a real subprocess) fed live at camera rate for a long time.

A publisher in this process sends the bundled sample's real TUM frames (sample/tum_fr1_rpy: 320x240 pixel-doubled to
640x480 rgb8 by default, camera info scaled to match, 16UC1 depth, /tf world -> exo and world -> head) as a live
camera would: at --rate Hz, every frame with a fresh wall-clock stamp (the 50 frames play forwards and backwards, so
the poses never jump and the stamps only increase). The sample's exo camera is hand-held; with --still-exo every
frame carries the first frame's world -> exo transform, as a camera on a tripod would (the images are the same, so
the work per frame is a still camera's; the head still moves). After --warmup seconds, --busy N competing
busy-looping processes start; --duration seconds later sending stops and the node gets --drain-timeout seconds to
finish what it holds.

It reports the frame accounting (sent = published + dropped + lost + still in the node + unaccounted, from the node's
latched ~/progress and the ClipMetadata on ego/clip_metadata), the output rate, the latency from publishing an exo
image to receiving the ego image with its stamp (p50/p90/p99/max), the node's RSS every second and its least-squares
slope in MB/min after the warm-up, the node's CPU use, and the machine and versions. All DDS traffic stays on this
machine (shared memory only, localhost discovery, a private domain id).

`--write-docs` keeps one row per case label (--label; default from --busy, -p and --node-env) in its section of
docs/benchmarks.md; each case's numbers are stored in that section as a JSON comment, so cases run one by one end up
in one table.

Long on purpose (about 800 lines): one benchmark end to end (sample stream, peer, node process, accounting,
docs table); nothing in it is used elsewhere.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from egox_ros.ros.stamps import stamp_to_ns

SECTION = "soak"
REPO = Path(__file__).resolve().parents[2]
SAMPLE_BAG = REPO / "sample" / "tum_fr1_rpy"
SAMPLE_PARAMS = REPO / "sample" / "egox_sample.yaml"
NODE_NAME = "egox"
EXO_TOPICS = {"image": "/exo/image_raw", "info": "/exo/camera_info", "depth": "/exo/depth/image_raw", "tf": "/tf"}
CASE_MARK = "<!-- soak-case "


class SoakError(RuntimeError):
    """The soak could not run; the message says why."""


# ------------------------------------------------------------------------------------------------ input frames
@dataclass
class SampleFrame:
    rgb: bytes          # H x W x 3 rgb8
    depth: bytes        # H x W uint16 little-endian millimetres
    transforms: list    # (parent, child, (x, y, z), (qx, qy, qz, qw))


@dataclass
class SampleStream:
    width: int
    height: int
    frame_id: str
    info: dict          # CameraInfo fields (d, k, p, distortion_model)
    frames: list[SampleFrame]


def load_sample(bag: Path = SAMPLE_BAG, upscale: int = 2, crop: tuple[int, int] | None = None,
                still_exo: bool = False) -> SampleStream:
    """The sample bag's exo frames, each pixel repeated upscale x upscale times (intrinsics scaled to match), then
    cropped about the centre to crop = (width, height) if given (e.g. 1280x720 from x4's 1280x960); still_exo:
    every frame's transform to the exo frame is the first frame's."""
    from rosbags.highlevel import AnyReader
    if upscale < 1:
        raise SoakError(f"--upscale must be at least 1, got {upscale}")
    x0 = y0 = 0
    by_stamp: dict[int, dict] = {}
    info = None
    with AnyReader([Path(bag)]) as reader:
        for conn, _t, raw in reader.messages():
            if conn.topic not in EXO_TOPICS.values():
                continue
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == EXO_TOPICS["tf"]:
                st = msg.transforms[0].header.stamp
                entry = by_stamp.setdefault(stamp_to_ns(st), {})
                entry["tf"] = [(t.header.frame_id, t.child_frame_id,
                                (t.transform.translation.x, t.transform.translation.y, t.transform.translation.z),
                                (t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
                                 t.transform.rotation.w)) for t in msg.transforms]
                continue
            entry = by_stamp.setdefault(stamp_to_ns(msg.header.stamp), {})
            if conn.topic == EXO_TOPICS["info"]:
                info = msg
            elif conn.topic == EXO_TOPICS["depth"]:
                if msg.encoding != "16UC1":
                    raise SoakError(f"sample depth is {msg.encoding}, expected 16UC1")
                d = np.frombuffer(bytes(msg.data), "<u2").reshape(msg.height, msg.step // 2)[:, :msg.width]
                d, x0, y0 = _upscaled(d, upscale, crop)
                entry["depth"] = np.ascontiguousarray(d).astype("<u2").tobytes()
            else:
                if msg.encoding != "rgb8":
                    raise SoakError(f"sample image is {msg.encoding}, expected rgb8")
                a = np.frombuffer(bytes(msg.data), np.uint8).reshape(msg.height, msg.step)[:, :msg.width * 3]
                a = a.reshape(msg.height, msg.width, 3)
                a, x0, y0 = _upscaled(a, upscale, crop)
                entry["rgb"] = np.ascontiguousarray(a).tobytes()
                entry["frame_id"] = msg.header.frame_id
    frames = [SampleFrame(e["rgb"], e["depth"], e["tf"]) for _, e in sorted(by_stamp.items())
              if {"rgb", "depth", "tf"} <= set(e)]
    if info is None or len(frames) < 2:
        raise SoakError(f"{bag}: expected exo images, depth, camera info and /tf; got {len(frames)} complete frames")
    s = float(upscale)
    k = np.asarray(info.k, float).copy()
    k[0], k[4] = k[0] * s, k[4] * s
    k[2], k[5] = (k[2] + 0.5) * s - 0.5 - x0, (k[5] + 0.5) * s - 0.5 - y0
    p = np.asarray(info.p, float).copy()
    p[0], p[5] = p[0] * s, p[5] * s
    p[2], p[6] = (p[2] + 0.5) * s - 0.5 - x0, (p[6] + 0.5) * s - 0.5 - y0
    frame_id = next(e["frame_id"] for _, e in sorted(by_stamp.items()) if "frame_id" in e)
    if still_exo:
        first = {t[1]: t for t in frames[0].transforms}
        if frame_id not in first:
            raise SoakError(f"{bag}: no /tf to the exo frame {frame_id!r} in the first frame")
        frames = [SampleFrame(f.rgb, f.depth, [first[frame_id] if t[1] == frame_id else t for t in f.transforms])
                  for f in frames]
    width, height = crop or (info.width * upscale, info.height * upscale)
    return SampleStream(width=width, height=height, frame_id=frame_id,
                        info={"d": [float(v) for v in info.d], "k": k.tolist(), "p": p.tolist(),
                              "distortion_model": info.distortion_model},
                        frames=frames)


def _upscaled(a: np.ndarray, upscale: int, crop: tuple[int, int] | None) -> tuple[np.ndarray, int, int]:
    """Each pixel of an (H, W[, C]) image repeated upscale x upscale times, then the central crop (width, height):
    the image and the crop's left / top offset [px]."""
    a = a.repeat(upscale, 0).repeat(upscale, 1)
    if crop is None:
        return a, 0, 0
    w, h = crop
    if not (0 < w <= a.shape[1] and 0 < h <= a.shape[0]):
        raise SoakError(f"--crop {w}x{h} does not fit the {a.shape[1]}x{a.shape[0]} frames of --upscale {upscale}")
    x0, y0 = (a.shape[1] - w) // 2, (a.shape[0] - h) // 2
    return a[y0:y0 + h, x0:x0 + w], x0, y0


def ping_pong(k: int, n: int) -> int:
    """Index of the k-th frame sent when n frames play forwards, then backwards, and so on (no pose jumps)."""
    if n < 2:
        return 0
    period = 2 * (n - 1)
    i = k % period
    return i if i < n else period - i


# ------------------------------------------------------------------------------------------------ statistics
def percentiles_ms(values_s: list[float]) -> dict:
    if not values_s:
        return {"count": 0, "p50": None, "p90": None, "p99": None, "max": None, "mean": None}
    a = np.asarray(values_s) * 1e3
    return {"count": int(a.size), "p50": round(float(np.percentile(a, 50)), 2),
            "p90": round(float(np.percentile(a, 90)), 2), "p99": round(float(np.percentile(a, 99)), 2),
            "max": round(float(a.max()), 2), "mean": round(float(a.mean()), 2)}


def slope_mb_per_min(samples: list[tuple[float, float]]) -> float | None:
    """Least-squares slope of (seconds, MB) samples, in MB per minute."""
    if len(samples) < 3:
        return None
    t = np.asarray([s[0] for s in samples])
    y = np.asarray([s[1] for s in samples])
    if np.ptp(t) <= 0:
        return None
    return round(float(np.polyfit(t, y, 1)[0] * 60.0), 3)


def _proc_rss_mb(pid: int) -> float | None:
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        return None
    return None


def _proc_cpu_s(pid: int) -> float | None:
    try:
        fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")   # utime + stime
    except (OSError, IndexError, ValueError):
        return None


def _machine_cpu_s() -> float:
    """CPU seconds the whole machine has spent busy (all cores; /proc/stat)."""
    try:
        fields = [int(v) for v in open("/proc/stat").readline().split()[1:]]
    except (OSError, ValueError):
        return 0.0
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)          # idle + iowait
    busy = sum(fields[:8]) - idle                                        # guest time is already in user
    return busy / os.sysconf("SC_CLK_TCK")


class RssSampler(threading.Thread):
    """VmRSS (MB) and CPU seconds of a process once a second and once more when stopped (the end of the run,
    whatever its phase against the second), as (seconds since start, MB, cpu_s)."""

    def __init__(self, pid: int, t0: float, period_s: float = 1.0):
        super().__init__(daemon=True)
        self.pid, self.t0, self.period_s = pid, t0, period_s
        self.samples: list[tuple[float, float, float | None]] = []
        self._halt = threading.Event()

    def run(self) -> None:
        next_t = time.monotonic()
        while True:
            self._sample()
            next_t += self.period_s
            if self._halt.wait(max(0.0, next_t - time.monotonic())):
                break
        self._sample()

    def _sample(self) -> None:
        rss = _proc_rss_mb(self.pid)
        if rss is not None:
            self.samples.append((round(time.monotonic() - self.t0, 3), round(rss, 2), _proc_cpu_s(self.pid)))

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def latest_mb(self) -> float | None:
        return self.samples[-1][1] if self.samples else None


# ------------------------------------------------------------------------------------------------ processes
def busy_process(limit_s: float) -> subprocess.Popen:
    """One competing process: a pure-Python loop on one core that ends itself after limit_s whatever happens."""
    code = f"import time\nend = time.monotonic() + {float(limit_s)}\nx = 0\nwhile time.monotonic() < end:\n    x += 1\n"
    return subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.DEVNULL)


def _kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()
    proc.wait(timeout=10)


def _end_process(proc: subprocess.Popen, group: bool, grace_s: float = 10.0) -> int | None:
    """SIGINT, then SIGTERM, then SIGKILL (to its process group when it has its own); returns its exit code."""
    if proc.poll() is not None:
        return proc.returncode
    for sig, wait_s in ((signal.SIGINT, grace_s), (signal.SIGTERM, 5.0), (signal.SIGKILL, 5.0)):
        try:
            if group:
                os.killpg(proc.pid, sig)
            else:
                proc.send_signal(sig)
        except ProcessLookupError:
            break
        try:
            proc.wait(timeout=wait_s)
            break
        except subprocess.TimeoutExpired:
            continue
    return proc.poll()


def start_node(params_file: str | None, params: list[str], node_env: dict[str, str], env: dict[str, str],
               log_path: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "egox_ros.ros.node", "--ros-args", "-r", f"__node:={NODE_NAME}"]
    if params_file:
        cmd += ["--params-file", str(params_file)]
    for p in params:
        cmd += ["-p", p]
    log = open(log_path, "w")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env={**env, **node_env}, start_new_session=True)
    finally:
        log.close()   # the child holds its own copy


# ------------------------------------------------------------------------------------------------ ROS side
def _raw_header_stamp_ns(raw: bytes) -> int:
    """header.stamp of a serialised message that starts with a std_msgs/Header (CDR: 4-byte encapsulation first)."""
    endian = "<" if raw[1] & 1 else ">"
    sec, nanosec = struct.unpack_from(endian + "iI", raw, 4)
    return sec * 1_000_000_000 + nanosec


class _Peer:
    """Publishers of the exo inputs and subscribers of the node's outputs, spinning on a background thread."""

    def __init__(self, context, stream: SampleStream):
        import rclpy
        from egox_msgs.msg import ClipMetadata, NodeProgress
        from geometry_msgs.msg import TransformStamped
        from rclpy.executors import SingleThreadedExecutor
        from rclpy.qos import HistoryPolicy, QoSProfile, ReliabilityPolicy
        from sensor_msgs.msg import CameraInfo, Image
        from tf2_msgs.msg import TFMessage

        from egox_ros.ros.dds import BackgroundSpin
        from egox_ros.ros.node import PROGRESS_QOS
        self.node = rclpy.create_node("egox_bench_soak", context=context)
        self.executor = SingleThreadedExecutor(context=context)
        self.executor.add_node(self.node)
        # Reliable publishers match the node's best-effort inputs (best effort then) and its reliable /tf.
        pub_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=10, reliability=ReliabilityPolicy.RELIABLE)
        tf_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        sub_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1000, reliability=ReliabilityPolicy.RELIABLE)
        self.pub_image = self.node.create_publisher(Image, EXO_TOPICS["image"], pub_qos)
        self.pub_info = self.node.create_publisher(CameraInfo, EXO_TOPICS["info"], pub_qos)
        self.pub_depth = self.node.create_publisher(Image, EXO_TOPICS["depth"], pub_qos)
        self.pub_tf = self.node.create_publisher(TFMessage, EXO_TOPICS["tf"], tf_qos)
        self.lock = threading.Lock()
        self.progress = None
        self.ego_received: dict[int, float] = {}      # stamp -> monotonic receive time
        self.ego_count = 0
        self.meta_published = 0                        # frames in STATUS_OK clips
        self.meta_dropped: dict[str, int] = {}         # reason code -> frames (STATUS_DROPPED / FAILED)
        self.meta_ok = ClipMetadata.STATUS_OK
        self.sub_ego = self.node.create_subscription(Image, "/ego/image_raw", self._on_ego, sub_qos, raw=True)
        self.sub_meta = self.node.create_subscription(ClipMetadata, "/ego/clip_metadata", self._on_meta, sub_qos)
        self.sub_progress = self.node.create_subscription(NodeProgress, f"/{NODE_NAME}/progress", self._on_progress,
                                                          PROGRESS_QOS)
        # Messages built once; every send only sets the stamps.
        self.msgs = []
        for f in stream.frames:
            img = Image(height=stream.height, width=stream.width, encoding="rgb8", is_bigendian=0,
                        step=stream.width * 3)
            img.header.frame_id = stream.frame_id
            img.data = f.rgb
            depth = Image(height=stream.height, width=stream.width, encoding="16UC1", is_bigendian=0,
                          step=stream.width * 2)
            depth.header.frame_id = stream.frame_id
            depth.data = f.depth
            tf = TFMessage()
            for parent, child, xyz, q in f.transforms:
                t = TransformStamped()
                t.header.frame_id, t.child_frame_id = parent, child
                t.transform.translation.x, t.transform.translation.y, t.transform.translation.z = xyz
                (t.transform.rotation.x, t.transform.rotation.y, t.transform.rotation.z,
                 t.transform.rotation.w) = q
                tf.transforms.append(t)
            self.msgs.append((img, depth, tf))
        self.info = CameraInfo(height=stream.height, width=stream.width,
                               distortion_model=stream.info["distortion_model"], d=stream.info["d"],
                               k=stream.info["k"], p=stream.info["p"], r=[1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0])
        self.info.header.frame_id = stream.frame_id
        self._spin = BackgroundSpin(self.executor, name="egox-soak-spin")

    def _on_ego(self, raw: bytes) -> None:
        now = time.monotonic()
        stamp = _raw_header_stamp_ns(raw)
        with self.lock:
            self.ego_received.setdefault(stamp, now)
            self.ego_count += 1

    def _on_meta(self, msg) -> None:
        with self.lock:
            if msg.status == self.meta_ok:
                self.meta_published += len(msg.source_stamps)
            else:
                code = msg.reason.split(":", 1)[0] or "unknown"
                self.meta_dropped[code] = self.meta_dropped.get(code, 0) + len(msg.source_stamps)

    def _on_progress(self, msg) -> None:
        with self.lock:
            self.progress = msg

    def endpoints_missing(self) -> list[str]:
        missing = [t for pub, t in ((self.pub_image, EXO_TOPICS["image"]), (self.pub_info, EXO_TOPICS["info"]),
                                    (self.pub_depth, EXO_TOPICS["depth"]), (self.pub_tf, EXO_TOPICS["tf"]))
                   if pub.get_subscription_count() == 0]
        missing += [t for sub, t in ((self.sub_ego, "/ego/image_raw"), (self.sub_meta, "/ego/clip_metadata"),
                                     (self.sub_progress, f"/{NODE_NAME}/progress"))
                    if sub.get_publisher_count() == 0]
        with self.lock:
            if self.progress is None:
                missing.append(f"/{NODE_NAME}/progress (first message)")
        return missing

    def send(self, k: int, stamp_ns: int) -> float:
        """Publish frame k's TF, camera info, depth and image (the image last); returns the image's publish time."""
        from builtin_interfaces.msg import Time
        img, depth, tf = self.msgs[ping_pong(k, len(self.msgs))]
        stamp = Time(sec=stamp_ns // 1_000_000_000, nanosec=stamp_ns % 1_000_000_000)
        for t in tf.transforms:
            t.header.stamp = stamp
        self.info.header.stamp = depth.header.stamp = img.header.stamp = stamp
        self.pub_tf.publish(tf)
        self.pub_info.publish(self.info)
        self.pub_depth.publish(depth)
        t_pub = time.monotonic()
        self.pub_image.publish(img)
        return t_pub

    def snapshot(self) -> dict:
        with self.lock:
            p = self.progress
            return {"received": int(p.frames_received) if p else 0, "published": int(p.frames_published) if p else 0,
                    "dropped": int(p.frames_dropped) if p else 0, "lost": int(p.frames_lost) if p else 0,
                    "waiting": int(p.frames_waiting) if p else 0, "queued": int(p.frames_queued) if p else 0,
                    "ego_received": self.ego_count, "meta_published": self.meta_published,
                    "meta_dropped": dict(self.meta_dropped)}

    def close(self) -> None:
        self._spin.stop()
        self.node.destroy_node()


# ------------------------------------------------------------------------------------------------ the run
def default_label(busy: int, params: list[str], node_env: dict[str, str], still_exo: bool = False) -> str:
    parts = (["still exo"] if still_exo else []) + ([f"busy {busy}"] if busy else [])
    parts += list(params) + [f"{k}={v}" for k, v in node_env.items()]
    return ", ".join(parts) or "default"


def soak(duration_s: float = 60.0, rate_hz: float = 30.0, warmup_s: float = 5.0, busy: int = 0,
         params: list[str] | None = None, node_env: dict[str, str] | None = None,
         params_file: str | None = str(SAMPLE_PARAMS), upscale: int = 2, crop: tuple[int, int] | None = None,
         drain_timeout_s: float = 20.0, still_exo: bool = False,
         domain_id: int | None = None, label: str | None = None, report_every_s: float = 10.0,
         log=None, node_log: Path | None = None) -> dict:
    """Run one soak case and return its result dict (see the module docstring). log: callable(str) for progress."""
    import rclpy

    from egox_ros.bench.common import machine_info
    from egox_ros.ros.dds import apply_isolated_env
    params = list(params or [])
    node_env = dict(node_env or {})
    log = log or (lambda _s: None)
    if duration_s <= 0 or rate_hz <= 0 or warmup_s < 0 or busy < 0:
        raise SoakError("need --duration > 0, --rate > 0, --warmup >= 0 and --busy >= 0")
    stream = load_sample(upscale=upscale, crop=crop, still_exo=still_exo)
    machine = machine_info()
    machine["versions"]["rclpy"] = _dist_version("ros-rclpy") or _dist_version("rclpy")
    load_before = [round(x, 2) for x in os.getloadavg()]

    env = apply_isolated_env(domain_id)    # this process's own context joins the same private domain
    keep_log = node_log is not None
    log_path = Path(node_log) if keep_log else Path(tempfile.mkstemp(prefix="egox_soak_node_", suffix=".log")[1])
    busy_procs: list[subprocess.Popen] = []
    node_proc = peer = sampler = None
    context = rclpy.Context()
    # Ctrl-C and SIGTERM end the stream early (KeyboardInterrupt), even where SIGINT was ignored (a background job).
    old_handlers = {}
    if threading.current_thread() is threading.main_thread():
        for sig, handler in ((signal.SIGINT, signal.default_int_handler), (signal.SIGTERM, _raise_interrupt)):
            old_handlers[sig] = signal.signal(sig, handler)
    interrupted = False
    failed = True
    try:
        node_proc = start_node(params_file, params, node_env, env, log_path)
        rclpy.init(context=context)
        peer = _Peer(context, stream)
        t_start_wait = time.monotonic()
        while missing := peer.endpoints_missing():
            if node_proc.poll() is not None:
                raise SoakError(f"the node exited with code {node_proc.returncode} before matching; log tail:\n"
                                f"{_tail(log_path)}")
            if time.monotonic() - t_start_wait > 120:
                raise SoakError(f"the node did not match within 120 s: missing {missing}; log tail:\n"
                                f"{_tail(log_path)}")
            time.sleep(0.05)
        match_s = time.monotonic() - t_start_wait
        log(f"node matched after {match_s:.1f} s; warm-up {warmup_s:g} s, then {duration_s:g} s at {rate_hz:g} Hz"
            + (f" with {busy} busy process(es)" if busy else ""))

        t0 = time.monotonic()
        sampler = RssSampler(node_proc.pid, t0)
        sampler.start()
        period = 1.0 / rate_hz
        t_warm_end, t_end = t0 + warmup_s, t0 + warmup_s + duration_s
        sent_times: dict[int, float] = {}    # stamp -> publish time
        window_stamps: list[int] = []
        sent = late = 0
        last_stamp = 0
        warm_snapshot = cpu_start = other_cores = None
        t_next = t0
        next_report = t0 + report_every_s
        try:
            while True:
                now = time.monotonic()
                if now >= t_end:
                    break
                if warm_snapshot is None and now >= t_warm_end:
                    warm_snapshot = dict(peer.snapshot(), sent=sent, t=now)
                    cpu_start = (_machine_cpu_s(), (_proc_cpu_s(node_proc.pid) or 0.0) + time.process_time())
                    busy_procs = [busy_process(duration_s + drain_timeout_s + 60) for _ in range(busy)]
                if node_proc.poll() is not None:
                    raise SoakError(f"the node exited with code {node_proc.returncode} during the soak; log tail:\n"
                                    f"{_tail(log_path)}")
                if now >= next_report:
                    _report(log, now - t0, sent, peer.snapshot(), sampler.latest_mb(), sent_times, peer)
                    next_report += report_every_s
                if now < t_next:
                    time.sleep(min(t_next - now, max(0.0, t_end - now)))
                    continue
                stamp = max(last_stamp + 1, time.time_ns())
                last_stamp = stamp
                sent_times[stamp] = peer.send(sent, stamp)
                if warm_snapshot is not None:
                    window_stamps.append(stamp)
                sent += 1
                t_next += period
                if time.monotonic() - t_next > period:     # a frame late by a whole period: a camera does not catch up
                    late += 1
                    t_next = time.monotonic()
        except KeyboardInterrupt:
            interrupted = True
            log("interrupted: stopping the stream, collecting what arrived")
        t_stop = time.monotonic()
        if warm_snapshot is None:
            warm_snapshot = dict(peer.snapshot(), sent=sent, t=t_stop)
        end_snapshot = dict(peer.snapshot(), sent=sent, t=t_stop)
        if cpu_start is not None:   # CPU the rest of the machine used meanwhile: anything but node, bench, busy
            own_s = ((_proc_cpu_s(node_proc.pid) or 0.0) + time.process_time()
                     + sum(_proc_cpu_s(p.pid) or 0.0 for p in busy_procs) - cpu_start[1])
            machine_s = _machine_cpu_s() - cpu_start[0]
            other_cores = round(max(0.0, machine_s - own_s) / max(1e-9, t_stop - warm_snapshot["t"]), 2)
        for proc in busy_procs:
            _kill(proc)

        # Drain: the node takes (or knows it lost) every image and finishes every frame it holds.
        drain_deadline = time.monotonic() + (2.0 if interrupted else drain_timeout_s)
        try:
            while time.monotonic() < drain_deadline and node_proc.poll() is None:
                s = peer.snapshot()
                if (s["received"] + s["lost"] >= sent and s["waiting"] + s["queued"] == 0
                        and s["ego_received"] >= s["published"]
                        and s["meta_published"] + sum(s["meta_dropped"].values()) >= s["published"] + s["dropped"]):
                    break
                time.sleep(0.05)
        except KeyboardInterrupt:
            interrupted = True
        drain_s = time.monotonic() - t_stop
        final = peer.snapshot()
        sampler.stop()
        failed = False
    finally:   # every step on its own: one failing must not leave the node or a busy process behind
        for proc in busy_procs:
            _quietly(_kill, proc)
        node_code = _quietly(_end_process, node_proc, group=True) if node_proc is not None else None
        if sampler is not None:
            _quietly(sampler.stop)
        if peer is not None:
            _quietly(peer.close)
        _quietly(rclpy.try_shutdown, context=context)
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        if failed and node_proc is not None:
            print(f"egox bench soak: node log kept at {log_path}", file=sys.stderr)
        elif not keep_log:
            log_path.unlink(missing_ok=True)

    # ---------------------------------------------------------------- results
    window_s = max(1e-9, end_snapshot["t"] - warm_snapshot["t"])
    latencies = [peer.ego_received[s] - sent_times[s] for s in window_stamps if s in peer.ego_received]
    latencies_all = [t - sent_times[s] for s, t in peer.ego_received.items() if s in sent_times]
    rss_window = [(t, mb) for t, mb, _ in sampler.samples if t >= warm_snapshot["t"] - t0]
    cpu = [(t, c) for t, _, c in sampler.samples if c is not None and t >= warm_snapshot["t"] - t0]
    node_cpu = (round(100.0 * (cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0]), 1)
                if len(cpu) >= 2 and cpu[-1][0] > cpu[0][0] else None)
    ego_in_window = sum(1 for s in window_stamps if s in peer.ego_received)
    holding = final["waiting"] + final["queued"]
    unaccounted = sent - final["received"] - final["lost"]
    dropped_by_reason = dict(sorted(final["meta_dropped"].items()))
    return {
        "benchmark": SECTION, "label": label or default_label(busy, params, node_env, still_exo),
        "interrupted": interrupted,
        "machine": machine, "load_average_before": load_before,
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "config": {"duration_s": duration_s, "warmup_s": warmup_s, "rate_hz": rate_hz, "busy_processes": busy,
                   "still_exo": still_exo,
                   "params_file": _rel(params_file), "node_params": params, "node_env": node_env,
                   "input": f"sample/tum_fr1_rpy exo frames ({len(stream.frames)}, played forwards and backwards) "
                            f"pixel-doubled x{upscale}{' and cropped' if crop else ''} to "
                            f"{stream.width}x{stream.height} rgb8 + 16UC1 depth + "
                            "camera info + /tf world->exo, world->head; wall-clock stamps",
                   "image_size": [stream.width, stream.height], "drain_timeout_s": drain_timeout_s},
        "node": {"match_s": round(match_s, 2), "exit_code": node_code}, "code": _code_version(),
        "frames": {"sent": sent, "received_by_node": final["received"], "published": final["published"],
                   "dropped": final["dropped"], "dropped_by_reason": dropped_by_reason, "lost": final["lost"],
                   "still_in_node": holding, "waiting": final["waiting"], "queued": final["queued"],
                   "unaccounted": unaccounted,
                   "ego_images_received": final["ego_received"], "metadata_published_frames": final["meta_published"],
                   "metadata_dropped_frames": sum(dropped_by_reason.values()),
                   "late_sends": late, "drain_s": round(drain_s, 2)},
        "window": {"seconds": round(window_s, 2), "sent": end_snapshot["sent"] - warm_snapshot["sent"],
                   "send_rate_hz": round((end_snapshot["sent"] - warm_snapshot["sent"]) / window_s, 2),
                   "published": ego_in_window,
                   "output_rate_hz": round(ego_in_window / window_s, 2),
                   "dropped": end_snapshot["dropped"] - warm_snapshot["dropped"],
                   "lost": end_snapshot["lost"] - warm_snapshot["lost"]},
        "latency_ms": percentiles_ms(latencies),
        "latency_ms_whole_run": percentiles_ms(latencies_all),
        "rss_mb": {"samples": [[t, mb] for t, mb, _ in sampler.samples],
                   "after_warmup_start": rss_window[0][1] if rss_window else None,
                   "end": rss_window[-1][1] if rss_window else None,
                   "max": max((mb for _, mb, _ in sampler.samples), default=None),
                   "slope_mb_per_min": slope_mb_per_min(rss_window)},
        "node_cpu_percent": node_cpu,
        "other_processes_cpu_cores": other_cores,
    }


def _raise_interrupt(_signum, _frame):
    raise KeyboardInterrupt


def _quietly(fn, *args, **kwargs):
    """fn(...) during cleanup: an error is reported, not raised (the other cleanup steps still run)."""
    try:
        return fn(*args, **kwargs)
    except (Exception, KeyboardInterrupt) as e:  # noqa: BLE001 - a second Ctrl-C must not skip the rest
        print(f"egox bench soak: cleanup step {getattr(fn, '__name__', fn)} failed: {type(e).__name__}: {e}",
              file=sys.stderr)
        return None


def _report(log, elapsed: float, sent: int, s: dict, rss: float | None, sent_times: dict, peer: _Peer) -> None:
    with peer.lock:
        recent = [t - sent_times[st] for st, t in list(peer.ego_received.items())[-300:] if st in sent_times]
    lat = percentiles_ms(recent)
    log(f"{elapsed:6.1f} s: sent {sent}, published {s['published']}, dropped {s['dropped']}, lost {s['lost']}, "
        f"in node {s['waiting'] + s['queued']}, latency p50 {lat['p50']} ms, node RSS {rss} MB")


def _tail(path: Path, n: int = 3000) -> str:
    try:
        return path.read_text()[-n:]
    except OSError:
        return ""


def _rel(path: str | None) -> str | None:
    if not path:
        return None
    try:
        return str(Path(path).resolve().relative_to(REPO))
    except ValueError:
        return str(path)


def _code_version() -> dict:
    """The checkout's commit and whether egox_ros/ had uncommitted changes (what the node ran)."""
    def git(*args):
        try:
            return subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""
    commit = git("rev-parse", "--short", "HEAD")
    return {"commit": commit or None, "egox_ros_modified": bool(git("status", "--porcelain", "--", "egox_ros"))
            if commit else None}


def _dist_version(name: str) -> str | None:
    from importlib import metadata
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


# ------------------------------------------------------------------------------------------------ docs
def _case_for_docs(result: dict) -> dict:
    """The result without the per-second RSS samples (kept short in the docs)."""
    r = json.loads(json.dumps(result))
    r["rss_mb"].pop("samples", None)
    return r


def read_doc_cases(text: str) -> list[dict]:
    """Cases stored in the soak section of docs/benchmarks.md (one `<!-- soak-case {json} -->` line each)."""
    begin, end = f"<!-- bench:{SECTION} begin -->", f"<!-- bench:{SECTION} end -->"
    if begin not in text or end not in text:
        return []
    section = text.split(begin, 1)[1].split(end, 1)[0]
    cases = []
    for line in section.splitlines():
        if line.startswith(CASE_MARK) and line.rstrip().endswith("-->"):
            try:
                cases.append(json.loads(line[len(CASE_MARK):].rstrip()[:-3]))
            except json.JSONDecodeError:
                continue
    return cases


def merge_cases(existing: list[dict], result: dict) -> list[dict]:
    """existing with result's case replacing one of the same label (else appended)."""
    new = _case_for_docs(result)
    out = [c for c in existing if c.get("label") != new["label"]]
    index = next((i for i, c in enumerate(existing) if c.get("label") == new["label"]), len(out))
    out.insert(min(index, len(out)), new)
    return out


def _code_text(code: dict | None) -> str:
    if not code or not code.get("commit"):
        return ""
    return f", {code['commit']}" + (" + local changes" if code.get("egox_ros_modified") else "")


def _fmt(v, nd: int = 1) -> str:
    if v is None:
        return "-"
    return f"{v:.{nd}f}" if isinstance(v, float) else str(v)


def markdown(cases: list[dict] | dict) -> str:
    if isinstance(cases, dict):
        cases = [_case_for_docs(cases)]
    m = cases[-1]["machine"]
    v = m["versions"]
    lines = [f"Machine (latest case): {m['cpu']}, {m['cpu_cores']} cores, {m['memory_gb']} GB, GPU: "
             f"{m['gpu'] or 'none'}; python {v.get('python')}, torch {v.get('torch')}, rclpy {v.get('rclpy')}, "
             f"numpy {v.get('numpy')}.", "",
             "The egox node (prior generator, `" + (cases[-1]["config"]["params_file"] or "defaults") + "`) as a "
             "subprocess, fed live by `egox bench soak` (latest case): " + cases[-1]["config"]["input"] + "; each row "
             "gives its image size after the rate. Latency: publishing "
             "an exo image to receiving its ego image (after the warm-up). Left: still in the node after the drain "
             "+ sent but neither received nor seen lost. RSS slope: least squares over the node's VmRSS, sampled "
             "every second after the warm-up. Busy: pure-Python loops, one core each, from the end of the warm-up. "
             "Load: 1-minute load average before the case / CPU cores the machine's other processes used during the "
             "measured window (all CPU time but the node's, this benchmark's and the busy processes').", "",
             "| case | run (UTC), commit | load | duration @ rate, image | busy | node params / env | sent | published | dropped "
             "(reasons) | lost | left | output Hz | latency p50 / p90 / p99 / max ms | node RSS MB (start -> end), "
             "slope MB/min | node CPU % |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for c in cases:
        cfg, f, w, lat, rss = c["config"], c["frames"], c["window"], c["latency_ms"], c["rss_mb"]
        settings = ", ".join([f"`-p {p}`" for p in cfg["node_params"]] +
                             [f"`{k}={val}`" for k, val in cfg["node_env"].items()]) or "-"
        reasons = ", ".join(f"{k} {n}" for k, n in f["dropped_by_reason"].items())
        lines.append(
            f"| {c['label']}{' (interrupted)' if c.get('interrupted') else ''} | {c['machine']['date']}"
            f"{_code_text(c.get('code'))} | "
            f"{c['load_average_before'][0]} / {_fmt(c.get('other_processes_cpu_cores'), 2)} | {cfg['duration_s']:g} s @ {cfg['rate_hz']:g} Hz "
            f"{'x'.join(str(n) for n in cfg.get('image_size', ()))} "
            f"(+{cfg['warmup_s']:g} s warm-up) | {cfg['busy_processes']} | {settings} | {f['sent']} | "
            f"{f['published']} | {f['dropped']}{f' ({reasons})' if reasons else ''} | {f['lost']} | "
            f"{f['still_in_node'] + f['unaccounted']} | {_fmt(w['output_rate_hz'], 2)} | "
            f"{_fmt(lat['p50'])} / {_fmt(lat['p90'])} / {_fmt(lat['p99'])} / {_fmt(lat['max'])} | "
            f"{_fmt(rss['after_warmup_start'], 0)} -> {_fmt(rss['end'], 0)}, {_fmt(rss['slope_mb_per_min'], 2)} | "
            f"{_fmt(c['node_cpu_percent'])} |")
    lines.append("")
    lines += [CASE_MARK + json.dumps(c, separators=(",", ":")) + " -->" for c in cases]
    return "\n".join(lines) + "\n"


def write_docs(result: dict, path: Path | None = None) -> Path:
    from egox_ros.bench.cli import DOCS, update_docs_section
    path = Path(path or DOCS)
    existing = read_doc_cases(path.read_text()) if path.exists() else []
    update_docs_section(SECTION, markdown(merge_cases(existing, result)), path)
    return path


# ------------------------------------------------------------------------------------------------ command line
def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments besides the common --json/--quick/--device/--write-docs of `egox bench`."""
    p.add_argument("--duration", type=float, default=60.0, help="seconds measured after the warm-up (default 60)")
    p.add_argument("--rate", type=float, default=30.0, help="camera rate [Hz] (default 30)")
    p.add_argument("--warmup", type=float, default=5.0, help="seconds sent before measuring and before the busy "
                                                             "processes start (default 5)")
    p.add_argument("--busy", type=int, default=0, help="competing busy-looping processes after the warm-up")
    p.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                   help="node parameter, repeatable, e.g. -p runtime.torch_threads:=1")
    p.add_argument("--node-env", action="append", default=[], metavar="NAME=VALUE",
                   help="environment variable of the node process, repeatable, e.g. OMP_NUM_THREADS=1")
    p.add_argument("--params-file", default=str(SAMPLE_PARAMS),
                   help="node parameter YAML (default: sample/egox_sample.yaml; '' for the node's defaults)")
    p.add_argument("--upscale", type=int, default=2, help="pixel repeat of the 320x240 sample frames (default 2: "
                                                          "640x480)")
    p.add_argument("--crop", metavar="WxH", help="central crop of the upscaled frames, e.g. 1280x720 with --upscale 4")
    p.add_argument("--still-exo", action="store_true",
                   help="every frame carries the first frame's world -> exo transform (a camera on a tripod)")
    p.add_argument("--drain-timeout", type=float, default=20.0,
                   help="seconds the node gets after the stream to finish what it holds (default 20)")
    p.add_argument("--label",
                   help="case name in the docs table (default: from --still-exo, --busy, -p and --node-env)")
    p.add_argument("--domain-id", type=int, help="ROS_DOMAIN_ID (default: random 1..100)")
    p.add_argument("--node-log", type=Path, help="keep the node's log in this file")


def run_cli(args: argparse.Namespace) -> int:
    node_env = {}
    for item in args.node_env:
        if "=" not in item:
            print(f"egox bench soak: error: --node-env wants NAME=VALUE, got {item!r}", file=sys.stderr)
            return 2
        key, value = item.split("=", 1)
        node_env[key] = value
    crop = None
    if args.crop:
        try:
            crop = tuple(int(v) for v in args.crop.lower().split("x"))
        except ValueError:
            crop = ()
        if len(crop) != 2:
            print(f"egox bench soak: error: --crop wants WIDTHxHEIGHT, got {args.crop!r}", file=sys.stderr)
            return 2
    params = list(args.param)
    if args.device != "cpu":
        params.append(f"generator.device:={args.device}")
    duration, warmup = (5.0, 2.0) if args.quick else (args.duration, args.warmup)
    log = (lambda _s: None) if args.json else (lambda s: print(f"[soak] {s}", file=sys.stderr, flush=True))
    try:
        result = soak(duration_s=duration, rate_hz=args.rate, warmup_s=warmup, busy=args.busy, params=params,
                      node_env=node_env, params_file=args.params_file or None, upscale=args.upscale, crop=crop,
                      drain_timeout_s=args.drain_timeout, still_exo=args.still_exo, domain_id=args.domain_id,
                      label=args.label, log=log, node_log=args.node_log)
    except SoakError as e:
        print(f"egox bench soak: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("egox bench soak: interrupted", file=sys.stderr)
        return 130
    print(json.dumps(result, indent=None if args.json else 1))
    if not args.json:
        f, w, lat, rss = result["frames"], result["window"], result["latency_ms"], result["rss_mb"]
        print(f"[soak] {result['label']}: sent {f['sent']}, published {f['published']}, dropped {f['dropped']} "
              f"{f['dropped_by_reason']}, lost {f['lost']}, left {f['still_in_node'] + f['unaccounted']}; output "
              f"{w['output_rate_hz']} Hz; latency p50/p90/p99/max {lat['p50']}/{lat['p90']}/{lat['p99']}/"
              f"{lat['max']} ms; node RSS {rss['after_warmup_start']} -> {rss['end']} MB, "
              f"{rss['slope_mb_per_min']} MB/min; node CPU {result['node_cpu_percent']} %", file=sys.stderr)
    if args.write_docs:
        print(f"updated {write_docs(result)}", file=sys.stderr)
    return 0
