"""How well each embedding compressor fits a trained teacher's shared embedding E at equal
size, before any fine-tuning: the mechanism behind Distilled Embedding's claim (issue 45).

Fits every compressor of tdx.embed.compress the way `tdx train embed` initialises it
(`init_from`, with the experiment's defaults), at each rate, and the non-linear decoder at
each hidden width and activation, and reports the mean squared error against E, as a ratio
to the SVD's at the same rate. Word counts (GroupReduce's frequency groups) come from the
teacher's dictionary. Run it on an idle machine after the teacher exists:

    python tools/embed_recon.py runs/talk-mt/models-transformer_multi30k-e735a5e07d8f \
        [--rates 8,16,32] [--hidden 16,32,64,128] [--acts relu,gelu] [--steps 2000] \
        [--out results/archive/embed_decoder_recon.md]
"""

from __future__ import annotations

import argparse
import shlex
import sys
import time
from pathlib import Path

import torch

from tdx.checkpoints import load_fairseq_checkpoint
from tdx.embed.compress import build
from tdx.embed.models import EMBED_DEFAULTS, teacher_checkpoint
from tdx.run import describe_machine, git_commit, machine_info
from tdx.table import runs_root

LOW_RANK = ("svd", "distilled", "groupreduce")


def teacher_embedding(run: Path) -> tuple[torch.Tensor, torch.Tensor, Path]:
    """E (V x d) of the teacher's (averaged) checkpoint, and its dictionary's word counts
    (as `tdx train embed` passes them: fairseq's Dictionary of the run's data_path)."""
    import yaml
    from fairseq.data import Dictionary

    ckpt = teacher_checkpoint(run)
    run = ckpt.parent.parent  # <run>/checkpoints/<file>.pt
    E = load_fairseq_checkpoint(ckpt)["model"]["encoder.embed_tokens.weight"].float()
    cfg = yaml.safe_load((run / "config.yaml").read_text())
    lang = cfg["data"].get("target_lang", "en")
    words = Dictionary.load(str(Path(cfg["data"]["data_path"]) / f"dict.{lang}.txt"))
    assert len(words) == len(E), (len(words), E.shape)
    return E, torch.tensor(words.count, dtype=torch.float), ckpt


def fit(method: str, E: torch.Tensor, counts: torch.Tensor, rate: float, steps: int,
        **decoder: object) -> dict[str, float]:
    torch.manual_seed(0)
    V, d = E.shape
    # distilled with its bias, as the embcomp models configure it (model.embed_bias: true)
    comp = build(method, V, d, 1, rate=rate, bias=method == "distilled", **decoder)
    t0 = time.perf_counter()
    kwargs = ({"steps": steps, "lr": EMBED_DEFAULTS["embed_init_lr"]}
              if method in ("distilled", "decoder") else {})
    comp.init_from(E, counts=counts, **kwargs)
    return {"mse": comp.reconstruction_error(E), "size": comp.size(),
            "rank": getattr(comp, "rank", None) or sum(getattr(comp, "ranks", [0])),
            "seconds": round(time.perf_counter() - t0, 1)}


def study(E: torch.Tensor, counts: torch.Tensor, rates: list[float], hidden: list[int],
          acts: list[str], steps: int) -> list[dict[str, object]]:
    rows: list[dict[str, object]] = []
    for rate in rates:
        svd = fit("svd", E, counts, rate, steps)
        for method in LOW_RANK:
            res = svd if method == "svd" else fit(method, E, counts, rate, steps)
            rows.append({"rate": rate, "method": method, **res,
                         "vs_svd": res["mse"] / svd["mse"]})
            print(rows[-1], flush=True)
        for h in hidden:
            for act in acts:
                try:
                    res = fit("decoder", E, counts, rate, steps, hidden=h, act=act)
                except ValueError as e:  # the decoder alone is over this rate's budget
                    print(f"{rate}x h={h}: {e}", flush=True)
                    continue
                rows.append({"rate": rate, "method": f"decoder h={h} {act}", **res,
                             "vs_svd": res["mse"] / svd["mse"]})
                print(rows[-1], flush=True)
    return rows


def to_markdown(rows: list[dict[str, object]], E: torch.Tensor, ckpt: Path, steps: int,
                command: str) -> str:
    lines = ["# Reconstruction of a trained embedding at equal size (before fine-tuning)", "",
             f"E: {E.shape[0]} x {E.shape[1]}, mean squared entry {float(E.pow(2).mean()):.3e}, "
             f"from `{ckpt}`. Every compressor fitted as `tdx train embed` initialises it "
             f"(decoder and distilled: closed-form SVD start, then {steps} full-batch Adam "
             "steps, the better of start and end kept). MSE against E; `vs SVD` is the ratio "
             "to the SVD's at the same rate (below 1: a better fit at the same size).", "",
             "| rate | method | code width / rank | params | MSE | vs SVD | fit s |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['rate']:g}x | {r['method']} | {r['rank']} | {r['size']:,.0f} | "
                     f"{r['mse']:.4e} | {r['vs_svd']:.4f} | {r['seconds']} |")
    return "\n".join([*lines, "", f"- Command: `{command}`", f"- Commit: {git_commit()}",
                      f"- Machine: {describe_machine(machine_info())}, "
                      f"{time.strftime('%Y-%m-%d %H:%M')}", ""])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("teacher", type=Path, help="the teacher's run folder (or checkpoint)")
    ap.add_argument("--rates", default="8,16,32")
    ap.add_argument("--hidden", default="16,32,64,128")
    ap.add_argument("--acts", default="relu,gelu")
    ap.add_argument("--steps", type=int, default=EMBED_DEFAULTS["embed_init_steps"])
    ap.add_argument("--out", type=Path)
    args = ap.parse_args()
    E, counts, ckpt = teacher_embedding(args.teacher)
    rows = study(E, counts, [float(r) for r in args.rates.split(",")],
                 [int(h) for h in args.hidden.split(",")], args.acts.split(","), args.steps)
    root = runs_root()
    shown = ckpt.relative_to(root) if ckpt.is_relative_to(root) else ckpt
    text = to_markdown(rows, E, shown, args.steps,
                       shlex.join(["python", "tools/embed_recon.py", *sys.argv[1:]]))
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text)


if __name__ == "__main__":
    main()
