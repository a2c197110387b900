"""Papers plug into the runner: a toy paper from tests/toy_paper (its experiment, recipe
and report preset) trains and reports with nothing in tdx/ edited; the registries answer
a wrong name with the names they know."""

from pathlib import Path

import pytest

from tdx import engines
from tdx.errors import UsageError
from tdx.report import PRESETS, get_preset

from .conftest import REPO, summary, tdx

TOY = Path(__file__).parent / "toy_paper"


def test_a_toy_paper_plugs_in_without_touching_the_runner(tmp_path):
    env = {"TDX_USER_DIR": str(TOY)}
    listed = tdx("list", cwd=tmp_path, env=env, check=True)
    assert "toy" in listed.stdout and "A toy paper" in listed.stdout
    proc = tdx("train", "toy", "-m", "toy.lr=0.1,0.5", "paths.runs_dir=runs", cwd=tmp_path,
               env=env)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    runs = sorted(p.parent for p in (tmp_path / "runs").rglob("summary.json"))
    assert [summary(r)["status"] for r in runs] == ["completed", "completed"]
    fast = summary(runs[1])["final"]  # lr 0.5 fits y = 3x + 1 within 40 updates
    assert abs(fast["slope"] - 3) < 0.2 and abs(fast["intercept"] - 1) < 0.1
    table = tdx("report", "runs", "--table", "toy", cwd=tmp_path, env=env, check=True).stdout
    assert "| Learning rate | Slope (true 3) |" in table
    assert "| 0.5 | " in table and "| 0.1 | " in table
    # the same through the command-line option, and the plugin's code named nowhere else
    shown = tdx("--user-dir", str(TOY), "show", "toy", cwd=tmp_path, check=True).stdout
    assert "recipe: toy_paper.recipe:run" in shown
    for folder in ("tdx", "cli", "conf"):
        assert not any("toy_paper" in p.read_text() for p in (REPO / folder).rglob("*.py"))


def test_without_the_plugin_its_experiment_and_preset_are_unknown(tmp_path):
    proc = tdx("train", "toy", cwd=tmp_path)
    assert proc.returncode == 2 and "Unknown experiment 'toy'" in proc.stderr
    proc = tdx("report", str(tmp_path), "--table", "toy", cwd=tmp_path)
    assert proc.returncode == 2 and "Unknown table preset 'toy'" in proc.stderr
    proc = tdx("list", cwd=tmp_path, env={"TDX_USER_DIR": str(tmp_path / "nothere")})
    assert proc.returncode == 2 and "is not a plugin folder" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_the_papers_register_their_presets_and_the_engines_are_one_registry():
    get_preset("copy")  # loads the installed plugins
    assert {"copy", "talk-mt", "talk-lm", "embed", "srnam", "zskd"} <= set(PRESETS)
    assert {"fairseq", "loop"} <= set(engines.names())
    with pytest.raises(UsageError, match="Did you mean: loop"):
        engines.get("lop")
    with pytest.raises(UsageError, match="Did you mean: zskd"):
        get_preset("zskb")
