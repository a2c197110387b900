"""Distillation losses (Rashid et al. 2021, Sec. 3.3; Hinton et al. 2015).

- Classification: KL(p_T || p_S) with both distributions softened by the temperature t,
  scaled by t^2 so gradients keep their size across temperatures; averaged over the batch.
- Regression (STS-B): the squared error between the student's and the teacher's score.
The same quantity is the divergence the adversary maximises.
- `kind="mse"` (optional, classification): the squared error between the two logit
  vectors, averaged over the classes, instead of the KL (logit regression, Ba & Caruana
  2014; the student matches the teacher's margins even where its softmax
  saturates). The adversaries keep the KL.
- `ClassBalance` (optional, zero-shot recipes): per-example weights so that each of the
  teacher's classes carries the same share of the KD loss, whatever share of the transfer
  text the teacher assigns to it (not in the paper: out-of-domain text is far from the
  task's class prior, e.g. the MRPC teacher calls about a quarter of the out-of-domain
  pairs paraphrases against two thirds of MRPC's test pairs).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

KD_KINDS = ("kl", "mse")


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0,
            regression: bool = False, weight: Tensor | None = None, kind: str = "kl"
            ) -> Tensor:
    """student, teacher: (B, labels) logits (labels = 1: scores). Returns a scalar: the
    mean over the batch, or the `weight`-weighted mean (weight (B,))."""
    if regression:
        err = (student.squeeze(-1) - teacher.squeeze(-1)).square()  # (B,)
    elif kind == "mse":
        err = (student - teacher).square().mean(-1)  # (B,)
    else:
        t = temperature
        log_s = F.log_softmax(student / t, dim=-1)
        log_t = F.log_softmax(teacher / t, dim=-1)
        err = F.kl_div(log_s, log_t, log_target=True, reduction="none").sum(-1) * t * t
    return err.mean() if weight is None else (err * weight).sum() / weight.sum()


class ClassBalance:
    """Weights w_i = sum_c p_T(c | x_i) / m_c, normalised to mean 1 over the batch, where
    m_c is a running mean (momentum `momentum`, over the batches seen) of the teacher's
    probability of class c. Weighted this way, every class has the same expected mass in
    the loss. Scores (regression) are left unweighted (None)."""

    def __init__(self, momentum: float = 0.9) -> None:
        self.momentum = momentum
        self.mass: Tensor | None = None

    @torch.no_grad()
    def __call__(self, teacher: Tensor, regression: bool = False) -> Tensor | None:
        if regression:
            return None
        p = teacher.float().softmax(-1)  # (B, labels)
        batch = p.mean(0)
        self.mass = batch if self.mass is None else \
            self.momentum * self.mass + (1 - self.momentum) * batch
        w = (p / self.mass.clamp(min=1e-3)).sum(-1)  # (B,)
        return w / w.mean()

    def state_dict(self) -> dict[str, Tensor | None]:  # checkpointed with the student
        return {"mass": self.mass}

    def load_state_dict(self, state: dict[str, Tensor | None]) -> None:
        self.mass = state["mass"]


def label_loss(logits: Tensor, labels: Tensor, regression: bool = False) -> Tensor:
    """Cross-entropy on gold classes, or squared error on gold scores (recipe 1)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels.long())
