"""TaLK Convolutions' tables (Lioutas & Guo 2020) at CPU scale: translation in the manner
of Table 2 and character-level language modelling (Sec. 5.3), a row per model."""

from tdx.report import Column, column_preset, first, params, register_preset, stat

register_preset("talk-mt", column_preset("config.model.meta.label", "params", [
    Column("Model", first("config.model.meta.label")),
    Column("Params", params),
    Column("BLEU test2016 (beam 5)", stat("final.bleu_beam5", digits=2)),
    Column("BLEU (greedy)", stat("final.bleu_greedy", digits=2)),
    Column("Best valid BLEU (greedy)", stat("best.bleu", digits=2)),
    Column("Train target tok/s", stat("rate_tok_s", digits=0)),
    Column("Generation sent/s (beam 5)", stat("final.sent_per_s_beam5", digits=1)),
    Column("Updates", first("step")),
    Column("Tested", first("tested")),
]))

register_preset("talk-lm", column_preset("config.model.meta.label", "params", [
    Column("Model", first("config.model.meta.label")),
    Column("Params", params),
    Column("Valid loss (nats/char)", stat("best.loss_nats", digits=4)),
    Column("Bits per char", stat("best.loss", digits=4)),
    Column("Best at update", first("best.step")),
    Column("Train tok/s", stat("rate_tok_s", digits=0)),
    Column("Updates", first("step")),
]))
