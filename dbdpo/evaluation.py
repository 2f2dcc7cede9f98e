"""Held-out evaluation of every round's model: per-round metrics, Pareto front, sample grids."""

from __future__ import annotations

import math
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from dbdpo.artifacts import atomic_file
from dbdpo.config import ConceptConfig, EvaluateConfig
from dbdpo.data import fill_prompt

if TYPE_CHECKING:
    from dbdpo.backbones import Backbone
    from dbdpo.lora import LoraState
    from dbdpo.scoring import Scorer


@dataclass(frozen=True)
class RoundModel:
    name: str  # round_0, round_1, ...
    lora: LoraState  # relative to the base backbone (dbdpo.backbones.round_base); {} for the base itself


@dataclass(frozen=True)
class RoundSamples:
    name: str
    images: list[Image.Image]  # in plan order: prompt-major, M seeds per prompt
    prompts: list[str]  # each image's prompt, in the same order
    scores: pd.DataFrame  # one row per image: prompt_id, seed, and one column per score


def sample_and_score(backbone: Backbone, rounds: list[RoundModel], templates: list[str],
                     concept: ConceptConfig, cfg: EvaluateConfig, scorers: list[Scorer],
                     image_dir: Path | None, score_batch_size: int) -> list[RoundSamples]:
    """Same prompts and seeds for every round, so differences come from the model alone.
    Each image is written to image_dir/<round>/ (nowhere with None: a process that only helps,
    dbdpo.distributed) and scored as sampled (PNG is lossless: the
    file holds the very pixels scored)."""
    # the model stack loads here, not at import: `dbdpo show` reads the rounds' table without it
    from dbdpo.lora import merged_pipeline
    from dbdpo.sampling import generate, plan_samples
    from dbdpo.scoring import score_loaded

    prompts = [fill_prompt(t, concept) for t in templates]
    plan = plan_samples(templates, prompts, cfg.images_per_prompt, cfg.seed)
    results = []
    for model in rounds:
        with merged_pipeline(backbone.pipe, model.lora):
            images = generate(backbone.pipe, plan, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                              batch_size=cfg.batch_size, resolution=backbone.resolution, scheduler=cfg.scheduler,
                              desc=f"evaluate {model.name}")
        paths = []
        for request, image in zip(plan, images):
            path = Path(image_dir or ".") / model.name / f"{request.image_id}.png"
            if image_dir is not None:
                path.parent.mkdir(parents=True, exist_ok=True)
                image.save(path)
            paths.append(str(path))
        scores = score_loaded(images, paths, [r.template for r in plan], scorers, score_batch_size,
                              desc=f"score {model.name}")
        scores.insert(0, "seed", [r.seed for r in plan])
        scores.insert(0, "prompt_id", [r.prompt_id for r in plan])
        scores.insert(0, "round", model.name)
        results.append(RoundSamples(model.name, images, [r.prompt for r in plan], scores))
    return results


def round_metrics(samples: list[RoundSamples]) -> dict[str, dict[str, float | int]]:
    """{round: {score: mean, score_std: std over images (ddof 1), ..., images: count}} over all
    of a round's evaluation images, so a difference can be judged against its noise (the
    standard error of a mean is std / sqrt(images))."""
    out = {}
    for s in samples:
        numeric = s.scores.drop(columns=["round", "prompt_id", "seed"])
        metrics: dict[str, float | int] = {k: float(v) for k, v in numeric.mean().items()}
        metrics |= {f"{k}_std": float(v) for k, v in numeric.std(ddof=1).items()}
        out[s.name] = metrics | {"images": len(numeric)}
    return out


def paired_gains(scores: pd.DataFrame, reference: pd.DataFrame) -> dict[str, float]:
    """Mean IS, TS and S_0.5 = (IS + TS) / 2 of `scores` minus the reference's, in the
    reference's std per image, and each one's standard error (`IS_se`, ...). Both frames hold
    the same prompts and seeds row by row, so the differences are paired: the error is the
    per-image differences' std over sqrt(images), the noise of the finite set of images (not of
    the training run's seed)."""
    if len(scores) != len(reference) or (scores["seed"].to_numpy() != reference["seed"].to_numpy()).any():
        raise ValueError("paired_gains: the two frames must hold the same seeds, row by row")
    z = {k: (scores[k].to_numpy() - reference[k].to_numpy()) / reference[k].std() for k in ("IS", "TS")}
    z["S_0.5"] = (z["IS"] + z["TS"]) / 2
    out = {}
    for name, difference in z.items():
        out[name] = float(difference.mean())
        out[f"{name}_se"] = float(difference.std(ddof=1) / math.sqrt(len(difference)))
    return out


GAINS = ("IS", "TS", "S_0.5")


def rounds_table(samples: list[RoundSamples]) -> dict[str, dict[str, float | int]]:
    """eval/rounds.json: each round's round_metrics and, after round_0, its paired_gains over
    round_0 as `<score>_gain` and `<score>_gain_se` (in round_0's stds per image)."""
    metrics = round_metrics(samples)
    for s in samples[1:]:
        gains = paired_gains(s.scores, samples[0].scores)
        for k in GAINS:
            metrics[s.name] |= {f"{k}_gain": gains[k], f"{k}_gain_se": gains[f"{k}_se"]}
    return metrics


HEADLINE = ("IS", "TS", "IS_gain", "TS_gain", "S_0.5_gain", "S_0.5_gain_se", "beyond_frontier")


def headline(table: dict[str, dict[str, float | int]]) -> dict[str, float]:
    """metrics.json: the last round's mean IS and TS and its gains over round_0 (rounds_table):
    the few columns `dvc exp show` leads with. The rest of the table is eval/rounds.json."""
    last = table[list(table)[-1]]
    return {k: last[k] for k in HEADLINE if k in last}


def standard_error(row: dict, score: str) -> float:
    """The standard error of a round's mean `score` (rounds_table row): std / sqrt(images)."""
    return row[f"{score}_std"] / math.sqrt(row["images"])


def round_summary(name: str, row: dict) -> str:
    """One round of eval/rounds.json on one line (evaluate and `dbdpo show` print it): IS and TS
    with their standard errors (std / sqrt(images)), and the gains over round_0 in its stds."""
    se = {k: standard_error(row, k) for k in ("IS", "TS")}
    line = f"{name:<9} IS {row['IS']:.4f} ± {se['IS']:.4f}   TS {row['TS']:.4f} ± {se['TS']:.4f}"
    if "S_0.5_gain" in row:
        line += "   gain (round_0 stds): " + "  ".join(
            f"{k} {row[f'{k}_gain']:+.3f} ± {row[f'{k}_gain_se']:.3f}" for k in GAINS)
    if "beyond_frontier" in row:
        line += f"   beyond frontier {row['beyond_frontier']:+.3f}"
    return f"{line}   ({row['images']} images)"


def pareto_front(is_values: np.ndarray, ts_values: np.ndarray) -> np.ndarray:
    """Boolean mask of points no other point beats on both IS and TS (both maximized)."""
    is_values, ts_values = np.asarray(is_values), np.asarray(ts_values)
    front = np.ones(len(is_values), dtype=bool)
    for i in range(len(is_values)):
        dominated = (is_values >= is_values[i]) & (ts_values >= ts_values[i]) & (
            (is_values > is_values[i]) | (ts_values > ts_values[i]))
        front[i] = not dominated.any()
    return front


GRID_SCALE = 2  # tiny 64 px samples are upscaled (nearest) so a person can see them
LABEL_HEIGHT = 14


CHAR_WIDTH = 6  # pixels per character of PIL's default bitmap font


def grid_row(images: list[Image.Image], labels: list[str], caption: str = "", pad: int = 4) -> Image.Image:
    """Images side by side on a white strip, each with its label (round name) above it, and
    `caption` (the prompt) below them, wrapped to the strip's width."""
    w, h = (side * GRID_SCALE for side in images[0].size)
    width = len(images) * (w + pad) - pad
    lines = textwrap.wrap(caption, max(1, width // CHAR_WIDTH - 1))
    row = Image.new("RGB", (width, h + LABEL_HEIGHT * (1 + len(lines))), (255, 255, 255))
    draw = ImageDraw.Draw(row)
    for i, (img, label) in enumerate(zip(images, labels, strict=True)):
        row.paste(img.resize((w, h), Image.Resampling.NEAREST), (i * (w + pad), LABEL_HEIGHT))
        draw.text((i * (w + pad) + 2, 1), label, fill=(0, 0, 0))
    for k, line in enumerate(lines):
        draw.text((2, h + LABEL_HEIGHT * (k + 1) + 1), line, fill=(0, 0, 0))
    return row


def comparison_grids(samples: list[RoundSamples], num_prompts: int, images_per_prompt: int,
                     concept_photo: Image.Image) -> dict[int, Image.Image]:
    """{prompt_id: row of `concept_photo` (what IS compares with, at the samples' size) then
    that prompt's first-seed image in every round, round 0 first, with the prompt under it}."""
    labels = ["concept", *(s.name for s in samples)]
    photo = concept_photo.convert("RGB").resize(samples[0].images[0].size, Image.Resampling.LANCZOS)
    return {p: grid_row([photo, *(s.images[p * images_per_prompt] for s in samples)], labels,
                        caption=samples[0].prompts[p * images_per_prompt]) for p in range(num_prompts)}


def tradeoff_rows(table: dict[str, dict[str, float | int]]) -> list[dict]:
    """eval/tradeoff.csv: per round its mean IS and TS, their standard errors and whether it is
    on the Pareto front of the rounds (DVC's trade-off plot draws the error bars from them)."""
    names = list(table)
    front = pareto_front([table[n]["IS"] for n in names], [table[n]["TS"] for n in names])
    return [{"round": n, "IS": table[n]["IS"], "TS": table[n]["TS"], "IS_se": standard_error(table[n], "IS"),
             "TS_se": standard_error(table[n], "TS"), "pareto": bool(f)} for n, f in zip(names, front)]


def tradeoff_figure(table: dict[str, dict[str, float | int]], path: Path, frontier: dict[str, dict] | None = None) -> None:
    """IS vs TS, one labelled point per round of `table` (rounds_table) with its standard errors
    (std / sqrt(images)) as error bars, and the Pareto front drawn through its points (PNG).
    `frontier` (dbdpo.frontier.frontier_report): the baseline points, and the hull through
    those on it, extended left and down (what the baseline knobs reach lies under it)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(table)
    is_values, ts_values = [table[n]["IS"] for n in names], [table[n]["TS"] for n in names]
    se = {k: [standard_error(table[n], k) for n in names] for k in ("IS", "TS")}
    front = pareto_front(is_values, ts_values)
    fig, ax = plt.subplots(figsize=(5, 4), dpi=100)
    ax.plot(ts_values, is_values, color="0.7", zorder=1)  # the path the rounds took
    ax.errorbar(ts_values, is_values, xerr=se["TS"], yerr=se["IS"], fmt="none", ecolor="0.5", elinewidth=1,
                capsize=2, zorder=1)
    ax.scatter(ts_values, is_values, c=["tab:red" if f else "tab:blue" for f in front], zorder=2)
    order = sorted((t, i) for t, i, f in zip(ts_values, is_values, front) if f)
    ax.step([t for t, _ in order], [i for _, i in order], where="post", color="tab:red", linestyle="--",
            label="Pareto front of the rounds")
    for name, t, i in zip(names, ts_values, is_values):
        ax.annotate(name, (t, i), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if frontier:
        baselines = {n: p for n, p in frontier.items() if n != "round_0"}
        ax.scatter([p["TS"] for p in baselines.values()], [p["IS"] for p in baselines.values()], marker="x",
                   color="0.4", zorder=2)
        for name, p in baselines.items():
            ax.annotate(name, (p["TS"], p["IS"]), textcoords="offset points", xytext=(4, -10), fontsize=7, color="0.4")
        hull = sorted((p["TS"], p["IS"]) for p in frontier.values() if p["on_hull"])
        (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
        ax.plot([x0, *(t for t, _ in hull), hull[-1][0]], [hull[0][1], *(i for _, i in hull), y0], color="0.2",
                linestyle=":", label="baseline frontier (LoRA and guidance scales, fewer steps)")
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    ax.set_xlabel("TS (text similarity)")
    ax.set_ylabel("IS (image similarity)")
    ax.set_title("IS-TS trade-off per round (bars: ± standard error)", fontsize=10)
    ax.legend(loc="best", fontsize=8)  # where it covers no point or label
    fig.tight_layout()
    with atomic_file(path) as tmp:
        fig.savefig(tmp, format="png")
    plt.close(fig)
