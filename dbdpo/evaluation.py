"""Held-out evaluation of every round's model: per-round means, Pareto front, sample grids."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from dbdpo.backbones import Backbone
from dbdpo.config import ConceptConfig, EvaluateConfig
from dbdpo.data import render
from dbdpo.lora import LoraState, merged
from dbdpo.sampling import generate, plan_samples
from dbdpo.scoring import Scorer, score_images


@dataclass(frozen=True)
class RoundModel:
    name: str  # round_0, round_1, ...
    lora: LoraState  # relative to the base backbone


@dataclass(frozen=True)
class RoundSamples:
    name: str
    images: list[Image.Image]  # in plan order: prompt-major, M seeds per prompt
    scores: pd.DataFrame  # one row per image: prompt_id, seed, and one column per score


def sample_and_score(backbone: Backbone, rounds: list[RoundModel], templates: list[str],
                     concept: ConceptConfig, cfg: EvaluateConfig, scorers: list[Scorer],
                     image_dir: Path) -> list[RoundSamples]:
    """Same prompts and seeds for every round, so differences come from the model alone."""
    prompts = [render(t, concept) for t in templates]
    plan = plan_samples(templates, prompts, cfg.images_per_prompt, cfg.seed)
    results = []
    for model in rounds:
        with merged(backbone.pipe.unet, model.lora):
            images = generate(backbone.pipe, plan, steps=cfg.steps, guidance_scale=cfg.guidance_scale,
                              batch_size=cfg.batch_size, resolution=backbone.resolution,
                              desc=f"evaluate {model.name}")
        paths = []
        for request, image in zip(plan, images):
            path = image_dir / model.name / f"{request.image_id}.png"
            path.parent.mkdir(parents=True, exist_ok=True)
            image.save(path)
            paths.append(str(path))
        scores = score_images(paths, [r.template for r in plan], scorers, batch_size=64,
                              desc=f"score {model.name}")
        scores.insert(0, "seed", [r.seed for r in plan])
        scores.insert(0, "prompt_id", [r.prompt_id for r in plan])
        scores.insert(0, "round", model.name)
        results.append(RoundSamples(model.name, images, scores))
    return results


def round_means(samples: list[RoundSamples]) -> dict[str, dict[str, float]]:
    """{round: {score: mean over all eval images}}."""
    out = {}
    for s in samples:
        numeric = s.scores.drop(columns=["round", "prompt_id", "seed"])
        out[s.name] = {k: float(v) for k, v in numeric.mean().items()}
    return out


def pareto_front(is_values: np.ndarray, ts_values: np.ndarray) -> np.ndarray:
    """Boolean mask of points no other point beats on both IS and TS (both maximized)."""
    is_values, ts_values = np.asarray(is_values), np.asarray(ts_values)
    front = np.ones(len(is_values), dtype=bool)
    for i in range(len(is_values)):
        dominated = (is_values >= is_values[i]) & (ts_values >= ts_values[i]) & (
            (is_values > is_values[i]) | (ts_values > ts_values[i]))
        front[i] = not dominated.any()
    return front


def grid_row(images: list[Image.Image], pad: int = 2) -> Image.Image:
    """Images side by side on a white strip (one column per round)."""
    w, h = images[0].size
    row = Image.new("RGB", (len(images) * (w + pad) - pad, h), (255, 255, 255))
    for i, img in enumerate(images):
        row.paste(img, (i * (w + pad), 0))
    return row


def comparison_grids(samples: list[RoundSamples], num_prompts: int, images_per_prompt: int) -> dict[int, Image.Image]:
    """{prompt_id: row of that prompt's first-seed image in every round, round 0 first}."""
    grids = {}
    for prompt_id in range(num_prompts):
        index = prompt_id * images_per_prompt
        grids[prompt_id] = grid_row([s.images[index] for s in samples])
    return grids
