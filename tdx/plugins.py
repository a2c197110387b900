"""Plugins: the packages that add papers to tdx, found without the runner naming any.

A plugin is a module that registers what it adds when imported: report presets
(`tdx.report.register_preset`), engines (`tdx.engines.register_engine`). It may also name
`FAIRSEQ_MODULES`, modules that register fairseq models, tasks and criteria (imported by
tdx's fairseq `--user-dir`, `tdx/tdx_fairseq`), and define `fairseq_ready()`, called once
every plugin's fairseq modules are imported (to build on models another plugin registered).

Plugins come from two places, as fairseq's models do from its package and `--user-dir`:
- installed packages, by the entry point group `tdx.plugins` (pyproject.toml lists the five
  papers' `<paper>/plugin.py`);
- directories in `TDX_USER_DIR` (os.pathsep-separated; `tdx --user-dir DIR`): each is a
  Python package imported by its folder name, and its `conf/` folder, if any, joins the
  config search path, so its `conf/experiment/*.yaml` are experiments like the built-in ones.
"""

from __future__ import annotations

import functools
import importlib
import os
import sys
from importlib import metadata
from pathlib import Path
from types import ModuleType

from tdx.errors import UsageError

GROUP = "tdx.plugins"
ENV = "TDX_USER_DIR"


def user_dirs() -> list[Path]:
    """The folders named by TDX_USER_DIR, resolved; a UsageError for one that is missing."""
    dirs = [Path(p).expanduser().resolve() for p in os.environ.get(ENV, "").split(os.pathsep)
            if p]
    for d in dirs:
        if not (d / "__init__.py").is_file():
            raise UsageError(f"{ENV}: '{d}' is not a plugin folder (a Python package: a "
                             "folder with __init__.py).")
    return dirs


def conf_dirs() -> list[Path]:
    """The `conf/` folders of the user plugins: more config groups and experiments."""
    return [d / "conf" for d in user_dirs() if (d / "conf").is_dir()]


def load() -> list[ModuleType]:
    """Every plugin, imported once per process (per value of TDX_USER_DIR)."""
    return _load(os.environ.get(ENV, ""))


@functools.cache
def _load(_user_dir_setting: str) -> list[ModuleType]:
    modules = [ep.load() for ep in sorted(metadata.entry_points(group=GROUP),
                                          key=lambda ep: ep.name)]
    for d in user_dirs():
        if str(d.parent) not in sys.path:
            sys.path.insert(0, str(d.parent))
        try:
            modules.append(importlib.import_module(d.name))
        except ImportError as e:
            raise UsageError(f"{ENV}: the plugin '{d}' could not be imported: {e}") from None
    return modules


def register_fairseq() -> None:
    """Import every plugin's fairseq modules, then call their `fairseq_ready` hooks."""
    plugins = load()
    for plugin in plugins:
        for name in getattr(plugin, "FAIRSEQ_MODULES", ()):
            importlib.import_module(name)
    for plugin in plugins:
        if hasattr(plugin, "fairseq_ready"):
            plugin.fairseq_ready()
