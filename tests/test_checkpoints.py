"""fairseq checkpoints load under torch's weights_only default through an allow-list, and
`fairseq-generate --user-dir $(tdx plugin-dir)` decodes a tdx checkpoint."""

import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import TINY, only_run, tdx

LOAD = "import torch, sys; torch.load(sys.argv[1]); print('loaded')"


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ckpt")
    tdx("train", "copy", *TINY, f"paths.runs_dir={tmp / 'runs'}", cwd=tmp, check=True)
    return only_run(tmp / "runs")


def test_plain_torch_load_refuses_fairseq_checkpoint(trained):
    ckpt = trained / "checkpoints" / "checkpoint_best.pt"
    proc = subprocess.run([sys.executable, "-c", LOAD, str(ckpt)], capture_output=True,
                          text=True)
    assert proc.returncode != 0 and "weights_only" in proc.stderr


def test_allow_list_loads_it_with_weights_only(trained):
    ckpt = trained / "checkpoints" / "checkpoint_best.pt"
    code = "from tdx.checkpoints import allow_fairseq_checkpoints as a; a(); " + LOAD
    proc = subprocess.run([sys.executable, "-c", code, str(ckpt)], capture_output=True,
                          text=True)
    assert proc.returncode == 0, proc.stderr
    assert "loaded" in proc.stdout


def test_fairseq_generate_on_a_tdx_checkpoint(trained, tmp_path):
    plugin = tdx("plugin-dir", cwd=tmp_path, check=True).stdout.strip()
    gen = Path(sys.executable).with_name("fairseq-generate")
    proc = subprocess.run(
        [str(gen), "--user-dir", plugin, "--task", "tdx_copy", "--train-size", "300",
         "--valid-size", "40", "--test-size", "40", "--path",
         str(trained / "checkpoints" / "checkpoint_best.pt"), "--gen-subset", "test",
         "--beam", "2", "--batch-size", "16", "--cpu"],
        capture_output=True, text=True, cwd=tmp_path, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Generate test with beam=2" in proc.stdout + proc.stderr
    assert sum(line.startswith("H-") for line in proc.stdout.splitlines()) == 40


def test_iterator_state_of_an_unstarted_epoch_resumes_at_its_start():
    """A stop can land between epochs, after the next epoch's iterator was made but before
    a batch was drawn; the checkpoint must still record where to resume (CI once failed
    here with fairseq's own state_dict())."""
    from fairseq.data import ListDataset, iterators

    from tdx.fairseq_engine import iterator_state

    def make() -> iterators.EpochBatchIterator:
        return iterators.EpochBatchIterator(ListDataset(list(range(12))), collate_fn=lambda b: b,
                                            batch_sampler=[[i, i + 1] for i in range(0, 12, 2)],
                                            seed=1, epoch=1)

    itr = make()
    first = list(itr.next_epoch_itr(shuffle=True))
    fresh = make()
    fresh.load_state_dict(iterator_state(itr))  # end of epoch 1: next is epoch 2, batch 0
    assert iterator_state(fresh) == {"version": 2, "epoch": 2, "iterations_in_epoch": 0,
                                     "shuffle": True}
    second = list(fresh.next_epoch_itr(shuffle=True))
    assert len(second) == 6 and second != first  # a whole, reshuffled epoch 2
