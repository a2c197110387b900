"""`tdx bench zskd-student`: the zero-shot KD student with a Transformer body against the
same student with a TaLK body (issue 47), at equal size (feed-forward 256 and 316: 737,744
and 737,564 parameters with the 128 positions of a pair task; the position table here has
L rows, the same for both), on identical synthetic batches of `batch` sentences of L word
pieces, each body at each L in its own worker process (`tdx.talk.bench.run_worker`; the
worker records the other work that ran beside its timings):

- inference: the classifier's forward pass without gradients (scoring a task), sentences
  per second;
- training: forward, cross-entropy, backward and an Adam step (what a distillation update
  costs the student), sentences per second.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tdx.bench import (
    BUSY,
    int_list,
    load_warning,
    median_time,
    positive,
    seconds,
    targets_and_provenance,
    watch_load,
    write_outputs,
)

FFN = {"transformer": 256, "talk": 316}  # equal parameter counts (tests/test_distill.py)
VOCAB = 30522  # the teacher's word pieces (all-MiniLM-L6-v2)
TARGET_LENGTH, TARGET_RATIO = 128, 1.3  # TaLK's inference speed-up at 128 word pieces


def measure(body: str, batch: int, length: int, budget_s: float) -> dict[str, float]:
    """Run in the worker: one body's speeds at one length."""
    import torch

    from tdx.distill.models import Batch, Student

    torch.manual_seed(0)
    student = Student(VOCAB, 2, body=body, ffn=FFN[body], max_len=length)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1000, VOCAB, (batch, length), generator=g)
    b = Batch(ids, torch.ones_like(ids, dtype=torch.bool), torch.zeros_like(ids))
    labels = torch.randint(0, 2, (batch,), generator=g)
    opt = torch.optim.Adam(student.parameters(), lr=1e-4)

    def infer() -> None:
        with torch.no_grad():
            student(b)

    def train() -> None:
        loss = torch.nn.functional.cross_entropy(student(b), labels)
        opt.zero_grad()
        loss.backward()
        opt.step()

    load: dict[str, float] = {}
    student.eval()
    infer_s = median_time(infer, warmup=2, budget_s=budget_s, load=load)
    student.train()
    train_s = median_time(train, warmup=2, budget_s=budget_s, load=load)
    return {"params": student.size(), "infer_sent_per_s": round(batch / infer_s, 1),
            "train_sent_per_s": round(batch / train_s, 1), **load}


def run_benchmark(batch: int, lengths: list[int], budget_s: float, malloc: str = "reuse",
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    from tdx.run import git_commit, machine_info
    from tdx.talk.bench import run_worker

    res: dict[str, dict[str, Any]] = {}
    with watch_load() as load:
        for L in lengths:
            res[str(L)] = {}
            for body in FFN:
                progress(f"{body:<12} L={L} ...")
                res[str(L)][body] = run_worker(
                    [sys.executable, "-m", "tdx.distill.bench", body, str(batch), str(L),
                     str(budget_s)], 1800.0, malloc)
    warning = load_warning(load, {f"L={L} {body}": r for L, row in res.items()
                                  for body, r in row.items()}, progress)
    ratios = {f"{kind}{L}_talk/transformer": _ratio(row, f"{kind}_sent_per_s")
              for L, row in res.items() for kind in ("infer", "train")}
    target = ratios.get(f"infer{TARGET_LENGTH}_talk/transformer")  # None: not measured,
    checks = {f"infer{TARGET_LENGTH}_>={TARGET_RATIO}x_transformer":  # False: failed or slow
              None if str(TARGET_LENGTH) not in res else (target or 0) >= TARGET_RATIO,
              "machine_quiet": warning is None}
    return {"config": {"batch": batch, "lengths": lengths, "budget_s": budget_s,
                       "ffn": FFN, "vocab": VOCAB, "malloc": malloc},
            "machine": machine_info(), "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "results": res, "ratios": ratios,
            "checks": checks, "load": load, "warning": warning}


def _ratio(row: dict[str, Any], key: str) -> float | None:
    a, b = row.get("talk", {}).get(key), row.get("transformer", {}).get(key)
    return round(a / b, 3) if a and b else None


def main(batch: int, lengths: str, budget: float, json_file: Path | None, md: Path | None,
         command: str, progress: Callable[[str], None] = print) -> str:
    """`tdx bench zskd-student`: check the options, measure, write the files; the report."""
    Ls = int_list(lengths, "--lengths")
    positive(batch=batch)
    seconds(budget=budget)
    res = run_benchmark(batch, Ls, budget, progress=progress)
    text = to_markdown(res, command)
    write_outputs(res, text, command, json_file, md)
    return text


def to_markdown(report: dict[str, Any], command: str) -> str:
    cfg = report["config"]
    cell = lambda r, k: r.get("error", "?")[:30] if "error" in r else f"{r[k]:,.1f}"  # noqa: E731
    lines = ["# Zero-shot KD student speed: Transformer body vs TaLK body", "",
             *([report["warning"], ""] if report.get("warning") else []),
             f"Untrained students, {cfg['batch']} sentences of L word pieces (no padding), "
             f"float32, CPU; feed-forward widths {cfg['ffn']} for equal size. Medians per "
             f"step (`tdx.bench.median_time`, at most {cfg['budget_s']} s each). `other "
             f"work`: CPU cores other processes took meanwhile ({BUSY} or more: suspect).", "",
             "| body | params | L | inference sent/s | training sent/s | other work |",
             "|---|---|---|---|---|---|"]
    for L, row in report["results"].items():
        for body, r in row.items():
            lines.append(f"| {body} | {r.get('params', 0):,} | {L} | "
                         f"{cell(r, 'infer_sent_per_s')} | {cell(r, 'train_sent_per_s')} | "
                         f"{r.get('other_cores', 0):.2f} |")
    lines += ["", "Ratios (TaLK / Transformer):", ""]
    lines += [f"- {k}: {v}" for k, v in report["ratios"].items()]
    return "\n".join(lines + targets_and_provenance(report, command))


if __name__ == "__main__":  # worker: BODY BATCH LENGTH BUDGET
    body, batch, length, budget = sys.argv[1:]
    print(json.dumps(measure(body, int(batch), int(length), float(budget))))
