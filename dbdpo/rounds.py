"""One round of the method in one place: load the round's model, sample it, score the
samples, build the preferences, train DPO on them (DreamBoothDPO, Ayupov et al. 2025, Sec. 3:
generate -> score -> pair -> DPO, the start model as reference).

The DVC stages wrap these functions in IO and provenance; the benchmarks (bench/claims.py,
bench/dpo_transfer.py) call the very same functions in-process, so what a benchmark measures
is what the pipeline runs (tests/test_rounds.py checks that neither grows a copy).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from dbdpo.config import (
    ConceptConfig,
    DpoConfig,
    FilterConfig,
    ModelConfig,
    PairConfig,
    SamplingConfig,
)
from dbdpo.preferences import Preferences, build_preferences

if TYPE_CHECKING:
    from dbdpo.backbones import Backbone
    from dbdpo.checkpoints import Checkpointing
    from dbdpo.lora import LoraState
    from dbdpo.scoring import Scorer
    from dbdpo.training import Preview, StepCallback

# The model stack (torch, diffusers) is imported in the steps that use it, not here: the pair
# step needs none of it, and a `dbdpo pair` process then starts in a fraction of a second
# instead of the model stack's seconds of imports (tests/test_rounds.py checks it).

# What a round's scores table holds beside the score columns (scores.parquet; pair reads it).
SCORED_SAMPLE_COLUMNS = ["image_id", "prompt_id", "prompt", "path"]


def load_round_model(model: ModelConfig, round_0: Path, lora: LoraState | None = None,
                     precision: str = "fp32") -> Backbone:
    """A round's model: the base every round's LoRA applies to (the params' model, or round_0
    itself after a full DreamBooth) with the round's one LoRA merged (`lora`: round_lora of
    models/round_r, read once by the caller, which may need it again, as dpo does). `lora`
    None: the base alone, for a caller that merges each round's LoRA in turn (evaluate)."""
    from dbdpo.backbones import load_backbone, round_base

    return load_backbone(round_base(model, round_0), lora=lora, precision=precision)


def sample_round(backbone: Backbone, templates: list[str], prompts: list[str], images_per_prompt: int,
                 seed: int, sampling: SamplingConfig, image_dir: Path, table: Path,
                 made_from: dict[str, str] | None = None, desc: str = "generate") -> pd.DataFrame:
    """K seeded images for each prompt (`prompts[i]` is `templates[i]` rendered), written to
    `image_dir` with their manifest `table` (dbdpo.sampling.SAMPLE_COLUMNS), which is returned.
    Under a launcher every process samples its share and gets every image; the caller decides
    which process writes, so on the others pass image_dir=None."""
    from dbdpo.sampling import generate, plan_samples, write_samples

    requests = plan_samples(templates, prompts, images_per_prompt, seed)
    images = generate(backbone.pipe, requests, steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                      batch_size=sampling.batch_size, resolution=backbone.resolution,
                      scheduler=sampling.scheduler, desc=desc)
    if image_dir is None:
        return pd.DataFrame()
    return write_samples(requests, images, image_dir, table, made_from=made_from)


def concept_prompts(templates: list[str], concept: ConceptConfig) -> list[str]:
    """The templates as the model is prompted with them ("a sks toy in the snow")."""
    from dbdpo.data import fill_prompt

    return [fill_prompt(t, concept) for t in templates]


def score_round(samples: pd.DataFrame, scorers: list[Scorer], batch_size: int,
                desc: str = "score") -> pd.DataFrame:
    """One row per sample: SCORED_SAMPLE_COLUMNS and one column per scorer (raw scores; the
    pair step normalizes them per round). TS compares each image with its template's text."""
    from dbdpo.scoring import score_images

    scores = score_images(samples["path"].to_list(), samples["template"].to_list(), scorers, batch_size, desc=desc)
    return pd.concat([samples[SCORED_SAMPLE_COLUMNS], scores], axis=1)


def pair_round(scores: pd.DataFrame, pair: PairConfig, f: FilterConfig, rewards: dict[str, float]) -> Preferences:
    """The round's preferences: filtered pairs or ranked lists (dbdpo.preferences)."""
    return build_preferences(scores, pair, f, rewards)


def dpo_round(backbone: Backbone, start: LoraState, prefs: Preferences, cfg: DpoConfig,
              on_step: StepCallback | None = None, checkpointing: Checkpointing | None = None,
              preview: Preview | None = None) -> tuple[LoraState, list[dict]]:
    """DPO on `backbone`, the round's start model with `start` (its LoRA) merged, so that the
    reference is exactly that model. Returns the round's model as one LoRA relative to the
    base (`start` and the DPO LoRA stacked: dbdpo.lora) and the per-step log rows; `preview`
    samples the policy as it trains (dbdpo.training.Preview)."""
    from dbdpo.dpo import train_on_preferences
    from dbdpo.lora import stack

    state, rows = train_on_preferences(backbone, prefs, cfg, on_step, checkpointing, preview)
    return stack(start, state), rows
