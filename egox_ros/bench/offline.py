"""`egox bench offline`: the bundled sample through `egox process` (one process, no DDS) and `egox replay` (a live
node over DDS, lockstep): wall time, frames/s and whether the two agree."""
from __future__ import annotations

import os
import statistics
import tempfile
from pathlib import Path

from egox_ros.bench.common import machine_info

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT / "sample" / "tum_fr1_rpy"
PARAMS = str(ROOT / "sample" / "egox_sample.yaml")


def _load() -> float:
    """The machine's 1-minute load average (what else ran meanwhile)."""
    try:
        return round(os.getloadavg()[0], 2)
    except OSError:
        return float("nan")


def run_all(quick: bool = False, device: str = "cpu", progress=None) -> dict:
    from egox_ros.ros.offline.process import process
    from egox_ros.ros.offline.replay import replay
    repeats = 1 if quick else 3
    overrides = [] if device == "cpu" else [f"generator.device:={device}"]
    runs: dict[str, list[dict]] = {"process": [], "replay": []}
    with tempfile.TemporaryDirectory(prefix="egox_bench_offline_") as tmp:
        for i in range(repeats):
            for mode, fn in (("process", process), ("replay", replay)):
                load_before = _load()
                result = fn(SAMPLE, Path(tmp) / f"{mode}{i}", PARAMS, overrides, progress_bar=False)
                run, summary = result.metrics["run"], result.metrics["summary"]
                runs[mode].append({"wall_time_s": run["wall_time_s"], "frames": result.images_sent,
                                   "frames_published": summary["frames_published"],
                                   "mean_coverage": summary["mean_coverage"],
                                   "mean_masked_psnr_db": summary["mean_masked_psnr_db"],
                                   "load_average_before": load_before})
                if progress:
                    progress(f"{mode} {i + 1}/{repeats}")
    summary = {}
    for mode, rs in runs.items():
        wall = statistics.median(r["wall_time_s"] for r in rs)
        summary[mode] = {"median_wall_time_s": round(wall, 3), "frames_per_second": round(rs[0]["frames"] / wall, 2),
                         "frames_published": rs[0]["frames_published"], "mean_coverage": rs[0]["mean_coverage"],
                         "mean_masked_psnr_db": rs[0]["mean_masked_psnr_db"]}
    summary["speedup_process_over_replay"] = round(summary["replay"]["median_wall_time_s"] /
                                                   summary["process"]["median_wall_time_s"], 2)
    return {"machine": machine_info(), "quick": quick, "device": device, "repeats": repeats, "runs": runs,
            "summary": summary}


def markdown(result: dict) -> str:
    m, s = result["machine"], result["summary"]
    loads = [r["load_average_before"] for rs in result["runs"].values() for r in rs]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores, {m['memory_gb']} GB), GPU: {m['gpu'] or 'none'}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + (" (quick run)" if result["quick"] else ""),
             "",
             f"The bundled sample (50 real TUM fr1_rpy frames, 320x240, with depth and TF) with "
             f"`sample/egox_sample.yaml` (prior generator, device {result['device']}), median of {result['repeats']} "
             f"runs each. Wall time from the first frame to the last output (the report and start-up excluded). "
             f"1-minute load average before the runs: {min(loads)} to {max(loads)} (other processes on the machine).",
             "",
             "| path | wall time s | frames/s | published | mean coverage | mean masked PSNR dB |",
             "|---|---|---|---|---|---|"]
    for mode, label in (("process", "`egox process` (one process, no DDS)"),
                        ("replay", "`egox replay` (live node over DDS, lockstep)")):
        r = s[mode]
        lines.append(f"| {label} | {r['median_wall_time_s']} | {r['frames_per_second']} | {r['frames_published']} "
                     f"| {r['mean_coverage']:.4f} | {r['mean_masked_psnr_db']:.2f} |")
    lines += ["", f"`egox process` is {s['speedup_process_over_replay']}x as fast here: no DDS transport, no "
              "real-time pacing or lockstep round trips, no second process. Both publish the same frames with the "
              "same metrics (`test/test_process.py` checks them frame for frame).", ""]
    return "\n".join(lines)
