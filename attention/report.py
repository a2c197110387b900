"""The copy study's table (Copy this Sentence, Lioutas & Drozdyuk 2019): a row per model,
from no attention to attention everywhere, mean ± std over seeds."""

from tdx.report import (
    Column,
    column_preset,
    first,
    params,
    register_preset,
    seeds,
    stat,
    updates_to,
)

register_preset("copy", column_preset("config.model.meta.label", "config.model.meta.degree", [
    Column("Model", first("config.model.meta.label")),
    Column("Attention", first("config.model.meta.attention")),
    Column("Degree", first("config.model.meta.degree")),
    Column("Params", params),
    Column("Exact match % (greedy)", stat("final.exact_match_greedy", 100)),
    Column("Exact match % (beam 5)", stat("final.exact_match_beam5", 100)),
    Column("Token acc % (greedy)", stat("final.token_acc_greedy", 100)),
    Column("BLEU (beam 5)", stat("final.bleu_beam5")),
    Column("Updates to 90% EM (valid)", updates_to("valid", "exact_match", 0.9)),
    Column("Seeds", seeds),
]))
