"""Zero-shot knowledge distillation for NLP (Rashid, Lioutas, Ghaddar & Rezagholizadeh,
EMNLP 2021): the `zskd` recipe of the plain-PyTorch engine.

Stages (`tdx.loop.run_stage`, checkpointed and resumable):
1. teacher     fine-tune all-MiniLM-L6-v2 on the task's training data (the only use of task
               data for training), or load it from `zskd.teacher_from` (a run folder).
2. generator   (recipe adv_gumbel) masked-LM pre-training of the generator on the
               out-of-domain text.
3. student_<recipe>, one recipe per run, all with the same student and budget:
   labels      task data with gold labels (no teacher)
   kd_task     KD on task data (the upper bound)
   random      zero-shot: KD on random word-piece sequences
   ood         zero-shot: KD on out-of-domain text (WikiText-2)
   adv_gumbel  zero-shot: KD on out-of-domain text + its adversarial rewrites by a masked-LM
               generator (straight-through Gumbel-softmax; the paper's method)
   adv_pgd     zero-shot: KD on out-of-domain text + embedding-space PGD
   The student is scored on the task's evaluation split every `trainer.valid_every`
   updates (`student_<recipe>/valid` lines: the curve of score over training). With
   `zskd.student.ema=d` the scores are those of an exponential moving average of the
   student's weights (`tdx.loop.ema_update`; not in Rashid et al.), the trained weights'
   own scores logged beside them as raw_<metric>.

Optional, before any task (recipe `pretrain`, stage `pretrain`): task-agnostic distillation
of the un-fine-tuned teacher into the student's body on the out-of-domain text only (its
token states and its mean-pooled sentence vector, see `pretrain_stage`). With
`zskd.student.init_from=<that run>` every recipe's student starts from that body, so the
recipes still share one student and one budget; no task input is involved.

The zero-shot recipes never see task inputs: their student data come only from
`text.ood_sentences` (which refuses files in task folders) or random word pieces, and
`TaskData.student_examples` refuses them the task's training split.
"""

from __future__ import annotations

import logging
import math
import random
import warnings
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import Tensor
from torch.optim.lr_scheduler import LinearLR, LRScheduler, SequentialLR

from tdx.distill import text
from tdx.distill.adversary import GumbelMLM, NeighbourPGD, nearest_neighbours
from tdx.distill.losses import KD_KINDS, ClassBalance, kd_loss, label_loss
from tdx.distill.models import (
    Batch,
    Encoder,
    Generator,
    Student,
    TalkEncoder,
    Teacher,
    describe,
    encode,
    eval_mode,
    freeze,
    kd_targets,
    mean_states,
    pack,
    talk_windows,
    tokenizer,
)
from tdx.distill.recipes import RECIPES, ZERO_SHOT
from tdx.distill.tasks import Example, Task, get_task, read, scores
from tdx.distributed import WORLD
from tdx.errors import UsageError
from tdx.loop import Stage, ema_update, load_state, run_stage, step_generator, weight_average
from tdx.run import RunDir, StopFlag

log = logging.getLogger("tdx")


class TaskData:
    """The task's examples: the teacher may train on them; a zero-shot student may not."""

    def __init__(self, task: Task, data_dir: Path, recipe: str):
        self.task, self.data_dir, self.recipe = task, data_dir, recipe

    def teacher_examples(self) -> list[Example]:
        return read(self.task, self.data_dir, "train")

    def student_examples(self) -> list[Example]:
        if self.recipe in ZERO_SHOT:
            raise UsageError(f"recipe {self.recipe} is zero-shot: its student must not read "
                             f"the task's training data ({self.task.files()[0]})")
        return read(self.task, self.data_dir, "train")

    def eval_examples(self, limit: int | None) -> list[Example]:
        """The held-out examples, or `limit` of them drawn at random (fixed seed, file
        order kept): a task file may be sorted, so its first lines are no sample."""
        examples = read(self.task, self.data_dir, "eval")
        if limit is None or limit >= len(examples):
            return examples
        keep = sorted(random.Random(0).sample(range(len(examples)), limit))
        return [examples[i] for i in keep]


def warmup_then_decay(opt: torch.optim.Optimizer, steps: int, warmup: float
                      ) -> SequentialLR:
    """BERT's schedule (Devlin et al. 2019, A.2) from torch's LinearLR pieces: with
    w = warmup * steps (at least 1), update i runs at (i + 1) / w of the peak rate while
    i < w, then at (steps - i) / (steps - w). `at_update` moves it to an update."""
    w = max(1, int(warmup * steps))
    rise = LinearLR(opt, 1 / w, 1.0, total_iters=w - 1)
    fall = LinearLR(opt, 1.0, 0.0, total_iters=max(1, steps - w))
    return SequentialLR(opt, [rise, fall], milestones=[w])


def at_update(schedule: LRScheduler, i: int) -> None:
    """Set the rate of update i (0-based). A resumed run starts at its update, so the
    schedule is stepped up to it from its own last rate: LinearLR steps multiply the
    optimiser's current rate, which a resume has replaced by the saved one. torch's
    warning that the schedule steps before the optimiser (true only of the catch-up) is
    silenced."""
    for group, lr in zip(schedule.optimizer.param_groups, schedule.get_last_lr(), strict=True):
        group["lr"] = lr
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step")
        while schedule.last_epoch < i:
            schedule.step()


def sample(pool: list, n: int, rng: torch.Generator) -> list:
    return [pool[int(j)] for j in torch.randint(len(pool), (n,), generator=rng)]


class Inputs:
    """Turns examples, out-of-domain text or random word pieces into `Batch`es."""

    def __init__(self, tok: Any, task: Task, max_len: int):  # noqa: ANN401 - HF tokenizer
        self.tok, self.task, self.max_len = tok, task, max_len
        self.special = torch.tensor(sorted(set(tok.all_special_ids)))
        # ordinary word pieces: not special, not [unusedN]
        self.pieces = sorted(i for w, i in tok.get_vocab().items() if not w.startswith("["))

    def examples(self, exs: list[Example]) -> tuple[Batch, Tensor]:
        b = [e[1] or "" for e in exs] if self.task.pair else None
        return encode(self.tok, [e[0] for e in exs], b, self.max_len), torch.tensor(
            [e[2] for e in exs])

    def texts(self, items: list) -> Batch:  # sentences, or (a, b) pairs
        if self.task.pair:
            return encode(self.tok, [a for a, _ in items], [b for _, b in items], self.max_len)
        return encode(self.tok, items, None, self.max_len)

    def random(self, lengths: list[int], n: int, rng: torch.Generator) -> Batch:
        """Random word pieces; for a pair task, pairs of random texts, each cut to fit."""
        seed = int(torch.randint(2**31 - 1, (1,), generator=rng))
        pair = self.task.pair
        seqs = text.random_tokens(lengths, self.pieces, 2 * n if pair else n, seed)
        room = (self.max_len - 3) // 2 if pair else self.max_len - 2
        seqs = [s[:room] for s in seqs]
        tok = self.tok
        return pack(seqs[:n], tok.cls_token_id, tok.sep_token_id, tok.pad_token_id,
                    seqs[n:] if pair else None)

    def allowed(self, V: int) -> Tensor:
        mask = torch.zeros(V, dtype=torch.bool)
        mask[torch.tensor(self.pieces)] = True
        return mask


@torch.no_grad()
def evaluate(model: Encoder, inputs: Inputs, examples: list[Example], batch: int
             ) -> dict[str, float]:
    preds: list[float] = []
    with eval_mode(model):
        for k in range(0, len(examples), batch):
            b, _ = inputs.examples(examples[k: k + batch])
            out = model(b)
            preds += (out.squeeze(-1) if inputs.task.regression else out.argmax(-1)).tolist()
    return scores(inputs.task, preds, [e[2] for e in examples])


# ---------------------------------------------------------------------------- stages
def teacher_stage(cfg: DictConfig, teacher: Teacher, data: TaskData, inputs: Inputs,
                  eval_set: list[Example]) -> Stage:
    s = cfg.zskd.teacher
    opt = torch.optim.AdamW(teacher.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    schedule = warmup_then_decay(opt, s.steps, s.warmup)
    pool: list[Example] = []

    def step(i: int) -> dict[str, float]:
        if not pool:  # read only when the stage really trains
            pool.extend(data.teacher_examples())
        teacher.train()
        rng = step_generator(cfg.seed, "teacher", i)
        batch, labels = inputs.examples(sample(pool, s.batch, rng))
        loss = label_loss(teacher(batch), labels, inputs.task.regression)
        at_update(schedule, i)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(teacher.parameters(), 1.0)
        opt.step()
        return {"loss": loss.item()}

    return Stage("teacher", s.steps, step, {"teacher": teacher.net, "opt": opt},
                 lambda i: evaluate(teacher, inputs, eval_set, cfg.zskd.eval.batch),
                 units=s.batch, unit_name="examples")


def generator_stage(cfg: DictConfig, adversary: GumbelMLM, inputs: Inputs, ood: list
                    ) -> Stage:
    g = cfg.zskd.gumbel
    opt = adversary.opt

    def step(i: int) -> dict[str, float]:
        rng = step_generator(cfg.seed, "generator", i)
        adversary.gen.train()
        loss = adversary.mlm_loss(inputs.texts(sample(ood, cfg.zskd.student.batch, rng)), rng)
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    return Stage("generator", g.pretrain_steps, step, {"G": adversary.gen, "opt": opt},
                 units=cfg.zskd.student.batch, unit_name="sentences")


def draw_ood(ood: list, n: int, crop: float, rng: torch.Generator) -> list:
    """n out-of-domain inputs; with `crop`, each sentence is replaced by a random span of
    itself with that probability (single-sentence tasks)."""
    drawn = sample(ood, n, rng)
    if crop:  # (B,) coin flips: which sentences become a random span of themselves
        flips = (torch.rand(len(drawn), generator=rng) < crop).tolist()
        drawn = [text.crop(x, rng) if f else x for x, f in zip(drawn, flips, strict=True)]
    return drawn


def adversarial_kd(adversary: GumbelMLM | NeighbourPGD | None, teacher: Encoder,
                   student: Student, batch: Batch, kd: Any, rng: torch.Generator  # noqa: ANN401
                   ) -> tuple[Tensor | float, dict[str, float]]:
    """The KD loss on the adversary's rewrites of `batch` (0 without an adversary), and
    the adversary's metrics: recipe (5), Gumbel-MLM, and (5b), PGD on word mixtures."""
    if isinstance(adversary, GumbelMLM):
        adv, t_adv, metrics = adversary.step(teacher, student, batch, rng)
        return kd(student(adv), t_adv), metrics
    if isinstance(adversary, NeighbourPGD):
        _, soft, t_adv, metrics = adversary.step(teacher, student, batch, rng)
        return kd(student.forward_embeds(soft.embed(student), batch.mask, batch.types),
                  t_adv), metrics
    return 0.0, {}


def student_stage(cfg: DictConfig, recipe: str, teacher: Encoder, student: Student,
                  data: TaskData, inputs: Inputs, eval_set: list[Example], ood: list,
                  lengths: list[int], adversary: GumbelMLM | NeighbourPGD | None) -> Stage:
    s = cfg.zskd.student
    regression = inputs.task.regression
    opt = torch.optim.AdamW(student.parameters(), lr=s.lr, weight_decay=s.weight_decay)
    schedule = warmup_then_decay(opt, s.steps, s.warmup)
    pool = data.student_examples() if recipe in ("labels", "kd_task") else []
    name = f"student_{recipe}"

    balance = ClassBalance() if s.balance and recipe in ZERO_SHOT else None
    crop = float(cfg.zskd.ood.crop) if recipe in ZERO_SHOT else 0.0
    ema = weight_average(student, s.ema) if s.ema else None
    if ema is not None:
        freeze(ema.module)  # averaged, never trained

    def kd(logits: Tensor, target: Tensor) -> Tensor:
        weight = None if balance is None else balance(target, regression)
        return kd_loss(logits, target, s.temperature, regression, weight, s.kd)

    def step(i: int) -> dict[str, float]:
        rng = step_generator(cfg.seed, name, i)
        student.train()
        if recipe in ("labels", "kd_task"):
            batch, labels = inputs.examples(sample(pool, s.batch, rng))
            out = student(batch)
            loss = label_loss(out, labels, regression) if recipe == "labels" else \
                kd(out, kd_targets(teacher, batch))
            metrics: dict[str, float] = {}
        elif recipe == "random":
            batch = inputs.random(lengths, s.batch, rng)
            loss, metrics = kd(student(batch), kd_targets(teacher, batch)), {}
        else:
            batch = inputs.texts(draw_ood(ood, s.batch, crop, rng))
            loss = kd(student(batch), kd_targets(teacher, batch))
            adv_loss, metrics = adversarial_kd(adversary, teacher, student, batch, kd, rng)
            loss = loss + s.adv_weight * adv_loss
        at_update(schedule, i)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        if ema is not None:
            ema_update(ema, student, i)
        return {"loss": loss.item(), **metrics}

    def score(i: int) -> dict[str, float]:
        batch = cfg.zskd.eval.batch
        own = evaluate(student, inputs, eval_set, batch)
        if ema is None:
            return own
        return {**evaluate(ema.module, inputs, eval_set, batch),
                **{f"raw_{k}": v for k, v in own.items()}}

    state: dict[str, Any] = {"student": student, "opt": opt}
    if balance is not None:
        state["balance"] = balance
    if ema is not None:
        state["student_ema"] = ema.module  # a Student's state, as the student's
    if isinstance(adversary, GumbelMLM):
        state.update(G=adversary.gen, opt_g=adversary.opt)
    return Stage(name, s.steps, step, state, score, units=s.batch, unit_name="sequences")


def pretrain_stage(cfg: DictConfig, teacher: Teacher, student: Student, tok: Any,  # noqa: ANN401
                   sents: list[str], pairs: list[tuple[str, str]]) -> Stage:
    """Task-agnostic distillation of the un-fine-tuned teacher's encoder into the student's
    body, on out-of-domain text (in the spirit of the general distillation of TinyBERT,
    Jiao et al. 2020; not in Rashid et al.). With P a learnt d -> 384 projection, h_S and
    h_T the student's and teacher's last token states (B, L, 384) and u = mean over real
    tokens, the loss is

        mean over real tokens ||P h_S - h_T||^2 + w (1 - cos(mean P h_S, mean h_T)),

    the second term matching all-MiniLM-L6-v2's sentence vector (it is trained for
    mean-pooled similarity). Batches alternate single sentences and the sentence pairs of
    `text.ood_pairs` (segment ids, positions up to zskd.max_len_pair), so pair tasks start
    from a body that has seen two-text inputs."""
    p = cfg.zskd.pretrain
    bert = teacher.net.bert
    proj = torch.nn.Linear(cfg.zskd.student.dim, bert.config.hidden_size)  # P
    params = [*student.body.parameters(), *proj.parameters()]
    opt = torch.optim.AdamW(params, lr=p.lr, weight_decay=p.weight_decay)
    schedule = warmup_then_decay(opt, p.steps, p.warmup)
    max_len = cfg.zskd.max_len_pair

    def step(i: int) -> dict[str, float]:
        rng = step_generator(cfg.seed, "pretrain", i)
        student.train()
        if i % 2 and pairs:
            items = sample(pairs, p.batch, rng)
            batch = encode(tok, [a for a, _ in items], [b for _, b in items], max_len)
        else:
            batch = encode(tok, sample(sents, p.batch, rng), None, cfg.zskd.max_len)
        with torch.no_grad():
            h_t = bert(input_ids=batch.ids, attention_mask=batch.mask.long(),
                       token_type_ids=batch.types).last_hidden_state  # (B, L, 384)
        h_s = proj(student.body(student.embed(batch.ids), batch.mask, batch.types))
        tokens = (h_s - h_t)[batch.mask].square().mean()
        cos = torch.nn.functional.cosine_similarity(mean_states(h_s, batch.mask),
                                                    mean_states(h_t, batch.mask), dim=-1)
        sentence = (1 - cos).mean()
        loss = tokens + p.sentence_weight * sentence
        at_update(schedule, i)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        return {"loss": loss.item(), "tokens": tokens.item(), "cos": cos.mean().item()}

    return Stage("pretrain", p.steps, step, {"body": student.body, "proj": proj, "opt": opt},
                 units=p.batch, unit_name="sequences")


def _same_windows(ckpt: Path, saved: dict[str, Any], student: Student) -> None:
    """A TaLK body's window maxima shape no parameter, so a body trained with other
    maxima would load silently: refuse it (UsageError)."""
    want = [layer.conv.left_max for layer in student.body.layers] \
        if isinstance(student.body.layers, TalkEncoder) else None
    kind = saved.get("body") or "transformer"
    have = talk_windows(saved["layers"], saved.get("talk_max")) if kind == "talk" else None
    if want is not None and have is not None and have != want:
        raise UsageError(f"zskd.student.init_from: {ckpt} holds a talk body with window "
                         f"maxima {list(have)}; this student's are {want} "
                         "(zskd.student.talk_max)")


def init_body(path: Path, student: Student) -> int:
    """Load the body of a finished `pretrain` run into `student` (its position table cut
    to the student's length); returns the pretrain's number of updates."""
    ckpt = path / "checkpoints" / "pretrain.pt" if path.is_dir() else path
    if not ckpt.exists():
        raise UsageError(f"zskd.student.init_from: {ckpt} not found (a run folder of "
                         "zskd.recipe=pretrain whose pretrain stage finished)")
    blob = torch.load(ckpt, map_location="cpu", weights_only=True)
    _same_windows(ckpt, blob["config"]["zskd"]["student"], student)
    body = dict(blob["state"]["body"])
    body["pos.weight"] = body["pos.weight"][: student.body.max_len]
    try:
        student.body.load_state_dict(body)
    except RuntimeError as e:
        s = blob["config"]["zskd"]["student"]
        raise UsageError(f"zskd.student.init_from: {ckpt} holds a {s.get('body') or 'transformer'} "
                         f"body of dim {s['dim']}, {s['layers']} layers, ffn {s['ffn']}, rank "
                         f"{s['rank']}; this student's settings differ "
                         f"({str(e).splitlines()[0]})") from None
    return int(blob["step"])


def run_pretrain(cfg: DictConfig, run_dir: RunDir, stop: StopFlag) -> dict[str, Any]:
    """Recipe `pretrain`: the task-agnostic body every task's students can start from."""
    z = cfg.zskd
    if z.teacher_from:
        raise UsageError("zskd.recipe=pretrain distils the un-fine-tuned teacher; drop "
                         "zskd.teacher_from")
    data_dir = Path(cfg.paths.data_dir)
    articles = text.ood_sentences(list(z.ood.files), data_dir)
    sents, pairs = text.flatten(articles), text.ood_pairs(articles, z.ood.pairs, cfg.seed)
    tok = tokenizer()
    teacher = freeze(Teacher(2))  # its head is unused: the encoder as pretrained
    s = z.student
    student = Student(tok.vocab_size, 1, s.dim, s.layers, s.heads, s.ffn, s.rank,
                      z.max_len_pair, s.dropout, tok.pad_token_id, **body_options(s))
    fit = student.body.init_words(teacher.embedding_matrix(), s.init_steps)
    log.info("pretrain: %s on %d sentences and %d pairs of %s; embedding fit %s",
             describe(student), len(sents), len(pairs), ", ".join(z.ood.files), fit)
    result = run_stage(pretrain_stage(cfg, teacher, student, tok, sents, pairs),
                       cfg, run_dir, stop)
    return {"task": None, "recipe": "pretrain", "pretrain": result,
            "body_params": sum(p.numel() for p in student.body.parameters())}


# ---------------------------------------------------------------------------- recipe
def load_teacher(path: Path, teacher: Teacher, task: Task) -> tuple[dict[str, Any], Any]:
    """Load a finished teacher stage; returns its scores and the eval.max_examples they
    were measured on."""
    ckpt = path / "checkpoints" / "teacher.pt" if path.is_dir() else path
    if not ckpt.exists():
        raise UsageError(f"zskd.teacher_from: {ckpt} not found (a run folder whose teacher "
                         "stage finished)")
    blob = load_state(ckpt, {"teacher": teacher.net})
    trained_on = blob["config"]["zskd"]["task"]
    if trained_on != task.name:
        raise UsageError(f"zskd.teacher_from: that teacher was fine-tuned on {trained_on}, "
                         f"not {task.name}")
    return blob["extra"].get("result", {}), blob["config"]["zskd"]["eval"]["max_examples"]


def body_options(s: DictConfig) -> dict[str, Any]:
    """The student body's kind and TaLK window maxima (zskd.student.body, talk_max)."""
    ks = s.get("talk_max")
    return {"body": s.get("body"), "talk_max": None if ks is None else list(ks)}


def check_config(cfg: DictConfig) -> None:
    """The zskd settings that no config type can check (UsageError, before any work)."""
    z = cfg.zskd
    ks = z.student.get("talk_max")
    if ks is not None and z.student.get("body") != "talk":
        raise UsageError(f"zskd.student.talk_max={ks} sets a TaLK body's windows; add "
                         "zskd.student.body=talk, or drop it")
    if ks is not None and (not OmegaConf.is_list(ks) or len(ks) != z.student.layers or not all(
            isinstance(k, int) and not isinstance(k, bool) and k >= 0 for k in ks)):
        raise UsageError(f"zskd.student.talk_max={ks}: a list of one window maximum (an "
                         f"integer >= 0) per layer ({z.student.layers} layers)")
    if str(z.recipe) not in (*RECIPES, "none", "pretrain"):
        raise UsageError(f"unknown zskd.recipe '{z.recipe}'; recipes: {', '.join(RECIPES)}, "
                         "none (the teacher only), pretrain (task-agnostic student body)")
    if WORLD.size > 1 or cfg.distributed.world_size > 1:
        raise UsageError("zskd runs on one process (distributed.world_size=1)")
    if z.recipe == "pretrain":
        return
    if z.student.kd not in KD_KINDS:
        raise UsageError(f"unknown zskd.student.kd '{z.student.kd}'; one of "
                         f"{', '.join(KD_KINDS)}")
    if not 0.0 <= float(z.ood.crop) <= 1.0 or (z.ood.crop and get_task(str(z.task)).pair):
        raise UsageError(f"zskd.ood.crop={z.ood.crop}: a probability in [0, 1], and 0 for "
                         "sentence-pair tasks (a span of one text would break the pair)")


def data_files(cfg: DictConfig) -> list[str]:
    """The files a zskd run reads, relative to the data dir: the task's evaluation file,
    its training file for the recipes that train on task data (the teacher unless it is
    loaded, labels, kd_task), the out-of-domain text for the zero-shot recipes."""
    z, recipe = cfg.zskd, str(cfg.zskd.recipe)
    ood = list(z.ood.files) if recipe in (*ZERO_SHOT, "pretrain") else []
    if recipe == "pretrain" or recipe not in (*RECIPES, "none"):
        return ood
    task = get_task(str(z.task))
    train, evaluate_on = task.files()
    needs_train = recipe in ("labels", "kd_task") or not z.teacher_from
    return [*([train] if needs_train else []), evaluate_on, *ood]


def teacher_scores(cfg: DictConfig, teacher: Teacher, data: TaskData, inputs: Inputs,
                   eval_set: list[Example], run_dir: RunDir, stop: StopFlag
                   ) -> dict[str, Any]:
    """Fine-tune the teacher (stage 1), or load it from `zskd.teacher_from`; its scores."""
    z = cfg.zskd
    if not z.teacher_from:
        return run_stage(teacher_stage(cfg, teacher, data, inputs, eval_set), cfg, run_dir,
                         stop)
    scores, scored_on = load_teacher(Path(str(z.teacher_from)), teacher, data.task)
    if scored_on != z.eval.max_examples:  # % of the teacher on the student's examples
        scores = evaluate(teacher, inputs, eval_set, z.eval.batch)
    log.info("teacher from %s: %s", z.teacher_from, scores)
    return scores


def build_student(cfg: DictConfig, teacher: Teacher, inputs: Inputs, V: int, pad: int
                  ) -> Student:
    """The student, its body from `zskd.student.init_from` or its word embedding fitted
    to the teacher's."""
    s, task = cfg.zskd.student, inputs.task
    student = Student(V, task.labels, s.dim, s.layers, s.heads, s.ffn, s.rank,
                      inputs.max_len, s.dropout, pad, task.pair and s.pair_features,
                      task.pair and s.siamese, task.pair and s.cosine_scale or None,
                      **body_options(s))
    if s.init_from:
        steps = init_body(Path(str(s.init_from)), student)
        fit = f"none: body from {s.init_from} ({steps} pretrain updates)"
    else:
        fit = student.body.init_words(teacher.embedding_matrix(), s.init_steps)
    log.info("%s; ratio %.1fx; embedding fit %s", describe(student),
             teacher.size() / student.size(), fit)
    return student


def ood_inputs(cfg: DictConfig, task: Task, tok: Any) -> tuple[list, list[int]]:  # noqa: ANN401
    """The zero-shot recipes' out-of-domain text (sentences, or built pairs for pair
    tasks) and the word-piece lengths of its sentences (for random tokens)."""
    articles = text.ood_sentences(list(cfg.zskd.ood.files), Path(cfg.paths.data_dir))
    sents = text.flatten(articles)
    ood = text.ood_pairs(articles, cfg.zskd.ood.pairs, cfg.seed) if task.pair else sents
    lengths = [len(x) for x in tok(sents[: 2000], add_special_tokens=False)["input_ids"]]
    return ood, lengths


def build_adversary(cfg: DictConfig, recipe: str, teacher: Teacher, inputs: Inputs,
                    tok: Any, ood: list, run_dir: RunDir, stop: StopFlag  # noqa: ANN401
                    ) -> GumbelMLM | NeighbourPGD | None:
    """Recipe (5)'s generator, pre-trained on the out-of-domain text (stage 2), or (5b)'s
    PGD over each word piece's nearest neighbours; None for the other recipes."""
    z, s, V = cfg.zskd, cfg.zskd.student, tok.vocab_size
    if recipe == "adv_gumbel":
        g = z.gumbel
        gen = Generator(V, s.dim, g.layers, s.heads, s.ffn, s.rank, inputs.max_len,
                        s.dropout, tok.pad_token_id)
        gen.body.init_words(teacher.embedding_matrix(), s.init_steps)
        adversary = GumbelMLM(gen, g.lr, g.mask_prob, g.tau, g.mlm_weight, inputs.special,
                              tok.mask_token_id, s.temperature, inputs.task.regression,
                              inputs.allowed(V))
        run_stage(generator_stage(cfg, adversary, inputs, ood), cfg, run_dir, stop)
        return adversary
    if recipe == "adv_pgd":
        p = z.pgd
        nb = nearest_neighbours(teacher.embedding_matrix(), p.k, inputs.allowed(V))
        return NeighbourPGD(nb, p.steps, p.alpha, p.eps, p.start, inputs.special,
                            s.temperature, inputs.task.regression)
    return None


def run(cfg: DictConfig, run_dir: RunDir, stop: StopFlag) -> dict[str, Any]:
    """The `zskd` recipe: teacher, then (unless recipe none) one student recipe."""
    check_config(cfg)
    z, recipe = cfg.zskd, str(cfg.zskd.recipe)
    if recipe == "pretrain":
        return run_pretrain(cfg, run_dir, stop)
    task = get_task(str(z.task))
    data = TaskData(task, Path(cfg.paths.data_dir), recipe)
    eval_set = data.eval_examples(z.eval.max_examples)
    tok = tokenizer()
    inputs = Inputs(tok, task, z.max_len_pair if task.pair else z.max_len)
    teacher = Teacher(task.labels)
    t_scores = teacher_scores(cfg, teacher, data, inputs, eval_set, run_dir, stop)
    freeze(teacher)
    final: dict[str, Any] = {"task": task.name, "recipe": recipe, "teacher": t_scores,
                             "teacher_params": teacher.size()}
    if recipe == "none":
        return final
    student = build_student(cfg, teacher, inputs, tok.vocab_size, tok.pad_token_id)
    ood, lengths = ood_inputs(cfg, task, tok) if recipe in ZERO_SHOT else ([], [])
    adversary = build_adversary(cfg, recipe, teacher, inputs, tok, ood, run_dir, stop)
    result = run_stage(student_stage(cfg, recipe, teacher, student, data, inputs, eval_set,
                                     ood, lengths, adversary), cfg, run_dir, stop)
    final.update(student=result, student_params=student.size(),
                 compression=round(teacher.size() / student.size(), 2))
    if t_scores.get("primary"):
        final["pct_of_teacher"] = round(100 * result["primary"] / t_scores["primary"], 1)
    log.info("%s %s: student %s (%.1f%% of the teacher's %s)", task.name, recipe,
             result.get("primary"), final.get("pct_of_teacher", math.nan),
             t_scores.get("primary"))
    return final
