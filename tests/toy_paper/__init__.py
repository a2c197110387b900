"""A toy paper, plugged into tdx from outside the repository's packages, as a researcher
would add a sixth paper (`TDX_USER_DIR=tests/toy_paper` or `tdx --user-dir ...`): its
experiment (conf/experiment/toy.yaml), its recipe (recipe.py) and its report preset (here),
with nothing in tdx/ edited. tests/test_plugins.py trains and reports it."""

from tdx.report import Column, column_preset, first, register_preset, seeds, stat

register_preset("toy", column_preset("config.toy.lr", "config.toy.lr", [
    Column("Learning rate", first("config.toy.lr")),
    Column("Slope (true 3)", stat("final.slope", digits=3)),
    Column("Intercept (true 1)", stat("final.intercept", digits=3)),
    Column("Valid MSE", stat("final.mse", digits=4)),
    Column("Seeds", seeds),
]))
