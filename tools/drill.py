"""The bad-input drill: every way a user (or an adversarial tester) has broken tdx, replayed
against the command line, each expected to end with its documented exit code (2: bad
input) and one message, never a traceback, before any work starts.

    python tools/drill.py            # prints one line per case; exit 1 if any case fails

`tests/test_drill.py` runs it in CI. Cases run in this process through Typer's test
runner (no process start-up per case); the ones that need a run folder, data files or a
lock set them up in a temporary folder first.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from typer.testing import CliRunner

from tdx.cli.main import app

TINY = ["data.train_size=64", "data.valid_size=16", "data.test_size=16", "data.batch_size=16",
        "model.encoder_embed_dim=16", "model.encoder_hidden_size=32",
        "model.decoder_embed_dim=16", "model.decoder_hidden_size=32",
        "model.decoder_out_embed_dim=32", "trainer.max_update=4", "trainer.valid_every=2",
        "trainer.save_every=2", "trainer.log_every=2", "trainer.test_beam=2"]
MT = ("mt/multi30k/train.de.gz", "mt/multi30k/train.en.gz", "mt/multi30k/val.de.gz",
      "mt/multi30k/val.en.gz", "mt/multi30k/test_2016_flickr.de.gz",
      "mt/multi30k/test_2016_flickr.en.gz")


@dataclass
class Case:
    name: str
    args: list[str]
    code: int = 2
    says: str = ""  # a part of the message
    env: dict[str, str] | None = None


@dataclass
class Result:
    case: Case
    code: int
    output: str

    @property
    def ok(self) -> bool:
        return (self.code == self.case.code and self.case.says in self.output
                and "Traceback" not in self.output)


def run(case: Case) -> Result:
    env = {**os.environ, **(case.env or {})}
    saved = dict(os.environ)
    os.environ.update(env)
    try:
        res = CliRunner().invoke(app, case.args, catch_exceptions=True)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    out = res.output + (f"\nTraceback: {res.exception!r}" if res.exception and
                        not isinstance(res.exception, SystemExit) else "")
    return Result(case, res.exit_code, out)


def config_cases(runs: Path) -> Iterator[Case]:
    """Values outside their domain, malformed overrides: exit 2 before any folder."""
    at = f"paths.runs_dir={runs}"
    for override, says in [
            ("trainer.log_every=0", "trainer.log_every=0"), ("trainer.valid_every=0",
                                                             "trainer.valid_every"),
            ("seed=-1", "seed=-1"), ("model.dropout=1.5", "model.dropout=1.5"),
            ("data.min_len=20", "data.max_len=12"), ("data.vocab_size=0", "data.vocab_size"),
            ("trainer.test_split=nosuch", "trainer.test_split"),
            ("trainer.best_metric=nosuch", "trainer.best_metric=nosuch"),
            ("trainer.max_update=-5", "trainer.max_update"),
            ("trainer.max_update=0", "trainer.max_update"), ("optim.lr=-1", "optim.lr"),
            ("data.batch_size=0", "data.batch_size"), ("trainer.best_mode=foo", "best_mode"),
            ("distributed.world_size=0", "distributed.world_size"),
            ("distributed.node_rank=3", "distributed.node_rank"),
            ("trainer.log_every=1.5", "trainer.log_every"), ("resume=", "resume="),
            ("=5", "names no key"), ("~trainer.max_update", "removes a setting"),
            ("trainer.max_update=abc", "Wrong type"), ("nosuch.key=1", "Unknown config key"),
            ("model=nosuch", "Unknown option"), ("seed=1,2", "is a sweep"),
            ("model=transformer model.encoder_hidden_size=8", "once model=transformer")]:
        yield Case(f"train copy {override}", ["train", "copy", *override.split(), at],
                   says=says)
    yield Case("unknown experiment", ["train", "cpy"], says="Did you mean: copy")
    yield Case("zskd recipe", ["show", "zskd", "zskd.recipe=nosuch"], says="zskd.recipe")
    yield Case("zskd crop", ["show", "zskd", "zskd.ood.crop=1.5"], says="zskd.ood.crop")
    yield Case("zskd pair crop", ["show", "zskd", "zskd.task=mrpc", "zskd.ood.crop=0.5"],
               says="sentence-pair")
    yield Case("srnam kernel", ["show", "srnam", "srnam.degradation.kernel=box"],
               says="srnam.degradation.kernel")
    yield Case("srnam steps", ["show", "srnam", "srnam.generator.steps=-1"],
               says="srnam.generator.steps")
    yield Case("embed rate", ["show", "embed", "teacher=x", "model.embed_rate=0.5"],
               says="model.embed_rate")


def folder_cases(tmp: Path) -> Iterator[Case]:
    """Run folders that cannot be used: exit 2, nothing written."""
    (tmp / "afile").write_text("x")
    yield Case("run dir is a file", ["train", "copy", *TINY, f"hydra.run.dir={tmp}/afile"],
               says="is a file")
    yield Case("300-character run dir", ["train", "copy", *TINY,
                                         f"hydra.run.dir={tmp}/{'x' * 300}"],
               says="longer than 255")
    yield Case("unwritable runs root", ["train", "copy", *TINY, "paths.runs_dir=/proc/tdx"],
               says="Cannot make the run folder")
    yield Case("resume of no run", ["train", "copy", f"resume={tmp}"], says="Cannot resume")


def data_cases(tmp: Path, data: Path) -> Iterator[Case]:
    """Data files that cannot be read: exit 2 naming the file (1 for `tdx data check`)."""
    text = b"ein satz\n" * 1000
    bad = {"random bytes": gzip.compress(os.urandom(4096)),
           "latin-1": gzip.compress("caf\xe9 au lait\n".encode("latin-1")),
           "UTF-16": gzip.compress("hallo\n".encode("utf-16")),
           "truncated gzip": gzip.compress(text)[:-40], "garbage gzip": b"\x1f\x8b" + b"xx" * 50,
           "not gzip": text}
    for what, content in [*bad.items(), ("a folder", None)]:
        root = tmp / f"data-{what.replace(' ', '_')}"
        for rel in MT:
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(data / rel, root / rel)
        target = root / MT[0]
        target.unlink()
        if content is None:
            target.mkdir()
        else:
            target.write_bytes(content)
        env = {"TDX_DATA_DIR": str(root)}
        yield Case(f"train talk-mt, {what}", ["train", "talk-mt", f"paths.runs_dir={tmp}/r"],
                   says=str(target), env=env)
        yield Case(f"data check talk-mt, {what}", ["data", "check", "talk-mt"], code=1,
                   says="BROKEN", env=env)
    empty = tmp / "empty-data"
    empty.mkdir()
    yield Case("data check zskd, empty data dir", ["data", "check", "zskd"], code=1,
               says="MISSING", env={"TDX_DATA_DIR": str(empty)})


def report_cases(tmp: Path, good: Path) -> Iterator[Case]:
    """Corrupt run folders: left out with a warning (exit 2 with --strict)."""
    damage: dict[str, Callable[[Path], None]] = {
        "metrics.jsonl": lambda d: (d / "metrics.jsonl").write_text("{not json\n"),
        "config.yaml": lambda d: (d / "config.yaml").write_text("a: [unclosed\n"),
        "overrides.yaml": lambda d: (d / "overrides.yaml").write_text("{a: 1}\n"),
        "summary list": lambda d: (d / "summary.json").write_text("[1, 2]\n"),
        "summary truncated": lambda d: (d / "summary.json").write_text('{"status": "comp'),
    }
    for what, spoil in damage.items():
        root = tmp / f"report-{what.replace(' ', '_')}"
        shutil.copytree(good, root / "good")
        shutil.copytree(good, root / "bad")
        spoil(root / "bad")
        yield Case(f"report, corrupt {what}", ["report", str(root), "--aggregate"], code=0,
                   says="left out")
        yield Case(f"report --strict, corrupt {what}", ["report", str(root), "--strict"],
                   says="bad")
    yield Case("report, unknown metric", ["report", str(good), "--plot", f"{tmp}/p.png",
                                          "--metric", "nosuch.x"], says="No run logged")
    yield Case("bench --batch 0", ["bench", "talk-op", "--batch", "0"], says="--batch")
    yield Case("bench --budget 0", ["bench", "talk-model", "--budget", "0"],
               says="--budget must be above 0")


def resume_cases(good: Path) -> Iterator[Case]:
    """A completed run whose checkpoint is damaged: a resume refuses, the folder stays."""
    last = good / "checkpoints" / "checkpoint_last.pt"
    last.write_bytes(last.read_bytes()[: last.stat().st_size // 2])
    longer = ["train", "copy", f"resume={good}", "trainer.max_update=8"]
    yield Case("resume, truncated checkpoint", longer, says=str(last))
    last.write_bytes(os.urandom(4096))
    yield Case("resume, garbage checkpoint", longer, says=str(last))
    last.unlink()
    yield Case("resume, checkpoint deleted", longer, says="checkpoint_last.pt")


def folder_digest(folder: Path) -> str:
    """One hash of every file's path and bytes under a folder."""
    h = hashlib.sha256()
    for p in sorted(folder.rglob("*")):
        h.update(str(p.relative_to(folder)).encode())
        if p.is_file():
            h.update(p.read_bytes())
    return h.hexdigest()


def train_tiny(runs: Path) -> Path:
    """A completed tiny copy run (the folder the report and resume cases spoil copies of)."""
    res = run(Case("train", ["train", "copy", *TINY, f"hydra.run.dir={runs}/good"], code=0))
    if not res.ok:
        raise RuntimeError(f"the drill's tiny run failed:\n{res.output[-3000:]}")
    return runs / "good"


def drill(tmp: Path, data: Path) -> list[Result]:
    good = train_tiny(tmp / "runs")
    cases = [*config_cases(tmp / "none"), *folder_cases(tmp), *data_cases(tmp, data),
             *report_cases(tmp, good)]
    results = [run(c) for c in cases]
    broken = tmp / "broken"
    shutil.copytree(good, broken)
    for case in resume_cases(broken):
        before = folder_digest(broken)
        result = run(case)
        if folder_digest(broken) != before:
            result.output += "\nthe run folder changed"
            result.code = -1
        results.append(result)
    if (tmp / "none").exists():  # no case may have made a folder
        results.append(Result(Case("no folder made by the config cases", []), -1,
                              str(sorted(p for p in (tmp / "none").rglob("*")))))
    return results


def main() -> int:
    data = Path(os.environ.get("TDX_DATA_DIR", Path(__file__).parents[2] / "shared" / "data"))
    with tempfile.TemporaryDirectory(prefix="tdx-drill-") as tmp:
        results = drill(Path(tmp), data)
    for r in results:
        first = next((ln for ln in r.output.splitlines() if ln.strip()), "")
        print(f"{'ok  ' if r.ok else 'FAIL'} {r.case.name}: exit {r.code} "
              f"(expected {r.case.code}) {first[:110]}")
    failed = [r for r in results if not r.ok]
    print(json.dumps({"cases": len(results), "failed": len(failed)}))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
