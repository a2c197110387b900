"""Attention as "Copy this Sentence" (Lioutas & Drozdyuk, 2019, Sec. 2) defines it.

Attention is a *selection*: given a query q and a set of keys k_1..k_n with values v_1..v_n,
return the value whose key is "largest" for q. "Largest" is fixed by a score function
s(q, k_j); the hard selection argmax_j s(q, k_j) is made differentiable by replacing the
one-hot argmax with a normaliser N (softmax, sparsemax, ...) and returning the expectation

    attend(q, K, V) = sum_j N(s(q, K))_j v_j                                 (Eq. 1)

Scores and normalisers are independent pieces and compose freely: Bahdanau attention is
(additive score, softmax), Luong attention is (dot or general score, softmax), and the
Transformer's attention is (scaled dot score, softmax) applied per head after projections.

Shapes: queries (B, Tq, Dq), keys (B, Tk, Dk), values (B, Tk, Dv); scores (B, Tq, Tk).
A key padding mask is (B, Tk) with True at padded keys.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# ---------------------------------------------------------------------------- scores


class DotScore(nn.Module):
    """s(q, k) = q . k  (Luong "dot"; needs Dq == Dk)."""

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return q @ k.transpose(-1, -2)  # (B, Tq, Tk)


class ScaledDotScore(nn.Module):
    """s(q, k) = q . k / sqrt(d)  (Vaswani et al. 2017, Eq. 1)."""

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return q @ k.transpose(-1, -2) / math.sqrt(q.size(-1))


class GeneralScore(nn.Module):
    """s(q, k) = q^T W k  (Luong "general" / bilinear, multiplicative attention)."""

    def __init__(self, query_dim: int, key_dim: int, bias: bool = False) -> None:
        super().__init__()
        self.proj = nn.Linear(query_dim, key_dim, bias=bias)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        return self.proj(q) @ k.transpose(-1, -2)


class AdditiveScore(nn.Module):
    """s(q, k) = v^T tanh(W_q q + W_k k)  (Bahdanau et al. 2015, Eq. 6 / "concat")."""

    def __init__(self, query_dim: int, key_dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.q_proj = nn.Linear(query_dim, hidden_dim, bias=False)
        self.k_proj = nn.Linear(key_dim, hidden_dim, bias=True)
        self.v = nn.Linear(hidden_dim, 1, bias=False)

    def forward(self, q: Tensor, k: Tensor) -> Tensor:
        h = torch.tanh(self.q_proj(q).unsqueeze(2) + self.k_proj(k).unsqueeze(1))  # (B,Tq,Tk,H)
        return self.v(h).squeeze(-1)  # (B, Tq, Tk)


SCORES = {"dot": DotScore, "scaled_dot": ScaledDotScore, "general": GeneralScore,
          "additive": AdditiveScore}

# ---------------------------------------------------------------------------- normalisers


def hardmax(scores: Tensor, dim: int = -1) -> Tensor:
    """One-hot argmax: the non-differentiable selection attention relaxes (Sec. 2)."""
    return F.one_hot(scores.argmax(dim), scores.size(dim)).to(scores.dtype).movedim(-1, dim)


def softmax(scores: Tensor, dim: int = -1, temperature: float = 1.0) -> Tensor:
    """softmax(s / tau); tau -> 0 approaches hardmax, tau -> inf the uniform average."""
    return torch.softmax(scores / temperature, dim=dim)


def sparsemax(scores: Tensor, dim: int = -1) -> Tensor:
    """Euclidean projection onto the simplex (Martins & Astudillo 2016, Alg. 1).

    Exactly zero weight for low scores; -inf scores (masked keys) get zero weight.
    """
    z = scores.movedim(dim, -1)
    finite = torch.isfinite(z)
    z = torch.where(finite, z, torch.full_like(z, -1e9 if z.dtype != torch.float16 else -1e4))
    z_sorted, _ = z.sort(dim=-1, descending=True)
    ks = torch.arange(1, z.size(-1) + 1, device=z.device, dtype=z.dtype)
    cumsum = z_sorted.cumsum(-1)
    support = 1 + ks * z_sorted > cumsum  # (..., n)
    k_z = support.sum(-1, keepdim=True)  # size of the support
    tau = (cumsum.gather(-1, k_z - 1) - 1) / k_z.to(z.dtype)
    return torch.clamp(z - tau, min=0).movedim(-1, dim)


class Normalizer(nn.Module):
    """Wraps a normaliser by name: "hardmax", "softmax" (with temperature), "sparsemax"."""

    def __init__(self, name: str = "softmax", temperature: float = 1.0) -> None:
        super().__init__()
        if name not in ("hardmax", "softmax", "sparsemax"):
            raise ValueError(f"unknown normaliser {name!r}; use hardmax, softmax or sparsemax")
        self.name, self.temperature = name, temperature

    def forward(self, scores: Tensor) -> Tensor:
        if self.name == "softmax":
            return softmax(scores, temperature=self.temperature)
        return hardmax(scores) if self.name == "hardmax" else sparsemax(scores)


# ---------------------------------------------------------------------------- attention


class Attention(nn.Module):
    """attend(q, K, V) = N(s(q, K)) V  (Eq. 1), with any score and normaliser."""

    def __init__(self, score: nn.Module, normalizer: nn.Module | None = None) -> None:
        super().__init__()
        self.score = score
        self.normalizer = normalizer if normalizer is not None else Normalizer("softmax")

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Returns (context (B, Tq, Dv), weights (B, Tq, Tk)).

        attn_mask is (Tq, Tk) or (B, Tq, Tk), True where attending is forbidden.
        """
        scores = self.score(q, k)  # (B, Tq, Tk)
        if key_padding_mask is not None:
            scores = scores.masked_fill(key_padding_mask.unsqueeze(1), float("-inf"))
        if attn_mask is not None:
            scores = scores.masked_fill(attn_mask, float("-inf"))
        weights = self.normalizer(scores)
        return weights @ v, weights


def bahdanau(query_dim: int, key_dim: int, hidden_dim: int) -> Attention:
    """Bahdanau et al. (2015): additive score + softmax."""
    return Attention(AdditiveScore(query_dim, key_dim, hidden_dim), Normalizer("softmax"))


def luong(query_dim: int, key_dim: int, kind: str = "general") -> Attention:
    """Luong et al. (2015): dot or general (bilinear) score + softmax."""
    score = DotScore() if kind == "dot" else GeneralScore(query_dim, key_dim)
    return Attention(score, Normalizer("softmax"))


class MultiHeadAttention(nn.Module):
    """Multi-head attention (Vaswani et al. 2017, Sec. 3.2.2) as H parallel instances of
    Eq. 1 with the scaled-dot score, on learned projections of q, k, v.

    Parameter layout matches torch.nn.MultiheadAttention (in_proj_weight stacked q;k;v,
    out_proj), so weights can be copied between the two.
    """

    def __init__(self, embed_dim: int, num_heads: int, normalizer: nn.Module | None = None
                 ) -> None:
        super().__init__()
        if embed_dim % num_heads:
            raise ValueError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        self.h, self.d = num_heads, embed_dim // num_heads
        self.in_proj = nn.Linear(embed_dim, 3 * embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.attend = Attention(ScaledDotScore(), normalizer)

    def forward(self, q: Tensor, k: Tensor, v: Tensor, key_padding_mask: Tensor | None = None,
                attn_mask: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """q (B, Tq, C), k/v (B, Tk, C) -> (B, Tq, C), head-averaged weights (B, Tq, Tk)."""
        B, Tq, C = q.shape
        Tk = k.size(1)
        wq, wk, wv = self.in_proj.weight.chunk(3)
        bq, bk, bv = self.in_proj.bias.chunk(3)

        def heads(x: Tensor, w: Tensor, b: Tensor, T: int) -> Tensor:
            return F.linear(x, w, b).view(B, T, self.h, self.d).transpose(1, 2).reshape(
                B * self.h, T, self.d)  # (B*H, T, d)

        qh, kh, vh = heads(q, wq, bq, Tq), heads(k, wk, bk, Tk), heads(v, wv, bv, Tk)
        kpm = None if key_padding_mask is None else key_padding_mask.repeat_interleave(self.h, 0)
        ctx, w = self.attend(qh, kh, vh, kpm, attn_mask)  # (B*H, Tq, d)
        ctx = ctx.view(B, self.h, Tq, self.d).transpose(1, 2).reshape(B, Tq, C)
        return self.out_proj(ctx), w.view(B, self.h, Tq, Tk).mean(1)
