"""fairseq task `tdx_translation`: fairseq's `translation` on data that prepares itself.

On first use the raw parallel text under `raw_dir` becomes joint-sentencepiece fairseq
data in the task's data folder (tdx.mt_data); later runs, `fairseq-generate` included,
find it there. Hypotheses are detokenised (sentencepiece decoded) and scored by sacreBLEU
against the untouched reference text, never against re-decoded pieces.
"""

from dataclasses import dataclass, field
from pathlib import Path

import torch
from fairseq.tasks import register_task
from fairseq.tasks.translation import TranslationConfig, TranslationTask

from tdx.datafiles import read_lines
from tdx.distributed import rank_zero_first
from tdx.mt_data import prepare


@dataclass
class TdxTranslationConfig(TranslationConfig):
    raw_dir: str = field(default="", metadata={
        "help": "folder of {stem}.{lang}[.gz] text, prepared into the data folder on first "
                "use (empty: the data folder is already fairseq data)"})
    raw_train: str = field(default="train", metadata={"help": "file stem of the train split"})
    raw_valid: str = field(default="valid", metadata={"help": "file stem of the valid split"})
    raw_test: str = field(default="test", metadata={"help": "file stem of the test split"})
    spm_vocab: int = field(default=8000, metadata={"help": "joint sentencepiece vocabulary"})


@register_task("tdx_translation", dataclass=TdxTranslationConfig)
class TdxTranslationTask(TranslationTask):
    bleu_tokenize = "13a"  # sacreBLEU's default, on detokenised text
    train_data: str | None = None  # another folder for the train split (tdx.embed.seqkd)

    @classmethod
    def setup_task(cls, cfg: TdxTranslationConfig, **kwargs) -> "TdxTranslationTask":  # noqa: ANN003
        if cfg.raw_dir:
            stems = {"train": cfg.raw_train, "valid": cfg.raw_valid, "test": cfg.raw_test}
            with rank_zero_first():  # one rank prepares, the others find it cached
                prepare(Path(cfg.raw_dir), Path(cfg.data.split(":")[0]), cfg.source_lang,
                        cfg.target_lang, stems, cfg.spm_vocab)
        return super().setup_task(cfg, **kwargs)

    def load_dataset(self, split: str, epoch: int = 1, combine: bool = False,
                     **kwargs) -> None:  # noqa: ANN003
        """fairseq's, with the train split read from `train_data` when that is set."""
        if split != "train" or not self.train_data:
            return super().load_dataset(split, epoch, combine, **kwargs)
        data, self.cfg.data = self.cfg.data, self.train_data
        try:
            return super().load_dataset(split, epoch, combine, **kwargs)
        finally:
            self.cfg.data = data

    def decode_tokens(self, tokens: torch.Tensor) -> str:
        return self.tgt_dict.string(tokens, "sentencepiece")

    def reference_text(self, split: str, index: int) -> str | None:
        """The original target sentence `index` of `split` (None if not prepared by tdx)."""
        if not hasattr(self, "_refs"):
            self._refs: dict[str, list[str]] = {}
        if split not in self._refs:
            path = Path(self.cfg.data.split(":")[0]) / f"ref.{split}.{self.cfg.target_lang}"
            self._refs[split] = read_lines(path) if path.exists() else []
        refs = self._refs[split]
        return refs[index] if index < len(refs) else None
