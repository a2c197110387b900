"""A direct, readable TaLK window average (Eq. 6 written as a loop over windows).

Used only by the tests to check the fast path. With k_r = floor(right), f_r = frac(right),
k_l = floor(left - 1), f_l = frac(left - 1), the interpolated summed-area difference is

    o_i = (1/K) [ sum_{k_l < j <= k_r} x_j  +  f_r x_{k_r + 1}  -  f_l x_{k_l + 1} ]

i.e. every token strictly inside the window counts once, and the two fractional edges
count in part.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor


def talk_reference(x: Tensor, left: Tensor, right: Tensor, K: int) -> Tensor:
    """x (T, B, C), left/right (T, B, H) fractional edges in [0, T-1]."""
    T, B, C = x.shape
    H = left.size(-1)
    D = C // H
    out = torch.zeros_like(x)
    for i in range(T):
        for b in range(B):
            for h in range(H):
                ch = slice(h * D, (h + 1) * D)
                r, lm1 = float(right[i, b, h]), float(left[i, b, h]) - 1.0
                k_r, k_l = math.floor(r), math.floor(lm1)
                f_r, f_l = r - k_r, lm1 - k_l
                acc = torch.zeros(D, dtype=x.dtype)
                for j in range(k_l + 1, k_r + 1):
                    acc += x[j, b, ch]
                if k_r + 1 < T:
                    acc += f_r * x[k_r + 1, b, ch]
                if 0 <= k_l + 1 < T:
                    acc -= f_l * x[k_l + 1, b, ch]
                out[i, b, ch] = acc / K
    return out
