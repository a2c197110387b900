"""TaLK recipes (issue: TaLK models in fairseq): registration, data preparation, incremental
decoding of the LM, and a 20-update run of every MT and LM model through `tdx train`,
plus `fairseq-generate` on a TaLK checkpoint."""

import argparse
import gzip
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fairseq.data import Dictionary
from fairseq.models import ARCH_MODEL_REGISTRY

import tdx.tdx_fairseq  # noqa: F401
from tdx import lm_data, mt_data
from tdx.datafiles import read_lines
from tdx.fairseq_engine import PLUGIN_DIR
from tdx.talk.models import TaLKConvLanguageModel, talkconv_lm_char
from tdx.talk.module import TaLKConv

from .conftest import TINY_MT, summary, tdx

DATA = Path(os.environ["TDX_DATA_DIR"])
MT_MODELS = ["talkconv_multi30k", "transformer_multi30k", "lightconv_multi30k",
             "dynamicconv_multi30k"]


def test_every_architecture_is_registered():
    assert {"talkconv_wmt_en_de_big", "talkconv_wmt_en_fr_big", "talkconv_multi30k",
            "transformer_multi30k", "lightconv_multi30k", "dynamicconv_multi30k",
            "talkconv_lm", "talkconv_lm_wiki103", "talkconv_lm_char",
            "transformer_lm_char"} <= set(ARCH_MODEL_REGISTRY)


STEMS = {"train": "train", "valid": "val", "test": "test_2016_flickr"}


def test_mt_data_prepares_once_and_keeps_references(small_multi30k, tmp_path):
    out = mt_data.prepare(small_multi30k, tmp_path / "bin", "de", "en", STEMS, 300)
    for split in ("train", "valid", "test"):
        for lang in ("de", "en"):
            assert (out / f"{split}.de-en.{lang}.bin").exists()
    assert (out / "dict.de.txt").read_text() == (out / "dict.en.txt").read_text()  # joined
    refs = (out / "ref.test.en").read_text().splitlines()
    assert refs == read_lines(small_multi30k / "test_2016_flickr.en.gz")
    stamp = (out / "prepared.json").stat().st_mtime_ns
    mt_data.prepare(small_multi30k, tmp_path / "bin", "de", "en", STEMS, 300)
    assert (out / "prepared.json").stat().st_mtime_ns == stamp  # cached, not rebuilt


def test_mt_data_errors(small_multi30k, tmp_path):
    with pytest.raises(FileNotFoundError, match="nothere"):
        mt_data.prepare(small_multi30k, tmp_path / "a", "de", "en", {**STEMS, "test": "nothere"},
                        300)
    with gzip.open(small_multi30k / "short.de.gz", "wt") as f:
        f.write("ein\nzwei\n")
    with gzip.open(small_multi30k / "short.en.gz", "wt") as f:
        f.write("one\n")
    with pytest.raises(ValueError, match="aligned"):
        mt_data.prepare(small_multi30k, tmp_path / "b", "de", "en", {**STEMS, "valid": "short"},
                        300)


def test_char_lines_make_one_token_per_character():
    assert lm_data.char_lines("ab c\nd\n\ne") == ["a b \u2581 c", "d", "", "e"]
    text = "To be, or not\nto be.\n"
    tokens = sum(len(line.split()) + 1 for line in lm_data.char_lines(text))  # +1: newline
    assert tokens == len(text)


def test_talk_lm_incremental_decoding_equals_full():
    d = Dictionary()
    for c in "abcdefgh":
        d.add_symbol(c)
    task = argparse.Namespace(dictionary=d, output_dictionary=d)
    parser = argparse.ArgumentParser(argument_default=argparse.SUPPRESS)  # as fairseq does
    TaLKConvLanguageModel.add_args(parser)
    args = parser.parse_args([
        "--decoder-layers", "2", "--decoder-left-max-list", "[2,5]", "--decoder-embed-dim", "16",
        "--decoder-ffn-embed-dim", "32", "--decoder-attention-heads", "4", "--dropout", "0"])
    args.tokens_per_sample = 32
    talkconv_lm_char(args)
    model = TaLKConvLanguageModel.build_model(args, task).eval()
    assert all(isinstance(layer.conv, TaLKConv) and layer.conv.causal
               for layer in model.decoder.layers)
    assert model.decoder.layers[0].normalize_before  # pre-norm
    tokens = torch.randint(4, len(d), (2, 9))
    full, _ = model(tokens)
    state: dict = {}
    steps = [model.decoder(tokens[:, : t + 1], incremental_state=state)[0] for t in range(9)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)


def test_every_mt_model_trains_20_updates_and_fairseq_generate_decodes(small_multi30k,
                                                                       tmp_path):
    data_bin = tmp_path / "bin"
    proc = tdx("train", "talk-mt", "-m", f"model={','.join(MT_MODELS)}",
               f"data.raw_dir={small_multi30k}", f"data.data_path={data_bin}", *TINY_MT,
               "paths.runs_dir=runs", cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "runs").rglob("summary.json"))
    assert len(runs) == 4
    for run in runs:
        s = summary(run)
        assert s["status"] == "completed", s
        assert {"bleu_greedy", "bleu_beam2"} <= set(s["final"])
        assert "tok:13a" in s["bleu_signature"]
        assert s["tested"] == "average of checkpoint15.pt, checkpoint20.pt"
        ckpts = run / "checkpoints"
        assert sorted(p.name for p in ckpts.glob("checkpoint[0-9]*.pt")) == [
            "checkpoint15.pt", "checkpoint20.pt"]
    talk = next(r for r in runs if (r / ".hydra/overrides.yaml").read_text().count(
        "model=talkconv_multi30k"))
    gen = subprocess.run(
        [str(Path(sys.executable).with_name("fairseq-generate")), str(data_bin), "--user-dir",
         str(PLUGIN_DIR), "--task", "tdx_translation", "--path",
         str(talk / "checkpoints/checkpoint_avg.pt"), "--gen-subset", "test", "--beam", "2",
         "--batch-size", "8", "--remove-bpe", "sentencepiece", "--cpu"],
        capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert gen.returncode == 0, gen.stderr[-3000:]
    assert gen.stdout.count("\nH-") == 24 and "BLEU" in gen.stdout + gen.stderr


def test_every_lm_trains_20_updates(tmp_path):
    text = (DATA / "lm/tinyshakespeare/input.txt").read_text(encoding="utf-8")[:20000]
    (tmp_path / "small.txt").write_text(text, encoding="utf-8")
    proc = tdx("train", "talk-lm", "-m", "model=talkconv_lm_char,transformer_lm_char",
               f"data.raw_train={tmp_path / 'small.txt'}", f"data.data_path={tmp_path / 'bin'}",
               "data.tokens_per_sample=64", "data.batch_size=8", "+model.decoder_embed_dim=32",
               "+model.decoder_ffn_embed_dim=64", "+model.decoder_attention_heads=2",
               "trainer.max_update=20", "trainer.valid_every=10", "trainer.save_every=10",
               "trainer.log_every=5", "optim.warmup_updates=5", "paths.runs_dir=runs",
               cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    runs = sorted(p.parent for p in (tmp_path / "runs").rglob("summary.json"))
    assert len(runs) == 2
    for run in runs:
        s = summary(run)
        assert s["status"] == "completed", s
        assert 0 < s["best"]["loss_nats"] < 6 and s["best"]["loss"] > s["best"]["loss_nats"]
