"""The tasks a teacher is fine-tuned on and every student is scored on (Rashid et al.,
EMNLP 2021, Sec. 4.1: GLUE plus the SentEval classification sets).

Each task names its files under the data dir, how a line becomes (text, text_b, label), and
its metrics. The score a recipe is compared by ("% of the teacher") is `primary`: accuracy,
or the GLUE convention of averaging the two figures reported for MRPC (F1, accuracy) and
STS-B (Pearson, Spearman).

Splits: SST-2 and STS-B are scored on GLUE's dev set; MRPC on the MSR corpus' test file
(1,725 pairs), the teacher training on all 4,076 training pairs, GLUE's 408 dev pairs
included, so MRPC figures are test figures and not comparable with GLUE-dev ones; the
SentEval sets on their held-out file.

Files the machine does not have (RTE, MNLI, QNLI, QQP) work the same way once a user puts
GLUE's `train.tsv` / `dev.tsv` (or `dev_matched.tsv` for MNLI) under `glue/<TASK>/`.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from tdx.datafiles import read_text
from tdx.errors import UsageError

Example = tuple[str, str | None, float]  # text, text_b (pair tasks), label (class or score)


@dataclass(frozen=True)
class Task:
    name: str
    folder: str  # under the data dir
    train: str
    eval: str  # the split scores are reported on
    parse: Callable[[list[str]], Example | None] | None  # a row -> example, or
    labels: int  # 1 = regression
    metrics: tuple[str, ...]
    header: bool = True
    columns: tuple[str, str, str, tuple[str, ...]] | None = None  # GLUE tsv: by header name

    @property
    def pair(self) -> bool:
        return self.name in PAIR_TASKS

    @property
    def regression(self) -> bool:
        return self.labels == 1

    def files(self) -> list[str]:
        return [f"{self.folder}/{self.train}", f"{self.folder}/{self.eval}"]


def _label_last(row: list[str]) -> Example | None:  # sentence<TAB>label
    return (row[0].strip(), None, float(row[1])) if len(row) >= 2 else None


def _label_first(row: list[str]) -> Example | None:  # label<TAB>sentence (SentEval)
    return (row[1].strip(), None, float(row[0])) if len(row) >= 2 else None


def _mrpc(row: list[str]) -> Example | None:  # Quality, #1 ID, #2 ID, #1 String, #2 String
    return (row[3], row[4], float(row[0])) if len(row) >= 5 else None


def _stsb(row: list[str]) -> Example | None:  # genre, file, year, id, score, s1, s2 [extra]
    return (row[5], row[6], float(row[4])) if len(row) >= 7 else None


TASKS: dict[str, Task] = {t.name: t for t in [
    Task("sst2", "glue/SST-2", "train.tsv", "dev.tsv", _label_last, 2, ("acc",)),
    Task("mrpc", "glue/MRPC", "msr_paraphrase_train.txt", "msr_paraphrase_test.txt", _mrpc, 2,
         ("f1", "acc")),
    Task("stsb", "glue/STS-B", "sts-train.tsv", "sts-dev.tsv", _stsb, 1,
         ("pearson", "spearman"), header=False),
    Task("mr", "senteval/MR", "train.tsv", "dev.tsv", _label_first, 2, ("acc",), header=False),
    Task("cr", "senteval/CR", "train.tsv", "dev.tsv", _label_first, 2, ("acc",), header=False),
    Task("subj", "senteval/SUBJ", "train.tsv", "dev.tsv", _label_first, 2, ("acc",),
         header=False),
    Task("mpqa", "senteval/MPQA", "train.tsv", "dev.tsv", _label_first, 2, ("acc",),
         header=False),
    Task("rte", "glue/RTE", "train.tsv", "dev.tsv", None, 2, ("acc",),
         columns=("sentence1", "sentence2", "label", ("entailment", "not_entailment"))),
    Task("mnli", "glue/MNLI", "train.tsv", "dev_matched.tsv", None, 3, ("acc",),
         columns=("sentence1", "sentence2", "gold_label",
                  ("entailment", "neutral", "contradiction"))),
    Task("qnli", "glue/QNLI", "train.tsv", "dev.tsv", None, 2, ("acc",),
         columns=("question", "sentence", "label", ("entailment", "not_entailment"))),
    Task("qqp", "glue/QQP", "train.tsv", "dev.tsv", None, 2, ("f1", "acc"),
         columns=("question1", "question2", "is_duplicate", ("0", "1"))),
]}
PAIR_TASKS = {"mrpc", "stsb", "rte", "mnli", "qnli", "qqp"}


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise UsageError(f"unknown task '{name}'; tasks: {', '.join(TASKS)}")
    return TASKS[name]


def task_paths(task: Task, data_dir: Path) -> list[Path]:
    return [data_dir / f for f in task.files()]


def read(task: Task, data_dir: Path, split: str) -> list[Example]:
    """The examples of `split` ("train" or "eval"); a missing file is a UsageError that says
    where to put it."""
    path = data_dir / task.folder / (task.train if split == "train" else task.eval)
    if not path.exists():
        raise UsageError(f"task {task.name}: {path} not found. Put the GLUE/SentEval file "
                         f"there (expected: {', '.join(task.files())} under the data dir, "
                         "TDX_DATA_DIR or paths.data_dir=...).")
    text = read_text(path)  # a UsageError names a file that is not UTF-8 text
    rows = list(csv.reader(io.StringIO(text, newline=""), delimiter="\t",
                           quoting=csv.QUOTE_NONE))
    out: list[Example] = []
    if task.columns:  # GLUE tsv with a header naming the columns
        a, b, label, classes = task.columns
        head = rows[0]
        try:
            ia, ib, il = head.index(a), head.index(b), head.index(label)
        except ValueError:
            raise UsageError(f"{path}: expected columns {a}, {b}, {label} in the header, "
                             f"found {head}") from None
        for row in rows[1:]:
            if len(row) > max(ia, ib, il) and row[il] in classes:
                out.append((row[ia], row[ib], float(classes.index(row[il]))))
    else:
        assert task.parse is not None
        for row in rows[1 if task.header else 0:]:
            ex = task.parse(row)
            if ex is not None and ex[0]:
                out.append(ex)
    if not out:
        raise UsageError(f"task {task.name}: no examples could be read from {path}")
    return out


# ----------------------------------------------------------------------------- metrics
def scores(task: Task, pred: list[float], gold: list[float]) -> dict[str, float]:
    """The task's metrics in percent (GLUE style), plus `primary`, their mean."""
    from scipy.stats import pearsonr, spearmanr
    from sklearn.metrics import accuracy_score, f1_score

    out: dict[str, float] = {}
    if task.regression:  # a constant prediction has no correlation: 0 (scipy: nan)
        varied = len(set(pred)) > 1 and len(set(gold)) > 1
        out["pearson"] = 100 * float(pearsonr(pred, gold).statistic) if varied else 0.0
        out["spearman"] = 100 * float(spearmanr(pred, gold).statistic) if varied else 0.0
    else:
        out["acc"] = 100 * float(accuracy_score(gold, pred))
        if "f1" in task.metrics:  # of the positive class
            out["f1"] = 100 * float(f1_score(gold, pred, pos_label=1, zero_division=0))
    out = {k: round(out[k], 2) for k in task.metrics}
    out["primary"] = round(sum(out.values()) / len(out), 2)
    return out
