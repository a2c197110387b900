"""Attention as selection (Copy this Sentence, Sec. 2): the pieces, and the known
mechanisms as instances of Eq. 1."""

import math

import pytest
import torch
import torch.nn.functional as F

from tdx.attention.core import (
    AdditiveScore,
    Attention,
    DotScore,
    GeneralScore,
    MultiHeadAttention,
    Normalizer,
    ScaledDotScore,
    bahdanau,
    luong,
    sparsemax,
)
from tdx.report import report

from .test_report import fixture_runs

torch.manual_seed(0)


def qkv(B=2, Tq=3, Tk=5, D=8):
    return torch.randn(B, Tq, D), torch.randn(B, Tk, D), torch.randn(B, Tk, D)


def test_hardmax_selects_the_largest_value():
    q, k, v = qkv()
    att = Attention(DotScore(), Normalizer("hardmax"))
    ctx, w = att(q, k, v)
    idx = (q @ k.transpose(1, 2)).argmax(-1)  # (B, Tq)
    expected = torch.stack([v[b, idx[b]] for b in range(q.size(0))])
    assert torch.equal(ctx, expected)
    assert torch.equal(w.sum(-1), torch.ones(2, 3))


def test_softmax_temperature_interpolates_between_hardmax_and_mean():
    q, k, v = qkv()
    cold = Attention(DotScore(), Normalizer("softmax", temperature=1e-4))(q, k, v)[0]
    hard = Attention(DotScore(), Normalizer("hardmax"))(q, k, v)[0]
    hot = Attention(DotScore(), Normalizer("softmax", temperature=1e6))(q, k, v)[0]
    torch.testing.assert_close(cold, hard)
    torch.testing.assert_close(hot, v.mean(1, keepdim=True).expand_as(hot), atol=1e-4,
                               rtol=1e-4)


def test_sparsemax_is_a_sparse_distribution():
    z = torch.tensor([[3.0, 1.0, 0.2, -1.0], [0.5, 0.5, 0.5, 0.5]])
    p = sparsemax(z)
    torch.testing.assert_close(p.sum(-1), torch.ones(2))
    assert (p >= 0).all()
    assert p[0, 0] == 1.0 and (p[0, 1:] == 0).all()  # margin > 1: all mass on the max
    torch.testing.assert_close(p[1], torch.full((4,), 0.25))
    # hand-computed case: z = (1, 0.8, 0): support {0, 1}, tau = 0.4 -> (0.6, 0.4, 0)
    torch.testing.assert_close(sparsemax(torch.tensor([1.0, 0.8, 0.0])),
                               torch.tensor([0.6, 0.4, 0.0]))


def test_sparsemax_ignores_masked_keys_and_has_gradients():
    z = torch.tensor([[2.0, float("-inf"), 1.5]], requires_grad=True)
    p = sparsemax(z)
    assert p[0, 1] == 0
    (p * torch.tensor([1.0, 2.0, 3.0])).sum().backward()
    assert torch.isfinite(z.grad[0, [0, 2]]).all()


def test_bahdanau_is_additive_score_with_softmax():
    q, k, v = qkv(D=6)
    att = bahdanau(6, 6, 10)
    s = att.score
    assert isinstance(s, AdditiveScore)
    ctx, w = att(q, k, v)
    # Bahdanau et al. (2015), Eq. 6-7 written out by hand
    e = torch.einsum("h,bqkh->bqk", s.v.weight[0],
                     torch.tanh((q @ s.q_proj.weight.T)[:, :, None] + (k @ s.k_proj.weight.T
                                                                       + s.k_proj.bias)[:, None]))
    alpha = e.softmax(-1)
    torch.testing.assert_close(w, alpha)
    torch.testing.assert_close(ctx, alpha @ v)


def test_luong_general_and_dot():
    q, k, v = qkv(D=4)
    general = luong(4, 4, "general")
    W = general.score.proj.weight  # (Dk, Dq)
    torch.testing.assert_close(general(q, k, v)[1], (q @ W.T @ k.transpose(1, 2)).softmax(-1))
    dot = luong(4, 4, "dot")
    torch.testing.assert_close(dot(q, k, v)[1], (q @ k.transpose(1, 2)).softmax(-1))


def test_scaled_dot_matches_torch_sdpa_with_padding():
    q, k, v = qkv(B=3, Tq=4, Tk=6, D=16)
    pad = torch.zeros(3, 6, dtype=torch.bool)
    pad[1, 4:] = True
    ctx, _ = Attention(ScaledDotScore())(q, k, v, key_padding_mask=pad)
    ref = F.scaled_dot_product_attention(q, k, v, attn_mask=~pad[:, None, :])
    torch.testing.assert_close(ctx, ref)


def test_causal_mask_matches_sdpa_is_causal():
    x = torch.randn(2, 5, 8)
    causal = torch.ones(5, 5, dtype=torch.bool).triu(1)
    ctx, w = Attention(ScaledDotScore())(x, x, x, attn_mask=causal)
    torch.testing.assert_close(ctx, F.scaled_dot_product_attention(x, x, x, is_causal=True))
    assert (w.triu(1) == 0).all()


def test_multihead_equals_torch_multihead_attention():
    B, T, S, C, H = 2, 4, 7, 16, 4
    ours = MultiHeadAttention(C, H)
    ref = torch.nn.MultiheadAttention(C, H, batch_first=True)
    with torch.no_grad():
        ref.in_proj_weight.copy_(ours.in_proj.weight)
        ref.in_proj_bias.copy_(ours.in_proj.bias)
        ref.out_proj.weight.copy_(ours.out_proj.weight)
        ref.out_proj.bias.copy_(ours.out_proj.bias)
    q, kv = torch.randn(B, T, C), torch.randn(B, S, C)
    pad = torch.zeros(B, S, dtype=torch.bool)
    pad[0, 5:] = True
    out, w = ours(q, kv, kv, key_padding_mask=pad)
    ref_out, ref_w = ref(q, kv, kv, key_padding_mask=pad)
    torch.testing.assert_close(out, ref_out)
    torch.testing.assert_close(w, ref_w)


def test_general_score_is_bilinear():
    s = GeneralScore(3, 5)
    q, k = torch.randn(1, 1, 3), torch.randn(1, 1, 5)
    expected = (q[0, 0] @ s.proj.weight.T @ k[0, 0])
    assert math.isclose(s(q, k).item(), expected.item(), rel_tol=1e-5)


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="normaliser"):
        Normalizer("argmin")
    with pytest.raises(ValueError, match="divisible"):
        MultiHeadAttention(10, 3)


def test_decoder_attention_adapter_matches_fairseq_interface():
    from tdx.attention.models import DecoderAttention

    S, B, H = 5, 2, 8
    layer = DecoderAttention("additive", H, H, H)
    pad = torch.zeros(S, B, dtype=torch.bool)
    pad[3:, 1] = True
    out, w = layer(torch.randn(B, H), torch.randn(S, B, H), pad)
    assert out.shape == (B, H) and w.shape == (S, B)
    torch.testing.assert_close(w.sum(0), torch.ones(B))
    assert (w[3:, 1] == 0).all()


def test_copy_preset_orders_by_attention_and_counts_updates(tmp_path):
    root = fixture_runs(tmp_path)
    md = report([root], fmt="md", preset="copy")
    body = md.splitlines()[2:]
    assert body[0].startswith("| lstm") and body[1].startswith("| transformer")
    assert "not reached (0/2)" in body[0]
    assert "150 ± 71" in body[1]  # 90% reached at 200 and at 100 updates
    assert "97.0 ± 2.8" in body[1]
