"""Adversaries that move out-of-domain inputs to where teacher and student disagree most
(Rashid et al., EMNLP 2021, Sec. 3.2), while staying close to natural text.

- `GumbelMLM` (the paper's): a masked-LM generator rewrites a share of the word pieces.
  Its choices are straight-through Gumbel-softmax samples (Jang et al. 2017): one-hot in
  the forward pass, the soft sample's gradient in the backward pass, so the divergence
  reaches the generator through the token choices. The generator maximises
  divergence - mlm_weight * MLM loss of the original tokens (the second term keeps its
  proposals plausible); the teacher is frozen and the student's gradient from this step
  is discarded. It chooses among ordinary word pieces only (`allowed`: no [CLS], [SEP],
  [PAD], [MASK], [UNK] or untrained [unusedN] pieces), as PGD's neighbours do.
- `NeighbourPGD`: embedding-space PGD. Each word piece may move inside the convex hull of
  its own embedding and those of its k nearest word pieces (cosine, in the teacher's
  embedding). The mixing weights softmax(s e_0 + delta) start on the original token and
  delta takes `steps` signed-gradient ascent steps on the divergence inside an L-inf
  ball of radius eps. Teacher and student embed the same mixture, each with its own
  embedding, so one perturbation is meaningful to both.

Both return a batch for the student: hard word pieces (GumbelMLM) or (candidates,
weights) soft tokens (NeighbourPGD), with the teacher's logits on it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from tdx.distill.losses import kd_loss
from tdx.distill.models import (
    Batch,
    Encoder,
    Generator,
    eval_mode,
    hard_ids,
    masked_positions,
    soft_embed,
)


@dataclass
class Soft:
    """Soft tokens: every position is a mixture of `cand` (B, L, k+1) word pieces."""

    cand: Tensor
    weights: Tensor  # (B, L, k+1), rows sum to 1

    def embed(self, model: Encoder) -> Tensor:  # (B, L, e)
        return (self.weights.unsqueeze(-1) * model.embed(self.cand)).sum(-2)


class GumbelMLM:
    def __init__(self, generator: Generator, lr: float, mask_prob: float, tau: float,
                 mlm_weight: float, special: Tensor, mask_id: int, temperature: float,
                 regression: bool, allowed: Tensor | None = None):
        self.gen, self.special, self.mask_id = generator, special, mask_id
        self.allowed = allowed  # (V,) bool: word pieces the generator may write
        self.opt = torch.optim.Adam(generator.parameters(), lr=lr)
        self.mask_prob, self.tau, self.mlm_weight = mask_prob, tau, mlm_weight
        self.t, self.regression = temperature, regression

    def mlm_loss(self, batch: Batch, rng: torch.Generator) -> Tensor:
        """Pre-training: predict masked word pieces of out-of-domain text."""
        positions = masked_positions(batch, self.mask_prob, self.special, rng)
        masked = Batch(batch.ids.masked_fill(positions, self.mask_id), batch.mask, batch.types)
        return F.cross_entropy(self.gen(masked, positions), batch.ids[positions])

    def step(self, teacher: Encoder, student: Encoder, batch: Batch, rng: torch.Generator
             ) -> tuple[Batch, Tensor, dict[str, float]]:
        """One generator update; returns the rewritten batch and the teacher's logits."""
        self.gen.train()
        positions = masked_positions(batch, self.mask_prob, self.special, rng)  # (B, L)
        masked = Batch(batch.ids.masked_fill(positions, self.mask_id), batch.mask, batch.types)
        logits = self.gen(masked, positions)  # (N, V)
        choose = logits if self.allowed is None else logits.masked_fill(~self.allowed,
                                                                         float("-inf"))
        u = torch.rand(logits.shape, generator=rng).clamp(1e-9, 1 - 1e-9)
        soft = F.softmax((choose - torch.log(-torch.log(u))) / self.tau, dim=-1)
        one_hot = F.one_hot(soft.argmax(-1), soft.shape[-1]).to(soft.dtype)
        tokens = one_hot + soft - soft.detach()  # straight-through
        t = teacher.forward_embeds(soft_embed(teacher, batch.ids, positions, tokens),
                                   batch.mask, batch.types)
        with eval_mode(student):  # the rewrite is searched against the deterministic student
            s = student.forward_embeds(soft_embed(student, batch.ids, positions, tokens),
                                       batch.mask, batch.types)
        div = kd_loss(s, t, self.t, self.regression)
        mlm = F.cross_entropy(logits, batch.ids[positions])
        self.opt.zero_grad()
        (-div + self.mlm_weight * mlm).backward()
        self.opt.step()
        student.zero_grad(set_to_none=True)  # this step trains the generator only
        new = Batch(hard_ids(batch.ids, positions, tokens.detach()), batch.mask, batch.types)
        changed = float((new.ids != batch.ids).sum()) / max(1, int(positions.sum()))
        return new, t.detach(), {"adv_div": div.item(), "adv_mlm": mlm.item(),
                                 "adv_changed": changed}


def nearest_neighbours(E: Tensor, k: int, allowed: Tensor, chunk: int = 2048) -> Tensor:
    """(V, k) the k most cosine-similar allowed word pieces of every word piece (itself
    excluded); rows of word pieces that are not allowed point to themselves."""
    V = E.shape[0]
    unit = F.normalize(E.detach().float(), dim=-1)
    out = torch.arange(V).unsqueeze(1).repeat(1, k)
    blocked = ~allowed
    for start in range(0, V, chunk):
        rows = torch.arange(start, min(V, start + chunk))
        sim = unit[rows] @ unit.T  # (n, V)
        sim[:, blocked] = -2.0
        sim[torch.arange(len(rows)), rows] = -2.0
        top = sim.topk(k, dim=-1).indices
        keep = allowed[rows]
        out[rows[keep]] = top[keep]
    return out


class NeighbourPGD:
    def __init__(self, neighbours: Tensor, steps: int, alpha: float, eps: float,
                 start: float, special: Tensor, temperature: float, regression: bool):
        self.nb, self.steps, self.alpha, self.eps, self.start = (
            neighbours, steps, alpha, eps, start)
        self.special, self.t, self.regression = special, temperature, regression

    def step(self, teacher: Encoder, student: Encoder, batch: Batch, rng: torch.Generator
             ) -> tuple[Batch, Soft, Tensor, dict[str, float]]:
        ids = batch.ids
        cand = torch.cat([ids.unsqueeze(-1), self.nb[ids]], dim=-1)  # (B, L, k+1)
        base = torch.zeros(cand.shape)
        base[..., 0] = self.start
        fixed = ~batch.mask | torch.isin(ids, self.special)  # special tokens stay
        base = base.masked_fill(fixed.unsqueeze(-1) & (torch.arange(cand.shape[-1]) > 0),
                                float("-inf"))
        delta = torch.zeros(cand.shape, requires_grad=True)
        div = torch.zeros(())
        with eval_mode(student):  # the perturbation is searched against the deterministic student
            for _ in range(self.steps):
                soft = Soft(cand, F.softmax(base + delta, dim=-1))
                t = teacher.forward_embeds(soft.embed(teacher), batch.mask, batch.types)
                s = student.forward_embeds(soft.embed(student), batch.mask, batch.types)
                div = kd_loss(s, t, self.t, self.regression)
                (grad,) = torch.autograd.grad(div, delta)
                delta = (delta + self.alpha * grad.sign()).clamp(-self.eps, self.eps)
                delta = delta.detach().requires_grad_(True)
        soft = Soft(cand, F.softmax(base + delta.detach(), dim=-1))
        with torch.no_grad():
            t = teacher.forward_embeds(soft.embed(teacher), batch.mask, batch.types)
        moved = 1.0 - float(soft.weights[..., 0][~fixed].mean()) if (~fixed).any() else 0.0
        return batch, soft, t, {"adv_div": div.item(), "adv_moved": moved}
