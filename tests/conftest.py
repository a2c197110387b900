import gzip
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
TDX = str(Path(sys.executable).with_name("tdx"))
os.environ.setdefault("TDX_DATA_DIR", str(REPO.parent / "shared" / "data"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")

# A copy-task run that takes seconds: small data, small LSTM + additive attention.
TINY = ["data.train_size=300", "data.valid_size=40", "data.test_size=40", "data.batch_size=16",
        "model.encoder_embed_dim=16", "model.encoder_hidden_size=32",
        "model.decoder_embed_dim=16", "model.decoder_hidden_size=32",
        "model.decoder_out_embed_dim=32", "trainer.max_update=20", "trainer.valid_every=10",
        "trainer.save_every=10", "trainer.log_every=5", "trainer.test_beam=2"]

# A Multi30k model that trains in seconds on `small_multi30k` (the talk-mt/embed recipes).
TINY_MT = ["+model.encoder_embed_dim=32", "+model.decoder_embed_dim=32",
           "+model.encoder_ffn_embed_dim=64", "+model.decoder_ffn_embed_dim=64",
           "+model.encoder_attention_heads=2", "+model.decoder_attention_heads=2",
           "data.spm_vocab=300", "data.max_tokens=600", "trainer.max_update=20",
           "trainer.valid_every=10", "trainer.save_every=5", "trainer.average_last=2",
           "trainer.log_every=5", "trainer.test_beam=2", "optim.warmup_updates=5"]


def wait_for_lines(folder: Path, n: int, timeout: float = 180) -> None:
    """Wait until a run under `folder` has logged `n` metrics lines."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        found = list(folder.rglob("metrics.jsonl"))
        if found and sum(1 for _ in found[0].open()) >= n:
            return
        time.sleep(0.1)
    raise AssertionError(f"no {n} metrics lines in {folder} after {timeout} s")


def tdx(*args: str, cwd: Path, check: bool = False, timeout: int = 300,
        env: dict | None = None) -> subprocess.CompletedProcess:
    """Run the installed `tdx` console script as a user would."""
    proc = subprocess.run([TDX, *args], cwd=cwd, text=True, capture_output=True,
                          timeout=timeout, env={**os.environ, **(env or {})})
    if check and proc.returncode != 0:
        raise AssertionError(f"tdx {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n"
                             f"{proc.stderr}")
    return proc


def only_run(runs: Path) -> Path:
    found = [p.parent for p in runs.rglob("summary.json")]
    assert len(found) == 1, found
    return found[0]


def summary(run: Path) -> dict:
    return json.loads((run / "summary.json").read_text())


@pytest.fixture
def runs(tmp_path: Path) -> Path:
    return tmp_path / "runs"


@pytest.fixture(scope="session")
def small_multi30k(tmp_path_factory) -> Path:
    """The first lines of the real Multi30k files (train 400, val/test 24 pairs), gzipped
    like the originals."""
    from tdx.datafiles import read_lines

    data = Path(os.environ["TDX_DATA_DIR"]) / "mt/multi30k"
    raw = tmp_path_factory.mktemp("multi30k")
    for stem, n in (("train", 400), ("val", 24), ("test_2016_flickr", 24)):
        for lang in ("de", "en"):
            lines = read_lines(data / f"{stem}.{lang}.gz")[:n]
            with gzip.open(raw / f"{stem}.{lang}.gz", "wt", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
    return raw


class SmokeTables:
    """Every committed table spec, built on demand at `--scale smoke` (once per session,
    in one runs root, so specs that need the same run share it, as in runs/)."""

    def __init__(self, root: Path, out: Path) -> None:
        self.root, self.out = root, out
        self.built: dict[str, subprocess.CompletedProcess] = {}

    def build(self, name: str) -> subprocess.CompletedProcess:
        if name not in self.built:
            self.built[name] = tdx("table", name, "--scale", "smoke", "--runs-root",
                                   str(self.root), "--out-dir", str(self.out),
                                   cwd=self.out, timeout=900)
        return self.built[name]

    def runs(self, experiment: str) -> list[Path]:
        """The finished run folders of one experiment, in folder-name order."""
        return sorted(p.parent for p in (self.root / experiment).glob("*/summary.json"))


@pytest.fixture(scope="session")
def smoke_tables(tmp_path_factory) -> SmokeTables:
    return SmokeTables(tmp_path_factory.mktemp("smoke-runs"),
                       tmp_path_factory.mktemp("smoke-out"))


def events(run) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value)]} as TensorBoard reads the run folder's event files."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run))
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def logged(run) -> dict[str, list[tuple[int, float]]]:
    """The same, from metrics.jsonl: the numbers TensorBoard must show."""
    out: dict[str, list[tuple[int, float]]] = {}
    for r in map(json.loads, (run / "metrics.jsonl").read_text().splitlines()):
        for k, v in r["metrics"].items():
            if isinstance(v, int | float) and not isinstance(v, bool):
                out.setdefault(f"{r['split']}/{k}", []).append((r["step"], v))
    return out


def assert_events_mirror_metrics(run) -> None:
    got, want = events(run), logged(run)
    assert sorted(got) == sorted(want)
    for tag, points in want.items():
        assert [s for s, _ in got[tag]] == [s for s, _ in points], tag
        assert [v for _, v in got[tag]] == pytest.approx([v for _, v in points], rel=1e-6), tag


def assert_mlflow_mirrors_metrics(runs_root, run) -> None:
    """The run's MLflow run (SQLite store in the runs root) holds the folder's numbers, its
    config and provenance, and is the only live run of the experiment."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{runs_root.resolve() / 'mlflow.db'}")
    s = summary(run)
    exp = client.get_experiment_by_name(s["experiment"])
    live = client.search_runs([exp.experiment_id])
    assert [r.info.run_id for r in live] == [s["mlflow_run_id"]]
    got = live[0]
    assert got.info.status == {"completed": "FINISHED"}.get(s["status"], "KILLED")
    assert got.data.tags["tdx.folder"] == str(run.resolve().relative_to(runs_root.resolve()))
    assert got.data.tags["tdx.commit"] == s["git_commit"]
    assert got.data.params["seed"] == str(s["seed"])
    for tag, points in logged(run).items():
        history = sorted((m.step, m.value) for m in client.get_metric_history(got.info.run_id,
                                                                              tag))
        assert [st for st, _ in history] == [st for st, _ in points], tag
        assert [v for _, v in history] == pytest.approx([v for _, v in points], rel=1e-6), tag
