"""Zero-shot KD (distill/): task readers and metrics, the no-task-data guard, the losses
against hand-computed values, gradient through the Gumbel-softmax token choices, and a
short run of the teacher stage and of every student recipe."""

import gzip
import json
import math
from pathlib import Path
from typing import Any

import pytest
import torch
import yaml

from tdx.config import check
from tdx.distill import tasks, text
from tdx.distill.losses import ClassBalance, kd_loss, label_loss
from tdx.distill.zskd import TaskData, at_update, warmup_then_decay
from tdx.errors import UsageError
from tdx.loop import ema_update, weight_average

from .conftest import only_run, summary, tdx

DATA = Path(__import__("os").environ["TDX_DATA_DIR"])
FAST = ["zskd.teacher.steps=2", "zskd.student.steps=2", "zskd.student.init_steps=5",
        "zskd.gumbel.pretrain_steps=2", "zskd.eval.max_examples=16", "zskd.ood.pairs=30",
        "trainer.log_every=1", "trainer.valid_every=2"]


@pytest.mark.parametrize("name,n_train,n_eval,pair", [
    ("sst2", 67349, 872, False), ("mrpc", 4076, 1725, True), ("stsb", 5749, 1500, True),
    ("mr", 8529, 2133, False), ("cr", 3015, 755, False), ("subj", 8000, 2000, False),
    ("mpqa", 8482, 2121, False)])
def test_task_readers(name, n_train, n_eval, pair):
    task = tasks.get_task(name)
    train, dev = tasks.read(task, DATA, "train"), tasks.read(task, DATA, "eval")
    assert (len(train), len(dev), task.pair) == (n_train, n_eval, pair)
    assert all((b is not None) == pair for _, b, _ in train[:50])
    labels = {y for *_, y in train}
    assert labels <= ({0.0, 1.0} if task.labels == 2 else set(labels)) and len(labels) > 1


def test_missing_glue_files_say_where_to_put_them(tmp_path):
    with pytest.raises(UsageError, match=r"glue/RTE/train.tsv"):
        tasks.read(tasks.get_task("rte"), tmp_path, "train")
    (tmp_path / "glue" / "RTE").mkdir(parents=True)
    (tmp_path / "glue" / "RTE" / "dev.tsv").write_text(
        "index\tsentence1\tsentence2\tlabel\n0\tA b.\tA.\tentailment\n"
        "1\tC d.\tE.\tnot_entailment\n")
    assert tasks.read(tasks.get_task("rte"), tmp_path, "eval") == [
        ("A b.", "A.", 0.0), ("C d.", "E.", 1.0)]


def test_eval_subset_is_a_seeded_sample_in_file_order():
    data = TaskData(tasks.get_task("sst2"), DATA, "labels")
    full, sub = data.eval_examples(None), data.eval_examples(16)
    assert len(full) == 872 and sub == data.eval_examples(16) and sub != full[:16]
    rest = iter(full)
    assert all(x in rest for x in sub)  # a subsequence: file order kept


def test_the_teachers_files_are_the_published_ones(tmp_path):
    """The installed wheel's files match the recorded sha256; one changed byte is refused."""
    from tdx.distill.models import MINILM_SHA256, check_files, minilm_dir

    folder = minilm_dir()  # checked on first use
    for name in MINILM_SHA256:
        (tmp_path / name).write_bytes((folder / name).read_bytes())
    check_files(tmp_path, MINILM_SHA256)
    data = bytearray((tmp_path / "vocab.txt").read_bytes())
    data[100] ^= 1
    (tmp_path / "vocab.txt").write_bytes(bytes(data))
    with pytest.raises(UsageError, match="vocab.txt is not the published file"):
        check_files(tmp_path, MINILM_SHA256)


def test_metrics_against_hand_computed_values():
    mrpc = tasks.get_task("mrpc")  # tp 2, fp 1, fn 1, tn 1: F1 = 4 / 6, acc 3 / 5
    s = tasks.scores(mrpc, [1, 1, 1, 0, 0], [1, 1, 0, 1, 0])
    assert (s["f1"], s["acc"]) == (66.67, 60.0)
    assert s["primary"] == pytest.approx(63.335, abs=0.006)
    stsb = tasks.scores(tasks.get_task("stsb"), [1.0, 2.0, 3.0, 4.0], [1.0, 3.0, 2.0, 4.0])
    assert stsb["pearson"] == 80.0  # cov 4 / (sqrt 5 sqrt 5)
    assert stsb["spearman"] == 80.0  # same ranks as values
    # ties share their mean rank: ranks (1.5, 0, 1.5, 3) against (0, 1, 2, 3): 0.6325
    tied = tasks.scores(tasks.get_task("stsb"), [3.0, 1.0, 3.0, 5.0], [0.0, 1.0, 2.0, 3.0])
    assert tied["spearman"] == 63.25
    flat = tasks.scores(tasks.get_task("stsb"), [2.0, 2.0, 2.0], [1.0, 2.0, 3.0])
    assert (flat["pearson"], flat["spearman"]) == (0.0, 0.0)  # a constant prediction
    none = tasks.scores(mrpc, [0, 0], [0, 0])  # no positive class at all: F1 0, not an error
    assert (none["f1"], none["acc"]) == (0.0, 100.0)


def test_zero_shot_recipes_refuse_task_data(tmp_path):
    with pytest.raises(UsageError, match="must not read task data"):
        text.ood_sentences(["text/wikitext-2/valid.txt", "glue/SST-2/train.tsv"], DATA)
    with pytest.raises(UsageError, match="must not read task data"):
        text.guard_no_task_data(["senteval/MR/../MR/train.tsv"], DATA)
    for recipe in ("random", "ood", "adv_gumbel", "adv_pgd"):
        with pytest.raises(UsageError, match="zero-shot"):
            TaskData(tasks.get_task("sst2"), DATA, recipe).student_examples()
    assert TaskData(tasks.get_task("cr"), DATA, "kd_task").student_examples()
    proc = tdx("train", "zskd", "zskd.recipe=ood", "zskd.ood.files=[glue/SST-2/train.tsv]",
               *FAST, f"paths.runs_dir={tmp_path}", cwd=tmp_path)
    assert proc.returncode == 2 and "must not read task data" in proc.stdout + proc.stderr


def test_ood_text_and_pairs():
    articles = text.ood_sentences(["text/wikitext-2/valid.txt"], DATA)
    flat = text.flatten(articles)
    assert len(articles) > 50 and len(flat) > 3000
    assert all(4 <= len(s.split()) <= 60 and "<unk>" not in s for s in flat)
    pairs = text.ood_pairs(articles, 9, seed=0)
    assert len(pairs) == 9 and pairs == text.ood_pairs(articles, 9, seed=0)
    assert all(a != b for a, b in pairs[0::3])  # neighbouring sentences
    # edited copies span light to heavy edits: the share of a copy's words from its source
    copies = text.ood_pairs(articles, 600, seed=0)[1::3]
    kept = sorted(sum(w in a.split() for w in b.split()) / len(b.split()) for a, b in copies)
    assert kept[len(kept) // 10] < 0.6 and kept[-len(kept) // 10] > 0.9


def test_ood_text_reads_paragraphs_and_line_per_sentence_files(tmp_path):
    (tmp_path / "text").mkdir()
    (tmp_path / "text" / "play.txt").write_text(
        "First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n"
        "\nFirst Citizen:\nYou are all resolved rather to die\nthan to famish? We know it"
        " well.\n")
    lines = [f"caption number {i} of a long list." for i in range(45)]
    (tmp_path / "text" / "captions.en.gz").write_bytes(gzip.compress("\n".join(lines).encode()))
    play = text.ood_sentences(["text/play.txt"], tmp_path)
    # speaker lines dropped, a speech's lines joined, split at sentence ends, short ones out
    assert play == [["Before we proceed any further, hear me speak."],
                    ["You are all resolved rather to die than to famish?", "We know it well."]]
    captions = text.ood_sentences(["text/captions.en.gz"], tmp_path)
    assert [len(a) for a in captions] == [20, 20, 5] and text.flatten(captions) == lines
    (tmp_path / "text" / "bad.gz").write_bytes(b"not gzip")
    with pytest.raises(UsageError, match="bad.gz is not a complete gzip file"):
        text.ood_sentences(["text/bad.gz"], tmp_path)


def test_losses_against_hand_computed_values():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[math.log(3.0), 0.0]])  # p_T = 3/4, 1/4
    kl = 0.75 * math.log(0.75 / 0.5) + 0.25 * math.log(0.25 / 0.5)
    assert math.isclose(kd_loss(s, t).item(), kl, rel_tol=1e-6)
    # temperature 2: p_T = softmax(log 3 / 2, 0) = (sqrt 3, 1) / (sqrt 3 + 1); times 2^2
    p = math.sqrt(3) / (math.sqrt(3) + 1)
    kl2 = p * math.log(p / 0.5) + (1 - p) * math.log((1 - p) / 0.5)
    assert math.isclose(kd_loss(s, t, temperature=2.0).item(), 4 * kl2, rel_tol=1e-6)
    assert kd_loss(t, t).item() == pytest.approx(0.0, abs=1e-7)
    reg = kd_loss(torch.tensor([[1.0], [2.0]]), torch.tensor([[2.0], [4.0]]), regression=True)
    assert reg.item() == pytest.approx(2.5)  # (1 + 4) / 2
    ce = label_loss(torch.tensor([[0.0, 0.0]]), torch.tensor([1]))
    assert ce.item() == pytest.approx(math.log(2))
    # weighted: (1 * kl + 3 * 0) / 4 for the same pair and an exact match
    two = kd_loss(torch.cat([s, t]), torch.cat([t, t]), weight=torch.tensor([1.0, 3.0]))
    assert math.isclose(two.item(), kl / 4, rel_tol=1e-6)
    # logit regression: the squared logit error, averaged over classes, whatever t
    mse = kd_loss(s, t, temperature=2.0, kind="mse")
    assert math.isclose(mse.item(), math.log(3.0) ** 2 / 2, rel_tol=1e-6)


def test_crop_draws_contiguous_spans_of_at_least_four_words():
    sentence = " ".join(f"w{i}" for i in range(12))
    rng = torch.Generator().manual_seed(0)
    spans = [text.crop(sentence, rng) for _ in range(400)]
    for span in spans:
        words = span.split()
        first = int(words[0][1:])
        assert len(words) >= 4 and words == [f"w{i}" for i in range(first, first + len(words))]
    lengths = {len(x.split()) for x in spans}
    assert lengths == set(range(4, 13))  # every length from 4 to the whole sentence
    assert len({x.split()[0] for x in spans}) == 9  # starts w0..w8
    assert text.crop("too short here", rng) == "too short here"
    again = torch.Generator().manual_seed(0)
    assert [text.crop(sentence, again) for _ in range(400)] == spans


def test_weight_average_against_hand_computed_values():
    avg_of, model = torch.nn.Linear(2, 1), torch.nn.Linear(2, 1)
    for m, v in ((avg_of, 0.0), (model, 1.0)):
        torch.nn.init.constant_(m.weight, v)
        torch.nn.init.constant_(m.bias, v)
    avg = weight_average(avg_of, 0.99)
    ema_update(avg, model, 0)  # d = min(0.99, 1/10): mostly the new weights
    torch.testing.assert_close(avg.module.weight, torch.full((1, 2), 0.9))
    avg.module.bias.data.fill_(0.9)
    avg = weight_average(avg.module, 0.5)
    ema_update(avg, model, 1000)  # d = 0.5
    torch.testing.assert_close(avg.module.bias, torch.tensor([0.95]))
    assert model.weight.eq(1).all()  # the trained model is left alone


def test_weight_average_is_the_formula_and_resumes():
    """swa_utils' AveragedModel, driven by update numbers, gives bit for bit the formula
    avg <- d avg + (1 - d) w, d = min(decay, (1 + i) / (10 + i)), also across a resume."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.LayerNorm(8))
    ref = [t.clone() for t in model.state_dict().values()]
    avg = weight_average(model, 0.97)
    for i in range(60):
        with torch.no_grad():
            for w in model.parameters():
                w.add_(torch.randn_like(w))
        if i == 30:  # a resume: a new average from the saved weights
            saved = avg.module.state_dict()
            avg = weight_average(model, 0.97)
            avg.module.load_state_dict(saved)
        ema_update(avg, model, i)
        d = min(0.97, (1 + i) / (10 + i))
        ref = [r.lerp(w, 1 - d) for r, w in zip(ref, model.state_dict().values(), strict=True)]
    for got, want in zip(avg.module.state_dict().values(), ref, strict=True):
        assert torch.equal(got, want)


def test_warmup_then_decay_is_berts_schedule_and_resumes():
    """torch's LinearLR pieces give the rate (i + 1) / w, then (steps - i) / (steps - w), of
    the peak, within float rounding, from a fresh start and from a resumed update."""
    def closed_form(i: int, steps: int, warmup: float) -> float:
        w = max(1, int(warmup * steps))
        return (i + 1) / w if i < w else (steps - i) / max(1, steps - w)

    def optimiser() -> tuple[torch.optim.Optimizer, Any]:
        opt = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(1))], lr=3e-4)
        return opt, warmup_then_decay(opt, steps, warmup)

    for steps, warmup, resume in ((3000, 0.1, 1234), (3000, 0.1, 100), (100, 0.0, 0),
                                  (1, 0.0, 0), (7, 0.3, 1), (10, 1.0, 9)):
        opt, schedule = optimiser()
        for i in range(steps):
            if i == resume and i:  # as a resume does: a new stage loads the saved optimiser
                saved = opt.state_dict()
                opt, schedule = optimiser()
                opt.load_state_dict(saved)
            at_update(schedule, i)
            assert opt.param_groups[0]["lr"] == pytest.approx(
                3e-4 * closed_form(i, steps, warmup), rel=1e-12, abs=1e-18), (steps, i)
            opt.step()


def test_class_balance_gives_every_teacher_class_the_same_mass():
    # three confident class-0 examples and one class-1: weights 2/3 and 2 (mean 1)
    teacher = torch.tensor([[9.0, -9.0]] * 3 + [[-9.0, 9.0]])
    w = ClassBalance()(teacher)
    assert w.mean().item() == pytest.approx(1.0)
    assert w[:3].sum().item() == pytest.approx(w[3].item(), rel=1e-3)
    assert w[0].item() == pytest.approx(2 / 3, rel=1e-3)
    # the class mass is a running mean: a batch of class 1 alone is weighted by it
    balance = ClassBalance(momentum=0.5)
    balance(teacher)  # mass (0.75, 0.25)
    balance(torch.tensor([[-9.0, 9.0]] * 4))  # mass (0.375, 0.625)
    assert balance.mass[0].item() == pytest.approx(0.375, rel=1e-3)
    resumed = ClassBalance()  # from a checkpoint: the same running mass
    resumed.load_state_dict(balance.state_dict())
    assert torch.equal(resumed.mass, balance.mass)
    assert ClassBalance()(torch.tensor([[1.0], [2.0]]), regression=True) is None


class _Toy(torch.nn.Module):
    """A tiny Encoder: mean of word vectors -> logits."""

    def __init__(self, V=20, e=8, labels=2):
        super().__init__()
        self.E, self.out = torch.nn.Embedding(V, e), torch.nn.Linear(e, labels)

    def embedding_matrix(self):
        return self.E.weight

    def embed(self, ids):
        return self.E(ids)

    def forward_embeds(self, x, mask, types):
        return self.out((x * mask.unsqueeze(-1)).sum(1) / mask.sum(1, keepdim=True))

    def forward(self, b):
        return self.forward_embeds(self.embed(b.ids), b.mask, b.types)


@pytest.mark.parametrize("body", ["transformer", "talk"])
def test_student_pools_real_tokens_only(body):
    """Padding changes nothing (the TaLK body zeroes it before its window sums, and a
    window that reaches into it sums what a clamped window would)."""
    from tdx.distill.models import Batch, Student

    torch.manual_seed(0)
    student = Student(30, labels=2, dim=16, layers=2, heads=2, ffn=32, rank=4, max_len=12,
                      dropout=0.0, body=body, talk_max=[3, 7]).eval()
    ids = torch.tensor([[1, 5, 6, 2]])
    padded = torch.tensor([[1, 5, 6, 2, 0, 0, 0]])
    short, long = (student(Batch(i, i != 0, torch.zeros_like(i))) for i in (ids, padded))
    torch.testing.assert_close(short, long)
    other = torch.tensor([[1, 5, 7, 2]])  # every real token counts, not only [CLS]
    assert not torch.allclose(short, student(Batch(other, other != 0, torch.zeros_like(other))))


def test_a_talk_student_has_the_transformer_students_size():
    """TaLK layers (GLU input, window average, output: 3d^2) in place of attention (4d^2):
    a feed-forward block of 316 instead of 256 gives back the difference (issue 47)."""
    from tdx.distill.models import Student, TalkLayer

    transformer, talk = Student(30522, 2), Student(30522, 2, body="talk", ffn=316)
    assert abs(talk.size() / transformer.size() - 1) < 1e-3
    assert [layer.conv.left_max for layer in talk.body.layers] == [7, 15, 31]
    assert all(isinstance(layer, TalkLayer) for layer in talk.body.layers)
    with pytest.raises(UsageError, match="one window maximum"):
        Student(30522, 2, body="talk", talk_max=[3, 7])  # 3 layers
    with pytest.raises(UsageError, match="transformer, talk"):
        Student(30522, 2, body="lstm")


def test_positions_and_segments_do_not_drown_the_word_vectors():
    from tdx.distill.models import Student

    torch.manual_seed(0)
    E = torch.randn(30, 24)  # a teacher embedding, wider than the student
    student = Student(30, labels=2, dim=16, layers=1, heads=2, ffn=32, rank=4, max_len=12)
    student.body.init_words(E, steps=5)
    words = student.body.words.weight.norm(dim=-1).mean()
    for table in (student.body.pos, student.body.seg):
        assert table.weight.norm(dim=-1).mean() < words  # BERT's N(0, 0.02), not N(0, 1)


def test_pair_student_compares_the_two_texts():
    from tdx.distill.models import Student, pack

    b = pack([[5, 6], [7]], cls=1, sep=2, pad=0, seqs_b=[[8], [9, 10, 11]])
    assert b.ids.tolist() == [[1, 5, 6, 2, 8, 2, 0], [1, 7, 2, 9, 10, 11, 2]]
    assert b.types.tolist() == [[0, 0, 0, 0, 1, 1, 0], [0, 0, 0, 1, 1, 1, 1]]
    torch.manual_seed(0)
    student = Student(30, labels=2, dim=16, layers=1, heads=2, ffn=32, rank=4, max_len=12,
                      dropout=0.0, pair=True).eval()
    assert student.head[0].in_features == 4 * 16  # [u, v, |u - v|, u * v]
    ab, ba = pack([[5, 6]], 1, 2, 0, [[7, 8]]), pack([[7, 8]], 1, 2, 0, [[5, 6]])
    assert not torch.allclose(student(ab), student(ba))  # which text is which matters
    padded = pack([[5, 6], [5, 6, 9, 9, 9]], 1, 2, 0, [[7, 8], [7]])
    torch.testing.assert_close(student(padded)[:1], student(ab))  # padding never counts


def test_siamese_student_reads_each_text_on_its_own():
    from tdx.distill.models import Student, pack

    torch.manual_seed(0)
    student = Student(30, labels=1, dim=16, layers=1, heads=2, ffn=32, rank=4, max_len=12,
                      dropout=0.0, pair=True, siamese=True, cosine_scale=5.0).eval()
    assert student.head is None  # the score is 5 cos(u, v), nothing learnt on top
    pairs = pack([[5, 6], [7, 9, 9, 3]], 1, 2, 0, [[8], [9, 10, 11]])

    def alone(seqs: list[list[int]]) -> torch.Tensor:  # (B, d): [CLS] text [SEP], mean
        b = pack(seqs, 1, 2, 0)
        h = student.body(student.embed(b.ids), b.mask, b.types)
        return (h * b.mask[..., None]).sum(1) / b.mask.sum(1, keepdim=True)

    u, v = alone([[5, 6], [7, 9, 9, 3]]), alone([[8], [9, 10, 11]])
    want = 5 * torch.nn.functional.cosine_similarity(u, v, dim=-1)[:, None]
    torch.testing.assert_close(student(pairs), want)
    x = student.embed(pairs.ids).detach().requires_grad_()  # soft / perturbed inputs
    student.forward_embeds(x, pairs.mask, pairs.types).sum().backward()
    assert x.grad[pairs.mask].abs().sum(-1).gt(0).all()  # every real token has a say
    assert x.grad[~pairs.mask].abs().sum() == 0  # padding none
    with pytest.raises(UsageError, match="regression"):
        Student(30, labels=2, pair=True, siamese=True, cosine_scale=5.0)
    with pytest.raises(UsageError, match="sentence-pair"):
        Student(30, labels=1, siamese=True)


def test_random_recipe_draws_pairs_of_random_texts_for_pair_tasks():
    from tdx.distill.models import tokenizer
    from tdx.distill.zskd import Inputs

    tok, rng = tokenizer(), torch.Generator().manual_seed(0)
    single = Inputs(tok, tasks.get_task("sst2"), 16).random([40], 3, rng)
    pair = Inputs(tok, tasks.get_task("mrpc"), 16).random([40], 3, rng)
    assert single.ids.shape == (3, 16) and not single.types.any()
    assert pair.ids.shape == (3, 15)  # [CLS] 6 [SEP] 6 [SEP]: each text cut to fit
    assert (pair.ids == tok.sep_token_id).sum(1).tolist() == [2, 2, 2]
    assert pair.types.sum(1).tolist() == [7, 7, 7]  # the second text and its [SEP]


def test_gumbel_softmax_path_carries_gradient_to_the_generator():
    from tdx.distill.adversary import GumbelMLM
    from tdx.distill.models import Batch, Generator, freeze

    torch.manual_seed(0)
    V = 20
    gen = Generator(V, dim=16, layers=1, heads=2, ffn=32, rank=4, max_len=12, dropout=0.0)
    teacher, student = freeze(_Toy(V)), _Toy(V)
    adv = GumbelMLM(gen, lr=1e-2, mask_prob=0.5, tau=1.0, mlm_weight=0.0,
                    special=torch.tensor([0, 1, 2, 3]), mask_id=3, temperature=1.0,
                    regression=False)
    ids = torch.tensor([[1, 5, 6, 7, 8, 2], [1, 9, 10, 11, 2, 0]])
    batch = Batch(ids, ids != 0, torch.zeros_like(ids))
    before = {k: v.clone() for k, v in gen.state_dict().items()}
    new, t_adv, m = adv.step(teacher, student, batch, torch.Generator().manual_seed(1))
    moved = [k for k, v in gen.state_dict().items() if not torch.equal(v, before[k])]
    assert any(k.startswith("body.words") for k in moved)  # through the token choices
    assert any(k.startswith("body.layers") for k in moved)
    assert all(p.grad is None for p in student.parameters())  # generator-only update
    assert torch.equal(new.ids[:, 0], ids[:, 0]) and torch.equal(new.ids == 0, ids == 0)
    torch.testing.assert_close(t_adv, teacher(new))  # targets = teacher on the rewrite
    assert m["adv_div"] >= 0


def test_gumbel_generator_writes_ordinary_word_pieces_only():
    """Special and [unusedN]-like ids (not `allowed`) are never written, however the
    untrained generator scores them."""
    from tdx.distill.adversary import GumbelMLM
    from tdx.distill.models import Batch, Generator, freeze

    torch.manual_seed(0)
    V = 40
    allowed = (torch.arange(V) >= 4) & (torch.arange(V) < 12)  # 28 of 36 ordinary ids barred
    gen = Generator(V, dim=16, layers=1, heads=2, ffn=32, rank=4, max_len=12, dropout=0.0)
    teacher, student = freeze(_Toy(V)), _Toy(V)
    adv = GumbelMLM(gen, lr=1e-2, mask_prob=1.0, tau=1.0, mlm_weight=0.0,
                    special=torch.tensor([0, 1, 2, 3]), mask_id=3, temperature=1.0,
                    regression=False, allowed=allowed)
    ids = torch.tensor([[1, 5, 6, 7, 8, 9, 10, 2]] * 4)
    batch = Batch(ids, ids != 0, torch.zeros_like(ids))
    new, _, m = adv.step(teacher, student, batch, torch.Generator().manual_seed(1))
    inner = new.ids[:, 1:-1]
    assert m["adv_changed"] > 0 and allowed[inner].all(), inner


def test_pgd_moves_tokens_within_the_neighbour_hull_and_raises_divergence():
    from tdx.distill.adversary import NeighbourPGD, nearest_neighbours
    from tdx.distill.models import Batch

    torch.manual_seed(0)
    V = 20
    teacher, student = _Toy(V), _Toy(V)
    nb = nearest_neighbours(teacher.embedding_matrix(), 3, torch.arange(V) >= 4)
    assert nb.shape == (V, 3) and not (nb[4:] < 4).any() and not (nb[4:] == torch.arange(
        4, V).unsqueeze(1)).any()
    ids = torch.tensor([[1, 5, 6, 7, 8, 2]])
    batch = Batch(ids, ids != 0, torch.zeros_like(ids))
    clean = kd_loss(student(batch), teacher(batch)).item()
    pgd = NeighbourPGD(nb, steps=5, alpha=0.5, eps=3.0, start=0.0,
                       special=torch.tensor([0, 1, 2, 3]), temperature=1.0, regression=False)
    _, soft, t_adv, m = pgd.step(teacher, student, batch, torch.Generator())
    adv = kd_loss(student.forward_embeds(soft.embed(student), batch.mask, batch.types),
                  t_adv).item()
    assert adv > clean and m["adv_moved"] > 0
    assert torch.equal(soft.weights[0, 0], torch.tensor([1.0, 0, 0, 0]))  # [CLS] stays
    torch.testing.assert_close(soft.weights.sum(-1), torch.ones(1, 6))


def test_teacher_then_every_student_recipe_runs(tmp_path):
    runs = tmp_path / "runs"
    tdx("train", "zskd", "zskd.task=mrpc", "zskd.recipe=none", *FAST,
        f"hydra.run.dir={runs}/teacher", cwd=tmp_path, check=True)
    t = summary(runs / "teacher")
    assert t["status"] == "completed" and "primary" in t["final"]["teacher"]
    proc = tdx("train", "zskd", "-m", "zskd.task=mrpc", f"zskd.teacher_from={runs}/teacher",
               "zskd.recipe=labels,kd_task,random,ood,adv_gumbel,adv_pgd", *FAST,
               f"hydra.sweep.dir={runs}/students", cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    finals = [summary(p.parent)["final"] for p in (runs / "students").rglob("summary.json")]
    assert sorted(f["recipe"] for f in finals) == sorted(
        ["labels", "kd_task", "random", "ood", "adv_gumbel", "adv_pgd"])
    for f in finals:
        assert f["compression"] >= 20 and "primary" in f["student"]
        assert f["teacher"] == t["final"]["teacher"]
    rep = tdx("report", str(runs), "--table", "zskd", "--out", str(tmp_path / "z.md"),
              "--plot", str(tmp_path / "z.png"), cwd=tmp_path, check=True)
    table = (tmp_path / "z.md").read_text()
    assert "| mrpc | f1/acc |" in table and "(5) ZS + adv. Gumbel-MLM" in table, rep.stdout
    assert "%)" in table.split("| mrpc |")[1] and (tmp_path / "z.png").stat().st_size > 0
    assert "Budgets: teacher 2 updates x 32; every student 2 updates x 32" in table
    # scored on other examples than the stored teacher's: the teacher is scored again
    # (and the class-balanced KD and weight-average options run)
    other = tdx("train", "zskd", "zskd.task=mrpc", f"zskd.teacher_from={runs}/teacher",
                "zskd.recipe=ood", "zskd.student.balance=true", "zskd.student.ema=0.9",
                "zskd.student.kd=mse",
                *FAST,
                "zskd.eval.max_examples=40", f"hydra.run.dir={runs}/other", cwd=tmp_path,
                check=True)
    final = summary(runs / "other")["final"]
    assert final["teacher"] != t["final"]["teacher"], other.stdout
    # (and the weight average is scored, the trained weights beside it)
    assert {"primary", "raw_primary"} <= final["student"].keys()
    bad = tdx("train", "zskd", "zskd.task=sst2", f"zskd.teacher_from={runs}/teacher", *FAST,
              f"paths.runs_dir={tmp_path}/x", cwd=tmp_path)
    assert bad.returncode == 2 and "fine-tuned on mrpc" in bad.stdout + bad.stderr
    for arg, says in [("zskd.ood.crop=0.5", "sentence-pair"), ("zskd.student.kd=l1", "kl, mse"),
                      ("zskd.student.talk_max=[3,7,15]", "add zskd.student.body=talk")]:
        with pytest.raises(UsageError, match=says):  # the checks `tdx train` makes first
            check("zskd", ["zskd.task=mrpc", f"zskd.teacher_from={runs}/teacher", arg, *FAST])
    assert only_run(runs / "teacher")


def test_pretrained_body_is_what_every_student_starts_from(tmp_path):
    """Recipe pretrain (task-agnostic distillation on out-of-domain text) writes a body;
    zskd.student.init_from loads it into a task's student, position table cut to length."""
    from tdx.distill.models import Student
    from tdx.distill.zskd import init_body

    runs = tmp_path / "runs"
    talk = ["zskd.student.body=talk", "zskd.student.ffn=316"]  # the TaLK student (issue 47)
    tdx("train", "zskd", "zskd.recipe=pretrain", "zskd.pretrain.steps=3", *talk, *FAST,
        f"hydra.run.dir={runs}/pretrain", cwd=tmp_path, check=True)
    final = summary(runs / "pretrain")["final"]
    assert final["recipe"] == "pretrain" and final["task"] is None
    assert {"loss", "tokens", "cos"} <= set(final["pretrain"])
    blob = torch.load(runs / "pretrain" / "checkpoints" / "pretrain.pt", weights_only=True)
    body = blob["state"]["body"]
    assert body["pos.weight"].shape == (128, 128)  # pairs' length: zskd.max_len_pair

    student = Student(30522, 2, max_len=64, body="talk", ffn=316)  # a single-sentence task's
    assert init_body(runs / "pretrain", student) == 3
    for k, v in student.body.state_dict().items():
        torch.testing.assert_close(v, body[k][:64] if k == "pos.weight" else body[k])
    with pytest.raises(UsageError, match="talk body of dim 128, 3 layers"):
        init_body(runs / "pretrain", Student(30522, 2, max_len=64))  # a Transformer body
    with pytest.raises(UsageError, match=r"window maxima \[7, 15, 31\]; this student's are "
                                         r"\[3, 3, 3\]"):  # would load: no parameter differs
        init_body(runs / "pretrain", Student(30522, 2, max_len=64, body="talk", ffn=316,
                                             talk_max=[3, 3, 3]))
    with pytest.raises(UsageError, match="pretrain stage finished"):
        init_body(tmp_path, student)

    # (a zero-shot student that reads random spans of the out-of-domain sentences)
    tdx("train", "zskd", "zskd.task=sst2", "zskd.recipe=ood", "zskd.ood.crop=1.0",
        f"zskd.student.init_from={runs}/pretrain", *talk, *FAST,
        f"hydra.run.dir={runs}/student", cwd=tmp_path, check=True)
    assert "primary" in summary(runs / "student")["final"]["student"]
    tdx("report", str(runs), "--table", "zskd", "--out", str(tmp_path / "z.md"),
        cwd=tmp_path, check=True)
    assert f"body starts from `{runs}/pretrain`: 3 updates x 32" in (tmp_path / "z.md"
                                                                    ).read_text()
    bad = tdx("train", "zskd", "zskd.recipe=pretrain", f"zskd.teacher_from={runs}/student",
              *FAST, f"paths.runs_dir={tmp_path}/x", cwd=tmp_path)
    assert bad.returncode == 2 and "un-fine-tuned teacher" in bad.stdout + bad.stderr


# ---------------------------------------------------------------------------- report


def test_zskd_targets_from_hand_numbers():
    from tdx.distill.report import zskd_targets

    scores = {"sst2": {"random": (50.0, 56.0), "ood": (65.0, 74.0),
                       "adv_gumbel": (80.0, 91.0), "adv_pgd": (66.0, 75.0)},
              "mr": {"random": (52.0, 60.0), "ood": (51.0, 59.0),
                     "adv_gumbel": (64.0, 74.0), "adv_pgd": (52.5, 61.0)}}
    lines = zskd_targets(scores)
    assert lines[0] == "Targets, from the 2 task(s) above (mr, sst2):"
    assert "(5) >= 75% of the teacher on every task: MISSED (lowest 74.0% on mr)" in lines
    assert "(5) >= 90% of the teacher on SST-2: met (91.0%)" in lines
    assert "(5) - (4), mean over 2 task(s): +14.00 points (target >= +1: met)" in lines
    assert "(5b) - (4), mean over 2 task(s): +1.25 points (target >= +1: met)" in lines
    assert "(5b) >= 90% of the teacher on SST-2: MISSED (75.0%)" in lines
    assert lines[-1] == ("(4) - (3), mean over 2 task(s): +7.00 points; (4) > (3) on 1 of 2 "
                         "(not on mr): MISSED")


def test_zskd_table_ends_with_the_mean_over_tasks(tmp_path):
    from tdx.distill.report import zskd_table
    from tdx.report import Run

    def student(task, teacher, recipe, score, pct):
        final = {"task": task, "recipe": recipe, "teacher": {"acc": teacher, "primary": teacher},
                 "student": {"primary": score}, "pct_of_teacher": pct,
                 "teacher_params": 22_700_000, "student_params": 730_000, "compression": 31.1}
        return Run(tmp_path, {"final": final}, {}, {})

    runs = [student("sst2", 88.0, "ood", 66.0, 75.0), student("sst2", 88.0, "adv_pgd", 70.0, 79.5),
            student("mr", 84.0, "ood", 60.0, 71.4), student("mr", 84.0, "adv_pgd", 64.0, 76.2)]
    headers, rows = zskd_table(runs)
    assert [r[0] for r in rows] == ["mr", "sst2", "mean (2 tasks)"]
    mean = dict(zip(headers, rows[-1], strict=True))
    assert mean["Teacher"] == "86.00" and mean["(1) task labels"] == "-"
    assert mean["(4) ZS out-of-domain"] == "63.0 (73.2%)"
    assert mean["(5b) ZS + adv. PGD"] == "67.0 (77.8%)"
    assert zskd_table(runs[:2])[1][-1][0] == "sst2"  # one task: no mean row


def test_zskd_ablation_runs_get_their_own_column(tmp_path):
    """A run that changed a setting the others did not (zskd.pgd.steps=0) is a column of
    its own, next to its recipe, and is neither averaged into it nor counted by the
    targets; settings every run shares (a budget) make no column."""
    from tdx.distill.report import _zskd_scores, zskd_table, zskd_targets
    from tdx.report import Run

    def student(recipe, score, task="sst2", **extra):
        final = {"task": task, "recipe": recipe, "teacher": {"acc": 88.0, "primary": 88.0},
                 "student": {"primary": score}, "pct_of_teacher": round(score / 0.88, 1),
                 "teacher_params": 22_700_000, "student_params": 730_000, "compression": 31.1}
        ov = {"zskd.task": task, "zskd.recipe": recipe, "zskd.student.steps": "600", **extra}
        return Run(tmp_path, {"final": final}, {}, ov)

    runs = [student("ood", 71.0), student("adv_pgd", 75.0),
            student("adv_pgd", 72.0, **{"zskd.pgd.steps": "0"})]
    headers, rows = zskd_table(runs)
    cells = dict(zip(headers, rows[0], strict=True))
    assert cells["(5b) ZS + adv. PGD"] == "75.0 (85.2%)"
    assert cells["(5b) ZS + adv. PGD [zskd.pgd.steps=0]"] == "72.0 (81.8%)"
    assert headers.index("(5b) ZS + adv. PGD [zskd.pgd.steps=0]") == \
        headers.index("(5b) ZS + adv. PGD") + 1
    assert not any("steps=600" in h for h in headers)
    assert "(5b) - (4), mean over 1 task(s): +4.00 points (target >= +1: met)" in \
        zskd_targets(_zskd_scores(runs))
    # a second task without the ablation: its mean says it covers 1 of the 2 tasks
    runs += [student("ood", 70.0, task="cr"), student("adv_pgd", 73.0, task="cr")]
    headers, rows = zskd_table(runs)
    mean = dict(zip(headers, rows[-1], strict=True))
    assert mean["(5b) ZS + adv. PGD"] == "74.0 (84.1%)"
    assert mean["(5b) ZS + adv. PGD [zskd.pgd.steps=0]"] == "72.0 (81.8%) [1 of 2 tasks]"


def test_a_setting_every_run_of_a_task_shares_is_that_tasks_protocol(tmp_path):
    """STS-B's runs all Siamese, MRPC's not: STS-B's recipes stay in the recipe columns
    (the targets count them) and the notes name the setting; a second MRPC run that only
    it changed is still a variant."""
    from tdx.distill.report import _zskd_scores, zskd_notes, zskd_table, zskd_targets
    from tdx.report import Run

    def student(task, recipe, score, **extra):
        final = {"task": task, "recipe": recipe, "teacher": {"primary": 80.0},
                 "student": {"primary": score}, "pct_of_teacher": score / 0.8,
                 "teacher_params": 22_700_000, "student_params": 790_000, "compression": 28.9}
        ov = {"zskd.task": task, "zskd.recipe": recipe, "zskd.student.init_from": "/p", **extra}
        return Run(tmp_path, {"final": final}, {}, ov)

    siamese = {"zskd.student.siamese": "true"}
    runs = [student("stsb", "ood", 64.0, **siamese), student("stsb", "adv_pgd", 66.0, **siamese),
            student("mrpc", "ood", 72.0), student("mrpc", "adv_pgd", 70.0),
            student("mrpc", "adv_pgd", 71.0, **{"zskd.student.balance": "true"})]
    headers, rows = zskd_table(runs)
    assert [h for h in headers if "[" in h] == \
        ["(5b) ZS + adv. PGD [zskd.student.balance=true]"]
    cells = dict(zip(headers, rows[1], strict=True))
    assert rows[1][0] == "stsb" and cells["(5b) ZS + adv. PGD"] == "66.0 (82.5%)"
    notes = zskd_notes(runs)
    assert "Settings of one task (every recipe in its row): stsb: " \
           "zskd.student.siamese=true." in notes
    assert "init_from" not in notes.split("Settings of one task")[1].split("\n")[0]
    assert "(5b) - (4), mean over 2 task(s): +0.00 points (target >= +1: MISSED)" in \
        zskd_targets(_zskd_scores(runs))


def test_a_talk_student_body_is_a_column_of_its_own_with_its_target(tmp_path):
    """TaLK-body students (their own width and pretrained start) sit next to the
    Transformer students' recipe columns, not averaged into them; the Transformer students
    stay in the recipe columns although their start differs from the TaLK body's; the
    notes list each body's settings and the target compares the two bodies."""
    from tdx.distill.report import _zskd_scores, zskd_notes, zskd_table, zskd_targets
    from tdx.report import Run

    def student(task, recipe, score, talk=False):
        final = {"task": task, "recipe": recipe, "teacher": {"primary": 80.0},
                 "student": {"primary": score}, "pct_of_teacher": score / 0.8,
                 "teacher_params": 22_700_000, "student_params": 737_000, "compression": 30.8}
        body = ({"zskd.student.body": "talk", "zskd.student.ffn": "316",
                 "zskd.student.init_from": "/pretrain_talk"} if talk
                else {"zskd.student.init_from": "/pretrain"})
        ov = {"zskd.task": task, "zskd.recipe": recipe, **body}
        return Run(tmp_path, {"final": final}, {}, ov)

    runs = [student(t, r, s + (d if talk else 0), talk)
            for t, d in (("sst2", -0.5), ("subj", -2.0))
            for r, s in (("ood", 70.0), ("adv_pgd", 72.0)) for talk in (False, True)]
    headers, rows = zskd_table(runs)
    assert [h for h in headers if "[" in h] == [
        "(4) ZS out-of-domain [zskd.student.body=talk]",
        "(5b) ZS + adv. PGD [zskd.student.body=talk]"]
    cells = dict(zip(headers, rows[0], strict=True))
    assert cells["(4) ZS out-of-domain"] == "70.0 (87.5%)"
    assert cells["(4) ZS out-of-domain [zskd.student.body=talk]"] == "69.5 (86.9%)"
    lines = zskd_targets(_zskd_scores(runs))
    assert ("TaLK student - Transformer student, (4), mean over 2 task(s): -1.25 points "
            "(target >= -1: MISSED)") in lines
    assert "(5b) - (4), mean over 2 task(s): +2.00 points (target >= +1: met)" in lines
    notes = zskd_notes(runs)
    assert ("Student bodies (settings of every run of one body): talk: zskd.student.ffn=316, "
            "zskd.student.init_from=/pretrain_talk; transformer: "
            "zskd.student.init_from=/pretrain.") in notes


def test_a_multirun_and_a_single_run_spell_a_boolean_override_alike(tmp_path):
    """Hydra's multirun records `x=True` for the command line's `x=true`: one column."""
    from tdx.distill.report import zskd_table
    from tdx.report import collect

    for name, spelt in (("multi", "True"), ("single", "true")):
        d = tmp_path / name
        d.mkdir()
        recipe = "ood" if name == "multi" else "adv_pgd"
        (d / "summary.json").write_text(json.dumps({"status": "completed", "final": {
            "task": "stsb", "recipe": recipe, "teacher": {"primary": 85.0},
            "student": {"primary": 64.0}, "pct_of_teacher": 75.3,
            "teacher_params": 22_700_000, "student_params": 720_000, "compression": 31.5}}))
        (d / "overrides.yaml").write_text(yaml.safe_dump(
            ["zskd.task=stsb", f"zskd.student.siamese={spelt}", f"zskd.recipe={recipe}"]))
    runs = collect([tmp_path])
    assert {r.overrides["zskd.student.siamese"] for r in runs} == {"true"}
    headers, _ = zskd_table(runs)
    assert not any("siamese" in h for h in headers)  # a shared setting, no variant column


def test_zskd_budgets_come_from_the_student_runs(tmp_path):
    """A teacher-only run's config carries the default student budget, which it never
    used: the notes state only the budgets the students trained with."""
    from tdx.distill.report import zskd_notes
    from tdx.report import Run

    def run(recipe, student_steps, final=None, path=tmp_path, seed=1):
        config = {"seed": seed, "zskd": {"teacher": {"steps": 600, "batch": 32},
                                      "student": {"steps": student_steps, "batch": 32},
                                      "gumbel": {"pretrain_steps": 300}}}
        return Run(path, {"final": {"task": "sst2", "recipe": recipe, **(final or {})}},
                   config, {})

    student = {"teacher": {"acc": 88.0, "primary": 88.0}, "student": {"primary": 75.0},
               "pct_of_teacher": 85.2}
    notes = zskd_notes([run("none", 600), run("ood", 3000, student)])
    assert "every student 3000 updates x 32" in notes
    assert "every student 600 updates" not in notes
    assert "every student 600 updates x 32" in zskd_notes([run("none", 600)])
    # students of two budgets: a line each, saying which runs it covers
    mixed = zskd_notes([run("ood", 3000, student, tmp_path / "long" / "ood"),
                        run("ood", 600, student, tmp_path / "short" / "ood"),
                        run("adv_pgd", 600, student, tmp_path / "short" / "pgd")])
    assert "Budgets of `long/ood`: teacher 600 updates x 32; every student 3000" in mixed
    assert "Budgets of `short/ood`, `short/pgd`: teacher 600 updates x 32; every " \
        "student 600" in mixed
    assert "Budgets:" not in mixed
    # runs that differ only in their seed share a line, which names the seeds
    seeds = zskd_notes([run("ood", 3000, student, tmp_path / "s1" / "ood"),
                        run("ood", 3000, student, tmp_path / "s2" / "ood", seed=2),
                        run("adv_pgd", 3000, student, tmp_path / "s2" / "pgd", seed=2)])
    assert seeds.count("Budgets") == 1
    assert "pre-trained 300 updates); seeds 1, 2." in seeds
    seeds = zskd_notes([run("ood", 3000, student, tmp_path / "s2" / "ood", seed=2),
                        run("ood", 600, student, tmp_path / "s1" / "ood")])
    assert "Budgets of `s1/ood`: " in seeds and "); seed 1." in seeds
    assert "Budgets of `s2/ood`: " in seeds and "); seed 2." in seeds
