"""`egox bench geometry --quick --json` runs from the command line on the real TUM data and reports what it claims."""
from __future__ import annotations

import json
import subprocess
import sys

import pytest

tum = pytest.importorskip("egox_ros.tools.tum")


def test_geometry_bench_quick_run_reports_accuracy_speed_and_scaling():
    try:
        tum.tum_root()
    except FileNotFoundError as e:
        pytest.skip(str(e))
    run = subprocess.run([sys.executable, "-m", "egox_ros.cli", "bench", "geometry", "--quick", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["machine"]["versions"]["torch"] and result["machine"]["cpu_cores"] >= 1
    assert set(result["accuracy"]) == {f"{s}/stride{k}" for s in tum.SEQUENCES for k in (1, 2)}
    for name, acc in result["accuracy"].items():
        assert set(acc["gaps"]) == {"5", "10", "20"}
        for gap, g in acc["gaps"].items():
            mean = g["mean"]
            # The warped prior beats the unwarped frame on the same pixels, and open3d renders the same cloud alike.
            assert mean["single"]["psnr_db"] > mean["no_warp_on_covered"]["psnr_db"], (name, gap)
            assert mean["open3d"]["mask_iou"] > 0.99 and mean["open3d"]["same_color_fraction"] > 0.99, (name, gap)
            assert mean["open3d"]["depth_abs_diff_m"] < 1e-3
    for sp in result["speed"]:
        assert sp["prior_path_ms"] > 0 and sp["window_points"] > 0
    assert [r["window_frames"] for r in result["scaling"]["rows"]] == [1, 2, 4, 8]


def test_gga_bench_quick_run_checks_exactness_and_times_every_method():
    run = subprocess.run([sys.executable, "-m", "egox_ros.cli", "bench", "gga", "--quick", "--json"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["device"] == "cpu" and result["released_size"] is None and "GPU" in result["released_size_note"]
    for row in result["small"]:
        assert row["chunked_max_abs_err"] <= 1e-5
        assert row.get("flex_max_abs_err", 0.0) <= 1e-5
        assert row["plain_sdpa_ms"] > 0 and row["chunked_ms"] > 0 and row["dense_bias_ms"] > 0
