"""What each step of the TaLK kernel work bought (issue 47, part 2): builds timed in one process.

Three versions of a TaLKConv layer's op (offset projection + window average), on the
talk-op benchmark's shape (B=8, C=512, H=8, l_max=r_max=15, float32):

- `before`  the kernel of a given commit (default 2d8ca39, before the work), called the way
            tdx.talk.ops called it then: offsets by torch.addmm + sigmoid, the window kernel,
            and in backward the offsets' gradient by addmm_ into dL/dx and a GEMM for dL/dW;
- `window`  today's kernel with the same Python around it: the window pass alone improved
            (time blocks between threads, ring slots without division, SSE2 streaming);
- `fused`   today's layer_forward / layer_backward: the projection and its backward inside
            the window passes.

Each is timed forward and backward (from saved tensors) with torch.utils.benchmark; the
versions alternate round by round so that all see the same machine state (memory
bandwidth here varies by tens of percent over minutes), and the median round is reported
with the copy floor measured in the same rounds. All three are checked to agree. Idle
machine only:

    python tools/bench_kernel_steps.py [--before 2d8ca39] [--lengths 2048,8192]
        [--out results/bench/talk_kernel_steps.md]
"""

from __future__ import annotations

import argparse
import ctypes
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_march import SOURCE, build, median_ms, publish

from tdx.bench import watch_load
from tdx.run import describe_machine, git_commit, machine_info

B, C, H, K = 8, 512, 8, 15
STREAM = 16 << 20  # tdx.talk.ops.STREAM_MIN_BYTES
VERSIONS = ("before", "window", "fused")


def unfused(m):  # noqa: ANN001, ANN201 - an extension module; (forward, backward) closures
    """The layer as tdx.talk.ops ran it before the fusion, around kernel module m."""
    def forward(x, w, b):  # noqa: ANN001, ANN202
        T = x.size(0)
        sig = torch.sigmoid(torch.addmm(b, x.view(T * B, C), w.t())).view(T, B, -1)
        return m.forward(x, sig, H, K, K), sig

    def backward(g, x, w, sig):  # noqa: ANN001, ANN202
        T = x.size(0)
        gx, ga = m.backward(g, x, sig, H, K, K, STREAM)
        g_logits = (ga * sig * (1 - sig)).view(T * B, -1)
        gx.view(T * B, C).addmm_(g_logits, w)
        return gx, g_logits.t() @ x.view(T * B, C), g_logits.sum(0)

    return forward, backward


def fused(m):  # noqa: ANN001, ANN201
    def forward(x, w, b):  # noqa: ANN001, ANN202
        out, sig, _ = m.layer_forward(x, w, b, None, H, K, K)
        return out, sig

    def backward(g, x, w, sig):  # noqa: ANN001, ANN202
        return m.layer_backward(g, x, w, sig, sig, None, H, K, K, STREAM)

    return forward, backward


def measure(layers: dict, T: int, rounds: int) -> dict:
    torch.manual_seed(0)
    x, g = torch.randn(T, B, C), torch.randn(T, B, C)
    w, b = torch.randn(2 * H, C) * 0.05, torch.randn(2 * H)
    saved = {v: fwd(x, w, b) for v, (fwd, _) in layers.items()}
    grads = {v: bwd(g, x, w, saved[v][1]) for v, (_, bwd) in layers.items()}
    # relative norm, not the largest entry: the gradient of a window edge jumps where the
    # edge crosses a row, and float rounding (torch's sigmoid vs the kernel's) moves a few
    # edges of 16 million across
    diff = max(float((p - q).norm() / q.norm())
               for v in VERSIONS[1:]
               for p, q in zip((saved[v][0], *grads[v]), (saved["before"][0], *grads["before"]),
                               strict=True))
    res: dict[str, list[float]] = {}
    for _ in range(rounds):
        for v, (fwd, bwd) in layers.items():
            env = {"fwd": fwd, "bwd": bwd, "x": x, "w": w, "b": b, "g": g, "sig": saved[v][1]}
            res.setdefault(f"{v} fwd", []).append(median_ms("fwd(x, w, b)", env))
            res.setdefault(f"{v} bwd", []).append(median_ms("bwd(g, x, w, sig)", env))
        out = torch.empty_like(x)
        env = {"o": out, "x": x, "o2": torch.empty_like(g), "g": g}
        res.setdefault("copy fwd", []).append(median_ms("o.copy_(x)", env))
        res.setdefault("copy bwd", []).append(median_ms("o2.copy_(g)", env))
    med = {k: sorted(v)[len(v) // 2] for k, v in res.items()}
    return {"median_ms": med, "rounds_ms": res, "max_rel_diff": diff}


def markdown(results: dict[int, dict], before: str, command: str, load: dict) -> str:
    lines = ["# TaLK kernel: what each step bought", "",
             f"A TaLKConv layer's op (offset projection + window average), B={B}, C={C}, "
             f"H={H}, l_max=r_max={K}, float32; forward, and backward from saved tensors. "
             "Medians of alternating rounds in one process (torch.utils.benchmark, >= 2 s "
             "each; freed memory reused, as the talk-op bench's `--malloc reuse`). `before`: "
             f"the kernel at {before} with the Python of then; `window`: today's window "
             "kernel, same Python; `fused`: today's layer_forward/layer_backward. Copy: x "
             "(and the gradient) copied into preallocated tensors.",
             "", "| T | version | fwd (ms) | bwd (ms) | fwd+bwd (ms) | fwd / copy | "
             "fwd+bwd / copy | speed-up fwd+bwd vs before |", "|---|---|---|---|---|---|---|---|"]
    for T, r in results.items():
        m = r["median_ms"]
        cf, cfb = m["copy fwd"], m["copy fwd"] + m["copy bwd"]
        base = m["before fwd"] + m["before bwd"]
        for v in VERSIONS:
            f, fb = m[f"{v} fwd"], m[f"{v} fwd"] + m[f"{v} bwd"]
            lines.append(f"| {T} | {v} | {f:.1f} | {m[f'{v} bwd']:.1f} | {fb:.1f} | "
                         f"{f / cf:.2f} | {fb / cfb:.2f} | {base / fb:.2f}x |")
        lines.append(f"| {T} | copy | {cf:.1f} | {m['copy bwd']:.1f} | {cfb:.1f} | 1 | 1 | |")
    diffs = ", ".join(f"T={T}: {r['max_rel_diff']:.1e}" for T, r in results.items())
    lines += ["", f"Versions agree: largest ||difference|| / ||before|| over the output and "
              f"the three gradients, {diffs}.", "",
              f"- Command: `{command}` (tdx commit {git_commit()}, "
              f"{time.strftime('%Y-%m-%d %H:%M')})",
              f"- Machine: {describe_machine(machine_info())}, {torch.get_num_threads()} "
              f"threads; load average {load['load_before']:.2f} before, "
              f"{load['load_after']:.2f} after; other work {load['other_cores']:.2f} cores"]
    return "\n".join(lines) + "\n"


def reuse_freed_memory() -> None:
    """glibc keeps freed blocks instead of returning them (the talk-op bench's `--malloc
    reuse`), so large outputs do not pay first-touch page faults on every call."""
    libc = ctypes.CDLL("libc.so.6")
    libc.mallopt(-4, 0)  # M_MMAP_MAX: no mmap'd blocks
    libc.mallopt(-1, 2**30)  # M_TRIM_THRESHOLD: keep up to 1 GB of freed heap


def main() -> int:
    reuse_freed_memory()
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--before", default="2d8ca39", help="commit whose kernel is `before`")
    p.add_argument("--lengths", default="2048,8192")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp, watch_load() as load:
        old = Path(tmp) / "before.cpp"
        old.write_text(subprocess.run(
            ["git", "show", f"{args.before}:talk/csrc/talk_op.cpp"], check=True,
            capture_output=True, text=True, cwd=SOURCE.parents[2]).stdout)
        old_m = build("before", [], Path(tmp), source=old)
        new_m = build("now", [], Path(tmp))
        layers = {"before": unfused(old_m), "window": unfused(new_m), "fused": fused(new_m)}
        results = {T: measure(layers, T, args.rounds)
                   for T in (int(t) for t in args.lengths.split(","))}
    command = shlex.join(["python", "tools/bench_kernel_steps.py", *sys.argv[1:]])
    return publish(markdown(results, args.before, command, load), args.out)


if __name__ == "__main__":
    sys.exit(main())
