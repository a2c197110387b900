"""fairseq `talkconv`: registration, architectures, shapes, incremental decoding."""

import torch
from fairseq.models import ARCH_MODEL_REGISTRY

import tdx.tdx_fairseq  # noqa: F401
from tdx.attention.copy_task import CopyConfig, CopyTask
from tdx.fairseq_engine import parse_fairseq, to_argv
from tdx.talk.module import TaLKConv


def build(arch, **extra):
    argv = to_argv({"task": "tdx_copy", "arch": arch, "train_size": 50, "valid_size": 5,
                    "test_size": 5, "cpu": True, **extra})
    cfg = parse_fairseq(argv)
    task = CopyTask.setup_task(CopyConfig(train_size=50, valid_size=5, test_size=5))
    return task, task.build_model(cfg.model)


def test_registered():
    assert {"talkconv", "talkconv_iwslt_de_en"} <= set(ARCH_MODEL_REGISTRY)


def test_iwslt_architecture_matches_the_paper():
    _, model = build("talkconv_iwslt_de_en")
    enc, dec = model.encoder.layers, model.decoder.layers
    assert len(enc) == 7 and len(dec) == 6
    assert [c.conv.left_max for c in enc] == [1, 3, 7, 15, 15, 15, 15]
    assert [c.conv.right_max for c in enc] == [1, 3, 7, 15, 15, 15, 15]
    assert [c.conv.left_max for c in dec] == [1, 3, 7, 15, 15, 15]
    assert all(isinstance(c.conv, TaLKConv) and c.conv.causal for c in dec)
    assert enc[0].conv.num_heads == 4 and enc[0].fc1.out_features == 1024
    assert not enc[0].normalize_before and not dec[0].normalize_before  # post-norm


def test_incremental_decoding_equals_full_decoding():
    task, model = build("talkconv", encoder_layers=2, decoder_layers=2,
                        encoder_left_max_list="[2,3]", encoder_right_max_list="[2,3]",
                        decoder_left_max_list="[2,3]", encoder_embed_dim=32,
                        decoder_embed_dim=32, encoder_ffn_embed_dim=64,
                        decoder_ffn_embed_dim=64, encoder_attention_heads=4,
                        decoder_attention_heads=4)
    model.eval()
    torch.manual_seed(0)
    V = len(task.dictionary)
    src = torch.randint(4, V, (2, 6))
    prev = torch.randint(4, V, (2, 7))
    enc = model.encoder(src, src_lengths=torch.tensor([6, 6]))
    full, _ = model.decoder(prev, encoder_out=enc)
    state: dict = {}
    steps = [model.decoder(prev[:, : t + 1], encoder_out=enc, incremental_state=state)[0]
             for t in range(7)]
    torch.testing.assert_close(torch.cat(steps, 1), full, atol=1e-4, rtol=1e-4)
