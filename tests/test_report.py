"""`tdx report` reads run folders only: tables in md/csv/latex, seeds aggregated, curves."""

import csv
import io
import json

import yaml

from tdx.report import mean_std, report
from tdx.run import RunDir, atomic_write, read_metrics

from .conftest import tdx


def make_run(root, name, seed, model, degree, em, curve):
    run = RunDir(root / name)
    run.write_config({"name": "copy-study", "seed": seed,
                      "model": {"meta": {"label": model, "attention": "x", "degree": degree}}},
                     [f"seed={seed}", f"model={model}", "experiment=copy-study"])
    run.start(seed, "copy-study")
    for step, v in curve:
        run.log(step, "valid", {"exact_match": v})
    run.finish("completed", params=1_500_000, final={"exact_match_greedy": em,
                                                     "exact_match_beam5": em,
                                                     "token_acc_greedy": em,
                                                     "bleu_beam5": 100 * em})
    return run.path


def fixture_runs(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "0", 1, "lstm", 0, 0.20, [(100, 0.1), (200, 0.2)])
    make_run(root, "1", 2, "lstm", 0, 0.30, [(100, 0.1), (200, 0.3)])
    make_run(root, "2", 1, "transformer", 3, 0.95, [(100, 0.5), (200, 0.95)])
    make_run(root, "3", 2, "transformer", 3, 0.99, [(100, 0.92), (200, 0.99)])
    return root


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0"
    assert mean_std([0.5], scale=100) == "50.0"
    assert mean_std([]) == "-"


def test_generic_table_one_row_per_run_and_aggregated(tmp_path):
    root = fixture_runs(tmp_path)
    rows = list(csv.reader(io.StringIO(report([root], fmt="csv"))))
    assert rows[0][:4] == ["run", "model", "seed", "status"]
    assert len(rows) == 5
    agg = list(csv.reader(io.StringIO(report([root], fmt="csv", aggregate=True))))
    assert agg[0][0] == "model" and "seed" not in agg[0] and agg[0][-1] == "seeds"
    lstm = next(r for r in agg if r[0] == "lstm")
    assert lstm[agg[0].index("exact_match_greedy")] == "0.2500 ± 0.0707"


def test_generic_table_shows_nested_final_numbers(tmp_path):
    """A summary's nested figures ({'student': {'acc': ..}}) get dotted columns."""
    from tdx.report import Run, generic_table

    runs = [Run(tmp_path, {"final": {"student": {"acc": acc, "name": "x"}, "ratio": 20.7}},
                {}, {"zskd.student.rank": rank}) for rank, acc in (("10", 79.2), ("22", 79.7))]
    headers, rows = generic_table(runs, aggregate=False)
    assert headers == ["run", "zskd.student.rank", "status", "ratio", "student.acc"]
    assert [r[-1] for r in rows] == ["79.2000", "79.7000"]


def test_copy_preset_orders_by_attention_and_counts_updates(tmp_path):
    root = fixture_runs(tmp_path)
    md = report([root], fmt="md", preset="copy")
    body = md.splitlines()[2:]
    assert body[0].startswith("| lstm") and body[1].startswith("| transformer")
    assert "not reached (0/2)" in body[0]
    assert "150 ± 71" in body[1]  # 90% reached at 200 and at 100 updates
    assert "97.0 ± 2.8" in body[1]


def test_latex_and_written_file_with_provenance(tmp_path):
    root = fixture_runs(tmp_path)
    tex = report([root], fmt="latex", preset="copy")
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex
    out, png = tmp_path / "results" / "copy.md", tmp_path / "results" / "curves.png"
    report([root], preset="copy", out=out, plot_file=png, command="make table-copy")
    text = out.read_text()
    assert "make table-copy" in text and "commit" in text and "Machine" in text
    assert png.stat().st_size > 1000


def test_report_cli(tmp_path):
    root = fixture_runs(tmp_path)
    proc = tdx("report", str(root), "--format", "csv", "--aggregate", cwd=tmp_path, check=True)
    assert "lstm" in proc.stdout
    bad = tdx("report", str(root), "--format", "xls", cwd=tmp_path)
    assert bad.returncode == 2 and "Unknown format" in bad.stderr


def test_atomic_write_and_metrics_truncation(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write(p, "1")
    atomic_write(p, "2")
    assert p.read_text() == "2" and list(p.parent.iterdir()) == [p]
    run = RunDir(tmp_path / "run")
    for step in (5, 10, 15):
        run.log(step, "train", {"loss": float(step)})
    run.truncate_metrics(10)
    assert [m["step"] for m in read_metrics(run.metrics_path)] == [5, 10]
    run.log(15, "train", {"loss": float("nan")})
    assert json.loads(run.metrics_path.read_text().splitlines()[-1])["metrics"]["loss"] == "nan"


def test_overrides_are_recorded(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config({"a": 1}, ["a=1"])
    assert yaml.safe_load((run.path / "overrides.yaml").read_text()) == ["a=1"]


def test_srnam_table_states_settings_and_model_source(tmp_path, monkeypatch):
    """The SR-NAM table: a row per method, and the notes say which images and inference
    settings were used and where the trained models came from."""
    monkeypatch.chdir(tmp_path)
    src = RunDir(tmp_path / "trained")
    src.start(1, "srnam")
    src.finish("completed")
    run = RunDir(tmp_path / "eval")
    run.write_config({"name": "srnam", "seed": 1, "srnam": {
        "scale": 4, "init_from": "trained", "infer": {"k": 4, "steps": 20, "stride": 6},
        "eval": {"max_images": 5}}}, ["experiment=srnam"])
    run.start(1, "srnam")
    final = {f"Set5/{kind}/{m}_{x}": 20.0 for kind in ("bicubic", "realistic")
             for m in ("bicubic", "srnam_learned") for x in ("psnr", "ssim", "sec")}
    run.finish("completed", final=final, reused_stages=["generator"])
    out = tmp_path / "srnam.md"
    report([run.path], preset="srnam", out=out)
    text = out.read_text()
    assert "| SR-NAM, learned D | 20.00 / 20.0000 | 20.00 / 20.0000 |" in text
    assert "CNN" not in text and "back-projection" not in text  # methods the run lacks
    assert "the first 5 images of each set, x4, K=4 candidates, 20 latent steps" in text
    commit = json.loads((src.path / "summary.json").read_text())["git_commit"]
    assert (f"Stage(s) generator loaded from `trained` (trained at commit {commit}); the "
            "others trained in this run.") in text


def test_srnam_targets_from_hand_numbers():
    from tdx.report import srnam_targets

    f = {"degradation/d_psnr_learned": 31.5, "degradation/d_psnr_bicubic": 27.4}
    for s, (learned, bicubic, cnn) in {"Set5": (23.0, 22.0, 0.1),
                                       "Set14": (21.3, 21.0, -0.2)}.items():
        f |= {f"{s}/realistic/bicubic_psnr": 25.0,
              f"{s}/realistic/srnam_learned_psnr": learned,
              f"{s}/realistic/srnam_bicubic_psnr": bicubic,
              f"{s}/realistic/srcnn_bicubic_psnr": 26.0,
              f"{s}/realistic/srcnn_learned_psnr": 26.0 + cnn,
              f"{s}/realistic/srnam_learned_diversity": 4.0,
              f"{s}/realistic/srnam_learned_consistency": 1.5}
    lines = srnam_targets(f)
    assert lines == [
        "Targets (realistic LR):",
        "SR-NAM, learned D - bicubic D >= +0.5 dB (best of K) on every set: MISSED "
        "(Set5 +1.00, Set14 +0.30)",
        "CNN on learned-D pairs above the bicubic-pairs CNN: MISSED (Set5 +0.10 dB, "
        "Set14 -0.20 dB)",
        "Learned D closer to the hidden camera than bicubic (PSNR of its LR against the "
        "camera's on unseen images): met (31.5 vs 27.4 dB)",
        "SR-NAM, learned D, diversity > 0: met (Set5 4.00, Set14 4.00 of 255); consistency "
        "|D(candidate) - LR| (reported): Set5 1.50, Set14 1.50"]
    f["Set14/realistic/srnam_learned_psnr"] = 21.6
    assert "on every set: met (Set5 +1.00, Set14 +0.60)" in srnam_targets(f)[1]
    # back-projection rows are judged on their own; a set without a figure is not a pass
    f |= {"Set5/realistic/srnam_learned_bp_psnr": 26.0,
          "Set5/realistic/srnam_bicubic_bp_psnr": 25.0}
    assert srnam_targets(f)[2] == ("SR-NAM + back-projection, learned D - bicubic D >= +0.5 dB "
                                   "(best of K) on every set: MISSED (Set5 +1.00; not run: Set14)")
    del f["Set14/realistic/srnam_learned_consistency"]
    assert srnam_targets(f)[-1].endswith("(Set5 4.00, Set14 4.00 of 255); consistency "
                                         "|D(candidate) - LR| (reported): Set5 1.50")
    assert srnam_targets({}) == ["Targets (realistic LR): not evaluated"]


def test_zskd_targets_from_hand_numbers():
    from tdx.report import zskd_targets

    scores = {"sst2": {"random": (50.0, 56.0), "ood": (65.0, 74.0),
                       "adv_gumbel": (80.0, 91.0), "adv_pgd": (66.0, 75.0)},
              "mr": {"random": (52.0, 60.0), "ood": (51.0, 59.0),
                     "adv_gumbel": (64.0, 74.0), "adv_pgd": (52.5, 61.0)}}
    lines = zskd_targets(scores)
    assert lines[0] == "Targets, from the 2 task(s) above (mr, sst2):"
    assert "(5) >= 75% of the teacher on every task: MISSED (lowest 74.0% on mr)" in lines
    assert "(5) >= 90% of the teacher on SST-2: met (91.0%)" in lines
    assert "(5) - (4), mean over 2 task(s): +14.00 points (target >= +1: met)" in lines
    assert "(5b) - (4), mean over 2 task(s): +1.25 points (target >= +1: met)" in lines
    assert "(5b) >= 90% of the teacher on SST-2: MISSED (75.0%)" in lines
    assert lines[-1] == ("(4) - (3), mean over 2 task(s): +7.00 points; (4) > (3) on 1 of 2 "
                         "(not on mr): MISSED")


def test_embed_table_states_teacher_budget_and_targets(tmp_path):
    """The embed table's notes: the teacher (its updates read from its run folder), the
    fine-tuning budget and losses, and the targets from the rows above, one block per
    fine-tuning recipe; runs of different recipes are never pooled as seeds of a row."""
    teacher = RunDir(tmp_path / "teacher")  # trained on by a resume with a longer budget
    teacher.start(1, "talk-mt", command="tdx train talk-mt u=750")
    teacher.start(1, "talk-mt", resumed=True, command="tdx train talk-mt u=1500 resume=t")
    teacher.finish("completed", step=1500)
    # the 4th run predates `seq_kd_beam` (its config lacks the key): it trained on the
    # references, so it is the svd row's second seed, not a row of its own; the last two
    # fine-tuned with cross-entropy alone (an ablation): rows of their own
    for i, (method, b, beam, seed, kd, mse) in enumerate([
            ("svd", 20.0, 0, 1, 0.5, 1.0), ("distilled", 19.5, 0, 1, 0.5, 1.0),
            ("distilled", 20.5, 5, 1, 0.5, 1.0), ("svd", 21.0, None, 2, 0.5, 1.0),
            ("svd", 18.0, 0, 1, 0.0, 0.0), ("distilled", 18.5, 0, 1, 0.0, 0.0)]):
        run = RunDir(tmp_path / "sweep" / str(i))
        run.write_config({"name": "embed", "seed": seed, "teacher": "teacher",
                          **({} if beam is None else {"seq_kd_beam": beam}),
                          "trainer": {"max_update": 150},
                          "optim": {"kd_weight": kd, "kd_temperature": 1.0,
                                    "embed_mse_weight": mse, "lr_scheduler": "inverse_sqrt"}},
                         ["experiment=embed", f"model.embed_method={method}"])
        run.start(1, "embed", command=f"tdx train embed r={i}")
        if i == 0:
            run.start(1, "embed", resumed=True, command="tdx train embed r=0 resume=x")
        run.finish("completed", final={"bleu_beam5": b}, initial={"bleu_beam5": 1.0},
                   compression={"method": method, "rate": 8, "rank": 30},
                   teacher={"checkpoint": str(teacher.path / "checkpoints" / "x.pt"),
                            "bleu_beam5": 21.0})
    out = tmp_path / "embed.md"
    report([tmp_path / "sweep"], preset="embed", out=out)
    text = out.read_text()
    assert ("Teacher: `teacher`, 1500 updates (`tdx train talk-mt u=750`, then `tdx train "
            "talk-mt u=1500 resume=t`), test BLEU (beam 5) 21.0. Fine-tuning: 150 "
            "updates of 0.5 cross-entropy + 0.5 word-level KD (T = 1.0) + 1.0 embedding MSE"
            in text)
    assert ("embedding MSE to the teacher's vectors, inverse_sqrt learning rate; seeds 1, 2.\n"
            in text)
    assert ("embedding MSE to the teacher's vectors, inverse_sqrt learning rate, on the "
            "teacher's beam-5 translations of the training sources (sequence-level KD); "
            "seed 1.\n" in text)
    assert "updates of 1 cross-entropy + 0 word-level KD (T = 1.0) + 0.0 embedding MSE" in text
    rows = {line.split(" | ")[0][2:]: line for line in text.splitlines()
            if line.startswith("| ") and " | 8x | " in line}
    assert set(rows) == {"svd (word KD 0.5, emb. MSE 1)", "distilled (word KD 0.5, emb. MSE 1)",
                         "distilled + seq-KD (beam 5) (word KD 0.5, emb. MSE 1)",
                         "svd (word KD 0, emb. MSE 0)", "distilled (word KD 0, emb. MSE 0)"}
    assert rows["svd (word KD 0.5, emb. MSE 1)"].endswith("| 2 |")  # one row, two seeds
    assert "| 18.00 |" in rows["svd (word KD 0, emb. MSE 0)"]
    # one block of targets per fine-tuning recipe, never pooled
    blocks = text.split("Targets (BLEU after fine-tuning, beam 5), ")[1:]
    assert len(blocks) == 3
    ce, refs, seq = sorted(blocks)
    assert refs.startswith("reference targets, word KD 0.5, emb. MSE 1:")
    assert seq.startswith("sequence-level KD (beam 5), word KD 0.5, emb. MSE 1:")
    assert ce.startswith("reference targets, word KD 0, emb. MSE 0:")
    assert ("- Distilled - SVD >= 0 at every rate: MISSED (8x -1.00); not run: 4x, 16x, 32x"
            in refs)
    assert "- Distilled - SVD >= +1 at 16x and 32x: not run" in refs
    assert "uncompressed teacher (21.00): MISSED (1.50 below)" in refs
    assert "uncompressed teacher (21.00): met (0.50 below)" in seq and "SVD" not in seq
    assert "- Distilled - SVD >= 0 at every rate: met (8x +0.50)" in ce
    assert "- Training command: `tdx train embed r=5`" in text
    assert "- Training command: `tdx train embed r=0 resume=x`" in text  # both parts
    assert "- Training command: `tdx train embed r=0`" in text
    # without the ablation runs the table's runs agree on the losses: plain method names
    for i in (4, 5):
        (tmp_path / "sweep" / str(i) / "summary.json").unlink()
    report([tmp_path / "sweep"], preset="embed", out=out)
    text = out.read_text()
    assert "| distilled | 8x |" in text and "| distilled + seq-KD (beam 5) | 8x |" in text


def test_embed_targets_from_hand_numbers():
    from tdx.report import embed_targets

    bleu = {("svd", 4.0): 30.0, ("distilled", 4.0): 30.5, ("svd", 8.0): 29.0,
            ("distilled", 8.0): 29.5, ("svd", 16.0): 25.0, ("distilled", 16.0): 26.5,
            ("svd", 32.0): 20.0, ("distilled", 32.0): 20.4, ("groupreduce", 8.0): 31.0}
    lines = embed_targets(bleu, teacher=30.25)
    assert lines[1] == ("Distilled - SVD >= 0 at every rate: met "
                        "(4x +0.50, 8x +0.50, 16x +1.50, 32x +0.40)")
    assert lines[2] == "Distilled - SVD >= +1 at 16x and 32x: MISSED"  # +0.40 at 32x
    assert lines[3] == ("Distilled at 8x within 1.0 BLEU of the uncompressed teacher (30.25): "
                        "met (0.75 below)")
    bleu["distilled", 4.0] = 29.9
    assert "MISSED (4x -0.10," in embed_targets(bleu, None)[1]
    assert len(embed_targets(bleu, None)) == 3  # no teacher figure: no 8x line


def test_zskd_table_ends_with_the_mean_over_tasks(tmp_path):
    from tdx.report import Run, zskd_table

    def student(task, teacher, recipe, score, pct):
        final = {"task": task, "recipe": recipe, "teacher": {"acc": teacher, "primary": teacher},
                 "student": {"primary": score}, "pct_of_teacher": pct,
                 "teacher_params": 22_700_000, "student_params": 730_000, "compression": 31.1}
        return Run(tmp_path, {"final": final}, {}, {})

    runs = [student("sst2", 88.0, "ood", 66.0, 75.0), student("sst2", 88.0, "adv_pgd", 70.0, 79.5),
            student("mr", 84.0, "ood", 60.0, 71.4), student("mr", 84.0, "adv_pgd", 64.0, 76.2)]
    headers, rows = zskd_table(runs)
    assert [r[0] for r in rows] == ["mr", "sst2", "mean (2 tasks)"]
    mean = dict(zip(headers, rows[-1], strict=True))
    assert mean["Teacher"] == "86.00" and mean["(1) task labels"] == "-"
    assert mean["(4) ZS out-of-domain"] == "63.0 (73.2%)"
    assert mean["(5b) ZS + adv. PGD"] == "67.0 (77.8%)"
    assert zskd_table(runs[:2])[1][-1][0] == "sst2"  # one task: no mean row


def test_zskd_ablation_runs_get_their_own_column(tmp_path):
    """A run that changed a setting the others did not (zskd.pgd.steps=0) is a column of
    its own, next to its recipe, and is neither averaged into it nor counted by the
    targets; settings every run shares (a budget) make no column."""
    from tdx.report import Run, _zskd_scores, zskd_table, zskd_targets

    def student(recipe, score, task="sst2", **extra):
        final = {"task": task, "recipe": recipe, "teacher": {"acc": 88.0, "primary": 88.0},
                 "student": {"primary": score}, "pct_of_teacher": round(score / 0.88, 1),
                 "teacher_params": 22_700_000, "student_params": 730_000, "compression": 31.1}
        ov = {"zskd.task": task, "zskd.recipe": recipe, "zskd.student.steps": "600", **extra}
        return Run(tmp_path, {"final": final}, {}, ov)

    runs = [student("ood", 71.0), student("adv_pgd", 75.0),
            student("adv_pgd", 72.0, **{"zskd.pgd.steps": "0"})]
    headers, rows = zskd_table(runs)
    cells = dict(zip(headers, rows[0], strict=True))
    assert cells["(5b) ZS + adv. PGD"] == "75.0 (85.2%)"
    assert cells["(5b) ZS + adv. PGD [zskd.pgd.steps=0]"] == "72.0 (81.8%)"
    assert headers.index("(5b) ZS + adv. PGD [zskd.pgd.steps=0]") == \
        headers.index("(5b) ZS + adv. PGD") + 1
    assert not any("steps=600" in h for h in headers)
    assert "(5b) - (4), mean over 1 task(s): +4.00 points (target >= +1: met)" in \
        zskd_targets(_zskd_scores(runs))
    # a second task without the ablation: its mean says it covers 1 of the 2 tasks
    runs += [student("ood", 70.0, task="cr"), student("adv_pgd", 73.0, task="cr")]
    headers, rows = zskd_table(runs)
    mean = dict(zip(headers, rows[-1], strict=True))
    assert mean["(5b) ZS + adv. PGD"] == "74.0 (84.1%)"
    assert mean["(5b) ZS + adv. PGD [zskd.pgd.steps=0]"] == "72.0 (81.8%) [1 of 2 tasks]"


def test_a_setting_every_run_of_a_task_shares_is_that_tasks_protocol(tmp_path):
    """STS-B's runs all Siamese, MRPC's not: STS-B's recipes stay in the recipe columns
    (the targets count them) and the notes name the setting; a second MRPC run that only
    it changed is still a variant."""
    from tdx.report import Run, _zskd_scores, zskd_notes, zskd_table, zskd_targets

    def student(task, recipe, score, **extra):
        final = {"task": task, "recipe": recipe, "teacher": {"primary": 80.0},
                 "student": {"primary": score}, "pct_of_teacher": score / 0.8,
                 "teacher_params": 22_700_000, "student_params": 790_000, "compression": 28.9}
        ov = {"zskd.task": task, "zskd.recipe": recipe, "zskd.student.init_from": "/p", **extra}
        return Run(tmp_path, {"final": final}, {}, ov)

    siamese = {"zskd.student.siamese": "true"}
    runs = [student("stsb", "ood", 64.0, **siamese), student("stsb", "adv_pgd", 66.0, **siamese),
            student("mrpc", "ood", 72.0), student("mrpc", "adv_pgd", 70.0),
            student("mrpc", "adv_pgd", 71.0, **{"zskd.student.balance": "true"})]
    headers, rows = zskd_table(runs)
    assert [h for h in headers if "[" in h] == \
        ["(5b) ZS + adv. PGD [zskd.student.balance=true]"]
    cells = dict(zip(headers, rows[1], strict=True))
    assert rows[1][0] == "stsb" and cells["(5b) ZS + adv. PGD"] == "66.0 (82.5%)"
    notes = zskd_notes(runs)
    assert "Settings of one task (every recipe in its row): stsb: " \
           "zskd.student.siamese=true." in notes
    assert "init_from" not in notes.split("Settings of one task")[1].split("\n")[0]
    assert "(5b) - (4), mean over 2 task(s): +0.00 points (target >= +1: MISSED)" in \
        zskd_targets(_zskd_scores(runs))


def test_a_multirun_and_a_single_run_spell_a_boolean_override_alike(tmp_path):
    """Hydra's multirun records `x=True` for the command line's `x=true`: one column."""
    from tdx.report import collect, zskd_table

    for name, spelt in (("multi", "True"), ("single", "true")):
        d = tmp_path / name
        d.mkdir()
        recipe = "ood" if name == "multi" else "adv_pgd"
        (d / "summary.json").write_text(json.dumps({"final": {
            "task": "stsb", "recipe": recipe, "teacher": {"primary": 85.0},
            "student": {"primary": 64.0}, "pct_of_teacher": 75.3,
            "teacher_params": 22_700_000, "student_params": 720_000, "compression": 31.5}}))
        (d / "overrides.yaml").write_text(yaml.safe_dump(
            ["zskd.task=stsb", f"zskd.student.siamese={spelt}", f"zskd.recipe={recipe}"]))
    runs = collect([tmp_path])
    assert {r.overrides["zskd.student.siamese"] for r in runs} == {"true"}
    headers, _ = zskd_table(runs)
    assert not any("siamese" in h for h in headers)  # a shared setting, no variant column


def test_zskd_budgets_come_from_the_student_runs(tmp_path):
    """A teacher-only run's config carries the default student budget, which it never
    used: the notes state only the budgets the students trained with."""
    from tdx.report import Run, zskd_notes

    def run(recipe, student_steps, final=None, path=tmp_path, seed=1):
        config = {"seed": seed, "zskd": {"teacher": {"steps": 600, "batch": 32},
                                      "student": {"steps": student_steps, "batch": 32},
                                      "gumbel": {"pretrain_steps": 300}}}
        return Run(path, {"final": {"task": "sst2", "recipe": recipe, **(final or {})}},
                   config, {})

    student = {"teacher": {"acc": 88.0, "primary": 88.0}, "student": {"primary": 75.0},
               "pct_of_teacher": 85.2}
    notes = zskd_notes([run("none", 600), run("ood", 3000, student)])
    assert "every student 3000 updates x 32" in notes
    assert "every student 600 updates" not in notes
    assert "every student 600 updates x 32" in zskd_notes([run("none", 600)])
    # students of two budgets: a line each, saying which runs it covers
    mixed = zskd_notes([run("ood", 3000, student, tmp_path / "long" / "ood"),
                        run("ood", 600, student, tmp_path / "short" / "ood"),
                        run("adv_pgd", 600, student, tmp_path / "short" / "pgd")])
    assert "Budgets of `long/ood`: teacher 600 updates x 32; every student 3000" in mixed
    assert "Budgets of `short/ood`, `short/pgd`: teacher 600 updates x 32; every " \
        "student 600" in mixed
    assert "Budgets:" not in mixed
    # runs that differ only in their seed share a line, which names the seeds
    seeds = zskd_notes([run("ood", 3000, student, tmp_path / "s1" / "ood"),
                        run("ood", 3000, student, tmp_path / "s2" / "ood", seed=2),
                        run("adv_pgd", 3000, student, tmp_path / "s2" / "pgd", seed=2)])
    assert seeds.count("Budgets") == 1
    assert "pre-trained 300 updates); seeds 1, 2." in seeds
    seeds = zskd_notes([run("ood", 3000, student, tmp_path / "s2" / "ood", seed=2),
                        run("ood", 600, student, tmp_path / "s1" / "ood")])
    assert "Budgets of `s1/ood`: " in seeds and "); seed 1." in seeds
    assert "Budgets of `s2/ood`: " in seeds and "); seed 2." in seeds


def test_curves_of_several_seeds_plot_as_their_mean_with_a_band():
    """Runs of one setting plot as one line, the mean at the updates they all logged, in
    a min-max band; a single run has no band."""
    from tdx.report import _mean_curve

    class Axes:
        def __init__(self):
            self.calls = []

        def plot(self, x, y, **kw):
            self.calls.append(("plot", x, y, kw["label"]))

        def fill_between(self, x, lo, hi, **kw):
            self.calls.append(("band", x, lo, hi))

    ax = Axes()
    _mean_curve(ax, [[(0, 1.0), (10, 3.0)], [(0, 3.0), (10, 5.0), (20, 9.0)]], "pgd")
    assert ax.calls == [("plot", [0, 10], [2.0, 4.0], "pgd"),
                        ("band", [0, 10], [1.0, 3.0], [3.0, 5.0])]
    ax = Axes()
    _mean_curve(ax, [[(0, 1.0), (10, 3.0)]], "ood")
    assert ax.calls == [("plot", [0, 10], [1.0, 3.0], "ood")]


def test_embed_runs_of_different_teachers_never_pool(tmp_path):
    """Fine-tuned from two teachers, the same method and rate make two rows, each named by
    its teacher's folder, and each block of targets measures against its own teacher."""
    for i, (method, name, b, t) in enumerate([("svd", "tA", 20.0, 21.0),
                                              ("distilled", "tA", 19.0, 21.0),
                                              ("distilled", "tB", 29.5, 30.0)]):
        run = RunDir(tmp_path / "sweep" / str(i))
        run.write_config({"name": "embed", "seed": 1, "teacher": name,
                          "trainer": {"max_update": 150},
                          "optim": {"kd_weight": 0.5, "kd_temperature": 1.0,
                                    "embed_mse_weight": 1.0, "lr_scheduler": "inverse_sqrt"}},
                         ["experiment=embed", f"model.embed_method={method}"])
        run.start(1, "embed")
        run.finish("completed", final={"bleu_beam5": b},
                   compression={"method": method, "rate": 8, "rank": 30},
                   teacher={"checkpoint": str(tmp_path / name / "checkpoints" / "avg.pt"),
                            "bleu_beam5": t})
    out = tmp_path / "embed.md"
    report([tmp_path / "sweep"], preset="embed", out=out, plot_file=tmp_path / "embed.png")
    assert (tmp_path / "embed.png").stat().st_size > 0  # a teacher line each
    text = out.read_text()
    assert "| distilled (teacher tA) | 8x |" in text and "| distilled (teacher tB) | 8x |" in text
    a, b = sorted(text.split("Targets (BLEU after fine-tuning, beam 5), ")[1:])
    assert a.startswith("reference targets, teacher tA:")
    assert "uncompressed teacher (21.00): MISSED (2.00 below)" in a
    assert b.startswith("reference targets, teacher tB:")
    assert "uncompressed teacher (30.00): met (0.50 below)" in b
