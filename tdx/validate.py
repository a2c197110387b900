"""Every config value that has a domain, checked before anything runs.

The domains are data, `conf/checks/*.yaml` (and a user plugin's `conf/checks/`): a dotted
key, or a pattern of one (`*.lr`, fnmatch), and its rule:

    {min: a, max: b}    a number in [a, b] (either bound may be left out)
    {above: a}          a number > a
    {int: true}         a whole number (with min / max)
    {choices: [...]}    one of these values
    {nullable: true}    null is allowed too
    {min_key: other}    >= the value of another key (a maximum length and its minimum)
    {below_key: other}  < the value of another key (a node rank and the number of nodes)

A key takes the first rule that names it exactly, else the first pattern that matches it.
Other checks that need code are the engines' and the recipes' (`check(cfg)`).
"""

from __future__ import annotations

import fnmatch
import functools
from pathlib import Path
from typing import Any

import yaml
from omegaconf import DictConfig, OmegaConf

from tdx.errors import UsageError


@functools.cache
def _rules(dirs: tuple[Path, ...]) -> dict[str, dict[str, Any]]:
    rules: dict[str, dict[str, Any]] = {}
    for d in dirs:
        for path in sorted((d / "checks").glob("*.yaml")):
            for key, rule in (yaml.safe_load(path.read_text()) or {}).items():
                rules.setdefault(str(key), {**rule, "_file": f"{path.parent.name}/{path.name}"})
    return rules


def rules(dirs: list[Path]) -> dict[str, dict[str, Any]]:
    """The rules of `dirs`' checks/ folders (conf/ first, then the plugins')."""
    return _rules(tuple(dirs))


def rule_for(key: str, table: dict[str, dict[str, Any]]) -> dict[str, Any] | None:
    if key in table:
        return table[key]
    return next((r for p, r in table.items() if "*" in p and fnmatch.fnmatchcase(key, p)),
                None)


def leaves(node: Any, prefix: str = "") -> dict[str, Any]:
    """{dotted key: value} of a resolved config's scalars (lists are values too)."""
    if isinstance(node, dict):
        out: dict[str, Any] = {}
        for k, v in node.items():
            out |= leaves(v, f"{prefix}{k}.")
        return out
    return {prefix[:-1]: node}


def describe(rule: dict[str, Any]) -> str:
    """'a whole number >= 1', 'one of min, max', 'a number in [0, 1]' (or null)."""
    if "choices" in rule:
        text = "one of " + ", ".join(map(str, rule["choices"]))
    else:
        kind = "a whole number" if rule.get("int") else "a number"
        lo, hi = rule.get("min"), rule.get("max")
        if "above" in rule:
            text = f"{kind} > {rule['above']}" + (f" and <= {hi}" if hi is not None else "")
        elif lo is not None and hi is not None:
            text = f"{kind} in [{lo}, {hi}]"
        elif lo is not None:
            text = f"{kind} >= {lo}"
        elif hi is not None:
            text = f"{kind} <= {hi}"
        else:
            text = kind
        text += f", >= {rule['min_key']}" if "min_key" in rule else ""
        text += f", < {rule['below_key']}" if "below_key" in rule else ""
    return text + (", or null" if rule.get("nullable") else "")


def ok(value: Any, rule: dict[str, Any], values: dict[str, Any]) -> bool:
    if value is None:
        return bool(rule.get("nullable"))
    if "choices" in rule:
        return value in rule["choices"]
    if isinstance(value, bool) or not isinstance(value, int | float):
        return False
    if rule.get("int") and not float(value).is_integer():
        return False
    other = {k: values.get(rule[k]) for k in ("min_key", "below_key") if k in rule}
    return (("min" not in rule or value >= rule["min"])
            and ("max" not in rule or value <= rule["max"])
            and ("above" not in rule or value > rule["above"])
            and not (isinstance(other.get("min_key"), int | float)
                     and value < other["min_key"])
            and not (isinstance(other.get("below_key"), int | float)
                     and value >= other["below_key"]))


def violations(cfg: DictConfig, dirs: list[Path]) -> list[str]:
    table = rules(dirs)
    values = leaves(OmegaConf.to_container(cfg, resolve=True))
    return [f"{key}={value!r}: it must be {describe(rule)} ({rule['_file']})"
            for key, value in values.items()
            if (rule := rule_for(key, table)) is not None and not ok(value, rule, values)]


def check_domains(cfg: DictConfig, dirs: list[Path]) -> None:
    bad = violations(cfg, dirs)
    if bad:
        raise UsageError("Bad value" + "s" * (len(bad) > 1) + ": " + "; ".join(bad) + ".")
