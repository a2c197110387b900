"""Loading fairseq checkpoints under torch >= 2.6 without switching `weights_only` off.

torch.load now defaults to `weights_only=True`, which refuses any class that is not on an
allow-list. fairseq checkpoints carry the legacy `argparse.Namespace` (the model/task args
inside `cfg`), and checkpoints written by `fairseq-train` also store the best validation
score, a numpy float64. We allow-list exactly those, once, instead of passing
`weights_only=False` (which would let a checkpoint run arbitrary code).
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tdx.errors import UsageError


def fairseq_safe_globals() -> list[object]:
    return [argparse.Namespace, np._core.multiarray.scalar, np.dtype,
            type(np.dtype("float64"))]


def allow_fairseq_checkpoints() -> None:
    """Add fairseq's checkpoint classes to torch's weights_only allow-list (idempotent)."""
    torch.serialization.add_safe_globals(fairseq_safe_globals())


def check_loadable(folder: Path, paths: list[Path], load: Callable[[Path], Any],
                   key: str) -> None:
    """Before a resume of `folder` writes anything: every one of `paths` loads with `load`
    and is a dict holding `key`, else a UsageError naming the file (the folder unchanged)."""
    for path in paths:
        try:
            blob = load(path)
            if not isinstance(blob, dict) or key not in blob:
                raise KeyError(f"no '{key}' in it")
        except Exception as e:  # noqa: BLE001 - any reason: the file is not usable
            raise UsageError(f"Cannot resume '{folder}': {path} cannot be loaded "
                             f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). The "
                             "folder is left as it was.") from None


def load_fairseq_checkpoint(path: str | Path) -> dict:
    """A fairseq checkpoint, loaded with weights_only and the allow-list above."""
    allow_fairseq_checkpoints()
    return torch.load(path, map_location="cpu", weights_only=True)


def average_checkpoints(paths: list[str]) -> dict:
    """The element-wise mean of the model parameters of several fairseq checkpoints (the
    checkpoint averaging of Vaswani et al. 2017, Sec. 6.1); the rest (config, optimiser
    state) is the last checkpoint's."""
    if not paths:
        raise ValueError("no checkpoints to average")
    allow_fairseq_checkpoints()
    total: dict[str, torch.Tensor] = {}
    for path in paths:
        state = torch.load(path, map_location="cpu", weights_only=True)
        for k, v in state["model"].items():
            v = v.double() if v.is_floating_point() else v
            total[k] = total[k] + v if k in total and v.is_floating_point() else v
    ref = state["model"]
    state["model"] = {k: (v / len(paths)).to(ref[k].dtype) if v.is_floating_point() else v
                      for k, v in total.items()}
    return state
