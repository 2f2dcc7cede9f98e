"""GPU presets as overlays: a preset file holds only the params.yaml keys whose value it changes
(presets/sdxl.yaml: the SDXL model, its rates, batch sizes and precisions), so the defaults live
in one file, params.yaml, and a preset can never carry a stale copy of one.

`apply_preset` writes the overlay into params.yaml's text line by line: every other line, and
the comments that explain each key, stay as they are; a key the preset sets takes its value and,
where the preset comments it, the preset's comment (why a GPU wants that value).
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from dbdpo.config import Config
from dbdpo.errors import ConfigError
from dbdpo.params import config_from_dict, load_config, parse_params_text

GROUP = re.compile(r"^([A-Za-z_]\w*):\s*(#.*)?$")
# a group's scalar key: two spaces, the key, its YAML value (quoted, or up to a comment), a comment
KEY = re.compile(r"""^  ([A-Za-z_]\w*):[ \t]*("[^"]*"|'[^']*'|[^#\s](?:[^#]*[^#\s])?)?([ \t]+#.*)?$""")


def overlay_lines(preset: str, name: str) -> dict[tuple[str, str], tuple[str, str | None]]:
    """{(group, key): (value as written, its comment or None)} of a preset's text. Only scalar
    keys of the params' groups: a nested value (score.rewards, rounds) is an error naming it."""
    out, group = {}, None
    for number, line in enumerate(preset.splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if m := GROUP.match(line):
            group = m[1]
            continue
        m = KEY.match(line)
        if group is None or m is None or m[2] is None:
            raise ConfigError(f"{name}:{number}: {line.strip()!r}: a preset sets scalar keys of params.yaml's "
                              "groups (`group:` then `  key: value`), nothing nested")
        out[(group, m[1])] = (m[2], m[3].strip() if m[3] else None)
    return out


def apply_preset(params: str, preset: str, name: str = "preset") -> str:
    """params.yaml's text `params` with every key `preset` sets replaced (apply_preset's rules
    above). A preset key params.yaml lacks, or one set to the value params.yaml already has,
    is an error naming it: an overlay holds exactly what differs."""
    values = overlay_lines(preset, name)
    defaults = yaml.safe_load(params)
    lines, group, done = params.splitlines(keepends=True), None, set()
    for i, line in enumerate(lines):
        if m := GROUP.match(line.rstrip("\n")):
            group = m[1]
            continue
        m = KEY.match(line.rstrip("\n"))
        if m is None or (group, m[1]) not in values:
            continue
        value, comment = values[(group, m[1])]
        if yaml.safe_load(value) == defaults[group][m[1]]:
            raise ConfigError(f"{name}: {group}.{m[1]}: {value} is params.yaml's value already; remove it from the "
                              "preset")
        comment = comment or (m[3].strip() if m[3] else None)
        column = line.index("#", m.start(3)) if m[3] else 0  # where params.yaml's comment starts
        body = f"  {m[1]}: {value}"
        lines[i] = (body.ljust(column - 1) + " " + comment if comment else body) + "\n"
        done.add((group, m[1]))
    unknown = sorted(set(values) - done)
    if unknown:
        group, key = unknown[0]
        raise ConfigError(f"{name}: {group}.{key} is not a key of params.yaml; check its spelling")
    return "".join(lines)


def load_with_preset(params: str | Path, preset: str | Path | None) -> Config:
    """The Config of params.yaml with `preset` (a file) applied; params alone without one."""
    if preset is None:
        return load_config(params)
    preset = Path(preset)
    if not preset.is_file():
        raise ConfigError(f"{preset}: preset file not found")
    source = f"{params} with {preset}"
    raw = parse_params_text(apply_preset(Path(params).read_text(), preset.read_text(), str(preset)), source)
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{source}: {e}") from None
