"""Language-model text -> fairseq binary data (dict.txt, {train,valid,test}.bin/idx), once.

- char level (Tiny Shakespeare): one file split by position (first `train_fraction` of the
  characters for training, the rest for validation, as char-rnn and nanoGPT do). Every
  character is a token (a space is written as U+2581, which the text never contains) and
  each line's end-of-sentence token stands for its newline, so tokens = characters and the
  loss per token is the loss per character.
- word level (WikiText-103): the files' whitespace tokens, one line a sentence.

out_dir/prepared.json records the settings; other settings rebuild the folder.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

from tdx.datafiles import read_text
from tdx.fairseq_data import fairseq_preprocess

SPACE = "\u2581"


def char_lines(text: str) -> list[str]:
    """'ab c\\nd' -> ['a b ▁ c', 'd'] (the newline becomes the line's end-of-sentence)."""
    if text.endswith("\n"):
        text = text[:-1]
    return [" ".join(SPACE if c == " " else c for c in line) for line in text.split("\n")]


def prepare(out_dir: Path, level: str, files: dict[str, Path], train_fraction: float = 0.9
            ) -> Path:
    """files: {"train": path} for char level (split by position), or {"train", "valid",
    "test"} paths for word level."""
    settings: dict[str, Any] = {"level": level, "files": {k: str(Path(v).resolve())
                                                          for k, v in files.items()},
                                "train_fraction": train_fraction, "format": 1}
    stamp = out_dir / "prepared.json"
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return out_dir
    missing = [str(p) for p in files.values() if not Path(p).exists()]
    if missing:
        raise FileNotFoundError("language-model text missing: " + ", ".join(missing))
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work = out_dir / "text"
    work.mkdir(parents=True)
    if level == "char":
        text = read_text(Path(files["train"]))
        if SPACE in text:
            raise ValueError(f"{files['train']} contains U+2581, used here for spaces")
        cut = int(len(text) * train_fraction)
        splits = {"train": text[:cut], "valid": text[cut:]}
        for split, part in splits.items():
            (work / split).write_text("\n".join(char_lines(part)) + "\n", encoding="utf-8")
    elif level == "word":
        for split, path in files.items():
            shutil.copyfile(path, work / split)
    else:
        raise ValueError(f"unknown level {level!r}: use char or word")
    binarize(work, out_dir, [s for s in ("valid", "test") if (work / s).exists()])
    shutil.rmtree(work)
    stamp.write_text(json.dumps(settings, indent=1))
    return out_dir


def binarize(text_dir: Path, out_dir: Path, eval_splits: list[str]) -> None:
    """fairseq-preprocess --only-source (a language model's data)."""
    argv = ["--only-source", "--trainpref", str(text_dir / "train"), "--destdir", str(out_dir),
            "--workers", "1"]
    for split in eval_splits:
        argv += [f"--{split}pref", str(text_dir / split)]
    fairseq_preprocess(argv)
