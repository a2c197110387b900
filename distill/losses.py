"""Distillation losses (Rashid et al. 2021, Sec. 3.3; Hinton et al. 2015).

- Classification: KL(p_T || p_S) with both distributions softened by the temperature t,
  scaled by t^2 so gradients keep their size across temperatures; averaged over the batch.
- Regression (STS-B): the squared error between the student's and the teacher's score.
The same quantity is the divergence the adversary maximises.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor


def kd_loss(student: Tensor, teacher: Tensor, temperature: float = 1.0,
            regression: bool = False) -> Tensor:
    """student, teacher: (B, labels) logits (labels = 1: scores). Returns a scalar."""
    if regression:
        return F.mse_loss(student.squeeze(-1), teacher.squeeze(-1))
    t = temperature
    log_s = F.log_softmax(student / t, dim=-1)
    log_t = F.log_softmax(teacher / t, dim=-1)
    return F.kl_div(log_s, log_t, log_target=True, reduction="batchmean") * t * t


def label_loss(logits: Tensor, labels: Tensor, regression: bool = False) -> Tensor:
    """Cross-entropy on gold classes, or squared error on gold scores (recipe 1)."""
    if regression:
        return F.mse_loss(logits.squeeze(-1), labels.float())
    return F.cross_entropy(logits, labels.long())
