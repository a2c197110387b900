"""`tdx table NAME`: a paper table rebuilt from its spec, running only what is missing.

The plan (`tdx.table_spec.plan`) says which runs are done, which to resume and which to
start; `build` carries it out in the spec's order, each run in its own `tdx train` process
whose working directory is the runs root (so every path a run folder records is relative
to it), then writes the table: `<out>/NAME.md` (the generated part rewritten, the reading
after it kept), its plot `NAME.png` and its numbers `NAME.json`. Full scale writes to
`results/`, a smaller scale beside its runs (`<runs root>/tables/NAME-<scale>/`).

Stopping `tdx table` (Ctrl-C, SIGTERM) stops the run in progress as `tdx train` would
(saved, `interrupted`); the next `tdx table NAME` resumes it and starts no finished run.
One `tdx table` at a time uses a runs root (a lock file).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any

from tdx.config import compose
from tdx.errors import UsageError
from tdx.plugins import ENV as USER_DIR_ENV
from tdx.report import collect, draw, make_table, markdown, render, write_markdown
from tdx.run import describe_machine, exclusive, git_commit, machine_info, read_json
from tdx.table_spec import Spec, Step, describe_plan, load_spec, overrides_for, plan, spec_files


def runs_root(given: Path | None = None) -> Path:
    """The runs root: `given`, else $TDX_RUNS_DIR, else ./runs."""
    root = given or Path(os.environ.get("TDX_RUNS_DIR") or "runs")
    root = root.expanduser().resolve()
    root.mkdir(parents=True, exist_ok=True)
    return root


def list_tables() -> list[tuple[str, str, str]]:
    """(name, scales, description) of every table spec."""
    out = []
    for name in spec_files():
        spec = load_spec(name)
        out.append((name, "full, smoke" if _has_smoke(name) else "full", spec.description))
    return out


def _has_smoke(name: str) -> bool:
    try:
        load_spec(name, "smoke")
    except UsageError:
        return False
    return True


def locked(root: Path) -> AbstractContextManager[None]:
    """Hold the runs root's table lock: one `tdx table` at a time."""
    return exclusive(root / ".tdx-table.lock", f"another `tdx table` is using the runs root "
                     f"{root}; wait for it, or give this one another (--runs-root).")


@contextmanager
def working_dir(path: Path) -> Iterator[None]:
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


# ---------------------------------------------------------------------------- training


class Children:
    """The `tdx train` process in progress; a stop signal is passed on to it (SIGTERM:
    it saves and stops), a second one kills it."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen | None = None
        self.stops = 0

    def handler(self, signum: int, _frame: Any) -> None:
        self.stops += 1
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM if self.stops == 1 else signal.SIGKILL)

    def run(self, argv: list[str], cwd: Path, env: dict[str, str]) -> int:
        # its own session: a terminal's Ctrl-C reaches this process alone, which passes
        # one SIGTERM on, instead of two signals that `tdx train` would take as "abort"
        self.proc = subprocess.Popen(argv, cwd=cwd, env=env, start_new_session=True)
        code = self.proc.wait()
        self.proc = None
        return code


def child_env(root: Path) -> dict[str, str]:
    """The environment of the runs: data, cache and plugin folders as absolute paths (the
    runs' working directory is the runs root, not this one's)."""
    paths = compose(next(iter(_any_experiment()))).paths
    env = {**os.environ, "TDX_DATA_DIR": str(Path(paths.data_dir)),
           "TDX_CACHE_DIR": str(Path(paths.cache_dir))}
    if os.environ.get(USER_DIR_ENV):
        env[USER_DIR_ENV] = os.pathsep.join(str(Path(p).resolve()) for p in
                                            os.environ[USER_DIR_ENV].split(os.pathsep) if p)
    return env


def _any_experiment() -> dict[str, str]:
    from tdx.config import experiments
    return experiments()


def tdx_command() -> list[str]:
    exe = Path(sys.executable).with_name("tdx")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "tdx.cli.main"]


def train_step(step: Step, root: Path, env: dict[str, str], children: Children) -> int:
    """Resume or start one run; `tdx train`'s exit code."""
    run = step.run
    if step.state == "resume":
        return children.run([*tdx_command(), "train", run.experiment, f"resume={run.folder}"],
                            root, env)
    folder = root / run.folder
    if folder.exists():  # a start that left nothing to resume from: kept aside, not reused
        folder.rename(folder.with_name(f"{folder.name}.abandoned-{time.strftime('%H%M%S')}"))
    return children.run([*tdx_command(), "train", run.experiment, *overrides_for(run),
                         f"hydra.run.dir={run.folder}", "paths.runs_dir=."], root, env)


def execute(steps: list[Step], root: Path, echo: Callable[[str], None]) -> int:
    """Carry the plan out in order; 0, 1 (a run failed: its dependants are skipped),
    2 (bad input) or 130 (stopped)."""
    children, env, failed = Children(), child_env(root), set()
    previous = {s: signal.signal(s, children.handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        for i, step in enumerate(steps):
            if children.stops:  # stopped between two runs
                return 130
            if step.state == "done":
                continue
            if bad := [d.folder for d in step.run.deps.values() if id(d) in failed]:
                echo(f"skipped {step.run.folder}: it needs {', '.join(map(str, bad))}")
                failed.add(id(step.run))
                continue
            echo(f"[{i + 1}/{len(steps)}] {step.state} {step.run.folder}")
            code = train_step(step, root, env, children)
            if children.stops or code in (2, 130):
                return 130 if children.stops or code == 130 else 2
            if code != 0:
                failed.add(id(step.run))
    finally:
        for s, h in previous.items():
            signal.signal(s, h)
    return 1 if failed else 0


# ---------------------------------------------------------------------------- outputs


def build(name: str, scale: str = "full", root: Path | None = None,
          out_dir: Path | None = None, dry_run: bool = False,
          echo: Callable[[str], None] = print) -> int:
    """`tdx table NAME`: plan, run what is missing, write the table; the exit code."""
    spec = load_spec(name, scale)
    root = runs_root(root)
    out = (out_dir or (Path("results") if scale == "full" else
                       root / "tables" / f"{name}-{scale}")).resolve()
    with locked(root):
        steps = plan(spec, root)
        echo(describe_plan(spec, steps, root))
        if dry_run:
            return 0
        code = execute(steps, root, echo)
        if code in (2, 130):
            return code
        steps = plan(spec, root)
        write_table(spec, steps, root, out)
    echo(f"wrote {out / (name + '.md')}")
    return code


def write_table(spec: Spec, steps: list[Step], root: Path, out: Path) -> None:
    """NAME.md (generated part + kept reading), NAME.png and NAME.json from the runs."""
    git_commit()  # the code that writes the table, read before results/ changes
    reported = [s.run for s in steps if s.run.group in spec.report]
    folders = [r.folder for r in reported if (root / r.folder / "summary.json").exists()]
    if not folders:
        raise UsageError(f"table {spec.name}: none of its runs ({', '.join(spec.report)}) "
                         "has a run folder yet.")
    with working_dir(root):  # run folders name each other relative to the runs root
        runs = collect(folders)
        headers, rows = make_table(runs, spec.preset)
        text = render(headers, rows, "md")
        if spec.plot is not False:
            draw(runs, spec.preset, out / f"{spec.name}.png",
                 (spec.plot or {}).get("metric", "valid.exact_match"))
        title = spec.description or spec.name
        md = markdown(runs, text, spec.preset, stamp(spec, steps, root), title)
    write_markdown(out / f"{spec.name}.md", md)
    numbers = {"table": spec.name, "scale": spec.scale, "preset": spec.preset,
               "spec": _shown(spec.path), "paper": spec.paper, "headers": headers,
               "rows": rows, "runs": [_run_record(s, root) for s in steps],
               "tdx_commit": git_commit(), "date": time.strftime("%Y-%m-%d %H:%M")}
    (out / f"{spec.name}.json").write_text(json.dumps(numbers, indent=1) + "\n")
    for name in spec.files:  # e.g. a sample grid the run drew: NAME_file, or as named
        src = root / folders[0] / name
        if src.exists():
            dst = name if name.startswith(spec.name) else f"{spec.name}_{name}"
            shutil.copyfile(src, out / dst)


def _shown(path: Path) -> str:
    """A spec's path as the repository names it (conf/table/x.yaml), else its name."""
    parts = path.parts
    return "/".join(parts[parts.index("conf"):]) if "conf" in parts else path.name


def _run_record(step: Step, root: Path) -> dict[str, Any]:
    s = read_json(root / step.run.folder / "summary.json")
    return {"group": step.run.group, "point": step.run.point, "id": step.run.id,
            "folder": str(step.run.folder), "status": s.get("status"),
            "wall_time_s": s.get("wall_time_s"), "git_commit": s.get("git_commit"),
            "command": s.get("command"), "resume_commands": s.get("resume_commands", []),
            "final": s.get("final", {})}


def stamp(spec: Spec, steps: list[Step], root: Path) -> str:
    """Provenance of a table build: the spec and command, the runs (relative to the runs
    root), their commits and CPU time, the machine."""
    summaries = [read_json(root / s.run.folder / "summary.json") for s in steps]
    commits = sorted({str(s.get("git_commit")) for s in summaries if s})
    minutes = sum(s.get("wall_time_s", 0) for s in summaries) / 60
    scale = "" if spec.scale == "full" else f" --scale {spec.scale}"
    first = next((s for s in summaries if "cpu" in s), machine_info())
    groups = ", ".join(f"{g} ({sum(s.run.group == g for s in steps)})"
                       for g in dict.fromkeys(s.run.group for s in steps))
    return "\n".join([
        f"- Built by `tdx table {spec.name}{scale}` from `{_shown(spec.path)}` (tdx commit "
        f"{git_commit()}, {time.strftime('%Y-%m-%d %H:%M')}); the spec is the protocol, "
        f"and `{spec.name}.json` holds every run's command, folder and final numbers.",
        f"- Runs: {len(steps)} in groups {groups}, trained at commit(s) {', '.join(commits)}; "
        f"run folders and the paths in commands are relative to the runs root (the "
        f"repository's `runs/`, or $TDX_RUNS_DIR): "
        + ", ".join(f"`{s.run.folder}`" for s in steps if s.run.group in spec.report),
        f"- CPU time: {minutes:.0f} min in all (the runs' wall times on 2 cores)",
        f"- Machine: {describe_machine(first)}"]) + "\n"
