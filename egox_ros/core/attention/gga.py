"""Geometry-guided self-attention (GGA) of EgoX, exact, in O(L) extra memory.

The logit of query token m and key token n gets a bias from two unit-ish directions seen from the ego eye of the
query's frame (../shared/docs/egox-method.md, section 4):

    c = clamp(dot(q_m, k_{f(m), n}), -1, 1)
    released (default):  strength > 1:  c' = strength * c where c > 0, else c
                         strength <= 1: c' = strength * c for every c      bias = log(1 + c' + eps)
    paper:                                                                 bias = strength * log(1 + c + eps)

The released rule is that of the released inference (custom_transformer.py of DAVIAN-Robotics/EgoX): both branches
agree at strength 1 and scale only positive cosines at the released inference strength 3. The released code also
casts the direction vectors to the model dtype before the dot product, whose result (a bfloat16 matmul) is rounded
to that dtype and then stored in float32; `GgaTables.rounded_through(dtype)` gives tables that do both (the
processor applies it in 'released' mode), see docs/egox-fidelity.md.

Only ego query rows are biased (exo rows get 0). q_m is the world-space viewing ray of ego token m; k_{f,n} is the
direction from the ego camera centre of frame f to the 3D point of exo token n (zero for ego tokens, so their bias is
log(1 + eps)). The key table depends on the query's frame: (F, L, 3), never (L, L).

Three evaluations of the same maths: `gga_bias_dense` (the reference: materialises L x L, small sizes only),
`gga_attention_chunked` (exact, builds the bias for a chunk of ego query rows at a time) and `gga_attention_flex`
(FlexAttention `score_mod` reading the tables inside the kernel; compiled once per shape).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

GgaMode = Literal["released", "paper"]
EPS = 1e-6


@dataclass
class GgaTables:
    """Direction tables of one clip; L tokens in the transformer's sequence order, F latent frames.

    query_dir: (L, 3) float32 world-space viewing ray of each ego token (anything for exo tokens).
    query_frame: (L,) int64 latent frame of each token, in [0, F).
    query_is_ego: (L,) bool, True for ego tokens (biased rows).
    key_dir: (F, L, 3) float32 direction from the ego eye of frame f to each exo token's point; 0 for ego tokens.
    cos_dtype: None, or the dtype every cosine is rounded to (and back) before the bias is computed from it, as the
    released code's bfloat16 matmul rounds it (`rounded_through` sets it).
    """
    query_dir: torch.Tensor
    query_frame: torch.Tensor
    query_is_ego: torch.Tensor
    key_dir: torch.Tensor
    cos_dtype: torch.dtype | None = None

    def __post_init__(self) -> None:
        length = self.query_dir.shape[0]
        if self.query_dir.shape != (length, 3):
            raise ValueError(f"query_dir must be (L, 3), got {tuple(self.query_dir.shape)}")
        if self.query_frame.shape != (length,) or self.query_is_ego.shape != (length,):
            raise ValueError(f"query_frame and query_is_ego must be (L,) = ({length},), got "
                             f"{tuple(self.query_frame.shape)} and {tuple(self.query_is_ego.shape)}")
        if self.key_dir.ndim != 3 or self.key_dir.shape[1:] != (length, 3):
            raise ValueError(f"key_dir must be (F, L, 3) with L = {length}, got {tuple(self.key_dir.shape)}")
        if self.query_is_ego.dtype != torch.bool:
            raise ValueError(f"query_is_ego must be bool, got {self.query_is_ego.dtype}")
        frames = self.key_dir.shape[0]
        if length and (int(self.query_frame.min()) < 0 or int(self.query_frame.max()) >= frames):
            raise ValueError(f"query_frame must index the {frames} frames of key_dir")
        for name in ("query_dir", "key_dir"):
            if not torch.isfinite(getattr(self, name)).all():
                raise ValueError(f"{name} has non-finite values (a NaN depth or ray upstream?)")

    @property
    def length(self) -> int:
        return int(self.query_dir.shape[0])

    def rounded_through(self, dtype: torch.dtype) -> "GgaTables":
        """The tables as the released code uses them in `dtype` (the model's, bfloat16): directions rounded to
        `dtype` and back to their own dtype, and every cosine rounded to `dtype` (cos_dtype) as its matmul in that
        dtype returns it. self when nothing changes (`dtype` not narrower than the tables')."""
        if dtype == self.query_dir.dtype or not dtype.is_floating_point or \
                torch.finfo(dtype).bits >= torch.finfo(self.query_dir.dtype).bits:
            return self
        own = self.query_dir.dtype
        return GgaTables(self.query_dir.to(dtype).to(own), self.query_frame, self.query_is_ego,
                         self.key_dir.to(dtype).to(own), cos_dtype=dtype)

    def to(self, device=None, dtype=None) -> "GgaTables":
        """The tables on `device` (directions in `dtype`); self when they are there already (no copy, no checks)."""
        if (device is None or self.query_dir.device == torch.device(device)) and \
                (dtype is None or self.query_dir.dtype == dtype):
            return self
        return GgaTables(self.query_dir.to(device=device, dtype=dtype), self.query_frame.to(device),
                         self.query_is_ego.to(device), self.key_dir.to(device=device, dtype=dtype), self.cos_dtype)


def _rounded_cos(c: torch.Tensor, cos_dtype: torch.dtype | None) -> torch.Tensor:
    """c rounded to cos_dtype and back (no change for None)."""
    return c if cos_dtype is None else c.to(cos_dtype).to(c.dtype)


def _scaled_cos(c: torch.Tensor, strength: float) -> torch.Tensor:
    """The released scaling of a clamped cosine: positive cosines only when strength > 1, every cosine otherwise."""
    if strength > 1.0:
        return torch.where(c > 0, c * strength, c)
    return c * strength


def _bias_from_cos(c: torch.Tensor, strength: float, mode: GgaMode) -> torch.Tensor:
    c = c.clamp(-1.0, 1.0)
    if mode == "released":
        return torch.log(1.0 + _scaled_cos(c, float(strength)) + EPS)
    if mode == "paper":
        return strength * torch.log(1.0 + c + EPS)
    raise ValueError(f"unknown GGA mode {mode!r}; use 'released' or 'paper'")


def gga_bias_rows(tables: GgaTables, rows: torch.Tensor, strength: float = 3.0,
                  mode: GgaMode = "released") -> torch.Tensor:
    """(len(rows), L) bias of the query rows `rows` (int64 indices); exo rows are 0. dtype of the tables."""
    q = tables.query_dir[rows]                                   # (R, 3)
    k = tables.key_dir[tables.query_frame[rows]]                 # (R, L, 3)
    bias = _bias_from_cos(_rounded_cos(torch.einsum("rc,rlc->rl", q, k), tables.cos_dtype), strength, mode)
    return torch.where(tables.query_is_ego[rows, None], bias, torch.zeros_like(bias))


def gga_bias_dense(tables: GgaTables, strength: float = 3.0, mode: GgaMode = "released") -> torch.Tensor:
    """The full (L, L) bias. A reference for tests and small sizes: it allocates L x L."""
    return gga_bias_rows(tables, torch.arange(tables.length, device=tables.query_dir.device), strength, mode)


def gga_attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: GgaTables,
                            strength: float = 3.0, mode: GgaMode = "released") -> torch.Tensor:
    """Dense float64 GGA attention on the CPU: the reference the kernels are checked against (allocates L x L)."""
    bias = gga_bias_dense(tables.to("cpu", torch.float64), strength, mode)
    q, k, v = (x.detach().to("cpu", torch.float64) for x in (q, k, v))
    weights = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]) + bias, dim=-1)
    return weights @ v


def _check_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: GgaTables) -> None:
    if q.ndim != 4 or k.shape != q.shape or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be (B, H, L, D) alike, got {tuple(q.shape)}, {tuple(k.shape)}, "
                         f"{tuple(v.shape)}")
    if q.shape[2] != tables.length:
        raise ValueError(f"the sequence has {q.shape[2]} tokens but the GGA tables describe {tables.length}")


def gga_attention_chunked(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: GgaTables,
                          strength: float = 3.0, mode: GgaMode = "released", chunk_rows: int = 1024) -> torch.Tensor:
    """Exact GGA attention; q, k, v (B, H, L, D) -> (B, H, L, D). Exo query rows go through plain SDPA (flash
    kernels where available); ego rows in chunks of `chunk_rows`, each with its (chunk, L) bias: O(chunk * L)."""
    _check_qkv(q, k, v, tables)
    out = q.new_empty(q.shape[:3] + v.shape[-1:])
    ego_rows = torch.nonzero(tables.query_is_ego).squeeze(1).to(q.device)
    exo_rows = torch.nonzero(~tables.query_is_ego).squeeze(1).to(q.device)
    if len(exo_rows):
        out[:, :, exo_rows] = F.scaled_dot_product_attention(q[:, :, exo_rows], k, v)
    for start in range(0, len(ego_rows), chunk_rows):
        rows = ego_rows[start:start + chunk_rows]
        bias = gga_bias_rows(tables, rows.to(tables.query_dir.device), strength, mode).to(device=q.device,
                                                                                          dtype=q.dtype)
        out[:, :, rows] = F.scaled_dot_product_attention(q[:, :, rows], k, v, attn_mask=bias)
    return out


def gga_score_mod(tables: GgaTables, strength: float = 3.0, mode: GgaMode = "released"):
    """A FlexAttention score_mod adding the GGA bias, reading the captured tables (updating them in place for a
    new clip of the same size keeps the compiled kernel)."""
    qd, qf, qe, kd = tables.query_dir, tables.query_frame, tables.query_is_ego, tables.key_dir
    cos_dtype = tables.cos_dtype

    def score_mod(score, b, h, q_idx, kv_idx):
        f = qf[q_idx]
        c = qd[q_idx, 0] * kd[f, kv_idx, 0] + qd[q_idx, 1] * kd[f, kv_idx, 1] + qd[q_idx, 2] * kd[f, kv_idx, 2]
        return score + torch.where(qe[q_idx], _bias_from_cos(_rounded_cos(c, cos_dtype), strength, mode), 0.0)
    return score_mod


_COMPILED_FLEX = None


def gga_attention_flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, tables: GgaTables,
                       strength: float = 3.0, mode: GgaMode = "released") -> torch.Tensor:
    """GGA attention with the bias computed inside a compiled FlexAttention kernel: no (L, L) tensor anywhere.
    q, k, v (B, H, L, D) -> (B, H, L, D). The first call per shape compiles (seconds to tens of seconds)."""
    global _COMPILED_FLEX
    _check_qkv(q, k, v, tables)
    from torch.nn.attention.flex_attention import flex_attention
    if _COMPILED_FLEX is None:
        # emulate_precision_casts: inductor would otherwise drop the float32 -> bfloat16 -> float32 round trip of
        # the released cosine rounding (cos_dtype) as a no-op.
        _COMPILED_FLEX = torch.compile(flex_attention, dynamic=False, options={"emulate_precision_casts": True})
    return _COMPILED_FLEX(q, k, v, score_mod=gga_score_mod(tables.to(q.device), strength, mode))


def flex_attention_available() -> bool:
    """Whether FlexAttention can be compiled here (needs torch >= 2.5 and a working inductor backend)."""
    try:
        from torch.nn.attention.flex_attention import flex_attention  # noqa: F401
    except ImportError:
        return False
    return True
