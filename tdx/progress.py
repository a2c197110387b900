"""Training progress: a rich bar with live loss and throughput on a terminal, plain log
lines (every `log_every` updates) when stdout is not a terminal.

Throughput is measured over windows of about 10 s of updates; each finished window's rate
is kept, and a run's speed is their median (`typical_rate`): a window that held a
validation pass, a checkpoint save or another job's burst is one outlier among many,
where the last window alone (what the bar shows) or the mean over the run would carry it.
The fairseq engine carries a run's windows across a resume (summary.json `rate_windows`);
a plain-PyTorch stage's rate covers the segment that finished it."""

from __future__ import annotations

import logging
import statistics
import sys
import time
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

log = logging.getLogger("tdx")


def fmt(metrics: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                    for k, v in metrics.items())


class TrainProgress:
    def __init__(self, total: int, start: int = 0, log_every: int = 50,
                 description: str = "train", interactive: bool | None = None,
                 windows: list[float] | None = None) -> None:
        self.total, self.step, self.log_every = total, start, log_every
        self.windows = list(windows or [])  # rates of finished windows (earlier segments')
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self._t, self._n, self._units = time.time(), start, 0.0
        self.rate = 0.0
        self._bar: Progress | None = None
        if self.interactive:
            self._bar = Progress(
                TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[stats]}"), TimeElapsedColumn(), TimeRemainingColumn(),
                console=Console(), transient=False)
            self._task = self._bar.add_task(description, total=total, completed=start, stats="")
            self._bar.start()

    def update(self, step: int, units: float, unit_name: str, **stats: Any) -> None:
        """Record one update that processed `units` words/tokens/samples."""
        self.step = step
        self._units += units
        dt = time.time() - self._t
        if dt > 0.5:
            self.rate = self._units / dt
        text = fmt({**stats, f"{unit_name}/s": round(self.rate)})
        if self._bar is not None:
            self._bar.update(self._task, completed=step, stats=text)
        elif step % self.log_every == 0 or step == self.total:
            log.info("step %d/%d %s", step, self.total, text)
        if dt > 10:  # sliding window for the throughput
            self.windows.append(round(self.rate, 1))
            self._t, self._units = time.time(), 0.0

    def typical_rate(self) -> float:
        """The median rate of the finished windows (the current rate before one ends)."""
        return statistics.median(self.windows) if self.windows else self.rate

    def message(self, text: str) -> None:
        if self._bar is not None:
            self._bar.console.print(text)
        log.info(text) if self._bar is None else log.debug(text)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
