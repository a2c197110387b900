"""TaLK Convolution encoder-decoder for fairseq (Lioutas & Guo, ICML 2020, Sec. 4).

fairseq's `lightconv` model has exactly the layer the paper uses around its operator:
linear (optional GLU) -> convolution -> linear -> dropout/residual/LayerNorm -> FFN, plus
encoder-decoder attention in the decoder. `talkconv` subclasses it and puts a `TaLKConv`
where the lightweight/dynamic convolution was, with per-layer maxima instead of kernel
sizes; nothing of fairseq is copied.
"""

from __future__ import annotations

from fairseq import utils
from fairseq.models import register_model, register_model_architecture
from fairseq.models.lightconv import LightConvModel
from fairseq.models.lightconv import base_architecture as lightconv_base

from tdx.talk.module import TaLKConv


@register_model("talkconv")
class TaLKConvModel(LightConvModel):
    """`lightconv` with TaLK Convolutions (encoder: both sides; decoder: causal)."""

    @staticmethod
    def add_args(parser) -> None:  # noqa: ANN001 - argparse parser
        LightConvModel.add_args(parser)
        parser.add_argument("--encoder-left-max-list", type=lambda s: utils.eval_str_list(s, int),
                            help="l_max of each encoder layer, e.g. [1,3,7,15,15,15,15]")
        parser.add_argument("--encoder-right-max-list",
                            type=lambda s: utils.eval_str_list(s, int),
                            help="r_max of each encoder layer")
        parser.add_argument("--decoder-left-max-list", type=lambda s: utils.eval_str_list(s, int),
                            help="l_max of each (causal) decoder layer")

    @classmethod
    def build_model(cls, args, task):  # noqa: ANN001 - fairseq signature
        base = super().build_model(args, task)  # builds lightconv layers, then we swap convs
        enc, dec = base.encoder, base.decoder
        for layer, lm, rm in zip(enc.layers, args.encoder_left_max_list,
                                 args.encoder_right_max_list, strict=True):
            layer.conv = TaLKConv(layer.conv_dim, args.encoder_attention_heads, lm, rm,
                                  offset_dropout=args.weight_dropout)
        for layer, lm in zip(dec.layers, args.decoder_left_max_list, strict=True):
            layer.conv = TaLKConv(layer.conv_dim, args.decoder_attention_heads, lm, 0,
                                  causal=True, offset_dropout=args.weight_dropout)
        return cls(enc, dec)


def _per_layer(values: list[int], n: int, name: str) -> list[int]:
    values = list(values) * n if len(values) == 1 else list(values)
    if len(values) != n:
        raise ValueError(f"{name} has {len(values)} entries for {n} layers")
    return values


@register_model_architecture("talkconv", "talkconv")
def talkconv_base(args) -> None:  # noqa: ANN001 - fairseq signature
    args.encoder_conv_type = "lightweight"  # placeholder, replaced by TaLKConv
    args.decoder_conv_type = "lightweight"
    args.weight_softmax = getattr(args, "weight_softmax", True)
    args.encoder_left_max_list = getattr(args, "encoder_left_max_list", [1, 3, 7, 15, 15, 15, 15])
    args.encoder_right_max_list = getattr(args, "encoder_right_max_list",
                                          args.encoder_left_max_list)
    args.decoder_left_max_list = getattr(args, "decoder_left_max_list", [1, 3, 7, 15, 15, 15])
    args.encoder_layers = getattr(args, "encoder_layers", len(args.encoder_left_max_list))
    args.decoder_layers = getattr(args, "decoder_layers", len(args.decoder_left_max_list))
    args.encoder_left_max_list = _per_layer(args.encoder_left_max_list, args.encoder_layers,
                                            "encoder_left_max_list")
    args.encoder_right_max_list = _per_layer(args.encoder_right_max_list, args.encoder_layers,
                                             "encoder_right_max_list")
    args.decoder_left_max_list = _per_layer(args.decoder_left_max_list, args.decoder_layers,
                                            "decoder_left_max_list")
    # lightconv needs kernel sizes to build its (discarded) convolutions: smallest odd ones
    args.encoder_kernel_size_list = [1] * args.encoder_layers
    args.decoder_kernel_size_list = [1] * args.decoder_layers
    lightconv_base(args)


@register_model_architecture("talkconv", "talkconv_iwslt_de_en")
def talkconv_iwslt_de_en(args) -> None:  # noqa: ANN001 - fairseq signature
    """Sec. 5.1: 7 encoder / 6 decoder layers, d=512, FFN 1024, 4 heads, post-norm."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 512)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 1024)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 4)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 512)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 1024)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.attention_dropout = getattr(args, "attention_dropout", 0.1)
    args.weight_dropout = getattr(args, "weight_dropout", 0.1)
    args.encoder_glu = getattr(args, "encoder_glu", False)
    args.decoder_glu = getattr(args, "decoder_glu", False)
    args.input_dropout = getattr(args, "input_dropout", 0.0)
    talkconv_base(args)
