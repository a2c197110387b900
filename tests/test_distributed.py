"""Scale-out (issue: data-parallel training and cluster sweeps): 2 ranks over gloo on
localhost for a fairseq model and a plain-PyTorch recipe, equal to 1 rank with the same
global batch; resume with another number of ranks; a dead rank; a joblib sweep."""

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from tdx.config import compose

from .conftest import TDX, TINY, TINY_MT, only_run, summary, tdx, wait_for_lines

NO_DROPOUT = ["+model.dropout=0", "+model.attention_dropout=0", "+model.weight_dropout=0",
              "+model.relu_dropout=0"]


def train_losses(run: Path) -> list[float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["metrics"]["loss"] for r in rows if r["split"].endswith("train")]


def test_talk_mt_two_ranks_equal_one_rank_and_resume_with_one(small_multi30k, tmp_path):
    common = ["talk-mt", "model=talkconv_multi30k", f"data.raw_dir={small_multi30k}",
              f"data.data_path={tmp_path / 'bin'}", *TINY_MT, *NO_DROPOUT,
              "data.max_tokens=300", "trainer.max_update=8", "trainer.log_every=1",
              "trainer.valid_every=8", "trainer.average_last=0", "trainer.save_every=4"]
    one = tdx("train", *common, "trainer.update_freq=2", "paths.runs_dir=one", cwd=tmp_path,
              timeout=600)
    assert one.returncode == 0, one.stdout[-2000:] + one.stderr[-2000:]
    two = tdx("train", *common, "distributed.world_size=2", "paths.runs_dir=two",
              cwd=tmp_path, timeout=600)
    assert two.returncode == 0, two.stdout[-2000:] + two.stderr[-2000:]
    r1, r2 = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    s2 = summary(r2)
    assert s2["status"] == "completed" and s2["world_size"] == 2
    assert len(s2["param_checksums"]) == 2 and len(set(s2["param_checksums"])) == 1
    assert train_losses(r2) == pytest.approx(train_losses(r1), rel=2e-3)
    assert "bleu_beam2" in s2["final"]
    # the 2-rank checkpoint continues with 1 rank
    res = tdx("train", "talk-mt", f"resume={r2}", "distributed.world_size=1",
              "trainer.max_update=12", cwd=tmp_path, timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    s = summary(r2)
    assert s["status"] == "completed" and s["step"] == 12 and s["world_size"] == 1


SRCNN = ["srnam", "srnam.stages=[srcnn_bicubic]", "srnam.srcnn.batch=8",
         "srnam.srcnn.patch=24", "trainer.log_every=1", "trainer.save_every=1000"]


def test_loop_recipe_two_ranks_equal_one_rank(tmp_path):
    for name, extra in (("one", []), ("two", ["distributed.world_size=2"])):
        tdx("train", *SRCNN, "srnam.srcnn.steps=6", *extra, f"paths.runs_dir={name}",
            cwd=tmp_path, check=True, timeout=600)
    r1, r2 = only_run(tmp_path / "one"), only_run(tmp_path / "two")
    assert train_losses(r2) == pytest.approx(train_losses(r1), rel=1e-4)
    sums = summary(r2)["param_checksums"]["srcnn_bicubic"]
    assert len(sums) == 2 and sums[0] == sums[1]
    one = float(summary(r1)["param_checksums"]["srcnn_bicubic"][0])
    assert float(sums[0]) == pytest.approx(one, rel=1e-5)  # equal up to float sum order


def _rank_pids(parent: int) -> list[int]:
    """The spawned rank processes of a `tdx train` process, oldest first."""
    pids = []
    for d in Path("/proc").iterdir():
        try:
            stat = (d / "stat").read_text().split()
            cmd = (d / "cmdline").read_bytes()
        except OSError:
            continue
        if d.name.isdigit() and int(stat[3]) == parent and b"spawn_main" in cmd:
            pids.append(int(d.name))
    return sorted(pids)


def test_sigterm_two_ranks_then_resume_with_one(tmp_path):
    proc = subprocess.Popen([TDX, "train", *SRCNN, "srnam.srcnn.steps=400",
                             "trainer.log_every=5", "distributed.world_size=2",
                             "paths.runs_dir=cut"], cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    wait_for_lines(tmp_path / "cut", 4)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out[-3000:]
    run = only_run(tmp_path / "cut")
    assert summary(run)["status"] == "interrupted"
    assert (run / "checkpoints" / "srcnn_bicubic_last.pt").exists()
    res = tdx("train", "srnam", f"resume={run}", "distributed.world_size=1", cwd=tmp_path,
              timeout=600)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    steps = [json.loads(x)["step"] for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(5, 401, 5))


def test_a_dead_rank_stops_the_job_and_fails_the_run(tmp_path):
    proc = subprocess.Popen([TDX, "train", *SRCNN, "srnam.srcnn.steps=100000",
                             "trainer.log_every=5", "distributed.world_size=2",
                             "distributed.timeout_s=30", "paths.runs_dir=dead"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    wait_for_lines(tmp_path / "dead", 2)
    ranks = _rank_pids(proc.pid)
    assert len(ranks) == 2, ranks
    os.kill(ranks[-1], signal.SIGKILL)
    t0 = time.time()
    out, _ = proc.communicate(timeout=120)
    assert time.time() - t0 < 60
    assert proc.returncode == 1, out[-3000:]
    s = summary(only_run(tmp_path / "dead"))
    assert s["status"] == "failed" and "SIGKILL" in s["error"], s.get("error")
    assert not _rank_pids(proc.pid)


def test_two_machines_as_two_launchers_on_localhost(tmp_path):
    from tdx.train import free_port

    port = free_port()
    procs = [subprocess.Popen([TDX, "train", *SRCNN, "srnam.srcnn.steps=4",
                               "distributed.world_size=2", "distributed.nnodes=2",
                               f"distributed.node_rank={k}", f"distributed.master_port={port}",
                               f"paths.runs_dir=node{k}"], cwd=tmp_path, text=True,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
             for k in (0, 1)]
    outs = [p.communicate(timeout=300)[0] for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs[0][-2000:] + outs[1][-2000:]
    s0, s1 = summary(only_run(tmp_path / "node0")), summary(only_run(tmp_path / "node1"))
    assert s0["status"] == "completed" and s0["world_size"] == 2 and s0["nnodes"] == 2
    sums = s0["param_checksums"]["srcnn_bicubic"]
    assert len(sums) == 2 and sums[0] == sums[1]
    assert s1["status"] == "completed" and "node 1" in s1["note"]


def test_torchrun_starts_the_ranks(tmp_path):
    torchrun = str(Path(TDX).with_name("torchrun"))
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node", "2", TDX, "train",
                           *SRCNN, "srnam.srcnn.steps=4", "paths.runs_dir=tr"], cwd=tmp_path,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    s = summary(only_run(tmp_path / "tr"))  # one run folder, written by rank 0
    assert s["status"] == "completed" and s["world_size"] == 2
    sums = s["param_checksums"]["srcnn_bicubic"]
    assert len(sums) == 2 and sums[0] == sums[1]


def test_joblib_sweep_runs_two_jobs(tmp_path, runs):
    proc = tdx("train", "copy", *TINY, "-m", "seed=1,2", "hydra/launcher=joblib",
               f"paths.runs_dir={runs}", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    found = sorted(p.parent for p in runs.rglob("summary.json"))
    assert len(found) == 2 and all(summary(p)["status"] == "completed" for p in found)
    assert sorted(summary(p)["seed"] for p in found) == [1, 2]


@pytest.mark.parametrize("launcher", ["slurm", "slurm_gpu", "local_parallel"])
def test_cluster_launcher_configs_compose(launcher):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from tdx.config import CONF_DIR

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        cfg = hydra_compose("tdx", overrides=["experiment=copy", f"hydra/launcher={launcher}"],
                            return_hydra_config=True)
    assert cfg.hydra.launcher._target_
    assert compose("copy").distributed.world_size == 1


def test_a_rank_stops_only_when_every_rank_agrees(tmp_path, monkeypatch):
    """A signal one rank received mid-update must not make it skip an update the other
    ranks are making (DDP would wait on it): run_stage acts on the all-reduced flag."""
    from omegaconf import OmegaConf

    from tdx import loop
    from tdx.run import RunDir, StopFlag

    stop, agreed, done = StopFlag(), [], []

    def step(i: int) -> dict[str, float]:
        if i == 2:
            stop.signum = signal.SIGTERM  # this rank's own flag only
        done.append(i)
        return {"loss": 1.0}

    def any_rank(flag: bool) -> bool:  # the other rank agrees from update 5 on
        agreed.append(flag)
        return flag and len(agreed) > 5

    monkeypatch.setattr(loop, "any_rank", any_rank)
    cfg = OmegaConf.create({"seed": 0, "trainer": {"log_every": 100, "valid_every": 100,
                                                   "save_every": 100}})
    stage = loop.Stage("s", steps=10, step=step, state={})
    with pytest.raises(loop.Interrupted):
        loop.run_stage(stage, cfg, RunDir(tmp_path), stop)
    assert done == [0, 1, 2, 3, 4]
    assert (tmp_path / "checkpoints" / "s_last.pt").exists()


def _toy_rank(local_rank: int, mode: str) -> None:
    """A rank for `distributed.launch`: rank 1 crashes the way `mode` says."""
    import resource

    from tdx import distributed

    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))  # SIGABRT leaves no core file
    if local_rank == 0:
        time.sleep(60 if mode == "abort_at_work" else 1)  # stopped early if rank 1 died
    elif mode == "abort_on_exit":  # gloo aborting a rank as it leaves, after its work
        distributed.shutdown = lambda: os.kill(os.getpid(), signal.SIGABRT)
    elif mode == "abort_at_work":
        os.kill(os.getpid(), signal.SIGABRT)
    elif mode == "raise":
        raise ValueError("bad shard")


@pytest.mark.parametrize("mode,error", [
    ("abort_on_exit", None),
    ("abort_at_work", "local rank 1 was killed by SIGABRT; the other ranks were stopped"),
    ("raise", "local rank 1 raised: ValueError: bad shard; the other ranks were stopped")])
def test_launch_fails_a_job_only_for_a_rank_that_died_before_its_work_was_done(
        mode, error, caplog):
    from tdx import distributed

    t0 = time.time()
    assert distributed.launch(_toy_rank, (mode,), 2, grace_s=5) == error
    assert time.time() - t0 < 40  # rank 0 did not sleep on
    if mode == "abort_on_exit":
        assert "local rank 1 was killed by SIGABRT while exiting" in caplog.text
