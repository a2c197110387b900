"""TaLK Convolution models for fairseq (Lioutas & Guo, ICML 2020, Sec. 4-5): the
encoder-decoder `talkconv` and the decoder-only language model `talkconv_lm`.

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
from fairseq.models.lightconv_lm import LightConvLanguageModel, base_lm_architecture

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


@register_model_architecture("talkconv", "talkconv_wmt_en_de_big")
def talkconv_wmt_en_de_big(args) -> None:  # noqa: ANN001 - fairseq signature
    """Sec. 5.1, WMT'14 En-De big: 7 encoder / 6 decoder layers, d=1024, FFN 4096, 16 heads,
    dropout 0.3, maxima [3,7,15,31 x 4] (encoder, both sides) and [3,7,15,31 x 3]."""
    args.encoder_embed_dim = getattr(args, "encoder_embed_dim", 1024)
    args.encoder_ffn_embed_dim = getattr(args, "encoder_ffn_embed_dim", 4096)
    args.encoder_attention_heads = getattr(args, "encoder_attention_heads", 16)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 1024)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 4096)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 16)
    args.attention_dropout = getattr(args, "attention_dropout", 0.1)
    args.dropout = getattr(args, "dropout", 0.3)
    args.encoder_left_max_list = getattr(args, "encoder_left_max_list", [3, 7, 15, 31, 31, 31, 31])
    args.decoder_left_max_list = getattr(args, "decoder_left_max_list", [3, 7, 15, 31, 31, 31])
    talkconv_base(args)


@register_model_architecture("talkconv", "talkconv_wmt_en_fr_big")
def talkconv_wmt_en_fr_big(args) -> None:  # noqa: ANN001 - fairseq signature
    """WMT'14 En-Fr big: as En-De big with dropout 0.1."""
    args.dropout = getattr(args, "dropout", 0.1)
    talkconv_wmt_en_de_big(args)


# -- CPU-scale variants (Multi30k) and baselines with the same width and depth ----------
# 3 encoder / 3 decoder layers, d=256, FFN 1024, 4 heads, shared embeddings, dropout 0.3.
# TaLK maxima [3,7,15] per layer; the convolution baselines get the matching kernel widths
# (encoder 2K+1 centred, decoder K+1 causal).

def _multi30k_common(args) -> None:  # noqa: ANN001 - fairseq signature
    for side in ("encoder", "decoder"):
        setattr(args, f"{side}_embed_dim", getattr(args, f"{side}_embed_dim", 256))
        setattr(args, f"{side}_ffn_embed_dim", getattr(args, f"{side}_ffn_embed_dim", 1024))
        setattr(args, f"{side}_attention_heads", getattr(args, f"{side}_attention_heads", 4))
        setattr(args, f"{side}_layers", getattr(args, f"{side}_layers", 3))
    args.dropout = getattr(args, "dropout", 0.3)
    args.attention_dropout = getattr(args, "attention_dropout", 0.1)
    args.share_all_embeddings = getattr(args, "share_all_embeddings", True)


@register_model_architecture("talkconv", "talkconv_multi30k")
def talkconv_multi30k(args) -> None:  # noqa: ANN001 - fairseq signature
    _multi30k_common(args)
    args.weight_dropout = getattr(args, "weight_dropout", 0.1)
    args.encoder_glu = getattr(args, "encoder_glu", False)
    args.decoder_glu = getattr(args, "decoder_glu", False)
    args.input_dropout = getattr(args, "input_dropout", 0.0)
    args.encoder_left_max_list = getattr(args, "encoder_left_max_list", [3, 7, 15])
    args.decoder_left_max_list = getattr(args, "decoder_left_max_list", [3, 7, 15])
    talkconv_base(args)


@register_model_architecture("transformer", "transformer_multi30k")
def transformer_multi30k(args) -> None:  # noqa: ANN001 - fairseq signature
    from fairseq.models.transformer import base_architecture

    _multi30k_common(args)
    base_architecture(args)


def _conv_multi30k(args, conv_type: str) -> None:  # noqa: ANN001 - fairseq signature
    _multi30k_common(args)
    args.encoder_conv_type = conv_type
    args.decoder_conv_type = conv_type
    args.weight_dropout = getattr(args, "weight_dropout", 0.1)
    args.encoder_glu = getattr(args, "encoder_glu", False)
    args.decoder_glu = getattr(args, "decoder_glu", False)
    args.input_dropout = getattr(args, "input_dropout", 0.0)
    args.encoder_kernel_size_list = getattr(args, "encoder_kernel_size_list", [7, 15, 31])
    args.decoder_kernel_size_list = getattr(args, "decoder_kernel_size_list", [4, 8, 16])
    lightconv_base(args)


@register_model_architecture("lightconv", "lightconv_multi30k")
def lightconv_multi30k(args) -> None:  # noqa: ANN001 - fairseq signature
    _conv_multi30k(args, "lightweight")


@register_model_architecture("lightconv", "dynamicconv_multi30k")
def dynamicconv_multi30k(args) -> None:  # noqa: ANN001 - fairseq signature
    _conv_multi30k(args, "dynamic")


# -- language model ---------------------------------------------------------------------

@register_model("talkconv_lm")
class TaLKConvLanguageModel(LightConvLanguageModel):
    """`lightconv_lm` (pre-norm decoder without encoder attention) with causal TaLK
    Convolutions (Sec. 5.3)."""

    @staticmethod
    def add_args(parser) -> None:  # noqa: ANN001 - argparse parser
        LightConvLanguageModel.add_args(parser)
        parser.add_argument("--decoder-left-max-list", type=lambda s: utils.eval_str_list(s, int),
                            help="l_max of each (causal) decoder layer")

    @classmethod
    def build_model(cls, args, task):  # noqa: ANN001 - fairseq signature
        base = super().build_model(args, task)
        for layer, lm in zip(base.decoder.layers, args.decoder_left_max_list, strict=True):
            layer.conv = TaLKConv(layer.conv_dim, args.decoder_attention_heads, lm, 0,
                                  causal=True, offset_dropout=args.weight_dropout)
        return cls(base.decoder)


@register_model_architecture("talkconv_lm", "talkconv_lm")
def talkconv_lm(args) -> None:  # noqa: ANN001 - fairseq signature
    args.decoder_left_max_list = getattr(args, "decoder_left_max_list", [3, 7, 15, 31, 31, 31])
    args.decoder_layers = getattr(args, "decoder_layers", len(args.decoder_left_max_list))
    args.decoder_left_max_list = _per_layer(args.decoder_left_max_list, args.decoder_layers,
                                            "decoder_left_max_list")
    args.decoder_conv_type = "lightweight"  # placeholder, replaced by TaLKConv
    args.decoder_kernel_size_list = [1] * args.decoder_layers
    base_lm_architecture(args)


@register_model_architecture("talkconv_lm", "talkconv_lm_wiki103")
def talkconv_lm_wiki103(args) -> None:  # noqa: ANN001 - fairseq signature
    """Sec. 5.3, WikiText-103: 17 pre-norm layers, d=1024, FFN 4096, adaptive input and
    softmax (cutoffs 20k, 60k, tied), maxima [3,5,7,15,31,63 x 12]."""
    args.decoder_left_max_list = getattr(args, "decoder_left_max_list",
                                         [3, 5, 7, 15, 31] + [63] * 12)
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 1024)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 4096)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 16)
    args.dropout = getattr(args, "dropout", 0.3)
    args.attention_dropout = getattr(args, "attention_dropout", 0.1)
    args.weight_dropout = getattr(args, "weight_dropout", 0.1)
    args.adaptive_input = getattr(args, "adaptive_input", True)
    args.adaptive_input_cutoff = getattr(args, "adaptive_input_cutoff", "20000,60000")
    args.adaptive_softmax_cutoff = getattr(args, "adaptive_softmax_cutoff", "20000,60000")
    args.adaptive_softmax_dropout = getattr(args, "adaptive_softmax_dropout", 0.2)
    args.tie_adaptive_weights = getattr(args, "tie_adaptive_weights", True)
    args.tie_adaptive_proj = getattr(args, "tie_adaptive_proj", True)
    talkconv_lm(args)


# Character-level LM at CPU scale (Tiny Shakespeare) and its Transformer twin: 6 pre-norm
# layers, d=256, FFN 1024, 4 heads; TaLK maxima [3,7,15,31,63,63].

@register_model_architecture("talkconv_lm", "talkconv_lm_char")
def talkconv_lm_char(args) -> None:  # noqa: ANN001 - fairseq signature
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 256)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 1024)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.decoder_left_max_list = getattr(args, "decoder_left_max_list", [3, 7, 15, 31, 63, 63])
    args.dropout = getattr(args, "dropout", 0.1)
    args.weight_dropout = getattr(args, "weight_dropout", 0.1)
    args.decoder_glu = getattr(args, "decoder_glu", False)
    args.input_dropout = getattr(args, "input_dropout", 0.0)
    talkconv_lm(args)


@register_model_architecture("transformer_lm", "transformer_lm_char")
def transformer_lm_char(args) -> None:  # noqa: ANN001 - fairseq signature
    from fairseq.models.transformer_lm import base_lm_architecture as transformer_lm_base

    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 256)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 1024)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.dropout = getattr(args, "dropout", 0.1)
    args.decoder_normalize_before = True
    transformer_lm_base(args)


@register_model_architecture("lightconv_lm", "dynamicconv_lm_char")
def dynamicconv_lm_char(args) -> None:  # noqa: ANN001 - fairseq signature
    """DynamicConv LM (Wu et al. 2019) of the TaLK char LM's size; causal kernels K+1."""
    args.decoder_embed_dim = getattr(args, "decoder_embed_dim", 256)
    args.decoder_ffn_embed_dim = getattr(args, "decoder_ffn_embed_dim", 1024)
    args.decoder_attention_heads = getattr(args, "decoder_attention_heads", 4)
    args.decoder_layers = getattr(args, "decoder_layers", 6)
    args.decoder_conv_type = getattr(args, "decoder_conv_type", "dynamic")
    args.decoder_kernel_size_list = getattr(args, "decoder_kernel_size_list",
                                            [4, 8, 16, 32, 64, 64])
    args.dropout = getattr(args, "dropout", 0.1)
    args.weight_dropout = getattr(args, "weight_dropout", 0.1)
    args.decoder_glu = getattr(args, "decoder_glu", False)
    args.input_dropout = getattr(args, "input_dropout", 0.0)
    base_lm_architecture(args)
