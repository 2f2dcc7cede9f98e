"""Does one DPO round's gain carry over to contexts no training prompt names? One row a variant.

Each variant trains one DPO round from the same round_0 on round 1's images (the pool's first
N prompts, K images each, seeded as the generate stage seeds round 1) and is measured as
bench/claims.py measures: IS, TS and S_0.5 gains over round_0 in round_0 stds, on the held-out
evaluation prompts and on round 1's first prompts with new seeds (held-in). Every pair the
filter keeps is used (no `pair.max_total` cap), so a larger N means more pairs.

A variant is one argument of space-separated key=value overrides of the params file:
  prompts=N  images=K  steps=S  lambda=L  filter=angle|threshold|none  angle=A  seed=D  (dpo.seed)
  beta=B  lr=R  rank=R  targets=attention|unet  min_timestep=T  max_timestep=T
  clip=C (dpo.max_grad_norm)  weight_decay=W   (the peer's step: "clip=1.0 weight_decay=0.01")
  mode=pairs|rank  loss=diffusion_dpo|rank_dpo   (RankDPO: "mode=rank loss=rank_dpo", lists
                                                 ranked by score.rewards; filter unused)
  layers=attn2.to_k,attn2.to_v   a LoRA on exactly these module names (an experiment's set)
"default" (or "") is the params as they are.

    python bench/dpo_transfer.py --round-0 models/round_0 default "prompts=16" "prompts=16 beta=500"

With --round-0 (the default run's `models/round_0`) the DreamBooth round is loaded, not trained.

    python bench/dpo_transfer.py --concepts dev default "beta=5000" "lambda=0.3"

--concepts runs every variant on each concept of the set (dbdpo.world.concepts; its own
DreamBooth round 0) and prints each variant's mean over the concepts with its standard error
across them: the measurement defaults are chosen on (dev), never on one concept.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import tempfile
import time
from pathlib import Path

from claims import Bench, concept_config  # bench/claims.py
from claims_report import print_gains  # bench/claims_report.py
from code_version import code_commit  # bench/code_version.py
from params_cli import (  # bench/params_cli.py
    checked_config,
    read_params,
    variant_params,
)

from dbdpo.across_concepts import mean_over_concepts
from dbdpo.config import Config, round_seed
from dbdpo.data import load_prompt_templates
from dbdpo.evaluation import paired_gains
from dbdpo.params import load_config
from dbdpo.world.concepts import concepts_of

log = logging.getLogger("dpo_transfer")

# key -> (params.yaml group, key, type)
OVERRIDES = {"prompts": ("generate", "num_prompts", int), "images": ("generate", "images_per_prompt", int),
             "steps": ("dpo", "steps", int), "seed": ("dpo", "seed", int), "beta": ("dpo", "beta", float),
             "lr": ("dpo", "learning_rate", float), "rank": ("dpo", "lora_rank", int),
             "targets": ("dpo", "lora_targets", str), "lambda": ("pair", "lambda", float),
             "filter": ("filter", "kind", str), "angle": ("filter", "angle", float),
             "mode": ("pair", "mode", str), "loss": ("dpo", "loss", str),
             "min_timestep": ("dpo", "min_timestep", int), "max_timestep": ("dpo", "max_timestep", int),
             "clip": ("dpo", "max_grad_norm", float), "weight_decay": ("dpo", "weight_decay", float)}


def variant_config(params: dict, spec: str) -> Config:
    """The params (params.yaml as parsed) with the variant's overrides, validated as params.yaml
    is; pair.max_total lifted. A bad key or value exits naming it, before anything trains."""
    raw, extra = variant_params(params, spec, OVERRIDES, passed=("layers",))
    raw["pair"]["max_total"] = 1_000_000
    cfg = checked_config(raw, f"variant {spec!r}")
    if "layers" in extra:  # an experiment's own module list: dpo.lora_targets as an explicit list
        cfg = dataclasses.replace(cfg, dpo=dataclasses.replace(cfg.dpo, lora_targets=tuple(extra["layers"].split(","))))
    return cfg


def run(cfg: Config, variants: dict[str, Config], work: Path, round_0_dir: Path | None) -> dict:
    """One DPO round per variant (name -> its config) from round_0; gains by prompt set."""
    bench = Bench(cfg, work)
    round_0 = bench.round_0(round_0_dir) if round_0_dir else bench.dreambooth()
    reference = bench.measure(round_0, "round_0")
    pool = load_prompt_templates(Path(cfg.generate.prompts))
    scored = {}  # (N, K) -> round 1's scored images: variants that differ only in DPO share them
    table = {}
    for spec, v in variants.items():
        t0 = time.time()
        g = v.generate
        if (g.num_prompts, g.images_per_prompt) not in scored:
            scored[g.num_prompts, g.images_per_prompt] = bench.sample(
                round_0, pool[:g.num_prompts], g.images_per_prompt, round_seed(g.seed, 1),
                f"round_1_{g.num_prompts}x{g.images_per_prompt}")
        model = bench.dpo(round_0, scored[g.num_prompts, g.images_per_prompt], v, v.dpo.steps)
        measured = bench.measure(model, f"variant_{len(table)}")
        table[spec or "default"] = {where: paired_gains(s, reference[where]) for where, s in measured.items()}
        log.info("%s: %.0f s", spec, time.time() - t0)
    return table


def mean_table(tables: dict[str, dict]) -> dict[str, dict]:
    """Per variant and prompt set, each gain's mean over the concepts (`tables`: concept ->
    run's table) and, as `<name>_se`, its standard error across the concepts (claims.py's
    mean_over_concepts)."""
    first = next(iter(tables.values()))
    out = {}
    for spec, sets in first.items():
        out[spec] = {}
        for where in sets:
            rows = {c: {k: t[spec][where][k] for k in ("IS", "TS", "S_0.5")} for c, t in tables.items()}
            mean = mean_over_concepts(rows)
            out[spec][where] = {k: mean[k]["mean"] for k in mean} | {f"{k}_se": mean[k]["se"] for k in mean}
    return out


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("variants", nargs="+")
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--round-0", type=Path, help="a saved round 0: a DreamBooth LoRA folder or a full fine-tune's pipeline folder (default: train one)")
    parser.add_argument("--concepts", help="every variant on each concept of the set (dev, test, all, or names "
                                           "joined by commas), then the mean over concepts")
    parser.add_argument("--out", type=Path, help="also write the table(s) as JSON here")
    args = parser.parse_args(argv)
    if args.concepts and args.round_0:
        raise SystemExit("--concepts trains each concept's own round 0: leave out --round-0")
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    logging.getLogger("dpo_transfer").setLevel(logging.INFO)
    cfg = load_config(args.params)  # the file itself checked first, its errors naming it
    params = read_params(args.params)
    variants = {spec: variant_config(params, spec) for spec in args.variants}  # all checked before any trains
    try:
        concepts = concepts_of(args.concepts) if args.concepts else None
    except ValueError as e:
        raise SystemExit(f"--concepts: {e}") from None
    commit = code_commit()
    with tempfile.TemporaryDirectory() as work:
        if not concepts:
            result = run(cfg, variants, Path(work), args.round_0)
            print_gains(result, "variant", 40)
        else:
            tables = {}
            for c in concepts:
                log.info("concept %s (%s, %s)", c.name, c.class_noun, c.split)
                (Path(work) / c.name).mkdir()
                tables[c.name] = run(concept_config(cfg, c), {spec: concept_config(v, c) for spec, v in variants.items()},
                                     Path(work) / c.name, None)
                print(f"{c.name} ({c.split})")
                print_gains(tables[c.name], "variant", 40)
            result = {"concepts": tables, "mean": mean_table(tables), "commit": commit}
            print(f"mean over {len(tables)} concepts (± its standard error across concepts in S_0.5's column)")
            print_gains(result["mean"], "variant", 40)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
