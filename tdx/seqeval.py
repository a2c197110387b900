"""Generation-based evaluation for sequence models: always autoregressive, never
teacher-forced. Exact-match sentence accuracy, token accuracy and sacreBLEU."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import sacrebleu
import torch
from torch import Tensor

from tdx.errors import Interrupted


def sequence_scores(hyps: list[str], refs: list[str], tokenize: str = "13a"
                    ) -> dict[str, float]:
    """Exact match (whole sentence), position-wise token accuracy over the reference
    length (a missing or extra token counts as wrong), and corpus sacreBLEU."""
    if len(hyps) != len(refs):
        raise ValueError(f"{len(hyps)} hypotheses for {len(refs)} references")
    exact = sum(h == r for h, r in zip(hyps, refs, strict=True))
    correct = total = 0
    for h, r in zip(hyps, refs, strict=True):
        ht, rt = h.split(), r.split()
        correct += sum(a == b for a, b in zip(ht, rt, strict=False))
        total += max(len(ht), len(rt))
    bleu = sacrebleu.metrics.BLEU(tokenize=tokenize)
    score = bleu.corpus_score(hyps, [refs])
    return {"exact_match": exact / max(len(refs), 1), "token_acc": correct / max(total, 1),
            "bleu": round(score.score, 2), "bleu_signature": str(bleu.get_signature())}


def generate(task: Any, models: list[Any], split: str, beam: int = 1,
             batch_size: int = 128, max_len_a: float = 0, max_len_b: int = 50
             ) -> Iterator[tuple[dict[str, Any], list[Tensor]]]:
    """Decode `split` (already loaded) with fairseq's SequenceGenerator, in dataset order
    batches: yields each batch `sample` and the best hypothesis' tokens of its rows (EOS
    last, no padding)."""
    from fairseq.dataclass.configs import GenerationConfig

    gen = task.build_generator(models, GenerationConfig(beam=beam, max_len_a=max_len_a,
                                                        max_len_b=max_len_b))
    itr = task.get_batch_iterator(dataset=task.dataset(split), max_sentences=batch_size,
                                  ignore_invalid_inputs=False, seed=1,
                                  disable_iterator_cache=True).next_epoch_itr(shuffle=False)
    for m in models:
        m.eval()
    for sample in itr:
        with torch.no_grad():  # per batch: grad mode never stays off across a yield
            out = task.inference_step(gen, models, sample)
        yield sample, [hyp[0]["tokens"].cpu() for hyp in out]


def evaluate_generation(task: Any, models: list[Any], split: str, beam: int = 1,
                        max_sentences: int | None = None, batch_size: int = 128,
                        max_len_a: float = 0, max_len_b: int = 50,
                        stop: object = None) -> dict[str, Any]:
    """Decode `split` (see `generate`) and score it (see sequence_scores); Interrupted
    as soon as `stop` (a StopFlag) is true after a batch (a SIGTERM during the decoding).

    Uses `task.decode_tokens(tensor) -> str` when the task defines it (detokenisation for
    BLEU), else the target dictionary's string; `task.reference_text(split, id)` for the
    references when it has them (else the decoded target); `task.bleu_tokenize` ("13a").
    The decoding speed is returned under "sent_per_s" (not deterministic: callers keep it
    out of metrics.jsonl).
    """
    from fairseq import utils

    tgt_dict = task.target_dictionary
    decode = getattr(task, "decode_tokens", None) or tgt_dict.string
    reference = getattr(task, "reference_text", lambda split, i: None)
    hyps: dict[int, str] = {}
    refs: dict[int, str] = {}
    t0 = time.time()
    for sample, tokens in generate(task, models, split, beam, batch_size, max_len_a,
                                   max_len_b):
        for i, sid in enumerate(sample["id"].tolist()):
            hyps[sid] = decode(tokens[i])
            ref = reference(split, sid)
            refs[sid] = ref if ref is not None else decode(
                utils.strip_pad(sample["target"][i], tgt_dict.pad()))
        if max_sentences and len(hyps) >= max_sentences:
            break
        if stop:
            raise Interrupted
    seconds = time.time() - t0
    ids = sorted(hyps)
    scores: dict[str, Any] = sequence_scores([hyps[i] for i in ids], [refs[i] for i in ids],
                                                     getattr(task, "bleu_tokenize", "13a"))
    scores["n"] = len(ids)
    scores["sent_per_s"] = round(len(ids) / max(seconds, 1e-9), 1)
    return scores
