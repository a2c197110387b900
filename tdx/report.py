"""`tdx report`: tables and learning curves from run folders, and nothing else.

A run folder is found by its summary.json; its config.yaml, overrides.yaml and
metrics.jsonl give the rest. Rows are runs, or configs (mean ± std over seeds) with
`--aggregate`; columns are the overrides that differ between runs plus the final metrics,
or a paper's preset (`--table copy`).

Presets are registered by the paper packages (`register_preset`, as fairseq registers
models): each names its table, and optionally the notes under it (settings, targets) and
a plot. This module holds what every preset shares: loading and grouping runs, cells,
mean ± std, rendering, provenance stamps and the learning-curve plot.
"""

from __future__ import annotations

import csv
import io
import math
import os
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from tdx import plugins
from tdx.errors import UsageError, did_you_mean
from tdx.run import describe_machine, git_commit, machine_info, read_json, read_metrics

IGNORED_OVERRIDES = ("hydra.", "hydra/", "experiment=", "resume=", "paths.")
Table = tuple[list[str], list[list[str]]]


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    overrides: dict[str, str]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def get(self, dotted: str) -> Any:
        """'params', 'final.bleu_beam5', 'config.model.meta.label', 'override.model'."""
        head, _, rest = dotted.partition(".")
        if head == "config":
            return OmegaConf.select(OmegaConf.create(self.config), rest, default=None)
        if head == "override":
            return self.overrides.get(rest)
        node: Any = self.summary
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def keys(self, dotted: str, default: Any = None) -> tuple:
        """Several `get` keys at once, comma-separated: 'compression.rate,config.x'."""
        return tuple(default if (v := self.get(k)) is None else v for k in dotted.split(","))

    def curve(self, split: str, metric: str) -> list[tuple[int, float]]:
        return [(m["step"], m["metrics"][metric]) for m in self.metrics
                if m["split"] == split and isinstance(m["metrics"].get(metric), int | float)]

    def first_step(self, split: str, metric: str, threshold: float) -> int | None:
        return next((s for s, v in self.curve(split, metric) if v >= threshold), None)

    def locate(self, path: str) -> Path:
        """A folder this run's config names (a teacher, a body): as given if it exists,
        else relative to one of the run's parent folders (a runs root: `tdx table` runs
        name each other relative to it)."""
        given = Path(path)
        if given.is_absolute() or given.exists():
            return given
        return next((p / given for p in self.path.resolve().parents if (p / given).exists()),
                    given)


class BadRun(Exception):
    """A run folder whose files cannot be read as a run's (truncated, corrupt, foreign)."""


def load_run(d: Path) -> Run:
    """One run folder (its files that are missing read as empty); BadRun if one of them
    is not what tdx writes."""
    summary = read_json(d / "summary.json")
    if not isinstance(summary.get("status"), str):
        raise BadRun("summary.json is not a run summary (truncated, or not tdx's)")
    config = _yaml(d / "config.yaml", dict) or {}
    ov = _yaml(d / "overrides.yaml", list) or []
    if not all(isinstance(o, str) for o in ov):
        raise BadRun("overrides.yaml is not a list of overrides")
    try:
        metrics = read_metrics(d / "metrics.jsonl")
    except (ValueError, TypeError) as e:
        raise BadRun(f"metrics.jsonl: {e}") from None
    return Run(d, summary, config, dict(_override(o) for o in ov if "=" in o
                                        and not o.startswith(IGNORED_OVERRIDES)), metrics)


def _yaml(path: Path, kind: type) -> Any:
    """The YAML file's content if it is a `kind` (None if the file is missing)."""
    if not path.exists():
        return None
    try:
        value = yaml.safe_load(path.read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise BadRun(f"{path.name} is not YAML ({str(e).splitlines()[0]})") from None
    if value is not None and not isinstance(value, kind):
        raise BadRun(f"{path.name} holds a {type(value).__name__}, not a {kind.__name__}")
    return value


def _override(o: str) -> tuple[str, str]:
    """'key=value' -> (key, value), a boolean spelt as Hydra's grammar reads it: a
    multirun job records `x=True` where a single run records the command line's `x=true`,
    and the two must land in one table column."""
    k, v = o.split("=", 1)
    return k, v.lower() if v.lower() in ("true", "false") else v


def collect(paths: list[Path], strict: bool = False,
            warn: Callable[[str], None] = lambda m: print(m, file=sys.stderr)) -> list[Run]:
    """Every run folder under `paths`. A folder that cannot be read as a run is left out
    with a warning naming it (`strict`: a UsageError instead), never merged as '?'."""
    runs = []
    for root in paths:
        if not Path(root).exists():
            raise UsageError(f"No such run folder: '{root}'.")
        for summary in sorted(Path(root).rglob("summary.json")):
            try:
                runs.append(load_run(summary.parent))
            except BadRun as e:
                if strict:
                    raise UsageError(f"Run folder '{summary.parent}': {e}.") from None
                warn(f"warning: left out '{summary.parent}': {e}")
    if not runs:
        raise UsageError(f"No run folders (with a readable summary.json) under: "
                         f"{', '.join(map(str, paths))}.")
    return runs


def completed(runs: list[Run]) -> list[Run]:
    return [r for r in runs if r.summary.get("status") == "completed"]


def group(runs: list[Run], key: Callable[[Run], Any]) -> list[list[Run]]:
    """Runs with equal `key(run)`, in the order each key first appears."""
    out: dict[Any, list[Run]] = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return list(out.values())


def mean_final(runs: list[Run]) -> dict[str, Any]:
    """The runs' final numbers, each the mean over the runs that have it."""
    vals: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r.summary.get("final", {}).items():
            if isinstance(v, int | float):
                vals.setdefault(k, []).append(v)
    return {k: round(statistics.mean(v), 4) for k, v in vals.items()}


def seeds_phrase(runs: list[Run]) -> str:
    """'seed 1' or 'seeds 1, 2': the seeds a line of notes covers."""
    seeds = sorted({r.get("config.seed") for r in runs}, key=lambda x: (x is None, x or 0))
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def target_notes(lines: list[str]) -> str:
    """A block of targets: its title line, then one bullet per target."""
    return f"\n{lines[0]}\n\n" + "".join(f"- {x}\n" for x in lines[1:])


# ---------------------------------------------------------------------------- cells


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


@dataclass
class Column:
    header: str
    value: Callable[[list[Run]], str]


def first(key: str) -> Callable[[list[Run]], str]:
    """A cell: the first run's `key`."""
    return lambda runs: str(runs[0].get(key) if runs[0].get(key) is not None else "-")


def stat(key: str, scale: float = 1.0, digits: int = 1) -> Callable[[list[Run]], str]:
    """A cell: mean ± std of `key` over the runs."""
    return lambda runs: mean_std([r.get(key) for r in runs], scale, digits)


def updates_to(split: str, metric: str, thr: float) -> Callable[[list[Run]], str]:
    """A cell: the updates each run took to reach `thr` on `split` `metric`."""
    def cell(runs: list[Run]) -> str:
        steps = [r.first_step(split, metric, thr) for r in runs]
        hit = [s for s in steps if s is not None]
        if not hit:
            return f"not reached (0/{len(runs)})"
        text = mean_std([float(s) for s in hit], digits=0)
        return text if len(hit) == len(runs) else f"{text} ({len(hit)}/{len(runs)})"
    return cell


def params(runs: list[Run]) -> str:
    """A cell: the first run's parameter count in millions."""
    p = runs[0].get("params")
    return f"{p / 1e6:.2f}M" if isinstance(p, int | float) else "-"


def seeds(runs: list[Run]) -> str:
    return str(len(runs))


# ---------------------------------------------------------------------------- presets


@dataclass
class Preset:
    """A paper's table: `table` turns the completed runs into (headers, rows); `notes`
    (optional) writes the text under it in a Markdown file; `plot` (optional) draws
    `--plot` from all the runs, else learning curves with a line per `group_key`."""

    table: Callable[[list[Run]], Table]
    notes: Callable[[list[Run]], str] | None = None
    plot: Callable[[list[Run], Path], None] | None = None
    group_key: str | None = None


PRESETS: dict[str, Preset] = {}


def register_preset(name: str, preset: Preset) -> Preset:
    """Make `tdx report --table NAME` use `preset` (called by a paper's report module)."""
    PRESETS[name] = preset
    return preset


def column_preset(group_key: str, sort_key: str, columns: list[Column], **kw: Any) -> Preset:
    """A preset whose rows are the runs grouped by `group_key` (seeds pooled), sorted by
    `sort_key`, and whose cells are `columns`."""
    def table(runs: list[Run]) -> Table:
        groups = sorted(group(runs, lambda r: r.keys(group_key)),
                        key=lambda g: (g[0].keys(sort_key, 0), str(g[0].keys(group_key))))
        return [c.header for c in columns], [[c.value(g) for c in columns] for g in groups]
    return Preset(table, group_key=group_key, **kw)


def get_preset(name: str) -> Preset:
    plugins.load()
    if name not in PRESETS:
        raise UsageError(f"Unknown table preset '{name}'.{did_you_mean(name, PRESETS)} "
                         f"Presets: {', '.join(sorted(PRESETS))}.")
    return PRESETS[name]


def _numbers(d: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict's numbers ('student.acc')."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, int | float):
            out.append(prefix + k)
    return out


def generic_table(runs: list[Run], aggregate: bool) -> Table:
    """A row per run (or per setting, seeds pooled, with `aggregate`): the overrides that
    differ, the status, every final number in its own scale."""
    keys = sorted({k for r in runs for k in r.overrides})
    varying = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    if aggregate:
        varying = [k for k in varying if k != "seed"]
    finals = sorted({k for r in runs for k in _numbers(r.summary.get("final", {}))})
    groups = group(runs, lambda r: tuple(r.overrides.get(k) for k in varying)) \
        if aggregate else [[r] for r in runs]
    headers = ([] if aggregate else ["run"]) + varying + ["status"] + \
        [final_header(k) for k in finals] + (["seeds"] if aggregate else [])
    rows = []
    for g in groups:
        row = [] if aggregate else [str(g[0].path)]
        row += [str(g[0].overrides.get(k, "-")) for k in varying]
        row.append(",".join(sorted({r.summary.get("status", "?") for r in g})))
        row += [final_cell([r.get(f"final.{k}") for r in g], k) for k in finals]
        rows.append(row + ([str(len(g))] if aggregate else []))
    return headers, rows


PERCENT = ("exact_match", "token_acc")  # fractions in summaries, shown as percentages
SPEED = ("per_s", "tok_s", "_sec")  # throughputs and times: not scores


def final_header(key: str) -> str:
    """A generic column's header with its scale: 'exact_match_greedy (%)', 'sent_per_s
    (speed)'."""
    if key.startswith(PERCENT):
        return f"{key} (%)"
    return f"{key} (speed)" if any(s in key for s in SPEED) else key


def final_cell(values: list[Any], key: str) -> str:
    """Mean ± std of a final number, in its column's scale: counts as whole numbers,
    fractions as percentages, speeds with one decimal, scores with four figures."""
    nums = [v for v in values if isinstance(v, int | float) and not isinstance(v, bool)]
    if nums and all(isinstance(v, int) for v in nums):
        return mean_std(nums, digits=0)
    if key.startswith(PERCENT):
        return mean_std(nums, scale=100, digits=2)
    return mean_std(nums, digits=1 if any(s in key for s in SPEED) else 4)


# ---------------------------------------------------------------------------- output


def render(headers: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([headers, *rows])
        return buf.getvalue()
    if fmt == "latex":
        esc = lambda s: str(s).replace("%", r"\%").replace("±", r"$\pm$").replace("_", r"\_")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * len(headers) + "}", r"\toprule",
                 " & ".join(map(esc, headers)) + r" \\", r"\midrule"]
        lines += [" & ".join(map(esc, r)) + r" \\" for r in rows]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
    if fmt == "md":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    raise UsageError(f"Unknown format '{fmt}': use md, csv or latex.")


def stamp(runs: list[Run], command: str) -> str:
    """Provenance: the report command, the training commands and commits of the runs."""
    commits = sorted({str(r.summary.get("git_commit", "unknown")) for r in runs})
    train_cmds = sorted({str(c) for r in runs for c in [r.summary.get("command"),
                                                         *r.summary.get("resume_commands", [])]
                         if c})
    run0 = runs[0].summary  # the machine the runs trained on; this one for old summaries
    lines = [f"- Report command: `{command}` (tdx commit {git_commit()}, "
             f"{time.strftime('%Y-%m-%d %H:%M')})",
             *[f"- Training command: `{c}`" for c in train_cmds],
             f"- Runs: {len(runs)} from `{os.path.commonpath([str(r.path) for r in runs])}`, "
             f"trained at commit(s) {', '.join(commits)}",
             f"- Machine: {describe_machine(run0 if 'cpu' in run0 else machine_info())}"]
    return "\n".join(lines) + "\n"


def pyplot() -> Any:
    """matplotlib's pyplot, drawing to files (no display)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    return plt


def plot(runs: list[Run], out: Path, split: str, metric: str, group_key: str | None) -> None:
    """Learning curves: `split`/`metric` against updates, mean over the runs of a group
    with a min-max band."""
    if not any(r.curve(split, metric) for r in runs):
        logged = sorted({f"{m['split']}.{k}" for r in runs for m in r.metrics
                         for k, v in m["metrics"].items() if isinstance(v, int | float)})
        name = f"{split}.{metric}"
        raise UsageError(f"No run logged '{name}' to plot.{did_you_mean(name, logged)} "
                         f"Logged: {', '.join(logged) or 'nothing'}.")
    key = (lambda r: str(r.get(group_key))) if group_key else (lambda r: r.path.name)
    fig, ax = pyplot().subplots(figsize=(7, 4.2))
    for g in group(runs, key):
        mean_curve(ax, [r.curve(split, metric) for r in g], f"{key(g[0])} (n={len(g)})")
    ax.set_xlabel("updates")
    ax.set_ylabel(f"{split} {metric}")
    save_figure(fig, ax, out)


def mean_curve(ax: Any, curves: list[list[tuple[int, float]]], label: str,
               marker: str | None = None) -> None:
    """The mean of several runs' curves at the updates they all logged, with a min-max
    band when there is more than one run."""
    points = [dict(c) for c in curves]
    steps = sorted(set.intersection(*(set(c) for c in points))) if points else []
    if not steps:
        return
    vals = [[c[s] for c in points] for s in steps]
    ax.plot(steps, [statistics.mean(v) for v in vals], marker=marker, label=label)
    if len(points) > 1:
        ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.15)


def save_figure(fig: Any, ax: Any, out: Path) -> None:
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:  # nothing drawn (no such curve): no legend
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")  # a long legend label is not cut off
    pyplot().close(fig)


MARK = ("<!-- tdx: the part above this line is generated and rewritten by each rebuild; "
        "what follows it is kept -->")


def write_markdown(path: Path, generated: str) -> None:
    """Write a generated results file, keeping the hand-written reading of the file it
    replaces: the text after its MARK line, or, for a file without one, the whole of it."""
    kept = "\n"
    if path.exists():
        old = path.read_text()
        kept = old.split(MARK, 1)[1] if MARK in old else \
            "\n## Kept from the previous version of this file\n\n" + old
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(generated.rstrip("\n") + "\n\n" + MARK + kept)


def markdown(runs: list[Run], text: str, name: str | None, stamp_text: str,
             title: str | None = None) -> str:
    """A results file: title, table, the preset's notes, runs left out, provenance."""
    failed = [r for r in runs if r.summary.get("status") != "completed"]
    note = (f"\n{len(failed)} run(s) not completed and left out: "
            + ", ".join(f"{r.path.name} ({r.summary.get('status')})" for r in failed)
            + "\n") if failed and name else ""
    done = completed(runs)
    notes = PRESETS[name].notes if name else None
    extra = notes(done) if notes and done else ""
    return f"# {title or (name or 'tdx') + ' results'}\n\n" + text + extra + note + "\n" \
        + stamp_text


def make_table(runs: list[Run], preset: str | None, aggregate: bool = False) -> Table:
    """(headers, rows): the preset's table of the completed runs, or the generic one."""
    return get_preset(preset).table(completed(runs)) if preset else \
        generic_table(runs, aggregate)


def draw(runs: list[Run], preset: str | None, plot_file: Path,
         plot_metric: str = "valid.exact_match") -> None:
    """The preset's own plot, else learning curves of `plot_metric` (split.metric)."""
    chosen = get_preset(preset) if preset else None
    if chosen and chosen.plot:
        chosen.plot(runs, plot_file)
        return
    split, _, metric = plot_metric.partition(".")
    plot(runs, plot_file, split, metric, chosen.group_key if chosen else None)


def report(paths: list[Path], fmt: str = "md", preset: str | None = None,
           aggregate: bool = False, out: Path | None = None, plot_file: Path | None = None,
           plot_metric: str = "valid.exact_match", command: str = "tdx report",
           strict: bool = False) -> str:
    """The table of the runs under `paths` (a `preset`, or the generic one); with `out`
    also written to a file (Markdown: keeping the reading of the file it replaces), with
    `plot_file` a plot. Returns the table as text. Unreadable run folders are left out
    with a warning (`strict`: a UsageError)."""
    git_commit()  # read (and cached) before this report rewrites tracked files in results/
    if preset:
        get_preset(preset)  # an unknown name fails before any folder is read
    runs = collect(paths, strict)
    text = render(*make_table(runs, preset, aggregate), fmt)
    if plot_file:
        draw(runs, preset, plot_file, plot_metric)
    if out and fmt == "md":
        write_markdown(out, markdown(runs, text, preset, stamp(runs, command)))
    elif out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
