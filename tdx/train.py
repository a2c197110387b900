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
from contextlib import nullcontext
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, OmegaConf

from tdx import distributed, engines, tracking
from tdx.config import CONF_DIR, check, check_data, searchpath
from tdx.errors import UsageError
from tdx.run import RunDir, catch_stop_signals, folder_lock, new_folder, read_json

log = logging.getLogger("tdx")


class SweepStopped(BaseException):
    """Raised by `run_job` after a job that Ctrl-C or SIGTERM stopped, so that a sweep ends
    there instead of starting its next job (Hydra's launchers catch Exception only)."""


def run_job(cfg: DictConfig) -> str:
    """Run one configured job in its Hydra output folder; return its final status."""
    from hydra.core.hydra_config import HydraConfig
    from hydra.types import RunMode

    hc = HydraConfig.get()
    if not distributed.WORLD.master:  # under torchrun: rank 0 alone logs and writes
        logging.getLogger().setLevel(logging.WARNING)
    run = RunDir(hc.runtime.output_dir, writer=distributed.WORLD.master)
    share_cores(hc)
    overrides = [o for o in hc.overrides.task if not o.startswith("resume=")]
    # on resume too: `launch` merged the run's own overrides with the new ones (say a
    # longer trainer.max_update), and the folder records the config it finishes with
    run.write_config(OmegaConf.to_container(cfg, resolve=True), overrides)
    run.start(int(cfg.seed), str(cfg.name), resumed=bool(cfg.resume),
              command=os.environ.get("TDX_COMMAND", ""))
    log.info("run folder: %s", run.path)
    status, stopped = "failed", False
    try:
        check_data(cfg)
        if cfg.distributed.world_size > 1 and not distributed.under_torchrun():
            return run_ranks(cfg, run)
        if run.writer:  # the ranks' launcher leaves it to rank 0
            run.track(tracking.open_mirror(cfg, run.path, run.summary))
        run.update(world_size=distributed.WORLD.size)
        with catch_stop_signals() as stop:
            status = engines.get(cfg.engine).train(cfg, run, stop)
        stopped = bool(stop)
    except UsageError as e:  # bad input found inside the job (e.g. an unusable image)
        run.finish("failed", error=str(e), usage_error=True)
        log.error("%s", e)
    except KeyboardInterrupt:  # a second Ctrl-C: stop now, but say so
        run.finish("interrupted", error="aborted by a second Ctrl-C")
        raise
    except BaseException as e:  # noqa: BLE001 - any crash is recorded; the sweep goes on
        run.finish("failed", error=f"{type(e).__name__}: {e}")
        log.exception("job failed")
    if stopped and hc.mode == RunMode.MULTIRUN:
        log.warning("stopped by a signal: the sweep's remaining jobs are not started")
        raise SweepStopped
    return status


def share_cores(hc: Any) -> None:
    """Jobs of a local parallel sweep (joblib) split the CPU cores between them."""
    import torch

    if "joblib" not in str(OmegaConf.select(hc, "launcher._target_", default="")).lower():
        return
    cores = os.cpu_count() or 1
    n_jobs = int(OmegaConf.select(hc, "launcher.n_jobs", default=-1) or -1)
    torch.set_num_threads(max(1, cores // (cores if n_jobs < 1 else min(n_jobs, cores))))


def run_ranks(cfg: DictConfig, run: RunDir) -> str:
    """Start this machine's ranks of a data-parallel job, wait, and record a dead rank."""
    d = cfg.distributed
    if d.world_size % d.nnodes:
        raise UsageError(f"distributed.world_size={d.world_size} is not a multiple of "
                         f"distributed.nnodes={d.nnodes}.")
    if d.nnodes > 1 and not d.master_port:
        raise UsageError("several machines need one distributed.master_port, the same on "
                         "each (and distributed.master_addr: the node_rank 0 machine).")
    port = d.master_port or free_port()
    nproc = d.world_size // d.nnodes
    run.update(world_size=int(d.world_size), nnodes=int(d.nnodes))
    log.info("starting %d ranks (%d per machine, %d threads each, %s)", d.world_size, nproc,
             distributed.threads_per_rank(nproc), d.backend)
    error = distributed.launch(
        rank_worker, (OmegaConf.to_container(cfg, resolve=True), str(run.path),
                      f"tcp://{d.master_addr}:{port}"), nproc)
    run.attach()
    if d.node_rank > 0:  # this machine's launcher: rank 0's machine has the metrics
        run.finish("failed" if error else "completed", error=error,
                   note=f"ranks of node {d.node_rank}; the metrics are on node 0")
        return run.summary["status"]
    if error:
        run.finish("failed", error=f"distributed job stopped: {error}")
        log.error("distributed job stopped: %s", error)
        return "failed"
    return run.summary.get("status", "failed")


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("", 0))
        return s.getsockname()[1]


def rank_worker(local_rank: int, cfg_dict: dict, run_path: str, init_method: str) -> None:
    """One rank of a job `run_ranks` started (a fresh process): join the group, train,
    and on rank 0 keep writing the run folder the launcher opened."""
    import faulthandler
    import signal

    import torch

    faulthandler.enable(all_threads=True)  # a rank that crashes (SIGABRT...) prints its stacks
    faulthandler.register(signal.SIGUSR1)  # `kill -USR1 PID` prints where a rank is stuck
    cfg = OmegaConf.create(cfg_dict)
    d = cfg.distributed
    nproc = d.world_size // d.nnodes
    rank = d.node_rank * nproc + local_rank
    torch.set_num_threads(distributed.threads_per_rank(nproc))
    if cfg.get("device") == "cuda":
        torch.cuda.set_device(local_rank)
    logging.basicConfig(level=logging.INFO if rank == 0 else logging.WARNING,
                        format=f"[%(asctime)s][rank {rank}][%(levelname)s] %(message)s")
    if rank == 0:
        handler = logging.FileHandler(Path(run_path) / "train.log")
        handler.setFormatter(logging.getLogger().handlers[0].formatter)
        logging.getLogger().addHandler(handler)
    distributed.init(rank, d.world_size, local_rank, d.backend, init_method, d.timeout_s)
    run = RunDir(run_path, writer=rank == 0)
    run.attach()
    if run.writer:
        run.track(tracking.open_mirror(cfg, run.path, run.summary))
    try:
        with catch_stop_signals() as stop:
            engines.get(cfg.engine).train(cfg, run, stop)
    except BaseException as e:  # distributed.launch leaves the group and reports it
        run.finish("failed", error=f"rank {rank}: {type(e).__name__}: {e}")
        raise


def _hydra_main(argv: list[str]) -> None:
    import hydra

    main = hydra.main(config_path=str(CONF_DIR), config_name="tdx", version_base="1.3")(
        run_job)
    saved = sys.argv
    sys.argv = ["tdx", *argv, *searchpath()]
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


def resumed_overrides(experiment: str, overrides: list[str], multirun: bool
                      ) -> tuple[Path | None, list[str]]:
    """(the run folder `resume=` names, or None; the overrides to run with): a resume
    keeps the run's own overrides, and the ones given now replace theirs."""
    given = [o.split("=", 1)[1] for o in overrides if o.startswith("resume=")]
    if not given:
        return None, overrides
    if not given[-1]:
        raise UsageError("resume= names no run folder: give the folder to continue "
                         "(resume=runs/<experiment>/<stamp>).")
    if multirun:
        raise UsageError("resume= continues one run; it cannot be combined with -m.")
    run_dir = Path(given[-1]).resolve()
    original, previous = resume_overrides(run_dir)
    if original and original != experiment:
        raise UsageError(f"'{run_dir}' is a run of '{original}', not '{experiment}'.")
    others = [o for o in overrides if not o.startswith("resume=")]
    changed = {o.split("=", 1)[0].lstrip("+~") for o in others}  # new values win
    kept = [o for o in previous if o.split("=", 1)[0].lstrip("+~") not in changed]
    return run_dir, [*kept, *others, f"resume={run_dir}"]


def unused_folder(path: Path, multirun: bool) -> Path:
    """A folder given with hydra.run.dir / sweep.dir: refused (exit 2) if it holds a run
    already (a new run would write over it), else made as `writable_folder` makes it."""
    path = writable_folder(path)
    held = list(path.glob("*/summary.json" if multirun else "summary.json"))
    if held:
        raise UsageError(f"'{path}' holds a run already ({held[0].parent}): continue it with "
                         "resume=FOLDER, or give another folder.")
    return path


def writable_folder(path: Path) -> Path:
    """`path`, made if needed; refused (exit 2) if it is a file, has a name the file system
    cannot hold, or cannot be written."""
    if any(len(part.encode()) > 255 for part in path.parts):
        raise UsageError(f"The folder name '{path}' has a part longer than 255 bytes.")
    if path.exists() and not path.is_dir():
        raise UsageError(f"'{path}' is a file, not a folder for runs.")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UsageError(f"Cannot make the run folder '{path}': {e.strerror}.") from None
    if not os.access(path, os.W_OK):
        raise UsageError(f"The run folder '{path}' cannot be written.")
    return path


def job_folder(cfg: DictConfig, overrides: list[str], resume: Path | None,
               multirun: bool) -> tuple[Path, list[str]]:
    """The run folder (or sweep folder) and the Hydra arguments that put the job there."""
    key = "hydra.sweep.dir" if multirun else "hydra.run.dir"
    given = next((o.split("=", 1)[1] for o in overrides
                  if o.startswith(("hydra.run.dir=", "hydra.sweep.dir="))), None)
    if resume:
        return resume, [f"hydra.run.dir={resume}"]
    if given:
        if distributed.WORLD.master:
            unused_folder(Path(given), multirun)
        return Path(given), []
    folder = None
    if distributed.WORLD.master:
        base = Path(cfg.paths.runs_dir) / cfg.name / time.strftime("%Y-%m-%d_%H-%M-%S")
        folder = new_folder(writable_folder(base.parent) / base.name)
    if distributed.under_torchrun():  # every rank runs this; all use rank 0's folder
        folder = Path(distributed.broadcast(str(folder)))
    return folder, [f"{key}={folder}"]


def launch(experiment: str, overrides: list[str], multirun: bool = False) -> list[Path]:
    """Validate and run; returns the run folders written (one per job)."""
    resume, overrides = resumed_overrides(experiment, overrides, multirun)
    os.environ["TDX_COMMAND"] = shlex.join(
        ["tdx", "train", experiment, *overrides, *(["-m"] if multirun else [])])
    cfg = check(experiment, overrides, multirun)
    if not multirun:
        check_data(cfg)
    if distributed.under_torchrun():
        distributed.init_from_env(cfg.distributed.backend, cfg.distributed.timeout_s)
    folder, where = job_folder(cfg, overrides, resume, multirun)
    argv = [*(["--multirun"] if multirun else []), f"experiment={experiment}", *overrides,
            *where]
    try:
        with folder_lock(folder) if distributed.WORLD.master else nullcontext():
            if resume:  # under the lock, before anything is written: a resume that
                engines.get(cfg.engine).check_resume(cfg, resume)  # fails changes nothing
            _hydra_main(argv)
    except SweepStopped:  # the stopped job's folder says `interrupted`; the CLI exits 130
        pass
    finally:
        if distributed.under_torchrun():
            distributed.barrier()  # rank 0 has written the summary before anyone reports
            distributed.shutdown()  # left before exit: gloo's threads outliving it can abort
    if multirun:
        return sorted((p.parent for p in folder.glob("*/summary.json")),
                      key=lambda p: int(p.name) if p.name.isdigit() else p.name)
    return [folder]


def statuses(folders: list[Path]) -> list[str]:
    return [read_json(f / "summary.json").get("status", "failed") for f in folders]


def exit_code(folders: list[Path]) -> int:
    """`tdx train`'s exit code: 0 every job completed, 1 a job failed or diverged, 2 one
    job stopped by bad input it found, 130 interrupted."""
    st = statuses(folders)
    if "interrupted" in st:
        return 130
    if len(folders) == 1 and read_json(folders[0] / "summary.json").get("usage_error"):
        return 2
    return 0 if all(s == "completed" for s in st) else 1
