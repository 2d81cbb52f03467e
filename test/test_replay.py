"""`egox replay` end to end: the real sample bag through a real node process, in lockstep, into a real MCAP bag."""
from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys

import pytest
from rosbags.highlevel import AnyReader
from rosbags.rosbag2 import StoragePlugin, Writer

from pathlib import Path

from conftest import SAMPLE_BAG, wait_until
from egox_ros.ros.offline.plan import ReplayError, ReplayInputError, typestore_with_egox_msgs
from egox_ros.ros.offline.replay import replay
from egox_ros.tools import make_sample_bag as msb

FRAMES = 50  # exo frames in the sample bag


def _output_counts(bag):
    with AnyReader([bag], default_typestore=typestore_with_egox_msgs()) as reader:
        counts = {c.topic: c.msgcount for c in reader.connections}
        stamps = set()
        for conn, _, raw in reader.messages([c for c in reader.connections if c.topic == "/ego/clip_metadata"]):
            for s in reader.deserialize(raw, conn.msgtype).source_stamps:
                stamps.add(s.sec * 10**9 + s.nanosec)
    return counts, stamps


def _input_stamps(bag, topic="/exo/image_raw"):
    with AnyReader([bag]) as reader:
        return [t for _, t, _ in reader.messages([c for c in reader.connections if c.topic == topic])]


def test_sample_replay_accounts_for_every_frame_and_beats_chance(tmp_path):
    # queue_capacity 1 and a heavier prior: without lockstep a full-speed player would overrun the node.
    result = subprocess.run(
        [sys.executable, "-m", "egox_ros.cli", "replay", str(SAMPLE_BAG), "-o", str(tmp_path / "out"),
         "--params-file", str(SAMPLE_BAG.parent / "egox_sample.yaml"),
         "-p", "sync.queue_capacity:=1", "-p", "fusion.window_frames:=8"],
        capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "50 published, 0 dropped" in result.stdout
    out = tmp_path / "out"
    counts, meta_stamps = _output_counts(out / "bag")
    for topic in ("/ego/image_raw", "/ego/prior/image_raw", "/ego/prior/mask", "/ego/camera_info",
                  "/ego/prior/camera_info", "/tf"):
        assert counts[topic] == FRAMES, (topic, counts)
    assert counts["/ego/clip_metadata"] == 2       # one per clip: the replay's prior clips hold 49 frames (and 1)
    assert meta_stamps == set(_input_stamps(SAMPLE_BAG))
    metrics = json.loads((out / "metrics.json").read_text())
    summary = metrics["summary"]
    assert summary["frames_in"] == FRAMES and summary["frames_published"] == FRAMES
    assert summary["frames_unaccounted"] == 0 and summary["frames_dropped_by_reason"] == {}
    # Times per clip (a clip of 49 frames and one of 1: their mean) and per frame (their sum over 50 frames).
    assert 0 < summary["prior_time_ms_per_frame"] < summary["mean_prior_time_ms"] / 10
    assert len(metrics["frames"]) == FRAMES
    # Real geometry on real data: the prior, compared with the frame really recorded at the head pose, is far
    # better than unrelated images (about 8-10 dB on this scene); 18.4 dB was measured with these settings.
    assert summary["mean_masked_psnr_db"] > 16.0
    assert 0.3 < summary["mean_coverage"] < 0.9
    png = (out / "contact_sheet.png").read_bytes()
    assert png.startswith(b"\x89PNG") and len(png) > 50_000


def _copy_bag(src, dst, storage, keep_frames):
    """Rewrite the first `keep_frames` exo frames of the sample into another bag (sqlite3 or MCAP)."""
    store = typestore_with_egox_msgs()
    with AnyReader([src]) as reader, Writer(dst, version=8, storage_plugin=storage) as writer:
        conns = {c.topic: writer.add_connection(c.topic, c.msgtype, typestore=store) for c in reader.connections}
        images = 0
        for conn, t, raw in reader.messages():
            if images >= keep_frames:
                break
            writer.write(conns[conn.topic], t, raw)
            images += conn.topic == "/exo/image_raw"


def test_replay_of_a_sqlite3_bag(tmp_path):
    bag = tmp_path / "in_sqlite"
    _copy_bag(SAMPLE_BAG, bag, StoragePlugin.SQLITE3, keep_frames=6)
    result = replay(bag, tmp_path / "out", progress_bar=False)
    assert result.images_sent == 6
    assert result.metrics["summary"]["frames_published"] == 6, result.metrics["summary"]
    assert (tmp_path / "out" / "contact_sheet.png").exists()


def test_replay_of_a_truncated_bag_keeps_what_it_could_play(tmp_path):
    bag = tmp_path / "truncated"
    _copy_bag(SAMPLE_BAG, bag, StoragePlugin.SQLITE3, keep_frames=8)
    db = next(bag.glob("*.db3"))
    data = db.read_bytes()
    db.write_bytes(data[: len(data) * 2 // 3])   # a recording cut off mid-write
    try:
        result = replay(bag, tmp_path / "out", progress_bar=False)
    except ReplayError as e:   # unreadable from the start: a clear error naming the bag
        assert "truncated" in str(e) or str(bag) in str(e)
        return
    run = result.metrics["run"]
    assert run["images_sent"] < 8 or run["input_truncated"] is None
    assert result.metrics["summary"]["frames_unaccounted"] == 0


def test_replay_errors_are_clear(tmp_path):
    with pytest.raises(ReplayError, match="does not exist"):
        replay(tmp_path / "missing", tmp_path / "out", progress_bar=False)
    not_a_bag = tmp_path / "not_a_bag"
    not_a_bag.mkdir()
    (not_a_bag / "metadata.yaml").write_text("rosbag2_bagfile_information: {version: 8}\n")
    with pytest.raises(ReplayError, match="cannot open"):
        replay(not_a_bag, tmp_path / "out", progress_bar=False)


def test_replay_with_the_egox_generator_runs_clips_in_lockstep(tmp_path):
    # The tiny random checkpoint (no download), clips of 5 frames on a 64+32 x 32 canvas: the player must wait for
    # whole clips, and every frame comes out of a clip with its source stamp.
    from egox_ros.core.egox.tiny import save_tiny_lora, save_tiny_model
    model, lora = save_tiny_model(tmp_path / "model"), save_tiny_lora(tmp_path / "lora")
    tiny = {"generator.name": "egox", "egox.model_path": model, "egox.lora_path": lora, "egox.clip_frames": 5,
            "egox.steps": 2, "egox.exo_width": 64, "egox.exo_height": 32, "ego_camera.width": 32,
            "ego_camera.height": 32, "ego_camera.fx": 25.8, "ego_camera.fy": 25.8, "ego_camera.cx": 15.5,
            "ego_camera.cy": 15.5, "sync.queue_capacity": 1}
    result = replay(SAMPLE_BAG, tmp_path / "out", params_file=str(SAMPLE_BAG.parent / "egox_sample.yaml"),
                    overrides=[f"{k}:={v}" for k, v in tiny.items()], progress_bar=False)
    run = result.metrics["run"]
    assert (run["frames_published"], run["frames_dropped"]) == (FRAMES, 0)
    with AnyReader([result.out_bag], default_typestore=typestore_with_egox_msgs()) as reader:
        conns = [c for c in reader.connections if c.topic == "/ego/clip_metadata"]
        metas = [reader.deserialize(raw, c.msgtype) for c, _, raw in reader.messages(conns)]
    assert len(metas) == FRAMES // 5 and all(m.generator == "egox" and len(m.source_stamps) == 5 for m in metas)
    stamps = [s.sec * 10**9 + s.nanosec for m in metas for s in m.source_stamps]
    assert stamps == _input_stamps(SAMPLE_BAG)


def test_replay_with_depth_from_the_image_alone(tmp_path):
    # The bag's depth topic is ignored: tiny metric + relative models (no download) give aligned depth per frame on
    # the node's depth worker; the end-of-stream flush waits for them, so every frame is published.
    from egox_ros.core.depth.tiny import save_tiny_depth_model
    metric = save_tiny_depth_model(tmp_path / "metric", "depth_anything_metric")
    relative = save_tiny_depth_model(tmp_path / "relative", "depth_anything_relative")
    overrides = ["depth.source:=video", f"depth.model_path:={metric}", f"depth.video_model_path:={relative}"]
    result = replay(SAMPLE_BAG, tmp_path / "out", params_file=str(SAMPLE_BAG.parent / "egox_sample.yaml"),
                    overrides=overrides, progress_bar=False)
    run = result.metrics["run"]
    assert (run["frames_published"], run["frames_dropped"]) == (FRAMES, 0)
    assert result.metrics["summary"]["mean_coverage"] > 0.1


@pytest.mark.skipif(not (msb.DEFAULT_SOURCE / "associations.txt").is_file(), reason="TUM source data not present")
def test_replay_estimates_the_head_on_a_bag_without_head_tf(tmp_path):
    # A bag like a real demonstration recording: exo camera, depth and the exo camera's pose, no head tracker.
    # Frames 40-58 at full resolution; the seated person appears from frame 48 on.
    bag = tmp_path / "demonstrator"
    assert msb.main(["-o", str(bag), "--first-frame", "40", "--head-offset", "1", "--scale", "1", "--no-head-tf",
                     "--max-size-mb", "200"]) == 0
    result = replay(bag, tmp_path / "out", overrides=["inputs.head_source:=exo"], progress_bar=False)
    run, summary = result.metrics["run"], result.metrics["summary"]
    assert run["frames_published"] + run["frames_dropped"] == 19
    assert set(summary["frames_dropped_by_reason"]) <= {"head_not_visible"}, summary["frames_dropped_by_reason"]
    assert run["frames_published"] >= 9 and summary["head_frames_estimated"] == run["frames_published"]
    assert summary["head_frames_evaluated"] == 0         # no reference head TF in this bag
    assert summary["mean_prior_person_fraction"] == 0.0   # the person is left out of the prior
    assert run["recorded_messages"]["/egox/person_mask"] >= run["frames_published"]
    assert result.contact_sheet_path.is_file()


def test_report_head_errors_against_a_reference_tf():
    import numpy as np
    from egox_ros.core.geometry.transforms import RigidTransform
    from egox_ros.core.runtime.tf_buffer import TfBufferCore
    from egox_ros.ros.offline.report import _head_errors
    tf = TfBufferCore(cache_time_s=100.0)
    tf.set_transform("world", "head", 10, RigidTransform(np.array([1.0, 2.0, 3.0]), np.array([0.0, 0.0, 0.0, 1.0])))
    c, s = np.cos(np.radians(30)), np.sin(np.radians(30))
    estimate = np.array([[c, 0, s, 1.1], [0, 1, 0, 2.0], [-s, 0, c, 3.0], [0, 0, 0, 1]])   # 10 cm off, 30 deg yaw
    errors = _head_errors(estimate, tf, "world", "head", 10)
    assert errors["head_position_error_m"] == pytest.approx(0.1, abs=1e-4)
    assert errors["head_forward_error_deg"] == pytest.approx(30.0, abs=0.01)
    assert _head_errors(estimate, tf, "world", "elsewhere", 10) == {}


# --------------------------------------------------------------------------- the input is never deleted or overwritten
def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "egox_ros.cli", "replay", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def _tree(path):
    """Every file under path with its content hash: equal trees mean nothing was deleted or changed."""
    path = Path(path)
    return {str(p.relative_to(path)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(path.rglob("*")) if p.is_file()}


def _one_error_line(result, *needles):
    assert result.returncode == 2, (result.returncode, result.stdout, result.stderr)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("egox replay: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    return lines[0]


def _refused(in_bag, out, *needles, overwrite=False):
    with pytest.raises(ReplayInputError) as e:
        replay(in_bag, out, overwrite=overwrite, progress_bar=False)
    assert "\n" not in str(e.value) and all(n in str(e.value) for n in needles), str(e.value)


def test_replay_refuses_outputs_that_would_touch_its_input(tmp_path):
    # The earlier failure: `egox replay X/bag -o X` deleted X/bag (the input) before reading it.
    out = tmp_path / "X"
    shutil.copytree(SAMPLE_BAG, out / "bag")
    before = _tree(tmp_path)
    _one_error_line(_cli(out / "bag", "-o", out, "--overwrite"), "is (inside)", "bag")
    _refused(out / "bag", out, "is (inside)")
    mcap = next((out / "bag").glob("*.mcap"))
    _refused(mcap, out, "is (inside)", overwrite=True)                     # a file of the bag as the input
    _refused(out / "bag", out / "bag", "is the input bag", overwrite=True)
    _refused(out / "bag", out / "bag" / "sub", "inside it", overwrite=True)
    (tmp_path / "link").symlink_to(out / "bag")                           # the input through a link
    _refused(tmp_path / "link", out / "bag" / "x", "inside it", overwrite=True)
    link_out = tmp_path / "L"                                             # OUT/bag a link to the input
    link_out.mkdir()
    (link_out / "bag").symlink_to(out / "bag")
    _refused(out / "bag", link_out, "is (inside)", overwrite=True)
    assert _tree(tmp_path) == before
    assert (out / "bag" / "metadata.yaml").is_file()


def test_replay_refuses_a_non_empty_output_and_unwritable_paths(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (tmp_path / "a_file").write_text("x")
    before = _tree(tmp_path)
    _one_error_line(_cli(SAMPLE_BAG, "-o", out), "not empty", "notes.txt", "--overwrite")
    _refused(SAMPLE_BAG, tmp_path / "a_file", "not a directory", overwrite=True)
    _refused(SAMPLE_BAG, tmp_path / "a_file" / "out", "cannot create output directory")
    _one_error_line(_cli(SAMPLE_BAG, "-o", "/proc/egox_replay_test/out"), "/proc/egox_replay_test")
    _one_error_line(_cli(tmp_path / "missing", "-o", tmp_path / "new"), "does not exist")
    assert _tree(tmp_path) == before and not (tmp_path / "new").exists()


def test_overwrite_replaces_only_the_replays_own_files(tmp_path):
    # The input bag and a user's file live in the output directory: --overwrite replaces bag/, metrics.json, ...
    # and leaves both alone, run after run.
    out = tmp_path / "out"
    bag = out / "input_bag"
    out.mkdir()
    _copy_bag(SAMPLE_BAG, bag, StoragePlugin.SQLITE3, keep_frames=3)
    (out / "notes.txt").write_text("mine")
    mine = {k: v for k, v in _tree(out).items() if not k.startswith(("bag/", "metrics", "contact", "node.log"))}
    _one_error_line(_cli(bag, "-o", out), "not empty")
    for run in range(2):
        result = _cli(bag, "-o", out, "--overwrite")
        assert result.returncode == 0, result.stderr[-3000:]
        assert "3 published, 0 dropped" in result.stdout
        after = _tree(out)
        assert {k: v for k, v in after.items() if k in mine} == mine
        assert json.loads((out / "metrics.json").read_text())["summary"]["frames_published"] == 3
        assert _output_counts(out / "bag")[0]["/ego/image_raw"] == 3
    assert set(p.name for p in out.iterdir()) == {"input_bag", "notes.txt", "bag", "metrics.json",
                                                  "contact_sheet.png", "node.log"}


# --------------------------------------------------------------------------- the replay owns its node and its domain
def _proc_state(pid):
    """The state letter of a process ('R', 'S', 'Z', ...), None once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None


def _node_children(pid):
    """Pids of the egox node processes whose parent is pid."""
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
            if int(fields[1]) == pid and b"egox_ros.ros.node" in (stat.parent / "cmdline").read_bytes():
                found.append(int(stat.parent.name))
        except (OSError, IndexError, ValueError):
            continue
    return found


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGKILL],
                         ids=lambda s: signal.Signals(s).name)
def test_stopping_the_replay_stops_its_node(tmp_path, signum):
    out = tmp_path / "out"
    log = open(tmp_path / "replay.log", "w")
    proc = subprocess.Popen([sys.executable, "-m", "egox_ros.cli", "replay", str(SAMPLE_BAG), "-o", str(out),
                             "--params-file", str(SAMPLE_BAG.parent / "egox_sample.yaml"),
                             "-p", "sync.queue_capacity:=1", "-p", "fusion.window_frames:=8"],
                            stdout=log, stderr=subprocess.STDOUT)
    try:
        # The node is up: it is the replay's child and has logged that it is ready.
        node_pid = wait_until(lambda: _node_children(proc.pid), 60.0, "the replay's node process")[0]
        wait_until(lambda: (out / "node.log").is_file() and "egox ready" in (out / "node.log").read_text(), 60.0,
                   "the node to be ready")
        assert proc.poll() is None, "the replay ended before it could be stopped"
        os.kill(proc.pid, signum)
        wait_until(lambda: _proc_state(node_pid) in (None, "Z"), 20.0, "the node to stop")
        code = proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    text = (tmp_path / "replay.log").read_text()
    assert code == (-signal.SIGKILL if signum == signal.SIGKILL else 128 + signum), (code, text[-2000:])
    if signum != signal.SIGKILL:
        assert f"stopped by {signal.Signals(signum).name}" in text and "Traceback" not in text, text[-2000:]


def test_a_stop_signal_inside_a_held_block_is_raised_when_the_block_ends():
    # What keeps a stop signal out of tqdm's constructor (a half-built bar prints a traceback at exit): the block
    # runs to its end, then the replay stops as it would have.
    import threading
    from egox_ros.ros.offline.interrupts import ReplayInterrupted, interrupts_held, raise_interrupted
    stops = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    saved = {s: signal.getsignal(s) for s in stops}
    signal.signal(signal.SIGTERM, raise_interrupted)
    steps = []
    try:
        with pytest.raises(ReplayInterrupted) as stopped:
            with interrupts_held():
                steps.append("before")
                signal.pthread_kill(threading.main_thread().ident, signal.SIGTERM)
                for _ in range(1000):       # the handler runs at the interpreter's next check, inside the block
                    pass
                steps.append("after")
            steps.append("past the block")
    finally:
        for s, handler in saved.items():
            signal.signal(s, handler)
    assert steps == ["before", "after"] and stopped.value.signum == signal.SIGTERM


def test_replay_refuses_a_domain_with_another_egox_node():
    # The decision on what the replay's graph shows: one NodeProgress publisher per egox node. (Whether a node in the
    # same domain is discovered at all is Fast DDS's part: see the report of issue 12 item 5.)
    from types import SimpleNamespace
    from egox_ros.ros.offline.replay import _refuse_other_egox_nodes

    class Graph:
        def __init__(self, names):
            self.names = names

        def get_topic_names_and_types(self):
            return [("/egox/progress", ["egox_msgs/msg/NodeProgress"]), ("/exo/image_raw", ["sensor_msgs/msg/Image"])]

        def get_publishers_info_by_topic(self, topic):
            return [SimpleNamespace(node_name=n, node_namespace="/") for n in self.names]

    _refuse_other_egox_nodes(Graph([]), 0)
    _refuse_other_egox_nodes(Graph(["egox"]), 1)
    os.environ["ROS_DOMAIN_ID"], domain = "42", os.environ["ROS_DOMAIN_ID"]
    try:
        with pytest.raises(ReplayInputError, match=r"another egox node is already running in ROS_DOMAIN_ID 42 "
                                                   r"\(/egox on /egox/progress\).*--domain-id"):
            _refuse_other_egox_nodes(Graph(["egox"]), 0)
        with pytest.raises(ReplayInputError, match=r"\(/egox on /egox/progress; /egox/progress\)"):
            _refuse_other_egox_nodes(Graph(["egox", "_NODE_NAME_UNKNOWN_"]), 1)
    finally:
        os.environ["ROS_DOMAIN_ID"] = domain


def test_rewrite_bag_renames_shifts_and_drops_without_touching_its_input(tmp_path):
    from egox_ros.tools.rewrite_bag import REALSENSE_RENAMES, main, rewrite_bag
    before = _tree(SAMPLE_BAG)
    counts = rewrite_bag(SAMPLE_BAG, tmp_path / "rs", rename=REALSENSE_RENAMES, drop_frames={"head"},
                         log_offset_ns=40_000_000, max_frames=3)
    assert counts["/camera/camera/color/image_raw"] == 3 and "/exo/image_raw" not in counts
    with AnyReader([tmp_path / "rs"], default_typestore=typestore_with_egox_msgs()) as reader:
        for conn, log_ns, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            if conn.topic == "/tf":
                assert [t.child_frame_id for t in msg.transforms] == ["exo_camera_optical"]
            else:
                assert log_ns - (msg.header.stamp.sec * 10**9 + msg.header.stamp.nanosec) == 40_000_000
    assert main([str(SAMPLE_BAG), str(tmp_path / "rs")]) == 2          # an existing output is refused
    assert _tree(SAMPLE_BAG) == before
