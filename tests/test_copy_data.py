"""Copy-task data: seeded random sentences and real WikiText-2 sentences."""

import os
from pathlib import Path

import pytest

from tdx.attention.copy_task import CopyConfig, CopyTask, random_sentences, wikitext_sentences

DATA = Path(os.environ["TDX_DATA_DIR"])


def test_random_sentences_are_seeded():
    a = random_sentences(50, 20, 3, 7, seed=1)
    assert a == random_sentences(50, 20, 3, 7, seed=1)
    assert a != random_sentences(50, 20, 3, 7, seed=2)
    assert all(3 <= len(s) <= 7 for s in a)


def test_task_splits_and_targets_equal_sources():
    task = CopyTask.setup_task(CopyConfig(train_size=100, valid_size=10, test_size=10))
    task.load_dataset("valid")
    item = task.dataset("valid")[0]
    assert (item["source"] == item["target"]).all()
    assert item["source"][-1] == task.dictionary.eos()
    assert len(task.dataset("valid")) == 10


@pytest.mark.skipif(not (DATA / "text/wikitext-2/valid.txt").exists(), reason="no WikiText-2")
def test_wikitext_gives_enough_short_real_sentences():
    sents = wikitext_sentences(DATA, 30)
    assert len(sents) >= 12000
    assert all(3 <= len(s) <= 30 for s in sents)
    assert not any(s[0] == "=" for s in sents)
    task = CopyTask.setup_task(CopyConfig(source="wikitext", data_dir=str(DATA)))
    assert [len(task.splits[k]) for k in ("train", "valid", "test")] == [10000, 1000, 1000]
