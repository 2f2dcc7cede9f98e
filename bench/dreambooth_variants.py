"""Which DreamBooth settings draw the concept best in contexts no training prompt names? One row a variant.

Claim (a) of bench/claims.py for DreamBooth variants, measured over a split of the concept set:
each variant trains round 0 on each concept (its own photos and class noun) and is measured as
bench/claims.py measures claim (a): round_0's IS and TS on the held-out evaluation prompts over
the base model prompted with the class noun, in round_0's std per image, and the IS gain on
DreamBooth's own prompt with no context. Then each variant's mean over the concepts with its
standard error across them: what the finetune defaults are chosen on (dev), never one concept.

A variant is one argument of space-separated key=value overrides of the params' finetune group:
  steps=S  lr=R  rank=R  batch=B  targets=attention|unet  prior=true|false  text_encoder=true|false
  snr_gamma=G  seed=D
and of DreamBooth's photos: backdrop=studio trains on the concept's photos drawn again on the
world's plain studio backdrop (each photo's size, place and render seed as they are; only the
context behind the concept changes). IS is still scored against the concept's own photos, so
every variant is measured on one scorer. And of its loss: mask=W trains with the masked loss
of bench/claims.py's MaskedLoss, each latent cell the concept covers (its silhouette from the
renderer, widened by one cell) weighing 1 and every other cell W (0: the photos' backgrounds
are not trained on at all).
"default" (or "") is the params as they are.

    python bench/dreambooth_variants.py --concepts dev default "steps=300" "prior=true" "backdrop=studio" "mask=0.2"
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import math
import tempfile
import time
from pathlib import Path

from claims import Bench, MaskedLoss, concept_config, dreambooth_gain  # bench/claims.py
from code_version import code_commit  # bench/code_version.py
from params_cli import (  # bench/params_cli.py
    checked_config,
    read_params,
    variant_params,
)
from PIL import Image

from dbdpo.across_concepts import mean_over_concepts
from dbdpo.config import Config
from dbdpo.world.concepts import WorldConcept, concepts_of
from dbdpo.world.data import CONCEPT_VIEWS, concept_views
from dbdpo.world.scenes import render

log = logging.getLogger("dreambooth_variants")


def boolean(value: str) -> bool:
    """A variant's true / false, as YAML spells them."""
    if value not in ("true", "false"):
        raise ValueError(value)
    return value == "true"


# key -> (params.yaml group, key, parse)
OVERRIDES = {"steps": ("finetune", "steps", int), "lr": ("finetune", "learning_rate", float),
             "rank": ("finetune", "lora_rank", int), "batch": ("finetune", "batch_size", int),
             "targets": ("finetune", "lora_targets", str), "prior": ("finetune", "prior_preservation", boolean),
             "text_encoder": ("finetune", "train_text_encoder", boolean), "snr_gamma": ("finetune", "snr_gamma", float),
             "seed": ("finetune", "seed", int)}
FIGURES = ("IS", "TS", "own_prompt_IS")
BACKDROPS = ("studio",)  # what backdrop= may draw the photos on (dbdpo.world.contexts.STUDIO)


@dataclasses.dataclass(frozen=True)
class Variant:
    """One variant: the params with its finetune overrides, the backdrop its photos are drawn on,
    and the background weight of its masked loss."""
    cfg: Config
    backdrop: str | None = None  # None: the concept's own photos
    background_weight: float | None = None  # mask=W: the masked loss's weight off the concept; None: no mask


def variant_config(params: dict, spec: str) -> Variant:
    """The params (params.yaml as parsed) with the variant's finetune overrides, validated as
    params.yaml is, and its photos' backdrop. A bad key or value exits naming it, before
    anything trains."""
    raw, extra = variant_params(params, spec, OVERRIDES, passed=("backdrop", "mask"))
    backdrop = extra.get("backdrop")
    if backdrop is not None and backdrop not in BACKDROPS:
        raise SystemExit(f"variant {spec!r}: backdrop={backdrop!r}; expected one of {', '.join(BACKDROPS)}")
    weight = None
    if "mask" in extra:
        try:
            weight = float(extra["mask"])
        except ValueError:
            weight = math.nan
        if not 0 <= weight < 1:
            raise SystemExit(f"variant {spec!r}: mask={extra['mask']!r}; expected the background's weight, "
                             f"a number in [0, 1)")
    return Variant(checked_config(raw, f"variant {spec!r}"), backdrop, weight)


def training_photos(concept: WorldConcept, backdrop: str | None) -> list[Image.Image] | None:
    """The photos DreamBooth trains on: None for the concept's own (data/concepts/<name>/), or
    the same views drawn on `backdrop` (dbdpo.world.data.concept_views' draw, context replaced)."""
    if backdrop is None:
        return None
    return [render(dataclasses.replace(view, context=backdrop))
            for view in concept_views(CONCEPT_VIEWS, concept=concept.scene)]


def run(variants: dict[str, Variant], concept: WorldConcept, work: Path) -> dict[str, dict[str, float]]:
    """Claim (a) for each variant (name -> it) on `concept`: DreamBooth trained with the
    variant's finetune group on its photos, against the base model measured once."""
    configs = {spec: concept_config(v.cfg, concept) for spec, v in variants.items()}
    base_bench = Bench(next(iter(configs.values())), work / "base")
    base = base_bench.measure(None, "base", class_prompt=True, sets=("held-out",))["held-out"]
    base_alone = base_bench.own_prompt(None, "base_alone")
    table = {}
    for i, (spec, cfg) in enumerate(configs.items()):
        t0 = time.time()
        variant = variants[spec]
        masked = None if variant.background_weight is None else MaskedLoss(concept, variant.background_weight)
        bench = Bench(cfg, work / f"variant_{i}", masked=masked)
        round_0 = bench.dreambooth(photos=training_photos(concept, variant.backdrop))
        held_out = bench.measure(round_0, "round_0", sets=("held-out",))["held-out"]
        table[spec] = dreambooth_gain(base, held_out, base_alone, bench.own_prompt(round_0, "round_0_alone"))
        log.info("%s: IS %+.3f TS %+.3f own prompt %+.3f (%.0f s)", spec, table[spec]["IS"], table[spec]["TS"],
                 table[spec]["own_prompt_IS"], time.time() - t0)
    return table


def mean_table(tables: dict[str, dict]) -> dict[str, dict]:
    """Per variant, each figure's mean over the concepts (`tables`: concept -> run's table) and,
    as `<figure>_se`, its standard error across the concepts."""
    out = {}
    for spec in next(iter(tables.values())):
        mean = mean_over_concepts({c: {k: t[spec][k] for k in FIGURES} for c, t in tables.items()})
        out[spec] = {k: mean[k]["mean"] for k in FIGURES} | {f"{k}_se": mean[k]["se"] for k in FIGURES}
    return out


def print_tables(result: dict) -> None:
    width = max(len(spec) for spec in result["mean"]) + 2
    print(f"claim (a) over {len(result['concepts'])} concepts, gains over the base model in round_0 stds")
    print(f"{'variant':<{width}}{'IS held-out':>18}{'TS held-out':>18}{'IS own prompt':>18}")
    for spec, row in result["mean"].items():
        print(f"{spec:<{width}}" + "".join(f"{row[k]:+11.3f} ± {row[k + '_se']:.3f}" for k in FIGURES))
    for concept, table in result["concepts"].items():
        print(f"\n{concept}")
        for spec, row in table.items():
            print(f"  {spec:<{width}}" + "".join(f"{row[k]:+18.3f}" for k in FIGURES))


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--concepts", default="dev", help="dev, test, all, or names joined by commas "
                                                          "(dbdpo.world_concepts)")
    parser.add_argument("--out", type=Path, help="also write the tables as JSON here")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("dreambooth_variants", "dbdpo"):
        logging.getLogger(name).setLevel(logging.INFO)
    params = read_params(args.params)
    variants = {spec or "default": variant_config(params, spec) for spec in args.variants}  # all checked first
    try:
        concepts = concepts_of(args.concepts)
    except ValueError as e:
        raise SystemExit(f"--concepts: {e}") from None
    t0, tables, commit = time.time(), {}, code_commit()
    with tempfile.TemporaryDirectory() as work:
        for concept in concepts:
            log.info("concept %s (%s, %s)", concept.name, concept.class_noun, concept.split)
            tables[concept.name] = run(variants, concept, Path(work) / concept.name)
    result = {"concepts": tables, "splits": {c.name: c.split for c in concepts}, "mean": mean_table(tables),
              "minutes": (time.time() - t0) / 60, "commit": commit}
    print_tables(result)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
