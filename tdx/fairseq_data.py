"""Shared by the data preparers (tdx.mt_data, tdx.lm_data): reading text, fairseq-preprocess."""

from __future__ import annotations

import gzip
import logging
from pathlib import Path


def read_lines(path: Path) -> list[str]:
    """Lines of a text file, gzipped or not, stripped."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rt", encoding="utf-8") as f:
        return [line.rstrip("\n").strip() for line in f]


def fairseq_preprocess(argv: list[str]) -> None:
    """Run fairseq-preprocess in this process (it resets the root logger's level; put back)."""
    from fairseq import options
    from fairseq_cli import preprocess

    args = options.get_preprocessing_parser().parse_args(argv)
    root = logging.getLogger()
    level = root.level
    try:
        preprocess.main(args)
    finally:
        root.setLevel(level)
