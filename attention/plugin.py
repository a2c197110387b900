"""Copy this Sentence's registrations with the tdx runner (entry point `tdx.plugins`)."""

from tdx.attention import report  # noqa: F401 - the `copy` report preset

# the copy task and the RNN models with attention from attention/core.py
FAIRSEQ_MODULES = ("tdx.attention.copy_task", "tdx.attention.models")
