"""Sequence-level knowledge distillation data (Kim & Rush, EMNLP 2016, Sec. 3.2): the
training targets replaced by the teacher's beam-search translations of the training sources.

A student trained on the teacher's mode instead of the references has a simpler target
distribution to fit, which helps capacity-limited students (a low-rank shared embedding
caps the rank of the output logits). The teacher decodes the train split once, and the
result is cached next to its checkpoint as fairseq binary data in the task's dictionary:

    {checkpoint dir}/../seqkd/beam{N}/train.{src}-{tgt}.{tgt}.{bin,idx}  teacher outputs
                                     train.{src}-{tgt}.{src}.{bin,idx}  the sources (links)
                                     dict.*.txt                         the dictionaries (links)
                                     made.json                          what made the folder

A folder made from another checkpoint (path, size, modification time), beam or length
limit is rebuilt, never reused.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

from torch import nn

from tdx.seqeval import generate

log = logging.getLogger("tdx")


def folder(checkpoint: Path, beam: int) -> Path:
    """Where the outputs of the teacher `checkpoint` (in a run folder's checkpoints/) go."""
    return checkpoint.resolve().parent.parent / "seqkd" / f"beam{beam}"


def prepare(task: Any, teacher: nn.Module, checkpoint: Path, beam: int, max_len_a: float,
            max_len_b: int, batch_size: int = 128) -> Path:
    """Decode the task's train split (from its data folder) with `teacher` and write the
    distilled train split; returns the folder (see the module docstring)."""
    src, tgt = task.cfg.source_lang, task.cfg.target_lang
    data = Path(task.cfg.data.split(":")[0]).resolve()
    stat = checkpoint.stat()
    made = {"checkpoint": str(checkpoint.resolve()), "size": stat.st_size,
            "mtime": stat.st_mtime, "beam": beam, "max_len_a": max_len_a,
            "max_len_b": max_len_b, "data": str(data), "format": 1,
            "prepared": (data / "prepared.json").read_text()
            if (data / "prepared.json").exists() else None}
    out = folder(checkpoint, beam)
    stamp = out / "made.json"
    if stamp.exists() and json.loads(stamp.read_text()) == made:
        log.info("sequence-level KD: the teacher's beam-%d training targets from %s", beam, out)
        return out
    if out.exists():
        shutil.rmtree(out)
    work = out.with_name(out.name + ".tmp")
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    stem = f"train.{src}-{tgt}"
    for name in (f"dict.{src}.txt", f"dict.{tgt}.txt", f"{stem}.{src}.bin", f"{stem}.{src}.idx"):
        os.symlink(data / name, work / name)
    task.load_dataset("train")  # the references' train split, from the data folder
    n = len(task.dataset("train"))
    hyps = _decode(task, teacher, n, beam, max_len_a, max_len_b, batch_size)
    _write(hyps, work / f"{stem}.{tgt}", len(task.target_dictionary))
    (work / "made.json").write_text(json.dumps(made, indent=1))
    work.rename(out)  # complete or absent: an interrupted decode is redone
    return out


def _decode(task: Any, teacher: nn.Module, n: int, beam: int, max_len_a: float,
            max_len_b: int, batch_size: int) -> list[Any]:
    """The teacher's best beam hypothesis (tokens, EOS last) for each of the n sentences."""
    hyps: list[Any] = [None] * n
    done, t0, last = 0, time.time(), 0.0
    log.info("sequence-level KD: the teacher translates %d training sentences (beam %d)",
             n, beam)
    for sample, tokens in generate(task, [teacher], "train", beam, batch_size, max_len_a,
                                   max_len_b):
        for sid, toks in zip(sample["id"].tolist(), tokens, strict=True):
            hyps[sid] = toks
        done += len(tokens)
        if time.time() - last > 30 or done == n:
            last = time.time()
            log.info("sequence-level KD: %d/%d sentences, %.0f sent/s", done, n,
                     done / max(last - t0, 1e-9))
    missing = [i for i, h in enumerate(hyps) if h is None]
    if missing:  # never expected (the iterator filters nothing): a clear error, not a crash
        raise ValueError(f"the teacher produced no translation for {len(missing)} training "
                         f"sentences (first: {missing[:5]})")
    return hyps


def _write(hyps: list[Any], prefix: Path, vocab: int) -> None:
    """fairseq mmap binary data prefix.{bin,idx}, item i = hyps[i]."""
    from fairseq.data import indexed_dataset

    builder = indexed_dataset.make_builder(f"{prefix}.bin", "mmap", vocab_size=vocab)
    for toks in hyps:
        builder.add_item(toks)
    builder.finalize(f"{prefix}.idx")
