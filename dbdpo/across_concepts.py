"""Figures over a set of concepts: each figure's mean across the concepts and its standard error
across them, as the papers report a method over their subjects (the DreamBooth dataset's 30).

The standard error here is the spread of the concepts' own figures (their sample std over
sqrt(concepts)), not the images' spread within one concept: it says how far another draw of
concepts would move the mean. One concept has no such spread, so its standard error is None.
"""

from __future__ import annotations

import json
import logging
import math
from pathlib import Path

from dbdpo.errors import ConfigError, UserError
from dbdpo.params import parse_params

log = logging.getLogger(__name__)

METRICS_FILE = "metrics.json"  # a project's headline, which its evaluate stage writes
ROUNDS_FILE = Path("eval") / "rounds.json"  # every round's figures, which its evaluate stage writes
ROUND_FIGURES = ("IS", "TS", "beyond_frontier")  # a round's figures averaged, with its gains (*_gain)
PARAMS_FILE = "params.yaml"
# What may differ between the projects of one comparison: the concept, and the evaluation
# prompts (the DreamBooth paper prompts live subjects and objects with different sets).
PER_CONCEPT_KEYS = ("concept", "evaluate.prompts")


def mean_over_concepts(rows: dict[str, dict[str, float]]) -> dict[str, dict[str, float | None]]:
    """Each figure's mean over the concepts and its standard error across them.

    rows: concept -> {figure: value}, every concept with the same figures.
    Returns figure -> {"mean": float, "se": float, or None for a single concept}.
    """
    if not rows:
        raise ValueError("mean_over_concepts needs at least one concept")
    out = {}
    for key in next(iter(rows.values())):
        values = [row[key] for row in rows.values()]
        n = len(values)
        mean = sum(values) / n
        se = math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1) / n) if n > 1 else None
        out[key] = {"mean": mean, "se": se}
    return out


def format_se(se: float | None) -> str:
    """A standard error across concepts as a table prints it: '0.045', or 'n/a' for one concept."""
    return "n/a" if se is None else f"{se:.3f}"


def format_mean_se(figure: dict[str, float | None], signed: bool = True) -> str:
    """'+0.123 ± 0.045' (or '+0.123 ± n/a' for one concept) of a mean_over_concepts entry;
    `signed`: a gain's sign, which a score (IS, TS) goes without."""
    return f"{figure['mean']:{'+' if signed else ''}.3f} ± {format_se(figure['se'])}"


def _read_figures(path: Path, project: Path) -> dict:
    """A figures file evaluate wrote (metrics.json, eval/rounds.json), refused with its name and
    the fix when it is missing, torn or empty."""
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path} is missing: run `dvc repro` in {project} (its evaluate stage writes it)") from None
    except (OSError, ValueError) as e:
        raise UserError(f"{path} is unreadable ({e}): rerun its evaluate stage (`dvc repro -f evaluate` "
                        f"in {project})") from None
    if not isinstance(data, dict) or not data:
        raise UserError(f"{path} holds no figures: rerun its evaluate stage (`dvc repro -f evaluate` in {project})")
    return data


def _finite(value, path: Path, key: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise UserError(f"{path}: {key} is {value!r}, not a finite number; rerun its evaluate stage")
    return float(value)


def read_headlines(projects: list[Path]) -> dict[str, dict[str, float]]:
    """Each project folder's metrics.json (the last round's IS, TS and gains over round 0, as
    its evaluate stage writes them), keyed by the folder as given.

    Refused with the file named: a missing or unreadable metrics.json, a value that is not a
    finite number, and projects whose headlines name different figures (another pair.lambda
    gives another S_<lambda>_gain: a mean over both would average two quantities)."""
    if len(set(map(str, projects))) != len(projects):
        raise UserError(f"a project folder is given twice: {', '.join(map(str, projects))}")
    rows: dict[str, dict[str, float]] = {}
    for project in projects:
        path = project / METRICS_FILE
        rows[str(project)] = {k: _finite(v, path, k) for k, v in _read_figures(path, project).items()}
    first, *others = rows
    for name in others:
        if rows[name].keys() != rows[first].keys():
            differ = sorted(rows[name].keys() ^ rows[first].keys())
            raise UserError(f"{name}/{METRICS_FILE} and {first}/{METRICS_FILE} do not name the same figures "
                            f"({', '.join(differ)} in one only): compare projects run with the same pair.lambda "
                            f"and evaluate stage")
    return rows


def _flat(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and value:
            out |= _flat(value, f"{prefix}{key}.")
        else:
            out[f"{prefix}{key}"] = value
    return out


def differing_params(projects: list[Path]) -> list[str]:
    """The params.yaml keys, beside the concept and the evaluation prompts, on which the
    projects differ: a mean over them then mixes methods, not only concepts. Projects without
    a readable params.yaml are left out of the comparison."""
    flats = []
    for project in projects:
        try:
            flats.append(_flat(parse_params(project / PARAMS_FILE)))
        except (OSError, ConfigError, AttributeError):
            continue
    keys = set().union(*flats) if flats else set()
    return sorted(k for k in keys if not any(k == p or k.startswith(p + ".") for p in PER_CONCEPT_KEYS)
                  and len({json.dumps(f.get(k), sort_keys=True) for f in flats}) > 1)


def summarize(projects: list[Path]) -> dict:
    """The headline of each project and their mean over the projects (one concept each).

    Returns {"concepts": {folder: headline}, "mean": {figure: {"mean", "se"}}, "count": n}, and
    "rounds" (rounds_over_concepts) when every project has its eval/rounds.json. Logs a
    warning naming the params keys on which the projects differ beyond their concepts.
    A project's own standard errors (the `_se` figures: its images' spread) are kept in its
    row and left out of the mean, whose standard error is the spread across the concepts."""
    rows = read_headlines(projects)
    differ = differing_params(projects)
    if differ:
        log.warning("the projects' params differ beyond the concept, so their mean mixes methods: %s",
                    ", ".join(differ))
    figures = {name: {k: v for k, v in row.items() if not k.endswith("_se")} for name, row in rows.items()}
    result = {"concepts": rows, "mean": mean_over_concepts(figures), "count": len(rows)}
    if all((Path(project) / ROUNDS_FILE).is_file() for project in projects):
        result["rounds"] = rounds_over_concepts(projects)
    return result


def rounds_over_concepts(projects: list[Path]) -> dict[str, dict[str, dict[str, float | None]]]:
    """Every round's figures (each project's eval/rounds.json: IS, TS, the gains over round 0,
    beyond_frontier) averaged over the projects: round -> figure -> {"mean", "se"}, as the
    headline is for the last round. Refused when the projects ran different rounds."""
    tables = {str(project): _read_figures(Path(project) / ROUNDS_FILE, project) for project in projects}
    first, *others = tables
    for name in others:
        if list(tables[name]) != list(tables[first]):
            raise UserError(f"{name}/{ROUNDS_FILE} and {first}/{ROUNDS_FILE} name different rounds "
                            f"({', '.join(tables[name])} against {', '.join(tables[first])}): compare runs of the "
                            "same rounds")
    out = {}
    for round_name in tables[first]:
        figures = [k for k in tables[first][round_name] if k in ROUND_FIGURES or k.endswith("_gain")]
        rows = {name: {k: _finite(table[round_name].get(k), Path(name) / ROUNDS_FILE, f"{round_name}.{k}")
                       for k in figures}
                for name, table in tables.items()}
        out[round_name] = mean_over_concepts(rows)
    return out


def metrics_over_concepts(result: dict) -> dict:
    """summarize()'s result as a metrics file that `dvc exp show` lists: the mean over the
    concepts and its standard error first, figure by figure (se null for one concept), then
    every round's (when summarized), then each concept's headline under its folder's name."""
    def split(figures: dict) -> dict:
        return {"mean": {k: v["mean"] for k, v in figures.items()}, "se": {k: v["se"] for k, v in figures.items()}}

    rounds = {name: split(figures) for name, figures in result.get("rounds", {}).items()}
    return {"count": result["count"], **split(result["mean"]), **({"rounds": rounds} if rounds else {}),
            "concepts": {Path(name).name: row for name, row in result["concepts"].items()}}
