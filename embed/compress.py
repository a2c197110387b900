"""Compressed word embeddings that replace a shared input/output embedding E (V x d).

Every compressor is an `nn.Module` with the interface fairseq's encoders and decoders use of
an `nn.Embedding` (`forward(tokens)`, `num_embeddings`, `embedding_dim`, `padding_idx`,
`weight`), plus `project(x)` for the tied output layer (logits = x E^T) and `init_from(E)`,
which fits the compressed form to a trained E:

- `LowRank`: E ~ U V, truncated SVD in closed form (Eckart-Young).
- `Distilled`: E ~ ReLU(U) V (+ b), Distilled Embedding (Lioutas et al., Findings of EMNLP
  2020, Sec. 3): the non-linearity on the narrow factor, initialised by minimising the
  reconstruction error ||ReLU(U) V + b - E||^2 with Adam.
- `GroupReduce`: the vocabulary split into frequency groups, each with its own low rank,
  frequent words getting more rank (Chen et al., NeurIPS 2018, Sec. 3), initialised by a
  frequency-weighted SVD per group.
- `Decoded`: e_w = W2 f(W1 u_w + b1) + b2, r-dim word codes and a one-hidden-layer
  decoder (not rank-bounded), started at the SVD in closed form, then fitted by Adam.
- `Quantized`: post-training uniform quantisation to 8 or 4 bits with one scale per row;
  fine-tuning keeps float weights and trains through the rounding with a straight-through
  estimator (quantisation-aware training).

`size()` is the number of float32-equivalent parameters the compressed embedding stores
(for quantisation: bits / 32 per entry plus the row scales), the figure compression rates
are computed from.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdx.errors import UsageError


class CompressedEmbedding(nn.Module):
    """Common interface; subclasses define `weight` (the reconstructed V x d matrix)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None):
        super().__init__()
        self.num_embeddings, self.embedding_dim, self.padding_idx = (
            num_embeddings, embedding_dim, padding_idx)

    @property
    def weight(self) -> Tensor:  # (V, d)
        raise NotImplementedError

    def forward(self, tokens: Tensor) -> Tensor:  # (...,) -> (..., d)
        return F.embedding(tokens, self.weight, self.padding_idx)

    def project(self, x: Tensor) -> Tensor:  # (..., d) -> (..., V), the tied output layer
        return F.linear(x, self.weight)

    def size(self) -> float:
        return float(sum(p.numel() for p in self.parameters()))

    @torch.no_grad()
    def init_from(self, E: Tensor, counts: Tensor | None = None) -> dict[str, float]:
        raise NotImplementedError

    def reconstruction_error(self, E: Tensor) -> float:
        """Mean squared error of the reconstruction against E."""
        with torch.no_grad():
            return float(F.mse_loss(self.weight, E))


def centred_svd(E: Tensor, rank: int) -> tuple[Tensor, Tensor, Tensor]:
    """(mu, A, B) with mu the mean word vector and A B (V x r, r x d) the rank-r truncated
    SVD of E - mu, S^1/2 on each side: mu + A B is the best rank-r-plus-offset fit."""
    mu = E.double().mean(0)
    P, S, Qt = torch.linalg.svd(E.double() - mu, full_matrices=False)
    root = S[:rank].sqrt()
    return mu, P[:, :rank] * root, root[:, None] * Qt[:rank]


def fit_by_adam(emb: CompressedEmbedding, E: Tensor, steps: int, lr: float) -> None:
    """Adam on the mean squared reconstruction error, full batch, `steps` updates; the
    start is restored if the end is worse."""
    before = emb.reconstruction_error(E)
    start = {k: v.detach().clone() for k, v in emb.state_dict().items()}
    opt = torch.optim.Adam(emb.parameters(), lr=lr)
    for _ in range(steps):
        opt.zero_grad()
        F.mse_loss(emb.weight, E).backward()
        opt.step()
    if emb.reconstruction_error(E) > before:
        emb.load_state_dict(start)


def rank_for_rate(num_embeddings: int, dim: int, rate: float, bias: bool = False) -> int:
    """The largest rank r with V r + r d (+ d + r) <= V d / rate."""
    budget = num_embeddings * dim / rate - (dim if bias else 0)
    r = int(budget // (num_embeddings + dim + (1 if bias else 0)))  # + the offsets m
    if r < 1:
        raise UsageError(f"compression {rate}x leaves no rank for a {num_embeddings} x {dim} "
                         "embedding: lower model.embed_rate")
    return r


class LowRank(CompressedEmbedding):
    """E ~ f(U) V (+ b) with U (V x r), V (r x d); f is the identity (SVD) or ReLU."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None,
                 rank: int, relu: bool = False, bias: bool = False):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.rank, self.relu = rank, relu
        self.U = nn.Parameter(torch.randn(num_embeddings, rank) / math.sqrt(rank))
        self.V = nn.Parameter(torch.randn(rank, embedding_dim) / math.sqrt(rank))
        self.b = nn.Parameter(torch.zeros(embedding_dim)) if bias else None
        # with the bias: a fixed per-column offset m, E ~ (ReLU(U) - m) V + b. The function
        # class is that of ReLU(U) V + b (b is free); centring the codes keeps V's gradient
        # f(U)^T G free of the m 1^T G common-mode term that otherwise swamps it (Adam
        # scales every entry alike) once U is shifted positive at the SVD start.
        self.register_buffer("m", torch.zeros(rank) if bias and relu else None)

    def code(self, U: Tensor) -> Tensor:  # (..., r)
        if not self.relu:
            return U
        return F.relu(U) - self.m if self.m is not None else F.relu(U)

    def size(self) -> float:  # the offsets are stored too
        return super().size() + (self.m.numel() if self.m is not None else 0)

    @property
    def weight(self) -> Tensor:  # (V, d)
        W = self.code(self.U) @ self.V
        return W + self.b if self.b is not None else W

    def forward(self, tokens: Tensor) -> Tensor:  # (...,) -> (..., d)
        x = self.code(F.embedding(tokens, self.U)) @ self.V  # (..., r) @ (r, d)
        return x + self.b if self.b is not None else x

    def project(self, x: Tensor) -> Tensor:  # (..., d) -> (..., V) without forming E
        logits = F.linear(F.linear(x, self.V), self.code(self.U))  # (x V^T) f(U)^T
        if self.b is not None:
            logits = logits + (x @ self.b).unsqueeze(-1)
        return logits

    @torch.no_grad()
    def init_svd(self, E: Tensor) -> None:
        """Truncated SVD: U = P_r S_r^1/2, V = S_r^1/2 Q_r^T, the best rank-r fit."""
        P, S, Qt = torch.linalg.svd(E.double(), full_matrices=False)
        root = S[: self.rank].sqrt()
        self.U.copy_(P[:, : self.rank] * root)
        self.V.copy_(root[:, None] * Qt[: self.rank])
        if self.b is not None:
            self.b.zero_()

    def init_from(self, E: Tensor, counts: Tensor | None = None, steps: int = 2000,
                  lr: float = 0.01) -> dict[str, float]:
        """SVD in closed form; with ReLU, a truncated-SVD start (see `_init_split`), then,
        without the bias, Adam on the mean squared reconstruction error (full batch,
        `steps` updates). With the bias the start is already the best fit: f(U) V has rank
        <= r whatever f, and the truncated SVD of the centred E plus its mean is the best
        rank-r-plus-offset fit (Eckart-Young), so Adam has nothing to improve."""
        self.init_svd(E) if not self.relu else self._init_split(E)
        before = self.reconstruction_error(E)
        if self.relu and self.b is None:
            fit_by_adam(self, E, steps, lr)
        return {"mse_init": before, "mse": self.reconstruction_error(E)}

    @torch.no_grad()
    def _init_split(self, E: Tensor) -> None:
        """Start ReLU(U) V (+ b) at a truncated SVD. With the bias, at rank r exactly:
        b = the mean word vector mu, U = P S^1/2 + m from the SVD of E - mu, the per-column
        offset m making every entry positive, so that ReLU is the identity and
        (ReLU(U) - m) V + b = P S^1/2 V + mu. Without it, at rank r/2: U = [A, -A],
        V = [B; -B] with A B the SVD factors, since ReLU(a) - ReLU(-a) = a."""
        if self.b is not None:
            mu, U, V = centred_svd(E, self.rank)
            m = (-U).clamp(min=0).amax(0) + 1e-3  # (r,)
            self.U.copy_(U + m)
            self.V.copy_(V)
            self.m.copy_(m)
            self.b.copy_(mu)
            return
        half = max(1, self.rank // 2)
        P, S, Qt = torch.linalg.svd(E.double(), full_matrices=False)
        A, B = P[:, :half] * S[:half].sqrt(), S[:half].sqrt()[:, None] * Qt[:half]
        U, V = torch.zeros_like(self.U, dtype=torch.double), torch.zeros_like(
            self.V, dtype=torch.double)
        U[:, :half], U[:, half:2 * half] = A, -A
        V[:half], V[half:2 * half] = B, -B
        self.U.copy_(U)
        self.V.copy_(V)


class GroupReduce(CompressedEmbedding):
    """Frequency-grouped low rank (Chen et al. 2018): words sorted by frequency into
    `groups` equal blocks; block g has rank r_g, decreasing linearly from the most to the
    least frequent block, so that the total size meets the same budget as one rank-r
    factorisation."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None,
                 rank: int, groups: int = 5):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        V, d = num_embeddings, embedding_dim
        bounds = torch.linspace(0, V, groups + 1).round().long().tolist()
        sizes = [b - a for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
        budget = rank * (V + d)
        # ranks proportional to (groups - g): scale s with sum_g s (G-g) (n_g + d) = budget
        weights = [groups - g for g in range(groups)]
        scale = budget / sum(w * (n + d) for w, n in zip(weights, sizes, strict=True))
        self.ranks = [max(1, int(w * scale)) for w in weights]
        self.Us = nn.ParameterList(nn.Parameter(torch.randn(n, r) / math.sqrt(r))
                                   for n, r in zip(sizes, self.ranks, strict=True))
        self.Vs = nn.ParameterList(nn.Parameter(torch.randn(r, d) / math.sqrt(r))
                                   for r in self.ranks)
        # order[k] = the word in row k of the stacked blocks (most frequent first)
        self.register_buffer("order", torch.arange(V))
        self.register_buffer("inverse", torch.arange(V))

    @property
    def weight(self) -> Tensor:  # (V, d)
        stacked = torch.cat([U @ V for U, V in zip(self.Us, self.Vs, strict=True)])
        return stacked[self.inverse]

    @torch.no_grad()
    def init_from(self, E: Tensor, counts: Tensor | None = None) -> dict[str, float]:
        """Sort by `counts`, then per block the SVD of diag(sqrt f) E_g, which minimises
        the frequency-weighted error sum_i f_i ||E_i - U_i V||^2."""
        counts = torch.ones(len(E)) if counts is None else counts.double()
        order = torch.argsort(counts, descending=True, stable=True)
        self.order.copy_(order)
        self.inverse.copy_(torch.argsort(order))
        start = 0
        for U, V, r in zip(self.Us, self.Vs, self.ranks, strict=True):
            rows = order[start:start + len(U)]
            w = counts[rows].clamp(min=1.0).sqrt()[:, None]
            P, S, Qt = torch.linalg.svd(w * E[rows].double(), full_matrices=False)
            k = min(r, len(S))
            U.zero_()
            V.zero_()
            U[:, :k] = P[:, :k] * S[:k] / w
            V[:k] = Qt[:k]
            start += len(U)
        return {"mse": self.reconstruction_error(E)}


ACTIVATIONS = {"relu": F.relu, "gelu": F.gelu}


def decoder_rank(num_embeddings: int, dim: int, rate: float, hidden: int,
                 residual: bool = False) -> int:
    """The largest code width r with V r + (r + 1) h + (h + 1) d (+ r d) <= V d / rate: the
    codes take what the decoder leaves of the budget."""
    V, d, h = num_embeddings, dim, hidden
    r = int((V * d / rate - h - (h + 1) * d) // (V + h + (d if residual else 0)))
    if r < 1:
        raise UsageError(f"compression {rate}x leaves no code width for a {V} x {d} embedding "
                         f"once a decoder with {h} hidden units is paid for; lower "
                         "model.embed_hidden or model.embed_rate")
    return r


class Decoded(CompressedEmbedding):
    """A word's vector decoded from an r-dim code by one hidden layer of width h:
    e_w = W2 f(W1 u_w + b1) + b2 (+ R u_w with the residual path). Unlike f(U) V (+ b),
    whose rows lie in an (r + 1)-dim affine space whatever f, the decoded rows lie on an
    r-dim manifold that bends; the decoder costs (r + 1) h + (h + 1) d parameters (+ r d),
    counted in the rate. A test of "low-rank decomposition with an added non-linearity"
    (Lioutas et al. 2020, Sec. 3) that the rank bound does not decide in advance."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None,
                 rank: int, hidden: int, act: str = "relu", residual: bool = False):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        self.rank, self.hidden, self.act = rank, hidden, act
        self.U = nn.Parameter(torch.randn(num_embeddings, rank) / math.sqrt(rank))
        self.W1 = nn.Linear(rank, hidden)
        self.W2 = nn.Linear(hidden, embedding_dim)
        self.R = nn.Parameter(torch.zeros(rank, embedding_dim)) if residual else None

    def decode(self, u: Tensor) -> Tensor:  # (..., r) -> (..., d)
        e = self.W2(ACTIVATIONS[self.act](self.W1(u)))
        return e + u @ self.R if self.R is not None else e

    @property
    def weight(self) -> Tensor:  # (V, d)
        return self.decode(self.U)

    def forward(self, tokens: Tensor) -> Tensor:  # (...,) -> (..., d)
        return self.decode(F.embedding(tokens, self.U))

    @torch.no_grad()
    def init_svd(self, E: Tensor) -> None:
        """Start at the truncated SVD of E - mu plus mu, in closed form: b2 = mu and codes
        U = P S^1/2. With the residual path R = S^1/2 Q^T and W2 = 0: the rank-r fit.
        Without it, through the hidden layer: since f(a) - f(-a) = a for ReLU and GELU,
        W1 = [I; -I] and W2 = [R; -R] on 2k hidden units reproduce the rank-k fit,
        k = min(r, h // 2); the other units start with W1 random and W2 = 0."""
        r = self.rank
        mu, U, R = centred_svd(E, r)  # (d,), (V, r), (r, d)
        self.U.copy_(U)
        self.W2.bias.copy_(mu)
        if self.R is not None:
            self.R.copy_(R)
            self.W2.weight.zero_()
        else:
            k = min(r, self.hidden // 2)
            eye = torch.eye(k, r, dtype=torch.double)  # (k, r): code k -> unit k
            self.W1.weight[: 2 * k] = torch.cat([eye, -eye])  # (2k, r)
            self.W1.bias[: 2 * k] = 0.0
            self.W2.weight.zero_()
            self.W2.weight[:, : 2 * k] = torch.cat([R[:k], -R[:k]]).T  # (d, 2k)

    def init_from(self, E: Tensor, counts: Tensor | None = None, steps: int = 2000,
                  lr: float = 0.001) -> dict[str, float]:
        """The closed-form start (`init_svd`), then codes and decoder trained jointly by
        Adam on the mean squared reconstruction error (full batch, `steps` updates),
        keeping the best of start and end."""
        self.init_svd(E)
        before = self.reconstruction_error(E)
        fit_by_adam(self, E, steps, lr)
        return {"mse_init": before, "mse": self.reconstruction_error(E)}


class _RoundSTE(torch.autograd.Function):
    """round() forward, identity backward (straight-through estimator)."""

    @staticmethod
    def forward(ctx, x: Tensor) -> Tensor:  # noqa: ANN001 - autograd signature
        return torch.round(x)

    @staticmethod
    def backward(ctx, grad: Tensor) -> Tensor:  # noqa: ANN001 - autograd signature
        return grad


class Quantized(CompressedEmbedding):
    """Symmetric uniform quantisation with one float scale per row: E_i ~ s_i q_i with
    q_i integers in [-(2^(b-1) - 1), 2^(b-1) - 1] and s_i = max|E_i| / (2^(b-1) - 1)."""

    def __init__(self, num_embeddings: int, embedding_dim: int, padding_idx: int | None,
                 bits: int = 8):
        super().__init__(num_embeddings, embedding_dim, padding_idx)
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be 2..16, got {bits}")
        self.bits, self.qmax = bits, 2 ** (bits - 1) - 1
        self.latent = nn.Parameter(torch.randn(num_embeddings, embedding_dim) * 0.02)

    @property
    def weight(self) -> Tensor:  # (V, d), the de-quantised matrix
        scale = self.latent.abs().amax(dim=1, keepdim=True).clamp(min=1e-8) / self.qmax
        return _RoundSTE.apply(self.latent / scale).clamp(-self.qmax, self.qmax) * scale

    def size(self) -> float:
        return self.latent.numel() * self.bits / 32 + self.num_embeddings

    @torch.no_grad()
    def init_from(self, E: Tensor, counts: Tensor | None = None) -> dict[str, float]:
        self.latent.copy_(E)
        return {"mse": self.reconstruction_error(E)}


METHODS = ("svd", "distilled", "groupreduce", "quant8", "quant4", "decoder")


def build(method: str, num_embeddings: int, dim: int, padding_idx: int | None,
          rate: float = 8.0, rank: int = 0, bias: bool = False, groups: int = 5,
          hidden: int = 64, act: str = "relu", residual: bool = False
          ) -> CompressedEmbedding:
    """A compressor by name; `rank` (if > 0) wins over `rate` for the low-rank methods
    (for `decoder`: the code width, its decoder `hidden` wide)."""
    if method in ("quant8", "quant4"):
        return Quantized(num_embeddings, dim, padding_idx, bits=int(method[5:]))
    if method not in METHODS:
        raise ValueError(f"unknown embedding compressor {method!r}; choose from "
                         f"{', '.join(METHODS)}")
    if method == "decoder":
        r = rank or decoder_rank(num_embeddings, dim, rate, hidden, residual)
        return Decoded(num_embeddings, dim, padding_idx, r, hidden, act, residual)
    r = rank or rank_for_rate(num_embeddings, dim, rate, bias=bias and method == "distilled")
    if method == "groupreduce":
        return GroupReduce(num_embeddings, dim, padding_idx, r, groups=groups)
    return LowRank(num_embeddings, dim, padding_idx, r, relu=method == "distilled",
                   bias=bias and method == "distilled")
