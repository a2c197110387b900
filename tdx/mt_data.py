"""Parallel text -> joint sentencepiece -> fairseq binary data, prepared once and cached.

    raw_dir/{stem}.{lang}[.gz]  (one sentence a line, line-aligned across languages)
      -> out_dir/spm.model            sentencepiece trained on the training split, both sides
      -> out_dir/{split}.{src}-{tgt}.{lang}.{bin,idx}, dict.{lang}.txt (one joined dictionary)
      -> out_dir/ref.{split}.{lang}   the untouched text, the references sacreBLEU scores

Splits are named train / valid / test for fairseq; `stems` maps them to the files' names
(Multi30k: train, val, test_2016_flickr). out_dir/prepared.json records the settings; a
folder prepared with other settings is rebuilt, never mixed.
"""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path
from typing import Any

from tdx.datafiles import read_lines
from tdx.fairseq_data import fairseq_preprocess

log = logging.getLogger("tdx")
SPLITS = ("train", "valid", "test")


def raw_file(raw_dir: Path, stem: str, lang: str) -> Path:
    """{stem}.{lang}, or {stem}.{lang}.gz if only that exists."""
    plain = raw_dir / f"{stem}.{lang}"
    return plain if plain.exists() or not Path(f"{plain}.gz").exists() else Path(f"{plain}.gz")


def required_files(raw_dir: Path, stems: dict[str, str], langs: tuple[str, str]) -> list[Path]:
    return [raw_file(raw_dir, stems[s], lang) for s in SPLITS for lang in langs]


def prepare(raw_dir: Path, out_dir: Path, src: str, tgt: str, stems: dict[str, str],
            vocab_size: int) -> Path:
    """Build out_dir (see the module docstring) unless it is already built with the same
    settings. Raises FileNotFoundError naming every missing file, ValueError for splits
    whose two sides differ in length."""
    settings: dict[str, Any] = {"raw_dir": str(Path(raw_dir).resolve()), "src": src,
                                "tgt": tgt, "stems": dict(stems), "vocab_size": vocab_size,
                                "format": 1}
    stamp = out_dir / "prepared.json"
    if stamp.exists() and json.loads(stamp.read_text()) == settings:
        return out_dir
    missing = [str(p) for p in required_files(raw_dir, stems, (src, tgt)) if not p.exists()]
    if missing:
        raise FileNotFoundError("parallel data missing: " + ", ".join(missing))
    text = {(s, lang): read_lines(raw_file(raw_dir, stems[s], lang))
            for s in SPLITS for lang in (src, tgt)}
    for s in SPLITS:
        if len(text[s, src]) != len(text[s, tgt]):
            raise ValueError(f"{stems[s]}: {len(text[s, src])} {src} lines but "
                             f"{len(text[s, tgt])} {tgt} lines; the sides must be aligned")
    if out_dir.exists():
        shutil.rmtree(out_dir)
    work = out_dir / "spm"
    work.mkdir(parents=True)
    log.info("preparing %s-%s data in %s (sentencepiece %d)", src, tgt, out_dir, vocab_size)
    model = train_sentencepiece(text["train", src] + text["train", tgt], out_dir / "spm",
                                vocab_size)
    for (s, lang), lines in text.items():
        pieces = model.encode(lines, out_type=str)
        (work / f"{s}.{lang}").write_text("".join(" ".join(p) + "\n" for p in pieces),
                                          encoding="utf-8")
        (out_dir / f"ref.{s}.{lang}").write_text("".join(x + "\n" for x in lines),
                                                 encoding="utf-8")
    binarize(work, out_dir, src, tgt)
    shutil.rmtree(work)
    stamp.write_text(json.dumps(settings, indent=1))
    return out_dir


def train_sentencepiece(lines: list[str], prefix: Path, vocab_size: int) -> Any:
    """A joint unigram sentencepiece model on both sides of the training text."""
    import sentencepiece as spm

    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(lines), model_prefix=str(prefix), vocab_size=vocab_size,
        model_type="unigram", character_coverage=1.0, num_threads=1,
        # fairseq's dictionary adds its own <s> <pad> </s> <unk>
        bos_id=-1, eos_id=-1, unk_id=0, minloglevel=2)
    return spm.SentencePieceProcessor(model_file=f"{prefix}.model")


def binarize(text_dir: Path, out_dir: Path, src: str, tgt: str) -> None:
    """fairseq-preprocess with a joined dictionary (for shared embeddings)."""
    fairseq_preprocess([
        "--source-lang", src, "--target-lang", tgt, "--joined-dictionary",
        "--trainpref", str(text_dir / "train"), "--validpref", str(text_dir / "valid"),
        "--testpref", str(text_dir / "test"), "--destdir", str(out_dir), "--workers", "1"])
