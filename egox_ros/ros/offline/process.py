"""`egox process IN_BAG -o OUT_DIR`: the node's whole pipeline in this process, without DDS.

The bag is read with rosbags in log-time order; each message is decoded exactly as the node decodes it and handed
to the same core engine (egox_ros.core.runtime.engine.EgoEngine), whose clock is the bag's time. After every message the
engine's workers (person detector, depth models) are waited for and ready clips are generated on this thread, so a
run is deterministic. Outputs are built by the node's own message builder (ros/outputs.py) and written to OUT/bag
with the replay's topics and header-stamp log times; the contact sheet and metrics come from report.py, as a
replay's do.
`egox replay` (a live node over DDS) stays the integration path; both agree frame for frame on the sample.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from egox_ros.ros.offline.plan import (NODE_NAME, PRESETS, ReplayError, ReplayInputError, check_output, make_plan,
                                       message_class, open_bag, prepare_output, typestore_with_egox_msgs, until_damaged)
from egox_ros.ros.offline.report import ReplayResult, check_report, report


def process(in_bag: Path, out_dir: Path, params_file: str | None = None, overrides: list[str] | None = None,
            exo_topic: str | None = None, gt_topic: str = "/ego/ground_truth/image_raw", overwrite: bool = False,
            sheet_frames: int = 6, progress_bar: bool = True, remaps: list[str] | None = None,
            preset: str | None = None, gt_info_topic: str | None = None, generator=None,
            on_frames=None) -> ReplayResult:
    """Run the pipeline over a bag; see the module docstring. The bag is checked and its topics mapped exactly as
    `egox replay` does (plan.make_plan: remaps, presets, compressed transports, one line per missing input). Raises
    ReplayInputError (bad input, settings or output path; nothing written) or ReplayError.
    generator: an EgoGenerator to use instead of building one from the parameters (a caller running many bags
    keeps its loaded model); on_frames(done, total): called after each exo image."""
    from rclpy.serialization import deserialize_message
    from tqdm import tqdm

    from egox_ros.core.runtime.engine import ENGINE_SECTIONS, EgoEngine
    from egox_ros.ros.offline.bag_check import read_back_problem
    from egox_ros.ros.offline.bag_driver import BagInputs, BagWriter, wait_for_workers
    from egox_ros.ros.outputs import OutputMessages

    in_bag, out_dir = Path(in_bag), Path(out_dir)
    if not in_bag.exists():
        raise ReplayInputError(f"input bag {in_bag} does not exist")
    replaced = check_output(in_bag, out_dir, overwrite)
    typestore = typestore_with_egox_msgs()
    plan = make_plan(in_bag, typestore, params_file=params_file, overrides=overrides, remaps=remaps, preset=preset,
                     exo_topic=exo_topic, gt_topic=gt_topic, gt_info_topic=gt_info_topic)
    if plan.problems:
        raise ReplayInputError("\n".join(plan.problems))
    configs = plan.configs             # built and checked by the plan, as the node builds them
    for line in plan.warnings:
        print(f"egox process: {line}", file=sys.stderr)
    reader = open_bag(in_bag, typestore)
    bag_time_s = [0.0]
    writer = engine = None
    try:
        out_bag = out_dir / "bag"
        try:
            prepare_output(out_dir, replaced)
            writer = BagWriter(out_bag, typestore, configs["outputs"].ego_frame)
            engine = EgoEngine({name: configs[name] for name in ENGINE_SECTIONS}, writer,
                               clock=lambda: bag_time_s[0], generator=generator)
        except ValueError as e:
            raise ReplayInputError(f"cannot start: {e}") from e
        writer.messages = OutputMessages(configs["inputs"], configs["outputs"], engine.ego_camera,
                                         lambda: engine.generator, node_name=NODE_NAME)
        engine.prepare_generator()
        inputs = BagInputs(engine, configs["inputs"], plan.remaps)
        connections = [c for c in reader.connections if c.topic in inputs.handlers]
        images = sum(c.msgcount for c in connections if c.topic == inputs.image_topic)
        if not images:
            raise ReplayInputError(f"{in_bag} has no messages on {inputs.image_topic}; topics: "
                                   f"{sorted({c.topic for c in reader.connections})}")
        classes = {c.topic: message_class(c.msgtype) for c in connections}
        started = time.monotonic()
        bar = tqdm(total=images, unit="frame", desc="egox process", disable=not progress_bar)
        done = 0                                # not bar.n: a disabled bar (egox batch's workers) never counts
        damage: list[str] = []             # a damaged chunk ends the input: what was read is processed
        for conn, log_ns, raw in until_damaged(reader.messages(connections=connections), damage):
            bag_time_s[0] = max(bag_time_s[0], log_ns * 1e-9)
            inputs.handlers[conn.topic](deserialize_message(bytes(raw), classes[conn.topic]))
            wait_for_workers(engine)
            engine.tick()                       # timeouts, in bag time
            engine.generate_ready()
            if conn.topic == inputs.image_topic:
                done += 1
                bar.update(1)
                if on_frames is not None:
                    on_frames(done, images)
        wait_for_workers(engine)
        engine.flush()
        engine.generate_ready()
        bar.close()
        wall_s = time.monotonic() - started
        stats = engine.stats
    finally:
        if engine is not None:
            engine.close()
        if writer is not None:
            writer.close()
        reader.close()
    problem = read_back_problem(out_bag, writer.counts)
    if problem is not None:
        raise ReplayError(problem)
    if damage:
        raise ReplayError(f"the input bag ended early after {done} of {images} exo images ({damage[0]}); the outputs "
                          f"for those are in {out_bag}")
    inputs_config = configs["inputs"]
    metrics = report(in_bag, out_bag, out_dir, exo_topic=inputs.image_topic, gt_topic=gt_topic,
                     gt_info_topic=plan.gt_info_topic, typestore=typestore, sheet_frames=sheet_frames,
                     world_frame=inputs_config.world_frame, head_frame=inputs_config.head_frame,
                     torch_threads=configs["runtime"].torch_threads, progress_bar=progress_bar)
    metrics["run"] = {"mode": "process (in one process, no DDS)", "input_bag": str(in_bag), "images": images,
                      "exo_topic": inputs.image_topic, "remaps": dict(plan.remaps),
                      "parameters_set_by_process": list(plan.replay_params),
                      "wall_time_s": round(wall_s, 3),
                      "frames_per_second": round(images / wall_s, 3) if wall_s > 0 else None,
                      "frames_received": stats.received, "frames_published": stats.published,
                      "frames_dropped": sum(stats.dropped.values()), "dropped": dict(stats.dropped),
                      "recorded_messages": dict(writer.counts), "log": writer.log_lines[-200:]}
    metrics_path = out_dir / "metrics.json"
    metrics_path.write_text(json.dumps(metrics, indent=2))
    check_report(metrics, inputs.image_topic, metrics_path)
    return ReplayResult(images, out_bag, metrics_path, out_dir / "contact_sheet.png", metrics)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("in_bag", type=Path, help="rosbag2 bag (directory or .mcap/.db3 file)")
    parser.add_argument("-o", "--out", type=Path, required=True,
                        help="output directory: bag/, contact_sheet.png, metrics.json; new or empty unless "
                             "--overwrite, and outside the input bag")
    parser.add_argument("--params-file", help="node parameter YAML (default: every parameter at its default)")
    parser.add_argument("-p", "--param", action="append", default=[], metavar="NAME:=VALUE",
                        help="node parameter override, e.g. -p fusion.window_frames:=8 (repeatable)")
    parser.add_argument("--remap", action="append", default=[], metavar="FROM:=TO",
                        help="read the node's input FROM from the bag topic TO (repeatable), as egox replay")
    parser.add_argument("--preset", choices=sorted(PRESETS), help="remaps for a driver's topics, as egox replay")
    parser.add_argument("--exo-topic", metavar="TOPIC",
                        help="the bag's exo image topic (same as --remap exo/image_raw:=TOPIC)")
    parser.add_argument("--gt-topic", default="/ego/ground_truth/image_raw",
                        help="ground-truth ego images for the metrics, if the bag has them")
    parser.add_argument("--gt-info-topic", metavar="TOPIC",
                        help="camera info of the ground-truth images (default: camera_info beside --gt-topic)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace this command's own outputs in a non-empty output directory")


def run(args: argparse.Namespace) -> int:
    try:
        result = process(args.in_bag, args.out, args.params_file, args.param, exo_topic=args.exo_topic,
                         gt_topic=args.gt_topic, overwrite=args.overwrite, remaps=args.remap, preset=args.preset,
                         gt_info_topic=args.gt_info_topic)
    except ReplayError as e:     # one line per problem; 2: bad input (nothing written), 1: the run failed
        for line in str(e).splitlines():
            print(f"egox process: {line}", file=sys.stderr)
        return 2 if isinstance(e, ReplayInputError) else 1
    summary = result.metrics.get("summary", {})
    print(f"egox process: {result.metrics['run']['frames_published']} of {result.images_sent} frames published in "
          f"{result.metrics['run']['wall_time_s']} s; {result.out_bag}, {result.contact_sheet_path}, "
          f"{result.metrics_path}")
    if summary:
        print("summary: " + ", ".join(f"{k} {v}" for k, v in summary.items() if not isinstance(v, (dict, list))))
    return 0
