"""A benchmark's params: the params file as params.yaml is read, with a variant's or the
command line's overrides set, validated before anything trains (bench/claims.py,
bench/dpo_transfer.py, bench/dreambooth_variants.py).

A bad file, key or value exits naming it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path

import yaml

from dbdpo.config import Config
from dbdpo.errors import ConfigError
from dbdpo.params import config_from_dict, parse_params


def read_params(path: str | Path) -> dict:
    """The params file as parsed, by params.yaml's own parser (a duplicate key is refused); a
    missing or broken file exits naming it."""
    try:
        return parse_params(Path(path))
    except (OSError, ConfigError) as e:
        raise SystemExit(f"--params {path}: {e}") from None


def variant_params(params: dict, spec: str, overrides: dict[str, tuple[str, str, Callable[[str], object]]],
                   passed: tuple[str, ...] = ()) -> tuple[dict, dict[str, str]]:
    """A benchmark variant: `params` (params.yaml as parsed, left as it is) with the variant's
    space-separated key=value tokens set through `overrides` (key -> (group, params key, parse));
    "default" sets none. Tokens whose key is in `passed` come back as {key: value} for the
    caller. A bad key or value exits naming it, before anything trains."""
    raw, extra = copy.deepcopy(params), {}
    for token in spec.split():
        if token == "default":
            continue
        key, _, value = token.partition("=")
        if key in passed:
            extra[key] = value
            continue
        if key not in overrides:
            raise SystemExit(f"variant {spec!r}: unknown key {key!r}; expected one of "
                             f"{', '.join([*overrides, *passed])}")
        group, name, parse = overrides[key]
        try:
            raw[group][name] = parse(value)
        except ValueError:
            raise SystemExit(f"variant {spec!r}: {key}={value!r} is not a {parse.__name__}") from None
    return raw, extra


def checked_config(raw: dict, what: str) -> Config:
    """`raw` (params as parsed, changed by `what`) built and validated as params.yaml is; a bad
    value exits naming `what` and the key."""
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise SystemExit(f"{what}: {e}") from None


def params_with(path: str, overrides: list[str]) -> Config:
    """The params file with each KEY=VALUE of `overrides` set (VALUE read as YAML, as `dvc exp
    run -S` reads it), validated as params.yaml is; a bad key or value exits naming it."""
    raw = read_params(path)
    for override in overrides:
        key, sep, value = override.partition("=")
        *groups, name = key.split(".")
        node = raw
        for group in groups:
            node = node.get(group) if isinstance(node, dict) else None
        if not sep or not groups or not isinstance(node, dict) or name not in node:
            raise SystemExit(f"--set {override!r}: expected KEY=VALUE with KEY a key of {path} (e.g. dpo.beta=5000)")
        node[name] = yaml.safe_load(value)
    return checked_config(raw, f"--set {' '.join(overrides)}")
