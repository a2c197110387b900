"""TaLK Convolutions' tables (Lioutas & Guo 2020) at CPU scale: translation in the manner
of Table 2 and character-level language modelling (Sec. 5.3), a row per model; under each,
TaLK against the Transformer of the same budget (issue 45's targets) and, for translation,
the sacreBLEU signature of the test scores."""

import statistics
from collections.abc import Callable

from tdx.report import (
    Column,
    Run,
    column_preset,
    first,
    params,
    register_preset,
    stat,
    target_notes,
)


def _mean(runs: list[Run], key: str) -> float | None:
    vals = [v for r in runs if isinstance(v := r.get(key), int | float)]
    return statistics.mean(vals) if vals else None


def _arch(runs: list[Run], prefix: str) -> list[Run]:
    return [r for r in runs if str(r.get("config.model.arch")).startswith(prefix)]


def versus_transformer(score: str, name: str, lower_is_better: bool, margin: float,
                       digits: int) -> Callable[[list[Run]], list[str]]:
    """Targets lines: TaLK's `score` within `margin` of the Transformer's (or better), and
    TaLK faster in training tokens/s in the same runs (means over seeds); none unless
    both models were run."""
    def lines(runs: list[Run]) -> list[str]:
        talk, base = _arch(runs, "talkconv"), _arch(runs, "transformer")
        a, b = _mean(talk, score), _mean(base, score)
        if a is None or b is None:
            return []
        d = round((b - a) if lower_is_better else (a - b), digits)  # as printed
        sign = ("<=", "+") if lower_is_better else (">=", "-")
        need = f"{sign[0]} Transformer" + (f" {sign[1]} {margin:g}" if margin else "")
        out = ["Targets (TaLK against the Transformer of the same budget; means over seeds):",
               f"TaLK {name} {need}: {'met' if d >= -margin else 'MISSED'} (TaLK {a:.{digits}f}, "
               f"Transformer {b:.{digits}f}, TaLK {'better' if d >= 0 else 'worse'} by "
               f"{abs(d):.{digits}f})"]
        ra, rb = _mean(talk, "rate_tok_s"), _mean(base, "rate_tok_s")
        if ra and rb:
            out.append(f"TaLK faster in training tokens/s: {'met' if ra > rb else 'MISSED'} "
                       f"({ra:.0f} vs {rb:.0f}, {ra / rb:.3f}x, as each run recorded it)")
        return out
    return lines


def mt_notes(runs: list[Run]) -> str:
    sigs = sorted({str(s) for r in runs if (s := r.get("bleu_signature"))})
    text = (f"\nTest BLEU: sacreBLEU, signature{'s' if len(sigs) > 1 else ''} "
            + ", ".join(f"`{s}`" for s in sigs) + ".\n") if sigs else ""
    targets = versus_transformer("final.bleu_beam5", "test BLEU (beam 5)", False, 0.5, 2)(runs)
    return text + (target_notes(targets) if targets else "")


def lm_notes(runs: list[Run]) -> str:
    targets = versus_transformer("best.loss_nats", "validation loss (nats/char)", True, 0.0,
                                 4)(runs)
    return target_notes(targets) if targets else ""


register_preset("talk-mt", column_preset("config.model.meta.label", "params", [
    Column("Model", first("config.model.meta.label")),
    Column("Params", params),
    Column("BLEU test2016 (beam 5)", stat("final.bleu_beam5", digits=2)),
    Column("BLEU (greedy)", stat("final.bleu_greedy", digits=2)),
    Column("Best valid BLEU (greedy)", stat("best.bleu", digits=2)),
    Column("Train target tok/s", stat("rate_tok_s", digits=0)),
    Column("Generation sent/s (beam 5)", stat("final.sent_per_s_beam5", digits=1)),
    Column("Updates", first("step")),
    Column("Tested", first("tested")),
], notes=mt_notes))

register_preset("talk-lm", column_preset("config.model.meta.label", "params", [
    Column("Model", first("config.model.meta.label")),
    Column("Params", params),
    Column("Valid loss (nats/char)", stat("best.loss_nats", digits=4)),
    Column("Bits per char", stat("best.loss", digits=4)),
    Column("Best at update", first("best.step")),
    Column("Train tok/s", stat("rate_tok_s", digits=0)),
    Column("Updates", first("step")),
], notes=lm_notes))
