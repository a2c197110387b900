"""fairseq models with a compressed shared embedding, and the distillation criterion.

`embcomp_<model>` is the registered fairseq model `<model>` (transformer, lightconv,
talkconv, ...) whose one shared embedding — encoder input, decoder input and the tied
output projection — is a compressor from `tdx.embed.compress`, chosen with
`--embed-method` and `--embed-rate` (or `--embed-rank`). Its architectures are the base
model's under the same prefix (`embcomp_transformer_multi30k`, ...). The variants are made
from fairseq's registry, so this package needs no import of another paper's package.

The models give the fairseq engine its two hooks (tdx.fairseq_engine): `tdx_options` turns
the experiment's `teacher` (a run folder or checkpoint) into the criterion's
`--teacher-path`, and `tdx_prepare` fits the compressed embedding to the teacher's before a
new run and, with `seq_kd_beam=N`, swaps the training targets for the teacher's beam-N
translations (tdx.embed.seqkd).

`embed_distill` is the fine-tuning loss of Distilled Embedding (Lioutas et al. 2020,
Sec. 3.2): label-smoothed cross-entropy, plus word-level knowledge distillation on the
teacher's output distribution (KL at temperature tau, scaled by tau^2), plus embedding
distillation (MSE between the reconstructed and the teacher's embedding vectors).
"""

# no `from __future__ import annotations` here: fairseq reads the criterion dataclass's
# field types at run time and rejects string annotations.
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from fairseq import checkpoint_utils
from fairseq.criterions import register_criterion
from fairseq.criterions.label_smoothed_cross_entropy import (
    LabelSmoothedCrossEntropyCriterion,
    LabelSmoothedCrossEntropyCriterionConfig,
)
from fairseq.models import (
    ARCH_CONFIG_REGISTRY,
    ARCH_MODEL_REGISTRY,
    MODEL_REGISTRY,
    register_model,
    register_model_architecture,
)
from torch import Tensor, nn

from tdx.distributed import rank_zero_first
from tdx.embed import seqkd
from tdx.embed.compress import ACTIVATIONS, METHODS, CompressedEmbedding, Quantized, build
from tdx.errors import UsageError
from tdx.progress import fmt
from tdx.run import read_json

log = logging.getLogger("tdx")


class TiedProjection(nn.Module):
    """The decoder's output layer tied to a compressed embedding: logits = x E^T."""

    def __init__(self, embedding: CompressedEmbedding):
        super().__init__()
        self.embedding = [embedding]  # a plain list: not a second owner of its parameters

    def forward(self, x: Tensor) -> Tensor:  # (B, T, d) -> (B, T, V)
        return self.embedding[0].project(x)


def embedding_params(model: nn.Module) -> float:
    """float32-equivalent parameters of the model's shared embedding."""
    emb = model.encoder.embed_tokens
    return emb.size() if isinstance(emb, CompressedEmbedding) else float(emb.weight.numel())


def model_params(model: nn.Module) -> float:
    """float32-equivalent parameters of the whole model (quantised entries count bits/32)."""
    emb = model.encoder.embed_tokens
    total = float(sum(p.numel() for p in model.parameters()))
    return total - sum(p.numel() for p in emb.parameters()) + embedding_params(model)


class CompressedEmbeddingMixin:
    """Mixed in before a fairseq encoder-decoder model class with shared embeddings."""

    @classmethod
    def add_args(cls, parser) -> None:  # noqa: ANN001 - argparse parser
        super().add_args(parser)
        parser.add_argument("--embed-method", choices=METHODS,
                            help="compressor of the shared embedding")
        parser.add_argument("--embed-rate", type=float,
                            help="embedding compression (low-rank methods: sets the rank)")
        parser.add_argument("--embed-rank", type=int,
                            help="explicit rank (overrides --embed-rate)")
        parser.add_argument("--embed-bias", action="store_true",
                            help="Distilled Embedding with a bias: ReLU(U) V + b")
        parser.add_argument("--embed-groups", type=int,
                            help="GroupReduce: number of frequency groups")
        parser.add_argument("--embed-init-steps", type=int,
                            help="distilled, decoder: Adam steps on the reconstruction loss")
        parser.add_argument("--embed-init-lr", type=float,
                            help="distilled, decoder: learning rate of that initialisation")
        parser.add_argument("--embed-hidden", type=int,
                            help="decoder: hidden units of the code decoder")
        parser.add_argument("--embed-act", choices=tuple(ACTIVATIONS),
                            help="decoder: its non-linearity")
        parser.add_argument("--embed-residual", action="store_true",
                            help="decoder: a linear path from the code as well")

    @classmethod
    def build_model(cls, args, task):  # noqa: ANN001 - fairseq signature
        if not getattr(args, "share_all_embeddings", False):
            raise ValueError("embcomp models compress one shared embedding: set "
                             "--share-all-embeddings (a joined dictionary)")
        model = super().build_model(args, task)
        dense = model.encoder.embed_tokens
        comp = build(args.embed_method, dense.num_embeddings, dense.embedding_dim,
                     dense.padding_idx, rate=args.embed_rate, rank=args.embed_rank,
                     bias=args.embed_bias, groups=args.embed_groups,
                     hidden=args.embed_hidden, act=args.embed_act,
                     residual=args.embed_residual)
        model.encoder.embed_tokens = model.decoder.embed_tokens = comp
        model.decoder.output_projection = TiedProjection(comp)
        model.embed_method = args.embed_method
        model.embed_rate = (32 // comp.bits if isinstance(comp, Quantized) else
                            int(args.embed_rate) if float(args.embed_rate).is_integer()
                            else args.embed_rate)  # nominal: the table's row
        model.embed_init = ({"steps": args.embed_init_steps, "lr": args.embed_init_lr}
                            if args.embed_method in ("distilled", "decoder") else {})
        return model

    @classmethod
    def tdx_options(cls, cfg: Any) -> dict[str, Any]:
        """Engine hook: the teacher's checkpoint for the `embed_distill` criterion, from
        the experiment's `teacher=`; a bad teacher or `seq_kd_beam` is a UsageError."""
        beam = cfg.get("seq_kd_beam", 0)
        if beam != 0 and not (type(beam) is int and beam > 0 and cfg.get("teacher")):
            raise UsageError(f"seq_kd_beam={beam}: sequence-level KD needs a positive beam "
                             "size and a teacher= (0 turns it off)")
        if not cfg.get("teacher"):
            return {}
        return {"teacher_path": str(teacher_checkpoint(Path(cfg.teacher)))}

    def tdx_prepare(self, cfg: Any, task: Any, criterion: Any, run: Any) -> None:
        """Engine hook, before training: a new run fits the compressed embedding to the
        teacher's (step 2 of the recipe, Sec. 3.1), and `seq_kd_beam` trains on the
        teacher's translations; the summary records the fit and the teacher."""
        teacher = getattr(criterion, "teacher", None)
        if not cfg.resume and teacher is None:
            log.warning("no teacher: the compressed embedding starts from random values")
        elif not cfg.resume:
            fit = self.init_from_teacher(teacher, torch.tensor(task.tgt_dict.count))
            path = Path(criterion.teacher_path)
            scores = read_json(path.parent.parent / "summary.json").get("final", {})
            run.update(compression=fit, teacher={"checkpoint": str(path), **{
                k: v for k, v in scores.items() if k.startswith("bleu")}})
            log.info("compressed embedding fitted to the teacher: %s", fmt(fit))
        if cfg.get("seq_kd_beam", 0) != 0:
            sequence_kd(cfg, task, teacher, Path(criterion.teacher_path), run)

    def init_from_teacher(self, teacher: nn.Module, counts: Tensor | None = None
                          ) -> dict[str, Any]:
        """Copy every non-embedding weight of the uncompressed teacher and fit the
        compressed embedding to the teacher's E (step 2 of the recipe)."""
        E = teacher.encoder.embed_tokens.weight.detach().float()
        own = self.state_dict()
        shared = {k: v for k, v in teacher.state_dict().items()
                  if k in own and own[k].shape == v.shape and "embed_tokens" not in k
                  and "output_projection" not in k}
        missing = [k for k in own if k not in shared and "embed_tokens" not in k]
        if missing:
            raise ValueError(f"teacher lacks weights for {missing[:5]}: it must be the "
                             "same architecture without compression")
        self.load_state_dict({**own, **shared})
        with torch.enable_grad():
            fit = self.encoder.embed_tokens.init_from(E, counts=counts, **self.embed_init)
        comp = self.encoder.embed_tokens
        size = embedding_params(self)
        return {**fit, "method": self.embed_method, "order": METHODS.index(self.embed_method),
                "rank": getattr(comp, "rank", None) or getattr(comp, "ranks", None),
                "rate": self.embed_rate, "rate_exact": round(E.numel() / size, 2),
                "embedding_params_teacher": float(E.numel()), "embedding_params": size,
                "model_params_teacher": float(sum(p.numel() for p in teacher.parameters())),
                "model_params": model_params(self)}


def teacher_checkpoint(path: Path) -> Path:
    """A teacher given as a checkpoint file, or as a run folder: its averaged checkpoint
    (the one its test scores came from) if there is one, else its best."""
    if path.is_file():
        return path.resolve()
    for name in ("checkpoint_avg.pt", "checkpoint_best.pt", "checkpoint_last.pt"):
        if (path / "checkpoints" / name).is_file():
            return (path / "checkpoints" / name).resolve()
    raise UsageError(f"teacher={path} is neither a checkpoint file nor a run folder with "
                     "checkpoints/checkpoint_{avg,best,last}.pt.")


def sequence_kd(cfg: Any, task: Any, teacher: nn.Module | None, checkpoint: Path,
                run: Any) -> None:
    """Train on the teacher's beam translations of the training sources (Kim & Rush 2016;
    tdx.embed.seqkd), decoded once by one rank and cached beside the teacher."""
    if teacher is None or not hasattr(task, "train_data"):
        raise UsageError("seq_kd_beam needs a teacher= and a tdx_translation task")
    t = cfg.trainer
    with rank_zero_first():  # one rank decodes, the others find the folder made
        task.train_data = str(seqkd.prepare(
            task, teacher, checkpoint, int(cfg.seq_kd_beam), t.max_len_a, t.max_len_b,
            t.eval_batch_size))
    run.update(seq_kd={"beam": int(cfg.seq_kd_beam), "train_data": task.train_data})


def register_compressed(base: str) -> None:
    """Register `embcomp_<base>` and an `embcomp_` twin of each of `base`'s archs that has
    none yet (idempotent: call it again after more archs were registered)."""
    if f"embcomp_{base}" not in MODEL_REGISTRY:
        cls = type(f"Compressed{MODEL_REGISTRY[base].__name__}",
                   (CompressedEmbeddingMixin, MODEL_REGISTRY[base]),
                   {"__doc__": f"fairseq `{base}` with a compressed shared embedding"})
        register_model(f"embcomp_{base}")(cls)
    for arch, model_cls in list(ARCH_MODEL_REGISTRY.items()):
        twin = f"embcomp_{arch}"
        if model_cls is MODEL_REGISTRY[base] and twin not in ARCH_MODEL_REGISTRY:
            register_model_architecture(f"embcomp_{base}", twin)(
                _with_embed_defaults(ARCH_CONFIG_REGISTRY[arch]))


def register_all() -> None:
    """`embcomp_` twins of every transformer / lightconv / talkconv arch registered so far."""
    for base in ("transformer", "lightconv", "talkconv"):
        if base in MODEL_REGISTRY:
            register_compressed(base)


EMBED_DEFAULTS = {"embed_method": "distilled", "embed_rate": 8.0, "embed_rank": 0,
                  "embed_bias": False, "embed_groups": 5, "embed_init_steps": 2000,
                  "embed_init_lr": 0.001, "embed_hidden": 64, "embed_act": "relu",
                  "embed_residual": False}


def _with_embed_defaults(arch_fn: Callable[[Any], None]) -> Callable[[Any], None]:
    """fairseq leaves unset model options out of args; the arch function fills them."""
    def arch(args: Any) -> None:
        for key, value in EMBED_DEFAULTS.items():
            setattr(args, key, getattr(args, key, value))
        arch_fn(args)
    return arch


# ---------------------------------------------------------------------------- criterion

@dataclass
class EmbedDistillConfig(LabelSmoothedCrossEntropyCriterionConfig):
    teacher_path: str = field(default="", metadata={
        "help": "checkpoint of the uncompressed teacher (same task and dictionary)"})
    kd_weight: float = field(default=0.5, metadata={
        "help": "weight of word-level KD; cross-entropy gets 1 - kd_weight"})
    kd_temperature: float = field(default=1.0, metadata={"help": "KD temperature tau"})
    embed_mse_weight: float = field(default=1.0, metadata={
        "help": "weight of the embedding distillation: squared distance between student "
                "and teacher vectors, averaged over the vocabulary, per target token"})


def word_kd(student_logits: Tensor, teacher_logits: Tensor, mask: Tensor,
            tau: float) -> Tensor:
    """sum over unmasked positions of tau^2 KL(p_teacher^tau || p_student^tau)."""
    t = F.log_softmax(teacher_logits / tau, dim=-1)
    s = F.log_softmax(student_logits / tau, dim=-1)
    kl = (t.exp() * (t - s)).sum(-1)  # (B, T)
    return (kl * mask).sum() * tau * tau


@register_criterion("embed_distill", dataclass=EmbedDistillConfig)
class EmbedDistillCriterion(LabelSmoothedCrossEntropyCriterion):
    """(1 - a) CE_ls + a KD_word + b MSE(E_student, E_teacher); without a teacher, CE."""

    def __init__(self, task, sentence_avg, label_smoothing, ignore_prefix_size=0,  # noqa: ANN001
                 report_accuracy=False, teacher_path="", kd_weight=0.5,
                 kd_temperature=1.0, embed_mse_weight=1.0):
        super().__init__(task, sentence_avg, label_smoothing, ignore_prefix_size,
                         report_accuracy)
        self.kd_weight, self.tau, self.mse_weight = kd_weight, kd_temperature, embed_mse_weight
        self.teacher_path = teacher_path
        self._teacher: list[nn.Module] = []  # not a submodule: never trained or saved
        if teacher_path:
            models, _ = checkpoint_utils.load_model_ensemble([teacher_path], task=task)
            models[0].eval().requires_grad_(False)
            self._teacher.append(models[0])

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher[0] if self._teacher else None

    def forward(self, model, sample, reduce=True):  # noqa: ANN001 - fairseq signature
        net_output = model(**sample["net_input"])
        loss, nll_loss = self.compute_loss(model, net_output, sample, reduce=reduce)
        sample_size = sample["target"].size(0) if self.sentence_avg else sample["ntokens"]
        logs = {"nll_loss": nll_loss.data, "ntokens": sample["ntokens"],
                "nsentences": sample["target"].size(0), "sample_size": sample_size}
        teacher = self.teacher
        if teacher is not None and model.training:
            with torch.no_grad():
                t_logits = teacher(**sample["net_input"])[0]
            mask = sample["target"].ne(self.padding_idx).float()
            kd = word_kd(net_output[0], t_logits, mask, self.tau)
            E_t = teacher.encoder.embed_tokens.weight
            mse = (model.encoder.embed_tokens.weight - E_t).pow(2).sum(-1).mean()
            loss = (1 - self.kd_weight) * loss + self.kd_weight * kd \
                + self.mse_weight * mse * sample_size
            logs.update(kd=kd.data, embed_mse=mse.data * sample_size)
        logs["loss"] = loss.data
        return loss, sample_size, logs
