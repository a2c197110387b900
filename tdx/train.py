"""`tdx train`: compose with Hydra, run one job per sweep point, write run folders.

`launch()` is what the CLI calls: it validates, picks the run/sweep folder, and hands the
command line to Hydra (`hydra.main`), so multirun, launchers (joblib, submitit) and all
override syntax are Hydra's own. `run_job()` is the Hydra task: one run folder, one engine
call, and a status that is always written, whatever happens inside.
"""

from __future__ import annotations

import logging
import os
import shlex
import sys
import time
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tdx.config import CONF_DIR, UsageError, check, check_data
from tdx.run import RunDir, catch_stop_signals, read_json

log = logging.getLogger("tdx")


def engine(name: str) -> Any:
    if name == "fairseq":
        from tdx.fairseq_engine import train
        return train
    if name == "loop":
        from tdx.loop import train
        return train
    raise UsageError(f"unknown engine {name!r}")


def run_job(cfg: DictConfig) -> str:
    """Run one configured job in its Hydra output folder; return its final status."""
    from hydra.core.hydra_config import HydraConfig

    hc = HydraConfig.get()
    run = RunDir(hc.runtime.output_dir)
    overrides = [o for o in hc.overrides.task if not o.startswith("resume=")]
    if not cfg.resume:
        run.write_config(OmegaConf.to_container(cfg, resolve=True), overrides)
    run.start(int(cfg.seed), str(cfg.name), resumed=bool(cfg.resume),
              command=os.environ.get("TDX_COMMAND", ""))
    log.info("run folder: %s", run.path)
    status = "failed"
    try:
        check_data(cfg)
        with catch_stop_signals() as stop:
            status = engine(cfg.engine)(cfg, run, stop)
    except UsageError as e:  # bad input found inside the job (e.g. an unusable image)
        run.finish("failed", error=str(e), usage_error=True)
        log.error("%s", e)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, but say so
        run.finish("interrupted", error="aborted by a second Ctrl-C")
        raise
    except BaseException as e:  # noqa: BLE001 - any crash is recorded; the sweep goes on
        run.finish("failed", error=f"{type(e).__name__}: {e}")
        log.exception("job failed")
    return status


def _hydra_main(argv: list[str]) -> None:
    import hydra

    main = hydra.main(config_path=str(CONF_DIR), config_name="tdx", version_base="1.3")(
        run_job)
    saved = sys.argv
    sys.argv = ["tdx", *argv]
    try:
        main()
    finally:
        sys.argv = saved


def resume_overrides(run_dir: Path) -> tuple[str, list[str]]:
    """(experiment, original overrides) of an existing run folder."""
    import yaml

    cfg_path, ov_path = run_dir / "config.yaml", run_dir / "overrides.yaml"
    if not cfg_path.exists() or not any((run_dir / "checkpoints").glob("*.pt")):
        raise UsageError(f"Cannot resume from '{run_dir}': it is not a run folder with a "
                         "checkpoint (expected config.yaml and checkpoints/*.pt).")
    overrides = yaml.safe_load(ov_path.read_text()) if ov_path.exists() else []
    experiment = next((o.split("=", 1)[1] for o in overrides if o.startswith("experiment=")),
                      None)
    return experiment, [o for o in overrides if not o.startswith("experiment=")]


def launch(experiment: str, overrides: list[str], multirun: bool = False) -> list[Path]:
    """Validate and run; returns the run folders written (one per job)."""
    resume = next((o.split("=", 1)[1] for o in overrides if o.startswith("resume=")), None)
    if resume:
        if multirun:
            raise UsageError("resume= continues one run; it cannot be combined with -m.")
        run_dir = Path(resume).resolve()
        original, previous = resume_overrides(run_dir)
        if original and original != experiment:
            raise UsageError(f"'{run_dir}' is a run of '{original}', not '{experiment}'.")
        others = [o for o in overrides if not o.startswith("resume=")]
        overrides = [*previous, *others, f"resume={run_dir}"]
    os.environ["TDX_COMMAND"] = shlex.join(
        ["tdx", "train", experiment, *overrides, *(["-m"] if multirun else [])])
    cfg = check(experiment, overrides, multirun)
    if not multirun:
        check_data(cfg)
    stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
    base = Path(cfg.paths.runs_dir) / cfg.name / stamp
    argv = [f"experiment={experiment}", *overrides]
    user_dir = next((o.split("=", 1)[1] for o in overrides
                     if o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))), None)
    if resume:
        argv.append(f"hydra.run.dir={Path(resume).resolve()}")
        folders = [Path(resume).resolve()]
    elif multirun:
        sweep = Path(user_dir) if user_dir else base
        argv = ["--multirun", *argv] + ([] if user_dir else [f"hydra.sweep.dir={sweep}"])
        folders = [sweep]
    else:
        run_dir = Path(user_dir) if user_dir else base
        argv += [] if user_dir else [f"hydra.run.dir={run_dir}"]
        folders = [run_dir]
    _hydra_main(argv)
    if multirun:
        return sorted((p.parent for p in folders[0].glob("*/summary.json")),
                      key=lambda p: int(p.name) if p.name.isdigit() else p.name)
    return folders


def statuses(folders: list[Path]) -> list[str]:
    return [read_json(f / "summary.json").get("status", "failed") for f in folders]
