"""The CLI and its answers to bad input: exit code 2 and a message, never a traceback."""

import pytest
import yaml
from omegaconf import OmegaConf

from tdx.config import check, compose, experiments
from tdx.errors import UsageError

from .conftest import REPO, tdx


@pytest.mark.parametrize("name", sorted(experiments()))
def test_every_experiment_composes(name, tmp_path):
    cfg = compose(name)
    assert cfg.name and cfg.engine
    assert experiments()[name], f"{name} has no description"
    required = sorted(OmegaConf.missing_keys(cfg))  # values with no default (??? in YAML)
    if required:
        with pytest.raises(UsageError, match=required[0]):
            check(name, [])
    (tmp_path / "teacher.pt").touch()
    examples = {"teacher": tmp_path / "teacher.pt"}
    check(name, [f"{k}={examples[k]}" for k in required])


def test_list_and_show(tmp_path):
    out = tdx("list", cwd=tmp_path, check=True).stdout
    assert "copy" in out and "Copy a sentence" in out
    shown = yaml.safe_load(tdx("show", "copy", "optim.lr=0.5", "model=transformer",
                               cwd=tmp_path, check=True).stdout)
    assert shown["optim"]["lr"] == 0.5
    assert shown["model"]["arch"] == "transformer"
    assert shown["name"] == "copy"


def test_version_help_and_completion():
    """In process (CliRunner): `--version`, `train --help` with every experiment and
    examples, and Typer's shell-completion installer offered."""
    from typer.testing import CliRunner

    from tdx.cli.main import app
    from tdx.config import experiments

    runner = CliRunner()
    version = runner.invoke(app, ["--version"])
    assert version.exit_code == 0 and version.output.startswith("tdx 0.") and "torch 2." in (
        version.output)
    helped = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "200"})
    text = " ".join(helped.output.split())
    assert helped.exit_code == 0 and all(name in text for name in experiments()), text
    assert "Examples: `tdx train copy model=transformer seed=2`" in text
    assert "--install-completion" in runner.invoke(app, ["--help"]).output


def _usage_error(args, tmp_path, *expected):
    proc = tdx(*args, cwd=tmp_path)
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr + proc.stdout
    for text in expected:
        assert text in proc.stderr, proc.stderr
    return proc.stderr


def test_unknown_experiment(tmp_path):
    _usage_error(["train", "cpy"], tmp_path, "Unknown experiment 'cpy'", "Did you mean: copy")


def test_unknown_key_names_closest(tmp_path):
    _usage_error(["train", "copy", "optim.lrr=0.1"], tmp_path, "optim.lrr", "optim.lr")


def test_unknown_group_option(tmp_path):
    _usage_error(["show", "copy", "model=transformr"], tmp_path, "transformr",
                 "Did you mean: transformer")


def test_malformed_override(tmp_path):
    _usage_error(["train", "copy", "optim.lr=[1,"], tmp_path, "Malformed override")


def test_wrong_type(tmp_path):
    _usage_error(["train", "copy", "trainer.max_update=lots"], tmp_path,
                 "Wrong type for 'trainer.max_update'")


def test_sweep_needs_multirun(tmp_path):
    _usage_error(["train", "copy", "seed=1,2"], tmp_path, "-m")


def test_missing_data_file(tmp_path):
    err = _usage_error(["train", "copy", "data=wikitext"], tmp_path,
                       "text/wikitext-2/valid.txt", "TDX_DATA_DIR")
    assert str(tmp_path / "nowhere") in err


@pytest.fixture(autouse=True)
def _no_data_for_missing_test(request, monkeypatch, tmp_path):
    if request.node.name == "test_missing_data_file":
        monkeypatch.setenv("TDX_DATA_DIR", str(tmp_path / "nowhere"))


def test_resume_needs_a_run_folder(tmp_path):
    _usage_error(["train", "copy", f"resume={tmp_path}"], tmp_path, "Cannot resume")


def test_report_of_nothing(tmp_path):
    _usage_error(["report", str(tmp_path)], tmp_path, "No run folders")


def test_check_raises_usage_error_in_process():
    with pytest.raises(UsageError, match="Did you mean"):
        check("copy", ["trainer.max_updat=3"])


def test_data_check_lists_files(tmp_path):
    proc = tdx("data", "check", cwd=tmp_path)
    assert "wikitext" in proc.stdout or "copy" in proc.stdout
    if (REPO.parent / "shared" / "data" / "text" / "wikitext-2" / "valid.txt").exists():
        assert proc.returncode == 0, proc.stdout
        assert "present" in proc.stdout


def test_adding_an_existing_key(tmp_path):
    _usage_error(["show", "copy", "+optim.lr=0.1"], tmp_path, "exists already", "drop the +")
