"""GGA as a diffusers attention processor for the self-attention (`attn1`) of Wan transformer blocks.

One small class, installed with one call, like diffusers' own processors:

    state = GgaState(strength=3.0)
    install_gga(transformer, state)     # every block's attn1; cross-attention (attn2) is untouched
    state.tables = tables               # per clip (GgaTables in canvas token order); None = plain attention

The processor does what diffusers' WanAttnProcessor does for self-attention (q/k/v projections, RMS norms, rotary
embedding, output projection) and replaces the attention call by exact GGA attention (egox_ros.core.attention.gga),
which never allocates an L x L tensor.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import torch
import torch.nn.functional as F
from diffusers.models.transformers.transformer_wan import WanAttnProcessor, _get_qkv_projections

from egox_ros.core.attention.gga import GgaMode, GgaTables, gga_attention_chunked, gga_attention_flex

GgaBackend = Literal["auto", "flex", "chunked"]


@dataclass
class GgaState:
    """Shared by the processors of all blocks: what the next forward passes use.

    tables: the clip's direction tables (None: plain attention, as without GGA). strength: s of the method doc.
    mode: 'released' (the released weights' semantics) or 'paper'. backend: 'flex' (FlexAttention, bias computed in
    the kernel, compiled once per shape), 'chunked' (exact, chunks of ego query rows) or 'auto' (flex on CUDA,
    chunked elsewhere). chunk_rows: rows per chunk of the chunked backend. In 'released' mode the direction tables
    are first rounded to the attention dtype (bfloat16 on CUDA), as the released code casts them to the model dtype
    before the dot product; a no-op in float32. Every backend gets the same rounded tables.
    """
    tables: GgaTables | None = None
    strength: float = 3.0
    mode: GgaMode = "released"
    backend: GgaBackend = "auto"
    chunk_rows: int = 1024
    _rounded: tuple | None = field(default=None, repr=False, compare=False)   # (source tables, dtype, rounded)

    def _tables_for(self, q: torch.Tensor) -> GgaTables:
        tables = self.tables
        if tables.query_dir.device != q.device:   # once per clip: keep the moved tables for the other blocks
            tables = self.tables = tables.to(q.device)
        if self.mode != "released":
            return tables
        cached = self._rounded
        if cached is None or cached[0] is not tables or cached[1] != q.dtype:
            cached = self._rounded = (tables, q.dtype, tables.rounded_through(q.dtype))
        return cached[2]

    def attention(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """(B, H, L, D) -> (B, H, L, D); plain SDPA when no tables are set."""
        if self.tables is None:
            return F.scaled_dot_product_attention(q, k, v)
        tables = self._tables_for(q)
        backend = self.backend
        if backend == "auto":
            backend = "flex" if q.is_cuda else "chunked"
        if backend == "flex":
            return gga_attention_flex(q, k, v, tables, self.strength, self.mode)
        if backend == "chunked":
            return gga_attention_chunked(q, k, v, tables, self.strength, self.mode, self.chunk_rows)
        raise ValueError(f"unknown GGA backend {backend!r}; use 'auto', 'flex' or 'chunked'")


def _rotate(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Wan's rotary embedding on interleaved pairs; x (B, L, H, D), cos/sin (1, L, 1, D)."""
    x1, x2 = x.unflatten(-1, (-1, 2)).unbind(-1)
    cos, sin = cos[..., 0::2], sin[..., 1::2]
    out = torch.empty_like(x)
    out[..., 0::2] = x1 * cos - x2 * sin
    out[..., 1::2] = x1 * sin + x2 * cos
    return out.type_as(x)


class GgaAttnProcessor:
    """Self-attention of a Wan block with geometry-guided attention (see module docstring)."""

    def __init__(self, state: GgaState):
        self.state = state

    def __call__(self, attn, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, rotary_emb=None) -> torch.Tensor:
        if encoder_hidden_states is not None or attention_mask is not None:
            raise ValueError("GgaAttnProcessor is for Wan self-attention (attn1) only: no encoder states, no mask")
        query, key, value = _get_qkv_projections(attn, hidden_states, None)   # diffusers' own, fused or not
        query, key = attn.norm_q(query), attn.norm_k(key)
        query, key, value = (x.unflatten(2, (attn.heads, -1)) for x in (query, key, value))   # (B, L, H, D)
        if rotary_emb is not None:
            query, key = _rotate(query, *rotary_emb), _rotate(key, *rotary_emb)
        out = self.state.attention(query.transpose(1, 2), key.transpose(1, 2), value.transpose(1, 2))
        out = out.transpose(1, 2).flatten(2, 3).type_as(query)
        return attn.to_out[1](attn.to_out[0](out))


def install_gga(transformer: torch.nn.Module, state: GgaState) -> int:
    """Put a GgaAttnProcessor sharing `state` on the self-attention of every Wan block; returns how many."""
    blocks = getattr(transformer, "blocks", None)
    if not blocks:
        raise ValueError(f"{type(transformer).__name__} has no Wan transformer blocks to install GGA on")
    processor = GgaAttnProcessor(state)
    for block in blocks:
        block.attn1.set_processor(processor)
    return len(blocks)


def uninstall_gga(transformer: torch.nn.Module) -> None:
    """Back to diffusers' default processor on every block's self-attention."""
    for block in transformer.blocks:
        block.attn1.set_processor(WanAttnProcessor())
