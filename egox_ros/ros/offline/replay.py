"""Offline replay: play a rosbag2 bag into the live graph in lockstep with the egox node, record its outputs.

`egox replay IN_BAG -o OUT_DIR` starts the node (unless --attach), plays every message of IN_BAG (sqlite3 or MCAP)
with /clock, sends the next exo image only once the node has taken the previous one and has room in its generator
queue (egox_msgs/NodeProgress), so nothing is dropped however slow the generator is; records every output into
OUT_DIR/bag (MCAP; ros/offline/player.py) and writes OUT_DIR/contact_sheet.png and OUT_DIR/metrics.json
(ros/offline/report.py). All DDS traffic stays on this machine (shared memory, localhost discovery, a private domain
id).

Before anything starts, the bag is checked (ros/offline/plan.py) against what the node's effective parameters need
(plan_replay: topics, TF frames; one line per missing input, exit code 2); `--dry-run` prints that plan. Topic remaps
(`--remap`, `--preset`, the params file's `egox_replay` section) go to the node as `-r FROM:=TO`; compressed images in
the bag switch the node's transports.
"""
from __future__ import annotations

import argparse
import atexit
import functools
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from egox_ros.ros.dds import DDS_ENV_KEYS, BackgroundSpin, apply_isolated_env
from egox_ros.ros.offline.plan import (NODE_INPUTS, OUTPUT_TOPICS, PER_FRAME_TOPICS, PRESETS, PRESET_HELP,
                                       REPLAY_SECTION, ReplayError, ReplayInputError, ReplayPlan, check_output, dry_run,
                                       node_arguments, open_bag, plan_replay, prepare_output, typestore_with_egox_msgs)
from egox_ros.ros.offline.interrupts import ReplayInterrupted, interrupts_held, raise_interrupted
from egox_ros.ros.offline.player import BagPlayer, OutputRecorder, images_taken, wait_for, wait_for_matches
from egox_ros.ros.offline.report import ReplayResult, check_report, outcome_line, report


PROGRESS_TYPE = "egox_msgs/msg/NodeProgress"


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


def _start_node(plan: "ReplayPlan", log_path: Path) -> subprocess.Popen:
    """The node in its own session (its own process group: a terminal's Ctrl-C reaches the replay, which stops it),
    stopped by the kernel if the replay dies without stopping it."""
    cmd = [sys.executable, "-c", _EXEC_WITH_PARENT_DEATH_SIGNAL, str(os.getpid()),
           "-m", "egox_ros.ros.node", "--ros-args"] + node_arguments(plan)
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
    reader = open_bag(in_bag, typestore)
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
        player = BagPlayer(node, reader, exo_topic)
        recorder = OutputRecorder(node, out_bag, typestore,
                             ego_frame=str(plan.param("outputs.ego_frame") or "ego_camera_optical"),
                             start_ns=reader.start_time)
        spinner = BackgroundSpin(executor, name="egox-replay-spin")
        started = time.monotonic()
        endpoints = [("pub", player.publishers[t], t) for t in (exo_topic, plan.camera_info_topic)
                     if t in player.publishers]
        endpoints += [("sub", s, t) for s, t in zip(recorder.subscriptions, OUTPUT_TOPICS) if t == "/ego/clip_metadata"]
        wait_for_matches(node, endpoints, 60.0, alive)
        with player.progress_changed:
            player.progress_changed.wait_for(lambda: player.progress is not None, timeout=30.0)
        if player.progress is None:
            raise ReplayError("the node's /egox/progress never arrived; is the node an egox node?")
        alive()
        playing = True
        with interrupts_held():
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
        wait_for(player.progress_changed,
              lambda: images_taken(player.progress) >= images_sent and player.progress.frames_waiting == 0
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
    from egox_ros.ros.offline.bag_check import read_back_problem
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
    handlers = {s: signal.signal(s, raise_interrupted) for s in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)}
    try:
        return _run(args)
    except ReplayInterrupted as e:
        print(f"egox replay: stopped by {e}; the node it started is stopped too", file=sys.stderr)
        return 128 + e.signum
    finally:
        for s, handler in handlers.items():
            signal.signal(s, handler)


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


def _print_warnings(lines: list[str]) -> None:
    """Warnings the node would only write to its log (unknown parameters), on the terminal."""
    for line in lines:
        print(f"egox replay: warning: {line}", file=sys.stderr)


def _print_errors(text: str) -> None:
    for line in text.splitlines():
        print(f"egox replay: error: {line}", file=sys.stderr)
