"""The baseline frontier over a split of the concept set: how far the default rounds land beyond
what plain DreamBooth reaches with the knobs it has, as the mean over concepts.

For each concept: DreamBooth and the params' rounds as the stages run them (bench/claims.py's
Bench), every model on the held-out prompts with evaluate's seeds, and round 0 at each baseline
knob of the params' `frontier` group on the same prompts and seeds (DreamBooth stopped early:
the same run's LoRA after frontier.finetune_fractions of its steps, as the finetune stage keeps
it). Each round's `beyond_frontier` (dbdpo.frontier: its signed distance beyond the baselines'
upper-right hull, in round_0 stds) is then a per-concept figure, and the table ends with the mean over concepts
and its standard error across concepts, as the claims do.

    python bench/frontier.py --concepts test [--params params.yaml] [--out bench/results/frontier_test.json]
                             [--markdown bench/results/frontier_test.md]

About 4 minutes a concept on 2 CPU cores with the default params.
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
from code_version import code_commit  # bench/code_version.py
from params_cli import params_with  # bench/params_cli.py

from dbdpo.across_concepts import format_se, mean_over_concepts
from dbdpo.config import Config, early_stop_steps
from dbdpo.early_stops import EarlyStops
from dbdpo.evaluation import paired_gains
from dbdpo.frontier import baseline_points, frontier_table, rounds_beyond
from dbdpo.world.concepts import WorldConcept, concepts_of

log = logging.getLogger("frontier")


def measure_concept(cfg: Config, work: Path) -> dict:
    """One concept's rounds and baselines: each round's gains over round 0 and beyond_frontier,
    each baseline's gains and whether it is a vertex of the hull (gains in round_0 stds)."""
    bench, e = Bench(cfg, work), cfg.evaluate
    early_stops = EarlyStops(early_stop_steps(cfg.frontier.finetune_fractions, cfg.finetune.steps))
    round_0 = bench.dreambooth(early_stops=early_stops)
    first = bench.round_scores(round_0, bench.round_prompts[0], 1, "round_1")
    models = dict(zip(cfg.round_names(), bench.dpo_rounds(round_0, first, cfg, cfg.dpo.steps)))
    reference = bench.measure(round_0, "round_0", sets=("held-out",))["held-out"]
    rounds = {name: paired_gains(bench.measure(model, name, sets=("held-out",))["held-out"], reference)
              for name, model in models.items()}
    baselines = {}
    for point in baseline_points(cfg.frontier, e.guidance_scale, has_lora=bool(round_0.lora),
                                 early_stops=early_stops.named()):
        model = dataclasses.replace(round_0, lora=point.lora(round_0.lora))
        scores = bench.sample(model, bench.held_out, e.images_per_prompt, e.seed, point.name,
                              settings=point.sampling(e))
        baselines[point.name] = paired_gains(scores, reference)
    hull, on_hull = frontier_table(baselines)
    beyond = rounds_beyond({"round_0": {}} | {n: {"IS_gain": g["IS"], "TS_gain": g["TS"]} for n, g in rounds.items()},
                           hull)
    return {"rounds": {n: {"IS": g["IS"], "TS": g["TS"], "S_0.5": g["S_0.5"], "S_0.5_se": g["S_0.5_se"],
                           "beyond_frontier": beyond[n]} for n, g in rounds.items()},
            "round_0_beyond_frontier": beyond["round_0"],
            "baselines": {n: {"IS": g["IS"], "TS": g["TS"], "on_hull": on_hull[n]} for n, g in baselines.items()}}


def run(cfg: Config, work: Path, concepts: list[WorldConcept]) -> dict:
    """measure_concept on each concept, then each round's figures as the mean over concepts."""
    start, results = time.perf_counter(), {}
    for concept in concepts:
        log.info("concept %s (%s, %s)", concept.name, concept.class_noun, concept.split)
        results[concept.name] = measure_concept(concept_config(cfg, concept), work / concept.name)
    rows = {name: {f"{r} {k}": v for r, figures in result["rounds"].items() for k, v in figures.items()
                   if k != "S_0.5_se"} for name, result in results.items()}
    return {"concepts": results, "splits": {c.name: c.split for c in concepts}, "headline": rows,
            "mean": mean_over_concepts(rows), "frontier": dataclasses.asdict(cfg.frontier),
            "minutes": (time.perf_counter() - start) / 60}


def markdown(result: dict, command: str) -> str:
    """Per-concept rows of each round's gains and beyond_frontier, then the mean ± se over
    concepts (the docs' results page is made from this, never typed)."""
    keys = list(result["mean"])
    lines = [f"Gains over round 0 and distance beyond the baseline frontier, in round_0 stds on the held-out "
             f"prompts, `{command}` ({len(result['headline'])} concepts; baselines: LoRA scales "
             f"{result['frontier']['lora_scales']}, guidance scales {result['frontier']['guidance_scales']}, "
             f"finetune fractions {result['frontier'].get('finetune_fractions', [])}).", "",
             "| concept | split | " + " | ".join(keys) + " |", "|---|---|" + "---|" * len(keys)]
    for name, row in result["headline"].items():
        lines.append(f"| {name} | {result['splits'][name]} | " + " | ".join(f"{row[k]:+.3f}" for k in keys) + " |")
    lines.append("| **mean ± se** | | " + " | ".join(f"**{result['mean'][k]['mean']:+.3f}** ± {format_se(result['mean'][k]['se'])}"
                                                   for k in keys) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--concepts", required=True, help="dev, test, all, or names joined by commas")
    parser.add_argument("--out", type=Path, help="also write the table as JSON here")
    parser.add_argument("--markdown", type=Path, help="also write the table as markdown here (the README's block)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    for name in ("frontier", "claims", "dbdpo"):
        logging.getLogger(name).setLevel(logging.INFO)
    cfg, commit = params_with(args.params, []), code_commit()
    try:
        concepts = concepts_of(args.concepts)
    except ValueError as e:
        raise SystemExit(f"--concepts: {e}") from None
    with tempfile.TemporaryDirectory() as work:
        result = run(cfg, Path(work), concepts)
    result["command"] = f"python bench/frontier.py --concepts {args.concepts}"
    result["commit"] = commit
    table = markdown(result, result["command"])
    print(table)
    if args.markdown:
        args.markdown.write_text(table)
    if args.out:
        args.out.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
