"""`tdx bench talk-op` on a tiny configuration: it measures, writes JSON/markdown/plot,
and answers bad arguments with exit code 2."""

import json
import subprocess
import sys
import time

from tdx.bench import load_warning, median_time, watch_load
from tdx.run import cpu_caches
from tdx.talk.bench import checks, ratios
from tdx.talk.bench_model import ratios_and_checks

from .conftest import tdx


def test_bench_talk_op_tiny(tmp_path):
    js, md, png = tmp_path / "b.json", tmp_path / "b.md", tmp_path / "b.png"
    proc = tdx("bench", "talk-op", "--lengths", "32", "--batch", "1", "--channels", "16",
               "--heads", "2", "--kmax", "3", "--min-time", "0", "--budget", "0.2",
               "--ops", "talk,talk_window,lightconv,cumsum,copy",
               "--json", str(js), "--md", str(md), "--plot", str(png), cwd=tmp_path,
               timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(js.read_text())
    for T in ("32",):
        for op in ("talk", "talk_window", "lightconv", "cumsum", "copy"):
            r = res["results"][T][op]
            assert "error" not in r, r
            assert r["fwd_ms"] > 0 and r["fwd_bwd_ms"] > 0 and "other_cores" in r
            assert (r["peak_fwd_bwd_mb"] > 0) == (op != "copy")  # the copy allocates nothing
        assert res["ratios"][T]["talk/cumsum"] > 0 and res["ratios"][T]["talk/copy fwd"] > 0
        assert res["ratios"][T]["window/copy fwd+bwd"] > 0
    assert {"load_before", "load_after", "other_cores", "max_other_cores"} <= set(res["load"])
    assert "machine_quiet" in res["checks"] and "fwd_within_2x_of_copy_floor" in res["checks"]
    text = md.read_text()
    assert "talk/lightconv" in text and "talk/copy fwd+bwd" in text and "Commit" in text
    assert "other work" in text
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
                        "attention": {"fwd_bwd_ms": f}, "cumsum": {"fwd_ms": t / 2},
                        "copy": {"fwd_ms": t / 4, "fwd_bwd_ms": t / 2}}
    results = {512: row(10, 5), 1024: row(20, 40), 8192: row(170, 3000)}
    assert ratios(results[512])["talk/cumsum"] == 2.0
    assert ratios(results[512])["talk/copy fwd"] == 4.0
    c = checks(results)
    assert c["faster_than_lightconv_where_both_ran"] and c["faster_than_dynamicconv_where_both_ran"]
    results[8192]["lightconv"] = {"error": "out of memory"}
    c = checks(results)
    assert c["lightconv_failed_at"] == [8192] and c["faster_than_lightconv_where_both_ran"]
    assert c["faster_than_attention_from_T1024"]
    assert c["time_ratio_8192_over_512"] == 17.0 and c["linear_time_(<=20)"]
    assert c["within_3x_of_cumsum"]
    assert c["fwd_over_copy_floor_T>=2048"] == {8192: 4.0}
    assert not c["fwd_within_2x_of_copy_floor"] and c["fwd_bwd_within_2x_of_copy_floor"]
    results[8192]["copy"]["fwd_ms"] = 170 / 1.9
    assert checks(results)["fwd_within_2x_of_copy_floor"]
    assert checks({512: row(10, 5)})["fwd_within_2x_of_copy_floor"] is None  # not measured
    only = {T: {"talk": r["talk"], "copy": r["copy"]} for T, r in results.items()}  # --ops
    c = checks(only)
    assert c["faster_than_lightconv_where_both_ran"] is None and "lightconv_failed_at" not in c
    assert c["faster_than_attention_from_T1024"] is None


BUSY_LOOP = "import time\nend = time.time() + {s}\nwhile time.time() < end: pass"


def test_load_watch_tells_other_work_from_its_own():
    """A process that is not ours, spinning through the block, is other work (about one
    core); a worker we start and wait for inside the block is not (it adds nothing to what
    a block of sleep sees)."""
    other = subprocess.Popen([sys.executable, "-c", BUSY_LOOP.format(s=3)])
    try:
        time.sleep(0.5)  # past its start-up
        with watch_load() as load:
            time.sleep(1.0)
    finally:
        other.kill()
        other.wait()
    assert load["other_cores"] >= 0.5, load
    with watch_load() as quiet:  # whatever else the machine runs now (0 when idle)
        time.sleep(1.0)
    with watch_load() as own:
        subprocess.run([sys.executable, "-c", BUSY_LOOP.format(s=1)], check=True)
    assert own["other_cores"] < quiet["other_cores"] + 0.5, (own, quiet)
    assert {"load_before", "load_after"} <= set(own)
    assert load_warning(dict(load), {"T=2048 talk": {"other_cores": 0.0}}) is None
    warning = load_warning(dict(load), {"T=2048 talk": {"other_cores": 1.0}})
    assert "T=2048 talk" in warning and "1.00 cores" in warning


def test_bench_bad_arguments(tmp_path):
    for args in (["--ops", "talk,magic"], ["--channels", "10", "--heads", "3"],
                 ["--lengths", "1,x"], ["--malloc", "magic"]):
        proc = tdx("bench", "talk-op", *args, cwd=tmp_path)
        assert proc.returncode == 2, proc.stdout + proc.stderr
        assert "Traceback" not in proc.stderr


def test_bench_talk_model_tiny(tmp_path):
    js, md = tmp_path / "m.json", tmp_path / "m.md"
    proc = tdx("bench", "talk-model", "--batch", "2", "--lengths", "16", "--lm-tokens", "32",
               "--contexts", "16", "--budget", "0.2", "--json", str(js), "--md", str(md),
               cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(js.read_text())
    for name in ("talk", "transformer", "lightconv", "dynamicconv"):
        r = res["results"]["mt"]["16"][name]
        assert "error" not in r, r
        assert r["train_words_per_s"] > 0 and r["gen_sent_per_s"] > 0 and r["params"] > 0
        assert "other_cores" in r
    for name in ("talk", "transformer", "dynamicconv"):
        assert res["results"]["lm"]["16"][name]["train_tok_per_s"] > 0
    assert res["ratios"]["mt16_train_talk/transformer"] > 0
    assert set(res["checks"]) >= {"mt16_train_>=1.2x_transformer", "mt16_gen_>=1.3x_transformer",
                                  "machine_quiet"}
    assert "TaLK model speed" in md.read_text() and "other work" in md.read_text()
    for args in (["--contexts", "x"], ["--lengths", "16,0"]):
        bad = tdx("bench", "talk-model", *args, cwd=tmp_path)
        assert bad.returncode == 2 and "Traceback" not in bad.stderr


def test_model_targets_by_length():
    """Issue 47's targets are read at 64 tokens, the model-speed issue's at 16."""
    mt = lambda t, g: {"talk": {"train_words_per_s": t, "gen_sent_per_s": g},  # noqa: E731
                       **{o: {"train_words_per_s": 100, "gen_sent_per_s": 10}
                          for o in ("transformer", "lightconv", "dynamicconv")}}
    res = {"mt": {"16": mt(110, 12), "64": mt(125, 16), "256": mt(200, 40)}, "lm": {}}
    ratios, checks = ratios_and_checks(res)
    assert ratios["mt64_gen_talk/transformer"] == 1.6 and ratios["mt256_train_talk/lightconv"] == 2
    assert checks == {"mt16_train_>=1.2x_transformer": False, "mt16_gen_>=1.3x_transformer": False,
                      "mt64_train_>=1.2x_transformer": True, "mt64_gen_>=1.5x_transformer": True,
                      "faster_than_dynamicconv_everywhere": True}


def test_bench_zskd_student_tiny(tmp_path):
    js, md = tmp_path / "s.json", tmp_path / "s.md"
    proc = tdx("bench", "zskd-student", "--batch", "2", "--lengths", "16", "--budget", "0.2",
               "--json", str(js), "--md", str(md), cwd=tmp_path, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    res = json.loads(js.read_text())
    row = res["results"]["16"]
    for body in ("transformer", "talk"):
        assert row[body]["infer_sent_per_s"] > 0 and row[body]["train_sent_per_s"] > 0
    assert abs(row["talk"]["params"] / row["transformer"]["params"] - 1) < 1e-3
    assert res["ratios"]["infer16_talk/transformer"] > 0
    assert res["checks"]["infer128_>=1.3x_transformer"] is None  # not measured at 128
    assert "TaLK body" in md.read_text()
    bad = tdx("bench", "zskd-student", "--lengths", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr
