"""The engine registry: which module trains a run, by the config's `engine` key.

An engine is a module with two functions:

    check(cfg) -> None                 raise UsageError for a config it cannot run; called
                                       by `tdx train` / `tdx show` before any work starts
    check_resume(cfg, folder) -> None  raise UsageError if the folder's checkpoints cannot
                                       be loaded; called before a resume writes anything
    train(cfg, run, stop) -> str       train one run folder; returns its final status

Built in: `fairseq` (tdx.fairseq_engine: fairseq's task, model and Trainer) and `loop`
(tdx.loop: plain-PyTorch recipes). A plugin adds one with `register_engine`. Modules are
imported when first used: importing fairseq takes seconds that `tdx list` should not pay.
"""

from __future__ import annotations

import importlib
import random
from types import ModuleType

from tdx import plugins
from tdx.errors import UsageError, did_you_mean

ENGINES: dict[str, str] = {"fairseq": "tdx.fairseq_engine", "loop": "tdx.loop"}


def register_engine(name: str, module: str) -> None:
    """Make `engine: NAME` in a config train with `module` (imported on first use)."""
    ENGINES[name] = module


def names() -> list[str]:
    plugins.load()
    return sorted(ENGINES)


def get(name: str) -> ModuleType:
    """The engine module registered as `name`; a UsageError naming the engines if none."""
    if name not in names():
        raise UsageError(f"Unknown engine '{name}'.{did_you_mean(name, ENGINES)} "
                         f"Engines: {', '.join(names())}.")
    return importlib.import_module(ENGINES[name])


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators (every engine, every rank)."""
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
