"""`tdx report` reads run folders only: tables in md/csv/latex, seeds aggregated, curves."""

import csv
import io
import json
import re
from pathlib import Path

import pytest
import yaml

from tdx.report import MARK, mean_std, report
from tdx.run import RunDir, atomic_write, read_metrics

from .conftest import tdx


def make_run(root, name, seed, model, degree, em, curve):
    run = RunDir(root / name)
    run.write_config({"name": "copy-study", "seed": seed,
                      "model": {"meta": {"label": model, "attention": "x", "degree": degree}}},
                     [f"seed={seed}", f"model={model}", "experiment=copy-study"])
    run.start(seed, "copy-study")
    for step, v in curve:
        run.log(step, "valid", {"exact_match": v})
    run.finish("completed", params=1_500_000, final={"exact_match_greedy": em,
                                                     "exact_match_beam5": em,
                                                     "token_acc_greedy": em,
                                                     "bleu_beam5": 100 * em})
    return run.path


def fixture_runs(tmp_path):
    root = tmp_path / "sweep"
    make_run(root, "0", 1, "lstm", 0, 0.20, [(100, 0.1), (200, 0.2)])
    make_run(root, "1", 2, "lstm", 0, 0.30, [(100, 0.1), (200, 0.3)])
    make_run(root, "2", 1, "transformer", 3, 0.95, [(100, 0.5), (200, 0.95)])
    make_run(root, "3", 2, "transformer", 3, 0.99, [(100, 0.92), (200, 0.99)])
    return root


def test_mean_std():
    assert mean_std([1.0, 2.0, 3.0]) == "2.0 ± 1.0"
    assert mean_std([0.5], scale=100) == "50.0"
    assert mean_std([]) == "-"


def test_generic_table_one_row_per_run_and_aggregated(tmp_path):
    root = fixture_runs(tmp_path)
    rows = list(csv.reader(io.StringIO(report([root], fmt="csv"))))
    assert rows[0][:4] == ["run", "model", "seed", "status"]
    assert len(rows) == 5
    agg = list(csv.reader(io.StringIO(report([root], fmt="csv", aggregate=True))))
    assert agg[0][0] == "model" and "seed" not in agg[0] and agg[0][-1] == "seeds"
    lstm = next(r for r in agg if r[0] == "lstm")
    assert lstm[agg[0].index("exact_match_greedy (%)")] == "25.00 ± 7.07"  # a fraction, in %


def test_generic_table_shows_nested_final_numbers(tmp_path):
    """A summary's nested figures ({'student': {'acc': ..}}) get dotted columns."""
    from tdx.report import Run, generic_table

    runs = [Run(tmp_path, {"final": {"student": {"acc": acc, "name": "x"}, "ratio": 20.7}},
                {}, {"zskd.student.rank": rank}) for rank, acc in (("10", 79.2), ("22", 79.7))]
    headers, rows = generic_table(runs, aggregate=False)
    assert headers == ["run", "zskd.student.rank", "status", "ratio", "student.acc"]
    assert [r[-1] for r in rows] == ["79.2000", "79.7000"]


def test_latex_and_written_file_with_provenance(tmp_path):
    root = fixture_runs(tmp_path)
    tex = report([root], fmt="latex", preset="copy")
    assert r"\begin{tabular}" in tex and r"$\pm$" in tex
    out, png = tmp_path / "results" / "copy.md", tmp_path / "results" / "curves.png"
    report([root], preset="copy", out=out, plot_file=png, command="make table-copy")
    text = out.read_text()
    assert "make table-copy" in text and "commit" in text and "Machine" in text
    assert png.stat().st_size > 1000


def test_report_cli(tmp_path):
    root = fixture_runs(tmp_path)
    proc = tdx("report", str(root), "--format", "csv", "--aggregate", cwd=tmp_path, check=True)
    assert "lstm" in proc.stdout
    bad = tdx("report", str(root), "--format", "xls", cwd=tmp_path)
    assert bad.returncode == 2 and "Unknown format" in bad.stderr


def test_atomic_write_and_metrics_truncation(tmp_path):
    p = tmp_path / "a" / "x.json"
    atomic_write(p, "1")
    atomic_write(p, "2")
    assert p.read_text() == "2" and list(p.parent.iterdir()) == [p]
    run = RunDir(tmp_path / "run")
    for step in (5, 10, 15):
        run.log(step, "train", {"loss": float(step)})
    run.truncate_metrics(10)
    assert [m["step"] for m in read_metrics(run.metrics_path)] == [5, 10]
    run.log(15, "train", {"loss": float("nan")})
    assert json.loads(run.metrics_path.read_text().splitlines()[-1])["metrics"]["loss"] == "nan"


def test_overrides_are_recorded(tmp_path):
    run = RunDir(tmp_path / "r")
    run.write_config({"a": 1}, ["a=1"])
    assert yaml.safe_load((run.path / "overrides.yaml").read_text()) == ["a=1"]


def test_curves_of_several_seeds_plot_as_their_mean_with_a_band():
    """Runs of one setting plot as one line, the mean at the updates they all logged, in
    a min-max band; a single run has no band."""
    from tdx.report import mean_curve

    class Axes:
        def __init__(self):
            self.calls = []

        def plot(self, x, y, **kw):
            self.calls.append(("plot", x, y, kw["label"]))

        def fill_between(self, x, lo, hi, **kw):
            self.calls.append(("band", x, lo, hi))

    ax = Axes()
    mean_curve(ax, [[(0, 1.0), (10, 3.0)], [(0, 3.0), (10, 5.0), (20, 9.0)]], "pgd")
    assert ax.calls == [("plot", [0, 10], [2.0, 4.0], "pgd"),
                        ("band", [0, 10], [1.0, 3.0], [3.0, 5.0])]
    ax = Axes()
    mean_curve(ax, [[(0, 1.0), (10, 3.0)]], "ood")
    assert ax.calls == [("plot", [0, 10], [1.0, 3.0], "ood")]


FIXTURES = Path(__file__).parent / "fixtures" / "report"
# preset -> the run folders (relative to FIXTURES) its committed output was made from
PRESET_FIXTURES = {"copy": ["copy"], "talk-mt": ["talk-mt"], "talk-lm": ["talk-lm"],
                   "embed": ["embed/sweep"], "srnam": ["srnam/eval1", "srnam/eval2"],
                   "zskd": ["zskd"]}


@pytest.mark.parametrize("preset", sorted(PRESET_FIXTURES))
def test_every_preset_writes_its_committed_markdown(preset, tmp_path, monkeypatch):
    """Every paper's preset, registered by its package, turns the fixture run folders into
    exactly the Markdown committed beside them (fixtures/report/expected/), as the report
    code did before it moved into the paper packages; only the report's own commit and
    date are masked."""
    monkeypatch.chdir(FIXTURES)  # the fixtures name their teachers and bodies relatively
    paths = PRESET_FIXTURES[preset]
    out, png = tmp_path / f"{preset}.md", tmp_path / f"{preset}.png"
    metric = {"talk-lm": "valid.loss_nats", "talk-mt": "valid.bleu"}.get(preset,
                                                                         "valid.exact_match")
    plotted = preset != "srnam"  # its evaluation runs log no curve (its grid is a file)
    report([Path(p) for p in paths], preset=preset, out=out, plot_file=png if plotted else None,
           plot_metric=metric,
           command=f"tdx report {' '.join(paths)} --table {preset}")
    generated, kept = out.read_text().split(MARK)
    text = re.sub(r"\(tdx commit [^,]+, [-0-9: ]+\)", "(tdx commit COMMIT, DATE)",
                  generated.rstrip("\n") + "\n")
    assert text == (FIXTURES / "expected" / f"{preset}.md").read_text() and kept == "\n"
    assert not plotted or png.stat().st_size > 1000


def test_generic_table_writes_its_committed_markdown(tmp_path, monkeypatch):
    monkeypatch.chdir(FIXTURES)
    out = tmp_path / "generic.md"
    report([Path("copy")], aggregate=True, out=out, command="tdx report copy --aggregate")
    generated = out.read_text().split(MARK)[0].rstrip("\n") + "\n"
    text = re.sub(r"\(tdx commit [^,]+, [-0-9: ]+\)", "(tdx commit COMMIT, DATE)", generated)
    assert text == (FIXTURES / "expected" / "generic.md").read_text()


def test_talk_against_the_transformer_from_hand_numbers(tmp_path):
    """Issue 45's targets under the TaLK tables: means over seeds, a miss says by how much,
    and no target when one of the two models is missing."""
    from tdx.report import Run
    from tdx.talk.report import mt_notes

    def run(arch: str, bleu: float, rate: float) -> Run:
        return Run(tmp_path, {"final": {"bleu_beam5": bleu}, "rate_tok_s": rate,
                              "bleu_signature": "nrefs:1|tok:13a"}, {"model": {"arch": arch}}, {})

    runs = [run("talkconv_multi30k", 38.9, 2600), run("talkconv_multi30k", 39.1, 2400),
            run("transformer_multi30k", 39.8, 2000), run("lightconv_multi30k", 45.0, 9000)]
    text = mt_notes(runs)
    assert "signature `nrefs:1|tok:13a`" in text
    assert "- TaLK test BLEU (beam 5) >= Transformer - 0.5: MISSED (TaLK 39.00, Transformer " \
           "39.80, TaLK worse by 0.80)" in text
    assert "- TaLK faster in training tokens/s: met (2500 vs 2000, 1.250x" in text
    assert "Targets" not in mt_notes(runs[:2])
    # a mean exactly at the margin is met as printed (30.99 and 31.33 against 31.66: the
    # float difference is -0.5000000000000036)
    edge = [run("talkconv_multi30k", 30.99, 1), run("talkconv_multi30k", 31.33, 1),
            run("transformer_multi30k", 31.66, 1)]
    assert "Transformer - 0.5: met (TaLK 31.16, Transformer 31.66, TaLK worse by 0.50)" in \
        mt_notes(edge)
