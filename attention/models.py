"""Recurrent encoder-decoders whose attention is built from `attention.core` pieces.

fairseq's `lstm` model has one attention layer (Luong's "general" score with input feeding,
arXiv 1508.04025). `tdx_rnn` subclasses it and swaps that layer for any (score, normaliser)
pair from Sec. 2 of "Copy this Sentence", and the LSTM for a GRU if asked, so that the
study can vary one thing at a time:

    attention=none      the plain encoder-decoder (no attention)
    attention=additive  Bahdanau et al. (2015)
    attention=general   Luong et al. (2015), multiplicative
    attention=dot       Luong et al. (2015), dot
"""

from __future__ import annotations

import torch
from fairseq.models import register_model, register_model_architecture
from fairseq.models.lstm import LSTMDecoder, LSTMEncoder, LSTMModel
from fairseq.models.lstm import base_architecture as lstm_base_architecture
from torch import Tensor, nn

from tdx.attention.core import SCORES, Attention, Normalizer


class DecoderAttention(nn.Module):
    """Adapter with the interface of fairseq's lstm `AttentionLayer`, computing Eq. 1.

    forward(input (B, Hq), source_hids (S, B, Hs), padding (S, B)) -> ((B, Hout), (S, B)).
    As in Luong et al. (2015, Eq. 5) the context is combined with the query:
    tanh(W [context; query]).
    """

    def __init__(self, kind: str, query_dim: int, source_dim: int, out_dim: int,
                 normalizer: str = "softmax", temperature: float = 1.0) -> None:
        super().__init__()
        if kind not in SCORES:
            raise ValueError(f"unknown attention score {kind!r}; choose from {sorted(SCORES)}")
        if kind == "additive":
            score = SCORES[kind](query_dim, source_dim, source_dim)
        elif kind == "general":
            score = SCORES[kind](query_dim, source_dim)
        else:
            if query_dim != source_dim:
                raise ValueError(f"{kind} attention needs query dim == source dim "
                                 f"({query_dim} != {source_dim})")
            score = SCORES[kind]()
        self.attend = Attention(score, Normalizer(normalizer, temperature))
        self.output_proj = nn.Linear(query_dim + source_dim, out_dim, bias=False)

    def forward(self, query: Tensor, source_hids: Tensor, encoder_padding_mask: Tensor | None
                ) -> tuple[Tensor, Tensor]:
        keys = source_hids.transpose(0, 1)  # (B, S, Hs)
        mask = None if encoder_padding_mask is None else encoder_padding_mask.t()  # (B, S)
        ctx, w = self.attend(query.unsqueeze(1), keys, keys, key_padding_mask=mask)
        out = torch.tanh(self.output_proj(torch.cat((ctx.squeeze(1), query), dim=1)))
        return out, w.squeeze(1).t()  # (B, Hout), (S, B)


class _GRUAsLSTM(nn.Module):
    """A GRU with the (h, c) state interface of nn.LSTM, so fairseq's LSTM encoder drives it.

    The "cell" slot carries a copy of h and is ignored on input.
    """

    def __init__(self, **kwargs) -> None:
        super().__init__()
        self.gru = nn.GRU(**kwargs)

    def forward(self, x, state):  # noqa: ANN001 - mirrors nn.LSTM
        out, h = self.gru(x, state[0])
        return out, (h, h)


class _GRUCellAsLSTMCell(nn.GRUCell):
    """A GRUCell with nn.LSTMCell's (h, c) -> (h, c) interface (c mirrors h)."""

    def forward(self, x, state):  # noqa: ANN001 - mirrors nn.LSTMCell
        h = super().forward(x, state[0])
        return h, h


@register_model("tdx_rnn")
class RNNAttentionModel(LSTMModel):
    """fairseq `lstm` with a pluggable attention (Eq. 1) and an LSTM or GRU cell."""

    @staticmethod
    def add_args(parser) -> None:  # noqa: ANN001 - argparse parser
        LSTMModel.add_args(parser)
        parser.add_argument("--rnn-cell", choices=["lstm", "gru"], help="recurrent cell")
        parser.add_argument("--attention-score", choices=["none", *SCORES],
                            help="decoder attention score (none = no attention)")
        parser.add_argument("--attention-normalizer",
                            choices=["softmax", "sparsemax", "hardmax"])
        parser.add_argument("--attention-temperature", type=float)

    @classmethod
    def build_model(cls, args, task):  # noqa: ANN001 - fairseq signature
        args.decoder_attention = "False" if args.attention_score == "none" else "True"
        model = super().build_model(args, task)
        enc, dec = model.encoder, model.decoder
        if args.rnn_cell == "gru":
            _swap_to_gru(enc, dec)
        if args.attention_score != "none":
            dec.attention = DecoderAttention(
                args.attention_score, dec.hidden_size, dec.encoder_output_units,
                dec.hidden_size, args.attention_normalizer, args.attention_temperature)
        return model


def _swap_to_gru(enc: LSTMEncoder, dec: LSTMDecoder) -> None:
    """Replace the LSTMs of fairseq's encoder/decoder by GRUs of the same sizes."""
    old = enc.lstm
    enc.lstm = _GRUAsLSTM(input_size=old.input_size, hidden_size=old.hidden_size,
                          num_layers=old.num_layers, dropout=old.dropout,
                          bidirectional=old.bidirectional)
    dec.layers = nn.ModuleList(
        _GRUCellAsLSTMCell(cell.input_size, cell.hidden_size) for cell in dec.layers)


@register_model_architecture("tdx_rnn", "tdx_rnn")
def tdx_rnn_base(args) -> None:  # noqa: ANN001 - fairseq signature
    args.rnn_cell = getattr(args, "rnn_cell", "lstm")
    args.attention_score = getattr(args, "attention_score", "additive")
    args.attention_normalizer = getattr(args, "attention_normalizer", "softmax")
    args.attention_temperature = getattr(args, "attention_temperature", 1.0)
    lstm_base_architecture(args)
