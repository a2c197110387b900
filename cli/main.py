"""The `tdx` command line: thin Typer wrappers over importable functions.

    tdx list                               experiments and what they do
    tdx show EXPERIMENT [OVERRIDES...]     the composed, resolved config
    tdx train EXPERIMENT [OVERRIDES...] [-m]
    tdx report PATH... [--format md|csv|latex] [--plot FILE.png]
    tdx data check [EXPERIMENT]
    tdx plugin-dir                         the fairseq --user-dir of tdx's models
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

app = typer.Typer(add_completion=False, no_args_is_help=True,
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


def usage_errors(fn: Any) -> Any:
    """Print a UsageError as one paragraph and exit with code 2 (never a traceback)."""
    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from tdx.config import UsageError
        try:
            return fn(*args, **kwargs)
        except UsageError as e:
            err.print(f"[bold red]error:[/bold red] {escape(str(e))}", highlight=False)
            raise typer.Exit(2) from None
    return wrapper


@app.command("list")
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


@app.command()
@usage_errors
def train(
    experiment: str, overrides: Overrides = None,
    multirun: Annotated[bool, typer.Option("-m", "--multirun",
                                           help="one job per sweep point")] = False,
) -> None:
    """Compose conf/ with Hydra and train; one run folder per job under runs/."""
    from tdx import distributed
    from tdx.report import report
    from tdx.run import read_json
    from tdx.train import launch, statuses

    folders = launch(experiment, list(overrides or []), multirun)
    if not distributed.WORLD.master:  # a torchrun rank > 0: rank 0 reports
        return
    if not folders:
        err.print("[red]no job wrote a run folder[/red]")
        raise typer.Exit(1)
    out.print(f"\n[bold]Results[/bold] ({len(folders)} run{'s' * (len(folders) > 1)})")
    if len(folders) == 1:
        out.print(run_table(folders[0]))
    else:
        out.print(report(folders, fmt="md"), highlight=False, markup=False)
    st = statuses(folders)
    for folder, s in zip(folders, st, strict=True):
        out.print(f"  {s:<11} {escape(str(folder))}", highlight=False)
    if "interrupted" in st:
        raise typer.Exit(130)
    if len(folders) == 1 and read_json(folders[0] / "summary.json").get("usage_error"):
        raise typer.Exit(2)  # one job, stopped by bad input it found (message printed)
    if any(s != "completed" for s in st):
        raise typer.Exit(1)


def run_table(folder: Path) -> Table:
    """One run's summary as a two-column table: what a researcher reads first."""
    from tdx.run import read_json

    s = read_json(folder / "summary.json")
    table = Table("", "", box=None, show_header=False)
    rows = [("status", s.get("status")), ("model", s.get("model")),
            ("parameters", f"{s['params']:,}" if "params" in s else None),
            ("updates", s.get("step")), ("wall time", f"{s.get('wall_time_s', 0):.0f} s")]
    rows += [(f"test {k}", f"{v:.4g}" if isinstance(v, float) else v)
             for k, v in s.get("final", {}).items()]
    rows += [("best valid " + k, f"{v:.4g}" if isinstance(v, float) else v)
             for k, v in s.get("best", {}).items() if k in ("exact_match", "bleu", "step")]
    rows += [("error", s.get("error"))] if s.get("error") else []
    for k, v in rows:
        if v is not None:
            table.add_row(f"[bold]{k}[/bold]", escape(str(v)))  # errors quote [paths]
    return table


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
) -> None:
    """Gather summary.json from run folders into a table (and plot metrics.jsonl)."""
    from tdx.report import report

    command = shlex.join(["tdx", "report", *sys.argv[2:]]) if len(sys.argv) > 1 else "tdx report"
    text = report(paths, fmt, table, aggregate, out_file, plot, metric, command)
    sys.stdout.write(text)
    if out_file:
        err.print(f"wrote {out_file}" + (f" and {plot}" if plot else ""))


@data_app.command("check")
@usage_errors
def data_check(experiment: Annotated[str | None, typer.Argument()] = None,
               overrides: Overrides = None) -> None:
    """Which data files each experiment (and each data=option) needs, which are present
    under the data dir, and where to put the missing ones."""
    from omegaconf import OmegaConf

    from tdx.config import (
        check,
        compose,
        data_dir,
        data_options,
        experiments,
        required_files,
    )

    if experiment:
        cfgs = {experiment: check(experiment, overrides or [])}
    else:  # only the data sections matter here: compose, without the full check
        cfgs = {name: compose(name) for name in experiments()}
        cfgs |= {f"data={opt}": compose(next(iter(experiments())), [f"data={opt}"])
                 for opt in data_options()}
    root = data_dir(next(iter(cfgs.values())))
    table = Table("experiment / data", "file", "status", box=None)
    missing = 0
    for name, cfg in cfgs.items():
        files = required_files(cfg)
        # datasets that are not shipped (IWSLT, WikiText-103): only needed if you use them
        optional = bool(OmegaConf.select(cfg, "data.meta.user_supplied", default=False))
        if not files:
            table.add_row(name, "(none: data is generated)", "[green]ok[/green]")
        for f in files:
            ok = (root / f).exists()
            missing += not ok and not optional
            table.add_row(name, f, "[green]present[/green]" if ok else
                          "[yellow]not supplied (optional)[/yellow]" if optional else
                          "[red]MISSING[/red]")
    out.print(f"data dir: {root.resolve()} (TDX_DATA_DIR="
              f"{os.environ.get('TDX_DATA_DIR', '<not set>')})")
    out.print(table)
    if missing:
        out.print(f"[red]{missing} file(s) missing.[/red] Put them under the data dir at the "
                  "paths shown, or set TDX_DATA_DIR to the folder that holds them.")
        raise typer.Exit(1)


@bench_app.command("talk-op")
@usage_errors
def bench_talk_op(
    lengths: Annotated[str, typer.Option(help="comma list of T")] = "128,512,2048,8192",
    batch: Annotated[int, typer.Option(help="B")] = 8,
    channels: Annotated[int, typer.Option(help="C")] = 512,
    heads: Annotated[int, typer.Option(help="H")] = 8,
    kmax: Annotated[int, typer.Option(help="K: TaLK maxima; kernel 2K+1 for convs")] = 15,
    repeats: Annotated[int, typer.Option(help="timed repeats (median)")] = 5,
    min_time: Annotated[float, typer.Option(help="seconds of timed calls per median, at "
                                            "least")] = 1.0,
    ops: Annotated[str, typer.Option(help="comma list of operators")] =
        "talk,lightconv,dynamicconv,attention,floor",
    malloc: Annotated[str, typer.Option(help="reuse: freed memory is reused at every size "
                                        "(default); system: glibc defaults")] = "reuse",
    json_file: Annotated[Path | None, typer.Option("--json", help="write results")] = None,
    md: Annotated[Path | None, typer.Option(help="write a markdown report")] = None,
    plot: Annotated[Path | None, typer.Option(help="time/memory vs length, log-log")] = None,
) -> None:
    """TaLK vs LightConv, DynamicConv, self-attention and a memory-bound floor."""
    import json

    from tdx.config import UsageError
    from tdx.talk import bench

    try:
        Ts = [int(t) for t in lengths.split(",") if t]
    except ValueError:
        raise UsageError(f"--lengths must be a comma list of integers, got '{lengths}'.") \
            from None
    chosen = tuple(o for o in ops.split(",") if o)
    unknown = [o for o in chosen if o not in bench.OPS]
    if unknown or not Ts or min(Ts) < 1:
        raise UsageError(f"Unknown operator(s) {unknown}; choose from {', '.join(bench.OPS)}."
                         if unknown else "--lengths must hold positive integers.")
    if min_time < 0:
        raise UsageError("--min-time must be >= 0.")
    res = bench.run_benchmark(Ts, batch, channels, heads, kmax, repeats, ops=chosen,
                              malloc=malloc, min_time_s=min_time,
                              progress=lambda m: err.print(m, highlight=False))
    table = Table("T", *[f"{o} fwd/fwd+bwd ms (MB)" for o in chosen], title="TaLK operator")
    for T, row in res["results"].items():
        table.add_row(T, *[r.get("error", "?")[:24] if "error" in r else
                           f"{r['fwd_ms']:.1f} / {r['fwd_bwd_ms']:.1f} ({r['peak_fwd_bwd_mb']:.0f})"
                           for r in row.values()])
    out.print(table)
    ratio = Table("T", *[n for n, _, _ in bench.RATIOS], title="TaLK time / other")
    for T, r in res["ratios"].items():
        ratio.add_row(T, *["-" if v is None else f"{v:.3f}" for v in r.values()])
    out.print(ratio)
    for k, v in res["checks"].items():
        out.print(f"  {k}: {v}")
    command = shlex.join(["tdx", "bench", "talk-op", *sys.argv[3:]])
    if json_file:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps({**res, "command": command}, indent=2) + "\n")
    if md:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(bench.to_markdown(res, command))
    if plot:
        bench.plot(res, plot)


@bench_app.command("talk-model")
@usage_errors
def bench_talk_model(
    batch: Annotated[int, typer.Option(help="MT sentences per batch")] = 64,
    length: Annotated[int, typer.Option(help="MT tokens per sentence (and generated)")] = 16,
    lm_tokens: Annotated[int, typer.Option(help="LM tokens per batch")] = 8192,
    contexts: Annotated[str, typer.Option(help="comma list of LM contexts")] = "256,1024",
    repeats: Annotated[int, typer.Option(help="timed steps (median)")] = 6,
    malloc: Annotated[str, typer.Option(help="reuse (default) or system, as talk-op")] =
        "reuse",
    json_file: Annotated[Path | None, typer.Option("--json", help="write results")] = None,
    md: Annotated[Path | None, typer.Option(help="write a markdown report")] = None,
) -> None:
    """Training and beam-5 generation speed: TaLK vs Transformer, LightConv, DynamicConv."""

    from tdx.config import UsageError
    from tdx.talk import bench_model
    from tdx.talk.bench import MALLOC

    try:
        ctx = tuple(int(c) for c in contexts.split(",") if c)
    except ValueError:
        raise UsageError(f"--contexts must be a comma list of integers, got '{contexts}'.") \
            from None
    if not ctx or min(ctx) < 1 or min(batch, length, lm_tokens, repeats) < 1:
        raise UsageError("--batch, --length, --lm-tokens, --repeats and --contexts must be "
                         "positive.")
    if malloc not in MALLOC:
        raise UsageError(f"--malloc must be one of {', '.join(MALLOC)}, got '{malloc}'.")
    res = bench_model.run_benchmark(batch, length, lm_tokens, ctx, repeats, malloc=malloc,
                                    progress=lambda m: err.print(m, highlight=False))
    command = shlex.join(["tdx", "bench", "talk-model", *sys.argv[3:]])
    write_report(res, bench_model.to_markdown(res, command), command, json_file, md)


@bench_app.command("scaling")
@usage_errors
def bench_scaling(
    ranks: Annotated[int, typer.Option(help="ranks to compare with 1")] = 2,
    updates: Annotated[int, typer.Option(help="updates per run")] = 40,
    cases: Annotated[str, typer.Option(help="comma list: talk-mt, srnam-cnn")] =
        "talk-mt,srnam-cnn",
    json_file: Annotated[Path | None, typer.Option("--json", help="write results")] = None,
    md: Annotated[Path | None, typer.Option(help="write a markdown report")] = None,
) -> None:
    """Data-parallel training throughput with 1 and N ranks, and the scaling efficiency."""

    from tdx import bench
    from tdx.config import UsageError

    chosen = tuple(c for c in cases.split(",") if c)
    unknown = [c for c in chosen if c not in bench.CASES]
    if unknown or ranks < 2 or updates < 10:
        raise UsageError(f"Unknown case(s) {unknown}; choose from {', '.join(bench.CASES)}."
                         if unknown else "--ranks must be >= 2 and --updates >= 10.")
    res = bench.run_scaling(ranks, updates, chosen,
                            progress=lambda m: err.print(m, highlight=False))
    command = shlex.join(["tdx", "bench", "scaling", *sys.argv[3:]])
    write_report(res, bench.to_markdown(res, command), command, json_file, md)


def write_report(res: dict, text: str, command: str, json_file: Path | None,
                 md: Path | None) -> None:
    """Print a benchmark's markdown; write it and its JSON (with the command) if asked."""
    import json

    out.print(text, highlight=False, markup=False)
    if json_file:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps({**res, "command": command}, indent=2) + "\n")
    if md:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text)


@app.command("plugin-dir")
def plugin_dir() -> None:
    """Print the fairseq --user-dir that registers tdx's models and tasks."""
    from tdx.fairseq_engine import PLUGIN_DIR

    print(PLUGIN_DIR)


if __name__ == "__main__":
    app()
