"""`egox bench geometry --quick --json` runs from the command line on the real TUM data and reports what it claims."""
from __future__ import annotations

import json
import sys

import pytest

from conftest import require_tum, run_with_progress

tum = pytest.importorskip("egox_ros.tools.tum")


def test_geometry_bench_quick_run_reports_accuracy_speed_and_scaling():
    require_tum()
    run = run_with_progress([sys.executable, "-m", "egox_ros.cli", "bench", "geometry", "--quick", "--json"])
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


@pytest.fixture(scope="module")
def gga_quick_result():
    run = run_with_progress([sys.executable, "-m", "egox_ros.cli", "bench", "gga", "--quick", "--json"])
    assert run.returncode == 0, run.stderr
    return json.loads(run.stdout)


def test_gga_bench_quick_run_checks_exactness_and_times_every_method(gga_quick_result):
    result = gga_quick_result
    assert result["device"] == "cpu" and result["released_size"] is None and "GPU" in result["released_size_note"]
    for row in result["small"]:
        assert row["chunked_max_abs_err"] <= 1e-5
        assert row.get("flex_max_abs_err", 0.0) <= 1e-5
        assert row["plain_sdpa_ms"] > 0 and row["chunked_ms"] > 0 and row["dense_bias_ms"] > 0
        assert row["sdpa_backend"] and row["dense_bias_bytes"] == row["tokens"] ** 2 * 4   # fp32 L x L
        assert row["plain_sdpa_peak_extra_bytes"] is None       # peak memory is measured on CUDA only


def test_gga_bench_without_gpu_says_so_and_runs_the_full_step_code_on_a_tiny_transformer(gga_quick_result):
    from egox_ros.bench.gga import GPU_COMMAND, markdown
    result = gga_quick_result
    assert result["full_step"] is None and GPU_COMMAND in result["full_step_note"]
    tiny = result["full_step_tiny_cpu"]
    assert "not a performance number" in tiny["note"]
    assert tiny["tokens"] == 80 and tiny["ego_tokens"] == 32 and tiny["latent_shape"] == [1, 36, 2, 8, 20]
    assert set(tiny["variants"]) >= {"plain", "gga_chunked"}
    for v in tiny["variants"].values():
        assert v["ms"] > 0 and v["finite"]
    # GGA changes the step's output; the flex and chunked evaluations of it agree far more closely than that.
    effect = tiny["gga_chunked_vs_plain_max_abs_diff"]
    assert effect > 1e-4 * tiny["output_max_abs"]
    if "gga_flex" in tiny["variants"]:
        assert tiny["flex_vs_chunked_max_abs_diff"] < 1e-2 * effect
    text = markdown(result)
    assert "No GPU in this run" in text and f"`{GPU_COMMAND}`" in text and "not a performance number" in text


def test_gga_bench_released_size_code_path_at_a_tiny_size_on_cpu():
    """What `--device cuda` runs at 28,028 tokens (case with check=False, then markdown), here at 80 tokens."""
    import torch

    from egox_ros.bench.common import machine_info
    from egox_ros.bench.gga import TINY_CANVAS, canvas_tables, case, dense_bias, markdown
    from egox_ros.core.attention.gga import gga_bias_dense
    t = canvas_tables(TINY_CANVAS)
    assert torch.equal(t.query_is_ego, TINY_CANVAS.is_ego()) and torch.equal(t.query_frame, TINY_CANVAS.frame_of())
    assert torch.equal(dense_bias(t, torch.float32, chunk_rows=7), gga_bias_dense(t))
    row = case(TINY_CANVAS, heads=2, dim=16, device="cpu", dtype=torch.float32, repeats=1, check=False)
    assert row["tokens"] == 80 and row["plain_sdpa_ms"] > 0 and row["chunked_ms"] > 0 and row["dense_bias_ms"] > 0
    assert row.get("flex_vs_chunked_max_abs_diff", 0.0) < 1e-5
    text = markdown({"machine": machine_info(), "device": "cpu", "quick": True, "target_ratio": 1.15,
                     "small": [], "released_size": row})
    assert "| GGA chunked |" in text and "| dense bias (L x L through SDPA) |" in text


def test_generator_bench_runs_the_sampling_loop_and_says_what_needs_a_gpu():
    from egox_ros.bench import generator
    result = generator.run_all(quick=True)
    rows = {r["gga"]: r for r in result["tiny_cpu"]}
    assert set(rows) == {"chunked", "off"}
    assert all(r["frames_out"] == 5 and r["steps"] == 2 and r["clip_s"] > 0 for r in rows.values())
    assert result["full_size"] is None and generator.GPU_COMMAND in result["full_size_note"]
    text = generator.markdown(result)
    assert "not measured here" in text and generator.GPU_COMMAND in text
    assert result["machine"]["versions"]["diffusers"]


def test_depth_bench_times_every_source_at_640x480():
    from egox_ros.bench import depth
    result = depth.run_all(quick=True)
    sources = {r["source"] for r in result["rows"]}
    assert sources == {"topic", "model", "video", "video + alignment"}
    assert all(r["ms_per_frame"] > 0 for r in result["rows"])
    kinds = {r["model"]: r["kind"] for r in result["rows"]}
    assert kinds["tiny depth_anything_metric"] == "metric" and kinds["tiny depth_anything_relative"] == \
        "relative_inverse"
    assert depth.REAL_MODELS_ENV in depth.markdown(result)


def test_demonstrator_bench_times_detector_head_pose_and_prior_path_on_real_frames():
    require_tum()
    pytest.importorskip("mediapipe")
    from egox_ros.bench import demonstrator
    result = demonstrator.run_all(quick=True, frames=4)
    assert result["machine"]["versions"]["mediapipe"] and result["machine"]["cpu_cores"] >= 1
    assert result["detector"]["person_frames"]["n"] == 12 and result["detector"]["person_frames"]["median_ms"] > 0
    assert result["detector"]["empty_frames"]["p90_ms"] > 0
    assert all(v > 0 for v in result["head_pose_ms"].values())
    assert result["detection"]["head_found"] >= 10 and not result["detection"]["false_positive_frames"]
    assert all(0 < s < 0.05 for s in result["stability"]["depth_raw_std_m"])   # he sits still; depth pins him
    rows = {(r["mode"], r["competing_busy_process"]): r for r in result["prior_path"]["rows"]}
    assert set(rows) == {(m, b) for m in ("sequential", "pipelined") for b in (False, True)}
    assert all(r["frames"] == 4 and r["fps"] > 0 and r["rendered_with_head"] == 4 for r in rows.values())
    assert "| pipelined | yes |" in demonstrator.markdown(result)


def test_prior_bench_speed_run_times_the_kernel_and_its_reference_on_one_thread():
    # `egox bench prior`'s speed part on real TUM frames: the soft kernel and the torch reference it replaced are both
    # timed, wall and CPU, on one torch thread (restored afterwards); the table shows both rows. No speed is asserted.
    require_tum()
    import torch

    from egox_ros.bench import prior
    threads = torch.get_num_threads()
    sp = prior.speed("cpu", repeats=1)
    assert torch.get_num_threads() == threads and sp["torch_threads"] == 1
    for name in ("soft", "soft_2threads", "soft_torch", "hard_r1", "hard_r2"):
        assert sp[f"{name}_render_ms"] > 0 and sp[f"{name}_render_cpu_ms"] > 0
    assert sp["window_points"] > 50_000 and sp["fusion_cpu_ms"] > 0
    result = {"machine": {"date": "d", "cpu": "c", "cpu_cores": 2, "torch_threads": 2, "memory_gb": 1, "gpu": None,
                          "versions": {}}, "quick": True, "config": {"splat_radius_px": 5.0, "points_per_pixel": 20},
              "accuracy": {}, "speed": sp, "speed_repeats": 1}
    table = prior.markdown(result | {"accuracy": {tum.SEQUENCES[0]: {
        "mean": {k: {"holes": 0.1, "psnr_db": 20.0, "psnr_db_on_common": 20.0} for k in
                 ("soft", "soft_offset0", "hard_r1", "hard_r2")} | {"mask_iou_soft_hard_r1": 0.9},
        "reference_check": {"crop": [40, 32], "same_nearest_point_fraction": 1.0, "max_abs_color_diff": 0}}}})
    assert f"| {sp['window_points']} (wall) |" in table and f"| {sp['window_points']} (CPU) |" in table
    # The still camera's path: the default fusion ran its static average (at most one point per stride pixel).
    st = sp["still"]
    assert 30_000 < st["window_points"] <= 320 * 240 and st["fusion_cpu_ms"] > 0 and st["soft_cpu_ms"] > 0
    assert f"| {st['window_points']} (still camera, CPU) | {st['fusion_cpu_ms']} |" in table
    assert "torch threads 1" in table
    assert f"The kernel on 2 threads (`runtime.splat_threads` 2; the wall time counts, the CPU time is more than " \
           f"one thread's): {sp['soft_2threads_render_ms']} ms per render" in table
