"""What `-march=native` buys the TaLK kernel: both builds timed in one process.

setup.py compiles talk/csrc for the compiler's default target (one build runs on every
machine of the architecture); `TDX_MARCH=native` opts in to the build machine's own
instructions. This compiles the kernel twice with torch's JIT loader (the same flags as
setup.py, plus or minus -march=native), checks that both give the same numbers, and times
forward and backward of each on the same inputs with torch.utils.benchmark, alternating
the builds so that both see the same machine state. Run it on an idle machine:

    python tools/bench_march.py [--lengths 2048,8192] [--out results/bench/talk_op_march.md]
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.utils import benchmark
from torch.utils.cpp_extension import load

from tdx.run import describe_machine, git_commit, machine_info

SOURCE = Path(__file__).resolve().parents[1] / "talk" / "csrc" / "talk_op.cpp"
BUILDS = {"default": [], "native": ["-march=native"]}
B, C, H, K = 8, 512, 8, 3  # the talk-op benchmark's default shape


def build(tag: str, flags: list[str], folder: Path, source: Path = SOURCE):  # noqa: ANN201
    """The kernel at `source` compiled as setup.py does (plus `flags`): an extension module."""
    out = folder / tag
    out.mkdir()
    return load(name=f"talk_C_{tag}", sources=[str(source)], build_directory=str(out),
                extra_cflags=["-O3", "-fopenmp", *flags], extra_ldflags=["-fopenmp"])


def median_ms(stmt: str, env: dict) -> float:
    timer = benchmark.Timer(stmt=stmt, globals=env, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=2.0).median * 1e3


def measure(mods: dict, T: int, rounds: int) -> dict[str, dict[str, float]]:
    torch.manual_seed(0)
    x, a = torch.randn(T, B, C), torch.rand(T, B, 2 * H)
    g = torch.randn(T, B, C)
    outs = {tag: m.forward(x, a, H, K, K) for tag, m in mods.items()}
    grads = {tag: m.backward(g, x, a, H, K, K, 16 << 20) for tag, m in mods.items()}
    diff = max(float((outs["default"] - outs["native"]).abs().max()),
               *(float((p - q).abs().max()) for p, q in zip(*grads.values(), strict=True)))
    res: dict[str, dict[str, float]] = {tag: {"fwd": [], "bwd": []} for tag in mods}
    for _ in range(rounds):  # alternate: default, native, default, native, ...
        for tag, m in mods.items():
            env = {"m": m, "x": x, "a": a, "g": g, "H": H, "K": K}
            res[tag]["fwd"].append(median_ms("m.forward(x, a, H, K, K)", env))
            res[tag]["bwd"].append(median_ms("m.backward(g, x, a, H, K, K, 16 << 20)", env))
    out = {tag: {k: sorted(v)[len(v) // 2] for k, v in r.items()} for tag, r in res.items()}
    out["max_abs_diff"] = {"all": diff}
    return out


def markdown(results: dict[int, dict], command: str, load_before: float,
             load_after: float) -> str:
    lines = ["# TaLK kernel: portable build against -march=native", "",
             f"Forward and backward of the fused CPU kernel alone (`talk/csrc`), B={B}, "
             f"C={C}, H={H}, l_max=r_max={K}, float32; medians (torch.utils.benchmark, "
             "blocked, >= 2 s each) of alternating rounds in one process.", "",
             "| T | fwd default (ms) | fwd native (ms) | native / default | "
             "bwd default (ms) | bwd native (ms) | native / default | max abs diff |",
             "|---|---|---|---|---|---|---|---|"]
    for T, r in results.items():
        d, n = r["default"], r["native"]
        lines.append(f"| {T} | {d['fwd']:.2f} | {n['fwd']:.2f} | {n['fwd'] / d['fwd']:.3f} | "
                     f"{d['bwd']:.2f} | {n['bwd']:.2f} | {n['bwd'] / d['bwd']:.3f} | "
                     f"{r['max_abs_diff']['all']:.1e} |")
    lines += ["", f"- Command: `{command}` (tdx commit {git_commit()}, "
              f"{time.strftime('%Y-%m-%d %H:%M')})",
              f"- Machine: {describe_machine(machine_info())}, {torch.get_num_threads()} "
              f"threads; load average {load_before:.2f} before, {load_after:.2f} after"]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--lengths", default="2048,8192")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--out", type=Path)
    args = p.parse_args()
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as tmp:
        mods = {tag: build(tag, flags, Path(tmp)) for tag, flags in BUILDS.items()}
        results = {T: measure(mods, T, args.rounds)
                   for T in (int(t) for t in args.lengths.split(","))}
    command = shlex.join(["python", "tools/bench_march.py", *sys.argv[1:]])
    return publish(markdown(results, command, load_before, os.getloadavg()[0]), args.out)


def publish(text: str, out: Path | None) -> int:
    """Print a tool's markdown report and write it to `out` if given; the exit code."""
    print(text)
    if out:
        out.write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
