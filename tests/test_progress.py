"""A run's training speed: the median of its ~10-s throughput windows, carried by a resume."""

from tdx import progress
from tdx.progress import TrainProgress
from tdx.run import RunDir


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_speed_is_the_median_window_and_one_slow_window_does_not_move_it(monkeypatch):
    clock = Clock()
    monkeypatch.setattr(progress.time, "time", clock)
    bar = TrainProgress(100, interactive=False)
    step = 0
    for seconds in [1.0] * 22 + [30.0] + [1.0] * 22:  # 100 tok per update; a 30-s pause
        step += 1  # (a validation) inside one update's window
        clock.now += seconds
        bar.update(step, 100.0, "tok")
    assert bar.windows == [100.0, 100.0, 3.3, 100.0, 100.0]  # windows of > 10 s
    assert bar.typical_rate() == 100.0  # the mean of the windows would say 80.7
    assert TrainProgress(10, interactive=False).typical_rate() == 0.0  # no window yet


def test_a_resume_continues_the_windows(tmp_path):
    run = RunDir(tmp_path / "r")
    run.start(seed=1, experiment="x")
    run.finish("interrupted", rate_tok_s=90, rate_windows=[80.0, 90.0, 100.0])
    again = RunDir(tmp_path / "r")
    again.start(seed=1, experiment="x", resumed=True)
    assert again.summary["rate_windows"] == [80.0, 90.0, 100.0]
    assert TrainProgress(10, windows=again.summary["rate_windows"]).typical_rate() == 90.0
