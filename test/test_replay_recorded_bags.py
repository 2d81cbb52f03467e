"""Issue 19: bags recorded the normal way, and "one line on stderr, exit 2" for bad parameters and bad bags.

Bags logged at receive time (log time = stamp + 1 h + per-topic latency, in order or reordered within a topic), a
bag without TF and one with a corrupt chunk are made from the real sample with egox_ros/tools/rewrite_bag.py; the
replays and nodes are real processes over real DDS on this machine."""
from __future__ import annotations

import json
import os
import re
import shutil
import signal
import sys

import numpy as np
import pytest
import yaml
from rosbags.highlevel import AnyReader

from conftest import SAMPLE_BAG, LoggedProcess, run_concurrently, run_with_progress, wait_until
from egox_ros.ros.offline.plan import PRESETS, make_plan, typestore_with_egox_msgs
from egox_ros.ros.params import node_key_matches
from egox_ros.ros.stamps import stamp_to_ns
from egox_ros.tools.rewrite_bag import main as rewrite_main, preset_renames, rewrite_bag

SAMPLE_PARAMS = SAMPLE_BAG.parent / "egox_sample.yaml"
FRAMES = 50
RECORDED = 25          # exo frames kept in the bags logged at receive time (enough to starve the old replay 6 times)
HOUR_NS = 3600 * 10**9
IMAGES = ("/exo/image_raw", "/exo/depth/image_raw", "/ego/ground_truth/image_raw")


def _cli(command, *args):
    return run_with_progress([sys.executable, "-m", "egox_ros.cli", command, *map(str, args)])


def _one_line(result, prefix):
    """The command failed with exit 2 and exactly one line on stderr, no traceback."""
    assert result.returncode == 2, (result.returncode, result.stdout[-1500:], result.stderr[-1500:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(prefix) and "Traceback" not in result.stderr, result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """The sample as `ros2 bag record` would log it an hour later with 40-140 ms image latency: each topic in order,
    and reordered within a topic; without any TF; with its (single, zstd) chunk corrupted."""
    root = tmp_path_factory.mktemp("recorded")
    latency = {t: (40_000_000, 140_000_000) for t in IMAGES}
    rewrite_bag(SAMPLE_BAG, root / "in_order", log_offset_ns=HOUR_NS, latency_ns=latency, max_frames=RECORDED)
    rewrite_bag(SAMPLE_BAG, root / "reordered", log_offset_ns=HOUR_NS, latency_ns=latency, reorder=True,
                max_frames=RECORDED)
    rewrite_bag(SAMPLE_BAG, root / "no_tf", drop_topics={"/tf"})
    corrupt = root / "corrupt"
    shutil.copytree(SAMPLE_BAG, corrupt)
    _corrupt_chunk(next(corrupt.glob("*.mcap")), 0)
    _chunked_copy(SAMPLE_BAG, root / "corrupt_late")           # 1 MiB zstd chunks: 25 of them
    _corrupt_chunk(next((root / "corrupt_late").glob("*.mcap")), -3)
    return {p.name: p for p in root.iterdir()}


def _chunked_copy(src, dst):
    """The sample's MCAP rewritten with 1 MiB zstd chunks (the mcap library's writer), same metadata.yaml."""
    from mcap.reader import make_reader
    from mcap.writer import CompressionType, Writer
    dst.mkdir()
    shutil.copy(src / "metadata.yaml", dst / "metadata.yaml")
    name = next(src.glob("*.mcap")).name
    with open(src / name, "rb") as f, open(dst / name, "wb") as g:
        reader, writer = make_reader(f), Writer(g, chunk_size=1 << 20, compression=CompressionType.ZSTD)
        header, summary = reader.get_header(), reader.get_summary()
        writer.start(header.profile, header.library)
        schemas = {i: writer.register_schema(s.name, s.encoding, s.data) for i, s in summary.schemas.items()}
        channels = {i: writer.register_channel(c.topic, c.message_encoding, schemas[c.schema_id], c.metadata)
                    for i, c in summary.channels.items()}
        for _, channel, message in reader.iter_messages(log_time_order=True):
            writer.add_message(channels[channel.id], message.log_time, message.data, message.publish_time,
                               message.sequence)
        writer.finish()


def _corrupt_chunk(path, index):
    """Zero 64 bytes in the middle of a chunk's compressed records (MCAP chunk record layout: opcode, record
    length, start and end time, uncompressed size, CRC, compression string, records length, records)."""
    from mcap.reader import make_reader
    with open(path, "rb") as f:
        chunk = make_reader(f).get_summary().chunk_indexes[index]
    assert chunk.compression == "zstd"
    data = bytearray(path.read_bytes())
    start = chunk.chunk_start_offset + 1 + 8 + 8 + 8 + 8 + 4 + 4 + len(chunk.compression) + 8
    middle = start + chunk.compressed_size // 2
    data[middle:middle + 64] = bytes(64)
    path.write_bytes(bytes(data))


def _log_times(bag):
    """{topic: [(log_ns, header stamp ns)]} in the bag's log-time order."""
    out = {}
    with AnyReader([bag], default_typestore=typestore_with_egox_msgs()) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            header = msg.transforms[0].header if conn.topic == "/tf" else msg.header
            out.setdefault(conn.topic, []).append((log_ns, stamp_to_ns(header.stamp)))
    return out


# ------------------------------------------------------------------------------ bags logged at receive time
def test_rewrite_bag_logs_at_receive_time_in_order_or_reordered(bags):
    for name in ("in_order", "reordered"):
        times = _log_times(bags[name])
        for topic in IMAGES:
            delays = [log - stamp - HOUR_NS for log, stamp in times[topic]]
            # max_frames stops before the next exo image: a depth logged before it in the sample's order stays
            assert RECORDED <= len(delays) <= RECORDED + 1 and min(delays) >= 40_000_000, (name, topic)
            assert max(delays) <= 140_000_000, (name, topic)
            stamps = [stamp for _, stamp in times[topic]]
            assert (stamps == sorted(stamps)) == (name == "in_order"), (name, topic)
        assert all(log - stamp == HOUR_NS for log, stamp in times["/tf"])     # no latency given: only the offset
    assert rewrite_main([str(SAMPLE_BAG), str(bags["in_order"].parent / "x"), "--latency-ms", "/exo/image_raw:=9:3"]) \
        == 2


def _drops(metrics):
    return dict(metrics["summary"]["frames_dropped_by_reason"])


def test_replay_of_a_bag_logged_at_receive_time_drops_nothing_process_keeps(bags, tmp_path):
    # Before: the replay sent the next exo image only once the frames waiting for inputs left room, so a frame whose
    # depth was logged after the next images starved until sync.timeout_s (depth_missing: 6 of these 25 frames, in
    # 80 s), while egox process kept them all. queue_capacity 1 is the tightest gate.
    result = _cli("replay", bags["in_order"], "-o", tmp_path / "replay", "--params-file", SAMPLE_PARAMS,
                  "-p", "sync.queue_capacity:=1")
    assert result.returncode == 0, result.stderr[-3000:]
    metrics = json.loads((tmp_path / "replay" / "metrics.json").read_text())
    assert metrics["run"]["frames_published"] == RECORDED and _drops(metrics) == {}, _drops(metrics)
    assert result.stdout.strip().splitlines()[-1] == f"done: all {RECORDED} exo frames published"
    # Reordered within a topic: the node drops exo images that arrive out of order, in the replay as in process;
    # a depth image overtaken by a newer one costs process its frame at once (depth_missing), the replay at most
    # as often (it may already have played the late depth when it sends the held image).
    result = _cli("replay", bags["reordered"], "-o", tmp_path / "reordered", "--params-file", SAMPLE_PARAMS,
                  "-p", "sync.queue_capacity:=1")
    assert result.returncode == 0, result.stderr[-3000:]
    replayed = json.loads((tmp_path / "reordered" / "metrics.json").read_text())
    processed = _cli("process", bags["reordered"], "-o", tmp_path / "process", "--params-file", SAMPLE_PARAMS,
                     "-p", "sync.queue_capacity:=1")
    assert processed.returncode == 0, processed.stderr[-3000:]
    expected, got = _drops(json.loads((tmp_path / "process" / "metrics.json").read_text())), _drops(replayed)
    assert expected.get("out_of_order_stamp") and got.get("out_of_order_stamp") == expected["out_of_order_stamp"]
    assert all(n <= expected.get(code, 0) for code, n in got.items()), (got, expected)
    # ... and says so on its last line, with the reasons.
    last = result.stdout.strip().splitlines()[-1]
    assert last.startswith(f"WARNING: {sum(got.values())} of {RECORDED} exo frames not published (") and \
        all(f"{code} {n}" in last for code, n in got.items()) and last.endswith("see metrics.json"), last


def test_recorder_logs_messages_stamped_zero_at_the_input_start(peer, tmp_path):
    # Before: /diagnostics published under use_sim_time before the first /clock (stamp 0) were logged at 1970.
    from diagnostic_msgs.msg import DiagnosticArray
    from egox_ros.ros.offline.player import OutputRecorder
    start_ns = 1305031235529738000
    recorder = OutputRecorder(peer.node, tmp_path / "bag", typestore_with_egox_msgs(), "ego_camera_optical", start_ns)
    pub = peer.publisher(DiagnosticArray, "/diagnostics")
    wait_until(lambda: pub.get_subscription_count() > 0, 20, "the recorder to subscribe to /diagnostics")
    stamped = DiagnosticArray()
    stamped.header.stamp.sec, stamped.header.stamp.nanosec = 1305031236, 5
    for msg in (DiagnosticArray(), stamped):
        pub.publish(msg)
    wait_until(lambda: recorder.counts["/diagnostics"] == 2, 20, "both diagnostics recorded")
    recorder.close()
    with AnyReader([tmp_path / "bag"]) as reader:
        logged = sorted(t for _, t, _ in reader.messages())
    assert logged == [start_ns, 1305031236 * 10**9 + 5]


# ------------------------------------------------------------------------------------- presets, transports
def test_realsense_preset_follows_the_current_driver():
    # realsense-ros 4.54+ publishes /<camera_namespace>/<camera_name>/..., both 'camera' by default.
    assert PRESETS["realsense"]["exo/image_raw"] == "/camera/camera/color/image_raw"
    assert PRESETS["realsense"]["exo/depth/image_raw"] == "/camera/camera/aligned_depth_to_color/image_raw"
    assert PRESETS["realsense_legacy"]["exo/camera_info"] == "/camera/color/camera_info"
    assert preset_renames("realsense")["/exo/camera_info"] == "/camera/camera/color/camera_info"


def _image_transport_decode(data: bytes, fmt: str) -> np.ndarray:
    """RGB of a CompressedImage as compressed_image_transport's subscriber shows it: OpenCV decodes to BGR order and
    the format's first field is the image's encoding; a 'compressed bgr8' payload is converted to an rgb8 encoding,
    any other to a bgr8 one (so 'rgb8; jpeg compressed rgb8' is OpenCV's BGR labelled rgb8)."""
    import cv2
    decoded = cv2.imdecode(np.frombuffer(data, np.uint8), cv2.IMREAD_COLOR)      # BGR order
    encoding, _, rest = fmt.partition(";")
    if "compressed bgr" in rest and encoding.strip() == "rgb8":
        decoded = decoded[..., ::-1]
    elif "compressed bgr" not in rest and encoding.strip() == "bgr8":
        decoded = decoded[..., ::-1]
    return decoded if encoding.strip() == "rgb8" else decoded[..., ::-1]        # as RGB for the comparison


def test_rewrite_bag_jpeg_shows_true_colours_in_image_transport_and_in_egox(tmp_path):
    # Before: 'rgb8; jpeg compressed rgb8' with a normal JPEG: image_transport showed red and blue swapped.
    from egox_ros.core.io.compressed_image import decode_compressed_rgb
    from egox_ros.core.io.image_codec import decode_rgb
    rewrite_bag(SAMPLE_BAG, tmp_path / "jpeg", compress=True, max_frames=2)
    store = typestore_with_egox_msgs()
    with AnyReader([SAMPLE_BAG], default_typestore=store) as reader:
        conn = next(c for c in reader.connections if c.topic == "/exo/image_raw")
        raw = reader.deserialize(next(reader.messages([conn]))[2], conn.msgtype)
    original = decode_rgb(raw.data, raw.encoding, raw.height, raw.width, raw.step, False).astype(int)
    with AnyReader([tmp_path / "jpeg"], default_typestore=store) as reader:
        conn = next(c for c in reader.connections if c.topic == "/exo/image_raw/compressed")
        msg = reader.deserialize(next(reader.messages([conn]))[2], conn.msgtype)
    assert msg.format == "bgr8; jpeg compressed bgr8"
    coloured = np.abs(original[..., 0] - original[..., 2]) > 40      # where a red/blue swap shows: > 40 levels
    assert coloured.sum() > 1000, coloured.sum()
    for decoded in (_image_transport_decode(bytes(msg.data), msg.format),
                    decode_compressed_rgb(bytes(msg.data), msg.format)):
        error = np.abs(decoded.astype(int) - original)[coloured].mean()
        assert error < 8.0, error      # JPEG q95 there: measured about 2 levels


# ------------------------------------------------------------------------------------ parameters, replay
def test_params_file_node_keys_match_as_rclpy_matches_them(tmp_path):
    import rclpy
    keys = ["/**", "**", "/**/egox", "egox", "/egox", "/*", "/*/egox", "/**/*", "/egoxx", "/ns/egox", "/**/other"]
    for namespace in ("/", "/robot1"):
        for key in keys:
            path = tmp_path / "p.yaml"
            path.write_text(yaml.safe_dump({key: {"ros__parameters": {"x": 1}}}))
            context = rclpy.Context()
            rclpy.init(context=context, args=["n", "--ros-args", "--params-file", str(path)])
            try:
                node = rclpy.create_node("egox", namespace=namespace, context=context)
                applies = "x" in node._parameter_overrides
                node.destroy_node()
            finally:
                rclpy.try_shutdown(context=context)
            fqn = "/egox" if namespace == "/" else f"{namespace}/egox"
            assert node_key_matches(key, fqn) == applies, (key, fqn, applies)


def test_parameter_values_are_read_as_rcl_reads_them(tmp_path):
    # PyYAML (YAML 1.1) reads 1e1 and 1.5e-3 as strings, rcl as doubles: the checks must not refuse them.
    import rclpy
    from egox_ros.ros.config import parameter_sections
    from egox_ros.ros.params import configs_from_parameters, load_parameters
    texts = {"sync.timeout_s": "1e1", "sync.depth_tolerance_s": "1.5e-3", "sync.max_waiting": "0x10",
             "outputs.ego_frame": "'1e3'"}
    context = rclpy.Context()
    rclpy.init(context=context, args=["n", "--ros-args"] + [a for k, v in texts.items() for a in ("-p", f"{k}:={v}")])
    try:
        node = rclpy.create_node("egox", context=context)
        ros = {k: p.value for k, p in node._parameter_overrides.items()}
        node.destroy_node()
    finally:
        rclpy.try_shutdown(context=context)
    ours = load_parameters(None, [f"{k}:={v}" for k, v in texts.items()])
    assert ours == ros == {"sync.timeout_s": 10.0, "sync.depth_tolerance_s": 0.0015, "sync.max_waiting": 16,
                           "outputs.ego_frame": "1e3"}
    configs, _ = configs_from_parameters(ours, parameter_sections())
    assert configs["sync"].timeout_s == 10.0
    # The node's up-front check of -p looks at types only: a value that needs another from the params file (a model
    # source with its model path there) is not refused before the node has both.
    from egox_ros.ros.params import override_type_problem
    assert override_type_problem(["depth.source:=model", "sync.timeout_s:=1e1"], parameter_sections()) is None
    assert "must be double" in override_type_problem(["sync.timeout_s:=abc"], parameter_sections())


def test_replay_precheck_reads_a_section_keyed_by_a_wildcard_node_name(tmp_path):
    # Before: only '/**', 'egox' and '/egox' were read: the replay checked for a head TF the node never needed.
    bag = tmp_path / "no_head"
    rewrite_bag(SAMPLE_BAG, bag, drop_frames={"head"}, max_frames=3)
    params = tmp_path / "p.yaml"
    params.write_text("/**/egox:\n  ros__parameters:\n    inputs:\n      head_source: exo\n")
    plan = make_plan(bag, params_file=str(params))
    assert plan.params["inputs.head_source"] == "exo" and "inputs.head_source" in plan.user_set
    assert plan.problems == [] and plan.configs["inputs"].head_source == "exo"


def test_replay_checks_parameter_names_and_values_before_anything_starts(tmp_path):
    out = tmp_path / "out"
    wrong_type, out_of_range, typo = run_concurrently([
        ["replay", SAMPLE_BAG, "-o", out, "--params-file", SAMPLE_PARAMS, "-p", "fusion.window_frames:=abc"],
        ["replay", SAMPLE_BAG, "--dry-run", "-p", "window.max_frames:=0"],
        ["replay", SAMPLE_BAG, "--dry-run", "-p", "fusion.window_frame:=3"]])
    # A wrong type with a params file in play (the node would silently keep the file's value), in a real run.
    line = _one_line(wrong_type, "egox replay: error: ")
    assert "'fusion.window_frames' must be integer, got 'abc'" in line and not out.exists()
    # --dry-run checks values (range) ...
    line = _one_line(out_of_range, "egox replay: error: ")
    assert "max_frames = 0 is outside [1, 10000]" in line
    # ... and names: a typo is a warning on the terminal (not only in node.log), with the closest name.
    assert typo.returncode == 0, typo.stderr
    assert typo.stderr.strip() == "egox replay: warning: unknown parameter 'fusion.window_frame' is ignored; " \
                                    "did you mean 'fusion.window_frames'?"


# ----------------------------------------------------------------------------------- parameters, the node
def test_node_refuses_bad_params_files_and_values_in_one_line(tmp_path):
    not_yaml = tmp_path / "not_yaml.yaml"
    not_yaml.write_text("a: [\n")
    no_ros = tmp_path / "no_ros.yaml"
    no_ros.write_text("egox:\n  sync:\n    timeout_s: 2.0\n")
    cases = [(["--params-file", tmp_path / "missing.yaml"], "does not exist"),
             (["--params-file", not_yaml], "cannot read parameter file"),
             (["--params-file", no_ros], "section 'egox' has no ros__parameters"),
             (["-p", "sync.timeout_s:=true"], "'sync.timeout_s' must be double, got True (bool)"),
             (["-p", "sync.timeout_s:=abc"], "'sync.timeout_s' must be double, got 'abc' (string)"),
             (["--params-file", SAMPLE_PARAMS, "-p", "fusion.window_frames:=abc"], "'fusion.window_frames' must be "
                                                                                   "integer")]
    # A wrong type inside a params file: the node's own check (float parameters take any type in rclpy).
    bad_value = tmp_path / "bad_value.yaml"
    bad_value.write_text("/**:\n  ros__parameters:\n    sync:\n      timeout_s: true\n")
    *results, result = run_concurrently([["node", "--ros-args", *args] for args, _ in cases]
                                        + [["node", "--ros-args", "--params-file", bad_value]])
    for (args, expected), refused in zip(cases, results):
        line = _one_line(refused, "egox node: error: ")
        assert expected in line, (args, line)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr[-2000:]
    fatal = [line for line in result.stderr.splitlines() if "FATAL" in line]
    assert len(fatal) == 1 and "'sync.timeout_s' must be double, got True (bool)" in fatal[0], result.stderr


# ---------------------------------------------------------------------------------------------- bad bags
def test_a_bag_without_tf_is_one_line_everywhere(bags, tmp_path):
    # Before: a 26-line traceback ('CameraInfo' object has no attribute 'transforms': rosbags reads
    # connections=[] as every connection) in replay, --dry-run and process.
    commands = (("replay", ["--dry-run"]), ("replay", ["-o", tmp_path / "r"]), ("process", ["-o", tmp_path / "p"]))
    for result in run_concurrently([[command, bags["no_tf"], *extra] for command, extra in commands]):
        line = _one_line(result, "")
        assert "no TF: the bag has no /tf or /tf_static" in line and "'exo_camera_optical'" in line \
            and "'head'" in line, line
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()
    # egox batch: each bad bag is one failure line (also the damaged one), the batch goes on, no traceback.
    result = _cli("batch", bags["no_tf"], bags["corrupt"], "-o", tmp_path / "batch", "--num-cpus", "1")
    assert result.returncode == 1 and "Traceback" not in result.stderr + result.stdout, result.stderr[-2000:]
    failed = json.loads((tmp_path / "batch" / "batch.json").read_text())["summary"]
    assert failed["failed_bags"] == ["no_tf", "corrupt"]
    lines = [x for x in result.stderr.splitlines() if "egox batch: " in x and ": failed: " in x]
    assert len(lines) == 2 and any("no TF: the bag has no /tf" in x for x in lines) and \
        any("ZstdError" in x for x in lines), result.stderr[-2000:]
    # Where the node needs no TF (a fixed exo camera from parameters, the head from the exo image) it is no problem.
    plan = make_plan(bags["no_tf"], overrides=["inputs.exo_pose_source:=parameters", "inputs.head_source:=exo"])
    assert plan.problems == [] and ("exo camera TF", "world -> exo_camera_optical on inputs.exo_pose_source "
                                                     "'parameters'") in plan.inputs


def test_a_bag_with_a_corrupt_chunk_is_one_line(bags, tmp_path):
    # Before: a 45-line ZstdError traceback from the plan stage (and from egox process' loop later in the bag).
    commands = (("replay", ["--dry-run"]), ("replay", ["-o", tmp_path / "r"]), ("process", ["-o", tmp_path / "p"]))
    for result in run_concurrently([[command, bags["corrupt"], *extra] for command, extra in commands]):
        line = _one_line(result, "")
        assert f"cannot read {bags['corrupt']}" in line and "ZstdError" in line and "damaged" in line, line
    assert not (tmp_path / "r").exists() and not (tmp_path / "p").exists()
    # A damaged chunk after the plan's reads: process stops there, keeps what it made (exit 1, one line).
    result = _cli("process", bags["corrupt_late"], "-o", tmp_path / "late", "--params-file", SAMPLE_PARAMS)
    errors = [x for x in result.stderr.splitlines() if x.startswith("egox process: ") and "%|" not in x]   # no bar
    assert result.returncode == 1 and len(errors) == 1 and "Traceback" not in result.stderr, result.stderr[-2000:]
    done = int(re.search(r"ended early after (\d+) of 50 exo images \(ZstdError", errors[0]).group(1))
    assert 0 < done < FRAMES, errors
    with AnyReader([tmp_path / "late" / "bag"]) as reader:
        assert {c.topic: c.msgcount for c in reader.connections}["/ego/image_raw"] > 0


# ------------------------------------------------------------------------------------------------ SIGINT
def test_sigint_mid_replay_leaves_no_traceback_in_the_node_log(tmp_path):
    # Before: rclpy's SIGINT handler shut the context down while the generator thread still published progress:
    # "Exception in thread egox-generator ... publisher's context is invalid" in node.log.
    out = tmp_path / "out"
    replay = LoggedProcess([sys.executable, "-m", "egox_ros.cli", "replay", str(SAMPLE_BAG), "-o", str(out),
                            "--params-file", str(SAMPLE_PARAMS), "-p", "fusion.window_frames:=8"],
                           tmp_path / "replay.log")
    proc = replay.proc

    def frames_replayed() -> int:
        found = re.findall(r"(\d+)/50", replay.log())
        return int(found[-1]) if found else 0
    try:
        wait_until(lambda: frames_replayed() >= 3 or proc.poll() is not None, 180.0, "frames to be replayed")
        assert proc.poll() is None and frames_replayed() < FRAMES, "the replay ended before it could be stopped"
        os.kill(proc.pid, signal.SIGINT)       # the replay alone (not its session): it must stop its node itself
        code = proc.wait(timeout=60)
    finally:
        replay.stop()
    assert code == 128 + signal.SIGINT
    node_log = (out / "node.log").read_text()
    assert "egox ready" in node_log and "Traceback" not in node_log and "Exception in thread" not in node_log, \
        node_log[-3000:]
    assert "context is invalid" not in node_log, node_log[-3000:]
