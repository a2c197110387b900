"""`tdx bench talk-op` on a tiny configuration: it measures, writes JSON/markdown/plot,
and answers bad arguments with exit code 2."""

import json
import time

from tdx.bench import median_time
from tdx.run import cpu_caches
from tdx.talk.bench import checks, ratios

from .conftest import tdx


def test_bench_talk_op_tiny(tmp_path):
    js, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    proc = tdx("bench", "talk-op", "--lengths", "32", "--batch", "1", "--channels", "16",
               "--heads", "2", "--kmax", "3", "--min-time", "0", "--budget", "0.2",
               "--ops", "talk,lightconv,floor",
               "--json", str(js), "--md", str(md), "--plot", str(png), cwd=tmp_path,
               timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(js.read_text())
    for T in ("32",):
        for op in ("talk", "lightconv", "floor"):
            r = res["results"][T][op]
            assert "error" not in r, r
            assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and r["peak_fwd_bwd_mb"] > 0
        assert res["ratios"][T]["talk/floor"] > 0
    assert "talk/lightconv" in md.read_text() and "Commit" in md.read_text()
    caches = cpu_caches()  # the machine line names the caches the timings depend on
    assert res["machine"]["caches"] == caches
    assert not caches or f"({caches})" in md.read_text()
    assert png.stat().st_size > 1000
    assert res["command"].startswith("tdx bench talk-op")
    assert res["config"]["malloc"] == "reuse" and res["config"]["talk_kernel"]
    assert res["config"]["min_time_s"] == 0


def test_cpu_caches_reads_the_unified_levels(tmp_path):
    for i, (level, kind, size) in enumerate([(1, "Data", "48K"), (1, "Instruction", "32K"),
                                             (2, "Unified", "2048K"),
                                             (3, "Unified", "307200K")]):
        d = tmp_path / f"index{i}"
        d.mkdir()
        for name, value in (("level", level), ("type", kind), ("size", size)):
            (d / name).write_text(f"{value}\n")
    assert cpu_caches(tmp_path) == "L2 2048K, L3 307200K"
    assert cpu_caches(tmp_path / "missing") == ""


def busy(seconds: float):
    """A call that takes `seconds` of CPU time (a sleep would measure the scheduler)."""
    def call() -> None:
        end = time.perf_counter() + seconds
        while time.perf_counter() < end:
            pass
    return call


def test_timing_gives_a_calls_duration():
    """torch.utils.benchmark's timer, as median_time drives it, reads a 2-ms call as 2 ms:
    blocks of calls, divided back to one call."""
    assert 2e-3 <= median_time(busy(2e-3), warmup=1) < 2.4e-3


def test_timing_covers_a_minimum_time_and_respects_the_budget():
    calls = []
    fast = lambda: calls.append(time.sleep(0.001))  # noqa: E731
    median_time(fast, warmup=0, min_s=0.05)
    assert len(calls) >= 10  # a short call is timed many times
    calls.clear()
    median_time(lambda: calls.append(time.sleep(0.02)), warmup=0, budget_s=0.05)
    assert 2 <= len(calls) <= 5  # the budget stops long calls early
    calls.clear()
    median_time(lambda: calls.append(time.sleep(0.02)), warmup=3, warmup_s=0.01, budget_s=0.01)
    assert len(calls) == 1 + 2  # one warm-up call (no more once the time is up), then
    # torch's block-size estimate and one block


def test_targets_are_evaluated_from_numbers():
    row = lambda t, f: {"talk": {"fwd_ms": t, "fwd_bwd_ms": t, "peak_fwd_bwd_mb": t},  # noqa: E731
                        "lightconv": {"fwd_bwd_ms": 2 * t}, "dynamicconv": {"fwd_bwd_ms": 2 * t},
                        "attention": {"fwd_bwd_ms": f}, "floor": {"fwd_ms": t / 2}}
    results = {512: row(10, 5), 1024: row(20, 40), 8192: row(170, 3000)}
    assert ratios(results[512])["talk/floor"] == 2.0
    c = checks(results)
    assert c["faster_than_lightconv_where_both_ran"] and c["faster_than_dynamicconv_where_both_ran"]
    results[8192]["lightconv"] = {"error": "out of memory"}
    c = checks(results)
    assert c["lightconv_failed_at"] == [8192] and c["faster_than_lightconv_where_both_ran"]
    assert c["faster_than_attention_from_T1024"]
    assert c["time_ratio_8192_over_512"] == 17.0 and c["linear_time_(<=20)"]
    assert c["within_3x_of_floor"]


def test_bench_bad_arguments(tmp_path):
    for args in (["--ops", "talk,magic"], ["--channels", "10", "--heads", "3"],
                 ["--lengths", "1,x"], ["--malloc", "magic"]):
        proc = tdx("bench", "talk-op", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


def test_bench_talk_model_tiny(tmp_path):
    js, md = tmp_path / "m.json", tmp_path / "m.md"
    proc = tdx("bench", "talk-model", "--batch", "2", "--length", "5", "--lm-tokens", "32",
               "--contexts", "16", "--budget", "0.2", "--json", str(js), "--md", str(md),
               cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(js.read_text())
    for name in ("talk", "transformer", "lightconv", "dynamicconv"):
        r = res["results"]["mt"][name]
        assert "error" not in r, r
        assert r["train_words_per_s"] > 0 and r["gen_sent_per_s"] > 0 and r["params"] > 0
    for name in ("talk", "transformer", "dynamicconv"):
        assert res["results"]["lm"]["16"][name]["train_tok_per_s"] > 0
    assert res["ratios"]["mt_train_talk/transformer"] > 0
    assert set(res["checks"]) >= {"mt_train_>=1.2x_transformer", "mt_gen_>=1.3x_transformer"}
    assert "TaLK model speed" in md.read_text()
    bad = tdx("bench", "talk-model", "--contexts", "x", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
