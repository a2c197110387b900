"""Table specs: which runs make a paper table, how each is identified, and the plan.

A table spec, `conf/table/<name>.yaml` (or a user plugin's `conf/table/`):

    description: one line              paper: the paper and what of it the table rebuilds
    preset: copy                       the report preset that makes the table
    runs:                              groups of runs, each needing only groups above it
      teacher:
        experiment: talk-mt
        overrides: [model=transformer_multi30k, trainer.max_update=3000]
      students:
        experiment: embed
        overrides: [teacher=@teacher]  @GROUP: the run folder of that group's run whose
                                       sweep values agree with this run's on shared keys
        sweep: {model.embed_method: [distilled, svd], seed: [1, 2]}   one run per point
        when: [{if: {seed: 2}, overrides: [...]}]                      more for some points
    report: [students]                 the groups the table reads (default: the last)
    plot: {metric: valid.bleu}         learning curves of this metric, or false; default:
                                       the preset's own plot (or valid.exact_match curves)
    files: [srnam_grid.png]            files of the (first) reported run copied beside it
    minutes: {teacher: 75}             CPU minutes per run measured here: the plan's
                                       estimate before any run of the group exists
    scales:
      smoke: {teacher: {overrides: [...], sweep: {...}}}   toy budgets (`--scale smoke`)

A run is identified by its settings: the experiment's composed config (with its defaults,
interpolations unresolved, so no machine path enters; null options left out) and the
identities of the runs it depends on. Its folder, `<runs root>/<experiment>/<label>-<id>`,
is found again by that identity: a completed (or diverged) run is reused, an interrupted
one resumed, a changed setting makes a new run. `tdx.table` carries the plan out.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from tdx.config import compose_checked, conf_dirs
from tdx.errors import UsageError, did_you_mean
from tdx.run import read_json

REF = re.compile(r"@([A-Za-z_][\w-]*)")
SCALES = ("full", "smoke")
DONE = ("completed", "diverged")  # a diverged run is a result too (the table says so)
# not settings of the run: where it is written and logged, how it was started
VOLATILE = ("paths", "hydra", "resume", "description", "mlflow")


@dataclass
class Run:
    """One run a table needs: its group, sweep point and settings, and where it lives."""

    group: str
    point: dict[str, Any]
    experiment: str
    overrides: list[str]
    deps: dict[str, Run] = field(default_factory=dict)
    id: str = ""
    folder: Path | None = None  # relative to the runs root, once found or planned

    @property
    def label(self) -> str:
        """'students-distilled-2': the group and its sweep values, for folder names."""
        vals = [re.sub(r"[^\w.=-]+", "_", str(v))[:24] for v in self.point.values()]
        return "-".join([self.group, *vals])


@dataclass
class Spec:
    name: str
    path: Path
    description: str
    paper: str
    preset: str
    runs: list[Run]
    report: list[str]
    plot: Any = None
    files: list[str] = field(default_factory=list)
    minutes: dict[str, float] = field(default_factory=dict)
    scale: str = "full"


def spec_files() -> dict[str, Path]:
    """{name: path} of every table spec in the config dirs."""
    return {p.stem: p for d in conf_dirs() for p in sorted((d / "table").glob("*.yaml"))}


def load_spec(name: str, scale: str = "full") -> Spec:
    """The spec NAME at `scale`, its runs expanded (sweeps, conditions, references)."""
    files = spec_files()
    if name not in files:
        raise UsageError(f"Unknown table '{name}'.{did_you_mean(name, files)} Tables: "
                         f"{', '.join(files) or 'none'} (see `tdx table --list`).")
    if scale not in SCALES:
        raise UsageError(f"Unknown scale '{scale}': use {' or '.join(SCALES)}.")
    raw = yaml.safe_load(files[name].read_text()) or {}
    groups = raw.get("runs") or {}
    if not groups or "preset" not in raw:
        raise UsageError(f"{files[name]}: a table spec needs `preset` and `runs`.")
    scaled = (raw.get("scales") or {}).get(scale, {}) if scale != "full" else {}
    if scale != "full" and not scaled:
        raise UsageError(f"{files[name]} declares no '{scale}' scale.")
    runs: list[Run] = []
    for group, g in groups.items():
        runs += _expand(group, g, scaled.get(group) or {}, runs, files[name])
    report = list(raw.get("report") or [list(groups)[-1]])
    if unknown := [g for g in report if g not in groups]:
        raise UsageError(f"{files[name]}: report names unknown group(s) {unknown}.")
    return Spec(name, files[name], str(raw.get("description", "")), str(raw.get("paper", "")),
                str(raw["preset"]), runs, report, raw.get("plot"), list(raw.get("files") or []),
                dict(raw.get("minutes") or {}), scale)


def _expand(group: str, g: dict, scaled: dict, earlier: list[Run], path: Path) -> list[Run]:
    """The runs of one group: one per point of its sweep (product of the value lists)."""
    if "experiment" not in g:
        raise UsageError(f"{path}: run group '{group}' names no experiment.")
    sweep = {**(g.get("sweep") or {}), **(scaled.get("sweep") or {})}
    keys = list(sweep)
    out = []
    for values in itertools.product(*(sweep[k] for k in keys)):
        point = dict(zip(keys, values, strict=True))
        overrides = [*(g.get("overrides") or []), *(scaled.get("overrides") or [])]
        for cond in g.get("when") or []:
            if all(str(point.get(k)) == str(v) for k, v in cond["if"].items()):
                overrides += cond.get("overrides") or []
        overrides += [f"{k}={_value(v)}" for k, v in point.items()]
        run = Run(group, point, str(g["experiment"]), [str(o) for o in overrides])
        run.deps = {ref: _dependency(ref, run, earlier, path)
                    for o in run.overrides for ref in REF.findall(o)}
        out.append(run)
    return out


def _value(v: Any) -> str:
    """A sweep value as Hydra's override grammar reads it: lists as [a,b]."""
    if isinstance(v, list):
        return "[" + ",".join(map(str, v)) + "]"
    return str(v).lower() if isinstance(v, bool) else str(v)


def _dependency(ref: str, run: Run, earlier: list[Run], path: Path) -> Run:
    """The run of group `ref` that `run` refers to: the one whose sweep values agree with
    `run`'s on every key both sweep."""
    found = [r for r in earlier if r.group == ref
             and all(str(r.point[k]) == str(run.point[k]) for k in r.point if k in run.point)]
    if len(found) != 1:
        raise UsageError(f"{path}: '@{ref}' in group '{run.group}' matches {len(found)} runs "
                         f"of '{ref}' for {run.point or 'its only point'}; it must match one "
                         "(a group above it whose sweep keys it shares).")
    return found[0]


# ---------------------------------------------------------------------------- identity


def identify(spec: Spec) -> None:
    """Give every run its identity, from its composed settings and its dependencies'."""
    cache: dict[tuple, str] = {}
    for run in spec.runs:
        subst = [REF.sub(lambda m, r=run: f"@run:{r.deps[m.group(1)].id}", o)
                 for o in run.overrides]
        key = (run.experiment, tuple(subst))
        if key not in cache:
            cache[key] = settings_id(run.experiment, subst)
        run.id = cache[key]


def settings_id(experiment: str, overrides: list[str]) -> str:
    """12 hex digits of the sha256 of the composed settings (VOLATILE sections and null
    leaves left out): equal settings, equal identity."""
    cfg = OmegaConf.to_container(compose_checked(experiment, overrides), resolve=False)
    settings = _settled({k: v for k, v in cfg.items() if k not in VOLATILE})
    text = json.dumps({"experiment": experiment, "settings": settings}, sort_keys=True,
                      default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def _settled(node: Any) -> Any:
    """The config without its null leaves: a key added later with a null default (an
    option that is off) does not change the identity of the runs made before it."""
    if isinstance(node, dict):
        return {k: _settled(v) for k, v in node.items() if v is not None}
    return node


def locate(spec: Spec, root: Path) -> None:
    """Each run's folder under the runs root: the existing one of its identity, else a
    new `<experiment>/<label>-<id>`."""
    for run in spec.runs:
        found = sorted((root / run.experiment).glob(f"*-{run.id}"))
        run.folder = found[0].relative_to(root) if found else \
            Path(run.experiment) / f"{run.label}-{run.id}"


def state(run: Run, root: Path) -> str:
    """done (reuse), resume (interrupted, or stopped without a word, with a checkpoint),
    or start (no folder, or nothing to resume from)."""
    folder = root / run.folder
    status = read_json(folder / "summary.json").get("status")
    if status in DONE:
        return "done"
    if status and any((folder / "checkpoints").glob("*.pt")):
        return "resume"
    return "start"


def overrides_for(run: Run) -> list[str]:
    """The run's overrides with @GROUP replaced by that run's folder (runs-root relative)."""
    return [REF.sub(lambda m: str(run.deps[m.group(1)].folder), o) for o in run.overrides]


# ---------------------------------------------------------------------------- plan


@dataclass
class Step:
    run: Run
    state: str  # done | resume | start
    minutes: float | None  # CPU minutes it took (done) or is expected to take


def plan(spec: Spec, root: Path) -> list[Step]:
    """Every run of the spec with what `tdx table` will do with it, and its CPU time:
    recorded (done), or estimated from the done runs of its group (else the spec's
    `minutes`, which hold for the full scale only); a resume counts what is left."""
    identify(spec)
    locate(spec, root)
    steps = [Step(r, state(r, root), None) for r in spec.runs]
    spent = {id(s.run): read_json(root / s.run.folder / "summary.json").get("wall_time_s", 0)
             / 60 for s in steps}
    for s in steps:
        known = [spent[id(t.run)] for t in steps if t.run.group == s.run.group
                 and t.state == "done"]
        typical = sum(known) / len(known) if known else \
            spec.minutes.get(s.run.group) if spec.scale == "full" else None
        if s.state == "done":
            s.minutes = spent[id(s.run)]
        elif typical is not None:
            s.minutes = max(0.0, typical - spent[id(s.run)])
    return steps


def describe_plan(spec: Spec, steps: list[Step], root: Path) -> str:
    """The plan as text: a line per run, then the counts and the CPU time still needed."""
    lines = [f"table {spec.name} ({spec.scale} scale): {spec.description}",
             f"runs root: {root}", ""]
    for s in steps:
        t = "?" if s.minutes is None else f"{s.minutes:.1f} min"
        lines.append(f"  {s.state:<6} {t:>10}  {s.run.folder}")
    todo = [s for s in steps if s.state != "done"]
    unknown = sum(s.minutes is None for s in todo)
    left = sum(s.minutes or 0.0 for s in todo)
    counts = {k: sum(s.state == k for s in steps) for k in ("done", "resume", "start")}
    lines += ["", f"{counts['done']} done, {counts['resume']} to resume, {counts['start']} to "
              f"start; expected CPU time {left:.0f} min"
              + (f" + {unknown} run(s) of unknown length" if unknown else "")]
    return "\n".join(lines) + "\n"
