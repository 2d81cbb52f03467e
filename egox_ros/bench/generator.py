"""`egox bench generator`: the whole EgoX sampling loop (encode, denoise with GGA, decode) and its GPU memory.

CPU: the tiny random checkpoint (`egox tiny-model`) on a tiny canvas: a check of the code path and its overheads,
not a performance number for the real model.
CUDA: a full-size, randomly initialised Wan 2.1 I2V 14B transformer (bf16) at the released canvas (49 frames,
448 x (784 + 448)), with the tiny VAE and the prompt / CLIP embeddings given directly (the 5.7 B text encoder and
the CLIP encoder are not part of this measurement): seconds per denoising step and peak GPU memory for each
`egox.offload` mode (none / model / sequential), with GGA (flex) and without.
"""
from __future__ import annotations

import time

import numpy as np
import torch

from egox_ros.bench.common import machine_info
from egox_ros.bench.gga import (IMAGE_TOKENS, RELEASED_CANVAS, TEXT_TOKENS, WAN_I2V_14B_480P_CONFIG,
                                build_transformer, canvas_tables)
from egox_ros.core.attention.directions import CanvasLayout

SECTION = "generator"
GPU_COMMAND = "egox bench generator --device cuda --write-docs"


def _pipeline(transformer, seed: int = 0):
    """EgoxPipeline around `transformer` with the tiny VAE and the released scheduler settings; no encoders."""
    from egox_ros.core.egox.pipeline import EgoxPipeline
    from egox_ros.core.egox.tiny import tiny_pipeline
    tiny = tiny_pipeline(seed)
    pipe = EgoxPipeline(tokenizer=None, text_encoder=None, vae=tiny.vae, scheduler=tiny.scheduler,
                        image_processor=None, image_encoder=None, transformer=transformer)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _inputs(layout: CanvasLayout, frames: int, config: dict, device: str, dtype: torch.dtype) -> dict:
    """Random uint8 exo / prior videos for `layout` (16 px per token) and random text / image embeddings."""
    rng = np.random.default_rng(0)
    h, we, wg = layout.rows * 16, layout.exo_cols * 16, layout.ego_cols * 16
    g = torch.Generator().manual_seed(0)
    return {"exo_video": rng.integers(0, 256, (frames, h, we, 3), dtype=np.uint8),
            "prior_video": rng.integers(0, 256, (frames, h, wg, 3), dtype=np.uint8),
            "prompt_embeds": torch.randn(1, TEXT_TOKENS, config["text_dim"], generator=g).to(device, dtype),
            "negative_prompt_embeds": torch.randn(1, TEXT_TOKENS, config["text_dim"], generator=g).to(device, dtype),
            "image_embeds": torch.randn(1, IMAGE_TOKENS, config["image_dim"], generator=g).to(device, dtype)}


def clip_run(pipe, layout: CanvasLayout, frames: int, steps: int, device: str, gga_backend: str | None) -> dict:
    """Generate one clip of `steps` steps; seconds in total and per step (two transformer passes), peak CUDA memory."""
    inputs = _inputs(layout, frames, pipe.transformer.config, device, pipe.transformer.dtype)
    tables = None
    if gga_backend is not None:
        pipe.enable_gga(backend=gga_backend)
        tables = canvas_tables(layout)
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    step_times = []
    last = [time.perf_counter()]

    def on_step(i, t, latents):
        if cuda:
            torch.cuda.synchronize()
        now = time.perf_counter()
        step_times.append(now - last[0])
        last[0] = now
    started = time.perf_counter()
    generator, posterior = pipe.seeded_generators(0)      # as the egox generator: posterior noise on the device
    out = pipe(**inputs, num_inference_steps=steps, guidance_scale=5.0, gga_tables=tables, generator=generator,
               posterior_generator=posterior, step_callback=on_step)
    if cuda:
        torch.cuda.synchronize()
    total = time.perf_counter() - started
    row = {"gga": gga_backend or "off", "steps": steps, "clip_s": round(total, 3),
           # the first interval also holds the encoders and the flex compile: the median of the others per step
           "step_s": round(float(np.median(step_times[1:] or step_times)), 3),
           "encode_and_first_step_s": round(step_times[0], 3), "frames_out": int(out.ego.shape[0])}
    if cuda:
        row["peak_gpu_gb"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    return row


def full_size(device: str, steps: int, progress=None) -> dict:
    """The full-size transformer in bf16 under each offload mode (see the module docstring)."""
    config = WAN_I2V_14B_480P_CONFIG
    result = {"canvas": "49 frames, 448 x (784 + 448), 28,028 tokens", "modes": []}
    transformer = build_transformer(config, "cpu", torch.bfloat16)   # offload modes start from CPU memory
    result["transformer_parameters"] = sum(p.numel() for p in transformer.parameters())
    pipe = _pipeline(transformer)
    for mode in ("none", "model", "sequential"):
        if mode == "none":
            pipe.to(device)
        elif mode == "model":
            pipe.to("cpu")
            pipe.enable_model_cpu_offload(device=device)
        else:
            pipe.remove_all_hooks()
            pipe.enable_sequential_cpu_offload(device=device)
        for backend in ("flex", None):
            try:
                row = clip_run(pipe, RELEASED_CANVAS, 49, steps, device, backend)
            except Exception as e:  # noqa: BLE001 - out of memory, or a mode that fails: record it, measure the rest
                row = {"gga": backend or "off", "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200]}"}
            if pipe.gga is not None:
                pipe.gga.tables = None
            result["modes"].append({"offload": mode, **row})
            if progress:
                progress(f"offload {mode}, gga {backend or 'off'}")
            torch.cuda.empty_cache()
        if mode == "sequential":   # one sequential run is enough to show its memory; it streams every weight
            break
    return result


def run_all(quick: bool = False, device: str = "cpu", progress=None) -> dict:
    from egox_ros.core.egox.tiny import tiny_pipeline
    result = {"benchmark": SECTION, "quick": quick, "machine": machine_info(), "device": device}
    tiny = _pipeline(tiny_pipeline().transformer)
    layout = CanvasLayout(frames=2, rows=2, exo_cols=4, ego_cols=2)
    result["tiny_cpu"] = [clip_run(tiny, layout, 5, 2 if quick else 4, "cpu", backend)
                          for backend in ("chunked", None)]
    if progress:
        progress("tiny checkpoint on CPU")
    if device.startswith("cuda"):
        result["full_size"] = full_size(device, steps=2 if quick else 3, progress=progress)
    else:
        result["full_size"] = None
        result["full_size_note"] = (f"needs a GPU (the transformer alone is 32.8 GB in bf16): `{GPU_COMMAND}`")
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores), GPU: {m['gpu'] or 'none'}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + (" (quick run)" if result["quick"] else ""),
             "", "Tiny random checkpoint, 5 frames on a 64 + 32 x 32 canvas, CPU (a code-path check, not the real "
             "model's speed):", "", "| GGA | steps | clip s | s per step |", "|---|---|---|---|"]
    for r in result["tiny_cpu"]:
        lines.append(f"| {r['gga']} | {r['steps']} | {r['clip_s']} | {r['step_s']} |")
    full = result["full_size"]
    if full is None:
        lines += ["", f"Full size: not measured here, {result['full_size_note']}."]
    else:
        lines += ["", f"Full-size random transformer ({full['transformer_parameters'] / 1e9:.1f} B parameters, bf16), "
                      f"{full['canvas']}, tiny VAE, embeddings given:", "",
                  "| offload | GGA | s per step (2 passes) | encode + first step s | peak GPU GB |", "|---|---|---|---|---|"]
        for r in full["modes"]:
            if "error" in r:
                lines.append(f"| {r['offload']} | {r['gga']} | {r['error']} | | |")
            else:
                lines.append(f"| {r['offload']} | {r['gga']} | {r['step_s']} | {r['encode_and_first_step_s']} "
                             f"| {r.get('peak_gpu_gb', '-')} |")
    return "\n".join(lines) + "\n"
