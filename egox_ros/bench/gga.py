"""`egox bench gga`: geometry-guided attention against plain attention and the dense-bias method.

At small sizes (CPU): exactness of the chunked and FlexAttention evaluations against a dense fp64 reference, and the
time of each against plain SDPA and against the dense-bias method (the released code's: an L x L bias tensor).
The released size (28,028 tokens, 40 heads x 128, bf16) needs a GPU: `--device cuda` runs it there.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from egox_ros.bench.common import machine_info, median_ms
from egox_ros.core.attention.gga import (GgaTables, flex_attention_available, gga_attention_chunked,
                                         gga_attention_flex, gga_attention_reference, gga_bias_dense)

SECTION = "gga"
RELEASED_TOKENS = (13, 28 * 28, 28 * 49)   # latent frames, exo tokens per frame, ego tokens per frame: 28,028 tokens


def make_tables(frames: int, exo_per_frame: int, ego_per_frame: int, device="cpu", seed: int = 0) -> GgaTables:
    """Random unit directions in the canvas token order (per frame: exo tokens, then ego tokens)."""
    g = torch.Generator().manual_seed(seed)
    per = exo_per_frame + ego_per_frame
    length = frames * per
    is_ego = torch.tensor(([False] * exo_per_frame + [True] * ego_per_frame) * frames)
    frame = torch.arange(frames).repeat_interleave(per)
    qd = F.normalize(torch.randn(length, 3, generator=g), dim=-1)
    kd = F.normalize(torch.randn(frames, length, 3, generator=g), dim=-1) * (~is_ego)[None, :, None]
    return GgaTables(qd, frame, is_ego, kd).to(device)


def _dense_bias_attention(q, k, v, bias):
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)


def case(frames: int, exo: int, ego: int, heads: int, dim: int, device: str, dtype: torch.dtype,
         repeats: int, check: bool) -> dict:
    t = make_tables(frames, exo, ego, device)
    length = t.length
    g = torch.Generator(device="cpu").manual_seed(1)
    q, k, v = (torch.randn(1, heads, length, dim, generator=g).to(device=device, dtype=dtype) for _ in range(3))
    sync = torch.cuda.synchronize if device.startswith("cuda") else None
    row = {"tokens": length, "heads": heads, "head_dim": dim, "dtype": str(dtype).replace("torch.", ""),
           "ego_tokens": int(t.query_is_ego.sum())}
    row["plain_sdpa_ms"] = median_ms(lambda: F.scaled_dot_product_attention(q, k, v), repeats, sync=sync)
    row["chunked_ms"] = median_ms(lambda: gga_attention_chunked(q, k, v, t), repeats, sync=sync)
    if flex_attention_available():
        gga_attention_flex(q, k, v, t)  # compile once for this shape
        row["flex_ms"] = median_ms(lambda: gga_attention_flex(q, k, v, t), repeats, sync=sync)
    dense_bytes = length * length * torch.finfo(dtype).bits // 8
    row["dense_bias_bytes"] = dense_bytes
    if check:
        bias = gga_bias_dense(t).to(dtype)
        row["dense_bias_ms"] = median_ms(lambda: _dense_bias_attention(q, k, v, bias), repeats, sync=sync)
        ref = gga_attention_reference(q, k, v, t)
        row["chunked_max_abs_err"] = float((gga_attention_chunked(q, k, v, t).double().cpu() - ref).abs().max())
        if "flex_ms" in row:
            row["flex_max_abs_err"] = float((gga_attention_flex(q, k, v, t).double().cpu() - ref).abs().max())
    for key in ("chunked_ms", "flex_ms", "dense_bias_ms"):
        if key in row:
            row[key.replace("_ms", "_over_plain")] = round(row[key] / row["plain_sdpa_ms"], 3)
    return row


def run_all(quick: bool = False, device: str = "cpu", progress=None) -> dict:
    """Small CPU sizes with exactness checks; on CUDA also the released size (no dense reference there).
    progress(what) is called after each case."""
    sizes = [(2, 40, 24, 2, 16), (4, 96, 64, 4, 32)] if quick else [(2, 40, 24, 2, 16), (4, 96, 64, 4, 32),
                                                                   (13, 112, 196, 4, 64)]
    result = {"benchmark": SECTION, "quick": quick, "machine": machine_info(), "device": device,
              "small": []}
    for s in sizes:
        result["small"].append(case(*s, device=device, dtype=torch.float32, repeats=3 if quick else 10, check=True))
        if progress:
            progress(f"{s[0] * (s[1] + s[2])} tokens")
    if device.startswith("cuda"):
        f, exo, ego = RELEASED_TOKENS
        result["released_size"] = case(f, exo, ego, 40, 128, device, torch.bfloat16, repeats=10, check=False)
    else:
        result["released_size"] = None
        result["released_size_note"] = ("needs a GPU: run `egox bench gga --device cuda` (28,028 tokens, 40 heads x "
                                         "128, bf16; the dense bias alone would be 1.6 GB per block)")
    return result


def markdown(result: dict) -> str:
    m = result["machine"]
    lines = [f"Run {m['date']} on {m['cpu']} ({m['cpu_cores']} cores), GPU: {m['gpu'] or 'none'}; "
             + ", ".join(f"{k} {v}" for k, v in m["versions"].items()) + (" (quick run)" if result["quick"] else ""),
             "", "| tokens (ego) | heads x dim | dtype | plain SDPA ms | chunked ms (x plain) | FlexAttention ms "
                 "(x plain) | dense-bias ms (x plain) | max abs error chunked / flex vs fp64 |",
             "|---|---|---|---|---|---|---|---|"]
    rows = list(result["small"]) + ([result["released_size"]] if result["released_size"] else [])

    def timed(r, key):
        return f"{r[key]} ({r[key.replace('_ms', '_over_plain')]})" if key in r else "-"

    def err(r, key):
        return f"{r[key]:.2g}" if key in r else "-"
    for r in rows:
        lines.append(f"| {r['tokens']} ({r['ego_tokens']}) | {r['heads']} x {r['head_dim']} | {r['dtype']} "
                     f"| {r['plain_sdpa_ms']} | {timed(r, 'chunked_ms')} | {timed(r, 'flex_ms')} "
                     f"| {timed(r, 'dense_bias_ms')} | {err(r, 'chunked_max_abs_err')} / {err(r, 'flex_max_abs_err')} |")
    if result.get("released_size_note"):
        lines += ["", f"Released size: {result['released_size_note']}."]
    return "\n".join(lines) + "\n"
