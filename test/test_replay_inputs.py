"""`egox replay` inputs: the bag is checked before a node starts (pre-check, --dry-run), exo frames are matched by
header stamp (bags whose log times differ), topic remaps and presets (RealSense-style bags), compressed bags.
Bags are made from the real sample with the committed egox_ros/tools/rewrite_bag.py."""
from __future__ import annotations

import json
import subprocess
import sys
import time

import numpy as np
import pytest
from rosbags.highlevel import AnyReader

from conftest import SAMPLE_BAG, run_concurrently
from egox_ros.ros.offline.plan import ReplayError, ReplayInputError, make_plan, typestore_with_egox_msgs
from egox_ros.ros.offline.replay import replay
from egox_ros.ros.offline.report import check_report
from egox_ros.tools.rewrite_bag import REALSENSE_RENAMES, main as rewrite_main, rewrite_bag

SAMPLE_PARAMS = SAMPLE_BAG.parent / "egox_sample.yaml"
FRAMES = 50   # exo frames in the sample bag


def _cli(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "egox_ros.cli", "replay", *map(str, args)], capture_output=True,
                          text=True, timeout=timeout)


def _error_lines(result):
    assert result.returncode == 2, (result.returncode, result.stdout[-2000:], result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert lines and all(line.startswith("egox replay: error: ") for line in lines), result.stderr
    assert "Traceback" not in result.stderr
    return lines


@pytest.fixture(scope="module")
def bags(tmp_path_factory):
    """Variants of the sample: no head TF; no exo camera TF and no depth; log times 40 ms after the stamps;
    RealSense topic names with raw images; the same with image_transport's compressed images."""
    root = tmp_path_factory.mktemp("bags")
    made = {
        "no_head": dict(drop_frames={"head"}),
        "no_exo_tf_no_depth": dict(drop_frames={"exo_camera_optical"}, drop_topics={"/exo/depth/image_raw"}),
        "late": dict(log_offset_ns=40_000_000),
        "realsense": dict(rename=REALSENSE_RENAMES),
        "realsense_jpeg": dict(rename=REALSENSE_RENAMES, compress=True),
    }
    for name, kwargs in made.items():
        rewrite_bag(SAMPLE_BAG, root / name, **kwargs)
    return {name: root / name for name in made}


# --------------------------------------------------------------------------------------------- pre-check, dry run
def test_a_bag_without_head_tf_is_refused_before_a_node_starts(bags, tmp_path):
    # Before: the node waited sync.timeout_s (10 s) per frame and the replay exited 0 with 0 published.
    out = tmp_path / "out"
    started = time.monotonic()
    with pytest.raises(ReplayInputError) as e:
        replay(bags["no_head"], out, params_file=str(SAMPLE_PARAMS), progress_bar=False)
    elapsed = time.monotonic() - started
    assert elapsed < 5.0, elapsed          # measured 0.4 s on a loaded 2-core machine
    assert str(e.value).count("\n") == 0 and "no head TF" in str(e.value) and "'head'" in str(e.value)
    assert "inputs.head_source:=exo" in str(e.value) and "exo_camera_optical" in str(e.value)
    assert not out.exists()                # nothing written, nothing started
    line = _error_lines(_cli(bags["no_head"], "-o", out))[0]
    assert "no head TF" in line and not out.exists()
    # The same bag is fine for a node that estimates the head from the exo image.
    plan = make_plan(bags["no_head"], overrides=["inputs.head_source:=exo"])
    assert plan.problems == [] and ("head", "estimated from the exo image (inputs.head_source 'exo')") in plan.inputs


def test_every_missing_input_gets_its_own_line(bags, tmp_path):
    lines = _error_lines(_cli(bags["no_exo_tf_no_depth"], "-o", tmp_path / "out"))
    assert len(lines) == 2, lines
    assert "no depth" in lines[0] and "/exo/depth/image_raw" in lines[0] and "inputs.use_depth" in lines[0]
    assert "no exo camera TF" in lines[1] and "'exo_camera_optical'" in lines[1] and "header.frame_id" in lines[1]
    # Depth not taken from the bag: only the TF is missing; an explicit exo frame is looked for instead.
    plan = make_plan(bags["no_exo_tf_no_depth"], overrides=["inputs.use_depth:=false", "inputs.exo_frame:=head"])
    assert plan.problems == [], plan.problems
    # RealSense names without remaps: image, info and depth are missing, and the bag's candidates are named.
    plan = make_plan(bags["realsense"])
    assert [p.split(":")[0] for p in plan.problems] == ["no exo image", "no exo camera info", "no depth"]
    assert "/camera/camera/color/image_raw" in plan.problems[0] and "--remap exo/image_raw:=TOPIC" in plan.problems[0]


def test_the_checks_follow_the_nodes_parameters(bags, tmp_path):
    params = tmp_path / "params.yaml"   # file, then -p: head from a pose topic, person masks from a topic
    params.write_text("/**:\n  ros__parameters:\n    inputs:\n      head_source: pose_topic\n"
                      "egox:\n  ros__parameters:\n    person:\n      source: topic\n")
    plan = make_plan(SAMPLE_BAG, params_file=str(params), overrides=["inputs.use_depth:=false"])
    assert [p.split(":")[0] for p in plan.problems] == ["no head pose", "no person mask"], plan.problems
    assert "/head/pose" in plan.problems[0] and "geometry_msgs/msg/PoseStamped" in plan.problems[0]
    assert plan.params["inputs.use_depth"] is False and {"inputs.head_source", "person.source"} <= plan.user_set
    # A TF tree that does not reach the world frame.
    plan = make_plan(SAMPLE_BAG, overrides=["inputs.world_frame:=map"])
    assert len(plan.problems) == 2 and all("does not connect to inputs.world_frame 'map'" in p
                                           for p in plan.problems)


def test_dry_run_prints_the_plan_and_starts_nothing(bags, tmp_path):
    out = tmp_path / "out"
    result = _cli(bags["realsense_jpeg"], "-o", out, "--dry-run", "--preset", "realsense",
                  "--params-file", SAMPLE_PARAMS, timeout=120)
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert "/camera/camera/color/image_raw/compressed (sensor_msgs/msg/CompressedImage, 50 messages) -> node " \
           "exo/image_raw/compressed" in text
    assert "/camera/camera/aligned_depth_to_color/image_raw/compressedDepth (sensor_msgs/msg/CompressedImage, 50 " \
           "messages)" in text
    assert "/camera/camera/color/camera_info (sensor_msgs/msg/CameraInfo, 50 messages)" in text
    assert "world -> exo_camera_optical on /tf" in text and "world -> head on /tf" in text
    assert "inputs.exo_transport=compressed (set by the replay)" in text
    assert "inputs.depth_transport=compressedDepth (set by the replay)" in text
    assert "exo/image_raw/compressed:=/camera/camera/color/image_raw/compressed" in text
    assert "(preset realsense)" in text
    assert f"{out / 'bag'}, {out / 'contact_sheet.png'}, {out / 'metrics.json'}, {out / 'node.log'}" in text
    assert "ground truth for the report: /ego/ground_truth/image_raw with /ego/ground_truth/camera_info" in text
    assert not out.exists()
    # Without -o, and with a problem: the plan, the problems, exit 2.
    result = _cli(bags["no_head"], "--dry-run", timeout=120)
    assert "inputs of the node:" in result.stdout and "MISSING transform to 'head'" in result.stdout
    assert len(_error_lines(result)) == 1


def test_bad_remaps_and_presets_are_one_line(tmp_path):
    params = tmp_path / "p.yaml"
    params.write_text("egox_replay:\n  ros__parameters:\n    preset: zed\n")
    replay_cli = ["replay", SAMPLE_BAG, "-o", tmp_path / "o"]
    misspelt, no_target, bad_preset = run_concurrently([[*replay_cli, "--remap", "exo/imag_raw:=/x"],
                                                        [*replay_cli, "--remap", "exo/image_raw"],
                                                        [*replay_cli, "--params-file", params]])
    line = _error_lines(misspelt)
    assert len(line) == 1 and "exo/imag_raw is not an input of the node" in line[0]
    line = _error_lines(no_target)
    assert len(line) == 1 and "takes FROM:=TO" in line[0]
    line = _error_lines(bad_preset)
    assert len(line) == 1 and "unknown preset 'zed'" in line[0]
    assert not (tmp_path / "o").exists()


def test_remaps_from_the_params_file_the_preset_and_the_command_line():
    plan = make_plan(SAMPLE_BAG, remaps=["/exo/depth/image_raw:=ego/ground_truth/image_raw"],
                     exo_topic="/exo/image_raw")
    assert plan.remaps == {"exo/depth/image_raw": "/ego/ground_truth/image_raw"} and plan.problems == []
    plan = make_plan(SAMPLE_BAG, preset="realsense", remaps=["exo/image_raw:=/exo/image_raw",
                                                            "exo/camera_info:=/exo/camera_info"])
    assert plan.exo_topic == "/exo/image_raw" and plan.camera_info_topic == "/exo/camera_info"
    assert [p.split(":")[0] for p in plan.problems] == ["no depth"]   # only the preset's depth topic is missing


# ----------------------------------------------------------------------------- header stamps, not log times (D)
def test_report_matches_frames_by_header_stamp_when_log_times_differ(bags, tmp_path):
    # As `ros2 bag record` writes them: every log time 40 ms after the header stamp (the old report: 0 published).
    result = replay(bags["late"], tmp_path / "out", params_file=str(SAMPLE_PARAMS), progress_bar=False)
    run, summary = result.metrics["run"], result.metrics["summary"]
    assert run["frames_published"] == FRAMES and summary["frames_published"] == FRAMES
    assert summary["frames_unaccounted"] == 0 and summary["mean_masked_psnr_db"] is not None
    with AnyReader([bags["late"]]) as reader:
        conns = [c for c in reader.connections if c.topic == "/exo/image_raw"]
        stamps = [reader.deserialize(raw, c.msgtype).header.stamp for c, _, raw in reader.messages(conns)]
    assert [f["stamp_ns"] for f in result.metrics["frames"]] == [s.sec * 10**9 + s.nanosec for s in stamps]
    assert summary["ground_truth_info_topic"] == "/ego/ground_truth/camera_info"
    assert result.contact_sheet_path.stat().st_size > 50_000
    # A report that finds fewer published frames than the node published is an error, not a silent zero.
    metrics = {"run": {"frames_published": FRAMES}, "summary": {"frames_published": 0}}
    with pytest.raises(ReplayError, match=r"the node published 50 frames but the report found outputs for only 0 "
                                          r"of the exo images on /exo/image_raw \(matched by header stamp\)"):
        check_report(metrics, "/exo/image_raw", tmp_path / "metrics.json")


# ------------------------------------------------------------------------------ RealSense-style and compressed (E)
def test_rewrite_bag_compresses_as_image_transport_does(bags):
    from egox_ros.core.io.compressed_image import decode_compressed_depth_m, decode_compressed_rgb
    from egox_ros.core.io.image_codec import decode_depth_m, decode_rgb
    store = typestore_with_egox_msgs()
    with AnyReader([SAMPLE_BAG], default_typestore=store) as reader:
        raw = {}
        for c, _, data in reader.messages([c for c in reader.connections
                                           if c.topic in ("/exo/image_raw", "/exo/depth/image_raw")]):
            msg = reader.deserialize(data, c.msgtype)
            raw.setdefault(c.topic, []).append(msg)
    with AnyReader([bags["realsense_jpeg"]], default_typestore=store) as reader:
        types = {c.topic: c.msgtype for c in reader.connections}
        assert types["/camera/camera/color/image_raw/compressed"] == "sensor_msgs/msg/CompressedImage"
        assert types["/camera/camera/aligned_depth_to_color/image_raw/compressedDepth"] == \
            "sensor_msgs/msg/CompressedImage"
        assert "/camera/camera/color/image_raw" not in types and "/exo/image_raw" not in types
        got = {}
        for c, _, data in reader.messages([c for c in reader.connections if c.msgtype.endswith("CompressedImage")]):
            got.setdefault(c.topic, []).append(reader.deserialize(data, c.msgtype))
    colour = got["/camera/camera/color/image_raw/compressed"]
    depth = got["/camera/camera/aligned_depth_to_color/image_raw/compressedDepth"]
    assert len(colour) == len(depth) == FRAMES
    for a, b in zip(raw["/exo/image_raw"], colour):
        assert (b.header.stamp, b.header.frame_id) == (a.header.stamp, a.header.frame_id)
        assert b.format == "bgr8; jpeg compressed bgr8"   # what compressed_image_transport writes and reads
    a, b = raw["/exo/image_raw"][0], colour[0]
    original = decode_rgb(a.data, a.encoding, a.height, a.width, a.step, bool(a.is_bigendian)).astype(int)
    assert 0.3 < np.abs(decode_compressed_rgb(bytes(b.data), b.format) - original).mean() < 3.0   # JPEG q95
    a, b = raw["/exo/depth/image_raw"][0], depth[0]
    assert b.format == "16UC1; compressedDepth png" and b.header.stamp == a.header.stamp
    np.testing.assert_array_equal(decode_compressed_depth_m(bytes(b.data), b.format),   # lossless mm
                                  decode_depth_m(a.data, a.encoding, a.height, a.width, a.step, False))


def test_realsense_style_bags_raw_and_compressed_give_full_metrics(bags, tmp_path):
    # Raw images, remapped through the params file's egox_replay section (the node gets the same file).
    params = tmp_path / "realsense.yaml"
    params.write_text(SAMPLE_PARAMS.read_text() + "egox_replay:\n  ros__parameters:\n    remap:\n"
                      + "".join(f"      - {src.lstrip('/')}:={dst}\n" for src, dst in REALSENSE_RENAMES.items()))
    # Person masks off in both: they come from the image colours, which JPEG moves; the geometry must agree exactly.
    raw = replay(bags["realsense"], tmp_path / "raw", params_file=str(params), overrides=["person.source:=none"],
                 progress_bar=False).metrics
    assert raw["run"]["remaps"] == {k.lstrip("/"): v for k, v in REALSENSE_RENAMES.items()}
    # Compressed images (JPEG, compressedDepth PNG): one command with the preset, transports detected from the bag.
    result = _cli(bags["realsense_jpeg"], "-o", tmp_path / "jpeg", "--preset", "realsense",
                  "--params-file", SAMPLE_PARAMS, "-p", "person.source:=none")
    assert result.returncode == 0, result.stderr[-3000:]
    assert f"{FRAMES} published, 0 dropped" in result.stdout
    jpeg = json.loads((tmp_path / "jpeg" / "metrics.json").read_text())
    assert {"inputs.exo_transport:=compressed", "inputs.depth_transport:=compressedDepth"} <= \
        set(jpeg["run"]["parameters_set_by_replay"])
    for metrics in (raw, jpeg):
        summary = metrics["summary"]
        assert metrics["run"]["frames_published"] == summary["frames_published"] == FRAMES
        assert summary["frames_unaccounted"] == 0
        assert metrics["run"]["recorded_messages"]["/ego/prior/camera_info"] == FRAMES
    # Same geometry (the depth is lossless): same coverage. JPEG q95 moves the colours by about 1 grey level:
    # measured 18.514 dB raw, 18.525 dB JPEG.
    assert jpeg["summary"]["mean_coverage"] == pytest.approx(raw["summary"]["mean_coverage"], abs=1e-6)
    assert raw["summary"]["mean_masked_psnr_db"] > 16.0
    assert abs(jpeg["summary"]["mean_masked_psnr_db"] - raw["summary"]["mean_masked_psnr_db"]) < 0.5
    png = (tmp_path / "jpeg" / "contact_sheet.png").read_bytes()   # the exo column decoded from JPEG
    assert png.startswith(b"\x89PNG") and len(png) > 50_000


def test_rewrite_bag_refuses_a_bad_jpeg_quality(tmp_path):
    assert rewrite_main([str(SAMPLE_BAG), str(tmp_path / "x"), "--compress", "--jpeg-quality", "0"]) == 2
    assert not (tmp_path / "x").exists()
