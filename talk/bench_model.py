"""`tdx bench talk-model`: whole-model speed of TaLK against its baselines, identical inputs.

Every model (the CPU-scale archs of `tdx train talk-mt` / `talk-lm`, untrained, seed 0)
runs in its own worker process (see tdx.talk.bench.run_worker) on the same synthetic
batches (MT: a vocabulary of 8000 like talk-mt's sentencepiece; LM: 256 characters):

- MT training, at each length L (16, 64, 256 by default): B sentences of source and
  target length L; forward, label-smoothed loss, backward and an Adam step; target words
  per second (median step). B stays the same at every L, so the work per step grows with
  L, as the attention's share does (O(L^2) against TaLK's O(L)).
- MT generation: beam 5 on B sources, forced to exactly L output tokens (min_len = max_len),
  so an untrained model's early or late end-of-sentence does not change the work done;
  incremental decoding (fairseq's incremental state: the Transformer attends over its
  cache of t earlier steps at step t, TaLK updates a running prefix sum); sentences per
  second.
- LM training at context 256 and 1024 with the same number of tokens per batch; tokens/s.
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
    watch_load,
    write_outputs,
)
from tdx.errors import UsageError

MT_MODELS = {"talk": "talkconv_multi30k", "transformer": "transformer_multi30k",
             "lightconv": "lightconv_multi30k", "dynamicconv": "dynamicconv_multi30k"}
LM_MODELS = {"talk": "talkconv_lm_char", "transformer": "transformer_lm_char",
             "dynamicconv": "dynamicconv_lm_char"}
VOCAB = 8000  # MT: the joint sentencepiece vocabulary of talk-mt
LM_VOCAB = 256  # LM: characters (Tiny Shakespeare has 65)


def _dictionary(size: int) -> Any:
    from fairseq.data import Dictionary

    d = Dictionary()
    for i in range(size - len(d)):
        d.add_symbol(f"w{i}")
    return d


def _build(arch: str, task_name: str, extra: list[str], vocab: int) -> tuple[Any, Any]:
    """(model, task stand-in) with fairseq's own defaults for `arch`."""
    from types import SimpleNamespace

    from fairseq.models import ARCH_MODEL_REGISTRY

    from tdx.fairseq_engine import parse_fairseq

    cfg = parse_fairseq([f"{task_name}-unused", "--task", task_name, "--arch", arch,
                         "--cpu", *extra])
    d = _dictionary(vocab)
    task = SimpleNamespace(source_dictionary=d, target_dictionary=d, dictionary=d,
                           output_dictionary=d)
    return ARCH_MODEL_REGISTRY[arch].build_model(cfg.model, task), task


def _train_step(model: Any, crit: Any, sample: dict) -> Callable[[], None]:
    """One training update: forward, the criterion's loss, backward, an Adam step."""
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step() -> None:
        model.train()
        loss, _, _ = crit(model, sample)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return step


def measure_mt(arch: str, batch: int, length: int, budget_s: float) -> dict[str, float]:
    import torch
    from fairseq.criterions.label_smoothed_cross_entropy import (
        LabelSmoothedCrossEntropyCriterion,
    )
    from fairseq.sequence_generator import SequenceGenerator

    torch.manual_seed(0)
    model, task = _build(arch, "translation", [], VOCAB)
    crit = LabelSmoothedCrossEntropyCriterion(task, sentence_avg=False, label_smoothing=0.1)
    g = torch.Generator().manual_seed(0)
    src = torch.randint(4, VOCAB, (batch, length), generator=g)
    tgt = torch.randint(4, VOCAB, (batch, length), generator=g)
    eos = torch.full((batch, 1), task.target_dictionary.eos())
    sample = {"net_input": {"src_tokens": src, "src_lengths": torch.full((batch,), length),
                            "prev_output_tokens": torch.cat([eos, tgt[:, :-1]], 1)},
              "target": tgt, "ntokens": batch * length}

    load: dict[str, float] = {}
    train_s = median_time(_train_step(model, crit, sample), warmup=2, budget_s=budget_s,
                          load=load)
    model.eval()
    gen = SequenceGenerator([model], task.target_dictionary, beam_size=5, max_len_a=0,
                            max_len_b=length, min_len=length)
    net = {"net_input": {"src_tokens": src, "src_lengths": sample["net_input"]["src_lengths"]}}
    with torch.no_grad():
        gen_s = median_time(lambda: gen.generate([model], net), warmup=1, budget_s=budget_s,
                            load=load)
    return {"params": sum(p.numel() for p in model.parameters()),
            "train_words_per_s": round(batch * length / train_s, 1),
            "gen_sent_per_s": round(batch / gen_s, 2), **load}


def measure_lm(arch: str, context: int, tokens: int, budget_s: float) -> dict[str, float]:
    import torch
    from fairseq.criterions.cross_entropy import CrossEntropyCriterion

    torch.manual_seed(0)
    model, task = _build(arch, "language_modeling",
                         ["--tokens-per-sample", str(context), "--max-target-positions",
                          str(context)], LM_VOCAB)
    crit = CrossEntropyCriterion(task, sentence_avg=False)
    batch = max(tokens // context, 1)
    seq = torch.randint(4, LM_VOCAB, (batch, context + 1),
                        generator=torch.Generator().manual_seed(0))
    sample = {"net_input": {"src_tokens": seq[:, :-1].contiguous()},
              "target": seq[:, 1:].contiguous(), "ntokens": batch * context}

    load: dict[str, float] = {}
    step_s = median_time(_train_step(model, crit, sample), warmup=2, budget_s=budget_s,
                         load=load)
    return {"params": sum(p.numel() for p in model.parameters()),
            "train_tok_per_s": round(batch * context / step_s, 1), **load}


# the targets: TaLK / Transformer at least (training words/s, beam-5 sentences/s), by
# length (16: the model-speed issue's; 64: issue 47's, where the attention's share grows)
MT_TARGETS = {16: (1.2, 1.3), 64: (1.2, 1.5)}


def ratios_and_checks(res: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """TaLK over each baseline, and the issues' targets."""
    def r(a: float | None, b: float | None) -> float | None:
        return round(a / b, 3) if a and b else None

    out: dict[str, Any] = {}
    for L, row in res["mt"].items():
        for other in ("transformer", "lightconv", "dynamicconv"):
            for kind, key in (("train", "train_words_per_s"), ("gen", "gen_sent_per_s")):
                out[f"mt{L}_{kind}_talk/{other}"] = r(row.get("talk", {}).get(key),
                                                      row.get(other, {}).get(key))
    for ctx, row in res["lm"].items():
        for other in ("transformer", "dynamicconv"):
            out[f"lm{ctx}_train_talk/{other}"] = r(row.get("talk", {}).get("train_tok_per_s"),
                                                   row.get(other, {}).get("train_tok_per_s"))
    checks: dict[str, Any] = {}
    for L, (train, gen) in MT_TARGETS.items():
        if str(L) in res["mt"]:
            checks[f"mt{L}_train_>={train}x_transformer"] = (
                out[f"mt{L}_train_talk/transformer"] or 0) >= train
            checks[f"mt{L}_gen_>={gen}x_transformer"] = (
                out[f"mt{L}_gen_talk/transformer"] or 0) >= gen
    if "1024" in res["lm"]:
        checks["lm1024_train_>=1.5x_transformer"] = (
            out["lm1024_train_talk/transformer"] or 0) >= 1.5
    checks["faster_than_dynamicconv_everywhere"] = all(
        (v or 0) > 1 for k, v in out.items() if k.endswith("/dynamicconv"))
    return out, checks


def run_benchmark(batch: int = 64, lengths: tuple[int, ...] = (16, 64, 256),
                  lm_tokens: int = 8192, contexts: tuple[int, ...] = (256, 1024),
                  budget_s: float = 10.0, timeout_s: float = 1800.0, malloc: str = "reuse",
                  progress: Callable[[str], None] = print) -> dict[str, Any]:
    from tdx.run import git_commit, machine_info
    from tdx.talk.bench import run_worker

    worker = [sys.executable, "-m", "tdx.talk.bench_model"]
    res: dict[str, Any] = {"mt": {}, "lm": {}}
    with watch_load() as load:
        for L in lengths:
            res["mt"][str(L)] = {}
            for name, arch in MT_MODELS.items():
                progress(f"MT {name:<12} ({arch}) length {L} ...")
                res["mt"][str(L)][name] = run_worker(
                    [*worker, "mt", arch, str(batch), str(L), str(budget_s)], timeout_s, malloc)
        for ctx in contexts:
            res["lm"][str(ctx)] = {}
            for name, arch in LM_MODELS.items():
                progress(f"LM {name:<12} ({arch}) context {ctx} ...")
                res["lm"][str(ctx)][name] = run_worker(
                    [*worker, "lm", arch, str(ctx), str(lm_tokens), str(budget_s)], timeout_s,
                    malloc)
    cells = {f"{task} {n} {name}": r for task in ("mt", "lm") for n, row in res[task].items()
             for name, r in row.items()}
    warning = load_warning(load, cells, progress)
    ratios, checks = ratios_and_checks(res)
    return {"config": {"batch": batch, "lengths": list(lengths), "lm_tokens": lm_tokens,
                       "contexts": list(contexts), "budget_s": budget_s, "vocab": VOCAB,
                       "lm_vocab": LM_VOCAB, "beam": 5, "malloc": malloc, "mt_models": MT_MODELS,
                       "lm_models": LM_MODELS},
            "machine": machine_info(), "git_commit": git_commit(),
            "date": time.strftime("%Y-%m-%d %H:%M"), "results": res, "ratios": ratios,
            "checks": {**checks, "machine_quiet": warning is None}, "load": load,
            "warning": warning}


def main(batch: int, lengths: str, lm_tokens: int, contexts: str, budget: float, malloc: str,
         json_file: Path | None, md: Path | None, command: str,
         progress: Callable[[str], None] = print) -> str:
    """`tdx bench talk-model`: check the options, measure, write the files; the report."""
    from tdx.talk.bench import MALLOC

    ctx = tuple(int_list(contexts, "--contexts"))
    Ls = tuple(int_list(lengths, "--lengths"))
    positive(batch=batch, lm_tokens=lm_tokens)
    seconds(budget=budget)
    if malloc not in MALLOC:
        raise UsageError(f"--malloc must be one of {', '.join(MALLOC)}, got '{malloc}'.")
    res = run_benchmark(batch, Ls, lm_tokens, ctx, budget, malloc=malloc,
                        progress=progress)
    text = to_markdown(res, command)
    write_outputs(res, text, command, json_file, md)
    return text


def to_markdown(report: dict[str, Any], command: str) -> str:
    from tdx.bench import targets_and_provenance

    cfg, res = report["config"], report["results"]
    cell = lambda r, k: r.get("error", "?")[:30] if "error" in r else f"{r[k]:,.1f}"  # noqa: E731
    lines = ["# TaLK model speed", "", *([report["warning"], ""] if report.get("warning") else []),
             f"Untrained models, identical synthetic batches (V={cfg['vocab']} for MT, "
             f"{cfg['lm_vocab']} for the character LMs), float32, CPU. "
             f"MT: {cfg['batch']} sentences of L tokens each side; generation "
             f"beam {cfg['beam']} with incremental decoding, exactly L output tokens. LM: "
             f"{cfg['lm_tokens']} tokens per batch. Medians per step (`tdx.bench.median_time`, "
             f"torch.utils.benchmark; at most {cfg['budget_s']} s each). `other work`: CPU "
             f"cores other processes took while that model was measured ({BUSY} or more: "
             "suspect).", "",
             "| MT model | arch | params | L | train words/s | beam-5 sent/s | other work |",
             "|---|---|---|---|---|---|---|"]
    for L, row in res["mt"].items():
        for name, r in row.items():
            lines.append(f"| {name} | {cfg['mt_models'][name]} | "
                         f"{r.get('params', 0) / 1e6:.2f}M | {L} | "
                         f"{cell(r, 'train_words_per_s')} | {cell(r, 'gen_sent_per_s')} | "
                         f"{r.get('other_cores', 0):.2f} |")
    lines += ["", "| LM model | arch | params | " + " | ".join(
        f"tok/s @ {c}" for c in res["lm"]) + " | other work |",
        "|---|---|---|" + "---|" * len(res["lm"]) + "---|"]
    for name, arch in cfg["lm_models"].items():
        rows = [res["lm"][c][name] for c in res["lm"]]
        other = max((r.get("other_cores", 0) for r in rows), default=0)
        lines.append(f"| {name} | {arch} | {rows[0].get('params', 0) / 1e6:.2f}M | " +
                     " | ".join(cell(r, "train_tok_per_s") for r in rows) + f" | {other:.2f} |")
    lines += ["", "Ratios (TaLK / other):", ""]
    lines += [f"- {k}: {v}" for k, v in report["ratios"].items()]
    return "\n".join(lines + targets_and_provenance(report, command))


if __name__ == "__main__":  # worker: mt ARCH B L BUDGET | lm ARCH CONTEXT TOKENS BUDGET
    kind, arch, *nums = sys.argv[1:]
    a, b, budget = int(nums[0]), int(nums[1]), float(nums[2])
    out = measure_mt(arch, a, b, budget) if kind == "mt" else measure_lm(arch, a, b, budget)
    print(json.dumps(out))
