"""Bad input and damaged folders: the drill (tools/drill.py) replays every known case; the
domains of every experiment's settings are checked; run folders are locked, never shared,
readable by colleagues, and a weight gone NaN is a divergence."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from typer.testing import CliRunner

from tdx.cli.main import app
from tdx.config import compose, conf_dirs, experiments
from tdx.run import RunDir, StopFlag, new_folder
from tdx.validate import leaves, rule_for, rules, violations

from .conftest import REPO, TDX, TINY, wait_for_lines


def load_drill():
    spec = importlib.util.spec_from_file_location("drill", REPO / "tools" / "drill.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules["drill"] = module  # its dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_every_drill_case_ends_with_its_exit_code_and_no_traceback(tmp_path):
    drill = load_drill()
    results = drill.drill(tmp_path, Path(os.environ["TDX_DATA_DIR"]))
    failed = [(r.case.name, r.code, r.output[-600:]) for r in results if not r.ok]
    assert len(results) > 60 and not failed, failed


def bad_value(rule: dict, value):
    """A value just outside a rule's domain."""
    if "choices" in rule:
        return "nosuch"
    if "min" in rule:
        return rule["min"] - 1
    if "above" in rule:
        return rule["above"]
    if "max" in rule:
        return rule["max"] + 1
    return "text"


@pytest.mark.parametrize("experiment", sorted(experiments()))
def test_every_checkable_setting_of_every_experiment_refuses_a_bad_value(experiment):
    cfg = compose(experiment, ["teacher=x"] if experiment == "embed" else [])
    assert violations(cfg, conf_dirs()) == []  # the defaults are in their domains
    table = rules(conf_dirs())
    checked = 0
    for key, value in leaves(OmegaConf.to_container(cfg, resolve=True)).items():
        rule = rule_for(key, table)
        if rule is None:
            continue
        bad = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
        OmegaConf.update(bad, key, bad_value(rule, value), force_add=True)
        found = violations(bad, conf_dirs())
        assert any(v.startswith(f"{key}=") for v in found), (key, found)
        checked += 1
    assert checked >= 15, checked


def test_two_trainers_on_one_folder_one_is_refused(tmp_path):
    folder = tmp_path / "run"
    slow = subprocess.Popen([TDX, "train", "copy", *TINY, "trainer.max_update=100000",
                             "trainer.log_every=1", "trainer.save_every=1",
                             f"hydra.run.dir={folder}"], cwd=tmp_path,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for_lines(folder, 3)  # and a checkpoint saved (a resume's first look)
        deadline = time.time() + 120
        while not (folder / "checkpoints" / "checkpoint_last.pt").exists():
            assert time.time() < deadline and slow.poll() is None
            time.sleep(0.05)
        second = CliRunner().invoke(app, ["train", "copy", f"resume={folder}"])
        assert second.exit_code == 2 and "Another tdx process" in second.output, second.output
        again = CliRunner().invoke(app, ["train", "copy", *TINY, f"hydra.run.dir={folder}"])
        assert again.exit_code == 2 and "holds a run" in again.output, again.output
    finally:
        slow.send_signal(signal.SIGTERM)
        slow.wait(timeout=120)


def test_runs_started_in_the_same_second_get_folders_of_their_own(tmp_path):
    a, b = new_folder(tmp_path / "x"), new_folder(tmp_path / "x")
    assert a != b and a.is_dir() and b.is_dir()
    quick = [*TINY, "trainer.max_update=2", "trainer.valid_every=2", "trainer.save_every=2"]
    procs = [subprocess.Popen([TDX, "train", "copy", *quick, "paths.runs_dir=runs"],
                              cwd=tmp_path, stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL) for _ in range(2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    folders = list((tmp_path / "runs").rglob("summary.json"))
    assert len(folders) == 2


def test_run_folder_files_follow_the_umask(tmp_path):
    old = os.umask(0o022)
    try:
        run = RunDir(tmp_path / "r")
        run.write_config({"a": 1}, ["a=1"])
        run.start(1, "x")
        run.log(1, "train", {"loss": 1.0})
        run.truncate_metrics(1)
    finally:
        os.umask(old)
    for name in ("config.yaml", "overrides.yaml", "summary.json", "metrics.jsonl"):
        assert (run.path / name).stat().st_mode & 0o777 == 0o644, name


def test_a_weight_gone_nan_is_a_divergence(tmp_path):
    from tdx import loop
    from tdx.errors import Diverged

    w = torch.nn.Linear(1, 1)

    def step(i: int) -> dict:
        with torch.no_grad():
            w.weight.fill_(float("nan") if i == 2 else 1.0)  # a NaN gradient's update
        return {"loss": 1.0}  # the loss it reports is still finite

    cfg = OmegaConf.create({"seed": 0, "trainer": {"log_every": 1, "valid_every": 10,
                                                   "save_every": 10}})
    with pytest.raises(Diverged, match="NaN or infinite"):
        loop.run_stage(loop.Stage("s", 3, step, {"w": w}), cfg, RunDir(tmp_path), StopFlag())


def test_checkpoints_load_weights_only_whatever_the_environment():
    code = ("import os, tdx; print(os.environ.get('TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD'))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         env={**os.environ, "TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD": "1"})
    assert out.stdout.strip() == "None", out
