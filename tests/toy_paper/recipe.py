"""The toy paper's recipe for the loop engine: fit y = 3x + 1 (+ noise) by SGD, one stage,
optionally from another run's line (`toy.init_from`, a run folder) and slowed down by
`toy.sleep` seconds per update (for tests that stop it half-way)."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig

from tdx.loop import Stage, load_state, run_stage, step_generator
from tdx.run import RunDir, StopFlag


def run(cfg: DictConfig, run_dir: RunDir, stop: StopFlag) -> dict[str, Any]:
    t = cfg.toy
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x_valid = torch.rand(t.points, 1, generator=gen)
    y_valid = 3 * x_valid + 1
    line = torch.nn.Linear(1, 1)
    if t.init_from:
        load_state(Path(t.init_from) / "checkpoints" / "fit.pt", {"line": line})
    opt = torch.optim.SGD(line.parameters(), lr=t.lr)

    def step(i: int) -> dict[str, float]:
        x = torch.rand(t.points, 1, generator=step_generator(cfg.seed, "fit", i))
        y = 3 * x + 1 + 0.01 * torch.randn(x.shape, generator=step_generator(cfg.seed, "y", i))
        loss = (line(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        time.sleep(t.sleep)
        return {"loss": loss.item()}

    @torch.no_grad()
    def evaluate(i: int) -> dict[str, float]:
        return {"mse": round((line(x_valid) - y_valid).pow(2).mean().item(), 6),
                "slope": round(line.weight.item(), 4), "intercept": round(line.bias.item(), 4)}

    return run_stage(Stage("fit", int(t.steps), step, {"line": line, "opt": opt}, evaluate,
                           units=t.points, unit_name="points"), cfg, run_dir, stop)
