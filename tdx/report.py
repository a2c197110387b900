"""`tdx report`: tables and learning curves from run folders, and nothing else.

A run folder is found by its summary.json; its config.yaml, overrides.yaml and
metrics.jsonl give the rest. Rows are runs, or configs (mean ± std over seeds) with
`--aggregate`; columns are the overrides that differ between runs plus the final metrics,
or a paper's preset (`--table copy`).
"""

from __future__ import annotations

import csv
import io
import math
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from omegaconf import OmegaConf

from tdx.config import UsageError
from tdx.run import describe_machine, git_commit, machine_info, read_json, read_metrics

IGNORED_OVERRIDES = ("hydra.", "hydra/", "experiment=", "resume=", "paths.")
# config keys added after some runs were recorded: a run without the key ran as if it had
# this value, so both kinds of run land in one table row
ADDED_CONFIG_KEYS = {"seq_kd_beam": 0}


@dataclass
class Run:
    path: Path
    summary: dict[str, Any]
    config: dict[str, Any]
    overrides: dict[str, str]
    metrics: list[dict[str, Any]] = field(default_factory=list)

    def get(self, dotted: str) -> Any:
        """'params', 'final.bleu_beam5', 'config.model.meta.label', 'override.model'."""
        head, _, rest = dotted.partition(".")
        if head == "config":
            return OmegaConf.select(OmegaConf.create(self.config), rest,
                                    default=ADDED_CONFIG_KEYS.get(rest))
        if head == "override":
            return self.overrides.get(rest)
        node: Any = self.summary
        for part in dotted.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        return node

    def keys(self, dotted: str, default: Any = None) -> tuple:
        """Several `get` keys at once, comma-separated: 'compression.rate,config.x'."""
        return tuple(default if (v := self.get(k)) is None else v for k in dotted.split(","))

    def curve(self, split: str, metric: str) -> list[tuple[int, float]]:
        return [(m["step"], m["metrics"][metric]) for m in self.metrics
                if m["split"] == split and isinstance(m["metrics"].get(metric), int | float)]

    def first_step(self, split: str, metric: str, threshold: float) -> int | None:
        return next((s for s, v in self.curve(split, metric) if v >= threshold), None)


def load_run(d: Path) -> Run:
    """One run folder (its files that are missing read as empty)."""
    cfg_path, ov_path = d / "config.yaml", d / "overrides.yaml"
    ov = yaml.safe_load(ov_path.read_text()) if ov_path.exists() else []
    return Run(d, read_json(d / "summary.json"),
               (yaml.safe_load(cfg_path.read_text()) if cfg_path.exists() else None) or {},
               dict(_override(o) for o in (ov or []) if "=" in o
                    and not o.startswith(IGNORED_OVERRIDES)),
               read_metrics(d / "metrics.jsonl"))


def _override(o: str) -> tuple[str, str]:
    """'key=value' -> (key, value), a boolean spelt as Hydra's grammar reads it: a
    multirun job records `x=True` where a single run records the command line's `x=true`,
    and the two must land in one table column."""
    k, v = o.split("=", 1)
    return k, v.lower() if v.lower() in ("true", "false") else v


def collect(paths: list[Path]) -> list[Run]:
    runs = []
    for root in paths:
        if not Path(root).exists():
            raise UsageError(f"No such run folder: '{root}'.")
        runs += [load_run(summary.parent)
                 for summary in sorted(Path(root).rglob("summary.json"))]
    if not runs:
        raise UsageError(f"No run folders (with summary.json) under: "
                         f"{', '.join(map(str, paths))}.")
    return runs


# ---------------------------------------------------------------------------- cells


def mean_std(values: list[float], scale: float = 1.0, digits: int = 1) -> str:
    vals = [v * scale for v in values if isinstance(v, int | float) and math.isfinite(v)]
    if not vals:
        return "-"
    if len(vals) == 1:
        return f"{vals[0]:.{digits}f}"
    return f"{statistics.mean(vals):.{digits}f} ± {statistics.stdev(vals):.{digits}f}"


@dataclass
class Column:
    header: str
    value: Callable[[list[Run]], str]


def _first(key: str) -> Callable[[list[Run]], str]:
    return lambda runs: str(runs[0].get(key) if runs[0].get(key) is not None else "-")


def _stat(key: str, scale: float = 1.0, digits: int = 1) -> Callable[[list[Run]], str]:
    return lambda runs: mean_std([r.get(key) for r in runs], scale, digits)


def _updates_to(split: str, metric: str, thr: float) -> Callable[[list[Run]], str]:
    def cell(runs: list[Run]) -> str:
        steps = [r.first_step(split, metric, thr) for r in runs]
        hit = [s for s in steps if s is not None]
        if not hit:
            return f"not reached (0/{len(runs)})"
        text = mean_std([float(s) for s in hit], digits=0)
        return text if len(hit) == len(runs) else f"{text} ({len(hit)}/{len(runs)})"
    return cell


def _params(runs: list[Run]) -> str:
    p = runs[0].get("params")
    return f"{p / 1e6:.2f}M" if isinstance(p, int | float) else "-"


# Paper presets: (group key, sort key, columns).
PRESETS: dict[str, tuple[str, str, list[Column]]] = {
    "copy": ("config.model.meta.label", "config.model.meta.degree", [
        Column("Model", _first("config.model.meta.label")),
        Column("Attention", _first("config.model.meta.attention")),
        Column("Degree", _first("config.model.meta.degree")),
        Column("Params", _params),
        Column("Exact match % (greedy)", _stat("final.exact_match_greedy", 100)),
        Column("Exact match % (beam 5)", _stat("final.exact_match_beam5", 100)),
        Column("Token acc % (greedy)", _stat("final.token_acc_greedy", 100)),
        Column("BLEU (beam 5)", _stat("final.bleu_beam5")),
        Column("Updates to 90% EM (valid)", _updates_to("valid", "exact_match", 0.9)),
        Column("Seeds", lambda runs: str(len(runs))),
    ]),
    # TaLK Convolutions (Lioutas & Guo 2020), Table 2-style at CPU scale
    "talk-mt": ("config.model.meta.label", "params", [
        Column("Model", _first("config.model.meta.label")),
        Column("Params", _params),
        Column("BLEU test2016 (beam 5)", _stat("final.bleu_beam5", digits=2)),
        Column("BLEU (greedy)", _stat("final.bleu_greedy", digits=2)),
        Column("Best valid BLEU (greedy)", _stat("best.bleu", digits=2)),
        Column("Train target tok/s", _stat("rate_tok_s", digits=0)),
        Column("Generation sent/s (beam 5)", _stat("final.sent_per_s_beam5", digits=1)),
        Column("Updates", _first("step")),
        Column("Tested", _first("tested")),
    ]),
    "talk-lm": ("config.model.meta.label", "params", [
        Column("Model", _first("config.model.meta.label")),
        Column("Params", _params),
        Column("Valid loss (nats/char)", _stat("best.loss_nats", digits=4)),
        Column("Bits per char", _stat("best.loss", digits=4)),
        Column("Best at update", _first("best.step")),
        Column("Train tok/s", _stat("rate_tok_s", digits=0)),
        Column("Updates", _first("step")),
    ]),
}


# Distilled Embedding (Lioutas et al. 2020), Table 1-style: method x compression, a row per
# fine-tuning recipe too (`embed_table`)
EMBED_COLUMNS = [
    Column("Rate", lambda g: f"{g[0].get('compression.rate')}x"),
    Column("Exact rate", _first("compression.rate_exact")),
    Column("Rank", _first("compression.rank")),
    Column("Embedding params", _stat("compression.embedding_params", digits=0)),
    Column("Model params", _stat("compression.model_params", digits=0)),
    Column("BLEU before FT (beam 5)", _stat("initial.bleu_beam5", digits=2)),
    Column("BLEU after FT (beam 5)", _stat("final.bleu_beam5", digits=2)),
    Column("Teacher BLEU", _stat("teacher.bleu_beam5", digits=2)),
    Column("Seeds", lambda runs: str(len(runs))),
]
# fine-tuning settings besides sequence-level KD, and the teacher: runs that differ in one
# are never pooled as seeds of one row, and a row names the settings its table's runs
# disagree on (how each is shown)
EMBED_RECIPE: dict[str, Callable[[Any], str]] = {
    "teacher.checkpoint": lambda v: f"teacher {Path(str(v)).parent.parent.name}",
    "config.optim.kd_weight": lambda v: f"word KD {v}",
    "config.optim.embed_mse_weight": lambda v: f"emb. MSE {v}",
    "config.optim.kd_temperature": lambda v: f"T = {v}",
    "config.optim.lr_scheduler": lambda v: f"{v} LR",
    "config.trainer.max_update": lambda v: f"{v} updates"}


def _embed_recipes(runs: list[Run]) -> dict[int, tuple[int, tuple[str, ...]]]:
    """Each run's fine-tuning recipe (by id): its sequence-level KD beam (0: reference
    targets) and the EMBED_RECIPE settings on which `runs` disagree, shown as text."""
    def shown(r: Run, k: str) -> str:
        v = r.get(k)
        return EMBED_RECIPE[k](f"{v:g}" if isinstance(v, int | float) else v)

    varying = [k for k in EMBED_RECIPE if len({shown(r, k) for r in runs}) > 1]
    return {id(r): (r.get("config.seq_kd_beam") or 0, tuple(shown(r, k) for k in varying))
            for r in runs}


def _embed_label(recipe: tuple[int, tuple[str, ...]]) -> str:
    """' + seq-KD (beam 5) (word KD 0, emb. MSE 0)': what follows the method's name."""
    beam, settings = recipe
    return (f" + seq-KD (beam {beam})" if beam else "") + (
        f" ({', '.join(settings)})" if settings else "")


def embed_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """A row per method, compression rate and fine-tuning recipe (mean ± std over seeds)."""
    recipe = _embed_recipes(runs)
    groups = sorted(
        _group(runs, lambda r: (r.keys("compression.method,compression.rate"), recipe[id(r)])),
        key=lambda g: (g[0].keys("compression.rate,compression.order", 0), recipe[id(g[0])],
                       str(g[0].get("compression.method"))))
    columns = [Column("Method", lambda g: str(g[0].get("compression.method"))
                      + _embed_label(recipe[id(g[0])])), *EMBED_COLUMNS]
    return [c.header for c in columns], [[c.value(g) for c in columns] for g in groups]


def _numbers(d: dict, prefix: str = "") -> list[str]:
    """The dotted keys of a nested dict's numbers ('student.acc')."""
    out = []
    for k, v in d.items():
        if isinstance(v, dict):
            out += _numbers(v, f"{prefix}{k}.")
        elif isinstance(v, int | float):
            out.append(prefix + k)
    return out


def generic_table(runs: list[Run], aggregate: bool) -> tuple[list[str], list[list[str]]]:
    keys = sorted({k for r in runs for k in r.overrides})
    varying = [k for k in keys if len({r.overrides.get(k) for r in runs}) > 1]
    if aggregate:
        varying = [k for k in varying if k != "seed"]
    finals = sorted({k for r in runs for k in _numbers(r.summary.get("final", {}))})
    groups = _group(runs, lambda r: tuple(r.overrides.get(k) for k in varying)) \
        if aggregate else [[r] for r in runs]
    headers = ([] if aggregate else ["run"]) + varying + ["status", *finals] + \
        (["seeds"] if aggregate else [])
    rows = []
    for g in groups:
        row = [] if aggregate else [str(g[0].path)]
        row += [str(g[0].overrides.get(k, "-")) for k in varying]
        row.append(",".join(sorted({r.summary.get("status", "?") for r in g})))
        row += [mean_std([r.get(f"final.{k}") for r in g], digits=4) for k in finals]
        rows.append(row + ([str(len(g))] if aggregate else []))
    return headers, rows


def _group(runs: list[Run], key: Callable[[Run], Any]) -> list[list[Run]]:
    out: dict[Any, list[Run]] = {}
    for r in runs:
        out.setdefault(key(r), []).append(r)
    return list(out.values())


SR_METHODS = {"bicubic": "Bicubic", "srcnn_bicubic": "CNN (bicubic pairs)",
              "srcnn_learned": "CNN (learned-D pairs)", "srnam_bicubic": "SR-NAM, bicubic D",
              "srnam_learned": "SR-NAM, learned D",
              "srnam_bicubic_bp": "SR-NAM, bicubic D + back-projection",
              "srnam_learned_bp": "SR-NAM, learned D + back-projection"}


def srnam_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
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
    f = _mean_final(runs)
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
            + _srnam_settings(runs[0]) + _target_notes(srnam_targets(f)))


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


def _mean_final(runs: list[Run]) -> dict[str, Any]:
    """The runs' final numbers, each the mean over the runs that have it (as the table)."""
    vals: dict[str, list[float]] = {}
    for r in runs:
        for k, v in r.summary.get("final", {}).items():
            if isinstance(v, int | float):
                vals.setdefault(k, []).append(v)
    return {k: round(statistics.mean(v), 4) for k, v in vals.items()}


def _srnam_settings(run: Run) -> str:
    """What the evaluation used, and where its models came from (`srnam.init_from`)."""
    sr = run.get("config.srnam") or {}
    inf, ev = sr.get("infer", {}), sr.get("eval", {})
    n = ev.get("max_images")
    text = (f"\nEvaluation: {'the first ' + str(n) if n else 'all'} images of each set, "
            f"x{sr.get('scale')}, K={inf.get('k')} candidates, {inf.get('steps')} latent "
            f"steps per candidate, LR patch stride {inf.get('stride')}.")
    if src := sr.get("init_from"):
        commit = read_json(Path(src) / "summary.json").get("git_commit")  # {} if absent
        at = f" (trained at commit {commit})" if commit else ""
        reused = run.summary.get("reused_stages")  # None: a run from before it was recorded
        text += (f" Trained models loaded from `{src}`{at}." if reused is None else
                 f" Stage(s) {', '.join(reused)} loaded from `{src}`{at}; the others "
                 "trained in this run.")
    return text + "\n"


ZSKD_RECIPES = {"labels": "(1) task labels", "kd_task": "(2) KD, task data",
                "random": "(3) ZS random tokens", "ood": "(4) ZS out-of-domain",
                "adv_gumbel": "(5) ZS + adv. Gumbel-MLM", "adv_pgd": "(5b) ZS + adv. PGD"}


ZSKD_SAME = ("zskd.task", "zskd.teacher_from", "zskd.recipe", "seed")  # not a variant


def _zskd_students(runs: list[Run]) -> list[Run]:
    """The student runs (a recipe other than `none`, the teacher only)."""
    return [r for r in runs if r.get("final.recipe") in ZSKD_RECIPES]


def _zskd_settings(runs: list[Run]) -> tuple[dict[int, set[str]], dict[str, set[str]]]:
    """Each student run's changed settings (by id), and per task the settings all of
    that task's student runs changed (its protocol, e.g. a Siamese STS-B student)."""
    students = _zskd_students(runs)
    changed = {id(r): {f"{k}={v}" for k, v in r.overrides.items() if k not in ZSKD_SAME}
               for r in students}
    by_task: dict[str, list[set[str]]] = {}
    for r in students:
        by_task.setdefault(str(r.get("final.task")), []).append(changed[id(r)])
    return changed, {t: set.intersection(*cs) for t, cs in by_task.items()}


def _zskd_keys(runs: list[Run]) -> dict[int, str]:
    """Each student run's column (by id; teacher-only runs have none): its recipe, or for
    a run that changed settings the other runs of its task did not (an ablation such as
    zskd.pgd.steps=0) the recipe and those settings, 'adv_pgd [zskd.pgd.steps=0]', so that
    it never averages into the recipe. A setting every run of a task shares is that task's
    protocol, not a variant (`zskd_notes` lists it)."""
    changed, per_task = _zskd_settings(runs)
    keys = {}
    for r in _zskd_students(runs):
        own = sorted(changed[id(r)] - per_task[str(r.get("final.task"))])
        keys[id(r)] = str(r.get("final.recipe")) + (f" [{', '.join(own)}]" if own else "")
    return keys


def _zskd_task_settings(runs: list[Run]) -> str:
    """The settings every run of one task changed and the other tasks' runs did not."""
    _, per_task = _zskd_settings(runs)
    if len(per_task) < 2:
        return ""
    common = set.intersection(*per_task.values())
    own = {t: sorted(v - common) for t, v in sorted(per_task.items()) if v - common}
    if not own:
        return ""
    return ("\nSettings of one task (every recipe in its row): "
            + "; ".join(f"{t}: {', '.join(v)}" for t, v in own.items()) + ".\n")


def _zskd_columns(keys: dict[int, str]) -> list[str]:
    """Every recipe in the paper's order, each followed by its variants."""
    have = set(keys.values())
    return [k for recipe in ZSKD_RECIPES
            for k in [recipe, *sorted(v for v in have if v.startswith(recipe + " ["))]]


def _zskd_label(key: str) -> str:
    recipe, _, variant = key.partition(" ")
    return ZSKD_RECIPES[recipe] + (f" {variant}" if variant else "")


def zskd_table(runs: list[Run]) -> tuple[list[str], list[list[str]]]:
    """Zero-shot KD, a row per task: the teacher's score, then each recipe's student score
    and its % of the teacher (mean ± std over seeds), parameters and compression."""
    keys = _zskd_keys(runs)
    students = [r for r in runs if id(r) in keys]
    columns = _zskd_columns(keys)
    headers = ["Task", "Metric", "Teacher", *map(_zskd_label, columns), "Params T / S",
               "Ratio"]
    rows = []
    for g in sorted(_group(students, lambda r: r.get("final.task")),
                    key=lambda g: str(g[0].get("final.task"))):
        t = g[0].get("final.teacher") or {}
        metric = "/".join(k for k in t if k != "primary") or "-"
        row = [str(g[0].get("final.task")), metric, f"{t.get('primary', '-')}"]
        for key in columns:
            rs = [r for r in g if keys[id(r)] == key]
            row.append(f"{mean_std([r.get('final.student.primary') for r in rs])} "
                       f"({mean_std([r.get('final.pct_of_teacher') for r in rs])}%)"
                       if rs else "-")
        row.append(f"{g[0].get('final.teacher_params') / 1e6:.1f}M / "
                   f"{g[0].get('final.student_params') / 1e6:.2f}M")
        row.append(f"{g[0].get('final.compression')}x")
        rows.append(row)
    if len(rows) > 1:
        rows.append(_zskd_mean_row(students, len(rows), columns))
    return headers, rows


def _zskd_mean_row(students: list[Run], n_tasks: int, columns: list[str]) -> list[str]:
    """The average over tasks, as papers report it: the teacher's score, then each recipe's
    score and % of the teacher, over the tasks that have the recipe; a column that misses
    some (an ablation run on a few tasks) says on how many, since its mean is then not
    comparable with the others'."""
    scores = _zskd_scores(students)
    teachers = {str(r.get("final.task")): (r.get("final.teacher") or {}).get("primary")
                for r in students}
    t = [v for v in teachers.values() if isinstance(v, int | float)]
    row = [f"mean ({n_tasks} tasks)", "-", f"{statistics.mean(t):.2f}" if t else "-"]
    for key in columns:
        have = [rs[key] for rs in scores.values() if key in rs]
        part = f" [{len(have)} of {n_tasks} tasks]" if len(have) < n_tasks else ""
        row.append(f"{statistics.mean(s for s, _ in have):.1f} "
                   f"({statistics.mean(p for _, p in have):.1f}%){part}" if have else "-")
    return [*row, "", ""]


def zskd_notes(runs: list[Run]) -> str:
    return ("\nScores in percent on each task's evaluation split (SST-2/STS-B dev, MRPC test, "
            "SentEval held-out file); MRPC and STS-B show the mean of their two figures (F1 "
            "and accuracy, Pearson and Spearman). ZS = zero-shot: the student never saw a "
            "task input. (x%) is the student's share of the teacher's score.\n"
            + _zskd_budgets(runs) + _zskd_task_settings(runs)
            + _target_notes(zskd_targets(_zskd_scores(runs))))


def _target_notes(lines: list[str]) -> str:
    return f"\n{lines[0]}\n\n" + "".join(f"- {x}\n" for x in lines[1:])


def _zskd_scores(runs: list[Run]) -> dict[str, dict[str, tuple[float, float]]]:
    """{task: {column: (score, % of the teacher)}}, means over seeds; a column is a recipe
    or one of its variants (see `_zskd_keys`), which the targets do not count."""
    keys = _zskd_keys(runs)
    students = [r for r in runs if id(r) in keys]
    out: dict[str, dict[str, list[tuple[float, float]]]] = {}
    for r in students:
        score, pct = r.get("final.student.primary"), r.get("final.pct_of_teacher")
        if isinstance(score, int | float) and isinstance(pct, int | float):
            out.setdefault(str(r.get("final.task")), {}).setdefault(keys[id(r)], []).append(
                (score, pct))
    return {t: {k: (statistics.mean(s for s, _ in v), statistics.mean(p for _, p in v))
                for k, v in rs.items()} for t, rs in out.items()}


def zskd_targets(scores: dict[str, dict[str, tuple[float, float]]]) -> list[str]:
    """The zero-shot KD targets (Rashid et al. 2021 setting, as the issue states them),
    checked on {task: {recipe: (score, % of the teacher)}}: recipe (5) (each adversarial
    variant) at >= 75% of the teacher on every task and >= 90% on SST-2; (5) above (4)
    by >= 1 point averaged over tasks; (4) above (3)."""
    lines = [f"Targets, from the {len(scores)} task(s) above "
             f"({', '.join(sorted(scores)) or 'none'}):"]
    for v in ("adv_gumbel", "adv_pgd"):
        name = ZSKD_RECIPES[v].split(" ")[0]
        have = {t: rs[v] for t, rs in scores.items() if v in rs}
        if not have:
            continue
        low = min(have, key=lambda t: have[t][1])
        ok = have[low][1] >= 75
        lines.append(f"{name} >= 75% of the teacher on every task: "
                     f"{'met' if ok else 'MISSED'} (lowest {have[low][1]:.1f}% on {low})")
        if "sst2" in have:
            pct = have["sst2"][1]
            lines.append(f"{name} >= 90% of the teacher on SST-2: "
                         f"{'met' if pct >= 90 else 'MISSED'} ({pct:.1f}%)")
        gains = [rs[v][0] - rs["ood"][0] for rs in scores.values() if v in rs and "ood" in rs]
        if gains:
            g = statistics.mean(gains)
            lines.append(f"{name} - (4), mean over {len(gains)} task(s): {g:+.2f} points "
                         f"(target >= +1: {'met' if g >= 1 else 'MISSED'})")
    gaps = {t: rs["ood"][0] - rs["random"][0] for t, rs in scores.items()
            if "ood" in rs and "random" in rs}
    if gaps:
        worse = sorted(t for t, g in gaps.items() if g <= 0)
        lines.append(f"(4) - (3), mean over {len(gaps)} task(s): "
                     f"{statistics.mean(gaps.values()):+.2f} points; (4) > (3) on "
                     f"{len(gaps) - len(worse)} of {len(gaps)}"
                     + (f" (not on {', '.join(worse)})" if worse else "")
                     + f": {'met' if not worse else 'MISSED'}")
    return lines


def _zskd_budgets(runs: list[Run]) -> str:
    """The budgets and seeds the table's student runs used; a teacher-only run (recipe
    none) is left out when students are there, since its config's student settings were
    never used. Runs that differ only in their seed share a line ("seeds 1, 2"); runs
    that differ otherwise (a longer budget, another body) get a line each, named by their
    run folders (parent/name)."""
    by_line: dict[tuple[str, str], list[Run]] = {}  # (budget, body start) -> its runs
    starts: dict[str | None, str] = {}  # init_from -> its sentence (reads that run once)
    for r in _zskd_students(runs) or runs:
        z = r.get("config.zskd") or {}
        t, s, g = z.get("teacher", {}), z.get("student", {}), z.get("gumbel", {})
        init = s.get("init_from")
        if init not in starts:
            starts[init] = _zskd_init(init)
        budget = (f"teacher {t.get('steps')} updates x {t.get('batch')}; every student "
                  f"{s.get('steps')} updates x {s.get('batch')} (adversarial recipes: + a "
                  f"batch of rewrites per update; Gumbel-MLM generator pre-trained "
                  f"{g.get('pretrain_steps')} updates)")
        by_line.setdefault((budget, starts[init]), []).append(r)
    lines = {f"{budget}; {_seeds(g)}.{start}": g for (budget, start), g in by_line.items()}
    if len(lines) == 1:
        return f"\nBudgets: {next(iter(lines))}\n"
    names = {line: ", ".join(sorted(f"`{r.path.parent.name}/{r.path.name}`" for r in g))
             for line, g in lines.items()}
    return "".join(f"\nBudgets of {names[line]}: {line}\n" for line in sorted(lines))


def _seeds(runs: list[Run]) -> str:
    """'seed 1' or 'seeds 1, 2': the seeds a line of notes covers."""
    seeds = sorted({r.get("config.seed") for r in runs}, key=lambda x: (x is None, x or 0))
    return f"seed{'s' * (len(seeds) > 1)} {', '.join(map(str, seeds))}"


def _zskd_init(init_from: str | None) -> str:
    """How the students' bodies started: the PCA fit of the teacher's word embedding, or
    the task-agnostic body of a `pretrain` run (its updates and command)."""
    if not init_from:
        return " Student bodies start from scratch (word embedding: PCA fit of the teacher's)."
    pt = load_run(Path(init_from))
    command = pt.get("command")
    return (f" Every student's body starts from `{init_from}`: "
            f"{pt.get('config.zskd.pretrain.steps') or '?'} updates x "
            f"{pt.get('config.zskd.pretrain.batch') or '?'} of task-agnostic distillation of "
            "the un-fine-tuned teacher on the out-of-domain text (recipe pretrain"
            + (f", `{command}`" if command else "") + ").")


def embed_notes(runs: list[Run]) -> str:
    """The teacher and fine-tuning the embed table's runs used, and its targets."""
    seeds: dict[str, list[Run]] = {}  # a line per setting, with the runs that used it
    for r in runs:
        ckpt = r.get("teacher.checkpoint")
        t = read_json(Path(ckpt).parent.parent / "summary.json") if ckpt else {}
        o = r.get("config.optim") or {}
        kd = o.get("kd_weight", 0)
        line = (f"Teacher: `{r.get('config.teacher')}`, {t.get('step', '?')} updates"
                + (f" (`{'`, then `'.join([t['command'], *t.get('resume_commands', [])])}`)"
                   if t.get("command") else "")
                + f", test BLEU (beam 5) {r.get('teacher.bleu_beam5')}. Fine-tuning: "
                f"{r.get('config.trainer.max_update')} updates of {1 - kd:g} cross-entropy + "
                f"{kd:g} word-level KD (T = {o.get('kd_temperature')}) + "
                f"{o.get('embed_mse_weight')} embedding MSE to the teacher's vectors, "
                f"{o.get('lr_scheduler', '?')} learning rate"
                + (f", on the teacher's beam-{b} translations of the training sources "
                   "(sequence-level KD)" if (b := r.get("config.seq_kd_beam")) else ""))
        seeds.setdefault(line, []).append(r)
    lines = [f"{x}; {_seeds(v)}." for x, v in seeds.items()]
    notes = "".join(f"\n{x}\n" for x in sorted(lines))
    # {fine-tuning recipe: {(method, rate): [BLEU]}}: the targets compare like with like,
    # one block per recipe (teacher, kind of training target, loss weights, ...)
    recipe = _embed_recipes(runs)
    bleu: dict[tuple[int, tuple[str, ...]], dict[tuple[str, float], list[float]]] = {}
    teacher: dict[tuple[int, tuple[str, ...]], list[float]] = {}
    for r in runs:
        m, rate, b = r.get("compression.method"), r.get("compression.rate"), \
            r.get("final.bleu_beam5")
        per = bleu.setdefault(recipe[id(r)], {})
        if isinstance(rate, int | float) and isinstance(b, int | float):
            per.setdefault((str(m), float(rate)), []).append(b)
        if isinstance(t := r.get("teacher.bleu_beam5"), int | float):
            teacher.setdefault(recipe[id(r)], []).append(t)
    for (beam, settings), per in sorted(bleu.items()):
        t = teacher.get((beam, settings))
        targets = embed_targets({k: statistics.mean(v) for k, v in per.items()},
                                statistics.mean(t) if t else None)
        if len(bleu) > 1:
            title = f"sequence-level KD (beam {beam})" if beam else "reference targets"
            targets[0] = targets[0].rstrip(":") + f", {', '.join([title, *settings])}:"
        notes += _target_notes(targets)
    return notes


EMBED_RATES = (4.0, 8.0, 16.0, 32.0)  # the compression rates the targets name


def embed_targets(bleu: dict[tuple[str, float], float], teacher: float | None) -> list[str]:
    """The Distilled Embedding targets (as the issue states them) on {(method, rate): BLEU
    after fine-tuning}: Distilled >= SVD at every rate and >= 1 BLEU above it at 16x and
    32x; at 8x at most 1.0 BLEU below the uncompressed teacher."""
    rates = sorted(r for m, r in bleu if m == "distilled" and ("svd", r) in bleu)
    diff = {r: bleu["distilled", r] - bleu["svd", r] for r in rates}
    lines = ["Targets (BLEU after fine-tuning, beam 5):"]
    if rates:
        shown = ", ".join(f"{r:g}x {d:+.2f}" for r, d in diff.items())
        ok = all(d >= 0 for d in diff.values())
        missing = [r for r in EMBED_RATES if r not in rates]  # a partial study says so
        lines.append(f"Distilled - SVD >= 0 at every rate: {'met' if ok else 'MISSED'} "
                     f"({shown})" + (f"; not run: {', '.join(f'{r:g}x' for r in missing)}"
                                     if missing else ""))
        high = [r for r in rates if r >= 16]
        if high:
            ok = all(diff[r] >= 1 for r in high)
            lines.append(f"Distilled - SVD >= +1 at {' and '.join(f'{r:g}x' for r in high)}: "
                         f"{'met' if ok else 'MISSED'}")
        else:
            lines.append("Distilled - SVD >= +1 at 16x and 32x: not run")
    if ("distilled", 8.0) in bleu and teacher is not None:
        loss = teacher - bleu["distilled", 8.0]
        lines.append(f"Distilled at 8x within 1.0 BLEU of the uncompressed teacher "
                     f"({teacher:.2f}): {'met' if loss <= 1 else 'MISSED'} ({loss:.2f} below)")
    return lines


CUSTOM_TABLES: dict[str, Callable[[list[Run]], tuple[list[str], list[list[str]]]]] = {
    "srnam": srnam_table, "zskd": zskd_table, "embed": embed_table}
NOTES: dict[str, Callable[[list[Run]], str]] = {"srnam": srnam_notes, "zskd": zskd_notes,
                                                "embed": embed_notes}


def preset_table(runs: list[Run], name: str) -> tuple[list[str], list[list[str]]]:
    if name not in PRESETS and name not in CUSTOM_TABLES:
        raise UsageError(f"Unknown table preset '{name}'. Presets: "
                         f"{', '.join([*PRESETS, *CUSTOM_TABLES])}.")
    done = [r for r in runs if r.summary.get("status") == "completed"]
    if name in CUSTOM_TABLES:
        return CUSTOM_TABLES[name](done)
    group_key, sort_key, columns = PRESETS[name]
    groups = sorted(_group(done, lambda r: r.keys(group_key)),
                    key=lambda g: (g[0].keys(sort_key, 0), str(g[0].keys(group_key))))
    return [c.header for c in columns], [[c.value(g) for c in columns] for g in groups]


# ---------------------------------------------------------------------------- output


def render(headers: list[str], rows: list[list[str]], fmt: str) -> str:
    if fmt == "csv":
        buf = io.StringIO()
        csv.writer(buf).writerows([headers, *rows])
        return buf.getvalue()
    if fmt == "latex":
        esc = lambda s: str(s).replace("%", r"\%").replace("±", r"$\pm$").replace("_", r"\_")  # noqa: E731
        lines = [r"\begin{tabular}{" + "l" * len(headers) + "}", r"\toprule",
                 " & ".join(map(esc, headers)) + r" \\", r"\midrule"]
        lines += [" & ".join(map(esc, r)) + r" \\" for r in rows]
        return "\n".join([*lines, r"\bottomrule", r"\end{tabular}"]) + "\n"
    if fmt == "md":
        lines = ["| " + " | ".join(headers) + " |", "|" + "---|" * len(headers)]
        return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows]) + "\n"
    raise UsageError(f"Unknown format '{fmt}': use md, csv or latex.")


def stamp(runs: list[Run], command: str) -> str:
    """Provenance: the report command, the training commands and commits of the runs."""
    commits = sorted({str(r.summary.get("git_commit", "unknown")) for r in runs})
    train_cmds = sorted({str(c) for r in runs for c in [r.summary.get("command"),
                                                         *r.summary.get("resume_commands", [])]
                         if c})
    run0 = runs[0].summary  # the machine the runs trained on; this one for old summaries
    lines = [f"- Report command: `{command}` (tdx commit {git_commit()}, "
             f"{time.strftime('%Y-%m-%d %H:%M')})",
             *[f"- Training command: `{c}`" for c in train_cmds],
             f"- Runs: {len(runs)} from `{_common_root(runs)}`, trained at commit(s) "
             f"{', '.join(commits)}",
             f"- Machine: {describe_machine(run0 if 'cpu' in run0 else machine_info())}"]
    return "\n".join(lines) + "\n"


def _common_root(runs: list[Run]) -> str:
    import os
    return os.path.commonpath([str(r.path) for r in runs])


def plot(runs: list[Run], out: Path, split: str, metric: str, group_key: str | None) -> None:
    """Learning curves: `split`/`metric` against updates, mean over the runs of a group
    with a min-max band."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    key = (lambda r: str(r.get(group_key))) if group_key else (lambda r: r.path.name)
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for g in _group(runs, key):
        _mean_curve(ax, [r.curve(split, metric) for r in g], f"{key(g[0])} (n={len(g)})")
    ax.set_xlabel("updates")
    ax.set_ylabel(f"{split} {metric}")
    _save_figure(fig, ax, out)


def _mean_curve(ax: Any, curves: list[list[tuple[int, float]]], label: str,
                marker: str | None = None) -> None:
    """The mean of several runs' curves at the updates they all logged, with a min-max
    band when there is more than one run."""
    points = [dict(c) for c in curves]
    steps = sorted(set.intersection(*(set(c) for c in points))) if points else []
    if not steps:
        return
    vals = [[c[s] for c in points] for s in steps]
    ax.plot(steps, [statistics.mean(v) for v in vals], marker=marker, label=label)
    if len(points) > 1:
        ax.fill_between(steps, [min(v) for v in vals], [max(v) for v in vals], alpha=0.15)


def _save_figure(fig: Any, ax: Any, out: Path) -> None:
    import matplotlib.pyplot as plt

    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120, bbox_inches="tight")  # a long legend label is not cut off
    plt.close(fig)


def plot_embed(runs: list[Run], out: Path) -> None:
    """BLEU after fine-tuning against embedding compression, a line per method (and
    fine-tuning recipe), and the uncompressed teacher as a horizontal line."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    done = [r for r in runs if r.summary.get("status") == "completed"]
    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    recipe = _embed_recipes(done)
    for g in _group(done, lambda r: (r.get("compression.method"), recipe[id(r)])):
        by_rate = _group(g, lambda r: r.get("compression.rate"))
        pts = sorted((g2[0].get("compression.rate"),
                      statistics.mean(r.get("final.bleu_beam5") for r in g2)) for g2 in by_rate)
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                label=str(g[0].get("compression.method")) + _embed_label(recipe[id(g[0])]))
    teachers = _group([r for r in done if r.get("teacher.bleu_beam5")],
                      lambda r: r.get("teacher.checkpoint"))
    for g in teachers:  # a line per teacher, as the rows and targets have
        name = EMBED_RECIPE["teacher.checkpoint"](g[0].get("teacher.checkpoint"))
        ax.axhline(statistics.mean(r.get("teacher.bleu_beam5") for r in g), color="k",
                   ls="--", lw=1,
                   label="uncompressed" + (f" ({name})" if len(teachers) > 1 else ""))
    ax.set_xscale("log", base=2)
    ax.set_xlabel("embedding compression (x)")
    ax.set_ylabel("test BLEU after fine-tuning (beam 5)")
    _save_figure(fig, ax, out)


def plot_zskd(runs: list[Run], out: Path) -> None:
    """Student score on the evaluation split over training, zero-shot on out-of-domain
    text (4) against the adversarial recipes (5), a panel per task."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in runs if r.get("final.recipe") in ("ood", "adv_gumbel", "adv_pgd")]
    keys = _zskd_keys(runs)
    tasks = sorted({str(r.get("final.task")) for r in shown})
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for g in _group([r for r in shown if r.get("final.task") == task],
                        lambda r: keys[id(r)]):
            seeds = f" (mean of {len(g)} runs)" if len(g) > 1 else ""
            _mean_curve(ax, [r.curve(f"student_{r.get('final.recipe')}/valid", "primary")
                             for r in g], _zskd_label(keys[id(g[0])]) + seeds, marker=".")
        ax.set_title(task)
        ax.set_xlabel("updates")
    axes[0][0].set_ylabel("student score (%)")
    _save_figure(fig, axes[0][0], out)


PLOTS: dict[str, Callable[[list[Run], Path], None]] = {"embed": plot_embed, "zskd": plot_zskd}


def report(paths: list[Path], fmt: str = "md", preset: str | None = None,
           aggregate: bool = False, out: Path | None = None, plot_file: Path | None = None,
           plot_metric: str = "valid.exact_match", command: str = "tdx report") -> str:
    git_commit()  # read (and cached) before this report rewrites tracked files in results/
    runs = collect(paths)
    headers, rows = preset_table(runs, preset) if preset else generic_table(runs, aggregate)
    text = render(headers, rows, fmt)
    if plot_file and preset in PLOTS:
        PLOTS[preset](runs, plot_file)
    elif plot_file:
        split, _, metric = plot_metric.partition(".")
        plot(runs, plot_file, split, metric, PRESETS[preset][0] if preset in PRESETS else None)
    if out:
        body = text
        if fmt == "md":
            title = f"# {preset or 'tdx'} results\n\n"
            failed = [r for r in runs if r.summary.get("status") != "completed"]
            note = (f"\n{len(failed)} run(s) not completed and left out: "
                    + ", ".join(f"{r.path.name} ({r.summary.get('status')})" for r in failed)
                    + "\n") if failed and preset else ""
            done = [r for r in runs if r.summary.get("status") == "completed"]
            extra = NOTES[preset](done) if preset in NOTES and done else ""
            body = title + text + extra + note + "\n" + stamp(runs, command)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(body)
    return text
