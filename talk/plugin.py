"""TaLK Convolutions' registrations with the tdx runner (entry point `tdx.plugins`)."""

from tdx.talk import report  # noqa: F401 - the `talk-mt` and `talk-lm` report presets

# talkconv / talkconv_lm and the same-size baselines (transformer_multi30k, ...)
FAIRSEQ_MODULES = ("tdx.talk.models",)
