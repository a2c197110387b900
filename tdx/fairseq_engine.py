"""The fairseq engine: one training loop for every sequence model in tdx.

fairseq owns the model, task, criterion, optimiser and `Trainer.train_step`; this loop owns
what a run folder needs: progress, metrics.jsonl, periodic generation-based validation,
atomic checkpoints, resume, Ctrl-C/SIGTERM, and divergence detection. A run goes through
four steps: `build` (fairseq's objects), `restore` (a resumed run's checkpoint),
`train_loop` (the updates) and `finish` (test, summary).

The experiment config's `data`, `model` and `optim` sections (minus their `meta` keys) are
turned into fairseq command-line arguments, so every fairseq option is reachable as an
override (`model.encoder_layers=3`) and the same models run under plain `fairseq-train`.

A registered fairseq model class may provide two hooks, which the engine calls for any
model that has them (Distilled Embedding's `embcomp_` models do, tdx.embed.models):

    tdx_options(cfg) -> dict                     classmethod: more fairseq options from the
                                                 tdx config; raises UsageError before any work
    tdx_prepare(cfg, task, criterion, run)       once model and criterion are built, before
                                                 the Trainer (cfg.resume says if resuming)
"""

from __future__ import annotations

import io
import logging
import math
import shutil
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf

from tdx.config import FORWARDED
from tdx.distributed import WORLD, any_rank, checksum, gather, mean
from tdx.engines import seed_everything
from tdx.errors import Diverged, Interrupted, UsageError
from tdx.progress import TrainProgress, fmt
from tdx.run import RunDir, StopFlag
from tdx.seqeval import evaluate_generation

log = logging.getLogger("tdx")
PLUGIN_DIR = Path(__file__).resolve().parent / "tdx_fairseq"


# ---------------------------------------------------------------- config -> fairseq


def to_argv(options: dict[str, Any]) -> list[str]:
    """{"max_tokens": 4000, "share_all_embeddings": True} -> ["--max-tokens", "4000", ...].

    True is a bare flag, False/None are left out, lists are comma-joined.
    """
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        if value is True:
            argv.append(flag)
        elif isinstance(value, list | tuple):
            argv += [flag, ",".join(str(v) for v in value)]
        else:
            argv += [flag, str(value)]
    return argv


def model_class(cfg: DictConfig) -> type | None:
    """The fairseq model class registered for the config's `model.arch` (None if none)."""
    import tdx.tdx_fairseq  # noqa: F401, I001 - registers every plugin's models
    from fairseq.models import ARCH_MODEL_REGISTRY

    return ARCH_MODEL_REGISTRY.get(OmegaConf.select(cfg, "model.arch", default=None))


def fairseq_argv(cfg: DictConfig, save_dir: Path) -> list[str]:
    """The full fairseq training command line for an experiment config."""
    options: dict[str, Any] = {}
    for section in FORWARDED:
        part = OmegaConf.to_container(cfg[section], resolve=True) if section in cfg else {}
        options.update({k: v for k, v in part.items() if k != "meta"})
    positional = [str(options.pop("data_path"))] if "data_path" in options else []
    if hasattr(cls := model_class(cfg), "tdx_options"):
        options.update(cls.tdx_options(cfg))
    t = cfg.trainer
    options.update(
        user_dir=str(PLUGIN_DIR), seed=cfg.seed, cpu=cfg.get("device", "cpu") == "cpu",
        device_id=WORLD.local_rank, num_workers=0,
        max_update=t.max_update, save_dir=str(save_dir), no_progress_bar=True,
        log_format="none", disable_validation=True, update_freq=t.get("update_freq", 1))
    if WORLD.size > 1:  # fairseq's own data parallelism over the group tdx.distributed made
        options.update(distributed_world_size=WORLD.size, distributed_rank=WORLD.rank,
                       distributed_backend=cfg.distributed.backend, ddp_backend="legacy_ddp")
    return positional + to_argv(options)


@contextmanager
def _fairseq_hydra() -> Iterator[None]:
    """fairseq composes its config with hydra.experimental (Hydra 1.1 API) and clears
    Hydra's global state; run it under version base 1.1 and give Hydra its state back, so
    it works inside a running `tdx train` job."""
    from hydra import version
    from hydra.core.singleton import Singleton

    state, base = Singleton.get_state(), version.getbase()
    version.setbase("1.1")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        Singleton.set_state(state)
        version.VersionBase.instance().version_base = base  # as it was, even if unset


def parse_fairseq(argv: list[str]) -> Any:
    """fairseq's own parser: returns its FairseqConfig (an omegaconf DictConfig).

    An argument fairseq rejects becomes a UsageError naming it (argparse would print its
    whole usage and exit).
    """
    import tdx.tdx_fairseq  # noqa: F401, I001 - first: registers tdx models, quiets logging
    from fairseq import options
    from fairseq.dataclass.utils import convert_namespace_to_omegaconf

    parser = options.get_training_parser()
    captured = io.StringIO()
    try:
        with redirect_stderr(captured):
            args = options.parse_args_and_arch(parser, input_args=argv)
    except SystemExit:
        lines = [ln for ln in captured.getvalue().splitlines() if "error:" in ln]
        reason = lines[-1].split("error:", 1)[1].strip() if lines else captured.getvalue()
        raise UsageError(
            f"fairseq rejected the options of this config: {reason}. Each key of the data, "
            "model and optim sections is passed to fairseq as --key-with-dashes; remove the "
            "key with ~section.key or fix its value (`tdx show` prints them).") from None
    with _fairseq_hydra():
        return convert_namespace_to_omegaconf(args)


VALID_METRICS = ("loss", "loss_nats")  # every validation; decoding adds GENERATION_METRICS
GENERATION_METRICS = ("exact_match", "token_acc", "bleu", "n")


def check(cfg: DictConfig) -> None:
    """Engine interface: the best-checkpoint metric is one validation logs, and fairseq
    parses the options the config makes (UsageError if not)."""
    t = cfg.trainer
    metrics = VALID_METRICS + (GENERATION_METRICS if t.valid_generate else ())
    if t.best_metric not in metrics:
        raise UsageError(f"trainer.best_metric={t.best_metric}: validation logs "
                         f"{', '.join(metrics)}"
                         + ("" if t.valid_generate else " (trainer.valid_generate=false: no "
                            "decoding)") + ".")
    parse_fairseq(fairseq_argv(cfg, Path("checkpoints")))


def check_resume(cfg: DictConfig, folder: Path) -> None:
    """Engine interface: the run's checkpoint_last.pt loads (weights only) and holds a
    model, so a resume that cannot use it stops before writing anything."""
    from tdx.checkpoints import check_loadable, load_fairseq_checkpoint

    check_loadable(folder, [folder / "checkpoints" / "checkpoint_last.pt"],
                   load_fairseq_checkpoint, "model")


# ---------------------------------------------------------------- one run


@dataclass
class Session:
    """One run being trained: fairseq's task and Trainer, and the loop's own state."""

    cfg: DictConfig
    run: RunDir
    task: Any
    trainer: Any
    epoch_itr: Any = None
    best: dict[str, Any] = field(default_factory=dict)
    step: int = 0
    bar: Any = None

    @property
    def last(self) -> Path:
        return self.run.ckpt_dir / "checkpoint_last.pt"

    def save(self, path: Path | None = None) -> None:
        """checkpoint_last.pt (default) or `path`, with the loop's state in it."""
        path = path or self.last
        state = {"train_iterator": iterator_state(self.epoch_itr), "tdx_best": self.best,
                 "tdx_world_size": WORLD.size}
        self.trainer.consolidate_optimizer()  # sets the optimiser state fairseq will save
        self.trainer.save_checkpoint(str(path), state)  # rank 0 writes .tmp then renames
        keep = self.cfg.trainer.average_last
        if WORLD.master and path == self.last and keep:  # numbered copies: keep the last N
            numbered = self.run.ckpt_dir / f"checkpoint{self.step}.pt"
            shutil.copyfile(path, numbered.with_suffix(".pt.tmp"))
            numbered.with_suffix(".pt.tmp").replace(numbered)
            for old in numbered_checkpoints(self.run.ckpt_dir)[:-keep]:
                old.unlink()

    def validate(self) -> dict[str, Any]:
        """Greedy decoding scores (rank 0) and the teacher-forced loss of the valid split;
        checkpoint_best.pt follows `trainer.best_metric`."""
        t = self.cfg.trainer
        scores: dict[str, Any] = {}
        if t.valid_generate and WORLD.master:  # decoding: rank 0 alone
            scores = evaluate_generation(self.task, [self.trainer.model], "valid", beam=1,
                                         max_sentences=t.valid_max_sentences,
                                         batch_size=t.eval_batch_size, max_len_a=t.max_len_a,
                                         max_len_b=t.max_len_b)
            scores.pop("sent_per_s")
            scores.pop("bleu_signature")
        scores["loss"] = valid_loss(self.trainer, self.task)  # base 2, per token (all ranks)
        scores["loss_nats"] = round(scores["loss"] * math.log(2), 4)
        if not WORLD.master:
            return scores
        self.run.log(self.step, "valid", scores)
        key, higher = t.best_metric, t.best_mode == "max"
        if not self.best or (scores[key] > self.best[key] if higher
                             else scores[key] < self.best[key]):
            self.best.clear()
            self.best.update(scores, step=self.step)
            self.save(self.run.ckpt_dir / "checkpoint_best.pt")
        return scores

    def after_update(self, out: dict[str, Any], samples: list[dict]) -> None:
        """Log, show progress, validate and save after one update."""
        t = self.cfg.trainer
        self.step = self.trainer.get_num_updates()
        loss = float(out.get("loss", math.nan))
        if not math.isfinite(loss):
            raise Diverged(f"loss is {loss} at update {self.step}")
        if self.step % t.log_every == 0:
            self.run.log(self.step, "train", {
                "loss": round(loss, 4), "nll_loss": round(float(out.get("nll_loss", loss)), 4),
                "lr": self.trainer.get_lr(), "epoch": self.epoch_itr.epoch})
        tokens = mean(float(sum(x.get("ntokens", 0) for x in samples))) * WORLD.size
        self.bar.update(self.step, tokens, "tok", loss=loss)
        if self.step % t.valid_every == 0 or self.step >= t.max_update:
            self.bar.message(f"[valid] step {self.step} " + fmt(self.validate()))
        if self.step % t.save_every == 0 or self.step >= t.max_update:
            self.save()


def build(cfg: DictConfig, run: RunDir) -> Session:
    """fairseq's task, model, criterion and Trainer for the config (step 1)."""
    from fairseq import tasks, utils

    from tdx.fairseq_trainer import TdxTrainer

    warnings.filterwarnings(  # known, harmless, once per batch otherwise
        "ignore", message=".*(pin_memory|torch.cuda.amp|mismatched key_padding_mask).*")
    fcfg = parse_fairseq(fairseq_argv(cfg, run.ckpt_dir))
    utils.import_user_module(fcfg.common)
    seed_everything(cfg.seed)
    task = tasks.setup_task(fcfg.task)
    for split in ("valid", cfg.trainer.test_split):
        if split:
            task.load_dataset(split)
    model = task.build_model(fcfg.model)
    criterion = task.build_criterion(fcfg.criterion)
    n_params = sum(p.numel() for p in model.parameters())
    if hasattr(model, "tdx_prepare"):
        model.tdx_prepare(cfg, task, criterion, run)
    run.update(params=n_params, model=cfg.model.get("meta", {}).get("label", fcfg.model._name))
    log.info("model %s: %s parameters", fcfg.model._name, f"{n_params:,}")
    return Session(cfg, run, task, TdxTrainer(fcfg, task, model, criterion))


def restore(s: Session) -> None:
    """A resumed run's weights, optimiser, data position and best scores (step 2); a new
    run starts at epoch 1."""
    extra: dict[str, Any] = {}
    if s.cfg.resume:
        if not s.last.exists():
            raise FileNotFoundError(f"cannot resume: {s.last} does not exist")
        extra = s.trainer.load_checkpoint(str(s.last)) or {}
        s.run.truncate_metrics(s.trainer.get_num_updates())
    position = extra.get("train_iterator")
    s.epoch_itr = s.trainer.get_train_iterator(epoch=(position or {}).get("epoch", 1))
    if position is not None:
        state = dict(position)
        saved_world = extra.get("tdx_world_size", 1)
        if saved_world != WORLD.size:  # batches are dealt round-robin to the ranks
            state["iterations_in_epoch"] = (state.get("iterations_in_epoch", 0)
                                            * saved_world // WORLD.size)
            log.info("resuming a %d-rank checkpoint with %d rank(s)", saved_world, WORLD.size)
        s.epoch_itr.load_state_dict(state)
    s.best = extra.get("tdx_best", {})
    s.step = s.trainer.get_num_updates()


def test_before(s: Session) -> None:
    """`trainer.test_before`: score the test split before the first update (summary
    `initial`), e.g. a compressed model before fine-tuning."""
    t = s.cfg.trainer
    if not (t.get("test_before") and t.test_split and not s.cfg.resume and WORLD.master):
        return
    initial = score(s.cfg, s.task, s.trainer.model)
    initial.pop("bleu_signature", None)
    s.run.log(s.step, "test_before", {k: v for k, v in initial.items() if "per_s" not in k})
    s.run.update(initial=initial)
    log.info("before training: %s", fmt(initial))


def train_loop(s: Session, stop: StopFlag) -> tuple[str, bool]:
    """Update to `trainer.max_update` (or `max_epoch`, or a stop signal) (step 3);
    returns the status and whether a signal stopped it."""
    t = s.cfg.trainer
    s.bar = TrainProgress(t.max_update, start=s.step, log_every=t.log_every,
                          description=s.cfg.name, windows=s.run.summary.get("rate_windows"))
    stopping = any_rank(bool(stop))  # acted on only when every rank agrees (see loop.py)
    try:
        while s.step < t.max_update and not stopping:
            stopping, epoch_done = _epoch(s, stop)
            if epoch_done and s.step < t.max_update and _last_epoch(s):
                break
    except (Diverged, FloatingPointError) as e:
        s.bar.message(f"[red]diverged:[/red] {e}")
        s.run.update(error=str(e))
        return "diverged", stopping
    finally:
        s.bar.close()
    return "completed", stopping


def _epoch(s: Session, stop: StopFlag) -> tuple[bool, bool]:
    """The updates of (the rest of) one epoch; (stopping, every batch of it was used)."""
    from fairseq.data.iterators import GroupedIterator

    t = s.cfg.trainer
    itr = GroupedIterator(s.epoch_itr.next_epoch_itr(shuffle=True), t.get("update_freq", 1))
    for samples in itr:
        out = s.trainer.train_step(samples)
        if out is None:  # OOM-skipped batch
            continue
        s.after_update(out, samples)
        stopping = any_rank(bool(stop))  # every rank stops at the same update
        if s.step >= t.max_update or stopping:
            return stopping, not itr.has_next()
    return False, not itr.has_next()


def _last_epoch(s: Session) -> bool:
    """At the end of an epoch: True if it was `trainer.max_epoch` (validated and saved),
    else moves on to the next epoch."""
    t = s.cfg.trainer
    if t.max_epoch and s.epoch_itr.epoch >= t.max_epoch:
        if s.step % t.valid_every:  # the last epoch's model is validated and saved
            s.validate()
        s.save()
        return True
    s.epoch_itr = s.trainer.get_train_iterator(s.epoch_itr.next_epoch_idx)
    return False


def _speed(s: Session) -> dict[str, Any]:
    """Summary fields: training target tokens/s (the median window, see tdx.progress) and
    the windows it comes from, which a resume continues."""
    return {"rate_tok_s": round(s.bar.typical_rate()), "rate_windows": s.bar.windows}


def finish(s: Session, status: str, stopping: bool, stop: StopFlag) -> str:
    """Interrupted: save and say how to resume; diverged: record it; completed: test the
    model and write the final scores (step 4)."""
    s.run.update(param_checksums=gather(checksum(s.trainer.get_model())))  # one per rank
    stopping = stopping or any_rank(bool(stop))  # a stop after the last update: no test
    if stopping and status == "completed":
        stop.signum = stop.signum or signal.SIGTERM
        s.save()
        s.run.finish("interrupted", step=s.step, best=s.best, **_speed(s))
        log.warning("interrupted at update %d; resume with resume=%s", s.step, s.run.path)
        return "interrupted"
    if status == "diverged":
        s.run.finish("diverged", step=s.step, best=s.best)
        return status
    try:  # rank 0 tests alone, so a stop during the decoding needs no agreement
        final = test(s.cfg, s.task, s.trainer, s.run, stop) if WORLD.master else {}
    except Interrupted:
        s.run.finish("interrupted", step=s.step, best=s.best, **_speed(s))
        log.warning("interrupted while testing; resume=%s tests the saved model", s.run.path)
        return "interrupted"
    s.run.finish("completed", step=s.step, best=s.best, final=final,
                 **_speed(s))
    return status


def train(cfg: DictConfig, run: RunDir, stop: StopFlag) -> str:
    """Engine interface: train, validate and test one fairseq model; the final status."""
    s = build(cfg, run)
    restore(s)
    test_before(s)
    status, stopping = train_loop(s, stop)
    return finish(s, status, stopping, stop)


# ---------------------------------------------------------------- checkpoints and scores


def iterator_state(epoch_itr: Any) -> dict[str, Any]:
    """The epoch iterator's position. A stop can land just after a new epoch's iterator
    was made and before any batch was drawn; fairseq's state_dict() fails on that
    unstarted iterator, whose position is simply (epoch, batches already skipped)."""
    if getattr(epoch_itr, "_cur_epoch_itr", True) is None:
        return {"version": 2, "epoch": epoch_itr.epoch,
                "iterations_in_epoch": epoch_itr.iterations_in_epoch, "shuffle": True}
    return epoch_itr.state_dict()


def numbered_checkpoints(ckpt_dir: Path) -> list[Path]:
    """checkpoint{update}.pt files, oldest first."""
    found = [(int(p.stem[10:]), p) for p in ckpt_dir.glob("checkpoint*.pt")
             if p.stem[10:].isdigit()]
    return [p for _, p in sorted(found)]


def test(cfg: DictConfig, task: Any, trainer: Any, run: RunDir,
         stop: StopFlag | None = None) -> dict[str, Any]:
    """Score the test split with greedy and beam search: the average of the last
    `average_last` checkpoints if set, else the best checkpoint (Interrupted on `stop`)."""
    from tdx.checkpoints import average_checkpoints, load_fairseq_checkpoint

    t = cfg.trainer
    if not t.test_split:
        return {}
    chosen = run.ckpt_dir / "checkpoint_best.pt"
    if t.average_last and (saved := numbered_checkpoints(run.ckpt_dir)[-t.average_last:]):
        chosen = run.ckpt_dir / "checkpoint_avg.pt"
        tmp = chosen.with_suffix(".pt.tmp")
        torch.save(average_checkpoints([str(p) for p in saved]), tmp)
        tmp.replace(chosen)
        run.update(tested=f"average of {', '.join(p.name for p in saved)}")
    if chosen.exists():  # the weights only: no collective, rank 0 tests alone
        state = load_fairseq_checkpoint(chosen)
        trainer.get_model().load_state_dict(state["model"], strict=True)
    final = score(cfg, task, trainer.model, stop)
    run.update(bleu_signature=final.pop("bleu_signature", None))
    run.log(trainer.get_num_updates(), "test", {k: v for k, v in final.items()
                                                if "per_s" not in k})
    return final


def score(cfg: DictConfig, task: Any, model: Any,
          stop: StopFlag | None = None) -> dict[str, Any]:
    """Test-split scores with greedy and beam search, keys suffixed _greedy / _beamN,
    and sentences per second of each."""
    t = cfg.trainer
    final: dict[str, Any] = {}
    for beam in sorted({1, int(t.test_beam)}):
        scores = evaluate_generation(task, [model], t.test_split, beam=beam,
                                     max_sentences=t.get("test_max_sentences"),
                                     batch_size=t.eval_batch_size, max_len_a=t.max_len_a,
                                     max_len_b=t.max_len_b,
                                     stop=stop)
        tag = "greedy" if beam == 1 else f"beam{beam}"
        final[f"sent_per_s_{tag}"] = scores.pop("sent_per_s")
        final["bleu_signature"] = scores.pop("bleu_signature")
        final.update({f"{k}_{tag}" if k != "n" else k: v for k, v in scores.items()})
    return final


def valid_loss(trainer: Any, task: Any) -> float:
    """Teacher-forced validation loss (fairseq criterion, base 2)."""
    # uncached: fairseq caches one iterator per dataset, and the decoding on rank 0 must
    # not hand its unsharded one to this (sharded, collective) pass
    itr = trainer.get_valid_iterator("valid", disable_iterator_cache=True).next_epoch_itr(
        shuffle=False)
    total, n = 0.0, 0.0
    for sample in itr:
        out = trainer.valid_step(sample)
        total += float(out.get("loss", 0.0)) * float(out.get("sample_size", 1))
        n += float(out.get("sample_size", 1))
    return round(total / max(n, 1.0), 4)
