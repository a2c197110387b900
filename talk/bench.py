"""`tdx bench talk-op`: TaLK against the operators it replaces, on identical inputs.

For each length T, every operator runs in a fresh subprocess (isolated from the others and
bounded by a timeout): warm-up (up to 3 calls), then the median of forward and of
forward+backward passes (`tdx.bench.median_time`: torch.utils.benchmark's adaptive timer,
at least a second of timed calls), and the peak tensor
memory above the inputs, from torch's profiler (allocations and frees in time order;
compile-time memory of TaLK's fused path is not counted).

Operators, x of shape (T, B, C), H heads, kernel 2K+1 where one is needed:
- talk         TaLKConv encoder layer (offset projection + window average), l_max=r_max=K
- talk_window  the window average alone (the C++ kernel on given offsets a, (T, B, 2H)):
               the layer's time less this is what its offset projection costs
- lightconv    fairseq LightweightConv1dTBC, CPU path (unfold when T > 512, as fairseq's
               DynamicConv1dTBC chooses; the band-matrix path needs O(T^2) memory)
- dynamicconv  fairseq DynamicConv1dTBC, CPU path (same rule)
- attention    self-attention core: F.scaled_dot_product_attention on (B, H, T, C/H)
- cumsum       a PyTorch-ops reference: torch.cumsum over x plus one elementwise pass
               (what TaLK's window sums would cost as two stock tensor ops)
- copy         the physical floor: x copied into a preallocated tensor (forward), and that
               plus the gradient copied likewise (forward + backward). Any forward must read
               x and write its output, any backward must read the output's gradient and write
               the input's; a copy does that at the machine's memory bandwidth, with no
               arithmetic. It is a bandwidth reference, not a strict bound: TaLK's backward
               also reads x again (for the offsets' gradient), which raises its true floor,
               but writes its input gradient with streaming stores from 16 MB, which skip
               the read of the destination that the copy's ordinary stores make, and under
               `--malloc system` TaLK's fresh outputs pay first-touch page faults the
               preallocated copy never pays.

Backward passes are driven by a fixed random output gradient (not `out.sum()`, whose
gradient is a stride-0 view that would spare the backward its main read).

Every worker is watched (`tdx.bench.watch_load`): the CPU time other processes used while
it ran is recorded beside its times, and the report warns when other work ran.

Allocator (`--malloc`, the same for every operator): glibc serves blocks above 32 MB with
fresh mmaps, so every call that makes a large tensor (T >= 2048 here) pays first-touch page
faults (about 0.2 ms per MB on this machine) while smaller tensors reuse freed heap memory.
That step at 32 MB is the allocator's, not the operator's. `reuse` (default) runs the
workers with MALLOC_MMAP_MAX_=0 and MALLOC_TRIM_THRESHOLD_ high, so freed memory is reused at
every length, as a caching allocator (jemalloc, tcmalloc) would; `system` keeps glibc's
defaults.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdx.bench import (
    BUSY,
    IQR,
    int_list,
    load_warning,
    median_time,
    positive,
    seconds,
    targets_and_provenance,
    watch_load,
    write_outputs,
)
from tdx.errors import UsageError

OPS = ("talk", "talk_window", "lightconv", "dynamicconv", "attention", "cumsum", "copy")
MALLOC = {"reuse": {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**62)},
          "system": {}}


def peak_memory_mb(fn: Callable[[], Any]) -> float:
    """Peak of live tensor memory allocated while fn runs (profiler memory events)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    live = peak = 0
    for e in sorted(prof.events(), key=lambda e: e.time_range.start):
        live += e.self_cpu_memory_usage
        peak = max(peak, live)
    return peak / 2**20


def _build(op: str, T: int, B: int, C: int, H: int, K: int) -> tuple[Callable, list]:
    """(function of the inputs, inputs needing grad)."""
    import torch
    import torch.nn.functional as F

    torch.manual_seed(0)
    x = torch.randn(T, B, C, requires_grad=True)
    if op == "talk":
        from tdx.talk.module import TaLKConv
        m = TaLKConv(C, H, K, K)
        return (lambda: m(x)), [x]
    if op == "talk_window":
        from tdx.talk.ops import talk
        a = torch.rand(T, B, 2 * H, requires_grad=True)
        return (lambda: talk(x, a, H, K, K)), [x, a]
    if op in ("lightconv", "dynamicconv"):
        from fairseq.modules import DynamicConv1dTBC, LightweightConv1dTBC
        cls = LightweightConv1dTBC if op == "lightconv" else DynamicConv1dTBC
        m = cls(C, kernel_size=2 * K + 1, padding_l=K, num_heads=H, weight_softmax=True)
        unfold = T > 512
        return (lambda: m(x, unfold=unfold)), [x]
    if op == "attention":
        q, k, v = (torch.randn(B, H, T, C // H, requires_grad=True) for _ in range(3))
        return (lambda: F.scaled_dot_product_attention(q, k, v)), [q, k, v]
    if op == "cumsum":
        return (lambda: torch.cumsum(x, 0) * 2.0), [x]
    raise ValueError(f"unknown op {op!r}; choose from {', '.join(OPS)}")


MIN_TIME_S = 1.0  # each median covers at least this much timed work


def _passes(op: str, T: int, B: int, C: int, H: int, K: int
            ) -> tuple[Callable[[], Any], Callable[[], Any]]:
    """(forward, forward + backward) of one operator; the copy floor's are plain copies."""
    import torch

    if op == "copy":  # (T, B, C) each: read x write y; then read dy write dx
        x, y, dy, dx = (torch.randn(T, B, C) for _ in range(4))
        return (lambda: y.copy_(x)), (lambda: (y.copy_(x), dx.copy_(dy)))
    fn, inputs = _build(op, T, B, C, H, K)
    grad_out: list[torch.Tensor] = []

    def fwd() -> None:
        with torch.no_grad():
            fn()

    def fwd_bwd() -> None:
        out = fn()
        if not grad_out:  # made once, in the warm-up
            grad_out.append(torch.randn_like(out))
        grads = torch.autograd.grad(out, inputs, grad_out[0])
        del grads

    return fwd, fwd_bwd


def measure(op: str, T: int, B: int, C: int, H: int, K: int, budget_s: float,
            min_s: float = MIN_TIME_S) -> dict[str, Any]:
    """Run in the worker subprocess: time and peak memory of one operator at one length."""
    import torch

    torch.set_num_threads(int(os.environ.get("TDX_BENCH_THREADS", os.cpu_count() or 1)))
    fwd, fwd_bwd = _passes(op, T, B, C, H, K)
    load: dict[str, float] = {}

    def ms(call: Callable[[], Any]) -> float:
        return round(median_time(call, warmup=3, warmup_s=2.0, min_s=min_s,
                                 budget_s=budget_s, load=load) * 1e3, 4)

    return {"fwd_ms": ms(fwd), "fwd_bwd_ms": ms(fwd_bwd),
            "peak_fwd_mb": round(peak_memory_mb(fwd), 3),
            "peak_fwd_bwd_mb": round(peak_memory_mb(fwd_bwd), 3), **load}


def _rss_bytes(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_one(op: str, T: int, B: int, C: int, H: int, K: int, budget_s: float,
            timeout_s: float, malloc: str = "reuse", min_s: float = MIN_TIME_S
            ) -> dict[str, Any]:
    """One operator at one length in a worker process (see run_worker)."""
    return run_worker([sys.executable, "-m", "tdx.talk.bench", op, str(T), str(B), str(C),
                       str(H), str(K), str(budget_s), str(min_s)], timeout_s, malloc)


def run_worker(cmd: list[str], timeout_s: float, malloc: str = "reuse") -> dict[str, Any]:
    """Run a benchmark worker (it prints one JSON line) watched from here: a worker whose
    resident memory passes TDX_BENCH_MEM_FRACTION of RAM (default 0.6) is stopped and
    reported as out of memory (fairseq's unfold path at T=8192 wants more than this
    machine has), so a benchmark never swaps the machine to a halt. Its result carries
    `other_cores`: the CPU other work took while it timed (the worker's own figure, from
    `median_time`), else while it ran at all (`tdx.bench.watch_load`)."""
    with watch_load() as load:
        res = _run_worker(cmd, timeout_s, malloc)
    return {"other_cores": load["other_cores"], **res}


def _run_worker(cmd: list[str], timeout_s: float, malloc: str) -> dict[str, Any]:
    fraction = float(os.environ.get("TDX_BENCH_MEM_FRACTION", "0.6"))
    cap = int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") * fraction)
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True,
                                env={**env, **MALLOC[malloc]})
        start, peak = time.time(), 0
        while proc.poll() is None:
            peak = max(peak, _rss_bytes(proc.pid))
            if peak > cap or time.time() - start > timeout_s:
                proc.kill()
                proc.wait()
                if peak > cap:
                    return {"error": f"out of memory (> {cap / 2**30:.0f} GB resident)"}
                return {"error": f"timeout after {timeout_s:.0f} s"}
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    lines = [ln for ln in stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (stderr.strip().splitlines() or ["?"])[-1]
        return {"error": f"exit {proc.returncode}: {tail[:200]}"}
    return json.loads(lines[-1])


RATIOS = (("talk/copy fwd", "fwd_ms", "copy"), ("talk/copy fwd+bwd", "fwd_bwd_ms", "copy"),
          ("window/copy fwd", "fwd_ms", "copy"), ("window/copy fwd+bwd", "fwd_bwd_ms", "copy"),
          ("talk/cumsum", "fwd_ms", "cumsum"), ("talk/lightconv", "fwd_bwd_ms", "lightconv"),
          ("talk/dynamicconv", "fwd_bwd_ms", "dynamicconv"),
          ("talk/attention", "fwd_bwd_ms", "attention"))
NUMERATOR = {"talk": "talk", "window": "talk_window"}  # a ratio's name starts with its key
FLOOR_FROM_T, FLOOR_TIMES = 2048, 2.0  # target: TaLK within 2x of the copy floor from here


def ratios(row: dict[str, dict[str, Any]]) -> dict[str, float | None]:
    """TaLK's time (the layer's, or the window kernel's alone for `window/...`) over each
    other operator's at one length (the key of RATIOS)."""
    out: dict[str, float | None] = {}
    for name, key, other in RATIOS:
        num = NUMERATOR[name.split("/")[0]]
        a, b = row.get(num, {}).get(key), row.get(other, {}).get(key)
        out[name] = round(a / b, 3) if a and b else None
    return out


def checks(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """The issue's performance targets, evaluated on these numbers."""
    Ts = sorted(results)
    fb = {T: results[T].get("talk", {}).get("fwd_bwd_ms") for T in Ts}
    out: dict[str, Any] = {}
    for other in ("lightconv", "dynamicconv"):  # None where not asked for (--ops)
        ran = [T for T in Ts if other in results[T]]
        failed = [T for T in ran if "error" in results[T][other]]
        both = [T for T in ran if T not in failed]
        out[f"faster_than_{other}_where_both_ran"] = (bool(both) and all(
            (r := ratios(results[T])[f"talk/{other}"]) is not None and r < 1 for T in both)
        ) if ran else None
        if failed:
            out[f"{other}_failed_at"] = failed
    long = [T for T in Ts if T >= 1024 and "attention" in results[T]]
    out["faster_than_attention_from_T1024"] = all(
        (r := ratios(results[T])["talk/attention"]) is not None and r < 1 for T in long
    ) if long else None
    if 512 in fb and 8192 in fb and fb[512] and fb[8192]:
        out["time_ratio_8192_over_512"] = round(fb[8192] / fb[512], 2)
        out["linear_time_(<=20)"] = out["time_ratio_8192_over_512"] <= 20
        m = {T: results[T]["talk"].get("peak_fwd_bwd_mb") for T in (512, 8192)}
        if m[512] and m[8192]:
            out["memory_ratio_8192_over_512"] = round(m[8192] / m[512], 2)
    cs = [ratios(results[T])["talk/cumsum"] for T in Ts if T >= 512 and "cumsum" in results[T]]
    out["max_talk_over_cumsum_T>=512"] = max((r for r in cs if r), default=None)
    out["within_3x_of_cumsum"] = all(r is not None and r <= 3 for r in cs) if cs else None
    return {**out, **_floor_checks(results)}


def _floor_checks(results: dict[int, dict[str, dict[str, Any]]]) -> dict[str, Any]:
    """TaLK against the physical floor (a copy) at every T >= FLOOR_FROM_T."""
    out: dict[str, Any] = {}
    long = [T for T in sorted(results) if T >= FLOOR_FROM_T and "copy" in results[T]
            and "talk" in results[T]]  # measured at all (None below if not)
    for name, label in (("talk/copy fwd", "fwd"), ("talk/copy fwd+bwd", "fwd_bwd")):
        rs = [ratios(results[T])[name] for T in long]
        out[f"{label}_over_copy_floor_T>={FLOOR_FROM_T}"] = (
            {T: r for T, r in zip(long, rs, strict=True)} if long else None)
        out[f"{label}_within_{FLOOR_TIMES:g}x_of_copy_floor"] = all(
            r is not None and r <= FLOOR_TIMES for r in rs) if long else None
    return out


def run_benchmark(lengths: list[int], batch: int, channels: int, heads: int, kmax: int,
                  budget_s: float = 20.0, timeout_s: float = 900.0,
                  min_time_s: float = MIN_TIME_S,
                  ops: tuple[str, ...] = OPS, malloc: str = "reuse",
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    from tdx.run import git_commit, machine_info

    if channels % heads:
        raise UsageError(f"--channels ({channels}) must be divisible by --heads ({heads}).")
    if malloc not in MALLOC:
        raise UsageError(f"--malloc must be one of {', '.join(MALLOC)}, got '{malloc}'.")
    results: dict[int, dict[str, dict[str, Any]]] = {}
    with watch_load() as load:
        for T in lengths:
            results[T] = {}
            for op in ops:
                progress(f"T={T:>6} {op:<12} ...")
                results[T][op] = run_one(op, T, batch, channels, heads, kmax, budget_s,
                                         timeout_s, malloc, min_time_s)
    warning = load_warning(load, {f"T={T} {op}": r for T, row in results.items()
                                  for op, r in row.items()}, progress)
    return {
        "config": {"lengths": lengths, "batch": batch, "channels": channels, "heads": heads,
                   "kmax": kmax, "kernel_size": 2 * kmax + 1, "min_time_s": min_time_s,
                   "budget_s": budget_s,
                   "dtype": "float32", "malloc": malloc, "malloc_env": MALLOC[malloc],
                   "talk_kernel": _talk_kernel_built()},
        "machine": machine_info(), "git_commit": git_commit(),
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "results": {str(T): r for T, r in results.items()},
        "ratios": {str(T): ratios(r) for T, r in results.items()},
        "checks": {**checks(results), "machine_quiet": warning is None},
        "load": load, "warning": warning,
    }


def main(lengths: str, batch: int, channels: int, heads: int, kmax: int, min_time: float,
         budget: float, ops: str, malloc: str, json_file: Path | None, md: Path | None,
         plot_file: Path | None, command: str, progress: Callable[[str], None] = print) -> str:
    """`tdx bench talk-op`: check the options, measure, write the files; the report."""
    Ts = int_list(lengths, "--lengths")
    chosen = tuple(o for o in ops.split(",") if o)
    unknown = [o for o in chosen if o not in OPS]
    if unknown or not chosen:
        raise UsageError(f"Unknown operator(s) {unknown or [ops]}; choose from "
                         f"{', '.join(OPS)}.")
    positive(batch=batch, channels=channels, heads=heads)
    if kmax < 0 or min_time < 0:
        raise UsageError("--kmax and --min-time must be >= 0.")
    seconds(budget=budget)
    res = run_benchmark(Ts, batch, channels, heads, kmax, ops=chosen, malloc=malloc,
                        min_time_s=min_time, budget_s=budget, progress=progress)
    text = to_markdown(res, command)
    write_outputs(res, text, command, json_file, md)
    if plot_file:
        plot(res, plot_file)
    return text


def _talk_kernel_built() -> bool:
    from tdx.talk import ops
    return ops.kernel_available()


def to_markdown(report: dict[str, Any], command: str) -> str:
    cfg = report["config"]
    ops = list(next(iter(report["results"].values())).keys())
    lines = [
        "# TaLK operator benchmark", "",
        *([report["warning"], ""] if report.get("warning") else []),
        f"B={cfg['batch']}, C={cfg['channels']}, H={cfg['heads']}, K={cfg['kmax']} (kernel "
        f"{cfg['kernel_size']} for the convolutions), float32, CPU. Times are medians in ms "
        f"(torch.utils.benchmark, after up to 3 warm-up calls: blocks of calls until at "
        f"least 4 blocks and {cfg['min_time_s']} s of them with an interquartile range under "
        f"{IQR:.0%} of the median, or {cfg['budget_s']} s); memory is the peak tensor "
        "memory above the inputs in MB (torch profiler). "
        f"TaLK path: {'C++ kernel' if cfg.get('talk_kernel') else 'tensor ops'}; "
        f"allocator: {cfg.get('malloc', 'system')} {cfg.get('malloc_env') or '(glibc defaults)'}.",
        "",
        "The last column is the CPU other processes took while that length was measured, "
        f"in cores (the worst of its operators; {BUSY} or more marks a suspect time).", "",
        "| T | " + " | ".join(f"{o} fwd | {o} fwd+bwd | {o} MB" for o in ops)
        + " | other work |", "|---|" + "---|---|---|" * len(ops) + "---|"]
    for T, row in report["results"].items():
        cells = []
        for o in ops:
            r = row[o]
            cells += [r.get("error", "")[:20] or f"{r['fwd_ms']:.1f}",
                      "" if "error" in r else f"{r['fwd_bwd_ms']:.1f}",
                      "" if "error" in r else f"{r['peak_fwd_bwd_mb']:.0f}"]
        other = max(r.get("other_cores", 0) for r in row.values())
        lines.append(f"| {T} | " + " | ".join(cells) + f" | {other:.2f} |")
    lines += ["", "Ratios (TaLK's time over the other's: forward for `copy fwd` and `cumsum`, "
              "forward+backward otherwise; `copy` is the physical floor, see talk/bench.py):",
              "", "| T | " + " | ".join(n for n, _, _ in RATIOS) + " |",
              "|---|" + "---|" * len(RATIOS)]
    for T, r in report["ratios"].items():
        lines.append(f"| {T} | " + " | ".join("-" if r[n] is None else f"{r[n]:.3f}"
                                              for n, _, _ in RATIOS) + " |")
    return "\n".join(lines + targets_and_provenance(report, command))


def plot(report: dict[str, Any], out: Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    Ts = [int(t) for t in report["results"]]
    ops = list(next(iter(report["results"].values())).keys())
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for op in ops:
        pts = [(T, report["results"][str(T)][op]) for T in Ts]
        pts = [(T, r) for T, r in pts if "error" not in r]
        if not pts:
            continue
        axes[0].plot([T for T, _ in pts], [r["fwd_bwd_ms"] for _, r in pts], "o-", label=op)
        axes[1].plot([T for T, _ in pts], [max(r["peak_fwd_bwd_mb"], 0.1) for _, r in pts],
                     "o-", label=op)
    for ax, title in zip(axes, ("forward+backward time (ms)", "peak memory (MB)"), strict=True):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("sequence length T")
        ax.set_title(title)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)


if __name__ == "__main__":  # worker: python -m tdx.talk.bench OP T B C H K BUDGET MIN
    op, *nums = sys.argv[1:]
    T, B, C, H, K = map(int, nums[:5])
    print(json.dumps(measure(op, T, B, C, H, K, float(nums[5]), float(nums[6]))))
