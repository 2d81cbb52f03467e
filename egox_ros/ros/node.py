"""The egox node: exo camera + head pose in, ego view out. A thin ROS layer over egox_ros.core.

Flow: every exo image becomes a pending frame that waits (bounded in count and wall time) for its camera info, depth
and TF; once complete it enters the rolling window and the generator queue; a worker thread renders priors, runs the
generator and publishes. Every image that arrives is either published or dropped with a reason, and each drop is
published as a ClipMetadata with STATUS_DROPPED, counted in /diagnostics and in ~/progress.
"""
from __future__ import annotations

import itertools
import threading
import time
from collections import Counter, deque
from dataclasses import dataclass, field

import numpy as np
import rclpy
import transforms3d
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from egox_msgs.msg import ClipMetadata, NodeProgress
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Empty
from tf2_msgs.msg import TFMessage

from egox_ros.core.camera import PinholeCamera
from egox_ros.core.demonstrator.detector import AsyncPersonDetector, make_person_detector, resolve_person_source
from egox_ros.core.demonstrator.head_geometry import measure_head
from egox_ros.core.demonstrator.head_tracker import HeadEstimate, HeadTracker
from egox_ros.core.demonstrator.landmarks import PersonObservation
from egox_ros.core.depth.estimator import make_depth_estimator
from egox_ros.core.frames import ExoFrame, FrameWindow
from egox_ros.core.egox.weights import WeightsError
from egox_ros.core.generators import EgoGenerator, PriorGenerator, make_generator
from egox_ros.core.image_codec import ImageDecodeError
from egox_ros.core.pipeline import ClipOutput, EgoPipeline, PriorRenderer, ego_camera_from_config
from egox_ros.core.tf_buffer import ExtrapolationError, TfBufferCore, TfError
from egox_ros.core.transforms import RigidTransform
from egox_ros.ros import conversions as conv
from egox_ros.ros.config import (DiagnosticsConfig, InputsConfig, OutputsConfig, QosConfig, SyncConfig,
                                 parameter_sections)
from egox_ros.ros.params import declare_config
from egox_ros.ros.pointcloud2 import cloud_to_pointcloud2


@dataclass
class PendingFrame:
    """An exo image waiting for its camera info, depth and TF."""
    stamp_ns: int
    rgb: np.ndarray
    frame_id: str
    arrived_s: float                  # monotonic
    waiting_for: tuple[str, str] = ("inputs_missing", "its inputs")  # (drop code, what) if it times out


class SequenceGaps:
    """Messages that never reached a subscription callback, from gaps in each publisher's sequence numbers.

    A KEEP_LAST subscription overwrites its oldest message when its history (qos.input_depth) is full, and a
    BEST_EFFORT transport may lose samples; neither tells the subscriber, but the publisher numbers every message.
    """

    def __init__(self):
        self._last_seq: dict[bytes, int] = {}   # publisher gid -> newest publication sequence number seen

    def lost_before(self, info) -> int:
        """Messages from this message's publisher lost since its previous one (0 for its first, or when the RMW
        does not report sequence numbers). `info`: the rclpy MessageInfo passed to the callback."""
        seq = info.get("publication_sequence_number")
        gid = info.get("publisher_gid")
        if not seq or not gid:
            return 0
        key = bytes(gid["data"])
        last = self._last_seq.get(key)
        self._last_seq[key] = max(seq, last or 0)
        return max(0, seq - last - 1) if last is not None else 0


class InputDelays:
    """Worst delays of each input topic since the node started, from the rclpy MessageInfo of each message [ms]:
    transport (publish -> arrival in the subscription's queue) and callback (publish -> our callback running).
    A large callback delay with a small transport delay means the node was busy, not the network."""

    def __init__(self):
        self._lock = threading.Lock()
        self._worst: dict[str, tuple[float, float]] = {}

    def observe(self, topic: str, info) -> None:
        source, received = info.get("source_timestamp"), info.get("received_timestamp")
        if not source or not received:
            return
        transport_ms, callback_ms = (received - source) / 1e6, (time.time_ns() - source) / 1e6
        with self._lock:
            worst = self._worst.get(topic, (0.0, 0.0))
            self._worst[topic] = (max(worst[0], transport_ms), max(worst[1], callback_ms))

    def report(self) -> dict[str, str]:
        """Diagnostic values 'input_delay_max_ms.<topic>': 'transport / callback'."""
        with self._lock:
            worst = dict(self._worst)
        return {f"input_delay_max_ms.{t}": f"{a:.1f} / {b:.1f}" for t, (a, b) in sorted(worst.items())}


@dataclass
class FrameAccounting:
    """Counts of the frame life cycle; invariant: received == published + dropped + waiting + queued.
    `lost` images never reached the node (see SequenceGaps)."""
    received: int = 0
    published: int = 0
    lost: int = 0
    dropped: Counter = field(default_factory=Counter)   # reason code -> frames
    last_received_ns: int = 0
    received_times: deque = field(default_factory=lambda: deque(maxlen=1000))    # monotonic arrival times
    published_times: deque = field(default_factory=lambda: deque(maxlen=1000))


PROGRESS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)  # latched: late joiners get the current state


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT)


class EgoxNode(Node):
    """ROS 2 node `egox`; see the module docstring and README for topics and parameters."""

    def __init__(self, **kwargs):
        super().__init__("egox", **kwargs)
        # What destroy_node() releases exists from here on: a constructor that fails below (bad parameters, missing
        # models) leaves a node that rclpy's shutdown still destroys.
        self._worker: threading.Thread | None = None
        self.depth_estimator = self.person_detector = None
        configs = {name: declare_config(self, name, cls) for name, cls in parameter_sections().items()}
        self.inputs: InputsConfig = configs["inputs"]
        self.outputs: OutputsConfig = configs["outputs"]
        self.qos: QosConfig = configs["qos"]
        self.sync: SyncConfig = configs["sync"]
        self.diag_config: DiagnosticsConfig = configs["diagnostics"]
        ego_config, window_config = configs["ego_camera"], configs["window"]
        prior_config, fusion_config, generator_config = configs["prior"], configs["fusion"], configs["generator"]

        self.depth_config = configs["depth"]
        # Depth models load here (a missing or incompatible folder stops the node with a message saying why). A
        # 'topic' source without the topic (inputs.use_depth false) has no depth and no fallback.
        self.person_config, self.head_config = configs["person"], configs["head"]
        self.person_config.source = resolve_person_source(self.person_config, self.inputs.head_source,
                                                          generator_config.name)
        if self.inputs.head_source == "exo" and self.person_config.source != "mediapipe":
            raise ValueError(f"inputs.head_source 'exo' needs person.source 'mediapipe' (the head keypoints come "
                             f"from it); person.source is {self.person_config.source!r}")
        if self.depth_config.source != "topic" or self.inputs.use_depth:
            self.depth_estimator = make_depth_estimator(self.depth_config, configs["depth_alignment"],
                                                        on_result=self._on_depth_estimate)
        self._last_depth_msg_s: float | None = None     # the depth topic's silence: images arriving without depth
        self._first_image_s: float | None = None
        self._last_image_s: float | None = None
        self._depth_lag_ms: list[float] = []            # lags of model depth used since the last diagnostics
        self._flush_after_workers = False

        # The demonstrator: person masks (a detector on its own worker, or a mask topic) and, with head_source
        # 'exo', the head pose estimated from the detector's head keypoints.
        detector = make_person_detector(self.person_config)
        self.person_detector = None if detector is None else AsyncPersonDetector(
            detector, capacity=self.sync.max_waiting, on_result=self._on_person)
        self.head_tracker = HeadTracker(self.head_config) if self.inputs.head_source == "exo" else None
        self._person_masks: dict[int, np.ndarray] = {}   # stamp_ns -> mask from exo/person_mask
        self._last_head: HeadEstimate | None = None
        self._head_counts: Counter = Counter()            # measured / held / not visible
        self.ego_camera: PinholeCamera = ego_camera_from_config(ego_config)
        self.generator_problem = ""       # why the configured generator is not in use (diagnostics)
        try:
            self.generator: EgoGenerator = make_generator(generator_config, configs["egox"])
            self.generator.check_ego_camera(self.ego_camera)
            self.generator_state = "loading"
        except (WeightsError, ValueError) as e:
            self.generator = self._fall_back(generator_config.name, e)
        self.pipeline = EgoPipeline(PriorRenderer(prior_config, fusion_config, self.ego_camera,
                                                  generator_config.device, generator=self.generator.name),
                                    self.generator)
        self.fusion_frames = min(fusion_config.window_frames, window_config.max_frames)
        self.window = FrameWindow(window_config)
        self.tf = TfBufferCore(cache_time_s=self.sync.tf_cache_s)
        rpy = self.outputs.head_to_ego_rpy_rad
        self.head_T_ego = RigidTransform(
            np.array(self.outputs.head_to_ego_xyz_m, float),
            np.roll(transforms3d.euler.euler2quat(*rpy, axes="sxyz"), -1))  # wxyz -> xyzw
        self.queue_capacity = max(self.sync.queue_capacity, self.generator.clip_frames)

        # State shared by the callbacks (one executor thread) and the generator worker thread.
        self._lock = threading.Condition()
        self._camera_info: CameraInfo | None = None
        self._camera: PinholeCamera | None = None
        self._depth: dict[int, np.ndarray] = {}          # stamp_ns -> depth_m
        self._pending: dict[int, PendingFrame] = {}       # stamp_ns -> frame waiting for inputs
        self._queue: deque[tuple[ExoFrame, list[ExoFrame]]] = deque()   # frame, its fusion context
        self._in_generator = 0
        self._flush_requested = False
        self._last_accepted_ns = -1
        self._stats = FrameAccounting()
        self._notes: Counter = Counter()                  # non-frame events for diagnostics (bad depth, ...)
        self._image_gaps, self._depth_gaps, self._tf_gaps = SequenceGaps(), SequenceGaps(), SequenceGaps()
        self._delays = InputDelays()
        self._clip_seq = itertools.count()
        self._running = True

        in_qos = _qos(self.qos.input_reliability, self.qos.input_depth)
        out_qos = _qos(self.qos.output_reliability, self.qos.output_depth)
        self.create_subscription(Image, "exo/image_raw", self._on_image, in_qos)
        self.create_subscription(CameraInfo, "exo/camera_info", self._on_camera_info, in_qos)
        if self._depth_topic:
            self.create_subscription(Image, "exo/depth/image_raw", self._on_depth, in_qos)
        if self.inputs.head_source == "pose_topic":
            self.create_subscription(PoseStamped, "head/pose", self._on_head_pose, in_qos)
        if self.person_config.source == "topic":
            self.create_subscription(Image, "exo/person_mask", self._on_person_mask, in_qos)
        tf_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        tf_static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(TFMessage, "/tf", lambda m, info: self._on_tf(m, info, False), tf_qos)
        self.create_subscription(TFMessage, "/tf_static", lambda m, info: self._on_tf(m, info, True), tf_static_qos)
        self.create_subscription(Empty, "~/flush", self._on_flush, 10)

        self.pub_ego = self.create_publisher(Image, "ego/image_raw", out_qos)
        self.pub_ego_info = self.create_publisher(CameraInfo, "ego/camera_info", out_qos)
        self.pub_prior = self.create_publisher(Image, "ego/prior/image_raw", out_qos)
        self.pub_mask = self.create_publisher(Image, "ego/prior/mask", out_qos)
        self.pub_cloud = self.create_publisher(PointCloud2, "ego/prior/cloud", out_qos) \
            if self.outputs.publish_cloud else None
        self.pub_meta = self.create_publisher(ClipMetadata, "ego/clip_metadata",
                                              _qos("reliable", max(100, self.qos.output_depth)))
        self.pub_progress = self.create_publisher(NodeProgress, "~/progress", PROGRESS_QOS)
        self.pub_person_mask = self.create_publisher(Image, "~/person_mask", out_qos) \
            if self.person_detector is not None else None
        self.pub_head_pose = self.create_publisher(PoseWithCovarianceStamped, "~/head_pose", out_qos) \
            if self.head_tracker is not None else None
        self.pub_tf = self.create_publisher(TFMessage, "/tf", tf_qos)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)

        steady = Clock(clock_type=ClockType.STEADY_TIME)  # timeouts run in wall time, also under use_sim_time
        self.create_timer(min(0.1, self.sync.timeout_s / 2), self._expire_pending, clock=steady)
        self.create_timer(self.diag_config.period_s, self._publish_diagnostics, clock=steady)
        self._worker = threading.Thread(target=self._work, name="egox-generator", daemon=True)
        self._worker.start()
        self.get_logger().info(
            f"egox ready: generator '{self.generator.name}' ({self.generator.clip_frames} frame(s) per clip), "
            f"ego {self.ego_camera.width}x{self.ego_camera.height}, head from {self.inputs.head_source} "
            f"'{self.inputs.head_frame}', depth {self._depth_description()}, person masks "
            f"{self.person_config.source}")
        self._publish_progress()

    # ------------------------------------------------------------------ inputs
    def _on_camera_info(self, msg: CameraInfo) -> None:
        try:
            camera = conv.camera_info_to_camera(msg)
        except ValueError as e:
            self._note("bad_camera_info", f"camera info rejected: {e}")
            return
        with self._lock:
            self._camera_info, self._camera = msg, camera
        self._resolve_pending()

    @property
    def _depth_topic(self) -> bool:
        return self.inputs.use_depth and self.depth_config.source == "topic"

    def _depth_from_model(self) -> bool:
        """Whether frames now take their depth from the model: source model/video, or a depth topic that has been
        silent for depth.topic_timeout_s while images kept arriving."""
        if self.depth_estimator is None:
            return False
        if self.depth_config.source != "topic":
            return True
        if self._last_image_s is None:
            return False
        since = self._last_depth_msg_s if self._last_depth_msg_s is not None else self._first_image_s
        return self._last_image_s - since > self.depth_config.topic_timeout_s

    def _depth_description(self) -> str:
        c = self.depth_config
        if c.source == "topic":
            topic = "topic exo/depth/image_raw" if self.inputs.use_depth else "off"
            return topic + (f" (falls back to the model {c.model_path})" if self.depth_estimator else "")
        return f"{c.source} ({c.model_path}{', ' + c.video_model_path if c.source == 'video' else ''})"

    def _on_depth_estimate(self, error: str | None) -> None:
        """The depth worker finished an image (its thread): frames waiting for depth may complete; a failure is
        counted and logged; a flush that waited for the depth models goes ahead once they are idle."""
        if error is not None:
            self._note("depth_model_failed", f"depth model failed: {error}")
        self._resolve_pending()
        self._flush_if_workers_idle()

    def _workers_busy(self) -> bool:
        """Whether the depth models or the person detector still work on (or have queued) an image."""
        return any(w is not None and w.busy_or_pending() for w in (self.depth_estimator, self.person_detector))

    def _flush_if_workers_idle(self) -> None:
        """Carry out a flush that waited for the depth models and the person detector, once they are idle."""
        with self._lock:
            flush = self._flush_after_workers and not self._workers_busy()
            if flush:
                self._flush_after_workers = False
        if flush:
            self._on_flush(None)

    def _on_person(self, stamp_ns: int, observation: PersonObservation, error: str | None) -> None:
        """The person detector finished an image (its thread): publish the mask, hand the image to the depth
        models with the person left out of their alignment fit, and let frames waiting for it complete."""
        if error is not None:
            self._note("person_detector_failed", f"person detector failed at {stamp_ns * 1e-9:.3f} s: {error}")
        with self._lock:
            pending = self._pending.get(stamp_ns)
        if pending is not None and self._depth_from_model():
            static = None if observation.mask is None else ~observation.mask
            self.depth_estimator.submit(stamp_ns, pending.rgb, static_mask=static)
        if self.pub_person_mask is not None and observation.mask is not None and pending is not None:
            self.pub_person_mask.publish(conv.array_to_image(observation.mask.astype(np.uint8) * 255, "mono8",
                                                             conv.ns_to_stamp(stamp_ns), pending.frame_id))
        self._resolve_pending()
        self._flush_if_workers_idle()

    def _on_person_mask(self, msg: Image) -> None:
        """A person mask from another segmenter (person.source 'topic'): mono8/8UC1, nonzero = person."""
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        try:
            mask = conv.image_to_mask(msg)
        except ImageDecodeError as e:
            self._note("bad_person_mask", f"person mask at {stamp_ns * 1e-9:.3f} s rejected: {e}")
            return
        with self._lock:
            self._person_masks[stamp_ns] = mask
            while len(self._person_masks) > 2 * self.sync.max_waiting + 8:
                del self._person_masks[min(self._person_masks)]
        self._resolve_pending()

    def _on_depth(self, msg: Image, info) -> None:
        self._delays.observe("depth", info)
        self._last_depth_msg_s = time.monotonic()
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        lost = self._depth_gaps.lost_before(info)
        if lost:
            self._note("depth_lost", f"{lost} depth image(s) lost before the node took them (the input queue "
                                     "overflowed or the transport lost them); consider raising qos.input_depth",
                       count=lost)
        self._observe_time(stamp_ns)
        try:
            depth_m = conv.image_to_depth_m(msg)
        except ImageDecodeError as e:
            self._note("bad_depth", f"depth image at {stamp_ns * 1e-9:.3f} s rejected: {e}")
            return
        if not np.isfinite(depth_m).any():
            self._note("depth_without_valid_pixels", f"depth image at {stamp_ns * 1e-9:.3f} s has no valid pixel "
                                                     "(all zero / NaN): its frame gets an empty prior")
        with self._lock:
            self._depth[stamp_ns] = depth_m
            while len(self._depth) > 2 * self.sync.max_waiting + 8:
                del self._depth[min(self._depth)]
        self._resolve_pending()

    def _on_tf(self, msg: TFMessage, info, static: bool) -> None:
        self._delays.observe("tf_static" if static else "tf", info)
        lost = self._tf_gaps.lost_before(info)
        if lost:
            self._note("tf_lost", f"{lost} TF message(s) lost before the node took them", count=lost)
        for t in msg.transforms:
            stamp_ns = conv.stamp_to_ns(t.header.stamp)
            if not static:
                self._observe_time(stamp_ns)
            try:
                self.tf.set_transform(t.header.frame_id, t.child_frame_id, stamp_ns,
                                      conv.transform_msg_to_rigid(t.transform), static=static)
            except (TfError, ValueError) as e:
                self._note("bad_tf", f"transform {t.header.frame_id} -> {t.child_frame_id} rejected: {e}")
        self._resolve_pending()

    def _on_head_pose(self, msg: PoseStamped) -> None:
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        self._observe_time(stamp_ns)
        parent = msg.header.frame_id or self.inputs.world_frame
        try:
            self.tf.set_transform(parent, self.inputs.head_frame, stamp_ns, conv.pose_msg_to_rigid(msg.pose))
        except (TfError, ValueError) as e:
            self._note("bad_head_pose", f"head pose rejected: {e}")
        self._resolve_pending()

    def _on_image(self, msg: Image, info) -> None:
        self._delays.observe("image", info)
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        now = time.monotonic()
        lost = self._image_gaps.lost_before(info)
        if lost:
            self.get_logger().warning(
                f"{lost} exo image(s) lost before the node took them (the input queue of qos.input_depth="
                f"{self.qos.input_depth} overflowed or the transport lost them); counted as frames_lost",
                throttle_duration_sec=1.0)
        with self._lock:
            self._stats.lost += lost
            self._stats.received += 1
            self._stats.received_times.append(now)
            self._stats.last_received_ns = max(self._stats.last_received_ns, stamp_ns)
        self._observe_time(stamp_ns)
        self._last_image_s = now
        if self._first_image_s is None:
            self._first_image_s = now
        try:
            rgb = conv.image_to_rgb(msg)
        except ImageDecodeError as e:
            self._drop([stamp_ns], "bad_image", str(e))
            return
        frame_id = self.inputs.exo_frame or msg.header.frame_id
        with self._lock:
            if not frame_id:
                reason = ("bad_image", "exo image has an empty header.frame_id and inputs.exo_frame is not set")
            elif stamp_ns in self._pending:
                reason = ("duplicate_stamp", f"another image with stamp {stamp_ns * 1e-9:.6f} s is already waiting")
            elif stamp_ns <= self._last_accepted_ns:
                reason = ("out_of_order_stamp", f"stamp {stamp_ns * 1e-9:.6f} s is not after the last accepted "
                                                f"frame {self._last_accepted_ns * 1e-9:.6f} s")
            else:
                reason = None
                self._pending[stamp_ns] = PendingFrame(stamp_ns, rgb, frame_id, now)
                overflow = sorted(self._pending)[:-self.sync.max_waiting] if len(self._pending) > self.sync.max_waiting else []
                for s in overflow:
                    del self._pending[s]
        if reason:
            self._drop([stamp_ns], *reason)
            return
        if self.person_detector is not None:   # accepted frames only, in stamp order; depth follows its result
            self.person_detector.submit(stamp_ns, rgb)
        elif self._depth_from_model():
            self.depth_estimator.submit(stamp_ns, rgb)
        if overflow:
            self._drop(overflow, "too_many_waiting", f"more than sync.max_waiting={self.sync.max_waiting} frames "
                                                     "waited for their inputs")
        self._resolve_pending()

    def _on_flush(self, _msg: Empty) -> None:
        """End of stream: drop frames still waiting for inputs and let the worker finish partial clips. Waits for
        the depth models and the person detector first, so frames waiting for their results still get them."""
        with self._lock:
            if self._workers_busy():
                self._flush_after_workers = True
                return
            waiting = sorted(self._pending.values(), key=lambda p: p.stamp_ns)
            self._pending.clear()
            self._flush_requested = True
            self._lock.notify_all()
        for p in waiting:
            self._drop([p.stamp_ns], "end_of_stream", f"stream ended while the frame waited for {p.waiting_for[1]}")
        self._publish_progress()

    # ------------------------------------------------------------- synchronisation
    def _observe_time(self, stamp_ns: int) -> None:
        """A stamp far behind the newest seen (a looping bag) resets TF, window and sync state."""
        if not self.tf.observe_clock(stamp_ns, int(self.sync.time_jump_back_s * 1e9)):
            return
        for worker in (self.depth_estimator, self.person_detector, self.head_tracker):
            if worker is not None:
                worker.reset()
        with self._lock:  # keep what already belongs to the new timeline (callbacks of other topics came first)
            self.window.clear()    # under the lock: the depth worker may complete frames meanwhile
            self._depth = {s: d for s, d in self._depth.items() if s <= stamp_ns}
            self._person_masks = {s: m for s, m in self._person_masks.items() if s <= stamp_ns}
            self._last_accepted_ns = -1
            stale = [s for s in self._pending if s > stamp_ns]
            for s in stale:
                del self._pending[s]
        self.get_logger().warning(f"time jumped back to {stamp_ns * 1e-9:.3f} s: TF buffer, window and sync reset")
        self._notes["time_jump_back"] += 1
        if stale:
            self._drop(stale, "time_jump_back", "time jumped back while the frame waited for inputs")

    def _resolve_pending(self) -> None:
        """Move pending frames whose inputs are all there into the window and the generator queue, oldest first."""
        while True:
            with self._lock:
                if not self._pending:
                    break
                pending = self._pending[min(self._pending)]
                outcome = self._try_complete(pending)
                if outcome is None:        # still waiting: later frames wait behind it to keep stamps in order
                    break
                del self._pending[pending.stamp_ns]
                if isinstance(outcome, ExoFrame):
                    if len(self._queue) >= self.queue_capacity:
                        outcome = ("generator_busy", f"generator queue full ({self.queue_capacity} frames)")
                    else:
                        self._last_accepted_ns = pending.stamp_ns
                        self.window.append(outcome)
                        context = self.window.newest(self.fusion_frames, up_to_ns=pending.stamp_ns)
                        self._queue.append((outcome, context))
                        self._lock.notify_all()
            if isinstance(outcome, tuple):
                self._drop([pending.stamp_ns], *outcome)
            else:
                self._publish_progress()

    def _try_complete(self, p: PendingFrame) -> ExoFrame | tuple[str, str] | None:
        """The complete frame, a (reason, detail) drop, or None to keep waiting. Called with the lock held."""
        if self._camera_info is None:
            p.waiting_for = ("camera_info_missing", "camera info on exo/camera_info")
            return None
        h, w = p.rgb.shape[:2]
        if (self._camera_info.height, self._camera_info.width) != (h, w):
            return ("camera_info_mismatch", f"image is {w}x{h} but camera info says "
                                            f"{self._camera_info.width}x{self._camera_info.height}")
        depth_m = None
        if self._depth_from_model():
            estimate = self.depth_estimator.estimate_for(p.stamp_ns, self.depth_config.max_lag_s)
            if estimate is None:
                p.waiting_for = ("depth_missing", f"a depth estimate within depth.max_lag_s = "
                                                  f"{self.depth_config.max_lag_s} s from the depth model")
                return None
            depth_m = estimate.depth_m
            if depth_m.shape != (h, w):
                return ("depth_mismatch", f"model depth is {depth_m.shape[1]}x{depth_m.shape[0]}, image is {w}x{h}")
            self._depth_lag_ms.append((p.stamp_ns - estimate.stamp_ns) * 1e-6)
        elif self._depth_topic:
            tol = int(self.sync.depth_tolerance_s * 1e9)
            near = [s for s in self._depth if abs(s - p.stamp_ns) <= tol]
            if not near:
                p.waiting_for = ("depth_missing",
                                 f"a depth image within {self.sync.depth_tolerance_s} s on exo/depth/image_raw")
                return None
            depth_m = self._depth[min(near, key=lambda s: abs(s - p.stamp_ns))]
            if depth_m.shape != (h, w):
                return ("depth_mismatch", f"depth is {depth_m.shape[1]}x{depth_m.shape[0]}, image is {w}x{h}")
        observation, person_mask = None, None
        if self.person_detector is not None:
            observation = self.person_detector.result_for(p.stamp_ns)
            if observation is None:
                p.waiting_for = ("person_missing", "the person detector's result")
                return None
            person_mask = observation.mask
        elif self.person_config.source == "topic":
            person_mask = self._person_masks.get(p.stamp_ns)
            if person_mask is None:
                p.waiting_for = ("person_mask_missing", "a mask with the image's stamp on exo/person_mask")
                return None
        if person_mask is not None and person_mask.shape != (h, w):
            return ("person_mask_mismatch", f"person mask is {person_mask.shape[1]}x{person_mask.shape[0]}, "
                                            f"image is {w}x{h}")
        try:
            world_T_exo = self.tf.lookup_transform(self.inputs.world_frame, p.frame_id, p.stamp_ns)
            if self.head_tracker is None:
                world_T_head = self.tf.lookup_transform(self.inputs.world_frame, self.inputs.head_frame, p.stamp_ns)
        except ExtrapolationError as e:
            if e.direction == "past":
                return ("tf_extrapolation_past", str(e))
            p.waiting_for = ("tf_unavailable", f"TF: {e}")
            return None
        except TfError as e:
            p.waiting_for = ("tf_unavailable", f"TF: {e}")
            return None
        if self.head_tracker is not None:
            head = self._estimate_head(p.stamp_ns, observation, depth_m, world_T_exo.as_matrix())
            if head is None:
                return ("head_not_visible", f"no head pose from the exo image at or within head.hold_s = "
                                            f"{self.head_config.hold_s} s before this frame")
            world_T_head = RigidTransform.from_matrix(head.world_T_head)
        return ExoFrame(stamp_ns=p.stamp_ns, rgb=p.rgb, depth_m=depth_m, camera=self._camera,
                        world_T_exo=world_T_exo.as_matrix(),
                        world_T_ego=(world_T_head @ self.head_T_ego).as_matrix(), exo_frame_id=p.frame_id,
                        person_mask=person_mask)

    def _estimate_head(self, stamp_ns: int, observation: PersonObservation, depth_m: np.ndarray | None,
                       world_T_exo: np.ndarray) -> HeadEstimate | None:
        """The head pose of a frame whose other inputs are complete (stamp order; lock held): measured from the
        head keypoints, filtered, held for head.hold_s when the head is not seen; published on /tf (head_frame)
        and ~/head_pose. None: no head for longer than head.hold_s."""
        measurement = None
        if observation.head is not None:
            measurement = measure_head(observation.head, self._camera, depth_m, self.head_config, observation.mask)
        estimate = self.head_tracker.update(stamp_ns, measurement, world_T_exo)
        self._head_counts[estimate.state if estimate is not None else "not_visible"] += 1
        if measurement is not None and measurement.depth_rejected:
            self._head_counts["depth_rejected"] += 1
        self._last_head = estimate
        if estimate is None:
            return None
        stamp = conv.ns_to_stamp(stamp_ns)
        world_T_head = RigidTransform.from_matrix(estimate.world_T_head)
        self.pub_tf.publish(TFMessage(transforms=[conv.rigid_to_transform_stamped(
            world_T_head, self.inputs.world_frame, self.inputs.head_frame, stamp)]))
        pose = PoseWithCovarianceStamped()
        pose.header.stamp, pose.header.frame_id = stamp, self.inputs.world_frame
        pose.pose.pose = conv.rigid_to_pose(world_T_head)
        pose.pose.covariance = [float(v) for v in np.asarray(estimate.covariance, np.float64).ravel()]
        self.pub_head_pose.publish(pose)
        return estimate

    def _expire_pending(self) -> None:
        """Drop frames that waited longer than sync.timeout_s, each with what it still lacks (and carry out a
        flush that waited for depth models which have gone idle without a result, e.g. after a reset)."""
        self._flush_if_workers_idle()
        now = time.monotonic()
        with self._lock:
            expired = sorted((p for p in self._pending.values() if now - p.arrived_s > self.sync.timeout_s),
                             key=lambda p: p.stamp_ns)
            for p in expired:
                del self._pending[p.stamp_ns]
                if self._try_complete(p) is None:  # frames behind an older one were never checked: check now
                    continue
                p.waiting_for = ("inputs_missing", "the older frames before it")  # complete, but too late
        for p in expired:
            code, what = p.waiting_for
            self._drop([p.stamp_ns], code, f"waited {self.sync.timeout_s} s for {what}")
        if expired:
            self._resolve_pending()

    # ------------------------------------------------------------------ generation
    def _fall_back(self, name: str, error: Exception) -> EgoGenerator:
        """The prior generator in place of `name`, which cannot run; the reason goes to the log and diagnostics."""
        self.generator_problem = f"generator '{name}' unavailable, publishing priors instead: {error}"
        self.generator_state = "fallback"
        self.get_logger().error(self.generator_problem)
        return PriorGenerator()

    def _prepare_generator(self) -> None:
        """Load the generator's models on this (worker) thread; the callbacks keep receiving meanwhile."""
        if self.generator_state != "loading":
            return
        started = time.monotonic()
        try:
            self.generator.prepare()
        except Exception as e:  # noqa: BLE001 - missing or broken weights must not take the node down
            with self._lock:
                self.generator = self.pipeline.generator = self._fall_back(self.generator.name,
                                                                           f"{type(e).__name__}: {e}")
            return
        self.generator_state = "ready"
        self.get_logger().info(f"generator '{self.generator.name}' ready after {time.monotonic() - started:.1f} s")

    def _work(self) -> None:
        self._prepare_generator()
        while True:
            clip_frames = self.generator.clip_frames
            with self._lock:
                self._lock.wait_for(lambda: not self._running or len(self._queue) >= clip_frames
                                    or (self._flush_requested and self._queue) or self._flush_requested)
                if not self._running:
                    return
                if len(self._queue) < clip_frames:
                    partial = [self._queue.popleft() for _ in range(len(self._queue))]
                    self._flush_requested = False
                    clip = []
                else:
                    partial = []
                    clip = [self._queue.popleft() for _ in range(clip_frames)]
                    self._in_generator = len(clip)
            if partial:
                self._drop([f.stamp_ns for f, _ in partial], "end_of_stream",
                           f"incomplete clip at the end of the stream ({len(partial)} of {clip_frames} frames)")
            if clip:
                self._generate(clip)

    def _generate(self, clip: list[tuple[ExoFrame, list[ExoFrame]]]) -> None:
        frames = [f for f, _ in clip]
        started = time.monotonic()
        try:
            output = self.pipeline.run(frames, [c for _, c in clip])
        except Exception as e:  # noqa: BLE001 - a failing generator must not take the node down
            self.get_logger().error(f"generator '{self.generator.name}' failed: {type(e).__name__}: {e}")
            with self._lock:
                self._in_generator = 0
            self._drop([f.stamp_ns for f in frames], "generator_failed", f"{type(e).__name__}: {e}",
                       status=ClipMetadata.STATUS_FAILED)
            return
        self._publish_clip(output, latency_s=time.monotonic() - started)

    def _publish_clip(self, output: ClipOutput, latency_s: float) -> None:
        frames = output.request.frames
        ego_frame = self.outputs.ego_frame
        for frame, prior, rgb, valid in zip(frames, output.request.priors, output.result.rgb, output.result.valid):
            stamp = conv.ns_to_stamp(frame.stamp_ns)
            if self.outputs.publish_tf:
                world_T_ego = RigidTransform.from_matrix(frame.world_T_ego)
                self.pub_tf.publish(TFMessage(transforms=[conv.rigid_to_transform_stamped(
                    world_T_ego, self.inputs.world_frame, ego_frame, stamp)]))
            self.pub_prior.publish(conv.array_to_image(prior.rgb, "rgb8", stamp, ego_frame))
            self.pub_mask.publish(conv.array_to_image(valid.astype(np.uint8) * 255, "mono8", stamp, ego_frame))
            self.pub_ego_info.publish(conv.camera_to_camera_info(self.ego_camera, stamp, ego_frame))
            self.pub_ego.publish(conv.array_to_image(rgb, "rgb8", stamp, ego_frame))
        if self.pub_cloud is not None:  # the fusion as it was for the clip's newest frame
            self.pub_cloud.publish(cloud_to_pointcloud2(self.pipeline.renderer.fusion.cloud(), self.inputs.world_frame,
                                                        conv.ns_to_stamp(frames[-1].stamp_ns)))
        meta = self._metadata([f.stamp_ns for f in frames], ClipMetadata.STATUS_OK, "")
        meta.exo_frame_id = frames[0].exo_frame_id
        meta.prior_coverage = [p.coverage for p in output.request.priors]
        meta.prior_person_fraction = [p.person_fraction for p in output.request.priors]
        meta.prior_time_s = output.prior_time_s
        meta.generation_time_s = output.generation_time_s
        meta.latency_s = latency_s
        now = time.monotonic()
        with self._lock:
            self._in_generator = 0
            self._stats.published += len(frames)
            self._stats.published_times.extend([now] * len(frames))
        self.pub_meta.publish(meta)
        self._publish_progress()

    # ---------------------------------------------------------------- accounting
    def _metadata(self, stamps_ns: list[int], status: int, reason: str) -> ClipMetadata:
        meta = ClipMetadata(status=status, reason=reason, generator=self.generator.name,
                            clip_id=f"{self.get_name()}-{next(self._clip_seq)}",
                            ego_frame_id=self.outputs.ego_frame, exo_frame_id=self.inputs.exo_frame)
        meta.header.stamp = conv.ns_to_stamp(stamps_ns[0])
        meta.header.frame_id = self.outputs.ego_frame
        meta.source_stamps = [conv.ns_to_stamp(s) for s in stamps_ns]
        meta.generator_settings = [KeyValue(key=k, value=v) for k, v in self.generator.settings().items()]
        return meta

    def _drop(self, stamps_ns: list[int], code: str, detail: str, status: int = ClipMetadata.STATUS_DROPPED) -> None:
        """Count frames as dropped, log it (throttled) and publish one ClipMetadata per frame saying why."""
        with self._lock:
            self._stats.dropped[code] += len(stamps_ns)
        self.get_logger().warning(f"dropped {len(stamps_ns)} frame(s) [{code}]: {detail}", throttle_duration_sec=1.0)
        for s in stamps_ns:
            self.pub_meta.publish(self._metadata([s], status, f"{code}: {detail}"))
        self._publish_progress()

    def _note(self, code: str, detail: str, count: int = 1) -> None:
        """A problem with a non-frame input (depth, camera info, TF): counted in diagnostics and logged."""
        with self._lock:
            self._notes[code] += count
        self.get_logger().warning(detail, throttle_duration_sec=1.0)

    def progress(self) -> NodeProgress:
        with self._lock:
            s = self._stats
            return NodeProgress(last_received_stamp=conv.ns_to_stamp(s.last_received_ns),
                                frames_received=s.received, frames_published=s.published, frames_lost=s.lost,
                                frames_dropped=sum(s.dropped.values()), frames_waiting=len(self._pending),
                                frames_queued=len(self._queue) + self._in_generator,
                                queue_capacity=self.queue_capacity)

    def _publish_progress(self) -> None:
        with self._lock:  # snapshot and publish together: subscribers never see an older state after a newer one
            self.pub_progress.publish(self.progress())

    def _publish_diagnostics(self) -> None:
        progress = self.progress()
        now = time.monotonic()
        period = self.diag_config.period_s
        with self._lock:
            rate_in = sum(1 for t in self._stats.received_times if now - t <= period) / period
            rate_out = sum(1 for t in self._stats.published_times if now - t <= period) / period
            dropped = dict(self._stats.dropped)
            notes = dict(self._notes)
        values = {
            "generator": self.generator.name, "generator_state": self.generator_state,
            "input_rate_hz": f"{rate_in:.2f}", "output_rate_hz": f"{rate_out:.2f}",
            "window_frames": str(len(self.window)),
            "fusion.frames": str(len(self.pipeline.renderer.fusion)),
            "fusion.evicted_by_budget": str(self.pipeline.renderer.fusion.evicted_by_budget),
            "frames_received": str(progress.frames_received),
            "frames_published": str(progress.frames_published), "frames_dropped": str(progress.frames_dropped),
            "frames_lost": str(progress.frames_lost),
            "frames_waiting": str(progress.frames_waiting), "frames_queued": str(progress.frames_queued),
        }
        values.update({f"dropped.{k}": str(v) for k, v in sorted(dropped.items())})
        values.update({f"input_problems.{k}": str(v) for k, v in sorted(notes.items())})
        values.update(self._delays.report())
        values["depth.source"] = self._depth_description()
        if self.depth_estimator is not None:
            with self._lock:
                lags, self._depth_lag_ms = self._depth_lag_ms, []
            values["depth.active"] = "model" if self._depth_from_model() else "topic"
            if lags:   # positive: the frame is newer than the depth it used
                values["depth.lag_ms_max"] = f"{max(lags, key=abs):.1f}"
            values.update({f"depth.{k}": v for k, v in self.depth_estimator.stats().items()})
        if self.person_detector is not None:
            values.update({f"person.{k}": v for k, v in self.person_detector.stats().items()})
        if self.head_tracker is not None:
            with self._lock:
                head, counts = self._last_head, dict(self._head_counts)
            values.update({f"head.{k}": str(v) for k, v in sorted(counts.items())})
            if head is not None:
                values["head.confidence"] = f"{head.confidence:.2f}"
                values["head.state"] = head.state
                if head.measurement is not None:
                    values["head.source"] = (f"position {head.measurement.position_source}, orientation "
                                             f"{head.measurement.orientation_source}")
        level = DiagnosticStatus.OK
        message = "ok"
        if dropped or notes or progress.frames_lost:
            level, message = DiagnosticStatus.WARN, "frames dropped or lost, or inputs rejected; see values"
        if self._camera_info is None and progress.frames_received:
            level, message = DiagnosticStatus.WARN, "no camera info received on exo/camera_info"
        if self.depth_estimator is not None and self.depth_config.source == "topic" and self._depth_from_model() \
                and self.inputs.use_depth:
            level, message = DiagnosticStatus.WARN, (f"no depth on exo/depth/image_raw for more than "
                                                     f"{self.depth_config.topic_timeout_s} s: depth from the model")
        if self.generator_problem:
            values["generator_problem"] = self.generator_problem
            level, message = DiagnosticStatus.WARN, self.generator_problem
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: frames", message=message,
                                  hardware_id="egox",
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(array)

    def destroy_node(self) -> None:
        if self._worker is not None:      # else the constructor failed before the node ran
            with self._lock:
                self._running = False
                self._lock.notify_all()
                left = len(self._pending) + len(self._queue)
            if left:
                self.get_logger().warning(f"shutting down with {left} frame(s) not yet published (waiting or "
                                          "queued)")
            self._worker.join(timeout=5.0)
        for worker in (self.depth_estimator, self.person_detector):
            if worker is not None:
                worker.close()
        super().destroy_node()


def main(args: list[str] | None = None) -> None:
    rclpy.init(args=args)
    node = None
    try:
        try:
            node = EgoxNode()
        except (ValueError, RuntimeError, ParameterException) as e:  # bad parameters, missing or broken models
            rclpy.logging.get_logger("egox").fatal(f"cannot start: {type(e).__name__}: {e}")
            raise SystemExit(2) from e
        # One thread for every callback: they are short (decode, buffer, publish), generation runs on the node's
        # own worker thread. A multi-threaded executor with one exclusive group for the inputs left TF and depth
        # callbacks waiting for seconds behind the image callbacks (measured with input_delay_max_ms).
        executor = SingleThreadedExecutor()
        executor.add_node(node)
        executor.spin()
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
