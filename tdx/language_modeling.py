"""fairseq task `tdx_language_modeling`: fairseq's `language_modeling` on text that prepares
itself into the task's data folder on first use (tdx.lm_data): character-level Tiny
Shakespeare or word-level WikiText-103."""

from dataclasses import dataclass, field
from pathlib import Path

from fairseq.tasks import register_task
from fairseq.tasks.language_modeling import LanguageModelingConfig, LanguageModelingTask

from tdx.distributed import rank_zero_first
from tdx.lm_data import prepare


@dataclass
class TdxLanguageModelingConfig(LanguageModelingConfig):
    raw_level: str = field(default="", metadata={
        "help": "char | word: prepare the data folder from raw text on first use (empty: "
                "the data folder is already fairseq data)"})
    raw_train: str = field(default="", metadata={"help": "training text (char: the file "
                                                         "split by position)"})
    raw_valid: str = field(default="", metadata={"help": "validation text (word level)"})
    raw_test: str = field(default="", metadata={"help": "test text (word level)"})
    train_fraction: float = field(default=0.9, metadata={
        "help": "char level: leading share of the characters used for training"})


@register_task("tdx_language_modeling", dataclass=TdxLanguageModelingConfig)
class TdxLanguageModelingTask(LanguageModelingTask):
    @classmethod
    def setup_task(cls, cfg: TdxLanguageModelingConfig, **kwargs) -> "TdxLanguageModelingTask":  # noqa: ANN003
        if cfg.raw_level:
            files = {"train": Path(cfg.raw_train)}
            if cfg.raw_level == "word":
                files.update(valid=Path(cfg.raw_valid), test=Path(cfg.raw_test))
            with rank_zero_first():  # one rank prepares, the others find it cached
                prepare(Path(cfg.data.split(":")[0]), cfg.raw_level, files, cfg.train_fraction)
        return super().setup_task(cfg, **kwargs)
