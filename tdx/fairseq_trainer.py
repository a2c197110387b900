"""fairseq's Trainer with one change: a NaN or infinite gradient norm is a divergence.

fairseq answers a non-finite gradient norm by saving `crash.pt`, re-running the batch under
its NanDetector and re-raising, which the NanDetector's hooks turn into an unrelated error;
tdx records it as it records a NaN loss (status `diverged`, nothing written) instead.
Imported by the fairseq engine only, after fairseq itself.
"""

from __future__ import annotations

import torch
from fairseq.trainer import Trainer

from tdx.errors import Diverged


class TdxTrainer(Trainer):
    def clip_grad_norm(self, clip_norm: float) -> torch.Tensor:
        """The gradient norm (clipped to `clip_norm` as fairseq does); Diverged if it is
        NaN or infinite (fairseq's AMP skips such a step instead: kept as it is)."""
        norm = super().clip_grad_norm(clip_norm)
        if not self.cfg.common.amp and not torch.isfinite(norm).all():
            raise Diverged(f"the gradient norm is {float(norm)} at update "
                           f"{self.get_num_updates() + 1}")
        return norm
