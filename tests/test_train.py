"""Training through the runner: run folders, determinism, faults, resume, sweeps."""

import json
import os
import signal
import statistics
import subprocess

import pytest
import yaml

from tdx.config import CONF_DIR, group_options
from tdx.errors import UsageError

from .conftest import (
    TDX,
    TINY,
    assert_events_mirror_metrics,
    assert_mlflow_mirrors_metrics,
    events,
    only_run,
    summary,
    tdx,
    wait_for_lines,
)

DIVERGE = ["optim=sgd", "optim.lr=1e38"]


def lines(run):
    return (run / "metrics.jsonl").read_text().splitlines()


def test_tiny_run_writes_a_complete_run_folder(tmp_path, runs):
    proc = tdx("train", "copy", *TINY, f"paths.runs_dir={runs}", cwd=tmp_path)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    run = only_run(runs)
    assert run.parent.name == "copy"  # runs/<experiment>/<timestamp>/
    for name in ("config.yaml", "overrides.yaml", "metrics.jsonl", "summary.json", "train.log",
                 "checkpoints/checkpoint_last.pt", "checkpoints/checkpoint_best.pt"):
        assert (run / name).exists(), name
    s = summary(run)
    assert s["status"] == "completed" and s["seed"] == 1 and s["step"] == 20
    assert {"git_commit", "versions", "host", "wall_time_s", "params", "command"} <= set(s)
    assert {"exact_match_greedy", "bleu_beam2", "token_acc_greedy"} <= set(s["final"])
    recs = [json.loads(x) for x in lines(run)]
    assert [r["step"] for r in recs if r["split"] == "train"] == [5, 10, 15, 20]
    assert [r["step"] for r in recs if r["split"] == "valid"] == [10, 20]
    assert recs[-1]["split"] == "test"
    assert list(run.glob("events.out.tfevents.*"))  # TensorBoard reads the same numbers
    assert_events_mirror_metrics(run)
    assert not (runs / "mlflow.db").exists()  # MLflow is off unless asked for
    assert ("train/loss" in events(run) and "valid/exact_match" in events(run)
            and "test/bleu_beam2" in events(run))
    assert "Results" in proc.stdout and "exact_match" in proc.stdout
    assert "step 10/20" in proc.stdout  # not a terminal: plain progress lines


def test_same_seed_gives_identical_metrics(tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    for d in (a, b):
        tdx("train", "copy", *TINY, f"paths.runs_dir={d}", cwd=tmp_path, check=True)
    assert lines(only_run(a)) == lines(only_run(b))
    c = tmp_path / "c"
    tdx("train", "copy", *TINY, "seed=2", f"paths.runs_dir={c}", cwd=tmp_path, check=True)
    assert lines(only_run(a)) != lines(only_run(c))


def test_nan_loss_marks_run_diverged(tmp_path, runs):
    proc = tdx("train", "copy", *TINY, *DIVERGE, f"paths.runs_dir={runs}", cwd=tmp_path)
    assert proc.returncode == 1
    s = summary(only_run(runs))
    assert s["status"] == "diverged" and "loss is nan" in s["error"], s


def test_nan_gradient_marks_run_diverged_and_writes_no_crash_file(tmp_path, runs):
    """fairseq's answer to a NaN gradient (crash.pt, a NanDetector re-run that fails with
    an unrelated error) is replaced by the status a NaN loss gets."""
    data = [o for o in TINY if not o.startswith("model.")]
    proc = tdx("train", "copy", *data, "model=transformer", "optim=sgd", "optim.lr=1e30",
               f"paths.runs_dir={runs}", cwd=tmp_path)
    s = summary(only_run(runs))
    assert proc.returncode == 1 and s["status"] == "diverged", proc.stdout + proc.stderr
    assert "the gradient norm is nan" in s["error"] and not list(runs.rglob("crash.pt"))


def test_multirun_records_a_diverging_job_and_runs_the_rest(tmp_path, runs):
    proc = tdx("train", "copy", *TINY, "optim=sgd", "optim.lr=0.001,1e38", "-m",
               f"paths.runs_dir={runs}", cwd=tmp_path)
    statuses = sorted(summary(p.parent)["status"] for p in runs.rglob("summary.json"))
    assert len(statuses) == 2, proc.stdout + proc.stderr
    assert "completed" in statuses and "diverged" in statuses
    assert proc.returncode == 1


def test_sigterm_then_resume_loses_and_duplicates_nothing(tmp_path):
    slow = [*TINY, "trainer.max_update=200", "trainer.save_every=1000", "trainer.valid_every=100",
            "trainer.log_every=5"]
    ref_dir, cut_dir = tmp_path / "ref", tmp_path / "cut"
    tdx("train", "copy", *slow, f"paths.runs_dir={ref_dir}", cwd=tmp_path, check=True)

    proc = subprocess.Popen([TDX, "train", "copy", *slow, f"paths.runs_dir={cut_dir}",
                             "mlflow.enabled=true"],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, env=os.environ.copy())
    wait_for_lines(cut_dir, 8)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    run = only_run(cut_dir)
    s = summary(run)
    assert s["status"] == "interrupted", s
    assert 0 < s["step"] < 200
    assert (run / "checkpoints" / "checkpoint_last.pt").exists()
    windows = s["rate_windows"]  # the throughput windows of the first segment

    res = tdx("train", "copy", f"resume={run}", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    assert summary(run)["status"] == "completed" and summary(run)["resumed"] == 1
    done = summary(run)  # the resume continued the windows; the speed is their median
    assert done["rate_windows"][:len(windows)] == windows
    assert not done["rate_windows"] or done["rate_tok_s"] == round(
        statistics.median(done["rate_windows"]))
    got = [json.loads(x) for x in lines(run)]
    keys = [(r["step"], r["split"]) for r in got]
    assert len(keys) == len(set(keys)), "duplicated metrics lines"
    assert [r["step"] for r in got if r["split"] == "train"] == list(range(5, 201, 5))
    # resuming continues the same trajectory: same data order, dropout, optimiser state
    assert lines(run) == lines(only_run(ref_dir))
    assert_events_mirror_metrics(run)  # the resume rewrote them: nothing twice
    assert_mlflow_mirrors_metrics(cut_dir, run)  # MLflow's copy too (mlflow.enabled=true)


def test_sigterm_during_the_test_decoding_stops_it_and_resume_tests(tmp_path, monkeypatch):
    """A stop signal while the finished model decodes the test set ends the run
    `interrupted` after that batch; the resume trains nothing more and only tests. (In
    process, so that the signal lands in the test decoding for certain.)"""
    from typer.testing import CliRunner

    from tdx import seqeval
    from tdx.cli.main import app

    real = seqeval.generate

    def generate(task, models, split, *args, **kw):  # noqa: ANN001, ANN002, ANN003
        for i, batch in enumerate(real(task, models, split, *args, **kw)):
            if split == "test" and i == 0:
                os.kill(os.getpid(), signal.SIGTERM)
            yield batch

    monkeypatch.setattr(seqeval, "generate", generate)
    res = CliRunner().invoke(app, ["train", "copy", *TINY, f"paths.runs_dir={tmp_path}"])
    run = only_run(tmp_path)
    assert res.exit_code == 130 and "interrupted while testing" in res.output, res.output
    assert summary(run)["status"] == "interrupted" and summary(run)["final"] == {}
    monkeypatch.setattr(seqeval, "generate", real)
    res = CliRunner().invoke(app, ["train", "copy", f"resume={run}"])
    s = summary(run)
    assert res.exit_code == 0 and s["status"] == "completed" and s["final"]["n"] == 40
    splits = [json.loads(x)["split"] for x in lines(run)]
    assert splits.count("test") == 1 and splits.count("train") == 4  # nothing trained twice


def test_resume_with_a_longer_budget_extends_the_run_and_records_it(tmp_path):
    """A finished run resumed with `trainer.max_update` raised trains on from its last
    checkpoint, and its config.yaml / overrides.yaml say what it finished with, the run's
    other overrides kept."""
    tdx("train", "copy", *TINY, "trainer.valid_every=20", f"paths.runs_dir={tmp_path}",
        cwd=tmp_path, check=True)
    run = only_run(tmp_path)
    assert summary(run)["step"] == 20
    res = tdx("train", "copy", f"resume={run}", "trainer.max_update=30", cwd=tmp_path)
    assert res.returncode == 0, res.stdout + res.stderr
    s = summary(run)
    assert s["status"] == "completed" and s["step"] == 30 and s["resumed"] == 1
    assert s["command"].startswith("tdx train copy data.train_size=300")
    assert len(s["resume_commands"]) == 1  # the provenance of both parts of the run
    assert s["resume_commands"][0].endswith(f"trainer.max_update=30 resume={run}")
    assert yaml.safe_load((run / "config.yaml").read_text())["trainer"]["max_update"] == 30
    ov = yaml.safe_load((run / "overrides.yaml").read_text())
    assert "trainer.max_update=30" in ov and "trainer.max_update=20" not in ov
    assert "data.train_size=300" in ov and "trainer.valid_every=20" in ov
    train = [json.loads(x)["step"] for x in lines(run) if json.loads(x)["split"] == "train"]
    assert train == sorted(set(train)) and train[-1] == 30


def test_sigterm_ends_a_sweep_after_the_stopped_job(tmp_path):
    """A stop signal in a sweep stops the running job (saved, `interrupted`) and starts no
    further job: a scheduler's SIGTERM means the whole command is to end."""
    slow = [*TINY, "trainer.max_update=400", "trainer.save_every=1000", "trainer.valid_every=100",
            "trainer.log_every=5"]
    sweep = tmp_path / "sweep"
    proc = subprocess.Popen([TDX, "train", "copy", *slow, "seed=1,2", "-m",
                             f"hydra.sweep.dir={sweep}"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=os.environ.copy())
    wait_for_lines(sweep, 8)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert sorted(p.parent.name for p in sweep.rglob("summary.json")) == ["0"], out
    s = summary(sweep / "0")
    assert s["status"] == "interrupted" and 0 < s["step"] < 400, s
    assert (sweep / "0" / "checkpoints" / "checkpoint_last.pt").exists()
    assert not (sweep / "1").exists()
    assert "interrupted" in out and "Traceback" not in out


SEQ2SEQ = [m for m in group_options("model")  # language models train in test_talk_recipes
           if yaml.safe_load((CONF_DIR / "model" / f"{m}.yaml").read_text())["meta"].get(
               "kind") != "lm"]


def test_every_copy_model_trains_and_decodes(tmp_path, runs):
    """Every sequence-to-sequence model config trains 4 updates on the copy task and
    decodes (one sweep: one process, as a user's sweep would)."""
    proc = tdx("train", "copy", "-m", f"model={','.join(SEQ2SEQ)}", "data.train_size=64",
               "data.valid_size=16", "data.test_size=16", "data.batch_size=16",
               "trainer.max_update=4", "trainer.valid_every=4", "trainer.save_every=4",
               "trainer.log_every=2", "trainer.test_beam=2", f"paths.runs_dir={runs}",
               cwd=tmp_path, timeout=900)
    folders = list(runs.rglob("summary.json"))
    done = {next(o for o in yaml.safe_load((p.parent / "overrides.yaml").read_text())
                 if o.startswith("model=")): json.loads(p.read_text()) for p in folders}
    bad = {m: s.get("error") for m, s in done.items() if s["status"] != "completed"}
    assert proc.returncode == 0 and not bad, (bad, proc.stdout[-3000:], proc.stderr[-3000:])
    assert sorted(done) == sorted(f"model={m}" for m in SEQ2SEQ)
    for s in done.values():
        assert s["params"] > 0 and 0.0 <= s["final"]["token_acc_beam2"] <= 1.0


def test_a_stage_of_zero_updates_scores_its_start(tmp_path):
    """`steps=0` evaluates the untrained (or pre-trained) start once and logs it at
    update 0, so a run can measure where training begins."""
    from omegaconf import OmegaConf

    from tdx import loop
    from tdx.run import RunDir, StopFlag

    def step(i: int) -> dict[str, float]:
        raise AssertionError("no update may run")

    cfg = OmegaConf.create({"seed": 0, "trainer": {"log_every": 1, "valid_every": 1,
                                                   "save_every": 1}})
    stage = loop.Stage("s", 0, step, {}, lambda i: {"acc": 50.0 + i})
    assert loop.run_stage(stage, cfg, RunDir(tmp_path), StopFlag()) == {"acc": 50.0}
    logged = [json.loads(x) for x in lines(tmp_path)]
    assert logged == [{"step": 0, "split": "s/valid", "metrics": {"acc": 50.0}}]


def test_mlflow_without_its_packages_is_a_usage_error(monkeypatch):
    from tdx import config, tracking

    monkeypatch.setattr(tracking, "_importable", lambda name: name != "sqlalchemy")
    cfg = config.compose("copy", ["mlflow.enabled=true"])
    with pytest.raises(UsageError, match=r"needs sqlalchemy.*pip install 'tdx\[mlflow\]'"):
        config.check_runtime("copy", cfg)
    config.check_runtime("copy", config.compose("copy"))  # off: nothing is asked for
