"""GGA attention: the bias formula, and the chunked and FlexAttention evaluations against a dense fp64 reference."""
from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from egox_ros.bench.gga import make_tables
from egox_ros.core.attention.gga import (EPS, GgaTables, flex_attention_available, gga_attention_chunked,
                                         gga_attention_flex, gga_attention_reference, gga_bias_dense)


def qkv(length, heads=2, dim=16, seed=1):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(1, heads, length, dim, generator=g) for _ in range(3)]


def test_bias_values_by_hand():
    # One ego query, three exo keys at known cosines, one ego key (direction 0).
    qd = torch.tensor([[1.0, 0.0, 0.0]] * 4)
    kd = torch.tensor([[[0.5, math.sqrt(0.75), 0.0], [-0.5, math.sqrt(0.75), 0.0], [1.0, 0.0, 0.0], [0, 0, 0]]])
    t = GgaTables(qd, torch.zeros(4, dtype=torch.int64), torch.tensor([True, False, False, True]), kd)
    released = gga_bias_dense(t, strength=3.0)
    # cos 0.5 -> log(1 + 1.5); cos -0.5 -> log(0.5) (negative cosines are not scaled); cos 1 -> log(4); ego key -> eps.
    expected = torch.tensor([math.log(2.5 + EPS), math.log(0.5 + EPS), math.log(4.0 + EPS), math.log(1 + EPS)])
    assert torch.allclose(released[0], expected, atol=1e-6)
    assert torch.equal(released[1], torch.zeros(4)) and torch.equal(released[2], torch.zeros(4))  # exo rows: 0
    paper = gga_bias_dense(t, strength=2.0, mode="paper")
    assert torch.allclose(paper[0, :3], 2.0 * torch.log(torch.tensor([1.5, 0.5, 2.0]) + EPS), atol=1e-6)
    with pytest.raises(ValueError, match="mode"):
        gga_bias_dense(t, mode="other")


@pytest.mark.parametrize("mode,strength", [("released", 3.0), ("released", 1.0), ("paper", 2.0)])
def test_chunked_attention_matches_the_dense_fp64_reference(mode, strength):
    t = make_tables(frames=3, exo_per_frame=24, ego_per_frame=16)
    q, k, v = qkv(t.length)
    ref = gga_attention_reference(q, k, v, t, strength, mode)
    out = gga_attention_chunked(q, k, v, t, strength, mode, chunk_rows=7)  # several chunks, one ragged
    assert (out.double() - ref).abs().max() <= 1e-5
    # The bias matters: plain attention differs on ego rows, and is identical on exo rows.
    plain = F.scaled_dot_product_attention(q, k, v)
    assert (out - plain)[:, :, t.query_is_ego].abs().max() > 1e-2
    assert torch.allclose(out[:, :, ~t.query_is_ego], plain[:, :, ~t.query_is_ego], atol=1e-6)


@pytest.mark.skipif(not flex_attention_available(), reason="FlexAttention not available in this torch")
def test_flex_attention_matches_the_dense_fp64_reference():
    t = make_tables(frames=2, exo_per_frame=40, ego_per_frame=24)  # 128 tokens: one FlexAttention block
    q, k, v = qkv(t.length, heads=2, dim=16)
    ref = gga_attention_reference(q, k, v, t, 3.0, "released")
    out = gga_attention_flex(q, k, v, t, 3.0, "released")
    assert (out.double() - ref).abs().max() <= 1e-5
    # A new clip of the same size (other tables) reuses the compiled kernel: no new graph, and the new geometry.
    from torch._dynamo.utils import counters
    graphs = counters["stats"]["unique_graphs"]
    other = make_tables(frames=2, exo_per_frame=40, ego_per_frame=24, seed=7)
    out = gga_attention_flex(q, k, v, other, 3.0, "released")
    assert counters["stats"]["unique_graphs"] == graphs
    assert (out.double() - gga_attention_reference(q, k, v, other, 3.0, "released")).abs().max() <= 1e-5


def test_released_strength_up_to_1_scales_every_cosine_by_hand():
    # One ego query against exo keys at cosines 0.5, -0.5, 1, -1 and one ego key (direction 0).
    qd = torch.tensor([[1.0, 0.0, 0.0]] * 5)
    kd = torch.tensor([[[0.5, math.sqrt(0.75), 0.0], [-0.5, math.sqrt(0.75), 0.0], [1.0, 0.0, 0.0], [-1.0, 0.0, 0.0],
                        [0, 0, 0]]])
    t = GgaTables(qd, torch.zeros(5, dtype=torch.int64), torch.tensor([True, False, False, False, True]), kd)
    # s <= 1: c' = s * c for every c, negative ones too (the released rule).
    half = gga_bias_dense(t, strength=0.5)[0]
    expected = [math.log(1 + 0.25 + EPS), math.log(1 - 0.25 + EPS), math.log(1.5 + EPS), math.log(0.5 + EPS),
                math.log(1 + EPS)]
    assert torch.allclose(half, torch.tensor(expected), atol=1e-6)
    # s = 0: every bias log(1 + eps), i.e. no guidance at all; s = 1: the cosine itself (both rules agree).
    assert torch.allclose(gga_bias_dense(t, strength=0.0)[0], torch.full((5,), math.log(1 + EPS)), atol=1e-7)
    one = [math.log(1.5 + EPS), math.log(0.5 + EPS), math.log(2 + EPS), math.log(EPS), math.log(1 + EPS)]
    assert torch.allclose(gga_bias_dense(t, strength=1.0)[0], torch.tensor(one), atol=1e-5)
    # s > 1: only positive cosines are scaled (-1 stays -1: log(eps)).
    three = [math.log(2.5 + EPS), math.log(0.5 + EPS), math.log(4 + EPS), math.log(EPS), math.log(1 + EPS)]
    assert torch.allclose(gga_bias_dense(t, strength=3.0)[0], torch.tensor(three), atol=1e-5)


@pytest.mark.parametrize("strength", [0.0, 0.5, 1.0, 1.5])
def test_every_backend_gives_the_same_numbers_at_low_strength(strength):
    t = make_tables(frames=2, exo_per_frame=40, ego_per_frame=24)  # 128 tokens
    q, k, v = qkv(t.length, heads=2, dim=16)
    ref = gga_attention_reference(q, k, v, t, strength, "released")
    chunked = gga_attention_chunked(q, k, v, t, strength, "released", chunk_rows=11)
    assert (chunked.double() - ref).abs().max() <= 1e-5
    if flex_attention_available():
        flex = gga_attention_flex(q, k, v, t, strength, "released")
        assert (flex.double() - ref).abs().max() <= 1e-5
    if strength < 1.0:   # the old rule (negative cosines never scaled) is another bias
        c = torch.einsum("lc,lmc->lm", t.query_dir.double(), t.key_dir.double()[t.query_frame]).clamp(-1, 1)
        old = torch.log(1 + torch.where(c > 0, c * strength, c) + EPS)
        new = gga_bias_dense(t.to(dtype=torch.float64), strength)
        assert (old - new)[t.query_is_ego].abs().max() > 0.1


def test_released_mode_rounds_the_directions_to_the_attention_dtype():
    from egox_ros.core.attention.processor import GgaState
    t = make_tables(frames=2, exo_per_frame=40, ego_per_frame=24)
    assert t.rounded_through(torch.float32) is t and t.rounded_through(torch.float64) is t
    r = t.rounded_through(torch.bfloat16)
    assert r.query_dir.dtype == torch.float32 and torch.equal(r.query_dir, t.query_dir.bfloat16().float())
    assert torch.equal(r.key_dir, t.key_dir.bfloat16().float()) and not torch.equal(r.key_dir, t.key_dir)
    q, k, v = (x.bfloat16() for x in qkv(t.length))
    state = GgaState(tables=t, strength=3.0, backend="chunked")
    assert torch.equal(state.attention(q, k, v), gga_attention_chunked(q, k, v, r, 3.0, "released"))
    state.mode = "paper"                                           # ours: the tables as they are
    assert torch.equal(state.attention(q, k, v), gga_attention_chunked(q, k, v, t, 3.0, "paper"))
    # float32 attention: nothing to round, the same numbers as before.
    q, k, v = qkv(t.length)
    state.mode = "released"
    assert torch.equal(state.attention(q, k, v), gga_attention_chunked(q, k, v, t, 3.0, "released"))


def test_released_mode_rounds_each_cosine_as_a_bfloat16_matmul_returns_it():
    # The released code (custom_transformer.py): bf16 ego query directions @ bf16 key directions^T, a bf16 result
    # stored into a float32 table, then clamp, the strength rule and log(1 + c + eps) in float32.
    t = make_tables(frames=2, exo_per_frame=40, ego_per_frame=24)
    strength = 3.0
    c = torch.matmul(t.query_dir.bfloat16()[:, None, :],
                     t.key_dir.bfloat16()[t.query_frame].transpose(-1, -2))[:, 0].to(torch.float32)
    c = c.clamp(-1.0, 1.0)
    c = torch.where(c > 0, c * strength, c)
    expected = torch.log(c + 1.0 + 1e-6)[t.query_is_ego]
    r = t.rounded_through(torch.bfloat16)
    assert r.cos_dtype == torch.bfloat16 and t.cos_dtype is None
    ours = gga_bias_dense(r, strength)[t.query_is_ego]
    assert (ours - expected).abs().max() < 1e-6
    # Rounding the directions only (the step before) leaves cosines off by up to a bfloat16 step.
    directions_only = GgaTables(r.query_dir, r.query_frame, r.query_is_ego, r.key_dir)
    assert (gga_bias_dense(directions_only, strength)[t.query_is_ego] - expected).abs().max() > 1e-3
    # Every backend reads the same rounded cosines.
    q, k, v = qkv(t.length)
    ref = gga_attention_reference(q, k, v, r, strength, "released")
    assert (gga_attention_chunked(q, k, v, r, strength, "released", chunk_rows=13).double() - ref).abs().max() <= 1e-5
    if flex_attention_available():
        assert (gga_attention_flex(q, k, v, r, strength, "released").double() - ref).abs().max() <= 1e-5
    assert r.to(dtype=torch.float64).cos_dtype == torch.bfloat16


def test_bad_inputs_raise_clear_errors():
    t = make_tables(frames=3, exo_per_frame=24, ego_per_frame=16)
    with pytest.raises(ValueError, match="tokens but the GGA tables"):
        gga_attention_chunked(*qkv(t.length + 1), t)
    with pytest.raises(ValueError, match="non-finite"):
        GgaTables(t.query_dir, t.query_frame, t.query_is_ego, t.key_dir * float("nan"))
    with pytest.raises(ValueError, match="index the"):
        GgaTables(t.query_dir, t.query_frame + 5, t.query_is_ego, t.key_dir)
    with pytest.raises(ValueError, match=r"\(F, L, 3\)"):
        GgaTables(t.query_dir, t.query_frame, t.query_is_ego, t.key_dir[:, :-1])
