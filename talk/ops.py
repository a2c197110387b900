"""The TaLK window average (Lioutas & Guo, ICML 2020, Sec. 3, Eq. 3-6) as tensor ops.

For token i with fractional window [left_i, right_i] (already clamped to [0, T-1]):

    S_t = sum_{j <= t} x_j / K,  S_{-1} = 0                        (summed-area table, Eq. 5)
    o_i = S(right_i) - S(left_i - 1)                                (Eq. 6)

where S at a fractional position p is interpolated linearly between floor(p) and
floor(p) + 1, which makes o differentiable with respect to the window edges (Sec. 3.3).
K = l_max + r_max + 1 is the layer's largest window, not the actual one.

Layout: x (T, B, C) time-first as in fairseq; edges (T, B, H) with C = H * D, every channel
of a head sharing the head's edges. Work is O(T * B * C).

Two implementations, equal to float tolerance:
- `talk` (used everywhere): on CPU the C++ kernel in talk/csrc, one streaming pass over time
  forward and one backward, no stored table; `talk_layer` adds the offset projection
  (Eq. 3-4) to the same passes;
- `window_edges` + `talk_window_sum`: plain tensor ops (a cumulative sum, two gathers and a
  lerp), the automatic fallback for CUDA tensors or when the kernel is not built. Prefix sums
  are accumulated in float32 for half/bfloat16 inputs.
"""

from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import Tensor


def prefix_table(x: Tensor) -> Tensor:
    """(T, B, C) -> (T+1, B, C) with row 0 = 0 and row t+1 = K S_t (Eq. 5 before the 1/K,
    which is applied to the output instead: one pass less)."""
    T, B, C = x.shape
    acc = torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype
    if torch.is_grad_enabled() and x.requires_grad:
        return F.pad(torch.cumsum(x.to(acc), 0), (0, 0, 0, 0, 1, 0))
    table = torch.empty(T + 1, B, C, dtype=acc, device=x.device)
    table[0].zero_()
    torch.cumsum(x.to(acc), 0, out=table[1:])
    return table


def _interp(table: Tensor, pos: Tensor) -> Tensor:
    """table (T+1, B, H, D) at fractional rows pos (T, B, H): lerp(floor, floor + 1)."""
    last = table.size(0) - 1
    k = pos.detach().floor().clamp_(0, last)
    frac = (pos - k).unsqueeze(-1)  # (T, B, H, 1): carries the gradient to the offsets
    k0 = k.long().unsqueeze(-1).expand(*pos.shape, table.size(-1))
    k1 = (k0 + 1).clamp_(max=last)
    return torch.lerp(table.gather(0, k0), table.gather(0, k1), frac.to(table.dtype))


def talk_window_sum(x: Tensor, left: Tensor, right: Tensor, K: int) -> Tensor:
    """o_i = S(right_i) - S(left_i - 1) (Eq. 6); x (T, B, C), left/right (T, B, H)."""
    T, B, C = x.shape
    H = left.size(-1)
    table = prefix_table(x).view(T + 1, B, H, C // H)
    # In table rows, S(p) sits at p + 1: right -> right + 1, left - 1 -> left.
    out = (_interp(table, right + 1) - _interp(table, left)) / K
    return out.view(T, B, C).to(x.dtype)


def window_edges(offsets_left: Tensor, offsets_right: Tensor | None, l_max: int,
                 r_max: int) -> tuple[Tensor, Tensor]:
    """Relative offsets in [0, 1] (T, B, H) -> clamped absolute edges (Eq. 3-4)."""
    T = offsets_left.size(0)
    i = torch.arange(T, device=offsets_left.device, dtype=offsets_left.dtype).view(T, 1, 1)
    left = (i - offsets_left * l_max).clamp(0, T - 1)
    if offsets_right is None or r_max == 0:
        right = i.expand_as(left)
    else:
        right = (i + offsets_right * r_max).clamp(0, T - 1)
    return left, right


# ------------------------------------------------------------------------------ C++ kernel

try:  # built by `make install` (setup.py); without it, the tensor ops above are used
    from tdx.talk import _C
except ImportError:  # pragma: no cover - depends on the install
    _C = None


# dL/dx of at least this many bytes is written with non-temporal stores (talk_op.cpp,
# stream_row), skipping the read of the lines it overwrites. Measured when the offsets'
# gradient was still added afterwards (TaLKConv forward+backward, B=8, C=512, 2 cores):
# T=1024 (16 MB) 4% faster, 2048 5%, 4096 7%, 8192 6%; at T=512 (8 MB, in cache and read
# back at once) streaming made it 11% slower. With the fused layer_backward, at 2048 and
# 8192: medians of 4 rounds 16.8 -> 15.8 ms and 80 -> 74 ms.
STREAM_MIN_BYTES = 16 << 20


def kernel_available() -> bool:
    """The CPU kernel (talk/csrc) is used unless it is not built or TDX_TALK_KERNEL=0."""
    return _C is not None and os.environ.get("TDX_TALK_KERNEL", "1") != "0"


def kernel_dtype(x: Tensor, fast: bool = True) -> torch.dtype | None:
    """The dtype the C++ kernel computes x in (float64, else float32), or None where the
    tensor ops are used instead (CUDA, `fast=False`, kernel not built or switched off)."""
    if not (fast and kernel_available() and x.device.type == "cpu"):
        return None
    return torch.float64 if x.dtype == torch.float64 else torch.float32


class _TaLKFunction(torch.autograd.Function):
    """Window average with the fused CPU kernel: forward and backward each stream over time
    per (batch, head) column and never store the summed-area table."""

    @staticmethod
    def forward(ctx, x: Tensor, a: Tensor, heads: int, l_max: int, r_max: int) -> Tensor:
        ctx.save_for_backward(x, a)
        ctx.args = (heads, l_max, r_max)
        return _C.forward(x, a, heads, l_max, r_max)

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, a = ctx.saved_tensors
        gx, ga = _C.backward(grad.contiguous(), x, a, *ctx.args, STREAM_MIN_BYTES)
        return gx, ga, None, None, None


def relative_offsets(x: Tensor, weight: Tensor, bias: Tensor, keep: Tensor | None = None
                     ) -> Tensor:
    """a = sigmoid(x W^T + b) in [0, 1] (Eq. 3-4 before scaling by l_max, r_max), times the
    offset-dropout mask `keep` (a dropped offset becomes 0, not rescaled). (T, B, C) ->
    (T, B, A); float32 for half/bfloat16 inputs."""
    logits = F.linear(x, weight.to(x.dtype), bias.to(x.dtype))
    a = torch.sigmoid(logits if logits.dtype == torch.float64 else logits.float())
    return a if keep is None else a * keep


class _TaLKLayerFunction(torch.autograd.Function):
    """A whole TaLK layer in the C++ kernel: the offsets (Linear, sigmoid, dropout mask:
    Eq. 3-4) are computed inside the window average's pass over x (`layer_forward`), and
    their backward inside the window's backward pass (`layer_backward`), so x and dL/dx
    each cross memory once per pass and no (T, B, C) tensor is added to another."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor, keep: Tensor | None,
                heads: int, l_max: int, r_max: int) -> Tensor:
        out, sig, a = _C.layer_forward(x, weight, bias, keep, heads, l_max, r_max)
        ctx.save_for_backward(x, weight, sig, a, keep)
        ctx.args = (heads, l_max, r_max)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        x, weight, sig, a, keep = ctx.saved_tensors
        gx, g_weight, g_bias = _C.layer_backward(grad.contiguous(), x, weight, sig, a, keep,
                                                 *ctx.args, STREAM_MIN_BYTES)
        needs = ctx.needs_input_grad
        return (gx, g_weight if needs[1] else None, g_bias if needs[2] else None,
                None, None, None, None)


def talk_layer(x: Tensor, weight: Tensor, bias: Tensor, keep: Tensor | None, heads: int,
               l_max: int, r_max: int, fast: bool = True) -> Tensor:
    """A whole TaLK layer's op: a = sigmoid(x W^T + b) (times the dropout mask `keep`), then
    `talk(x, a, ...)`. weight (A, C) with A = 2H (encoder) or H (causal). The fused Function
    on the kernel's path; the same ops through autograd otherwise."""
    work = kernel_dtype(x, fast)
    if work is None:
        return talk(x, relative_offsets(x, weight, bias, keep), heads, l_max, r_max,
                    fast=False)
    if weight.size(0) == heads:  # causal
        r_max = 0
    keep = None if keep is None else keep.to(work).contiguous()
    out = _TaLKLayerFunction.apply(x.to(work).contiguous(), weight.to(work), bias.to(work),
                                   keep, heads, l_max, r_max)
    return out.to(x.dtype)


def talk(x: Tensor, a: Tensor, heads: int, l_max: int, r_max: int, fast: bool = True
         ) -> Tensor:
    """TaLK window average from relative offsets (Eq. 3-6): x (T, B, C) and a (T, B, 2H)
    in [0, 1], left offsets of the H heads then right ones, or a (T, B, H) for a causal layer
    (left only, r_max ignored) -> (T, B, C).

    On CPU with float32/float64 this is the C++ kernel; otherwise (CUDA, `fast=False`, the
    kernel not built, TDX_TALK_KERNEL=0) the tensor ops `window_edges` + `talk_window_sum`.
    half/bfloat16 inputs are computed in float32 and cast back."""
    causal = a.size(-1) == heads
    if causal:
        r_max = 0
    work = kernel_dtype(x, fast)
    if work is None:
        a_left, a_right = (a, None) if causal else a.split(heads, dim=-1)
        left, right = window_edges(a_left, a_right, l_max, r_max)
        return talk_window_sum(x, left, right, l_max + r_max + 1)
    out = _TaLKFunction.apply(x.to(work).contiguous(), a.to(work).contiguous(), heads, l_max,
                              r_max)
    return out.to(x.dtype)
