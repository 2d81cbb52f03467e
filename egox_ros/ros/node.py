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
import torch
import transforms3d
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from egox_msgs.msg import ClipMetadata, NodeProgress
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, CompressedImage, Image, PointCloud2
from std_msgs.msg import Empty
from tf2_msgs.msg import TFMessage

from egox_ros.core.camera import PinholeCamera
from egox_ros.core.demonstrator.detector import AsyncPersonDetector, make_person_detector, resolve_person_source
from egox_ros.core.demonstrator.head_geometry import measure_head
from egox_ros.core.demonstrator.head_tracker import HeadEstimate, HeadTracker
from egox_ros.core.demonstrator.landmarks import PersonObservation
from egox_ros.core.depth.estimator import make_depth_estimator
from egox_ros.core.frames import ExoFrame, FrameWindow
from egox_ros.core.image_codec import depth_implausible
from egox_ros.core.egox.weights import WeightsError
from egox_ros.core.generators import EgoGenerator, PriorGenerator, make_generator
from egox_ros.core.image_codec import ImageDecodeError
from egox_ros.core.pipeline import ClipOutput, EgoPipeline, PriorRenderer, ego_camera_from_config
from egox_ros.core.synchroniser import Drop, FrameSynchroniser, SyncSources
from egox_ros.core.tf_buffer import TfError
from egox_ros.core.transforms import RigidTransform
from egox_ros.ros import conversions as conv
from egox_ros.ros.config import (DiagnosticsConfig, InputsConfig, OutputsConfig, QosConfig, SyncConfig,
                                 parameter_sections)
from egox_ros.ros.params import declare_config, unknown_parameter_warnings
from egox_ros.ros.pointcloud2 import cloud_to_pointcloud2


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
        for line in unknown_parameter_warnings(self):
            self.get_logger().warning(line)
        self.inputs: InputsConfig = configs["inputs"]
        self.outputs: OutputsConfig = configs["outputs"]
        self.qos: QosConfig = configs["qos"]
        self.sync: SyncConfig = configs["sync"]
        self.diag_config: DiagnosticsConfig = configs["diagnostics"]
        threads = configs["runtime"].torch_threads
        if threads:   # before any model loads; torch's default (every core) starves the callbacks on a busy machine
            torch.set_num_threads(threads)
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
        self._flush_after_workers = False

        # The demonstrator: person masks (a detector on its own worker, or a mask topic) and, with head_source
        # 'exo', the head pose estimated from the detector's head keypoints.
        detector = make_person_detector(self.person_config)
        self.person_detector = None if detector is None else AsyncPersonDetector(
            detector, capacity=self.sync.max_waiting, on_result=self._on_person)
        self.head_tracker = HeadTracker(self.head_config) if self.inputs.head_source == "exo" else None
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
        rpy = self.outputs.head_to_ego_rpy_rad
        head_T_ego = RigidTransform(np.array(self.outputs.head_to_ego_xyz_m, float),
                                    np.roll(transforms3d.euler.euler2quat(*rpy, axes="sxyz"), -1))  # wxyz -> xyzw
        self.queue_capacity = max(self.sync.queue_capacity, self.generator.clip_frames)

        # State shared by the callbacks (one executor thread), the depth / person workers' result callbacks and the
        # generator worker thread; the synchroniser shares the lock, so its admit() call runs under it.
        self._lock = threading.Condition()
        estimator = self.depth_estimator
        self.frames = FrameSynchroniser(
            self.sync, self.inputs.world_frame, self.inputs.head_frame, self.inputs.exo_frame, head_T_ego,
            depth_topic=self._depth_topic, person_masks=self.person_config.source == "topic",
            sources=SyncSources(
                model_depth=None if estimator is None else self._model_depth,
                model_depth_active=self._depth_from_model,
                person=None if self.person_detector is None else self.person_detector.result_for,
                head=None if self.head_tracker is None else self._estimate_head,
                on_reset=lambda stamp_ns: self.window.clear()),
            lock=self._lock)
        self._queue: deque[tuple[ExoFrame, list[ExoFrame]]] = deque()   # frame, its fusion context
        self._in_generator = 0
        self._flush_requested = False
        self._stats = FrameAccounting()
        self._notes: Counter = Counter()                  # non-frame events for diagnostics (bad depth, ...)
        self._image_gaps, self._depth_gaps, self._tf_gaps = SequenceGaps(), SequenceGaps(), SequenceGaps()
        self._delays = InputDelays()
        self._clip_seq = itertools.count()
        self._running = True

        in_qos = _qos(self.qos.input_reliability, self.qos.input_depth)
        out_qos = _qos(self.qos.output_reliability, self.qos.output_depth)
        if self.inputs.exo_transport == "compressed":
            self.create_subscription(CompressedImage, "exo/image_raw/compressed", self._on_image, in_qos)
        else:
            self.create_subscription(Image, "exo/image_raw", self._on_image, in_qos)
        self.create_subscription(CameraInfo, "exo/camera_info", self._on_camera_info, in_qos)
        if self._depth_topic and self.inputs.depth_transport == "compressedDepth":
            self.create_subscription(CompressedImage, "exo/depth/image_raw/compressedDepth", self._on_depth, in_qos)
        elif self._depth_topic:
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
        self.pub_prior_info = self.create_publisher(CameraInfo, "ego/prior/camera_info", out_qos)
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
        self.create_timer(min(0.1, self.sync.timeout_s / 2), self._on_timer, clock=steady)
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
            self.frames.set_camera_info(None, rejected=str(e))
            return
        self.frames.set_camera_info(camera, msg.height, msg.width)
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

    def _model_depth(self, stamp_ns: int) -> tuple[np.ndarray, int] | None:
        estimate = self.depth_estimator.estimate_for(stamp_ns, self.depth_config.max_lag_s)
        return None if estimate is None else (estimate.depth_m, estimate.stamp_ns)

    def _depth_description(self) -> str:
        c = self.depth_config
        if c.source == "topic":
            suffix = "/compressedDepth" if self.inputs.depth_transport == "compressedDepth" else ""
            topic = f"topic exo/depth/image_raw{suffix}" if self.inputs.use_depth else "off"
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
        pending = self.frames.pending(stamp_ns)
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
        self.frames.add_person_mask(stamp_ns, mask)
        self._resolve_pending()

    def _on_depth(self, msg: Image | CompressedImage, info) -> None:
        self._delays.observe("depth", info)
        self._last_depth_msg_s = time.monotonic()
        stamp_ns = conv.stamp_to_ns(msg.header.stamp)
        lost = self._depth_gaps.lost_before(info)
        if lost:
            self._note("depth_lost", f"{lost} depth image(s) lost before the node took them (the input queue "
                                     "overflowed or the transport lost them); consider raising qos.input_depth",
                       count=lost)
        try:
            depth_m = conv.image_to_depth_m(msg)
            problem = depth_implausible(depth_m, conv.depth_encoding(msg))
        except ImageDecodeError as e:
            depth_m, problem = None, str(e)
        if problem is not None:
            self._note("bad_depth", f"depth image at {stamp_ns * 1e-9:.3f} s rejected: {problem}")
            self.frames.add_depth(stamp_ns, None, rejected=f"depth image rejected: {problem}")
        else:
            if not np.isfinite(depth_m).any():
                self._note("depth_without_valid_pixels", f"depth image at {stamp_ns * 1e-9:.3f} s has no valid "
                                                         "pixel (all zero / NaN): its frame gets an empty prior")
            self.frames.add_depth(stamp_ns, depth_m)
        self._resolve_pending()

    def _on_tf(self, msg: TFMessage, info, static: bool) -> None:
        self._delays.observe("tf_static" if static else "tf", info)
        lost = self._tf_gaps.lost_before(info)
        if lost:
            self._note("tf_lost", f"{lost} TF message(s) lost before the node took them", count=lost)
        for t in msg.transforms:
            try:
                transform, problem = conv.transform_msg_to_rigid(t.transform), None
            except ValueError as e:
                transform, problem = None, str(e)
            problem = self.frames.add_transform(t.header.frame_id, t.child_frame_id, conv.stamp_to_ns(t.header.stamp),
                                                transform, static=static, rejected=problem)
            if problem is not None:
                self._note("bad_tf", f"transform {t.header.frame_id} -> {t.child_frame_id} rejected: {problem}")
        self._resolve_pending()

    def _on_head_pose(self, msg: PoseStamped) -> None:
        parent = msg.header.frame_id or self.inputs.world_frame
        try:
            transform, problem = conv.pose_msg_to_rigid(msg.pose), None
        except ValueError as e:
            transform, problem = None, str(e)
        problem = self.frames.add_transform(parent, self.inputs.head_frame, conv.stamp_to_ns(msg.header.stamp),
                                            transform, rejected=problem)
        if problem is not None:
            self._note("bad_head_pose", f"head pose rejected: {problem}")
        self._resolve_pending()

    def _on_image(self, msg: Image | CompressedImage, info) -> None:
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
        self._last_image_s = now
        if self._first_image_s is None:
            self._first_image_s = now
        try:
            rgb = conv.image_to_rgb(msg)
        except ImageDecodeError as e:
            self._publish_drops([Drop([stamp_ns], "bad_image", str(e))])
            return
        result = self.frames.add_image(stamp_ns, rgb, msg.header.frame_id)
        if result.time_jump:
            for worker in (self.depth_estimator, self.person_detector, self.head_tracker):
                if worker is not None:
                    worker.reset()
            self.get_logger().warning(f"time jumped back to {result.accepted[0].stamp_ns * 1e-9:.3f} s (confirmed "
                                      f"by {self.sync.time_jump_confirm_frames} exo images): TF, window and sync "
                                      "reset")
            self._note("time_jump_back", "time jump back", count=1)
        for frame in result.accepted:   # accepted frames only, in stamp order; depth follows the person result
            if self.person_detector is not None:
                self.person_detector.submit(frame.stamp_ns, frame.rgb)
            elif self._depth_from_model():
                self.depth_estimator.submit(frame.stamp_ns, frame.rgb)
        self._publish_drops(result.drops)
        self._resolve_pending()

    def _on_flush(self, _msg: Empty) -> None:
        """End of stream: drop frames still waiting for inputs and let the worker finish partial clips. Waits for
        the depth models and the person detector first, so frames waiting for their results still get them."""
        with self._lock:
            if self._workers_busy():
                self._flush_after_workers = True
                return
            drops = self.frames.flush()
            self._flush_requested = True
            self._lock.notify_all()
        self._publish_drops(drops)
        self._publish_progress()

    # ------------------------------------------------------------- synchronisation
    def _resolve_pending(self) -> None:
        """Hand complete frames to the window and the generator queue, oldest first; publish the drops."""
        with self._lock:
            queued = len(self._queue)
            drops = self.frames.resolve(self._admit)
            admitted = len(self._queue) != queued
        self._publish_drops(drops)
        if admitted and not drops:
            self._publish_progress()

    def _admit(self, frame: ExoFrame) -> bool:
        """A complete frame into the window and the generator queue; False when the queue is full (the frame waits
        up to sync.timeout_s). Runs under the lock (the synchroniser's)."""
        if len(self._queue) >= self.queue_capacity:
            return False
        self.window.append(frame)
        self._queue.append((frame, self.window.newest(self.fusion_frames, up_to_ns=frame.stamp_ns)))
        self._lock.notify_all()
        return True

    def _on_timer(self) -> None:
        """Timeouts of waiting frames, and a flush that waited for depth models which went idle without a result."""
        self._flush_if_workers_idle()
        self._resolve_pending()

    def _estimate_head(self, stamp_ns: int, observation: PersonObservation, depth_m: np.ndarray | None,
                       camera: PinholeCamera, world_T_exo: np.ndarray) -> np.ndarray | None:
        """world_T_head (4, 4) of a frame whose other inputs are complete (stamp order, once per frame; lock held):
        measured from the head keypoints, filtered, held for head.hold_s when the head is not seen; published on
        /tf (head_frame) and ~/head_pose. None: no head for longer than head.hold_s."""
        measurement = None
        if observation.head is not None:
            measurement = measure_head(observation.head, camera, depth_m, self.head_config, observation.mask)
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
        return estimate.world_T_head

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
                if len(self._queue) < clip_frames:     # end of stream: the last, partial clip (padded)
                    self._flush_requested = False
                clip = [self._queue.popleft() for _ in range(min(clip_frames, len(self._queue)))]
                self._in_generator = len(clip)
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
            info = conv.camera_to_camera_info(self.ego_camera, stamp, ego_frame)
            self.pub_prior_info.publish(info)     # image_transport / RViz: the prior's and the mask's sibling
            self.pub_ego_info.publish(info)
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

    def _publish_drops(self, drops: list[Drop]) -> None:
        for d in drops:
            self._drop(d.stamps_ns, d.code, d.detail)

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
                                frames_dropped=sum(s.dropped.values()), frames_waiting=self.frames.waiting(),
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
                lags = self.frames.drain_depth_lags_ms()
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
        if self.frames.camera is None and progress.frames_received:
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
                left = self.frames.waiting() + len(self._queue)
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
