"""`egox batch` (ros/offline/batch.py) on a local Ray instance: several copies of the bundled sample and broken bags
with the prior generator (tasks), compared bag by bag with `egox process`; the tiny random EgoX checkpoint on an actor
that loads it once for two bags; bad arguments. Real Ray, real bags, the real command line."""
from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_concurrently

ROOT = Path(__file__).resolve().parents[1]
SAMPLE = ROOT / "sample" / "tum_fr1_rpy"
PARAMS = str(ROOT / "sample" / "egox_sample.yaml")

pytestmark = pytest.mark.skipif(importlib.util.find_spec("ray") is None,
                                reason="ray is not installed (scripts/setup.sh installs it from requirements-ray.txt)")


def egox(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "egox_ros.cli", *map(str, args)], capture_output=True, text=True,
                          timeout=timeout)


FRAMES = 12     # exo frames per input bag: the sample's first 12 (all 50 took about 20 s longer, to no gain)


def copy_sample(dest: Path) -> Path:
    """The sample's first FRAMES exo frames (and every message before the next one) as a new bag at ``dest``."""
    from egox_ros.tools.rewrite_bag import rewrite_bag
    dest.parent.mkdir(parents=True, exist_ok=True)
    rewrite_bag(SAMPLE, dest, max_frames=FRAMES)
    return dest


@pytest.fixture(scope="module")
def prior_batch(tmp_path_factory):
    """3 good copies (two of them with the same folder name) + a truncated bag + a missing one, on 2 CPUs; and
    `egox process` on the sample, in a process that also shows the single-machine path never imports ray."""
    root = tmp_path_factory.mktemp("batch_prior")
    bags = [copy_sample(root / "in" / "a" / "tum_fr1_rpy"), copy_sample(root / "in" / "b" / "tum_fr1_rpy"),
            copy_sample(root / "in" / "third")]
    broken = root / "in" / "broken"
    broken.mkdir()
    shutil.copy(SAMPLE / "metadata.yaml", broken)
    (broken / "tum_fr1_rpy.mcap").write_bytes((SAMPLE / "tum_fr1_rpy.mcap").read_bytes()[:100_000])
    missing = root / "in" / "missing"
    out = root / "out"
    result = egox("batch", *bags, broken, missing, "-o", out, "--params-file", PARAMS, "--num-cpus", 2)
    reference = subprocess.run(
        [sys.executable, "-c",
         "import sys, json; from egox_ros.ros.offline.process import process; "
         "import egox_ros.cli, egox_ros.ros.offline.batch; "
         "seen = []; "   # frame counts as a batch worker gets them: its own bar is disabled
         f"r = process({str(bags[2])!r}, {str(root / 'process')!r}, {PARAMS!r}, progress_bar=False, "
         "on_frames=lambda done, total: seen.append((done, total))); "
         "assert 'ray' not in sys.modules, 'the single-machine path imported ray'; "
         "print(json.dumps([r.metrics['summary'], seen]))"], capture_output=True, text=True, timeout=600)
    assert reference.returncode == 0, reference.stderr[-2000:]
    summary, frame_counts = json.loads(reference.stdout.strip().splitlines()[-1])
    assert frame_counts == [[i, FRAMES] for i in range(1, FRAMES + 1)], frame_counts   # the batch's frames bar moves
    return result, out, summary


def test_good_bags_match_egox_process_and_failures_are_reported(prior_batch):
    result, out, reference = prior_batch
    assert result.returncode == 1, result.stderr[-3000:]       # some bags failed, the others finished
    report = json.loads((out / "batch.json").read_text())
    names = [b["name"] for b in report["bags"]]
    assert names == ["tum_fr1_rpy", "tum_fr1_rpy-2", "third", "broken", "missing"]
    for record in report["bags"][:3]:
        bag_out = out / record["name"]
        assert record["status"] == "ok" and record["reason"] is None, record
        assert (bag_out / "bag" / "metadata.yaml").exists() and (bag_out / "contact_sheet.png").stat().st_size > 10_000
        metrics = json.loads((bag_out / "metrics.json").read_text())
        assert metrics["summary"]["frames_published"] == reference["frames_published"] == FRAMES
        assert metrics["summary"]["mean_coverage"] == pytest.approx(reference["mean_coverage"], abs=1e-4)
        assert record["frames"] == FRAMES and record["published"] == metrics["run"]["frames_published"] == FRAMES
        assert record["dropped"] == metrics["run"]["dropped"]
        assert record["mean_coverage"] == pytest.approx(reference["mean_coverage"], abs=1e-4)
        assert record["wall_time_s"] > 0 and record["generator"] == "prior"
    broken, missing = report["bags"][3:]
    assert broken["status"] == missing["status"] == "failed"
    assert "cannot open" in broken["reason"] and "\n" not in broken["reason"]
    assert "does not exist" in missing["reason"]
    assert not (out / "missing" / "metrics.json").exists()
    summary = report["summary"]
    assert (summary["bags"], summary["succeeded"], summary["failed"]) == (5, 3, 2)
    assert (summary["frames"], summary["published"]) == (3 * FRAMES, 3 * FRAMES)
    assert summary["failed_bags"] == ["broken", "missing"]
    # one line per failed bag on stderr as it happens, and the table on stdout
    assert "egox batch: broken: failed: cannot open" in result.stderr
    assert "Traceback" not in result.stderr
    table = result.stdout
    for name in names:
        assert name in table
    assert "FAILED: input bag" in table and "3 ok, 2 failed" in table
    # the bars (tqdm, on stderr): every bag, and every frame of the good ones (the workers' bars are disabled, and
    # the frame count once came from them: "frames: 0/150")
    assert re.search(r"egox batch: 100%.*\b5/5\b", result.stderr), result.stderr[-3000:]
    assert re.search(rf"frames: 100%.*\b{3 * FRAMES}/{3 * FRAMES}\b", result.stderr), result.stderr[-3000:]
    ray_info = report["ray"]
    assert ray_info["address"] == "local" and ray_info["node_ip"] == "127.0.0.1"     # loopback only
    assert ray_info["worker_kind"] == "tasks" and ray_info["workers"] == 2 and ray_info["cpus_per_bag"] == 1


def test_bad_arguments_exit_2_without_starting_ray(tmp_path):
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "x").write_text("mine")
    cases = [(["-o", taken], "not empty"),
             (["-o", tmp_path / "o1", "-p", "qos.input_depth:=5.0"], "must be integer"),
             (["-o", tmp_path / "o2", "--num-cpus", "0"], "at least 1"),
             (["-o", tmp_path / "o3", "-p", "generator.backend:=ray"], "generator.backend")]
    results = run_concurrently([["batch", SAMPLE, *args] for args, _ in cases])
    for (args, message), result in zip(cases, results):
        assert result.returncode == 2 and message in result.stderr, (args, result.stderr[-2000:])
        assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr
    assert (taken / "x").read_text() == "mine" and sorted(p.name for p in taken.iterdir()) == ["x"]
    assert not any((tmp_path / name).exists() for name in ("o1", "o2", "o3"))


def test_tiny_egox_model_loads_once_per_actor(tmp_path):
    """Two copies on one actor (--num-cpus 1): every frame published (the last partial clip padded), by the egox
    generator (not the prior fallback), both bags by the same process with one model load."""
    from egox_ros.core.egox.tiny import save_tiny_lora, save_tiny_model
    model, lora = save_tiny_model(tmp_path / "model"), save_tiny_lora(tmp_path / "lora")
    tiny = {"generator.name": "egox", "egox.model_path": model, "egox.lora_path": lora, "egox.exo_width": 64,
            "egox.exo_height": 32, "ego_camera.width": 32, "ego_camera.height": 32, "ego_camera.fx": 16.0,
            "ego_camera.fy": 16.0, "ego_camera.cx": 15.5, "ego_camera.cy": 15.5, "egox.clip_frames": 5,
            "egox.steps": 2}
    params = [a for key, value in tiny.items() for a in ("-p", f"{key}:={value}")]
    bags = [copy_sample(tmp_path / "in" / "one"), copy_sample(tmp_path / "in" / "two")]
    out = tmp_path / "out"
    result = egox("batch", *bags, "-o", out, "--params-file", PARAMS, "--num-cpus", 1, *params)
    assert result.returncode == 0, result.stderr[-3000:]
    report = json.loads((out / "batch.json").read_text())
    assert report["ray"]["worker_kind"].startswith("actors") and report["ray"]["workers"] == 1
    pids = set()
    for record in report["bags"]:
        assert record["status"] == "ok" and record["generator"] == "egox", record
        assert record["frames"] == record["published"] == FRAMES and not record["dropped"]
        assert record["worker"]["generator_loads"] == 1
        pids.add(record["worker"]["pid"])
        metrics = json.loads((out / record["name"] / "metrics.json").read_text())
        assert metrics["summary"]["generator"] == "egox" and metrics["summary"]["frames_published"] == FRAMES
    assert len(pids) == 1
    assert report["summary"]["published"] == 2 * FRAMES and report["summary"]["failed"] == 0
