"""`egox process` (the pipeline in one process, no DDS) against `egox replay` (a live node over DDS) on the bundled
sample: the same frames published, the same images, the same metrics."""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest

from conftest import run_concurrently
from egox_ros.ros.offline.process import process
from egox_ros.ros.offline.replay import replay

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "tum_fr1_rpy"
PARAMS = str(ROOT / "sample" / "egox_sample.yaml")


def outputs(bag: Path) -> dict[str, dict[int, object]]:
    """Topic -> header stamp [ns] -> message, from an output bag."""
    from rosbags.highlevel import AnyReader
    from egox_ros.ros.offline.plan import typestore_with_egox_msgs
    store = typestore_with_egox_msgs()
    found: dict[str, dict[int, object]] = {}
    with AnyReader([bag], default_typestore=store) as reader:
        for conn, _, raw in reader.messages():
            msg = reader.deserialize(raw, conn.msgtype)
            header = msg.transforms[0].header if conn.topic == "/tf" else msg.header
            found.setdefault(conn.topic, {})[header.stamp.sec * 10**9 + header.stamp.nanosec] = msg
    return found


def image(msg) -> np.ndarray:
    channels = 3 if msg.encoding == "rgb8" else 1
    return np.asarray(msg.data, np.uint8).reshape(msg.height, msg.width, channels)


@pytest.fixture(scope="module")
def both(tmp_path_factory):
    root = tmp_path_factory.mktemp("process_vs_replay")
    domain = os.environ["ROS_DOMAIN_ID"]
    processed = process(SAMPLE, root / "process", PARAMS, progress_bar=False)
    replayed = replay(SAMPLE, root / "replay", PARAMS, progress_bar=False)
    # The replay used a private domain of its own and gave the caller's back (later tests' peers live in it).
    assert os.environ["ROS_DOMAIN_ID"] == domain
    return processed, replayed


def test_process_and_replay_agree_frame_for_frame(both):
    processed, replayed = both
    assert processed.images_sent == replayed.images_sent == 50
    ours, theirs = outputs(processed.out_bag), outputs(replayed.out_bag)
    assert set(ours) == set(theirs) - {"/diagnostics"}    # no node, no diagnostics; every other topic
    for topic in set(ours) - {"/ego/clip_metadata"}:
        assert sorted(ours[topic]) == sorted(theirs[topic]) and len(ours[topic]) == 50, topic
    for stamp, msg in ours["/ego/image_raw"].items():
        a, b = image(msg).astype(int), image(theirs["/ego/image_raw"][stamp]).astype(int)
        # The same code on the same inputs; float summation order may differ between the two processes' torch
        # threads, which moves a few pixels by a grey level or two at most.
        assert np.abs(a - b).max() <= 2 and (a != b).mean() < 0.001, stamp
    for stamp, meta in ours["/ego/clip_metadata"].items():
        other = theirs["/ego/clip_metadata"][stamp]
        assert (meta.status, meta.generator, list(meta.source_stamps)) == \
            (other.status, other.generator, list(other.source_stamps))
        assert meta.prior_coverage == pytest.approx(other.prior_coverage, abs=1e-4)
    a, b = processed.metrics["summary"], replayed.metrics["summary"]
    assert a["frames_published"] == b["frames_published"] == 50
    assert a["mean_coverage"] == pytest.approx(b["mean_coverage"], abs=1e-4)
    assert a["mean_masked_psnr_db"] == pytest.approx(b["mean_masked_psnr_db"], abs=0.01)
    assert processed.contact_sheet_path.stat().st_size > 10_000
    # In one process and without real-time pacing, process is faster than the live replay (measured in
    # docs/benchmarks.md; here only that it reports its own speed).
    assert processed.metrics["run"]["frames_per_second"] > 0


def test_process_command_line_errors_are_one_line(tmp_path):
    missing, wrong_type, inside_input = run_concurrently([
        ["process", tmp_path / "missing", "-o", tmp_path / "out"],
        ["process", SAMPLE, "-o", tmp_path / "out", "-p", "qos.input_depth:=5.0"],
        ["process", SAMPLE, "-o", SAMPLE / "x"]])
    assert missing.returncode == 2 and missing.stderr.count("\n") == 1 and "does not exist" in missing.stderr
    assert wrong_type.returncode == 2 and "must be integer" in wrong_type.stderr
    assert "Traceback" not in wrong_type.stderr
    assert inside_input.returncode == 2 and "Traceback" not in inside_input.stderr
    assert not (tmp_path / "out" / "bag").exists()


def test_process_takes_a_realsense_bag_with_compressed_images(both, tmp_path):
    # The same bag as a RealSense driver records it with image_transport (JPEG colour, compressedDepth PNG), mapped
    # with the replay's preset; compressed transports are detected from the bag, as the replay does.
    from egox_ros.tools.rewrite_bag import REALSENSE_RENAMES, rewrite_bag
    bag = tmp_path / "realsense_jpeg"
    rewrite_bag(SAMPLE, bag, rename=REALSENSE_RENAMES, compress=True)
    result = process(bag, tmp_path / "out", PARAMS, ["person.source:=none"], preset="realsense", progress_bar=False)
    run, summary = result.metrics["run"], result.metrics["summary"]
    assert summary["frames_published"] == 50 and run["exo_topic"] == "/camera/camera/color/image_raw/compressed"
    assert "inputs.exo_transport:=compressed" in run["parameters_set_by_process"]
    raw = process(SAMPLE, tmp_path / "raw", PARAMS, ["person.source:=none"], progress_bar=False).metrics["summary"]
    # A transport test, so person masks are off (the detector on JPEG'd colours is the demonstrator tests' and
    # README's question). The depth PNG is lossless to the millimetre: the same coverage.
    assert summary["mean_coverage"] == pytest.approx(raw["mean_coverage"], abs=1e-3)
    assert abs(summary["mean_masked_psnr_db"] - raw["mean_masked_psnr_db"]) < 0.5      # JPEG colour, quality 95


def test_process_checks_the_bag_first(tmp_path):
    from egox_ros.ros.offline.plan import ReplayInputError
    from egox_ros.tools.rewrite_bag import rewrite_bag
    bag = tmp_path / "no_head"
    rewrite_bag(SAMPLE, bag, drop_frames={"head"})
    with pytest.raises(ReplayInputError, match="head"):
        process(bag, tmp_path / "out", PARAMS, progress_bar=False)
    assert not (tmp_path / "out").exists()


def test_report_step_uses_the_thread_setting_and_shows_progress(both, tmp_path, capsys, monkeypatch):
    """The report (metrics, contact sheet) runs torch with runtime.torch_threads, not every core (30-90 s under load
    before), gives the caller's setting back, and shows a bar over the images it reads."""
    import torch
    from egox_ros.ros.offline import report
    from egox_ros.ros.offline.plan import typestore_with_egox_msgs
    processed, _ = both
    threads_seen = []
    resample = report.resample_into_camera

    def observed(*args, **kwargs):     # the real resampling, with the thread count it ran under noted
        threads_seen.append(torch.get_num_threads())
        return resample(*args, **kwargs)
    monkeypatch.setattr(report, "resample_into_camera", observed)
    before = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        metrics = report.write_report(SAMPLE, processed.out_bag, tmp_path, exo_topic="/exo/image_raw",
                                             gt_topic="/ego/ground_truth/image_raw", typestore=typestore_with_egox_msgs(),
                                             torch_threads=1)
        assert torch.get_num_threads() == 2        # the caller's setting back
    finally:
        torch.set_num_threads(before)
    assert len(threads_seen) == 50 and set(threads_seen) == {1}, threads_seen
    assert metrics["summary"]["mean_coverage"] == pytest.approx(processed.metrics["summary"]["mean_coverage"], abs=1e-6)
    bar = capsys.readouterr().err
    assert re.search(r"report: 100%.*\b(\d+)/\1\b", bar), bar[-2000:]
