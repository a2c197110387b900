"""The shape of the code: no import circle anywhere, and the runner (tdx/, cli/) in
functions that fit on a screen."""

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

from .conftest import REPO

# folder -> import name (pyproject.toml's package-dir)
PACKAGES = {"tdx": "tdx", "cli": "tdx.cli", "conf": "tdx.conf", "attention": "tdx.attention",
            "talk": "tdx.talk", "embed": "tdx.embed", "distill": "tdx.distill",
            "superres": "tdx.superres"}


def modules() -> dict[str, Path]:
    out = {}
    for folder, name in PACKAGES.items():
        for path in (REPO / folder).rglob("*.py"):
            parts = path.relative_to(REPO / folder).with_suffix("").parts
            parts = parts[:-1] if parts[-1] == "__init__" else parts
            out[".".join([name, *parts])] = path
    return out


def imports(path: Path, known: dict[str, Path]) -> set[str]:
    """The project modules `path` imports, at its top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [f"{node.module}.{a.name}" for a in node.names] + [node.module]
        else:
            continue
        found |= {n for n in names if n in known}
    return found


def test_no_import_circle_in_the_project():
    known = modules()
    graph = {m: imports(p, known) - {m} for m, p in known.items()}
    try:
        list(TopologicalSorter(graph).static_order())
    except CycleError as e:
        raise AssertionError(f"import circle: {' -> '.join(e.args[1])}") from None


def test_runner_functions_fit_on_a_screen():
    long = []
    for folder in ("tdx", "cli"):
        for path in (REPO / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                    n = node.end_lineno - node.lineno + 1
                    if n > 60:
                        long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({n})")
    assert not long, long
