"""Loading params.yaml: parse, build the typed Config (dbdpo.config), validate (dbdpo.validation).

Every error names the key (e.g. ``filter.angle``) and the value that would be accepted, and is
raised before any model is built, so a bad sweep value costs a second, not a training run.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from pathlib import Path
from typing import Literal

import yaml

from dbdpo.config import ROUND_GROUPS, ConceptEntry, Config, RoundConfig, yaml_name
from dbdpo.errors import ConfigError
from dbdpo.validation import validate

# --- building from a mapping -----------------------------------------------------------------------------

# Choice values that were renamed: (key, old value) -> the value to write now.
RENAMED_CHOICES = {("model.backbone", "tiny"): "world"}  # `tiny` now names only the random stand-ins


def _coerce(value, annotation, key: str):
    """Check `value` against a field annotation (str, int, float, bool, tuple[str, ...],
    tuple[float, ...], X | None, str | tuple[str, ...]: the first alternative that takes the value)."""
    # `str | None` is a types.UnionType, `Literal[...] | None` a typing.Union
    if isinstance(annotation, types.UnionType) or typing.get_origin(annotation) is typing.Union:
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        arms = [a for a in args if a is not type(None)]
        for arm in arms[:-1]:
            try:
                return _coerce(value, arm, key)
            except ConfigError:
                continue
        annotation = arms[-1]
    if typing.get_origin(annotation) is Literal:
        choices = typing.get_args(annotation)
        if (key, value) in RENAMED_CHOICES:
            raise ConfigError(f"{key}={value!r} was renamed: write {key.split('.')[-1]}: {RENAMED_CHOICES[key, value]}")
        if value not in choices or isinstance(value, bool):
            raise ConfigError(f"{key}={value!r} is invalid: expected one of {' | '.join(map(str, choices))}")
        return value
    if typing.get_args(annotation) == (float, ...):  # a YAML list of numbers
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{key}: expected a list of numbers, got {value!r}")
        return tuple(_coerce(v, float, f"{key}[{i}]") for i, v in enumerate(value))
    if typing.get_origin(annotation) is tuple:  # a YAML list of names
        if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
            raise ConfigError(f"{key}: expected a name or a list of names, got {value!r}")
        return tuple(value)
    if typing.get_origin(annotation) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping of names to numbers, got {value!r}")
        return {k: _coerce(v, float, f"{key}.{k}") for k, v in value.items()}
    if annotation is float and not isinstance(value, bool) and isinstance(value, (int, str)):
        # YAML 1.1 reads `1e-4` (no dot) as a string: accept any spelling float() accepts.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def build_group(cls, data, prefix: str, complete: bool = False):
    """cls from a params mapping; `complete`: every key must be given (no silent code default)."""
    return cls(**typed_fields(cls, data, prefix, complete))


def typed_fields(cls, data, prefix: str, complete: bool = False) -> dict[str, object]:
    """The params mapping `data` of group `cls` as {field name: value}, every key known and
    every value checked against its field's type."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {yaml_name(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}; the keys of {prefix} are: {', '.join(known)}"
        )
    missing = [name for name in known if name not in data]
    if complete and missing:
        raise ConfigError(f"missing key {prefix}.{missing[0]}: every key of every group must be set "
                          "(copy it from the repository's params.yaml)")
    return {f.name: _coerce(data[name], hints[f.name], f"{prefix}.{name}") for name, f in known.items()
            if name in data}


def build_round(data, prefix: str) -> RoundConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping like {{start: round_0}}, got {data!r}")
    unknown = sorted(set(data) - {"start", *ROUND_GROUPS})
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{unknown[0]}; a round has start and may override "
                          f"{', '.join(ROUND_GROUPS)}")
    if not isinstance(data.get("start"), str):
        raise ConfigError(f"{prefix}.start: expected the previous round's name (round_0 for the first)")
    hints = typing.get_type_hints(Config)
    overrides = {}
    for group in ROUND_GROUPS:
        if group in data:
            overrides[group] = typed_fields(hints[group], data[group] or {}, f"{prefix}.{group}")
    return RoundConfig(start=data["start"], overrides=overrides)


def build_concepts(data) -> dict[str, ConceptEntry]:
    """`concepts`: name -> {dir, token, class_noun}, every key given; {} or null: none."""
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("concepts: expected a mapping like {dog: {dir: data/dog, token: sks, class_noun: dog}}, "
                          f"or {{}} for the one concept of `concept`; got {data!r}")
    return {str(name): build_group(ConceptEntry, entry, f"concepts.{name}", complete=True)
            for name, entry in data.items()}


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
    # concepts came after the other groups: a project written before it runs its one concept
    missing = [name for name in top if name not in raw and name != "concepts"]
    if missing:
        raise ConfigError(f"missing group {missing[0]}: params.yaml must set every group ({', '.join(top)}); "
                          "copy it from the repository's params.yaml")
    for name in top:
        if name not in ("rounds", "concepts"):
            groups[name] = build_group(hints[name], raw[name], name, complete=True)
    groups["concepts"] = build_concepts(raw.get("concepts"))
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

