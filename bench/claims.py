"""The papers' claims on the proving ground, measured: one table, no assertion.

Runs the method in-process on the params file (the world's defaults unless --params says
otherwise), with the same seeds for every variant, and reports each model's mean IS, TS and
S_0.5 = (IS + TS) / 2 as gains over round_0 in units of round_0's std (per image), with the
standard error of S_0.5's gain over the images (± se; paired: same prompts and seeds), on two
prompt sets:
  held-out : the evaluation prompts (contexts no training prompt uses), `evaluate` seeds;
  held-in  : round 1's own training prompts, with seeds no round trained on.

  a. DreamBooth works        round_0 vs the base model prompted with the class noun; and on
                             DreamBooth's own prompt with no context ("a photo of sks toy" vs
                             "a photo of a toy"): the concept learned, before a context competes
  b. DPO improves S_0.5      lambda=0.5, angle filter: one round, and every round of params
  c. lambda steers           lambda=0 vs lambda=1 (angle window around each direction)
  d. angle vs threshold      lambda=0.5, the threshold filter keeping as many pairs as the angle
                             filter keeps (an equal budget) vs the angle filter
  e. rounds vs one big round the params' rounds of N prompts vs one round of (rounds x N)
                             prompts from round_0 with as many DPO steps and as large a pair
                             budget (pair.max_total) as all rounds together

    python bench/claims.py [--params params.yaml] [--out claims.json] [--dreambooth-seeds 1 2] [--dpo-seeds 1 2]
    python bench/claims.py --concepts dev|test|all|NAME,NAME [--out claims.json]
    python bench/claims.py --concepts dev --set finetune.train_text_encoder=true

--set KEY=VALUE overrides one params key (a YAML value), as `dvc exp run -S` does; the result
records the overrides, and the results page names them.

--concepts measures every claim on each concept of the proving ground's concept set
(dbdpo.world.concepts: its photos in data/concepts/<name>/, its class noun; every other param as
the params file says), prints one row of headline figures per concept, then their mean and its
standard error across concepts: a claim is the method's when it holds on the mean over concepts,
not on one. Defaults are chosen on dev; test is only measured.

--dreambooth-seeds trains DreamBooth again on each finetune.seed given and prints claim (a) for
each: on the proving ground the gain depends on that seed's draw (docs/proving_ground.md).
--dpo-seeds does the same for the DPO models of claims (b), (c) and (d) (dpo.seed), from the
same round_0 and round-1 images.
DreamBooth runs as the finetune stage runs it: a LoRA or the full model (finetune.method), with
prior preservation when finetune.prior_preservation asks.
The claims are Diffusion-DPO's (lambda, filters): params with dpo.loss=rank_dpo are refused
(bench/dpo_transfer.py "mode=rank loss=rank_dpo" measures a RankDPO round).

About 8 minutes a concept on 2 CPU cores with the default params, 1 more a DreamBooth seed and
3 more a DPO seed.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from functools import partial
from pathlib import Path

import pandas as pd
import torch
import torch.nn.functional as F
from claims_report import (
    concepts_markdown,
    headline,
    print_concepts,
    print_table,
)
from code_version import code_commit  # bench/code_version.py
from params_cli import params_with  # bench/params_cli.py
from PIL import Image

from dbdpo.across_concepts import mean_over_concepts
from dbdpo.backbones import Backbone, load_backbone, round_base, round_lora
from dbdpo.config import SEEDS_PER_ROUND, Config, ModelConfig, round_seed
from dbdpo.data import eval_prompts, load_concept, text_prompt, train_prompts
from dbdpo.dreambooth import dreambooth, save_round_0
from dbdpo.early_stops import EarlyStops
from dbdpo.evaluation import paired_gains
from dbdpo.lora import LoraState, merged_pipeline
from dbdpo.pairs import equal_budget_threshold
from dbdpo.rounds import (
    SCORED_SAMPLE_COLUMNS,
    concept_prompts,
    dpo_round,
    pair_round,
    sample_round,
    score_round,
)
from dbdpo.scoring import build_scorers
from dbdpo.training import StepCallback
from dbdpo.world.concepts import WorldConcept, concepts_of
from dbdpo.world.data import CONCEPT_VIEWS, concept_views
from dbdpo.world.scenes import object_mask

CONCEPT_SET_DATA = Path(__file__).resolve().parent.parent / "data" / "concepts"

log = logging.getLogger("claims")
HELD_IN_SEED = 777 * SEEDS_PER_ROUND  # no round samples these seeds (dbdpo.config.round_seed)


@dataclasses.dataclass(frozen=True)
class Model:
    """A round's model as the stages see it (dbdpo.backbones.round_base, round_lora): the
    model its LoRA applies to, loaded (`base`) and as a config to load afresh (`config`), and
    the LoRA. For a LoRA DreamBooth the base is the params' model; for finetune.method=full it
    is the fine-tuned round 0 itself, whose own LoRA is empty."""
    config: ModelConfig
    base: Backbone
    lora: LoraState


@dataclasses.dataclass(frozen=True)
class MaskedLoss:
    """DreamBooth's masked loss on a world concept's photos: each latent cell that the
    concept's silhouette (the renderer's, dbdpo.world.scenes.object_mask) touches weighs 1,
    widened by one cell (the VAE spreads an object's latents into its neighbours), and every
    other cell `background` (0: the photos' backgrounds are not trained on)."""
    concept: WorldConcept
    background: float

    def weights(self, latent_side: int) -> torch.Tensor:
        """(N, 1, latent_side, latent_side), one map a photo, in the photos' order."""
        views = concept_views(CONCEPT_VIEWS, concept=self.concept.scene)
        silhouettes = torch.stack([torch.from_numpy(object_mask(v)).float()[None] for v in views])  # (N, 1, W, W)
        cells = F.max_pool2d(F.adaptive_max_pool2d(silhouettes, latent_side), 3, stride=1, padding=1)
        return self.background + (1 - self.background) * cells


class Bench:
    """The run's shared pieces: config, scorers, prompt sets, a scratch folder for images."""

    def __init__(self, cfg: Config, work: Path, held_in_seeds: int | None = None, masked: MaskedLoss | None = None):
        """`held_in_seeds`: seeds per prompt of the held-in set (default: generate.images_per_prompt,
        as a round samples its prompts); `masked`: DreamBooth trains with that masked loss."""
        self.cfg, self.work = cfg, work
        self.held_in_seeds = held_in_seeds or cfg.generate.images_per_prompt
        self.concept_images = load_concept(cfg.concept)
        ts = partial(text_prompt, cfg=cfg.concept, mode=cfg.score.ts_prompt)
        self.scorers = build_scorers(cfg.score, self.concept_images, {"TS": ts})
        slices = {name: plan.prompts for name, plan in cfg.round_plans().items()}
        self.round_prompts = list(train_prompts(cfg.generate.prompts, slices).values())  # one list per round
        self.held_out = eval_prompts(cfg.evaluate.prompts, cfg.evaluate.num_prompts)
        self.backbone = load_backbone(cfg.model)
        latent_side = self.backbone.resolution // self.backbone.pipe.vae_scale_factor
        self.loss_weights = None if masked is None else masked.weights(latent_side)

    def sample(self, model: Model | None, templates: list[str], per_prompt: int, seed: int,
               name: str, class_prompt: bool = False, settings=None) -> pd.DataFrame:
        """Images of `model` (None: the params' base model) for `templates`, written and scored.
        class_prompt: the prompt with the class noun and no instance token ("a toy in the
        snow"), as the base model is prompted for claim (a). settings: steps, guidance_scale
        and batch_size (cfg.generate unless given: cfg.evaluate for the held-out prompts)."""
        prompts = ([text_prompt(t, self.cfg.concept, "with_class") for t in templates] if class_prompt
                   else concept_prompts(templates, self.cfg.concept))
        backbone = self.backbone if model is None else model.base
        with merged_pipeline(backbone.pipe, {} if model is None else model.lora):
            samples = sample_round(backbone, templates, prompts, per_prompt, seed, settings or self.cfg.generate,
                                   self.work / name, self.work / f"{name}.parquet", desc=name)
        scores = score_round(samples, self.scorers, self.cfg.score.batch_size, desc=f"score {name}")
        # every sample column beside the scores: `paired_gains` pairs images by seed
        return pd.concat([samples, scores.drop(columns=SCORED_SAMPLE_COLUMNS)], axis=1)

    def dpo(self, start: Model, scores: pd.DataFrame, cfg: Config, steps: int) -> Model:
        """One DPO round from `start` on `scores`' images, as the pair and dpo stages run it:
        Diffusion-DPO on pairs (cfg.pair, cfg.filter) or RankDPO on ranked lists (pair.mode)."""
        prefs = pair_round(scores, cfg.pair, cfg.filter, cfg.score.rewards)
        log.info("%s: %s", prefs.mode, prefs.summary)
        backbone = load_backbone(start.config, lora=start.lora)  # trained on, so a fresh copy
        lora, _ = dpo_round(backbone, start.lora, prefs, dataclasses.replace(cfg.dpo, steps=steps))
        return dataclasses.replace(start, lora=lora)

    def dpo_rounds(self, round_0: Model, first: pd.DataFrame, cfg: Config, steps: int,
                   tag: str = "") -> list[Model]:
        """The params' rounds (claim b), each a DPO round from the round before it on its own
        prompt slice, sampled as the generate stage samples it; `first` is round 1's scores;
        `tag` names this run's sample folders."""
        models, model = [], round_0
        for r, templates in enumerate(self.round_prompts, start=1):
            scores = first if r == 1 else self.round_scores(model, templates, r, f"round_{r}{tag}")
            model = self.dpo(model, scores, cfg, steps)
            models.append(model)
        return models

    def dreambooth(self, seed: int | None = None, on_step: StepCallback | None = None,
                   early_stops: EarlyStops | None = None, photos: list[Image.Image] | None = None) -> Model:
        """round_0: DreamBooth on the concept with cfg.finetune, as the finetune stage
        (with finetune.seed = `seed` when given; `on_step` gets each step's log row; the LoRAs
        after `early_stops.steps` steps kept in `early_stops.loras`, as finetune keeps them; on
        `photos` when given, else the concept's photos, which IS scores against either way; with
        the bench's masked loss when it has one). A
        full fine-tune is saved in the scratch folder and loaded from there, as the later stages
        load models/round_0."""
        cfg = self.cfg
        finetune = cfg.finetune if seed is None else dataclasses.replace(cfg.finetune, seed=seed)
        backbone = load_backbone(cfg.model)
        photos = self.concept_images if photos is None else photos
        state, _ = dreambooth(backbone, photos, finetune, cfg.concept, cfg.generate, on_step, early_stops=early_stops,
                              loss_weights=self.loss_weights)
        if state is not None:
            return Model(cfg.model, self.backbone, state)
        folder = self.work / f"round_0_full_seed_{finetune.seed}"
        save_round_0(backbone, None, folder)
        return self.round_0(folder)

    def round_0(self, folder: Path) -> Model:
        """A saved round 0 (models/round_0): a DreamBooth LoRA folder, or a full fine-tune's
        pipeline folder."""
        config = round_base(self.cfg.model, folder)
        base = self.backbone if config == self.cfg.model else load_backbone(config)
        return Model(config, base, round_lora(folder))

    def own_prompt(self, model: Model | None, name: str) -> pd.DataFrame:
        """Scored images on DreamBooth's own prompt, with no context: finetune.instance_prompt
        for a DreamBooth model, finetune.class_prompt for the base model (None); as many as
        the held-out set, on evaluate's seeds and settings."""
        e, finetune = self.cfg.evaluate, self.cfg.finetune
        template = finetune.class_prompt if model is None else finetune.instance_prompt
        return self.sample(model, [template], len(self.held_out) * e.images_per_prompt, e.seed, name, settings=e)

    def round_scores(self, model: Model, templates: list[str], r: int, name: str) -> pd.DataFrame:
        """Round r's scored training images, seeded as the generate stage seeds round r."""
        g = self.cfg.generate
        return self.sample(model, templates, g.images_per_prompt, round_seed(g.seed, r), name)

    def measure(self, model: Model | None, name: str, class_prompt: bool = False,
                sets: tuple[str, ...] = ("held-out", "held-in")) -> dict[str, pd.DataFrame]:
        """Scored images on the held-out prompts (evaluate's seeds and settings) and on round
        1's prompts with seeds no round trains on (held-in)."""
        e = self.cfg.evaluate
        out = {}
        if "held-out" in sets:
            out["held-out"] = self.sample(model, self.held_out, e.images_per_prompt, e.seed, f"{name}_out",
                                          class_prompt, settings=e)
        if "held-in" in sets:
            out["held-in"] = self.sample(model, self.round_prompts[0], self.held_in_seeds, HELD_IN_SEED,
                                         f"{name}_in", class_prompt)
        return out


def with_pairing(cfg: Config, lam: float, kind: str) -> Config:
    return dataclasses.replace(cfg, pair=dataclasses.replace(cfg.pair, lambda_=lam),
                               filter=dataclasses.replace(cfg.filter, kind=kind))


def dreambooth_gain(base: pd.DataFrame, round_0: pd.DataFrame, base_alone: pd.DataFrame,
                    round_0_alone: pd.DataFrame) -> dict[str, float]:
    """Claim (a) on the held-out images: round_0's IS and TS over the base model's, in
    round_0's std per image (the table's unit), with IS's standard error; and `own_prompt_IS`:
    round_0's IS on DreamBooth's own prompt over the base model's on the class prompt, both
    with no context (Bench.own_prompt), in the same unit: the concept learned, before a
    context word competes for it."""
    g = paired_gains(base, round_0)
    own = (round_0_alone["IS"].mean() - base_alone["IS"].mean()) / round_0["IS"].std()
    return {"IS": -g["IS"], "TS": -g["TS"], "IS_se": g["IS_se"], "own_prompt_IS": float(own)}


def dreambooth_seeds(bench: Bench, base: pd.DataFrame, base_alone: pd.DataFrame,
                     seeds: list[int]) -> dict[int, dict[str, float]]:
    """Claim (a) with DreamBooth trained again on each of `seeds` (finetune.seed), everything
    else as the params: how much of the gain is the seed's draw."""
    out = {}
    for seed in seeds:
        round_0 = bench.dreambooth(seed)
        held_out = bench.measure(round_0, f"round_0_seed_{seed}", sets=("held-out",))["held-out"]
        out[seed] = dreambooth_gain(base, held_out, base_alone,
                                    bench.own_prompt(round_0, f"round_0_seed_{seed}_alone"))
    return out


def dpo_models(bench: Bench, round_0: Model, first: pd.DataFrame, cfg: Config, tag: str = "") -> dict[str, Model]:
    """The DPO models of claims (b)-(d), named by their table rows and in the table's order:
    each of the params' rounds at lambda=0.5 with the angle filter (b), one round from round_0
    with the threshold filter at the angle filter's pair budget (d: the threshold that keeps as
    many of round 1's candidates), and one at lambda=0 and at lambda=1 (c). `first` is round 1's
    scored images; `tag` names the later rounds' sample folders."""
    models = {f"lambda=0.5 angle, round {r}": model for r, model in enumerate(
        bench.dpo_rounds(round_0, first, with_pairing(cfg, 0.5, "angle"), cfg.dpo.steps, tag), start=1)}
    angle = with_pairing(cfg, 0.5, "angle")
    budget = equal_budget_threshold(first, angle.pair, angle.filter)  # (d) at the angle filter's pair count
    threshold = dataclasses.replace(with_pairing(cfg, 0.5, "threshold"),
                                    filter=dataclasses.replace(cfg.filter, kind="threshold", threshold=budget))
    models["lambda=0.5 threshold, round 1"] = bench.dpo(round_0, first, threshold, cfg.dpo.steps)
    for lam in (0.0, 1.0):
        models[f"lambda={lam:g} angle, round 1"] = bench.dpo(round_0, first, with_pairing(cfg, lam, "angle"),
                                                             cfg.dpo.steps)
    return models


def dpo_seeds(bench: Bench, round_0: Model, first: pd.DataFrame, reference: dict[str, pd.DataFrame],
              seeds: list[int]) -> dict[int, dict[str, dict]]:
    """Claims (b)-(d) with DPO trained again on each of `seeds` (dpo.seed) from the same
    round_0 and round-1 images (`dpo_models`); gains over round_0 as in the table. How much of
    a DPO gain is the seed's draw."""
    out = {}
    for seed in seeds:
        cfg = dataclasses.replace(bench.cfg, dpo=dataclasses.replace(bench.cfg.dpo, seed=seed))
        models = dpo_models(bench, round_0, first, cfg, f"_dpo_seed_{seed}")
        out[seed] = {}
        for i, (name, model) in enumerate(models.items()):
            measured = bench.measure(model, f"dpo_seed_{seed}_{i}")
            out[seed][name] = {where: paired_gains(s, reference[where]) for where, s in measured.items()}
    return out


def run(cfg: Config, work: Path, extra_dreambooth_seeds: tuple[int, ...] = (),
        extra_dpo_seeds: tuple[int, ...] = (), masked: MaskedLoss | None = None) -> dict:
    t0 = time.time()
    bench = Bench(cfg, work, masked=masked)
    rounds = len(bench.round_prompts)
    measured = {"base (class prompt)": bench.measure(None, "base", class_prompt=True)}
    round_0 = bench.dreambooth()
    measured["round_0"] = bench.measure(round_0, "round_0")
    base, base_alone = measured["base (class prompt)"]["held-out"], bench.own_prompt(None, "base_alone")
    by_seed = {cfg.finetune.seed: dreambooth_gain(base, measured["round_0"]["held-out"], base_alone,
                                                  bench.own_prompt(round_0, "round_0_alone"))}
    by_seed |= dreambooth_seeds(bench, base, base_alone, [s for s in extra_dreambooth_seeds if s != cfg.finetune.seed])
    first = bench.round_scores(round_0, bench.round_prompts[0], 1, "round_1")  # shared by every 1-round variant
    models = dpo_models(bench, round_0, first, cfg)  # (b), (d), (c)
    for i, (name, model) in enumerate(models.items()):
        measured[name] = bench.measure(model, f"dpo_{i}")
    if rounds > 1:  # (e): all rounds' prompts in one round from round_0, as many DPO steps as all rounds
        scores = bench.round_scores(round_0, sum(bench.round_prompts, []), 1, "one_round")
        one = with_pairing(cfg, 0.5, "angle")  # the pair budget of all the rounds it stands in for
        one = dataclasses.replace(one, pair=dataclasses.replace(one.pair, max_total=cfg.pair.max_total * rounds))
        model = bench.dpo(round_0, scores, one, cfg.dpo.steps * rounds)
        measured[f"lambda=0.5 angle, 1 round of {rounds}N"] = bench.measure(model, "one_round")
    reference = measured["round_0"]
    table = {name: {where: paired_gains(scores, reference[where]) for where, scores in sets.items()}
             for name, sets in measured.items()}
    by_dpo_seed = {cfg.dpo.seed: {name: table[name] for name in models}}
    by_dpo_seed |= dpo_seeds(bench, round_0, first, reference, [s for s in extra_dpo_seeds if s != cfg.dpo.seed])
    return {"table": table, "dreambooth_seeds": by_seed, "dpo_seeds": by_dpo_seed,
            "minutes": (time.time() - t0) / 60, "rounds": rounds,
            "N": cfg.generate.num_prompts, "K": cfg.generate.images_per_prompt,
            "images": {name: {where: len(s) for where, s in sets.items()} for name, sets in measured.items()}}


def concept_config(cfg: Config, concept: WorldConcept) -> Config:
    """The params with the concept set's `concept` in place of the params' own concept."""
    return dataclasses.replace(cfg, concept=dataclasses.replace(
        cfg.concept, dir=str(CONCEPT_SET_DATA / concept.name), class_noun=concept.class_noun))


def run_concepts(cfg: Config, work: Path, concepts: list[WorldConcept], extra_dreambooth_seeds: tuple[int, ...] = (),
                 extra_dpo_seeds: tuple[int, ...] = (), mask: float | None = None) -> dict:
    """`run` on each concept (concept_config), then the headline figures per concept and their
    mean over concepts; `mask`: DreamBooth's masked loss with this background weight (MaskedLoss)."""
    results = {}
    for concept in concepts:
        log.info("concept %s (%s, %s)", concept.name, concept.class_noun, concept.split)
        (work / concept.name).mkdir(parents=True, exist_ok=True)
        results[concept.name] = run(concept_config(cfg, concept), work / concept.name, extra_dreambooth_seeds,
                                    extra_dpo_seeds, None if mask is None else MaskedLoss(concept, mask))
    rows = {name: headline(result, cfg.finetune.seed) for name, result in results.items()}
    return {"concepts": results, "splits": {c.name: c.split for c in concepts}, "headline": rows,
            "mean": mean_over_concepts(rows), "minutes": sum(r["minutes"] for r in results.values())}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    parser.add_argument("--markdown", type=Path, help="with --concepts: also write the table as markdown here")
    parser.add_argument("--concepts", help="measure on the concept set instead of the params' concept: "
                                           "dev, test, all, or names joined by commas (dbdpo.world.concepts)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="override a params key for this run, as `dvc exp run -S` does (repeatable)")
    parser.add_argument("--dreambooth-seeds", type=int, nargs="*", default=[],
                        help="also train DreamBooth on these finetune.seed values and report claim (a) on each "
                             "(about 1 min a seed on 2 CPU cores)")
    parser.add_argument("--dpo-seeds", type=int, nargs="*", default=[],
                        help="also train the DPO models of claims (b)-(d) on these dpo.seed values, from the "
                             "same round_0 and round-1 images, and report each claim on each (about 3 min a seed)")
    parser.add_argument("--mask", type=float, metavar="W",
                        help="with --concepts: DreamBooth's masked loss, each concept's silhouette weighing 1 and "
                             "the rest of its photos W in [0, 1) (MaskedLoss)")
    args = parser.parse_args(argv)
    if args.mask is not None and not (args.concepts and 0 <= args.mask < 1):
        raise SystemExit(f"--mask {args.mask:g}: the background's weight, in [0, 1), with --concepts (the world "
                         "renders each concept's silhouette)")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("claims", "dbdpo"):  # not open_clip's INFO lines on the root logger
        logging.getLogger(name).setLevel(logging.INFO)
    cfg, commit = params_with(args.params, args.set), code_commit()
    try:
        concepts = concepts_of(args.concepts) if args.concepts else None
    except ValueError as e:
        raise SystemExit(f"--concepts: {e}") from None
    if cfg.dpo.loss != "diffusion_dpo":
        raise SystemExit(f"{args.params}: dpo.loss={cfg.dpo.loss}; the claims vary Diffusion-DPO's lambda and "
                         "filter, which RankDPO has not: set dpo.loss=diffusion_dpo and pair.mode=pairs "
                         "(bench/dpo_transfer.py 'mode=rank loss=rank_dpo' measures a RankDPO round)")
    with tempfile.TemporaryDirectory() as work:
        if concepts:
            result = run_concepts(cfg, Path(work), concepts, tuple(args.dreambooth_seeds), tuple(args.dpo_seeds),
                                  args.mask)
        else:
            result = run(cfg, Path(work), tuple(args.dreambooth_seeds), tuple(args.dpo_seeds))
    result["overrides"], result["commit"] = args.set, commit
    if args.mask is not None:
        result["mask"] = args.mask
    (print_concepts if concepts else print_table)(result)
    if concepts and args.markdown:
        command = " ".join(["python bench/claims.py --concepts", args.concepts, *(f"--set {o}" for o in args.set),
                            *([f"--mask {args.mask:g}"] if args.mask is not None else [])])
        args.markdown.write_text(concepts_markdown(result, command))
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
