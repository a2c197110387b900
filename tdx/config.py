"""Composing and checking experiment configs before anything runs.

Every problem a user can cause from the command line (unknown experiment, unknown key,
malformed override, wrong type, missing data file) becomes a `UsageError` with one
paragraph that names the bad part and the closest valid names; the CLI prints it and
exits with code 2.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

import tdx.conf
from tdx import engines, plugins
from tdx.datafiles import probe
from tdx.errors import UsageError, did_you_mean
from tdx.validate import check_domains

CONF_DIR = Path(tdx.conf.__file__).resolve().parent
FORWARDED = ("data", "model", "optim")  # sections passed to fairseq as --options
# ${abspath:rel} in configs: paths that end up inside checkpoints must not depend on cwd
OmegaConf.register_new_resolver("abspath", lambda p: str(Path(p).resolve()), replace=True)


def conf_dirs() -> list[Path]:
    """Where configs are found: conf/, then the user plugins' conf/ folders."""
    return [CONF_DIR, *plugins.conf_dirs()]


def searchpath() -> list[str]:
    """The Hydra override that adds the user plugins' conf/ folders ([] if none)."""
    extra = plugins.conf_dirs()
    return [f"hydra.searchpath=[{','.join(f'file://{d}' for d in extra)}]"] if extra else []


def experiments() -> dict[str, str]:
    """{name: one-line description} for every experiment/*.yaml of the config dirs."""
    out = {}
    for path in sorted(p for d in conf_dirs() for p in (d / "experiment").glob("*.yaml")):
        desc = ""
        for line in path.read_text().splitlines():
            if line.startswith("description:"):
                desc = line.split(":", 1)[1].strip().strip('"')
        out[path.stem] = desc
    return out


def data_options() -> list[str]:
    return group_options("data")


def group_options(group: str) -> list[str]:
    return sorted({p.stem for d in conf_dirs() for p in (d / group).glob("*.yaml")})


def check_experiment(name: str) -> None:
    known = experiments()
    if name not in known:
        raise UsageError(f"Unknown experiment '{name}'.{did_you_mean(name, known)} "
                         f"Available: {', '.join(known)} (see `tdx list`).")


def parse_overrides(overrides: list[str]) -> list[Any]:
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import OverrideParseException

    parsed = []
    for text in overrides:
        try:
            parsed += OverridesParser.create().parse_overrides([text])
        except OverrideParseException as e:
            first = str(e).splitlines()[0]
            raise UsageError(f"Malformed override '{text}': {first}. Overrides look like "
                             "key=value, +new.key=value, ~key, group=option, or for -m "
                             "sweeps key=a,b,c.") from None
        if not parsed[-1].key_or_group:
            raise UsageError(f"Malformed override '{text}': it names no key. Overrides look "
                             "like key=value.")
    return parsed


def _first_value(o: Any) -> str:
    """A sweep override (key=a,b) reduced to its first value, for checking."""
    if o.is_sweep_override():
        return f"{o.get_key_element()}={next(iter(o.sweep_string_iterator()))}"
    return o.input_line


def compose(name: str, overrides: list[str] | None = None) -> DictConfig:
    """The experiment's config with `overrides`, as `tdx show` prints it (no hydra node)."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONF_DIR), version_base="1.3"):
        return hydra_compose("tdx", overrides=[f"experiment={name}", *searchpath(),
                                               *(overrides or [])])


def flat_keys(cfg: Any, prefix: str = "") -> list[str]:
    keys = []
    if isinstance(cfg, DictConfig):
        for k in cfg.keys():
            full = f"{prefix}{k}"
            keys.append(full)
            node = cfg._get_node(k)
            if isinstance(node, DictConfig):
                keys += flat_keys(node, full + ".")
    return keys


def check(name: str, overrides: list[str], multirun: bool = False) -> DictConfig:
    """Validate an experiment + overrides; return the composed config (first sweep point).
    The engine it names checks the rest (fairseq: its own option parser)."""
    check_experiment(name)
    parsed = parse_overrides(overrides)
    sweeps = [o.input_line for o in parsed if o.is_sweep_override()]
    if sweeps and not multirun:
        raise UsageError(f"Override '{sweeps[0]}' is a sweep (comma list); add -m/--multirun "
                         "to run one job per value, or give a single value.")
    user = [o for o in parsed if not o.key_or_group.startswith("hydra")]
    if bad := [o.input_line for o in user if o.is_delete()
               and o.key_or_group.split(".")[0] not in FORWARDED]:
        raise UsageError(f"Override '{bad[0]}' removes a setting the runner needs; only keys "
                         f"of the {', '.join(FORWARDED)} sections, which go to fairseq as "
                         "options, can be removed.")
    base = compose(name)
    cfg = _compose_user(name, base, user)
    check_types(base, cfg, [o for o in user if not (o.is_add() or o.is_delete())])
    missing = sorted(OmegaConf.missing_keys(cfg))
    if missing:
        raise UsageError(f"'{name}' needs {', '.join(missing)}, which has no default: give it "
                         f"on the command line ({missing[0]}=...); the comment next to it in "
                         f"conf/experiment/{name}.yaml says what it is.")
    check_domains(cfg, conf_dirs())
    check_runtime(name, cfg)
    engines.get(cfg.engine).check(cfg)
    return cfg


def compose_checked(name: str, overrides: list[str]) -> DictConfig:
    """`compose`, with an unknown experiment, key or option, or a malformed override, as a
    UsageError (no type, data or engine checks: `check` does those)."""
    check_experiment(name)
    return _compose_user(name, compose(name), parse_overrides(overrides))


def _compose_user(name: str, base: DictConfig, user: list[Any]) -> DictConfig:
    """Compose with the user's overrides; Hydra's errors become one-paragraph UsageErrors
    naming the bad override and the closest valid names."""
    from hydra.errors import ConfigCompositionException, MissingConfigException

    try:
        return compose(name, [_first_value(o) for o in user])
    except MissingConfigException as e:
        bad = next((o for o in user if f"{o.key_or_group}/" in str(e)), None)
        if bad is None:
            raise UsageError(f"Config not found: {str(e).splitlines()[0]} "
                             f"{getattr(e, 'missing_cfg_file', '') or ''}") from None
        options = group_options(bad.key_or_group)
        choice = _first_value(bad).split("=", 1)[1]
        raise UsageError(
            f"Unknown option '{choice}' for config group '{bad.key_or_group}'."
            f"{did_you_mean(choice, options)} Options: {', '.join(options)}.") from None
    except ConfigCompositionException as e:
        msg = str(e).splitlines()[0]
        bad = next((o for o in user if f"'{o.key_or_group}'" in msg), None)
        if "already at" in str(e) and bad is not None:
            raise UsageError(f"Override '{bad.input_line}' adds '{bad.key_or_group}', which "
                             "exists already: drop the + to change it (or use ++ to add or "
                             "change).") from None
        key = bad.key_or_group if bad is not None else msg
        groups = [o.input_line for o in user if "." not in o.key_or_group
                  and "=" in o.input_line and group_options(o.key_or_group)]
        if key in flat_keys(base) and groups:  # a key of the default group, not the chosen
            raise UsageError(f"Config key '{key}' in override '{bad.input_line}' is not a "
                             f"setting once {', '.join(groups)} is chosen (it belongs to the "
                             f"default). Use `tdx show {name} {' '.join(groups)}` to see "
                             "its keys.") from None
        raise UsageError(f"Unknown config key '{key}' in override "
                         f"'{bad.input_line if bad is not None else '?'}'."
                         f"{did_you_mean(key, flat_keys(base))} Use `tdx show {name}` to see "
                         "every key, or prefix the override with + to add a new key.") from None


def check_runtime(name: str, cfg: DictConfig) -> None:
    """Device and process-group settings this machine can honour."""
    if cfg.get("device", "cpu") not in ("cpu", "cuda"):
        raise UsageError(f"device={cfg.device}: use cpu or cuda.")
    if cfg.get("device") == "cuda":
        import torch
        if not torch.cuda.is_available():
            raise UsageError("device=cuda, but torch sees no CUDA GPU on this machine.")
        if cfg.engine != "fairseq":
            raise UsageError(f"device=cuda runs fairseq models; '{name}' (engine "
                             f"{cfg.engine}) runs on the CPU.")
    if cfg.distributed.backend not in ("gloo", "nccl"):
        raise UsageError(f"distributed.backend={cfg.distributed.backend}: use gloo (CPU) or "
                         "nccl (GPUs).")
    if cfg.mlflow.enabled:
        from tdx import tracking
        tracking.check(cfg)


def _kind(v: Any) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, DictConfig | dict):
        return "mapping"
    if isinstance(v, ListConfig | list):
        return "list"
    return "any"


def check_types(base: DictConfig, cfg: DictConfig, overrides: list[Any]) -> None:
    """A value overridden with a different kind (number/bool/mapping/list) than the
    default it replaces is a mistake (e.g. `trainer.max_update=abc`)."""
    for o in overrides:
        if o.is_sweep_override() or "/" in o.key_or_group:
            continue
        key = o.key_or_group
        old = OmegaConf.select(base, key, default=None, throw_on_missing=False)
        new = OmegaConf.select(cfg, key, default=None, throw_on_missing=False)
        if old is None or new is None or _kind(old) == "any" or key in group_options_all():
            continue
        if _kind(old) != _kind(new):
            default = OmegaConf.to_container(old) if OmegaConf.is_config(old) else old
            raise UsageError(
                f"Wrong type for '{key}': got {new!r} ({type(new).__name__}), expected a "
                f"{_kind(old)} like the default {default!r}.")


def group_options_all() -> set[str]:
    return {p.name for d in conf_dirs() for p in d.iterdir() if p.is_dir()}


def data_dir(cfg: DictConfig) -> Path:
    return Path(cfg.paths.data_dir).expanduser()


def required_files(cfg: DictConfig) -> list[str]:
    """The data files a config reads, relative to the data dir: its data section's
    `meta.files`, and those its engine names (a recipe's `data_files(cfg)`)."""
    meta = list(OmegaConf.select(cfg, "data.meta.files", default=None) or [])
    engine = engines.get(cfg.engine)
    more = engine.data_files(cfg) if hasattr(engine, "data_files") else []
    return list(dict.fromkeys([*meta, *more]))


def file_status(root: Path, rel: str, optional: bool = False) -> str:
    """present (and readable), MISSING, optional (missing, user-supplied), or BROKEN:
    what is wrong with it."""
    if not (root / rel).exists():
        return "optional" if optional else "MISSING"
    problem = probe(root / rel)
    return "present" if problem is None else f"BROKEN: {problem}"


def check_data(cfg: DictConfig) -> None:
    """Every data file the config reads is there and reads (a UsageError naming the
    missing or broken ones and where they were looked for)."""
    root = data_dir(cfg)
    status = {f: file_status(root, f) for f in required_files(cfg)}
    missing = [f for f, st in status.items() if st == "MISSING"]
    broken = [st.removeprefix("BROKEN: ") for st in status.values() if st.startswith("BROKEN")]
    if broken:
        raise UsageError(" ".join(broken))
    if missing:
        env = os.environ.get("TDX_DATA_DIR")
        raise UsageError(
            f"Missing data file{'s' if len(missing) > 1 else ''} for '{cfg.name}': "
            f"{', '.join(missing)} (searched data dir {root.resolve()}; "
            f"TDX_DATA_DIR is {'set to ' + env if env else 'not set'}). Put the files there "
            "or point TDX_DATA_DIR (or paths.data_dir=...) at the folder that holds them; "
            "`tdx data check` lists what every experiment needs.")


def data_status(experiment: str | None = None, overrides: list[str] | None = None
                ) -> tuple[Path, list[tuple[str, str, str]]]:
    """`tdx data check`: the data dir, and (experiment or data option, file, status) rows
    for one experiment or for every experiment and data option; a status is
    `file_status`'s, or `none` (the data is generated: no file). Every file listed is
    opened and read."""
    if experiment:
        cfgs = {experiment: check(experiment, overrides or [])}
    else:  # only the data sections matter here: compose, without the full check
        cfgs = {name: compose(name) for name in experiments()}
        cfgs |= {f"data={opt}": compose(next(iter(experiments())), [f"data={opt}"])
                 for opt in data_options()}
    root = data_dir(next(iter(cfgs.values())))
    rows, seen = [], {}  # each file is read once
    for name, cfg in cfgs.items():
        optional = bool(OmegaConf.select(cfg, "data.meta.user_supplied", default=False))
        files = required_files(cfg)
        rows += [(name, "", "none")] if not files else []
        for f in files:
            seen[f, optional] = seen.get((f, optional)) or file_status(root, f, optional)
            rows.append((name, f, seen[f, optional]))
    return root, rows
