"""Loading params.yaml: parse, build the typed Config (dbdpo.config), validate (dbdpo.validation).

Every error names the key (e.g. ``filter.angle``) and the value that would be accepted, and is
raised before any model is built, so a bad sweep value costs a second, not a training run.
"""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import yaml

from dbdpo.config import Config, ConfigError, build_group, build_round
from dbdpo.validation import validate


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from the parsed params.yaml mapping."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: expected a mapping of stage groups")
    top = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(top))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; the groups are: {', '.join(top)}")
    hints = typing.get_type_hints(Config)
    groups = {}
    missing = [name for name in top if name not in raw]
    if missing:
        raise ConfigError(f"missing group {missing[0]}: params.yaml must set every group ({', '.join(top)}); "
                          "copy it from the repository's params.yaml")
    for name in top:
        if name != "rounds":
            groups[name] = build_group(hints[name], raw[name], name, complete=True)
    rounds = raw["rounds"]
    if not isinstance(rounds, dict) or not rounds:
        raise ConfigError("rounds: expected a non-empty mapping like {round_1: {start: round_0}}")
    groups["rounds"] = {str(k): build_round(v, f"rounds.{k}") for k, v in rounds.items()}
    config = Config(**groups)
    validate(config)
    return config


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


class UndeclaredRead(RuntimeError):
    """A stage read a params key its declared reads (and so dvc.yaml) do not list: DVC would
    not rerun it when that key changes. A bug in the stage, not in the user's params."""


class ParamView:
    """A read-only view of a Config that lets a stage read only the keys it declares.

    `reads` are params.yaml keys or groups ("model", "concept.dir"), as the stage lists them
    in dvc.yaml. Reading a group gives a view of it; reading a key outside `reads` raises
    UndeclaredRead, so dvc.yaml cannot silently miss a key a stage uses.
    """

    def __init__(self, target, reads: tuple[str, ...], who: str, prefix: str = ""):
        object.__setattr__(self, "_view", (target, tuple(reads), who, prefix))

    def __getattr__(self, name: str):
        target, reads, who, prefix = object.__getattribute__(self, "_view")
        names = {f.name for f in dataclasses.fields(target)}
        if name not in names:  # methods too: a stage reads keys, the library derives the rest
            raise AttributeError(f"params {prefix.rstrip('.') or 'file'} has no key {name!r}")
        key = prefix + name.rstrip("_")  # lambda_ is `lambda` in params.yaml
        value = getattr(target, name)
        if dataclasses.is_dataclass(value):
            return ParamView(value, reads, who, key + ".")
        if not any(key == r or key.startswith(r + ".") for r in reads):
            raise UndeclaredRead(f"{who} reads params key {key}, which its declared reads (dvc.yaml's params "
                                 f"for it: {', '.join(reads)}) do not list")
        return value

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"params are read-only; cannot set {name}")

    def __repr__(self) -> str:
        target, reads, who, _ = object.__getattribute__(self, "_view")
        return f"ParamView({type(target).__name__} for {who})"
