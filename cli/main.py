"""The `tdx` command line: thin Typer wrappers over importable functions.

    tdx list                               experiments and what they do
    tdx show EXPERIMENT [OVERRIDES...]     the composed, resolved config
    tdx train EXPERIMENT [OVERRIDES...] [-m]
    tdx report PATH... [--format md|csv|latex] [--plot FILE.png]
    tdx table NAME [--dry-run] [--scale smoke] | --list   a paper table from its spec
    tdx data check [EXPERIMENT]
    tdx bench talk-op | talk-model | scaling
    tdx plugin-dir                         the fairseq --user-dir of tdx's models

Each command parses its arguments, calls one function and prints what it returns. A
`UsageError` from anywhere below is printed as one paragraph, exit code 2.
"""

from __future__ import annotations

import os
import shlex
import sys
from functools import wraps
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

app = typer.Typer(no_args_is_help=True,  # --install-completion: bash, zsh, fish
                  help="tdx: run the experiments of the TaLK / distillation / compression / "
                       "SR-NAM / attention papers.")
data_app = typer.Typer(no_args_is_help=True, help="Data files: what each experiment needs.")
app.add_typer(data_app, name="data")
bench_app = typer.Typer(no_args_is_help=True, help="Speed and memory benchmarks.")
app.add_typer(bench_app, name="bench")
out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

Overrides = Annotated[list[str] | None, typer.Argument(
    help="Hydra overrides: key=value, +key=value, group=option; with -m, key=a,b,c")]
JsonFile = Annotated[Path | None, typer.Option("--json", help="write results")]
MdFile = Annotated[Path | None, typer.Option(help="write a markdown report")]


def usage_errors(fn: Any) -> Any:
    """Print a UsageError as one paragraph and exit with code 2 (never a traceback)."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tdx.errors import UsageError
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            err.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


class TrainCommand(typer.core.TyperCommand):
    """`tdx train --help` ends with the experiments there are (plugins' too) and examples."""

    def format_help(self, ctx: Any, formatter: Any) -> None:
        from tdx.config import experiments

        names = ", ".join(experiments())
        self.epilog = (f"Experiments: {names} (`tdx list` says what each does; `tdx show "
                       "EXPERIMENT` prints its settings).\n\nExamples: `tdx train copy "
                       "model=transformer seed=2` (one run) · `tdx train copy-study -m "
                       "model=lstm,transformer seed=1,2,3` (a sweep, one folder per job) · "
                       "`tdx train copy resume=runs/copy/2026-11-25_10-00-00` (continue one)")
        super().format_help(ctx, formatter)


def version(value: bool) -> None:
    """`tdx --version`: tdx's version and the two it trains with."""
    if value:
        from importlib import metadata

        v = {d: metadata.version(d) for d in ("tdx", "torch", "fairseq-fixed")}
        out.print(f"tdx {v['tdx']} (torch {v['torch']}, fairseq {v['fairseq-fixed']})",
                  highlight=False)
        raise typer.Exit()


def command_line() -> str:
    """The command as typed, for provenance stamps: 'tdx report runs/x --table copy'."""
    return shlex.join(["tdx", *sys.argv[1:]])


@app.callback()
def main(user_dir: Annotated[list[Path] | None, typer.Option(
        "--user-dir", help="a plugin folder (Python package) with more experiments, recipes "
                           "and report presets; repeatable; also TDX_USER_DIR")] = None,
         _version: Annotated[bool, typer.Option(
             "--version", callback=version, is_eager=True,
             help="print tdx's version (and torch's, fairseq's) and exit")] = False,
         ) -> None:
    """tdx: run the experiments of the TaLK / distillation / compression / SR-NAM /
    attention papers."""
    if user_dir:  # in the environment, so sweep jobs and ranks in other processes see it
        from tdx.plugins import ENV

        dirs = [str(d.resolve()) for d in user_dir] + [os.environ.get(ENV, "")]
        os.environ[ENV] = os.pathsep.join(d for d in dirs if d)


@app.command("list")
@usage_errors
def list_cmd() -> None:
    """Every experiment with a one-line description."""
    from tdx.config import experiments

    table = Table("experiment", "description", box=None)
    for name, desc in experiments().items():
        table.add_row(f"[bold]{name}[/bold]", desc)
    out.print(table)


@app.command()
@usage_errors
def show(experiment: str, overrides: Overrides = None) -> None:
    """Print the composed, resolved config of EXPERIMENT as YAML."""
    from omegaconf import OmegaConf

    from tdx.config import check

    cfg = check(experiment, overrides or [])
    sys.stdout.write(OmegaConf.to_yaml(cfg, resolve=True))


@app.command(cls=TrainCommand)
@usage_errors
def train(
    experiment: str, overrides: Overrides = None,
    multirun: Annotated[bool, typer.Option("-m", "--multirun",
                                           help="one job per sweep point")] = False,
) -> None:
    """Compose conf/ with Hydra and train; one run folder per job under runs/."""
    from tdx import distributed
    from tdx.report import report
    from tdx.run import read_json, summary_rows
    from tdx.train import exit_code, launch, statuses

    folders = launch(experiment, list(overrides or []), multirun)
    if not distributed.WORLD.master:  # a torchrun rank > 0: rank 0 reports
        return
    if not folders:
        err.print("[red]no job wrote a run folder[/red]")
        raise typer.Exit(1)
    out.print(f"\n[bold]Results[/bold] ({len(folders)} run{'s' * (len(folders) > 1)})")
    if len(folders) == 1:
        table = Table("", "", box=None, show_header=False)
        for k, v in summary_rows(read_json(folders[0] / "summary.json")):
            table.add_row(f"[bold]{k}[/bold]", escape(v))  # errors quote [paths]
        out.print(table)
    else:
        out.print(report(folders, fmt="md"), highlight=False, markup=False)
    for folder, s in zip(folders, statuses(folders), strict=True):
        out.print(f"  {s:<11} {escape(str(folder))}", highlight=False)
    if code := exit_code(folders):
        raise typer.Exit(code)


@app.command("report")
@usage_errors
def report_cmd(
    paths: Annotated[list[Path], typer.Argument(help="run folders or folders holding runs")],
    fmt: Annotated[str, typer.Option("--format", "-f", help="md | csv | latex")] = "md",
    table: Annotated[str | None, typer.Option(help="paper preset, e.g. copy")] = None,
    aggregate: Annotated[bool, typer.Option(help="one row per config: mean ± std over "
                                                  "seeds")] = False,
    out_file: Annotated[Path | None, typer.Option("--out", help="also write the table "
                                                        "(md: with provenance)")] = None,
    plot: Annotated[Path | None, typer.Option(help="learning curves to this PNG")] = None,
    metric: Annotated[str, typer.Option(help="curve to plot, split.metric")] =
        "valid.exact_match",
    strict: Annotated[bool, typer.Option(help="a run folder that cannot be read is an "
                                              "error (exit 2), not a warning")] = False,
) -> None:
    """Gather summary.json from run folders into a table (and plot metrics.jsonl)."""
    from tdx.report import report

    text = report(paths, fmt, table, aggregate, out_file, plot, metric, command_line(),
                  strict)
    sys.stdout.write(text)
    if out_file:
        err.print(f"wrote {out_file}" + (f" and {plot}" if plot else ""))


@app.command("table")
@usage_errors
def table_cmd(
    name: Annotated[str | None, typer.Argument(help="a table spec (conf/table/NAME.yaml)")]
        = None,
    list_specs: Annotated[bool, typer.Option("--list", help="list the table specs")] = False,
    dry_run: Annotated[bool, typer.Option(help="print the plan (runs done, to resume, to "
                                               "start, CPU time) and stop")] = False,
    scale: Annotated[str, typer.Option(help="full, or smoke: the toy budgets the spec "
                                            "declares")] = "full",
    runs_root: Annotated[Path | None, typer.Option(help="where run folders live (default "
                                                        "$TDX_RUNS_DIR or ./runs)")] = None,
    out_dir: Annotated[Path | None, typer.Option(help="where NAME.md/.png/.json go (default "
                                                      "results/ at full scale)")] = None,
) -> None:
    """Rebuild a paper table from its spec: run what is missing (resuming what was
    interrupted, reusing what is done), then write its Markdown, plot and numbers."""
    from tdx import table

    if list_specs or not name:
        rows = Table("table", "scales", "description", box=None)
        for spec, scales, desc in table.list_tables():
            rows.add_row(f"[bold]{spec}[/bold]", scales, desc)
        out.print(rows)
        return
    code = table.build(name, scale, runs_root, out_dir, dry_run,
                       echo=lambda m: out.print(m, highlight=False, markup=False))
    if code:
        raise typer.Exit(code)


@data_app.command("check")
@usage_errors
def data_check(experiment: Annotated[str | None, typer.Argument()] = None,
               overrides: Overrides = None) -> None:
    """Which data files each experiment (and each data=option) needs, which are present
    under the data dir, and where to put the missing ones."""
    from tdx.config import data_status

    root, rows = data_status(experiment, overrides)
    shown = {"present": "[green]present[/green]", "MISSING": "[red]MISSING[/red]",
             "optional": "[yellow]not supplied (optional)[/yellow]", "none": "[green]ok[/green]"}
    table = Table("experiment / data", "file", "status", box=None)
    for name, f, status in rows:
        table.add_row(name, f or "(none: data is generated)",
                      shown.get(status) or f"[red]{escape(status)}[/red]")
    out.print(f"data dir: {root.resolve()} (TDX_DATA_DIR="
              f"{os.environ.get('TDX_DATA_DIR', '<not set>')})")
    out.print(table)
    if missing := sum(status == "MISSING" or status.startswith("BROKEN")
                      for _, _, status in rows):
        out.print(f"[red]{missing} file(s) missing or broken.[/red] Put them under the data "
                  "dir at the paths shown, or set TDX_DATA_DIR to the folder that holds them.")
        raise typer.Exit(1)


def progress(message: str) -> None:
    err.print(message, highlight=False)


@bench_app.command("talk-op")
@usage_errors
def bench_talk_op(
    lengths: Annotated[str, typer.Option(help="comma list of T")] = "128,512,2048,8192",
    batch: Annotated[int, typer.Option(help="B")] = 8,
    channels: Annotated[int, typer.Option(help="C")] = 512,
    heads: Annotated[int, typer.Option(help="H")] = 8,
    kmax: Annotated[int, typer.Option(help="K: TaLK maxima; kernel 2K+1 for convs")] = 15,
    min_time: Annotated[float, typer.Option(help="seconds of timed calls per median, at "
                                            "least")] = 1.0,
    budget: Annotated[float, typer.Option(help="seconds of timing per figure, at most")] =
        20.0,
    ops: Annotated[str, typer.Option(help="comma list of operators")] =
        "talk,talk_window,lightconv,dynamicconv,attention,cumsum,copy",
    malloc: Annotated[str, typer.Option(help="reuse: freed memory is reused at every size "
                                        "(default); system: glibc defaults")] = "reuse",
    json_file: JsonFile = None, md: MdFile = None,
    plot: Annotated[Path | None, typer.Option(help="time/memory vs length, log-log")] = None,
) -> None:
    """TaLK vs LightConv, DynamicConv, self-attention, a cumsum reference and the copy floor."""
    from tdx.talk import bench

    out.print(bench.main(lengths, batch, channels, heads, kmax, min_time, budget, ops, malloc,
                         json_file, md, plot, command_line(), progress),
              highlight=False, markup=False)


@bench_app.command("talk-model")
@usage_errors
def bench_talk_model(
    batch: Annotated[int, typer.Option(help="MT sentences per batch")] = 64,
    lengths: Annotated[str, typer.Option(help="comma list of MT tokens per sentence (and "
                                         "generated)")] = "16,64,256",
    lm_tokens: Annotated[int, typer.Option(help="LM tokens per batch")] = 8192,
    contexts: Annotated[str, typer.Option(help="comma list of LM contexts")] = "256,1024",
    budget: Annotated[float, typer.Option(help="seconds of timing per figure, at most")] =
        10.0,
    malloc: Annotated[str, typer.Option(help="reuse (default) or system, as talk-op")] =
        "reuse",
    json_file: JsonFile = None, md: MdFile = None,
) -> None:
    """Training and beam-5 generation speed: TaLK vs Transformer, LightConv, DynamicConv."""
    from tdx.talk import bench_model

    out.print(bench_model.main(batch, lengths, lm_tokens, contexts, budget, malloc, json_file,
                               md, command_line(), progress), highlight=False, markup=False)


@bench_app.command("zskd-student")
@usage_errors
def bench_zskd_student(
    batch: Annotated[int, typer.Option(help="sentences per batch")] = 32,
    lengths: Annotated[str, typer.Option(help="comma list of word pieces per sentence")] =
        "32,128,512",
    budget: Annotated[float, typer.Option(help="seconds of timing per figure, at most")] =
        10.0,
    json_file: JsonFile = None, md: MdFile = None,
) -> None:
    """Zero-shot KD student speed: Transformer body vs TaLK body, equal size."""
    from tdx.distill import bench

    out.print(bench.main(batch, lengths, budget, json_file, md, command_line(), progress),
              highlight=False, markup=False)


@bench_app.command("scaling")
@usage_errors
def bench_scaling(
    ranks: Annotated[int, typer.Option(help="ranks to compare with 1")] = 2,
    updates: Annotated[int, typer.Option(help="updates per run")] = 40,
    cases: Annotated[str, typer.Option(help="comma list: talk-mt, srnam-cnn")] =
        "talk-mt,srnam-cnn",
    json_file: JsonFile = None, md: MdFile = None,
) -> None:
    """Data-parallel training throughput with 1 and N ranks, and the scaling efficiency."""
    from tdx import bench

    out.print(bench.main(ranks, updates, cases, json_file, md, command_line(), progress),
              highlight=False, markup=False)


@app.command("plugin-dir")
def plugin_dir() -> None:
    """Print the fairseq --user-dir that registers tdx's models and tasks."""
    from tdx.fairseq_engine import PLUGIN_DIR

    print(PLUGIN_DIR)


if __name__ == "__main__":
    app()
