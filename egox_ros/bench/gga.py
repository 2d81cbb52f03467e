"""`egox bench gga`: geometry-guided attention against plain attention and the dense-bias method.

Every device: small sizes (fp32) with the exactness of the chunked and FlexAttention evaluations against a dense fp64
reference, and the time of each against plain SDPA and the dense-bias method (the released code's: an L x L bias).
On CUDA (`--device cuda`), also:
- the released size (28,028 tokens, 40 heads x 128, bf16): plain SDPA (flash where it runs), GGA FlexAttention, GGA
  chunked and the dense-bias method, with peak memory above q/k/v and the "no L x L allocation" check;
- one denoising step (two transformer passes, classifier-free guidance) of a randomly initialised full-size
  Wan 2.1 I2V 14B transformer in bf16, with diffusers' plain attention, GGA flex and GGA chunked, with peak memory.
Without CUDA the full step runs on a tiny random transformer instead: a code-path check, not a performance number.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F

from egox_ros.bench.common import machine_info, median_ms
from egox_ros.core.attention.directions import CanvasLayout
from egox_ros.core.attention.gga import (GgaTables, flex_attention_available, gga_attention_chunked,
                                         gga_attention_flex, gga_attention_reference, gga_bias_rows)

SECTION = "gga"
GPU_COMMAND = "egox bench gga --device cuda --write-docs"
TARGET_RATIO = 1.15          # GGA attention time / plain attention time at the released size
# 13 latent frames x 28 rows x (49 exo + 28 ego) columns = 28,028 tokens (10,192 ego).
RELEASED_CANVAS = CanvasLayout(frames=13, rows=28, exo_cols=49, ego_cols=28)
TINY_CANVAS = CanvasLayout(frames=2, rows=4, exo_cols=6, ego_cols=4)   # 80 tokens, for the CPU code-path check
# transformer/config.json of Wan-AI/Wan2.1-I2V-14B-480P-Diffusers: 16.4 B parameters.
WAN_I2V_14B_480P_CONFIG = dict(
    patch_size=(1, 2, 2), num_attention_heads=40, attention_head_dim=128, in_channels=36, out_channels=16,
    text_dim=4096, freq_dim=256, ffn_dim=13824, num_layers=40, cross_attn_norm=True, qk_norm="rms_norm_across_heads",
    eps=1e-6, image_dim=1280, added_kv_proj_dim=5120, rope_max_seq_len=1024)
TEXT_TOKENS = 512            # UMT5 tokens; diffusers' Wan I2V attention hard-codes this context length
IMAGE_TOKENS = 257           # CLIP ViT-H/14 tokens of the conditioning image
GUIDANCE = 5.0


def _random_tables(is_ego: torch.Tensor, frame: torch.Tensor, frames: int, device, seed: int) -> GgaTables:
    g = torch.Generator().manual_seed(seed)
    length = len(is_ego)
    qd = F.normalize(torch.randn(length, 3, generator=g), dim=-1)
    kd = F.normalize(torch.randn(frames, length, 3, generator=g), dim=-1) * (~is_ego)[None, :, None]
    return GgaTables(qd, frame, is_ego, kd).to(device)


def make_tables(frames: int, exo_per_frame: int, ego_per_frame: int, device="cpu", seed: int = 0) -> GgaTables:
    """Random unit directions; per frame all exo tokens, then all ego tokens (float32)."""
    per = exo_per_frame + ego_per_frame
    is_ego = torch.tensor(([False] * exo_per_frame + [True] * ego_per_frame) * frames)
    return _random_tables(is_ego, torch.arange(frames).repeat_interleave(per), frames, device, seed)


def canvas_tables(layout: CanvasLayout, device="cpu", seed: int = 0) -> GgaTables:
    """Random unit directions in the canvas token order (frame, row, then exo columns and ego columns; float32)."""
    return _random_tables(layout.is_ego(), layout.frame_of(), layout.frames, device, seed)


def dense_bias(tables: GgaTables, dtype: torch.dtype, chunk_rows: int = 2048) -> torch.Tensor:
    """The dense-bias method's (L, L) bias in `dtype` (L x L x itemsize bytes), filled chunk_rows rows at a time so
    that building it needs no (L, L, 3) temporary."""
    length = tables.length
    device = tables.query_dir.device
    out = torch.empty(length, length, dtype=dtype, device=device)
    for start in range(0, length, chunk_rows):
        rows = torch.arange(start, min(start + chunk_rows, length), device=device)
        out[start:start + len(rows)] = gga_bias_rows(tables, rows)
    return out


def _plain_sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor):
    """(fn, backend): plain SDPA restricted to the flash backend where that runs, else torch's default choice."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    def flash():
        with sdpa_kernel([SDPBackend.FLASH_ATTENTION]):
            return F.scaled_dot_product_attention(q, k, v)
    try:
        flash()
        return flash, "flash"
    except RuntimeError as e:
        reason = str(e).strip().splitlines()[0][:120] if str(e).strip() else type(e).__name__
        return (lambda: F.scaled_dot_product_attention(q, k, v)), f"default (flash unavailable: {reason})"


_COMPILED_PLAIN_FLEX = None


def _plain_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Compiled FlexAttention without a score_mod: the kernel GGA flex runs on, minus the bias."""
    global _COMPILED_PLAIN_FLEX
    if _COMPILED_PLAIN_FLEX is None:
        from torch.nn.attention.flex_attention import flex_attention
        _COMPILED_PLAIN_FLEX = torch.compile(flex_attention, dynamic=False)
    return _COMPILED_PLAIN_FLEX(q, k, v)


def _timed(fn, repeats: int, device: str, warmup: int = 1) -> tuple[float, int | None]:
    """(median ms of fn() over `repeats` runs after `warmup` runs, peak bytes allocated during the timed runs above
    what was allocated before them: CUDA only, None elsewhere)."""
    cuda = device.startswith("cuda")
    for _ in range(warmup):
        fn()
    if not cuda:
        return median_ms(fn, repeats, warmup=0), None
    torch.cuda.synchronize()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    ms = median_ms(fn, repeats, warmup=0, sync=torch.cuda.synchronize)
    return ms, int(torch.cuda.max_memory_allocated() - base)


def case(layout: CanvasLayout, heads: int, dim: int, device: str, dtype: torch.dtype, repeats: int,
         check: bool) -> dict:
    """One attention size: q, k, v (1, heads, L, dim) in `dtype`; times in ms, memory in bytes (CUDA only).
    check: compare with the dense fp64 reference on the CPU (allocates L x L in fp64: small sizes only)."""
    t = canvas_tables(layout, device)
    length = t.length
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(1, heads, length, dim, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    cuda = device.startswith("cuda")
    lxl = length * length * torch.finfo(dtype).bits // 8
    row = {"tokens": length, "heads": heads, "head_dim": dim, "dtype": str(dtype).replace("torch.", ""),
           "ego_tokens": int(t.query_is_ego.sum()), "dense_bias_bytes": lxl}
    plain, row["sdpa_backend"] = _plain_sdpa(q, k, v)
    row["plain_sdpa_ms"], row["plain_sdpa_peak_extra_bytes"] = _timed(plain, repeats, device)
    row["chunked_ms"], row["chunked_peak_extra_bytes"] = _timed(lambda: gga_attention_chunked(q, k, v, t), repeats,
                                                                device)
    if flex_attention_available():
        gga_attention_flex(q, k, v, t)  # compile once for this shape
        row["flex_ms"], row["flex_peak_extra_bytes"] = _timed(lambda: gga_attention_flex(q, k, v, t), repeats,
                                                              device)
        if cuda and not check:   # released size only: each compiled shape counts against dynamo's recompile limit
            _plain_flex(q, k, v)
            row["flex_plain_ms"], _ = _timed(lambda: _plain_flex(q, k, v), repeats, device)
    if cuda:   # the "no L x L allocation" check
        for key in ("chunked", "flex"):
            if row.get(f"{key}_peak_extra_bytes") is not None:
                row[f"{key}_no_lxl_allocation"] = row[f"{key}_peak_extra_bytes"] < lxl
    bias = None
    try:
        row["dense_bias_build_ms"], _ = _timed(lambda: dense_bias(t, dtype), min(repeats, 3), device)
        bias = dense_bias(t, dtype)
        row["dense_bias_ms"], peak = _timed(lambda: F.scaled_dot_product_attention(q, k, v, attn_mask=bias),
                                            repeats, device)
        row["dense_bias_peak_extra_bytes"] = None if peak is None else peak + lxl   # the bias itself counts
    except torch.OutOfMemoryError as e:
        row["dense_bias_error"] = f"out of memory: {str(e).splitlines()[0][:160]}"
    finally:
        del bias
        if cuda:
            torch.cuda.empty_cache()
    if check:
        ref = gga_attention_reference(q, k, v, t)
        row["chunked_max_abs_err"] = float((gga_attention_chunked(q, k, v, t).double().cpu() - ref).abs().max())
        if "flex_ms" in row:
            row["flex_max_abs_err"] = float((gga_attention_flex(q, k, v, t).double().cpu() - ref).abs().max())
    elif "flex_ms" in row:
        row["flex_vs_chunked_max_abs_diff"] = float((gga_attention_flex(q, k, v, t).float()
                                                     - gga_attention_chunked(q, k, v, t).float()).abs().max())
    for key in ("chunked_ms", "flex_ms", "flex_plain_ms", "dense_bias_ms"):
        if key in row:
            row[key.replace("_ms", "_over_plain")] = round(row[key] / row["plain_sdpa_ms"], 3)
    return row


def build_transformer(config: dict, device: str = "cpu", dtype: torch.dtype = torch.float32, seed: int = 0):
    """A randomly initialised diffusers WanTransformer3DModel(**config), built directly on `device` in `dtype` (the
    14B config: 32.8 GB in bf16, never materialised in fp32 or in CPU memory). As `from_pretrained(torch_dtype=...)`
    does, the parameters of the model's `_keep_in_fp32_modules` (norms, time embedder, scale-shift tables) are float32.
    Eval mode, no gradients."""
    from diffusers import WanTransformer3DModel
    torch.manual_seed(seed)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = WanTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(previous)
    keep = getattr(model, "_keep_in_fp32_modules", None) or []
    for name, param in model.named_parameters():
        if any(k in name.split(".") for k in keep):
            param.data = param.data.float()
    return model.eval().requires_grad_(False)


def step_inputs(config: dict, layout: CanvasLayout, device: str, dtype: torch.dtype, seed: int = 0) -> dict:
    """Random inputs of one denoising step on the canvas `layout`: hidden_states (1, in_channels, frames, 2 * rows,
    2 * (exo_cols + ego_cols)), timestep (1,), prompt / negative (1, 512, text_dim), image (1, 257, image_dim)."""
    g = torch.Generator().manual_seed(seed)
    p_t, p_h, p_w = config["patch_size"]
    latent = (1, config["in_channels"], layout.frames * p_t, layout.rows * p_h,
              (layout.exo_cols + layout.ego_cols) * p_w)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(device=device, dtype=dtype)
    return {"hidden_states": rand(*latent), "timestep": torch.tensor([500.0], device=device),
            "prompt": rand(1, TEXT_TOKENS, config["text_dim"]), "negative": rand(1, TEXT_TOKENS, config["text_dim"]),
            "image": rand(1, IMAGE_TOKENS, config["image_dim"]), "exo_width": layout.exo_cols * p_w}


def denoising_step(model, inputs: dict, dt: float = -0.02) -> torch.Tensor:
    """One flow-matching Euler step with classifier-free guidance (GUIDANCE): two transformer passes (prompt,
    negative prompt); the exo half of the velocity is zeroed (clean latent). -> (1, out_channels, F, H, W)."""
    x, t, image = inputs["hidden_states"], inputs["timestep"], inputs["image"]
    with torch.no_grad():
        cond = model(x, t, inputs["prompt"], image, return_dict=False)[0]
        uncond = model(x, t, inputs["negative"], image, return_dict=False)[0]
        velocity = uncond + GUIDANCE * (cond - uncond)
        velocity[..., :inputs["exo_width"]] = 0
        return x[:, :velocity.shape[1]] + dt * velocity


def full_step(config: dict, layout: CanvasLayout, device: str, dtype: torch.dtype, repeats: int,
              progress=None) -> dict:
    """One denoising step of a random WanTransformer3DModel(**config) on `layout` with diffusers' plain attention,
    GGA flex (if FlexAttention is available) and GGA chunked: ms per step, peak memory (CUDA), and how the outputs
    differ (GGA against plain: its effect; flex against chunked: the two evaluations agree)."""
    from egox_ros.core.attention.processor import GgaState, install_gga, uninstall_gga
    cuda = device.startswith("cuda")
    if cuda:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    model = build_transformer(config, device, dtype)
    inputs = step_inputs(config, layout, device, dtype)
    tables = canvas_tables(layout, device)
    out = {"tokens": layout.length, "ego_tokens": int(tables.query_is_ego.sum()), "layers": config["num_layers"],
           "heads": config["num_attention_heads"], "head_dim": config["attention_head_dim"],
           "dtype": str(dtype).replace("torch.", ""), "parameters": sum(p.numel() for p in model.parameters()),
           "latent_shape": list(inputs["hidden_states"].shape), "passes_per_step": 2, "variants": {}}
    if cuda:
        out["weights_and_inputs_bytes"] = int(torch.cuda.memory_allocated())
    backends = [("plain", None)] + ([("gga_flex", "flex")] if flex_attention_available() else []) + \
               [("gga_chunked", "chunked")]
    outputs = {}
    for name, backend in backends:
        if backend is None:
            uninstall_gga(model)            # diffusers' WanAttnProcessor: plain SDPA (flash on CUDA)
        else:
            install_gga(model, GgaState(tables=tables, backend=backend))
        outputs[name] = denoising_step(model, inputs).float()  # warm-up; compiles flex for this shape
        ms, peak = _timed(lambda: denoising_step(model, inputs), repeats, device, warmup=0)
        v = {"ms": ms, "finite": bool(torch.isfinite(outputs[name]).all())}
        if cuda:
            v["peak_bytes"] = int(torch.cuda.max_memory_allocated())
            v["peak_extra_bytes"] = peak
        out["variants"][name] = v
        if progress:
            progress(f"full step {name}")
    plain_ms = out["variants"]["plain"]["ms"]
    for v in out["variants"].values():
        v["over_plain"] = round(v["ms"] / plain_ms, 3)
    scale = float(outputs["plain"].abs().max())
    out["output_max_abs"] = scale
    for name in outputs:
        if name != "plain":
            out[f"{name}_vs_plain_max_abs_diff"] = float((outputs[name] - outputs["plain"]).abs().max())
    if "gga_flex" in outputs:
        out["flex_vs_chunked_max_abs_diff"] = float((outputs["gga_flex"] - outputs["gga_chunked"]).abs().max())
    uninstall_gga(model)
    del model, inputs, outputs
    if cuda:
        torch.cuda.empty_cache()
    return out


def run_all(quick: bool = False, device: str = "cpu", progress=None) -> dict:
    """Small sizes with exactness checks; on CUDA also the released size and the full-size denoising step, elsewhere
    the denoising step of a tiny transformer (code path only). progress(what) is called after each part."""
    from egox_ros.core.egox.tiny import tiny_transformer_config
    sizes = [(CanvasLayout(2, 4, 10, 6), 2, 16), (CanvasLayout(4, 8, 12, 8), 4, 32)]
    if not quick:
        sizes.append((CanvasLayout(13, 4, 49, 28), 4, 64))   # the released canvas width, 4 of its 28 rows
    cuda = device.startswith("cuda")
    result = {"benchmark": SECTION, "quick": quick, "machine": machine_info(), "device": device,
              "load_average_1min_at_start": round(os.getloadavg()[0], 2), "target_ratio": TARGET_RATIO, "small": []}
    for layout, heads, dim in sizes:
        result["small"].append(case(layout, heads, dim, device, torch.float32, repeats=3 if quick else 10,
                                    check=True))
        if progress:
            progress(f"{layout.length} tokens")
    if cuda:
        row = case(RELEASED_CANVAS, 40, 128, device, torch.bfloat16, repeats=5 if quick else 10, check=False)
        if "flex_over_plain" in row:
            row["meets_target"] = row["flex_over_plain"] <= TARGET_RATIO
        result["released_size"] = row
        if progress:
            progress("released size")
        result["full_step"] = full_step(WAN_I2V_14B_480P_CONFIG, RELEASED_CANVAS, device, torch.bfloat16,
                                        repeats=2 if quick else 3, progress=progress)
    else:
        result["released_size"] = None
        result["released_size_note"] = (f"needs a GPU: run `{GPU_COMMAND}` (28,028 tokens, 40 heads x 128, bf16; "
                                        "the dense bias alone is 1.57 GB per block)")
        result["full_step"] = None
        result["full_step_note"] = (f"needs a GPU (about 33 GB of bf16 weights, 16.4 B parameters): run "
                                    f"`{GPU_COMMAND}`")
        tiny = full_step(tiny_transformer_config(), TINY_CANVAS, device, torch.float32, repeats=2 if quick else 5,
                         progress=progress)
        tiny["note"] = ("code-path check on a tiny random transformer (tiny_transformer_config, float32, CPU): "
                        "not a performance number")
        result["full_step_tiny_cpu"] = tiny
    return result


def _gb(n) -> str:
    return "-" if n is None else f"{n / 1e9:.3g} GB"


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores), GPU: {m['gpu'] or 'none'}, device "
             f"{result['device']}; " + ", ".join(f"{k} {v}" for k, v in m["versions"].items())
             + (" (quick run)" if result["quick"] else "")
             + (f"; load average {result['load_average_1min_at_start']} at start"
                if "load_average_1min_at_start" in result else "")]
    if not result["device"].startswith("cuda"):
        lines += ["", f"**No GPU in this run**: the released-size attention and the full-size denoising step were not "
                      f"measured. They are ready to run: `{GPU_COMMAND}`."]
    lines += ["", "| tokens (ego) | heads x dim | dtype | plain SDPA ms | chunked ms (x plain) | FlexAttention ms "
                  "(x plain) | dense-bias ms (x plain) | max abs error chunked / flex vs fp64 |",
              "|---|---|---|---|---|---|---|---|"]

    def timed(r, key):
        return f"{r[key]} ({r[key.replace('_ms', '_over_plain')]})" if key in r else "-"

    def err(r, key):
        return f"{r[key]:.2g}" if key in r else "-"
    for r in result["small"]:
        lines.append(f"| {r['tokens']} ({r['ego_tokens']}) | {r['heads']} x {r['head_dim']} | {r['dtype']} "
                     f"| {r['plain_sdpa_ms']} | {timed(r, 'chunked_ms')} | {timed(r, 'flex_ms')} "
                     f"| {timed(r, 'dense_bias_ms')} | {err(r, 'chunked_max_abs_err')} / {err(r, 'flex_max_abs_err')} |")
    r = result.get("released_size")
    if r:
        lines += ["", f"Released size: {r['tokens']} tokens ({r['ego_tokens']} ego), {r['heads']} heads x "
                      f"{r['head_dim']}, {r['dtype']}; plain SDPA backend: {r['sdpa_backend']}. Peak memory is above "
                      f"q, k, v; one L x L {r['dtype']} matrix is {_gb(r['dense_bias_bytes'])}.",
                  "", "| method | ms | x plain | peak extra memory | below one L x L |", "|---|---|---|---|---|",
                  f"| plain SDPA | {r['plain_sdpa_ms']} | 1 | {_gb(r['plain_sdpa_peak_extra_bytes'])} | - |"]
        if "flex_plain_ms" in r:
            lines.append(f"| plain FlexAttention (no bias) | {r['flex_plain_ms']} | {r['flex_plain_over_plain']} "
                         "| - | - |")
        for key, label in (("flex", "GGA FlexAttention"), ("chunked", "GGA chunked")):
            if f"{key}_ms" in r:
                lines.append(f"| {label} | {r[f'{key}_ms']} | {r[f'{key}_over_plain']} "
                             f"| {_gb(r[f'{key}_peak_extra_bytes'])} | {r.get(f'{key}_no_lxl_allocation', '-')} |")
        if "dense_bias_ms" in r:
            lines.append(f"| dense bias (L x L through SDPA) | {r['dense_bias_ms']} | {r['dense_bias_over_plain']} "
                         f"| {_gb(r['dense_bias_peak_extra_bytes'])} | no |")
            lines.append(f"| building the dense bias (per block in the released code) | {r['dense_bias_build_ms']} "
                         "| - | - | - |")
        else:
            lines.append(f"| dense bias | - | - | - | {r.get('dense_bias_error', 'not run')} |")
        if "meets_target" in r:
            lines += ["", f"Target GGA FlexAttention <= {result['target_ratio']}x plain: "
                          f"{'met' if r['meets_target'] else 'NOT met'} ({r['flex_over_plain']}x). FlexAttention "
                          f"against chunked, max abs difference: {r['flex_vs_chunked_max_abs_diff']:.2g}."]
    elif result.get("released_size_note"):
        lines += ["", f"Released size: {result['released_size_note']}."]

    def step_table(s, title):
        out = ["", title, "", "| attention | ms per step (x plain) | peak memory | peak above weights and inputs |",
               "|---|---|---|---|"]
        for name, v in s["variants"].items():
            out.append(f"| {name} | {v['ms']} ({v['over_plain']}) | {_gb(v.get('peak_bytes'))} "
                       f"| {_gb(v.get('peak_extra_bytes'))} |")
        diffs = "; ".join(f"{k.replace('_max_abs_diff', '').replace('_', ' ')} {s[k]:.2g}" for k in s
                          if k.endswith("_max_abs_diff"))
        out += ["", f"Outputs (max abs {s['output_max_abs']:.3g}), max abs difference: {diffs}."]
        return out
    s = result.get("full_step")
    if s:
        lines += step_table(s, f"One denoising step (2 transformer passes, guidance {GUIDANCE}) of a random "
                               f"full-size transformer: {s['parameters'] / 1e9:.2f} B parameters, {s['layers']} "
                               f"layers, {s['dtype']}, latent {tuple(s['latent_shape'])}, {s['tokens']} tokens; "
                               f"weights and inputs {_gb(s.get('weights_and_inputs_bytes'))}.")
    elif result.get("full_step_note"):
        lines += ["", f"Full denoising step: {result['full_step_note']}."]
    s = result.get("full_step_tiny_cpu")
    if s:
        lines += step_table(s, f"Code-path check only, not a performance number: the same denoising-step code on a "
                               f"tiny random transformer ({s['parameters']} parameters, {s['layers']} layers, "
                               f"{s['heads']} heads x {s['head_dim']}, {s['dtype']}, {s['tokens']} tokens).")
    return "\n".join(lines) + "\n"
