"""What the zero-shot student reads instead of task data (Rashid et al. 2021, Sec. 3.1).

- `ood_sentences`: sentences of out-of-domain English text (WikiText-2 valid/test by
  default), 4-60 words, as "articles" (lists of neighbouring sentences). Three layouts,
  told apart by the text itself (a `.gz` file is read gunzipped):
  - WikiText (it has "= Title =" headings): an article per heading, lines split after
    " . ", headings dropped; `<unk>` becomes the tokenizer's "[UNK]" and the "@-@" style
    joiners plain characters.
  - paragraphs (blank lines between blocks, e.g. Tiny Shakespeare): an article per block,
    a leading speaker line ("First Citizen:") dropped, the block's lines joined and split
    after ". ", "! " or "? ".
  - a sentence per line with no blank lines (e.g. Multi30k's English captions): each
    line a sentence, articles of `LINES_PER_ARTICLE` consecutive lines.
- `ood_pairs`, for sentence-pair tasks, built heuristically from those sentences (no task
  data): a third are neighbouring sentences of the same article (related, rarely
  paraphrases), a third a sentence and an edited copy of itself, a third two random
  sentences (unrelated). An edited copy has an edit strength e drawn uniformly from [0, 1]:
  each word is dropped with probability 0.4 e, replaced by a word of the next sentence with
  probability 0.4 e, and two adjacent words are swapped. Light edits are near-paraphrases,
  heavy ones share only part of their words, so the pairs cover the teacher's pair head
  between "same" and "unrelated", not only its two ends: with near-copies only, a student
  learns "paraphrase = almost the same words" and calls every reworded MRPC paraphrase
  negative (the MRPC teacher's P(paraphrase) falls from 0.98 at e < 0.2 to 0.38 at
  e > 0.8; on neighbouring and random pairs it is 0.03 and 0.01).
- `crop`: a random contiguous span of a sentence (optional augmentation of the single-
  sentence recipes, `zskd.ood.crop`: each drawn sentence is replaced by a span with that
  probability), so a small text yields many more distinct inputs (not in the paper).
- `random_tokens`: the "random token sequences" baseline (recipe 3): uniformly drawn
  word pieces, with sentence lengths drawn from the out-of-domain text.

`guard_no_task_data` is the rule that the zero-shot recipes never read a task input: any
out-of-domain file inside a task's folder (glue/, senteval/, or a registered task folder)
is refused before anything is read.
"""

from __future__ import annotations

import random
import re
from pathlib import Path

import torch

from tdx.datafiles import read_lines
from tdx.distill.tasks import TASKS
from tdx.errors import UsageError

TASK_ROOTS = ("glue", "senteval")


def guard_no_task_data(files: list[str], data_dir: Path) -> list[Path]:
    """The out-of-domain files, resolved; a UsageError if any lies in task data."""
    task_dirs = {(data_dir / root).resolve() for root in TASK_ROOTS}
    task_dirs |= {(data_dir / t.folder).resolve() for t in TASKS.values()}
    paths = []
    for f in files:
        path = (data_dir / f).resolve()
        if any(path == d or d in path.parents for d in task_dirs):
            raise UsageError(f"zero-shot distillation must not read task data, but the "
                             f"out-of-domain text includes {f} (inside a task folder: "
                             f"{', '.join(TASK_ROOTS)}). Use non-task text such as "
                             "text/wikitext-2/valid.txt.")
        if not path.exists():
            raise UsageError(f"out-of-domain text {path} not found (data dir {data_dir})")
        paths.append(path)
    return paths


LINES_PER_ARTICLE = 20
_HEADING = re.compile(r"= [^=].* =")
_SENTENCE_END = re.compile(r"(?<=[.!?]) ")
_WIKI_SENTENCE_END = re.compile(r"(?<= [.!?]) ")  # WikiText is tokenized: "word . Next"


def _wikitext_articles(lines: list[str]) -> list[list[str]]:
    articles: list[list[str]] = []
    current: list[str] = []
    for line in lines:
        if _HEADING.fullmatch(line):  # a new article
            articles.append(current)
            current = []
        elif line and not line.startswith("="):  # "= = Section = =" headings dropped
            line = line.replace("<unk>", "[UNK]").replace(" @-@ ", "-").replace(
                " @,@ ", ",").replace(" @.@ ", ".")
            current.extend(_WIKI_SENTENCE_END.split(line))
    return [*articles, current]


def _paragraph_articles(lines: list[str]) -> list[list[str]]:
    blocks: list[list[str]] = [[]]
    for line in lines:
        if line:
            blocks[-1].append(line)
        elif blocks[-1]:
            blocks.append([])
    articles = []
    for block in blocks:
        if block and block[0].endswith(":") and len(block[0].split()) <= 4:  # speaker
            block = block[1:]
        articles.append(_SENTENCE_END.split(" ".join(block)))
    return articles


def _line_articles(lines: list[str]) -> list[list[str]]:
    return [lines[i:i + LINES_PER_ARTICLE] for i in range(0, len(lines), LINES_PER_ARTICLE)]


def ood_sentences(files: list[str], data_dir: Path, min_words: int = 4, max_words: int = 60
                  ) -> list[list[str]]:
    """Articles (lists of sentences) of the out-of-domain text, task data refused."""
    articles: list[list[str]] = []
    for path in guard_no_task_data(files, data_dir):
        lines = read_lines(path)  # a UsageError names a file that is not UTF-8 text
        if any(_HEADING.fullmatch(line) for line in lines):
            found = _wikitext_articles(lines)
        elif "" in lines[:-1]:
            found = _paragraph_articles(lines)
        else:
            found = _line_articles([line for line in lines if line])
        for article in found:
            kept = [s.strip() for s in article if min_words <= len(s.split()) <= max_words]
            if kept:
                articles.append(kept)
    if not articles:
        raise UsageError(f"no sentences of {min_words}-{max_words} words in {files}")
    return articles


def flatten(articles: list[list[str]]) -> list[str]:
    return [s for a in articles for s in a]


def _edited_copy(sentence: str, other: str, rng: random.Random) -> str:
    """`sentence` with an edit strength e ~ U(0, 1): each word dropped with probability
    0.4 e or replaced by a word of `other` with probability 0.4 e; two neighbours swapped."""
    e, pool = rng.random(), other.split()
    kept = []
    for w in sentence.split():
        r = rng.random()
        if r >= 0.4 * e:
            kept.append(rng.choice(pool) if r < 0.8 * e else w)
    kept = kept or sentence.split()[:1]
    if len(kept) > 2:
        i = rng.randrange(len(kept) - 1)
        kept[i], kept[i + 1] = kept[i + 1], kept[i]
    return " ".join(kept)


def ood_pairs(articles: list[list[str]], n: int, seed: int) -> list[tuple[str, str]]:
    """`n` sentence pairs: neighbours, edited copies and random pairs, a third each."""
    rng = random.Random(seed)
    flat = flatten(articles)
    multi = [a for a in articles if len(a) > 1]
    pairs = []
    for i in range(n):
        kind = i % 3
        if kind == 2 or not multi:
            pairs.append((rng.choice(flat), rng.choice(flat)))
            continue
        art = rng.choice(multi)
        j = rng.randrange(len(art) - 1)
        pairs.append((art[j], art[j + 1]) if kind == 0 else
                     (art[j], _edited_copy(art[j], art[j + 1], rng)))
    return pairs


def crop(sentence: str, rng: torch.Generator, min_words: int = 4) -> str:
    """A contiguous span of `sentence`: its length uniform in [min_words, n] words (the
    whole sentence if it is shorter), its start uniform."""
    words = sentence.split()
    n = len(words)
    if n <= min_words:
        return sentence
    length = int(torch.randint(min_words, n + 1, (1,), generator=rng))
    start = int(torch.randint(0, n - length + 1, (1,), generator=rng))
    return " ".join(words[start:start + length])


def random_tokens(lengths: list[int], vocab: list[int], n: int, seed: int) -> list[list[int]]:
    """`n` sequences of word-piece ids drawn uniformly from `vocab`, lengths drawn from
    `lengths` (those of the out-of-domain text)."""
    rng = random.Random(seed)
    return [[rng.choice(vocab) for _ in range(rng.choice(lengths))] for _ in range(n)]
