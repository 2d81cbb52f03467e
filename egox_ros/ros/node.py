"""The egox node: exo camera + head pose in, ego view out. A thin ROS shell over egox_ros.core.runtime.engine.EgoEngine.

The node declares the parameters (one typed config per section), decodes messages into the engine's inputs, and
publishes the engine's events (ros/outputs.py builds the messages): clips, one ClipMetadata per dropped frame with
its reason, person masks, head estimates, progress and diagnostics. Every image that arrives is either published or
dropped with a reason; images lost before they reach the node are counted from DDS sequence numbers.
"""
from __future__ import annotations

import faulthandler
import signal
import threading
import time

import numpy as np
import rclpy
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue
from egox_msgs.msg import ClipMetadata, NodeProgress
from geometry_msgs.msg import PoseWithCovarianceStamped
from rclpy._rclpy_pybind11 import RCLError
from rclpy.clock import Clock, ClockType
from rclpy.exceptions import ParameterException
from rclpy.executors import ExternalShutdownException, SingleThreadedExecutor
from rclpy.node import Node
from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image, PointCloud2
from std_msgs.msg import Empty
from tf2_msgs.msg import TFMessage

from egox_ros.core.demonstrator.head_tracker import HeadEstimate
from egox_ros.core.geometry.fusion import AutoFusion
from egox_ros.core.geometry.render import PointCloud
from egox_ros.core.runtime.engine import EgoEngine, EngineEvents
from egox_ros.core.runtime.pipeline import ClipOutput
from egox_ros.core.runtime.synchroniser import Drop
from egox_ros.ros import conversions as conv
from egox_ros.ros.config import DiagnosticsConfig, InputsConfig, OutputsConfig, QosConfig, parameter_sections
from egox_ros.ros.inputs import EngineInputs
from egox_ros.ros.outputs import OutputMessages
from egox_ros.ros.params import declare_config, override_type_problem, read_params_file, unknown_parameter_warnings
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


PROGRESS_QOS = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                          durability=DurabilityPolicy.TRANSIENT_LOCAL)  # latched: late joiners get the current state


def _qos(reliability: str, depth: int) -> QoSProfile:
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=depth,
                      reliability=ReliabilityPolicy.RELIABLE if reliability == "reliable"
                      else ReliabilityPolicy.BEST_EFFORT)


class _Publish(EngineEvents):
    """The engine's events, published by the node (called from the executor and the engine's worker threads)."""

    def __init__(self, node: "EgoxNode"):
        self.node = node
        self.person_masks = self.head_poses = 0     # published (NodeProgress): a recorder knows what to wait for

    def dropped(self, drop: Drop) -> None:
        self.node.get_logger().warning(f"dropped {len(drop.stamps_ns)} frame(s) [{drop.code}]: {drop.detail}",
                                       throttle_duration_sec=1.0)
        self.node.publish(self.node.messages.drop(drop))

    def clip(self, output: ClipOutput, latency_s: float) -> None:
        node = self.node
        node.publish(node.messages.clip(output, latency_s))
        if node.pub_cloud is not None:   # the fused window drawn for the clip's newest frame (not the fusion's own
            # state: with two stages it may be on the next clip already)
            cloud = output.background if output.background is not None else PointCloud.empty()
            node.pub_cloud.publish(cloud_to_pointcloud2(cloud, node.inputs.world_frame,
                                                        conv.ns_to_stamp(output.request.frames[-1].stamp_ns)))

    def person_mask(self, stamp_ns: int, mask: np.ndarray, frame_id: str) -> None:
        self.node.publish(self.node.messages.person_mask(stamp_ns, mask, frame_id))
        with self.node.engine.lock:
            self.person_masks += 1

    def head(self, stamp_ns: int, estimate: HeadEstimate) -> None:
        self.node.publish(self.node.messages.head(stamp_ns, estimate))
        with self.node.engine.lock:
            self.head_poses += 1

    def note(self, code: str, detail: str, count: int = 1) -> None:
        self.node.get_logger().warning(detail, throttle_duration_sec=1.0)

    def log(self, level: str, text: str) -> None:
        logger = self.node.get_logger()     # one call site per severity: rclpy refuses to mix them on one line
        if level == "error":
            logger.error(text)
        elif level == "warning":
            logger.warning(text)
        else:
            logger.info(text)

    def progress(self) -> None:
        self.node.publish_progress()


class EgoxNode(Node):
    """ROS 2 node `egox`; see the module docstring and README for topics and parameters."""

    def __init__(self, **kwargs):
        super().__init__("egox", **kwargs)
        # What destroy_node() releases exists from here on: a constructor that fails below (bad parameters, missing
        # models) leaves a node that rclpy's shutdown still destroys.
        self.engine: EgoEngine | None = None
        configs = {name: declare_config(self, name, cls) for name, cls in parameter_sections().items()}
        for line in unknown_parameter_warnings(self):
            self.get_logger().warning(line)
        self.inputs: InputsConfig = configs["inputs"]
        self.outputs: OutputsConfig = configs["outputs"]
        self.qos: QosConfig = configs["qos"]
        self.diag_config: DiagnosticsConfig = configs["diagnostics"]
        self._publishers_ready = False      # events before the publishers exist (none expected) are not published
        self.events = _Publish(self)
        self.engine = EgoEngine(configs, self.events)   # loads depth / person models; raises on bad settings
        e = self.engine
        self.messages = OutputMessages(self.inputs, self.outputs, e.ego_camera, lambda: e.generator,
                                       node_name=self.get_name())
        self._image_gaps, self._depth_gaps, self._tf_gaps = SequenceGaps(), SequenceGaps(), SequenceGaps()
        self._delays = InputDelays()

        in_qos = _qos(self.qos.input_reliability, self.qos.input_depth)
        # A clip's frames are published at once: a history shorter than a clip lost the oldest of them to a
        # subscriber that took them a little late (a recorder: 46 of 49 frames).
        clip_frames = max(e.generator.clip_frames, e.prior_clip_frames)      # the prior generator's as fallback
        out_qos = _qos(self.qos.output_reliability, max(self.qos.output_depth, clip_frames))
        self.feed = EngineInputs(e, self.inputs, on_fixed_exo=self._publish_fixed_exo)
        for topic, (msg_type, handler) in self.feed.topics().items():
            kind = "image" if handler == self.feed.image else "depth" if handler == self.feed.depth else ""
            self.create_subscription(msg_type, topic, self._counted(kind, handler) if kind else handler, in_qos)
        tf_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE)
        tf_static_qos = QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=100, reliability=ReliabilityPolicy.RELIABLE,
                                   durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.create_subscription(TFMessage, "/tf", lambda m, info: self._on_tf(m, info, False), tf_qos)
        self.create_subscription(TFMessage, "/tf_static", lambda m, info: self._on_tf(m, info, True), tf_static_qos)
        self.create_subscription(Empty, "~/flush", lambda _msg: self.engine.flush(), 10)

        self._pubs = {topic: self.create_publisher(typ, topic, out_qos) for topic, typ in [
            ("ego/image_raw", Image), ("ego/camera_info", CameraInfo), ("ego/prior/image_raw", Image),
            ("ego/prior/mask", Image), ("ego/prior/camera_info", CameraInfo)]}
        self._pubs["ego/clip_metadata"] = self.create_publisher(ClipMetadata, "ego/clip_metadata",
                                                                _qos("reliable", max(100, self.qos.output_depth)))
        self._pubs["/tf"] = self.create_publisher(TFMessage, "/tf", tf_qos)
        if self.inputs.exo_pose_source == "parameters":
            self._pubs["/tf_static"] = self.create_publisher(TFMessage, "/tf_static", tf_static_qos)
        if e.person_detector is not None:
            self._pubs["~/person_mask"] = self.create_publisher(Image, "~/person_mask", out_qos)
        if e.head_tracker is not None:
            self._pubs["~/head_pose"] = self.create_publisher(PoseWithCovarianceStamped, "~/head_pose", out_qos)
        self.pub_cloud = self.create_publisher(PointCloud2, "ego/prior/cloud", out_qos) \
            if self.outputs.publish_cloud else None
        self.pub_progress = self.create_publisher(NodeProgress, "~/progress", PROGRESS_QOS)
        self.pub_diag = self.create_publisher(DiagnosticArray, "/diagnostics", 10)
        self._publishers_ready = True

        steady = Clock(clock_type=ClockType.STEADY_TIME)  # timeouts run in wall time, also under use_sim_time
        self.create_timer(min(0.1, e.sync.timeout_s / 2), e.tick, clock=steady)
        self.create_timer(self.diag_config.period_s, self._publish_diagnostics, clock=steady)
        e.start()
        self.get_logger().info(
            f"egox ready: generator '{e.generator.name}' ({e.generator.clip_frames} frame(s) per clip), "
            f"ego {e.ego_camera.width}x{e.ego_camera.height}, head from {self.inputs.head_source} "
            f"'{self.inputs.head_frame}', depth {self._depth_description()}, person masks "
            f"{e.person_config.source}")
        self.publish_progress()

    def publish(self, messages: list[tuple[str, object]]) -> None:
        """(topic, message) pairs from OutputMessages, in order."""
        if not self._publishers_ready:
            return
        for topic, msg in messages:
            self._pubs[topic].publish(msg)

    # ------------------------------------------------------------------ inputs
    def _depth_description(self) -> str:
        c, e = self.engine.depth_config, self.engine
        if c.source == "topic":
            suffix = "/compressedDepth" if self.inputs.depth_transport == "compressedDepth" else ""
            topic = f"topic exo/depth/image_raw{suffix}" if self.inputs.use_depth else "off"
            return topic + (f" (falls back to the model {c.model_path})" if e.depth_estimator else "")
        return f"{c.source} ({c.model_path}{', ' + c.video_model_path if c.source == 'video' else ''})"

    def _counted(self, kind: str, handler):
        """`handler` behind the transport bookkeeping of an image or depth subscription: worst delays, and messages
        lost before the node took them (from DDS sequence numbers)."""
        gaps = self._image_gaps if kind == "image" else self._depth_gaps

        def on_message(msg, info) -> None:
            self._delays.observe(kind, info)
            lost = gaps.lost_before(info)
            if lost and kind == "image":
                self.get_logger().warning(
                    f"{lost} exo image(s) lost before the node took them (the input queue of qos.input_depth="
                    f"{self.qos.input_depth} overflowed or the transport lost them); counted as frames_lost",
                    throttle_duration_sec=1.0)
                self.engine.count_lost(lost)
            elif lost:
                self.engine.note("depth_lost", f"{lost} depth image(s) lost before the node took them (the input "
                                               "queue overflowed or the transport lost them); consider raising "
                                               "qos.input_depth", count=lost)
            handler(msg)
        return on_message

    def _publish_fixed_exo(self, frame: str, world_T_exo, stamp) -> None:
        """The fixed exo camera of inputs.exo_pose_source 'parameters' on /tf_static (RViz, recorders)."""
        self.get_logger().info(f"exo camera '{frame}' fixed at {list(self.inputs.exo_xyz_m)} m, rpy "
                               f"{list(self.inputs.exo_rpy_rad)} rad in '{self.inputs.world_frame}' (parameters)")
        self.publish([("/tf_static", TFMessage(transforms=[conv.rigid_to_transform_stamped(
            world_T_exo, self.inputs.world_frame, frame, stamp)]))])

    def _on_tf(self, msg: TFMessage, info, static: bool) -> None:
        self._delays.observe("tf_static" if static else "tf", info)
        lost = self._tf_gaps.lost_before(info)
        if lost:
            self.engine.note("tf_lost", f"{lost} TF message(s) lost before the node took them", count=lost)
        self.feed.tf(msg, static)

    # ---------------------------------------------------------------- accounting
    def progress(self) -> NodeProgress:
        e = self.engine
        with e.lock:
            s = e.stats
            return NodeProgress(last_received_stamp=conv.ns_to_stamp(s.last_received_ns),
                                frames_received=s.received, frames_published=s.published, frames_lost=s.lost,
                                frames_dropped=sum(s.dropped.values()), frames_waiting=e.waiting(),
                                frames_queued=e.queued(), queue_capacity=e.queue_capacity,
                                person_masks_published=self.events.person_masks,
                                head_poses_published=self.events.head_poses)

    def publish_progress(self) -> None:
        if not self._publishers_ready:
            return
        with self.engine.lock:  # snapshot and publish together: subscribers never see an older state after a newer
            self.pub_progress.publish(self.progress())

    def _publish_diagnostics(self) -> None:
        e = self.engine
        progress = self.progress()
        now = time.monotonic()
        period = self.diag_config.period_s
        with e.lock:
            rate_in = sum(1 for t in e.stats.received_times if now - t <= period) / period
            rate_out = sum(1 for t in e.stats.published_times if now - t <= period) / period
            dropped = dict(e.stats.dropped)
            notes = dict(e.notes)
        fusion = e.pipeline.renderer.fusion
        values = {
            "generator": e.generator.name, "generator_state": e.generator_state,
            "input_rate_hz": f"{rate_in:.2f}", "output_rate_hz": f"{rate_out:.2f}",
            "window_frames": str(len(e.window)),
            "fusion.frames": str(len(fusion)), "fusion.evicted_by_budget": str(fusion.evicted_by_budget),
            "frames_received": str(progress.frames_received),
            "frames_published": str(progress.frames_published), "frames_dropped": str(progress.frames_dropped),
            "frames_lost": str(progress.frames_lost),
            "frames_waiting": str(progress.frames_waiting), "frames_queued": str(progress.frames_queued),
        }
        if isinstance(fusion, AutoFusion):         # fusion.mode 'auto': which strategy the camera's motion chose
            values["fusion.in_use"] = "static" if fusion.still else "moving"
            values["fusion.camera_moves"] = str(fusion.moves)
        values.update({f"dropped.{k}": str(v) for k, v in sorted(dropped.items())})
        values.update({f"input_problems.{k}": str(v) for k, v in sorted(notes.items())})
        values.update(self._delays.report())
        values["depth.source"] = self._depth_description()
        if e.depth_estimator is not None:
            lags = e.frames.drain_depth_lags_ms()
            values["depth.active"] = "model" if e.depth_from_model() else "topic"
            if lags:   # positive: the frame is newer than the depth it used
                values["depth.lag_ms_max"] = f"{max(lags, key=abs):.1f}"
            values.update({f"depth.{k}": v for k, v in e.depth_estimator.stats().items()})
        if e.person_detector is not None:
            values.update({f"person.{k}": v for k, v in e.person_detector.stats().items()})
        if e.head_tracker is not None:
            with e.lock:
                head, counts = e.last_head, dict(e.head_counts)
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
        if e.frames.camera is None and progress.frames_received:
            level, message = DiagnosticStatus.WARN, "no camera info received on exo/camera_info"
        if e.depth_estimator is not None and e.depth_config.source == "topic" and e.depth_from_model() \
                and self.inputs.use_depth:
            level, message = DiagnosticStatus.WARN, (f"no depth on exo/depth/image_raw for more than "
                                                     f"{e.depth_config.topic_timeout_s} s: depth from the model")
        if e.generator_problem:
            values["generator_problem"] = e.generator_problem
            level, message = DiagnosticStatus.WARN, e.generator_problem
        status = DiagnosticStatus(level=level, name=f"{self.get_name()}: frames", message=message,
                                  hardware_id="egox",
                                  values=[KeyValue(key=k, value=v) for k, v in values.items()])
        array = DiagnosticArray(status=[status])
        array.header.stamp = self.get_clock().now().to_msg()
        self.pub_diag.publish(array)

    def destroy_node(self) -> None:
        if self.engine is not None:       # else the constructor failed before the engine existed
            left = self.engine.close()
            if left:
                self.get_logger().warning(f"shutting down with {left} frame(s) not yet published (waiting or "
                                          "queued)")
        super().destroy_node()


def _arguments_problem(args: list[str]) -> str | None:
    """One line for ROS arguments the node would refuse with a traceback or silently drop: a --params-file that rcl
    cannot parse (or that is empty; egox_ros.ros.params.read_params_file), or a `-p NAME:=VALUE` whose value has
    the wrong type (rcl keeps a params file's value without a word when a -p for the same name has another type).
    Ranges and combinations are checked by the node itself, with the params files' values (one FATAL line)."""
    ros, overrides = False, []
    for i, arg in enumerate(args):
        if arg == "--ros-args":
            ros = True
        elif arg == "--":
            ros = False
        elif ros and arg in ("--params-file", "-p", "--param"):
            if i + 1 >= len(args):
                return f"{arg} needs a value"
            if arg != "--params-file":
                overrides.append(args[i + 1])
                continue
            try:
                read_params_file(args[i + 1])
            except ValueError as e:
                return str(e)
    try:
        problem = override_type_problem(overrides, parameter_sections())
    except ValueError as e:      # not NAME:=VALUE
        return str(e)
    return f"bad parameters: {problem}" if problem else None


def _interrupt(_signum, _frame):
    raise KeyboardInterrupt


def main(args: list[str] | None = None) -> None:
    """Run the node; bad arguments or parameters: one line on stderr, exit code 2. SIGINT and SIGTERM stop it
    cleanly: rclpy's own handlers would shut the ROS context down at once, while the generator thread may still
    publish (a traceback); here they stop the executor, and the context goes down after the engine is closed. While
    the node starts they interrupt it (KeyboardInterrupt); once it spins they only set a flag that the spin loop
    checks: raised inside rclpy's C++ take of a message, the KeyboardInterrupt came out as a RuntimeError traceback."""
    import sys
    faulthandler.register(signal.SIGUSR1, all_threads=True)   # `kill -USR1 <pid>`: every thread's stack to stderr
    argv = list(sys.argv if args is None else args)
    if {"-h", "--help"} & set(argv[1:argv.index("--ros-args") if "--ros-args" in argv else len(argv)]):
        from egox_ros.cli import node_help   # `egox_node --help`, `ros2 run egox_ros egox_node --help`
        sys.stdout.write(node_help())
        return
    problem = _arguments_problem(argv)
    if problem is not None:
        print(f"egox node: error: cannot start: {problem}", file=sys.stderr)
        raise SystemExit(2)
    from rclpy.signals import SignalHandlerOptions
    try:
        rclpy.init(args=argv, signal_handler_options=SignalHandlerOptions.NO)
    except RCLError as e:            # rcl's argument parser: its first line, without the source locations
        print(f"egox node: error: cannot start: {str(e).splitlines()[0].split(', at /')[0]}", file=sys.stderr)
        raise SystemExit(2) from None
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
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
        stop = threading.Event()
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop.set())
        while not stop.is_set():
            executor.spin_once(timeout_sec=0.1)
    except (KeyboardInterrupt, ExternalShutdownException):
        pass
    finally:
        # Ctrl-C on `ros2 launch` reaches the node twice (the terminal's SIGINT, then launch's own): a second one
        # must not interrupt the cleanup with a KeyboardInterrupt traceback. SIGTERM/SIGKILL still stop it.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if node is not None:
            node.destroy_node()
        if rclpy.ok():
            rclpy.shutdown()


if __name__ == "__main__":
    main()
