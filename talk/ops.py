"""The TaLK window average (Lioutas & Guo, ICML 2020, Sec. 3, Eq. 3-6) as tensor ops.

For token i with fractional window [left_i, right_i] (already clamped to [0, T-1]):

    S_t = sum_{j <= t} x_j / K,  S_{-1} = 0                        (summed-area table, Eq. 5)
    o_i = S(right_i) - S(left_i - 1)                                (Eq. 6)

where S at a fractional position p is interpolated linearly between floor(p) and
floor(p) + 1, which makes o differentiable with respect to the window edges (Sec. 3.3).
K = l_max + r_max + 1 is the layer's largest window, not the actual one.

Layout: x (T, B, C) time-first as in fairseq; edges (T, B, H) with C = H * D, every channel
of a head sharing the head's edges. Work is O(T * B * C): one cumulative sum and one fused
gather + interpolation. Prefix sums are accumulated in float32 for half/bfloat16 inputs.
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


# ---------------------------------------------------------------------------- compiled path

_COMPILED = None
_COMPILE_FAILED = False


def compiled_enabled() -> bool:
    """The fused torch.compile kernel is used on CPU unless TDX_TALK_COMPILE=0."""
    return os.environ.get("TDX_TALK_COMPILE", "1") != "0" and not _COMPILE_FAILED


def talk_window_sum_fast(x: Tensor, left: Tensor, right: Tensor, K: int) -> Tensor:
    """talk_window_sum through torch.compile (one fused loop for the gathers and the
    interpolation); falls back to the eager ops if compiling fails, for good."""
    global _COMPILED, _COMPILE_FAILED
    if not compiled_enabled():
        return talk_window_sum(x, left, right, K)
    try:
        if _COMPILED is None:
            _COMPILED = torch.compile(talk_window_sum, dynamic=True)
        return _COMPILED(x, left, right, K)
    except Exception:  # noqa: BLE001 - any compiler problem: use the eager path
        _COMPILE_FAILED = True
        return talk_window_sum(x, left, right, K)
