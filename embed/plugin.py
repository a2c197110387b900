"""Distilled Embedding's registrations with the tdx runner (entry point `tdx.plugins`)."""

from tdx.embed import report  # noqa: F401 - the `embed` report preset

# `embcomp_<model>` models and the `embed_distill` criterion
FAIRSEQ_MODULES = ("tdx.embed.models",)


def fairseq_ready() -> None:
    """`embcomp_` twins of every architecture the plugins registered (talkconv's too)."""
    from tdx.embed.models import register_all

    register_all()
