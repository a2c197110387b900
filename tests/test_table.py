"""`tdx table`: a spec's runs are planned by their settings, run once, resumed after an
interruption, and turned into a results file whose reading survives a rebuild; every
committed spec builds end to end at its smoke scale."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import yaml

from tdx.report import MARK, write_markdown

from .conftest import REPO, TDX, summary, tdx

TOY = Path(__file__).parent / "toy_paper"
SPECS = sorted(p.stem for p in (REPO / "conf" / "table").glob("*.yaml"))


@pytest.mark.parametrize("name", SPECS)
def test_every_spec_builds_at_smoke_scale(name, smoke_tables):
    proc = smoke_tables.build(name)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    text = (smoke_tables.out / f"{name}.md").read_text()
    numbers = json.loads((smoke_tables.out / f"{name}.json").read_text())
    assert numbers["rows"] and numbers["headers"][0] in text and MARK in text
    assert all(r["status"] == "completed" for r in numbers["runs"]), numbers["runs"]
    assert f"`tdx table {name} --scale smoke` from `conf/table/{name}.yaml`" in text
    assert str(smoke_tables.root) not in text  # run folders: relative to the runs root
    again = tdx("table", name, "--scale", "smoke", "--runs-root", str(smoke_tables.root),
                "--dry-run", cwd=smoke_tables.out, check=True).stdout
    assert f"{len(numbers['runs'])} done, 0 to resume, 0 to start" in again


def test_a_runs_identity_is_its_settings_not_where_or_how_it_is_logged():
    from tdx.table_spec import settings_id

    base = settings_id("copy", ["seed=2"])
    assert base == settings_id("copy", ["seed=2", "mlflow.enabled=true", "paths.runs_dir=x"])
    assert base != settings_id("copy", ["seed=3"])


def toy(*args: str, runs: Path, cwd: Path) -> subprocess.CompletedProcess:
    return tdx("table", "toy", "--runs-root", str(runs), "--out-dir", str(cwd / "out"),
               *args, cwd=cwd, env={"TDX_USER_DIR": str(TOY)})


def test_a_table_spec_expands_reuses_and_tells_changed_settings_apart(tmp_path):
    runs = tmp_path / "runs"
    plan = toy("--dry-run", runs=runs, cwd=tmp_path)
    assert plan.returncode == 0, plan.stderr
    assert "0 done, 0 to resume, 3 to start; expected CPU time 0 min" in plan.stdout
    built = toy(runs=runs, cwd=tmp_path)
    assert built.returncode == 0, built.stdout + built.stderr
    folders = sorted(p.parent for p in runs.rglob("summary.json"))
    assert len(folders) == 3
    fits = [f for f in folders if f.name.startswith("fits-")]
    start = next(f for f in folders if f.name.startswith("start-"))
    for f in fits:  # @start: the warm start's folder, relative to the runs root
        assert summary(f)["command"].split().count(f"toy.init_from={start.relative_to(runs)}")
    big = [f for f in fits if "-0.5-" in f.name]
    assert all("toy.points=32" in summary(f)["command"] for f in big)  # `when`
    table = (tmp_path / "out" / "toy.md").read_text()
    assert "| 0.1 | " in table and "| 0.5 | " in table and "fits (2)" in table
    assert (tmp_path / "out" / "toy.png").stat().st_size > 1000  # the spec's curves
    again = toy("--dry-run", runs=runs, cwd=tmp_path).stdout
    assert "3 done, 0 to resume, 0 to start" in again
    # a smaller scale is other settings: its own runs, except those it shares (start)
    smoke = toy("--scale", "smoke", "--dry-run", runs=runs, cwd=tmp_path).stdout
    assert "1 done, 0 to resume, 1 to start" in smoke


def test_an_interrupted_table_resumes_and_starts_no_finished_run(tmp_path):
    """`tdx table` stopped half-way (SIGTERM): the run in progress is saved as
    interrupted; the rerun resumes it, starts the rest and restarts nothing finished."""
    runs, env = tmp_path / "runs", {**os.environ, "TDX_USER_DIR": str(TOY)}
    spec = TOY / "conf" / "table" / "toy.yaml"  # the toy table, slowed down
    slow = yaml.safe_load(spec.read_text())
    slow["runs"]["fits"]["overrides"] += ["toy.sleep=0.03", "toy.steps=100"]
    plugin = tmp_path / "slow_toy"
    (plugin / "conf" / "table").mkdir(parents=True)
    (plugin / "__init__.py").write_text("")
    (plugin / "conf" / "table" / "slow.yaml").write_text(yaml.safe_dump(slow, sort_keys=False))
    env["TDX_USER_DIR"] += os.pathsep + str(plugin)
    args = [TDX, "table", "slow", "--runs-root", str(runs), "--out-dir", str(tmp_path)]
    proc = subprocess.Popen(args, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    deadline = time.time() + 240
    while time.time() < deadline and proc.poll() is None:  # the second fit is under way
        lines = [p for p in runs.rglob("fits-*/metrics.jsonl") if p.stat().st_size]
        if len(lines) >= 2 and sum(1 for _ in sorted(lines)[-1].open()) >= 4:
            break
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    done = {p.parent: p.read_text() for p in runs.rglob("summary.json")
            if json.loads(p.read_text())["status"] == "completed"}
    stopped = [p.parent for p in runs.rglob("summary.json")
               if json.loads(p.read_text())["status"] == "interrupted"]
    assert len(done) == 2 and len(stopped) == 1, out  # start and the first fit; the second
    again = subprocess.run([*args, "--dry-run"], cwd=tmp_path, env=env, capture_output=True,
                           text=True).stdout
    assert "2 done, 1 to resume, 0 to start" in again
    rerun = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True)
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    for folder, text in done.items():  # untouched: not run again
        assert (folder / "summary.json").read_text() == text
    s = summary(stopped[0])
    assert s["status"] == "completed" and s["resumed"] == 1
    assert len(list(runs.rglob("summary.json"))) == 3


def test_a_rebuild_keeps_the_reading_below_the_generated_part(tmp_path):
    path = tmp_path / "t.md"
    write_markdown(path, "# t\n\n| a |\n")
    path.write_text(path.read_text() + "\nThe reading: a is small.\n")
    write_markdown(path, "# t\n\n| b |\n")
    text = path.read_text()
    assert text.startswith("# t\n\n| b |\n") and "| a |" not in text
    assert text.endswith(MARK + "\n\nThe reading: a is small.\n")
    legacy = tmp_path / "old.md"  # a file from before the marker: kept whole, below
    legacy.write_text("# old\n\nhand-written\n")
    write_markdown(legacy, "# new\n")
    assert legacy.read_text().endswith("# old\n\nhand-written\n")


def test_table_usage_errors(tmp_path):
    listed = tdx("table", "--list", cwd=tmp_path, check=True).stdout
    assert all(name in listed for name in SPECS)
    bad = tdx("table", "cpy", cwd=tmp_path)
    assert bad.returncode == 2 and "Did you mean: copy" in bad.stderr
    bad = tdx("table", "copy", "--scale", "huge", cwd=tmp_path)
    assert bad.returncode == 2 and "Unknown scale 'huge'" in bad.stderr
