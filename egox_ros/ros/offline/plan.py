"""The bag plan of the offline commands (`egox replay`, `egox process`, `egox batch`): all that is decided and
checked before a run starts, and the errors and topic tables those commands share.

- The output folder: new, empty, or an earlier run's outputs replaced with --overwrite; never the input or a file
  of the user's (check_output, prepare_output).
- The input bag (sqlite3 or MCAP, read with rosbags): opened, its topics and TF read (open_bag, make_plan); a
  damaged bag is one line, not a traceback.
- What the node needs from it, from the node's effective parameters (config/egox.yaml, the params file, -p
  overrides, typed and range-checked as the node does): the exo images, camera info, depth, head pose, person
  masks and TF frames, with remaps (--remap, --preset, the params file's `egox_replay` section) and compressed
  transports detected from the bag's types (plan_replay). One problem line per missing input; `egox replay
  --dry-run` prints the plan (ReplayPlan.describe).

One module on purpose, at about 580 lines: these checks share the plan, its errors and its constants, and
`egox replay`, `egox process` and `egox batch` all start here. It imports nothing of the replay, the DDS player or
the report, so there is no circle.
"""
from __future__ import annotations

import importlib
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path


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
    candidates = [Path(__file__).resolve().parents[3] / "msg" / "egox_msgs" / "msg"]
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


def _read(in_bag: Path, what: str, read):
    """read() (a pass over the bag's messages); an unreadable bag (a damaged chunk, a truncated file) is a
    ReplayInputError naming it, not a traceback."""
    try:
        return read()
    except Exception as e:  # noqa: BLE001 - rosbags and its decompressors raise many types for damaged bags
        raise ReplayInputError(f"cannot read {in_bag} ({what}): {type(e).__name__}: {e}; the bag is damaged "
                               "(a corrupt or truncated chunk?)".replace("\n", " ")) from e


def open_bag(in_bag: Path, typestore):
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


# What egox replay / process set unless the user sets it (the node's defaults are for live use):
OFFLINE_PARAMS = {
    "sync.timeout_s": 10.0,                 # a busy machine delivers a frame's inputs late (1 s dropped frames on CI)
    "sync.overload": "keep_all",            # a recording: every frame, none dropped for room
    "generator.prior_clip_frames": 49,      # a still exo camera's priors over the whole clip's background, as the
                                            # released ones (their clip length)
    "person.other_people": 2,               # other people masked too, as the released priors leave out every
                                            # person (a pose run each per image; the live node has no time)
}


def _load_params_file(params_file: str) -> dict:
    """The params file (egox_ros.ros.params.read_params_file); a bad one is a ReplayInputError (one line)."""
    from egox_ros.ros.params import read_params_file
    try:
        return read_params_file(params_file)
    except ValueError as e:
        raise ReplayInputError(str(e)) from e


def node_parameters(params_file: str | None, overrides: list[str]) -> tuple[dict, dict]:
    """The egox node's effective parameters as the replay starts it, dotted names -> values: config/egox.yaml's
    defaults, then the params file's sections for the node, then the `-p NAME:=VALUE` overrides (YAML values, as
    ROS reads them; egox_ros.ros.params.load_parameters); and the values the user set (file or -p)."""
    import yaml
    from egox_ros.ros.launch_spec import default_params_file
    from egox_ros.ros.params import load_parameters
    try:       # a missing or unreadable params file: load_parameters' one line (read_params_file)
        values = load_parameters(default_params_file(), [], NODE_NAME)
        user = load_parameters(params_file, list(overrides), NODE_NAME)
    except (ValueError, OSError, yaml.YAMLError) as e:
        raise ReplayInputError(f"{e}".replace("\n", " ")) from e
    values.update(user)
    return values, user


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


def node_arguments(plan: "ReplayPlan") -> list[str]:
    """The node's ROS arguments (after --ros-args) for a replay plan."""
    from egox_ros.ros.launch_spec import default_params_file
    args = ["-r", "__node:=egox"] + [a for src, dst in plan.remaps.items() for a in ("-r", f"{src}:={dst}")]
    args += ["--params-file", plan.params_file or str(default_params_file())]
    # Lockstep needs lossless inputs (reliable, deep enough for the TF and depth between two images) and sim time.
    args += ["-p", "use_sim_time:=true", "-p", "qos.input_reliability:=reliable", "-p", "qos.input_depth:=100"]
    for o in plan.replay_params + plan.overrides:
        args += ["-p", o]
    return args


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
        lines.append("node: python -m egox_ros.ros.node --ros-args " + " ".join(node_arguments(self)))
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


def _check_parameters(user: dict, replay_params: list[str]) -> tuple[dict, list[str]]:
    """Every section's config built from the values the user set (node_parameters: the params file and
    overrides, read once) and the replay's own `-p NAME:=VALUE` exactly as the node builds it (types, ranges); a
    bad value is a ReplayInputError (one line) before anything starts. Returns (configs, warnings for unknown
    names)."""
    from egox_ros.ros.config import parameter_sections
    from egox_ros.ros.params import configs_from_parameters, load_parameters
    try:
        values = {**user, **load_parameters(None, replay_params, NODE_NAME)}
        return configs_from_parameters(values, parameter_sections())
    except ValueError as e:
        raise ReplayInputError(f"bad parameters: {e}".replace("\n", " ")) from e


def plan_replay(reader, in_bag: Path, params_file: str | None = None, overrides: list[str] | None = None,
                remaps: list[str] | None = None, preset: str | None = None, exo_topic: str | None = None,
                gt_topic: str = "/ego/ground_truth/image_raw", gt_info_topic: str | None = None) -> ReplayPlan:
    """Decide what the node needs from the bag (from its effective parameters) and where the bag has it: remaps
    (preset, then the params file's egox_replay remap, then --remap; --exo-topic is the exo/image_raw remap),
    compressed transports detected from the bag's types, and one problem line per missing input."""
    overrides = list(overrides or [])
    params, user = node_parameters(params_file, overrides)
    user_set = set(user)
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
    for name, value in OFFLINE_PARAMS.items():
        if params.get(name) is not None and name not in user_set:
            plan.replay_params.append(f"{name}:={value}")
            params[name] = value
    plan.configs, plan.warnings = _check_parameters(user, plan.replay_params)

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


def make_plan(in_bag: Path, typestore=None, **kwargs) -> ReplayPlan:
    """plan_replay on a bag opened (and closed) here; see plan_replay for the arguments."""
    reader = open_bag(in_bag, typestore or typestore_with_egox_msgs())
    try:
        return plan_replay(reader, in_bag, **kwargs)
    finally:
        reader.close()


def dry_run(in_bag: Path, out_dir: Path | None = None, overwrite: bool = False, **plan_args) -> ReplayPlan:
    """Check the output path (when given) and the bag, as a replay would, and return the plan; starts and writes
    nothing. The plan's problems are left for the caller to report."""
    if out_dir is not None:
        check_output(Path(in_bag), Path(out_dir), overwrite)
    return make_plan(Path(in_bag), **plan_args)
