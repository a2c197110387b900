"""The toy paper's recipe for the loop engine: fit y = 3x + 1 (+ noise) by SGD, one stage."""

from __future__ import annotations

from typing import Any

import torch
from omegaconf import DictConfig

from tdx.loop import Stage, run_stage, step_generator
from tdx.run import RunDir, StopFlag


def run(cfg: DictConfig, run_dir: RunDir, stop: StopFlag) -> dict[str, Any]:
    t = cfg.toy
    gen = torch.Generator().manual_seed(int(cfg.seed))
    x_valid = torch.rand(t.points, 1, generator=gen)
    y_valid = 3 * x_valid + 1
    line = torch.nn.Linear(1, 1)
    opt = torch.optim.SGD(line.parameters(), lr=t.lr)

    def step(i: int) -> dict[str, float]:
        x = torch.rand(t.points, 1, generator=step_generator(cfg.seed, "fit", i))
        y = 3 * x + 1 + 0.01 * torch.randn(x.shape, generator=step_generator(cfg.seed, "y", i))
        loss = (line(x) - y).pow(2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return {"loss": loss.item()}

    @torch.no_grad()
    def evaluate(i: int) -> dict[str, float]:
        return {"mse": round((line(x_valid) - y_valid).pow(2).mean().item(), 6),
                "slope": round(line.weight.item(), 4), "intercept": round(line.bias.item(), 4)}

    return run_stage(Stage("fit", int(t.steps), step, {"line": line, "opt": opt}, evaluate,
                           units=t.points, unit_name="points"), cfg, run_dir, stop)
