"""Zero-shot KD's table (Rashid et al. 2021, Table 1 at CPU scale): a row per task, the
teacher's score and each recipe's student score (% of the teacher), the budgets and
settings under it, the targets, and the students' curves as a plot."""

from __future__ import annotations

import statistics
from pathlib import Path

from tdx.distill.recipes import RECIPES
from tdx.report import (
    Preset,
    Run,
    Table,
    group,
    load_run,
    mean_curve,
    mean_std,
    pyplot,
    register_preset,
    save_figure,
    seeds_phrase,
    target_notes,
)

ZSKD_SAME = ("zskd.task", "zskd.teacher_from", "zskd.recipe", "seed")  # not a variant
BODY = "zskd.student.body"  # null (the default) is the Transformer body


def _zskd_body(r: Run) -> str:
    return str(r.overrides.get(BODY) or "transformer")


def _zskd_students(runs: list[Run]) -> list[Run]:
    """The student runs (a recipe other than `none`, the teacher only)."""
    return [r for r in runs if r.get("final.recipe") in RECIPES]


def _zskd_settings(runs: list[Run]) -> tuple[dict[int, set[str]], dict[tuple[str, str], set[str]]]:
    """Each student run's changed settings (by id), and per (task, body) the settings all
    of those student runs changed: that task's protocol (e.g. a Siamese STS-B student)
    and the body's own (a TaLK body's width, its pretrained start)."""
    students = _zskd_students(runs)
    changed = {id(r): {f"{k}={v}" for k, v in r.overrides.items() if k not in ZSKD_SAME}
               for r in students}
    by_family: dict[tuple[str, str], list[set[str]]] = {}
    for r in students:
        by_family.setdefault((str(r.get("final.task")), _zskd_body(r)), []).append(
            changed[id(r)])
    return changed, {f: set.intersection(*cs) for f, cs in by_family.items()}


def _zskd_keys(runs: list[Run]) -> dict[int, str]:
    """Each student run's column (by id; teacher-only runs have none): its recipe, or for
    a run that changed settings the other runs of its task and body did not (an ablation
    such as zskd.pgd.steps=0) the recipe and those settings, 'adv_pgd [zskd.pgd.steps=0]',
    so that it never averages into the recipe. A setting every run of a task and body
    shares is protocol, not a variant (`zskd_notes` lists it); a body other than the
    Transformer is named first, 'ood [zskd.student.body=talk]'."""
    changed, per_family = _zskd_settings(runs)
    keys = {}
    for r in _zskd_students(runs):
        body = _zskd_body(r)
        own = sorted(changed[id(r)] - per_family[(str(r.get("final.task")), body)])
        own = ([f"{BODY}={body}"] if body != "transformer" else []) + own
        keys[id(r)] = str(r.get("final.recipe")) + (f" [{', '.join(own)}]" if own else "")
    return keys


def _zskd_task_settings(runs: list[Run]) -> str:
    """The settings every run of one task changed and the other tasks' runs did not, and
    with more than one body, each body's own settings."""
    _, per_family = _zskd_settings(runs)
    per_task: dict[str, set[str]] = {}
    for (t, _), v in per_family.items():
        per_task[t] = per_task[t] & v if t in per_task else set(v)
    if not per_task:
        return ""
    common = set.intersection(*per_task.values())
    own = {t: sorted(v - common) for t, v in sorted(per_task.items()) if v - common}
    text = ""
    if len(per_task) > 1 and own:
        text += ("\nSettings of one task (every recipe in its row): "
                 + "; ".join(f"{t}: {', '.join(v)}" for t, v in own.items()) + ".\n")
    bodies = sorted({b for _, b in per_family})
    if len(bodies) > 1:
        shared = {b: set.intersection(*(v for (_, fb), v in per_family.items() if fb == b))
                  for b in bodies}
        text += ("\nStudent bodies (settings of every run of one body): " + "; ".join(
            f"{b}: {', '.join(sorted(shared[b] - common - {f'{BODY}={b}'})) or 'defaults'}"
            for b in bodies) + ".\n")
    return text


def _zskd_columns(keys: dict[int, str]) -> list[str]:
    """Every recipe in the paper's order, each followed by its variants."""
    have = set(keys.values())
    return [k for recipe in RECIPES
            for k in [recipe, *sorted(v for v in have if v.startswith(recipe + " ["))]]


def _zskd_label(key: str) -> str:
    recipe, _, variant = key.partition(" ")
    return RECIPES[recipe] + (f" {variant}" if variant else "")


def zskd_table(runs: list[Run]) -> Table:
    """Zero-shot KD, a row per task: the teacher's score, then each recipe's student score
    and its % of the teacher (mean ± std over seeds), parameters and compression."""
    keys = _zskd_keys(runs)
    students = [r for r in runs if id(r) in keys]
    columns = _zskd_columns(keys)
    headers = ["Task", "Metric", "Teacher", *map(_zskd_label, columns), "Params T / S",
               "Ratio"]
    rows = []
    for g in sorted(group(students, lambda r: r.get("final.task")),
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
            + target_notes(zskd_targets(_zskd_scores(runs))))




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
    by >= 1 point averaged over tasks; (4) above (3); a TaLK student body within 1 point of
    the Transformer's on (4) and (5b), averaged over the tasks that have both."""
    lines = [f"Targets, from the {len(scores)} task(s) above "
             f"({', '.join(sorted(scores)) or 'none'}):"]
    for v in ("adv_gumbel", "adv_pgd"):
        name = RECIPES[v].split(" ")[0]
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
    for v in ("ood", "adv_pgd"):  # a TaLK body against the Transformer's (same recipe)
        talk = f"{v} [{BODY}=talk]"
        diffs = [rs[talk][0] - rs[v][0] for rs in scores.values() if talk in rs and v in rs]
        if diffs:
            d = statistics.mean(diffs)
            lines.append(f"TaLK student - Transformer student, {RECIPES[v].split(' ')[0]}, "
                         f"mean over {len(diffs)} task(s): {d:+.2f} points (target >= -1: "
                         f"{'met' if d >= -1 else 'MISSED'})")
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
            starts[init] = _zskd_init(init, r)
        budget = (f"teacher {t.get('steps')} updates x {t.get('batch')}; every student "
                  f"{s.get('steps')} updates x {s.get('batch')} (adversarial recipes: + a "
                  f"batch of rewrites per update; Gumbel-MLM generator pre-trained "
                  f"{g.get('pretrain_steps')} updates)")
        by_line.setdefault((budget, starts[init]), []).append(r)
    lines = {f"{budget}; {seeds_phrase(g)}.{start}": g for (budget, start), g in by_line.items()}
    if len(lines) == 1:
        return f"\nBudgets: {next(iter(lines))}\n"
    names = {line: ", ".join(sorted(f"`{r.path.parent.name}/{r.path.name}`" for r in g))
             for line, g in lines.items()}
    return "".join(f"\nBudgets of {names[line]}: {line}\n" for line in sorted(lines))




def _zskd_init(init_from: str | None, run: Run) -> str:
    """How the students' bodies started: the PCA fit of the teacher's word embedding, or
    the task-agnostic body of a `pretrain` run (its updates and command)."""
    if not init_from:
        return " Student bodies start from scratch (word embedding: PCA fit of the teacher's)."
    pt = load_run(run.locate(init_from))
    command = pt.get("command")
    return (f" Every student's body starts from `{init_from}`: "
            f"{pt.get('config.zskd.pretrain.steps') or '?'} updates x "
            f"{pt.get('config.zskd.pretrain.batch') or '?'} of task-agnostic distillation of "
            "the un-fine-tuned teacher on the out-of-domain text (recipe pretrain"
            + (f", `{command}`" if command else "") + ").")



def plot_zskd(runs: list[Run], out: Path) -> None:
    """Student score on the evaluation split over training, zero-shot on out-of-domain
    text (4) against the adversarial recipes (5), a panel per task."""
    plt = pyplot()
    shown = [r for r in runs if r.get("final.recipe") in ("ood", "adv_gumbel", "adv_pgd")]
    keys = _zskd_keys(runs)
    tasks = sorted({str(r.get("final.task")) for r in shown})
    if not tasks:
        return
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.2 * len(tasks), 3.4), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for g in group([r for r in shown if r.get("final.task") == task],
                        lambda r: keys[id(r)]):
            seeds = f" (mean of {len(g)} runs)" if len(g) > 1 else ""
            mean_curve(ax, [r.curve(f"student_{r.get('final.recipe')}/valid", "primary")
                             for r in g], _zskd_label(keys[id(g[0])]) + seeds, marker=".")
        ax.set_title(task)
        ax.set_xlabel("updates")
    axes[0][0].set_ylabel("student score (%)")
    save_figure(fig, axes[0][0], out)



register_preset("zskd", Preset(zskd_table, zskd_notes, plot_zskd))
