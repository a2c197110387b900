"""SR-NAM's table (Lioutas 2020, Table 1 at CPU scale): a row per method, PSNR / SSIM per
set and kind of LR, SR-NAM's diversity and consistency, and the targets under it."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tdx.report import (
    Preset,
    Run,
    Table,
    mean_final,
    mean_std,
    register_preset,
    target_notes,
)
from tdx.run import read_json

SR_METHODS = {"bicubic": "Bicubic", "srcnn_bicubic": "CNN (bicubic pairs)",
              "srcnn_learned": "CNN (learned-D pairs)", "srnam_bicubic": "SR-NAM, bicubic D",
              "srnam_learned": "SR-NAM, learned D",
              "srnam_bicubic_bp": "SR-NAM, bicubic D + back-projection",
              "srnam_learned_bp": "SR-NAM, learned D + back-projection"}


def srnam_table(runs: list[Run]) -> Table:
    """SR-NAM, Table 1-style: a row per method, PSNR/SSIM (SR-NAM: best of K) per set and
    LR kind, then diversity and consistency (SR-NAM) and seconds per image."""
    finals = [r.summary.get("final", {}) for r in runs]
    sets = sorted({k.split("/")[0] for f in finals for k in f if k.count("/") == 2},
                  key=lambda n: (len(n), n))
    kinds = ("bicubic", "realistic")
    headers = ["Method", *[f"{s} {k} LR PSNR / SSIM" for s in sets for k in kinds],
               "Diversity (realistic)", "Consistency (realistic)", "Sec / image"]

    def cell(key: str, digits: int) -> str:
        vals = [f[key] for f in finals if key in f]
        return mean_std(vals, digits=digits) if vals else "-"

    rows = []
    for m, label in SR_METHODS.items():
        if not any(k.endswith(f"/{m}_psnr") for f in finals for k in f):
            continue  # e.g. back-projection rows of a run from before they existed
        row = [label] + [f"{cell(f'{s}/{k}/{m}_psnr', 2)} / {cell(f'{s}/{k}/{m}_ssim', 4)}"
                         for s in sets for k in kinds]
        row += [" / ".join(cell(f"{s}/realistic/{m}_{x}", 2) for s in sets)
                if m.startswith("srnam") else "-" for x in ("diversity", "consistency")]
        row.append(" / ".join(cell(f"{s}/realistic/{m}_sec", 2) for s in sets))
        rows.append(row)
    return headers, rows


def srnam_notes(runs: list[Run]) -> str:
    f = mean_final(runs)
    learned, bicubic = f.get("degradation/d_psnr_learned"), f.get("degradation/d_psnr_bicubic")
    return ("\nSR-NAM: best of K candidates (mean of K in the run folder); diversity is the "
            "mean per-pixel std across candidates and consistency the mean |D(candidate) - "
            "LR|, both of 255, per set. Closeness to the hidden degradation, PSNR of a "
            f"degradation's output against the hidden pipeline's LR of unseen T91 images: "
            f"learned D {learned} dB (at its Gaussian start {f.get('degradation/d_psnr_start')}"
            f" dB), bicubic {bicubic} dB; spread (std, px) of D's blur "
            f"{f.get('degradation/kernel_std')} against the camera's mean kernel "
            f"{f.get('degradation/camera_kernel_std')}; D's noise level (blind estimate, "
            f"of 255) {f.get('degradation/noise_std')} against the camera's mean "
            f"{f.get('degradation/camera_noise_std')}. G's best latent fit of held-out "
            f"HR patches: {f.get('generator/fit_psnr')} dB"
            + (f" (means over {len(runs)} runs)" if len(runs) > 1 else "") + ".\n"
            + _srnam_settings(runs[0]) + target_notes(srnam_targets(f)))


def srnam_targets(f: dict[str, Any]) -> list[str]:
    """The SR-NAM targets (as the issue states them) on final figures, realistic LR: SR-NAM
    with learned D >= 0.5 dB above SR-NAM with bicubic D (best of K) on every set (raw
    candidates, and after back-projection when there are such rows); the learned-D CNN
    above the bicubic-pairs CNN; the learned D closer to the hidden camera than bicubic;
    K candidates that differ (diversity > 0). Consistency is reported, not judged."""
    sets = sorted({k.split("/")[0] for k in f if k.endswith("/realistic/bicubic_psnr")},
                  key=lambda n: (len(n), n))
    lines = ["Targets (realistic LR):"]

    def verdict(what: str, gains: dict[str, float], ok: Callable[[float], bool],
                unit: str = "") -> None:
        if not gains:
            return
        missing = [s for s in sets if s not in gains]
        met = all(ok(g) for g in gains.values()) and not missing
        lines.append(f"{what}: {'met' if met else 'MISSED'} ("
                     + ", ".join(f"{s} {g:+.2f}{unit}" for s, g in gains.items())
                     + (f"; not run: {', '.join(missing)}" if missing else "") + ")")

    for suffix, what in (("", ""), ("_bp", " + back-projection")):
        verdict(f"SR-NAM{what}, learned D - bicubic D >= +0.5 dB (best of K) on every set",
                _srnam_gains(f, sets, f"srnam_learned{suffix}_psnr",
                             f"srnam_bicubic{suffix}_psnr"), lambda g: g >= 0.5)
    verdict("CNN on learned-D pairs above the bicubic-pairs CNN",
            _srnam_gains(f, sets, "srcnn_learned_psnr", "srcnn_bicubic_psnr"),
            lambda g: g > 0, " dB")
    learned, bicubic = f.get("degradation/d_psnr_learned"), f.get("degradation/d_psnr_bicubic")
    if learned is not None and bicubic is not None:
        lines.append(f"Learned D closer to the hidden camera than bicubic (PSNR of its LR "
                     f"against the camera's on unseen images): "
                     f"{'met' if learned > bicubic else 'MISSED'} ({learned} vs {bicubic} dB)")
    for suffix, what in (("", ""), ("_bp", " + back-projection")):
        div = {s: v for s in sets
               if (v := f.get(f"{s}/realistic/srnam_learned{suffix}_diversity")) is not None}
        cons = {s: v for s in sets
                if (v := f.get(f"{s}/realistic/srnam_learned{suffix}_consistency")) is not None}
        if div:
            lines.append(f"SR-NAM{what}, learned D, diversity > 0: "
                         f"{'met' if all(v > 0 for v in div.values()) else 'MISSED'} ("
                         + ", ".join(f"{s} {v:.2f}" for s, v in div.items()) + " of 255)"
                         + ("; consistency |D(candidate) - LR| (reported): "
                            + ", ".join(f"{s} {v:.2f}" for s, v in cons.items())
                            if cons else ""))
    return lines if len(lines) > 1 else ["Targets (realistic LR): not evaluated"]


def _srnam_gains(f: dict[str, Any], sets: list[str], a: str, b: str) -> dict[str, float]:
    """{set: a - b} on realistic LR, for the sets that have both figures."""
    pairs = {s: (f.get(f"{s}/realistic/{a}"), f.get(f"{s}/realistic/{b}")) for s in sets}
    return {s: x - y for s, (x, y) in pairs.items() if x is not None and y is not None}




def _srnam_settings(run: Run) -> str:
    """What the evaluation used, and where its models came from (`srnam.init_from`)."""
    sr = run.get("config.srnam") or {}
    inf, ev = sr.get("infer", {}), sr.get("eval", {})
    n = ev.get("max_images")
    text = (f"\nEvaluation: {'the first ' + str(n) if n else 'all'} images of each set, "
            f"x{sr.get('scale')}, K={inf.get('k')} candidates, {inf.get('steps')} latent "
            f"steps per candidate, LR patch stride {inf.get('stride')}.")
    if src := sr.get("init_from"):
        commit = read_json(run.locate(src) / "summary.json").get("git_commit")  # {} if absent
        at = f" (trained at commit {commit})" if commit else ""
        reused = run.summary.get("reused_stages")  # None: a run from before it was recorded
        text += (f" Trained models loaded from `{src}`{at}." if reused is None else
                 f" Stage(s) {', '.join(reused)} loaded from `{src}`{at}; the others "
                 "trained in this run.")
    return text + "\n"



register_preset("srnam", Preset(srnam_table, srnam_notes))
