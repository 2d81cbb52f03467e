"""`egox`: the command line of egox_ros (node, launch, replay, sample, bench, config, tiny-model)."""
from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys


def _cmd_node(args: argparse.Namespace) -> int:
    from egox_ros.ros.node import main
    ros_args = args.ros_args[1:] if args.ros_args[:1] == ["--"] else args.ros_args
    main(["egox_node", *ros_args])
    return 0


NODE_USAGE = "egox node [--ros-args [-p SECTION.NAME:=VALUE ...] [--params-file FILE] [-r FROM:=TO ...]]"


def node_help() -> str:
    """`egox node --help`: the ROS arguments it takes and every parameter with its default."""
    import dataclasses
    import json
    import textwrap
    from egox_ros.ros.config import parameter_sections
    lines = [f"usage: {NODE_USAGE}", "",
             "Run the egox node (the same as `egox_node` and `ros2 run egox_ros egox_node`). Every argument goes to ROS",
             "as it is; `--` before --ros-args is optional. Topics, parameters and their meaning: README.md.", "",
             "ROS arguments (after --ros-args):",
             "  -p SECTION.NAME:=VALUE   set one parameter (repeatable), e.g. -p inputs.head_source:=exo",
             "  --params-file FILE       parameters from a YAML file (partial files are fine; `egox config` prints",
             "                           every parameter with its description and range)",
             "  -r FROM:=TO              remap a topic, e.g. -r exo/image_raw:=/camera/color/image_raw",
             "  -r __ns:=/NAMESPACE      run in a namespace;  -r __node:=NAME  another node name",
             "", "parameters (SECTION.NAME, default):"]
    for section, cls in parameter_sections().items():
        items = [f"{f.name}={json.dumps(f.default if f.default is not dataclasses.MISSING else f.default_factory())}"
                 for f in dataclasses.fields(cls)]
        lines += textwrap.wrap(", ".join(items), 116, initial_indent=f"  {section}: ", subsequent_indent="      ",
                               break_on_hyphens=False)
    return "\n".join(lines) + "\n"


def _launch_description() -> str:
    from egox_ros.ros.launch_spec import LAUNCH_ARGUMENTS
    return ("Start the node(s) of launch/egox.launch.py without ros2cli, as `ros2 launch egox_ros egox.launch.py`\n"
            "does. Launch arguments (NAME:=DEFAULT):\n" + "\n".join(
                f"  {a.name + ':=' + repr(a.default):<38} {a.description}" for a in LAUNCH_ARGUMENTS))


def _cmd_launch(args: argparse.Namespace) -> int:
    """Start the nodes of launch_spec the way `ros2 launch egox_ros egox.launch.py` does."""
    from egox_ros.ros.launch_spec import LAUNCH_ARGUMENTS, NODES, default_params_file, resolve
    values = {a.name: a.default for a in LAUNCH_ARGUMENTS}
    for item in args.arguments:
        name, sep, value = item.partition(":=")
        if not sep or name not in values:
            known = ", ".join(f"{a.name}:={a.default!r}" for a in LAUNCH_ARGUMENTS)
            print(f"egox launch: unknown launch argument {item!r}; known (with defaults): {known}", file=sys.stderr)
            return 2
        values[name] = value
    procs = []
    for spec in NODES:
        cmd = [sys.executable, "-m", "egox_ros.ros.node", "--ros-args", "-r", f"__node:={spec.name}",
               "--params-file", values["params_file"] or str(default_params_file()),
               "-p", f"use_sim_time:={values['use_sim_time'].lower()}"]
        if values["namespace"]:
            cmd += ["-r", f"__ns:=/{values['namespace'].strip('/')}"]
        for src, dst in spec.remappings:
            cmd += ["-r", f"{src}:={resolve(dst, values)}"]
        print("egox launch:", " ".join(cmd), file=sys.stderr)
        procs.append(subprocess.Popen(cmd))

    def stop(signum, _frame):
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGINT)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    return max(p.wait() for p in procs)


def _cmd_replay(args: argparse.Namespace) -> int:
    from egox_ros.ros.offline.replay import run
    return run(args)


def _cmd_process(args: argparse.Namespace) -> int:
    from egox_ros.ros.offline.process import run
    return run(args)


def _cmd_batch(args: argparse.Namespace) -> int:
    from egox_ros.ros.offline.batch import run
    return run(args)


def _cmd_record(args: argparse.Namespace) -> int:
    from egox_ros.ros.record import run
    return run(args)


def _cmd_tools_egoexo4d(args: argparse.Namespace) -> int:
    from egox_ros.tools.egoexo4d import run
    return run(args)


def _cmd_config(args: argparse.Namespace) -> int:
    from egox_ros.ros.config import default_parameters_yaml
    sys.stdout.write(default_parameters_yaml())
    return 0


def _cmd_tiny_model(args: argparse.Namespace) -> int:
    taken = [p for p in (os.path.join(args.dir, "model"), os.path.join(args.dir, "lora")) if os.path.lexists(p)]
    if taken and not args.force:
        print(f"egox tiny-model: {taken[0]} already exists; not overwriting it (--force writes over it)",
              file=sys.stderr)
        return 2
    from egox_ros.core.egox.tiny import save_tiny_lora, save_tiny_model
    model = save_tiny_model(os.path.join(args.dir, "model"), seed=args.seed)
    lora = save_tiny_lora(os.path.join(args.dir, "lora"), seed=args.seed)
    print(f"tiny random checkpoint (noise-like output; for trying the pipeline, not for results):\n"
          f"  egox.model_path:={model}\n  egox.lora_path:={lora}\n"
          f"with a canvas it can take, e.g. -p generator.name:=egox -p egox.exo_width:=64 -p egox.exo_height:=32 "
          f"-p ego_camera.width:=32 -p ego_camera.height:=32 -p ego_camera.fx:=16.0 -p ego_camera.fy:=16.0 "
          f"-p ego_camera.cx:=15.5 -p ego_camera.cy:=15.5 -p egox.clip_frames:=5 -p egox.steps:=2")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="egox", description="EgoX for ROS 2: third-person camera to first-person "
                                                              "video. See README.md.")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("node", help="run the egox node (every argument goes to ROS: --ros-args -p name:=value ...; "
                                "egox node --help: the arguments and every parameter)", add_help=False)  # below
    p = sub.add_parser("launch", help="start the node(s) of launch/egox.launch.py without ros2cli "
                                      "(arguments: name:=value, e.g. exo_image:=/camera/image_raw use_sim_time:=true)",
                       description=_launch_description(), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("arguments", nargs="*", metavar="NAME:=VALUE", help="launch arguments (above)")
    p.set_defaults(func=_cmd_launch)
    from egox_ros.ros.offline.replay import add_arguments
    p = sub.add_parser("replay", help="replay a rosbag2 bag through the node in lockstep; record outputs, "
                                      "contact sheet and metrics")
    add_arguments(p)
    p.set_defaults(func=_cmd_replay)
    from egox_ros.ros.offline.process import add_arguments as add_process_arguments
    p = sub.add_parser("process", help="the node's pipeline over a bag in this process, without DDS: the same "
                                       "outputs as replay (bag/, contact_sheet.png, metrics.json)")
    add_process_arguments(p)
    p.set_defaults(func=_cmd_process)
    from egox_ros.ros.offline.batch import add_arguments as add_batch_arguments
    p = sub.add_parser("batch", help="egox process over many bags on Ray, one bag per task/actor (a local Ray "
                                     "instance, or --address auto|ray://HOST:10001): OUT/<bag>/ per bag, batch.json")
    add_batch_arguments(p)
    p.set_defaults(func=_cmd_batch)
    from egox_ros.ros.record import add_arguments as add_record_arguments
    p = sub.add_parser("record", help="record a live node's outputs (or any topics) into an MCAP bag, without "
                                      "ros2 bag record: -o OUT [TOPIC ...] [--namespace NS] [--duration S]")
    add_record_arguments(p)
    p.set_defaults(func=_cmd_record)
    sub.add_parser("sample", help="rebuild the bundled sample bag from ../shared/data/tum_rgbd (egox sample "
                                  "--help: its options)", add_help=False)   # parsed by make_sample_bag (below)
    from egox_ros.bench.cli import add_arguments as add_bench_arguments, run as run_bench
    p = sub.add_parser("bench", help="benchmarks (JSON on stdout; --write-docs refreshes docs/benchmarks.md)")
    add_bench_arguments(p)
    p.set_defaults(func=run_bench)
    p = sub.add_parser("tools", help="data converters (egoexo4d: a released EgoX / Ego-Exo4D clip -> a bag)")
    tools = p.add_subparsers(dest="tool", required=True)
    from egox_ros.tools.egoexo4d import add_arguments as add_egoexo4d_arguments
    t = tools.add_parser("egoexo4d", help="a clip of the released EgoX example/egoexo4D folder -> an MCAP bag: exo "
                                          "image, camera info, depth, static exo TF, the recorded head as the "
                                          "head TF, ground-truth ego video and the released prior")
    add_egoexo4d_arguments(t)
    t.set_defaults(func=_cmd_tools_egoexo4d)
    p = sub.add_parser("config", help="print the default parameter file (config/egox.yaml)")
    p.set_defaults(func=_cmd_config)
    p = sub.add_parser("tiny-model", help="write a tiny random Wan 2.1 I2V checkpoint and EgoX-named LoRA (no "
                                          "download) to DIR/model and DIR/lora, to try the egox generator")
    p.add_argument("dir")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--force", action="store_true", help="write over an existing DIR/model and DIR/lora")
    p.set_defaults(func=_cmd_tiny_model)
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["node"] and argv[1:2] in (["-h"], ["--help"]):
        sys.stdout.write(node_help())
        return 0
    if argv[:1] == ["sample"]:                # its own options and --help
        from egox_ros.tools.make_sample_bag import main as make_sample_bag
        return make_sample_bag(argv[1:], prog="egox sample") or 0
    if argv[:1] == ["node"]:
        # Everything after `node` goes to ROS as it is (`egox node --ros-args -p a:=b`, with or without `--`):
        # argparse would take a leading --ros-args for one of its own options.
        return _cmd_node(argparse.Namespace(ros_args=argv[1:]))
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
