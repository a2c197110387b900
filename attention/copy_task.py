"""The copy task of "Copy this Sentence" (Lioutas & Drozdyuk 2019, Sec. 4): the target is
the source sentence itself. A fairseq task with in-memory data, two sources:

- `random` (default, needs no files): sentences of seeded random words, so a fresh clone
  can train offline;
- `wikitext`: real English sentences of at most `max_tokens_per_sentence` tokens from
  WikiText-2 under the data dir (10k train / 1k valid / 1k test, as the paper did with its
  corpus).
"""


import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from fairseq.data import Dictionary, LanguagePairDataset
from fairseq.dataclass import FairseqDataclass
from fairseq.tasks import FairseqTask, register_task

from tdx.datafiles import read_text

WIKITEXT_FILES = ("text/wikitext-2/valid.txt", "text/wikitext-2/test.txt")


@dataclass
class CopyConfig(FairseqDataclass):
    source: str = field(default="random", metadata={"help": "random | wikitext"})
    data_dir: str = field(default="data", metadata={"help": "tdx data dir (for wikitext)"})
    vocab_size: int = field(default=100, metadata={"help": "random words in the vocabulary"})
    min_len: int = field(default=3, metadata={"help": "shortest sentence (random source)"})
    max_len: int = field(default=12, metadata={"help": "longest sentence (random source)"})
    max_tokens_per_sentence: int = field(default=30, metadata={"help": "wikitext filter"})
    train_size: int = 10000
    valid_size: int = 1000
    test_size: int = 1000
    data_seed: int = field(default=1, metadata={"help": "seed of the sentence sample"})
    max_source_positions: int = 1024
    max_target_positions: int = 1024


def random_sentences(n: int, vocab_size: int, min_len: int, max_len: int, seed: int
                     ) -> list[list[str]]:
    """n sentences of uniform length in [min_len, max_len] over words w0..w{V-1}, drawn
    with Zipfian frequencies (as in natural text)."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, vocab_size + 1)
    p /= p.sum()
    lengths = rng.integers(min_len, max_len + 1, size=n)
    return [[f"w{i}" for i in rng.choice(vocab_size, size=k, p=p)] for k in lengths]


def wikitext_sentences(data_dir: Path, max_tokens: int) -> list[list[str]]:
    """Sentences (split after ' . ', ' ? ', ' ! ') of 3..max_tokens tokens from WikiText-2
    valid+test, headings and empty lines dropped, first occurrence kept."""
    seen: set[str] = set()
    out = []
    for rel in WIKITEXT_FILES:
        for line in read_text(data_dir / rel).splitlines():
            line = line.strip()
            if not line or line.startswith("="):
                continue
            for sent in re.split(r"(?<= [.?!]) ", line):
                toks = sent.split()
                if 3 <= len(toks) <= max_tokens and sent not in seen:
                    seen.add(sent)
                    out.append(toks)
    return out


def required_files(cfg: CopyConfig) -> list[str]:
    return list(WIKITEXT_FILES) if cfg.source == "wikitext" else []


@register_task("tdx_copy", dataclass=CopyConfig)
class CopyTask(FairseqTask):
    """Source = target = a sentence; one shared dictionary built on the training split."""

    bleu_tokenize = "none"  # sentences are already whitespace tokens

    def __init__(self, cfg: CopyConfig, dictionary: Dictionary,
                 splits: dict[str, list[list[str]]]) -> None:
        super().__init__(cfg)
        self.dictionary = dictionary
        self.splits = splits

    @classmethod
    def setup_task(cls, cfg: CopyConfig, **kwargs) -> "CopyTask":  # noqa: ANN003
        n = cfg.train_size + cfg.valid_size + cfg.test_size
        if cfg.source == "random":
            sents = random_sentences(n, cfg.vocab_size, cfg.min_len, cfg.max_len, cfg.data_seed)
        elif cfg.source == "wikitext":
            sents = wikitext_sentences(Path(cfg.data_dir), cfg.max_tokens_per_sentence)
            if len(sents) < n:
                raise ValueError(f"WikiText-2 gives {len(sents)} sentences, fewer than the "
                                 f"{n} asked for (train+valid+test sizes)")
            random.Random(cfg.data_seed).shuffle(sents)
        else:
            raise ValueError(f"unknown copy source {cfg.source!r}: use random or wikitext")
        a, b = cfg.train_size, cfg.train_size + cfg.valid_size
        splits = {"train": sents[:a], "valid": sents[a:b], "test": sents[b:n]}
        d = Dictionary()
        for s in splits["train"]:
            for w in s:
                d.add_symbol(w)
        d.finalize(padding_factor=8)
        return cls(cfg, d, splits)

    def load_dataset(self, split: str, **kwargs) -> None:  # noqa: ANN003
        ids = [self.dictionary.encode_line(" ".join(s), add_if_not_exist=False,
                                           append_eos=True).long() for s in self.splits[split]]
        sizes = np.array([len(t) for t in ids])
        self.datasets[split] = LanguagePairDataset(
            ids, sizes, self.dictionary, [t.clone() for t in ids], sizes, self.dictionary,
            left_pad_source=True, left_pad_target=False, shuffle=(split == "train"))

    def max_positions(self) -> tuple[int, int]:
        return (self.cfg.max_source_positions, self.cfg.max_target_positions)

    @property
    def source_dictionary(self) -> Dictionary:
        return self.dictionary

    @property
    def target_dictionary(self) -> Dictionary:
        return self.dictionary

    def decode_tokens(self, tokens: torch.Tensor) -> str:
        return self.dictionary.string(tokens)
