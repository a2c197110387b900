"""The plain-PyTorch engine: one small training loop for every recipe that is not a
fairseq sequence model (SR-NAM's and zero-shot KD's, for instance).

A recipe is a function `run(cfg, run_dir, stop) -> final scores` named by `cfg.recipe`
("module:function"). It builds its models and calls `run_stage` once per stage; this
module owns what every stage needs: progress, metrics.jsonl lines (split "<stage>/train"
and "<stage>/valid"), periodic evaluation, atomic checkpoints that carry the config,
resume, Ctrl-C/SIGTERM and divergence.

Checkpoints (`checkpoints/<stage>_last.pt` while a stage runs, `checkpoints/<stage>.pt`
when it is done) hold only tensors, numbers and strings, so `torch.load` reads them with
`weights_only=True`. A finished stage is loaded, not re-run, when a run is resumed.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import math
import signal
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn
from torch.optim.swa_utils import AveragedModel

from tdx import plugins
from tdx.checkpoints import check_loadable
from tdx.distributed import WORLD, any_rank, checksum, gather, unwrap
from tdx.engines import seed_everything
from tdx.errors import Diverged, Interrupted, UsageError
from tdx.progress import TrainProgress, fmt
from tdx.run import RunDir, StopFlag

log = logging.getLogger("tdx")


def _recipe_module(cfg: DictConfig) -> tuple[str, str]:
    """('package.module', 'function') of `cfg.recipe`, the module known to exist."""
    plugins.load()  # a user plugin's folder joins sys.path
    module, _, name = str(cfg.get("recipe") or "").partition(":")
    try:
        found = bool(module and name) and importlib.util.find_spec(module) is not None
    except ImportError:
        found = False
    if not found:
        raise UsageError(f"recipe '{cfg.get('recipe')}' not found: the loop engine needs "
                         "`recipe: package.module:function`, an importable module.")
    return module, name


def check(cfg: DictConfig) -> None:
    """Engine interface: the recipe's module exists, and its `check_config(cfg)`, if it
    has one, accepts the config (the recipe's checks across keys)."""
    module, _ = _recipe_module(cfg)
    hook = getattr(importlib.import_module(module), "check_config", None)
    if callable(hook):
        hook(cfg)


def data_files(cfg: DictConfig) -> list[str]:
    """Engine interface: the data files the recipe reads (its module's `data_files(cfg)`,
    relative to the data dir), for `tdx data check` and the check before a run."""
    module, _ = _recipe_module(cfg)
    hook = getattr(importlib.import_module(module), "data_files", None)
    return list(hook(cfg)) if callable(hook) else []


def check_resume(cfg: DictConfig, folder: Path) -> None:
    """Engine interface: every stage checkpoint of the run loads (weights only), so a
    resume that cannot use one stops before writing anything."""
    check_loadable(folder, sorted((folder / "checkpoints").glob("*.pt")),
                   lambda p: torch.load(p, map_location="cpu", weights_only=True), "state")


def train(cfg: DictConfig, run: RunDir, stop: StopFlag) -> str:
    """Engine interface (`engine: loop`): call the recipe, map exceptions to statuses."""
    module, name = _recipe_module(cfg)
    recipe = getattr(importlib.import_module(module), name, None)
    if not callable(recipe):
        raise UsageError(f"recipe '{cfg.recipe}': {module} has no function '{name}'.")
    seed_everything(cfg.seed)
    try:
        final = recipe(cfg, run, stop)
    except Interrupted:
        run.finish("interrupted")
        log.warning("interrupted; resume with resume=%s", run.path)
        return "interrupted"
    except Diverged as e:
        run.finish("diverged", error=str(e))
        return "diverged"
    run.finish("completed", final=final)
    return "completed"


@dataclass
class Stage:
    """One training stage: `step(i)` makes update i (0-based) and returns its metrics
    (with "loss"); `state` is everything to checkpoint (modules, optimisers, tensors)."""

    name: str
    steps: int
    step: Callable[[int], dict[str, float]]
    state: dict[str, Any]
    evaluate: Callable[[int], dict[str, float]] | None = None
    units: float = 1.0  # samples per update, for the throughput
    unit_name: str = "samples"
    extra: dict[str, Any] = field(default_factory=dict)  # saved with the stage (numbers)


def weight_average(model: nn.Module, decay: float) -> AveragedModel:
    """An exponential moving average of model's weights (Polyak & Juditsky 1992), kept by
    torch.optim.swa_utils.AveragedModel from a copy of model (`.module` is the averaged
    model): after update `step` (0-based) `ema_update` makes avg <- d avg + (1 - d) model
    with d = min(decay, (1 + step) / (10 + step)), so the first updates are not held back
    by the start. Buffers are copied from the model."""
    def avg_fn(avg: torch.Tensor, new: torch.Tensor, n: torch.Tensor) -> torch.Tensor:
        return avg.lerp(new, 1 - min(decay, int(n) / (int(n) + 9)))  # n = step + 1

    return AveragedModel(model, avg_fn=avg_fn)


def ema_update(avg: AveragedModel, model: nn.Module, step: int) -> None:
    """Average in the weights of update `step`. The count is the update's number, not the
    calls made in this process, so a resumed run continues the same decay."""
    avg.n_averaged.fill_(step + 1)
    avg.update_parameters(model)


def step_generator(seed: int, stage: str, i: int) -> torch.Generator:
    """The random source of update i of a stage: a resumed run draws the same batches."""
    return torch.Generator().manual_seed(seed * 1_000_003 + zlib.crc32(stage.encode()) % 100_003
                                         * 7919 + i)


def _save(path: Path, stage: Stage, step: int, cfg: DictConfig) -> None:
    """Rank 0 writes; a DDP-wrapped module is saved unwrapped, so any number of ranks
    can load it."""
    if not WORLD.master:
        return
    blob = {"stage": stage.name, "step": step,
            "config": OmegaConf.to_container(cfg, resolve=True),
            "state": {k: unwrap(v).state_dict() if hasattr(v, "state_dict") else v
                      for k, v in stage.state.items()},
            "rng": torch.get_rng_state(), "extra": stage.extra}
    tmp = path.with_suffix(".pt.tmp")
    torch.save(blob, tmp)
    tmp.replace(path)


def load_state(path: Path, state: dict[str, Any]) -> dict[str, Any]:
    """Load a stage checkpoint into `state` (in place); returns the checkpoint."""
    blob = torch.load(path, map_location="cpu", weights_only=True)
    for k, v in state.items():
        if isinstance(v, nn.Module):
            unwrap(v).load_state_dict(blob["state"][k])
        elif hasattr(v, "load_state_dict"):
            v.load_state_dict(blob["state"][k])
        elif isinstance(v, torch.Tensor):
            v.data.copy_(blob["state"][k])
    return blob


def _resume_stage(stage: Stage, last: Path, run: RunDir) -> int:
    """The update an interrupted stage stopped at (0 if none), its state loaded."""
    if not last.exists():
        return 0
    blob = load_state(last, stage.state)
    start = int(blob["step"])
    torch.set_rng_state(blob["rng"])
    stage.extra.update(blob.get("extra", {}))
    run.truncate_metrics(start, prefix=f"{stage.name}/")
    log.info("stage %s: resumed at update %d", stage.name, start)
    return start


def run_stage(stage: Stage, cfg: DictConfig, run: RunDir, stop: StopFlag) -> dict[str, Any]:
    """Train one stage to `stage.steps` updates (or load it if already done); returns its
    last evaluation (or the last train metrics)."""
    t = cfg.trainer
    done, last = run.ckpt_dir / f"{stage.name}.pt", run.ckpt_dir / f"{stage.name}_last.pt"
    if done.exists():
        blob = load_state(done, stage.state)
        stage.extra.update(blob.get("extra", {}))
        log.info("stage %s: already trained, loaded %s", stage.name, done.name)
        return blob["extra"].get("result", {})
    start = _resume_stage(stage, last, run)
    bar = TrainProgress(stage.steps, start=start, log_every=t.log_every,
                        description=stage.name)
    result: dict[str, Any] = {}
    metrics: dict[str, float] = {}
    i = start
    # Every rank must make the same number of updates (DDP all-reduces in each): a stop
    # signal is acted on only through `any_rank`, never by one rank's own flag.
    stopping = any_rank(bool(stop))
    if stage.steps == 0 and stage.evaluate and WORLD.master:  # no updates: score the start
        result = stage.evaluate(0)
        run.log(0, f"{stage.name}/valid", result)
    try:
        while i < stage.steps and not stopping:
            metrics = stage.step(i)
            i += 1
            loss = float(metrics.get("loss", 0.0))
            if not math.isfinite(loss):
                raise Diverged(f"stage {stage.name}: loss is {loss} at update {i}")
            if i % t.log_every == 0:
                run.log(i, f"{stage.name}/train", {k: round(float(v), 5)
                                                   for k, v in metrics.items()})
            bar.update(i, stage.units, stage.unit_name, loss=loss)
            if stage.evaluate and WORLD.master and (i % t.valid_every == 0 or i == stage.steps):
                result = stage.evaluate(i)
                run.log(i, f"{stage.name}/valid", result)
                bar.message(f"[{stage.name}] update {i} " + fmt(result))
            if i % t.save_every == 0 and i < stage.steps:
                _save(last, stage, i, cfg)
            stopping = any_rank(bool(stop))
    finally:
        bar.close()
    if stopping:
        stop.signum = stop.signum or signal.SIGTERM
        _save(last, stage, i, cfg)
        raise Interrupted
    modules = [v for v in stage.state.values() if isinstance(v, nn.Module)]
    if not all(torch.isfinite(p).all() for m in modules for p in m.parameters()):
        raise Diverged(f"stage {stage.name}: a weight is NaN or infinite after update {i} "
                       "(a NaN gradient)")
    stage.extra["result"] = result or {k: round(float(v), 5) for k, v in metrics.items()}
    sums = gather(";".join(checksum(m) for m in modules))
    run.update(param_checksums={**run.summary.get("param_checksums", {}), stage.name: sums},
               rates={**run.summary.get("rates", {}), stage.name: round(bar.typical_rate(), 1)})
    _save(done, stage, i, cfg)
    last.unlink(missing_ok=True)
    return stage.extra["result"]
