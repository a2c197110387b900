"""Benchmarks of the runner itself, and the footer every benchmark report ends with.

`tdx bench scaling`: training throughput of a fairseq recipe (TaLK on Multi30k) and a
plain-PyTorch recipe (SR-NAM's CNN stage) with 1 rank and with N ranks on this machine, at
the same global batch (1 rank accumulates N batches per update; N ranks take one each),
and the scaling efficiency: speed-up / N. Every run is a real `tdx train` in its own
process group, read back from its run folder.
"""

from __future__ import annotations

import json
import math
import os
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from tdx.errors import UsageError
from tdx.run import describe_machine, git_commit, machine_info

CASES: dict[str, dict[str, Any]] = {
    "talk-mt": {"label": "TaLK, Multi30k (fairseq)", "unit": "target tok/s",
                "args": ["talk-mt", "model=talkconv_multi30k", "trainer.valid_every=1000000",
                         "trainer.save_every=1000000", "trainer.test_split=null",
                         "trainer.average_last=0", "trainer.log_every=10"],
                "accumulate": "trainer.update_freq={n}"},
    "srnam-cnn": {"label": "SR-NAM CNN stage (plain PyTorch)", "unit": "patches/s",
                  "args": ["srnam", "srnam.stages=[srcnn_bicubic]", "srnam.srcnn.batch=64",
                           "srnam.srcnn.patch=48", "trainer.log_every=10",
                           "trainer.save_every=1000000"],
                  "steps": "srnam.srcnn.steps={u}"},
}


IQR = 0.1  # timing stops once the blocks' interquartile range is under this of the median


def median_time(fn: Callable[[], Any], warmup: int = 3, warmup_s: float = math.inf,
                min_s: float = 0.0, budget_s: float = 10.0, iqr: float = IQR,
                load: dict[str, float] | None = None) -> float:
    """Seconds per call of fn, for every benchmark, timed by torch.utils.benchmark's
    `Timer.adaptive_autorange` on the caller's threads: after `warmup` calls (allocator
    growth, first-touch pages, one-time setup; at least one, no more once `warmup_s` seconds
    have passed), blocks of calls (sized by torch so the timer's own cost is under 1e-4 of
    a block: a 5-ms call is timed in blocks of 10) until there are at least 4 blocks and
    `min_s` seconds of them and the blocks' interquartile range is under `iqr` of their
    median, or `budget_s` is spent; the median over blocks, per call. With `load`, its
    `other_cores` becomes the most CPU other work took (`watch_load`) during this timing
    or an earlier one into the same dict."""
    import torch
    from torch.utils import benchmark

    start = time.perf_counter()
    for _ in range(warmup):
        fn()
        if time.perf_counter() - start > warmup_s:
            break
    timer = benchmark.Timer("fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    with watch_load() as seen:
        median = timer.adaptive_autorange(iqr, min_run_time=min_s, max_run_time=budget_s).median
    if load is not None:
        load["other_cores"] = max(load.get("other_cores", 0.0), seen["other_cores"])
    return median


BUSY = 0.1  # other work of this many cores or more, on average, makes a timing suspect


def _cpu_seconds() -> tuple[float, float]:
    """(CPU seconds the whole machine has spent busy since boot, CPU seconds of this process
    and of its children it has waited for). Busy is user, nice, system, irq, softirq and
    steal time in /proc/stat (steal: the hypervisor gave the core to another machine)."""
    ticks = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:9]]
    busy = sum(ticks) - ticks[3] - ticks[4]  # all but idle and iowait
    own = sum(resource.getrusage(who).ru_utime + resource.getrusage(who).ru_stime
              for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN))
    return busy / os.sysconf("SC_CLK_TCK"), own


@contextmanager
def watch_load() -> Iterator[dict[str, float]]:
    """What else ran on the machine while the block ran: the 1-minute load average before
    and after, and `other_cores`, the machine's busy CPU time (/proc/stat, the whole host
    when run in a container) less this process's and the workers' it waited for, per
    second of the block (0 on an idle machine; 1 means a whole core was taken). That is
    other processes, and also interrupt and steal time and kernel threads, which no
    process's accounting holds: all of it takes cores from the benchmark. The load
    average alone cannot tell a benchmark's own workers from other work; the CPU
    accounting can. On 2 cores, a job beside a benchmark quantises its times to
    scheduler slices (~16 ms)."""
    info = {"load_before": round(os.getloadavg()[0], 2)}
    start, (busy0, own0) = time.monotonic(), _cpu_seconds()
    try:
        yield info
    finally:
        busy, own = _cpu_seconds()
        wall = max(time.monotonic() - start, 1e-6)
        info["load_after"] = round(os.getloadavg()[0], 2)
        info["other_cores"] = round(max(0.0, (busy - busy0) - (own - own0)) / wall, 3)


def load_warning(load: dict[str, float], measured: dict[str, dict[str, Any]],
                 progress: Callable[[str], None] | None = None) -> str | None:
    """Given a benchmark's `watch_load` record and its results by name (each with the
    `other_cores` its worker saw), set load['max_other_cores'] and return one warning line
    naming the measurements other work ran beside (other_cores >= BUSY), also passed to
    `progress`; None when the machine was quiet."""
    seen = {k: r.get("other_cores", 0.0) for k, r in measured.items()}
    load["max_other_cores"] = max(seen.values(), default=0.0)
    disturbed = [k for k, v in seen.items() if v >= BUSY]
    if not disturbed:
        return None
    text = (f"WARNING: other work ran during {len(disturbed)} measurement(s) "
            f"({', '.join(disturbed[:6])}{', ...' if len(disturbed) > 6 else ''}): up to "
            f"{load['max_other_cores']:.2f} cores beside the benchmark (1-min load average "
            f"{load['load_before']:.2f} before, {load['load_after']:.2f} after). Their times "
            "are not to be trusted: rerun on an idle machine (`uptime`).")
    if progress:
        progress(text)
    return text


def int_list(text: str, option: str) -> list[int]:
    """'128,512' -> [128, 512]: a comma list of positive integers, else a UsageError
    naming the command-line option."""
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or min(values) < 1:
        raise UsageError(f"{option} must be a comma list of positive integers, got '{text}'.")
    return values


def positive(**options: float) -> None:
    """A UsageError naming the first of `options` (--name=value) that is below 1."""
    for name, value in options.items():
        if value < 1:
            raise UsageError(f"--{name.replace('_', '-')} must be at least 1, got {value}.")


def seconds(**options: float) -> None:
    """A UsageError naming the first of `options` (--name=value) that is not above 0."""
    for name, value in options.items():
        if value <= 0:
            raise UsageError(f"--{name.replace('_', '-')} must be above 0 seconds, got "
                             f"{value}.")


def write_outputs(res: dict[str, Any], text: str, command: str, json_file: Path | None,
                  md: Path | None) -> None:
    """A benchmark's results as JSON (with the command) and its markdown report, if asked."""
    if json_file:
        json_file.parent.mkdir(parents=True, exist_ok=True)
        json_file.write_text(json.dumps({**res, "command": command}, indent=2) + "\n")
    if md:
        md.parent.mkdir(parents=True, exist_ok=True)
        md.write_text(text)


def targets_and_provenance(report: dict[str, Any], command: str) -> list[str]:
    """The closing markdown lines of a benchmark report: targets, command, commit, machine."""
    return ["", "Targets:", "", *[f"- {k}: {v}" for k, v in report["checks"].items()], "",
            f"- Command: `{command}`", f"- Commit: {report['git_commit']}",
            f"- Machine: {describe_machine(report['machine'])}, {report['date']}", ""]


def _throughput(case: dict[str, Any], ranks: int, world: int, updates: int, work: Path
                ) -> dict[str, Any]:
    """One `tdx train` run; its training rate from the run folder."""
    runs = work / f"{case['args'][0]}-{ranks}"
    args = [*case["args"], f"paths.runs_dir={runs}"]
    if "steps" in case:
        args.append(case["steps"].format(u=updates))
    else:
        args.append(f"trainer.max_update={updates}")
    if ranks > 1:
        args.append(f"distributed.world_size={ranks}")
    elif "accumulate" in case:  # the same global batch as `world` ranks
        args.append(case["accumulate"].format(n=world))
    tdx = str(Path(sys.executable).with_name("tdx"))
    t0 = time.time()
    proc = subprocess.run([tdx, "train", *args], capture_output=True, text=True,
                          env=os.environ.copy())
    seconds = time.time() - t0
    found = list(runs.rglob("summary.json"))
    summary = json.loads(found[0].read_text()) if found else {}
    if proc.returncode != 0 or summary.get("status") != "completed":
        return {"error": str(summary.get("error")
                             or (proc.stderr.strip().splitlines() or ["failed"])[-1])}
    rate = summary.get("rate_tok_s") or max(summary.get("rates", {}).values(), default=None)
    return {"rate": rate, "seconds": round(seconds, 1), "updates": updates}


def run_scaling(ranks: int = 2, updates: int = 40, cases: tuple[str, ...] = tuple(CASES),
                progress: Callable[[str], None] = print) -> dict[str, Any]:
    results: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="tdx-scaling-") as tmp:
        for name in cases:
            case = CASES[name]
            row = {}
            for n in (1, ranks):
                progress(f"{name}: {n} rank(s), {updates} updates ...")
                row[str(n)] = _throughput(case, n, ranks, updates, Path(tmp))
            one, many = row["1"].get("rate"), row[str(ranks)].get("rate")
            if one and many:
                row["speedup"] = round(many / one, 3)
                row["efficiency"] = round(many / one / ranks, 3)
            results[name] = row
    return {"config": {"ranks": ranks, "updates": updates,
                       "threads": f"{os.cpu_count()} cores shared by the ranks"},
            "machine": machine_info(), "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "results": results,
            "checks": {f"{n}_efficiency": r.get("efficiency") for n, r in results.items()}}


def main(ranks: int, updates: int, cases: str, json_file: Path | None, md: Path | None,
         command: str, progress: Callable[[str], None] = print) -> str:
    """`tdx bench scaling`: check the options, measure, write the files; the report."""
    chosen = tuple(c for c in cases.split(",") if c)
    unknown = [c for c in chosen if c not in CASES]
    if unknown or not chosen:
        raise UsageError(f"Unknown case(s) {unknown or [cases]}; choose from "
                         f"{', '.join(CASES)}.")
    if ranks < 2 or updates < 10:
        raise UsageError("--ranks must be >= 2 and --updates >= 10.")
    res = run_scaling(ranks, updates, chosen, progress)
    text = to_markdown(res, command)
    write_outputs(res, text, command, json_file, md)
    return text


def to_markdown(report: dict[str, Any], command: str) -> str:
    n = report["config"]["ranks"]
    lines = ["# Data-parallel scaling", "",
             f"Training throughput with 1 rank and {n} ranks (gloo, this machine's "
             f"{report['machine']['cores']} cores split between the ranks), the same global "
             f"batch in both (1 rank accumulates {n} batches per update); "
             f"{report['config']['updates']} updates each.", "",
             f"| recipe | unit | 1 rank | {n} ranks | speed-up | efficiency |",
             "|---|---|---|---|---|---|"]
    for name, r in report["results"].items():
        cell = lambda x: x.get("error", "?")[:40] if "error" in x else f"{x['rate']:,.0f}"  # noqa: E731
        lines.append(f"| {CASES[name]['label']} | {CASES[name]['unit']} | {cell(r['1'])} | "
                     f"{cell(r[str(n)])} | {r.get('speedup', '-')} | {r.get('efficiency', '-')} |")
    return "\n".join(lines + targets_and_provenance(report, command))
