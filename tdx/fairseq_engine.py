"""The fairseq engine: one training loop for every sequence model in tdx.

fairseq owns the model, task, criterion, optimiser and `Trainer.train_step`; this loop owns
what a run folder needs: progress, metrics.jsonl, periodic generation-based validation,
atomic checkpoints, resume, Ctrl-C/SIGTERM, and divergence detection.

The experiment config's `data`, `model` and `optim` sections (minus their `meta` keys) are
turned into fairseq command-line arguments, so every fairseq option is reachable as an
override (`model.encoder_layers=3`) and the same models run under plain `fairseq-train`.
"""

from __future__ import annotations

import io
import logging
import math
import random
import shutil
import signal
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import torch
from omegaconf import DictConfig, OmegaConf

from tdx import seqkd
from tdx.config import UsageError
from tdx.distributed import WORLD, any_rank, checksum, gather, mean, rank_zero_first
from tdx.progress import TrainProgress, fmt
from tdx.run import RunDir, StopFlag, read_json
from tdx.seqeval import evaluate_generation

log = logging.getLogger("tdx")
PLUGIN_DIR = Path(__file__).resolve().parent / "tdx_fairseq"
SECTIONS = ("data", "model", "optim")


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


def fairseq_argv(cfg: DictConfig, save_dir: Path) -> list[str]:
    """The full fairseq training command line for an experiment config."""
    options: dict[str, Any] = {}
    for section in SECTIONS:
        part = OmegaConf.to_container(cfg[section], resolve=True) if section in cfg else {}
        options.update({k: v for k, v in part.items() if k != "meta"})
    positional = [str(options.pop("data_path"))] if "data_path" in options else []
    t = cfg.trainer
    if cfg.get("teacher"):
        options["teacher_path"] = str(teacher_checkpoint(Path(cfg.teacher)))
    beam = cfg.get("seq_kd_beam", 0)
    if beam != 0 and not (type(beam) is int and beam > 0 and cfg.get("teacher")):
        raise UsageError(f"seq_kd_beam={beam}: sequence-level KD needs a positive beam size "
                         "and a teacher= (0 turns it off)")
    options.update(
        user_dir=str(PLUGIN_DIR), seed=cfg.seed, cpu=cfg.get("device", "cpu") == "cpu",
        device_id=WORLD.local_rank, num_workers=0,
        max_update=t.max_update, save_dir=str(save_dir), no_progress_bar=True,
        log_format="none", disable_validation=True, update_freq=t.get("update_freq", 1))
    if WORLD.size > 1:  # fairseq's own data parallelism over the group tdx.distributed made
        options.update(distributed_world_size=WORLD.size, distributed_rank=WORLD.rank,
                       distributed_backend=cfg.distributed.backend, ddp_backend="legacy_ddp")
    return positional + to_argv(options)


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


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


class Diverged(RuntimeError):
    pass


def train(cfg: DictConfig, run: RunDir, stop: StopFlag) -> str:
    """Train, validate and test one fairseq model; returns the final status."""
    from fairseq import tasks, utils
    from fairseq.data.iterators import GroupedIterator
    from fairseq.trainer import Trainer

    warnings.filterwarnings(  # known, harmless, once per batch otherwise
        "ignore", message=".*(pin_memory|torch.cuda.amp|mismatched key_padding_mask).*")
    fcfg = parse_fairseq(fairseq_argv(cfg, run.ckpt_dir))
    utils.import_user_module(fcfg.common)
    seed_everything(cfg.seed)
    task = tasks.setup_task(fcfg.task)
    t = cfg.trainer
    for split in ("valid", t.test_split):
        if split:
            task.load_dataset(split)
    model = task.build_model(fcfg.model)
    criterion = task.build_criterion(fcfg.criterion)
    n_params = sum(p.numel() for p in model.parameters())
    if not cfg.resume and hasattr(model, "init_from_teacher"):
        teacher = getattr(criterion, "teacher", None)
        if teacher is None:
            log.warning("no teacher: the compressed embedding starts from random values")
        else:
            fit = model.init_from_teacher(teacher, torch.tensor(task.tgt_dict.count))
            path = Path(criterion.teacher_path)
            scores = read_json(path.parent.parent / "summary.json").get("final", {})
            run.update(compression=fit, teacher={"checkpoint": str(path), **{
                k: v for k, v in scores.items() if k.startswith("bleu")}})
            log.info("compressed embedding fitted to the teacher: %s", fmt(fit))
    if cfg.get("seq_kd_beam", 0) != 0:
        seq_kd(cfg, task, criterion, run)
    trainer = Trainer(fcfg, task, model, criterion)

    last = run.ckpt_dir / "checkpoint_last.pt"
    extra: dict[str, Any] = {}
    if cfg.resume:
        if not last.exists():
            raise FileNotFoundError(f"cannot resume: {last} does not exist")
        extra = trainer.load_checkpoint(str(last)) or {}
        run.truncate_metrics(trainer.get_num_updates())
    epoch_itr = trainer.get_train_iterator(epoch=extra.get("train_iterator", {}).get("epoch", 1))
    if "train_iterator" in extra:
        state = dict(extra["train_iterator"])
        saved_world = extra.get("tdx_world_size", 1)
        if saved_world != WORLD.size:  # batches are dealt round-robin to the ranks
            state["iterations_in_epoch"] = (state.get("iterations_in_epoch", 0)
                                            * saved_world // WORLD.size)
            log.info("resuming a %d-rank checkpoint with %d rank(s)", saved_world, WORLD.size)
        epoch_itr.load_state_dict(state)
    best: dict[str, Any] = extra.get("tdx_best", {})
    key, mode = t.best_metric, t.best_mode
    run.update(params=n_params, model=cfg.model.get("meta", {}).get("label", fcfg.model._name))
    log.info("model %s: %s parameters", fcfg.model._name, f"{n_params:,}")

    def save(path: Path = last) -> None:
        state = {"train_iterator": iterator_state(epoch_itr), "tdx_best": best,
                 "tdx_world_size": WORLD.size}
        trainer.consolidate_optimizer()  # sets the optimiser state fairseq will save
        trainer.save_checkpoint(str(path), state)  # rank 0 writes .tmp then renames
        if WORLD.master and path == last and t.average_last:  # numbered copies: keep N
            numbered = run.ckpt_dir / f"checkpoint{step}.pt"
            shutil.copyfile(path, numbered.with_suffix(".pt.tmp"))
            numbered.with_suffix(".pt.tmp").replace(numbered)
            for old in numbered_checkpoints(run.ckpt_dir)[:-t.average_last]:
                old.unlink()

    def validate(step: int) -> dict[str, Any]:
        scores: dict[str, Any] = {}
        if t.valid_generate and WORLD.master:  # decoding: rank 0 alone
            scores = evaluate_generation(task, [trainer.model], "valid", beam=1,
                                         max_sentences=t.valid_max_sentences,
                                         batch_size=t.eval_batch_size, max_len_a=t.max_len_a,
                                         max_len_b=t.max_len_b)
            scores.pop("sent_per_s")
            scores.pop("bleu_signature")
        scores["loss"] = valid_loss(trainer, task)  # base 2, per target token (all ranks)
        scores["loss_nats"] = round(scores["loss"] * math.log(2), 4)
        if not WORLD.master:
            return scores
        run.log(step, "valid", scores)
        better = not best or (scores[key] > best[key] if mode == "max" else
                              scores[key] < best[key])
        if better:
            best.clear()
            best.update(scores, step=step)
            save(run.ckpt_dir / "checkpoint_best.pt")
        return scores

    step = trainer.get_num_updates()
    if t.get("test_before") and t.test_split and not cfg.resume and WORLD.master:
        initial = score(cfg, task, trainer.model)
        initial.pop("bleu_signature", None)
        run.log(step, "test_before", {k: v for k, v in initial.items() if "per_s" not in k})
        run.update(initial=initial)
        log.info("before training: %s", fmt(initial))
    bar = TrainProgress(t.max_update, start=step, log_every=t.log_every,
                        description=cfg.name)
    status = "completed"
    stopping = any_rank(bool(stop))  # acted on only when every rank agrees (see loop.py)
    try:
        while step < t.max_update and not stopping:
            itr = GroupedIterator(epoch_itr.next_epoch_itr(shuffle=True), t.get("update_freq", 1))
            for samples in itr:
                out = trainer.train_step(samples)
                if out is None:  # OOM-skipped batch
                    continue
                step = trainer.get_num_updates()
                loss = float(out.get("loss", math.nan))
                if not math.isfinite(loss):
                    raise Diverged(f"loss is {loss} at update {step}")
                if step % t.log_every == 0:
                    run.log(step, "train", {"loss": round(loss, 4),
                                            "nll_loss": round(float(out.get("nll_loss", loss)), 4),
                                            "lr": trainer.get_lr(), "epoch": epoch_itr.epoch})
                tokens = mean(float(sum(x.get("ntokens", 0) for x in samples))) * WORLD.size
                bar.update(step, tokens, "tok", loss=loss)
                if step % t.valid_every == 0 or step >= t.max_update:
                    scores = validate(step)
                    bar.message(f"[valid] step {step} " + fmt(scores))
                if step % t.save_every == 0 or step >= t.max_update:
                    save()
                stopping = any_rank(bool(stop))  # every rank stops at the same update
                if step >= t.max_update or stopping:
                    break
            if not itr.has_next() and step < t.max_update:
                if t.max_epoch and epoch_itr.epoch >= t.max_epoch:
                    if step % t.valid_every:  # the last epoch's model is validated and saved
                        validate(step)
                    save()
                    break
                epoch_itr = trainer.get_train_iterator(epoch_itr.next_epoch_idx)
    except (Diverged, FloatingPointError) as e:
        status = "diverged"
        bar.message(f"[red]diverged:[/red] {e}")
        run.update(error=str(e))
    finally:
        bar.close()

    sums = gather(checksum(trainer.get_model()))
    run.update(param_checksums=sums)  # one per rank: equal if the ranks stayed in step
    if stopping and status == "completed":
        stop.signum = stop.signum or signal.SIGTERM
        save()
        run.finish("interrupted", step=step, best=best, rate_tok_s=round(bar.rate))
        log.warning("interrupted at update %d; resume with resume=%s", step, run.path)
        return "interrupted"
    if status == "diverged":
        run.finish("diverged", step=step, best=best)
        return status

    final = test(cfg, task, trainer, run) if WORLD.master else {}
    run.finish("completed", step=step, best=best, final=final, rate_tok_s=round(bar.rate))
    return status


def seq_kd(cfg: DictConfig, task: Any, criterion: Any, run: RunDir) -> None:
    """Train on the teacher's beam translations of the training sources (tdx.seqkd)."""
    teacher = getattr(criterion, "teacher", None)
    if teacher is None or not hasattr(task, "train_data"):
        raise UsageError("seq_kd_beam needs a teacher= and a tdx_translation task")
    t = cfg.trainer
    with rank_zero_first():  # one rank decodes, the others find the folder made
        task.train_data = str(seqkd.prepare(
            task, teacher, Path(criterion.teacher_path), int(cfg.seq_kd_beam), t.max_len_a,
            t.max_len_b, t.eval_batch_size))
    run.update(seq_kd={"beam": int(cfg.seq_kd_beam), "train_data": task.train_data})


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


def test(cfg: DictConfig, task: Any, trainer: Any, run: RunDir) -> dict[str, Any]:
    """Score the test split with greedy and beam search: the average of the last
    `average_last` checkpoints if set, else the best checkpoint."""
    from tdx.checkpoints import average_checkpoints

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
        state = torch.load(chosen, map_location="cpu")
        trainer.get_model().load_state_dict(state["model"], strict=True)
    final = score(cfg, task, trainer.model)
    run.update(bleu_signature=final.pop("bleu_signature", None))
    run.log(trainer.get_num_updates(), "test", {k: v for k, v in final.items()
                                                if "per_s" not in k})
    return final


def score(cfg: DictConfig, task: Any, model: Any) -> dict[str, Any]:
    """Test-split scores with greedy and beam search, keys suffixed _greedy / _beamN,
    and sentences per second of each."""
    t = cfg.trainer
    final: dict[str, Any] = {}
    for beam in sorted({1, int(t.test_beam)}):
        scores = evaluate_generation(task, [model], t.test_split, beam=beam,
                                     batch_size=t.eval_batch_size, max_len_a=t.max_len_a,
                                     max_len_b=t.max_len_b)
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
