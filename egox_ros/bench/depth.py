"""`egox bench depth`: per-frame time of each depth source at 640x480, on real TUM RGB-D frames.

Sources: `topic` (decoding a 16UC1 depth image, what the node does per depth message), `model` (each family of
tiny random checkpoints built from configs, batch 1 and batch 4), `video` (the built-in stabiliser over a tiny
relative model) and `video` + alignment to a metric model (what `depth.source: video` costs per frame).
Tiny models measure the code path and the pre/post-processing at full resolution, not a real network's cost.
With `--device cuda` the same runs on the GPU, plus any real checkpoints listed (comma-separated local folders)
in the environment variable EGOX_BENCH_DEPTH_MODELS, e.g. Depth Anything V2 Small / Base, Metric Indoor.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

import numpy as np
import torch

from egox_ros.bench.common import machine_info, median_ms

SECTION = "depth"
FAMILIES = ("depth_anything_metric", "depth_anything_relative", "dpt", "glpn", "zoedepth")
REAL_MODELS_ENV = "EGOX_BENCH_DEPTH_MODELS"


def _frames(count: int) -> tuple[list[np.ndarray], list[np.ndarray], str]:
    """`count` real 640x480 RGB frames and depth maps (TUM fr1_rpy), or random ones if the data is not there."""
    try:
        from egox_ros.tools.tum import TumSequence
        seq = TumSequence("fr1_rpy_60")
        frames = [seq[i] for i in range(count)]
        return [f.rgb for f in frames], [f.depth_m for f in frames], "TUM RGB-D fr1_rpy (640x480)"
    except (FileNotFoundError, ImportError):
        rng = np.random.default_rng(0)
        return ([rng.integers(0, 256, (480, 640, 3), dtype=np.uint8) for _ in range(count)],
                [rng.uniform(0.5, 4.0, (480, 640)).astype(np.float32) for _ in range(count)], "random 640x480")


def _per_frame_ms(fn, frames: int, repeats: int) -> float:
    return round(median_ms(fn, repeats) / frames, 3)


def _model_rows(path: Path, label: str, device: str, rgb: list[np.ndarray], repeats: int) -> list[dict]:
    from egox_ros.core.depth.hf_model import HfDepthModel, HfDepthModelConfig
    rows = []
    for batch in (1, 4):
        model = HfDepthModel(HfDepthModelConfig(model_path=str(path), batch_size=batch), device)
        frames = rgb[:batch]
        ms = _per_frame_ms(lambda: model.estimate(frames), len(frames), repeats)
        rows.append({"source": "model", "model": label, "kind": model.kind, "dtype": str(model.dtype).split(".")[-1],
                     "batch": batch, "ms_per_frame": ms,
                     "parameters": sum(p.numel() for p in model.model.parameters())})
    return rows


def run_all(quick: bool = False, device: str = "cpu", progress=None) -> dict:
    from egox_ros.core.depth.estimator import AsyncDepthEstimator
    from egox_ros.core.depth.hf_model import HfDepthModel, HfDepthModelConfig
    from egox_ros.core.depth.temporal import TemporalDepthConfig, TemporalRelativeDepth
    from egox_ros.core.depth.tiny import save_tiny_depth_model
    from egox_ros.core.io.image_codec import decode_depth_m, encode_image
    repeats = 2 if quick else 5
    rgb, depth, data = _frames(4)
    result = {"benchmark": SECTION, "quick": quick, "machine": machine_info(), "device": device, "frames": data,
              "rows": []}
    rows = result["rows"]
    raw, step = encode_image(np.nan_to_num(depth[0] * 1000).astype(np.uint16), "16UC1")
    rows.append({"source": "topic", "model": "16UC1 depth image decode", "kind": "metric", "batch": 1,
                 "ms_per_frame": _per_frame_ms(lambda: decode_depth_m(raw, "16UC1", 480, 640, step, False), 1,
                                               repeats * 4)})
    with tempfile.TemporaryDirectory() as tmp:
        paths = {f: save_tiny_depth_model(Path(tmp) / f, f) for f in FAMILIES}
        for family in FAMILIES[:2] if quick else FAMILIES:
            rows += _model_rows(paths[family], f"tiny {family}", device, rgb, repeats)
            if progress:
                progress(family)
        relative = HfDepthModel(HfDepthModelConfig(model_path=str(paths["depth_anything_relative"]), batch_size=1),
                                device)
        video = TemporalRelativeDepth(relative, TemporalDepthConfig())
        frame = iter(range(10**9))
        rows.append({"source": "video", "model": "stabilised tiny depth_anything_relative", "kind": video.kind,
                     "batch": 1, "ms_per_frame": _per_frame_ms(lambda: video.estimate([rgb[next(frame) % 4]]), 1,
                                                               repeats)})
        metric = HfDepthModel(HfDepthModelConfig(model_path=str(paths["depth_anything_metric"]), batch_size=1),
                              device)
        estimator = AsyncDepthEstimator(metric, TemporalRelativeDepth(relative, TemporalDepthConfig()))
        try:   # the estimator's own per-frame path, timed on this thread (the node runs it on a worker)
            rows.append({"source": "video + alignment", "model": "tiny metric + stabilised tiny relative",
                         "kind": "metric", "batch": 1,
                         "ms_per_frame": _per_frame_ms(lambda: estimator.estimate_now(rgb[next(frame) % 4]), 1,
                                                       repeats)})
        finally:
            estimator.close()
        if progress:
            progress("video")
    for path in filter(None, os.environ.get(REAL_MODELS_ENV, "").split(",")):
        rows += _model_rows(Path(path), Path(path).name, device, rgb, repeats)
        if progress:
            progress(Path(path).name)
    result["real_models"] = os.environ.get(REAL_MODELS_ENV, "") or None
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores), GPU: {m['gpu'] or 'none'}, device "
             f"{result['device']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
             + (" (quick run)" if result["quick"] else ""), "", f"Frames: {result['frames']}.", "",
             "| source | model | kind | batch | ms per frame | parameters |", "|---|---|---|---|---|---|"]
    for r in result["rows"]:
        lines.append(f"| {r['source']} | {r['model']} | {r['kind']} | {r['batch']} | {r['ms_per_frame']} "
                     f"| {r.get('parameters', '-')} |")
    if not result["real_models"]:
        lines += ["", f"No real checkpoints in this run (none can be downloaded here): set {REAL_MODELS_ENV} to "
                      "local folders, e.g. of depth-anything/Depth-Anything-V2-Small-hf and "
                      "Depth-Anything-V2-Metric-Indoor-Small-hf, and run `egox bench depth --device cuda "
                      "--write-docs` on a GPU."]
    return "\n".join(lines) + "\n"
