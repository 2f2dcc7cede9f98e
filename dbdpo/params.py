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


class _UniqueKeyLoader(yaml.SafeLoader):
    """YAML's safe loader, refusing a key given twice in one mapping (the plain loader keeps the
    last silently; DVC refuses such a file, so a hand run must too)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if key in seen:
                raise ConfigError(f"key {key!r} is given twice in one mapping (line {key_node.start_mark.line + 1}); "
                                  "keep one")
            seen.add(key)
        return super().construct_mapping(node, deep)


def parse_params(path: Path) -> dict:
    """params.yaml as a mapping; a syntax error or a duplicate key names the file and line."""
    return parse_params_text(path.read_text(), path)


def parse_params_text(text: str, source: str | Path) -> dict:
    """params text as a mapping; a syntax error or a duplicate key names `source` and the line."""
    try:
        return yaml.load(text, Loader=_UniqueKeyLoader) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        hint = "; indent with spaces, not tabs" if "\\t" in problem or "\t" in problem else ""
        raise ConfigError(f"{source}: not valid YAML{where}: {problem}{hint}") from None
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    raw = parse_params(path)
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None

