"""Shared by the data preparers (tdx.mt_data, tdx.lm_data): fairseq-preprocess."""

from __future__ import annotations

import logging


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
