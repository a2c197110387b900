"""TaLKConv: Time-aware Large Kernel convolution (Lioutas & Guo, ICML 2020, Sec. 3).

Per token, a linear layer predicts how far to look left (and right, in the encoder) as a
fraction of the layer's maxima l_max, r_max (Eq. 3-4); the window's values are averaged
with a summed-area table (Eq. 5-6). O(T) time and memory, no attention matrix.

    encoder:  a = sigmoid(W x) in (0, 1)^{2H}    left = i - a_l l_max, right = i + a_r r_max
    decoder:  a = sigmoid(W x) in (0, 1)^{H}     left = i - a_l l_max, right = i   (causal)

Offset dropout (rate `offset_dropout`, the paper's weight dropout) sets a relative offset
to 0 during training, shrinking that side of the window to the token itself.

Incremental decoding (causal only) keeps a running prefix sum of the last l_max + 1 steps,
so step-by-step outputs equal the full causal op.
"""

from __future__ import annotations

import torch
from fairseq.incremental_decoding_utils import with_incremental_state
from torch import Tensor, nn

from tdx.talk.ops import _interp, relative_offsets, talk_layer


@with_incremental_state
class TaLKConv(nn.Module):
    def __init__(self, embed_dim: int, num_heads: int, left_max: int, right_max: int = 0,
                 causal: bool = False, offset_dropout: float = 0.0, fast: bool = True
                 ) -> None:
        super().__init__()
        if num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f"TaLKConv: embed_dim ({embed_dim}) must be divisible by "
                             f"num_heads ({num_heads})")
        if left_max < 0 or right_max < 0:
            raise ValueError("TaLKConv: left_max and right_max must be >= 0")
        if causal and right_max:
            raise ValueError("TaLKConv: a causal (decoder) layer has right_max = 0")
        self.embed_dim, self.num_heads = embed_dim, num_heads
        self.left_max, self.right_max, self.causal = left_max, right_max, causal
        self.K = left_max + right_max + 1
        self.offset_dropout, self.fast = offset_dropout, fast
        self.offsets = nn.Linear(embed_dim, num_heads * (1 if causal else 2))

    def extra_repr(self) -> str:
        return (f"{self.embed_dim}, heads={self.num_heads}, left_max={self.left_max}, "
                f"right_max={self.right_max}, causal={self.causal}, "
                f"offset_dropout={self.offset_dropout}")

    def dropout_mask(self, x: Tensor) -> Tensor | None:
        """Offset dropout's keep mask (T, B, A), or None outside training."""
        if not (self.training and self.offset_dropout > 0):
            return None
        T, B, _ = x.shape
        return torch.rand(T, B, self.offsets.out_features, device=x.device) >= self.offset_dropout

    def relative_offsets(self, x: Tensor) -> Tensor:
        """(T, B, C) -> a in [0, 1]: (T, B, 2H), left offsets of the heads then right ones,
        or (T, B, H) for a causal layer (Eq. 3-4 before scaling by l_max, r_max)."""
        return relative_offsets(x, self.offsets.weight, self.offsets.bias, self.dropout_mask(x))

    def forward(self, x: Tensor, padding_mask: Tensor | None = None,
                incremental_state: dict | None = None) -> Tensor:
        """x (T, B, C) -> (T, B, C). padding_mask (B, T), True at padding."""
        if x.dim() != 3 or x.size(-1) != self.embed_dim:
            raise ValueError(f"TaLKConv expects input of shape (T, B, {self.embed_dim}); got "
                             f"{tuple(x.shape)}")
        if padding_mask is not None:
            x = x.masked_fill(padding_mask.t().unsqueeze(-1), 0.0)  # (T, B, C)
        if incremental_state is not None:
            return self._step(x, incremental_state)
        return talk_layer(x, self.offsets.weight, self.offsets.bias, self.dropout_mask(x),
                          self.num_heads, self.left_max, self.right_max, fast=self.fast)

    # -- incremental (causal) decoding -------------------------------------------------
    def _step(self, x: Tensor, incremental_state: dict) -> Tensor:
        """Decode x (1, B, C) given the cached prefix sums of earlier steps."""
        if not self.causal:
            raise ValueError("TaLKConv: incremental decoding needs a causal layer")
        T, B, C = x.shape
        H = self.num_heads
        state = self.get_incremental_state(incremental_state, "talk") or {}
        table: Tensor = state.get("table", x.new_zeros(1, B, C, dtype=torch.float32))
        step = int(state["step"].item()) if "step" in state else 0
        outs = []
        for t in range(T):
            table = torch.cat([table, table[-1:] + x[t : t + 1].float() / self.K], 0)
            table = table[-(self.left_max + 2):]  # rows for positions step-l_max-1 .. step
            i = step + t
            a_left = self.relative_offsets(x[t : t + 1])  # (1, B, H)
            left = (i - a_left * self.left_max).clamp(min=0)  # (1, B, H)
            # table row r holds S at absolute position (i - len(table) + 1 + r) - 1
            first = i + 2 - table.size(0)  # absolute table-space index of row 0
            tab = table.view(table.size(0), B, H, C // H)
            pos = left - first  # S(left - 1) sits at table-space position `left`
            s_left = _interp(tab, pos)
            outs.append((tab[-1:] - s_left).view(1, B, C))
        self.set_incremental_state(incremental_state, "talk", {
            "table": table, "step": torch.tensor(step + T)})
        return torch.cat(outs, 0).to(x.dtype)

    def reorder_incremental_state(self, incremental_state: dict, new_order: Tensor) -> None:
        """Beam search: follow the surviving hypotheses (batch dim of the cache)."""
        state = self.get_incremental_state(incremental_state, "talk")
        if state is not None and "table" in state:
            state["table"] = state["table"].index_select(1, new_order)
            self.set_incremental_state(incremental_state, "talk", state)

