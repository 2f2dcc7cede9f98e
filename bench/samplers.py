"""Faster sampling on the proving ground: IS and TS of a round's model sampled with each
scheduler and step count, against DDIM at 50 steps (the paper's sampling), on the held-out
evaluation prompts and seeds, through the evaluate stage's own code (sample_and_score).

Differences are in units of the DDIM-50 run's per-image std; the standard error of a mean
difference over n images is about sqrt(2/n) of those units for independent noise (less here:
every variant starts from the same seeds).

    python bench/samplers.py [--model models/round_0] [--images-per-prompt 4] [--out samplers.json]

Needs the model: `dvc repro finetune` writes models/round_0.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import time
from pathlib import Path

import torch

from dbdpo.backbones import round_lora
from dbdpo.data import eval_prompts, load_concept, ts_texts
from dbdpo.evaluation import RoundModel, sample_and_score
from dbdpo.params import load_config
from dbdpo.rounds import load_round_model
from dbdpo.scoring import build_scorers

# (scheduler, steps): the reference first
VARIANTS = [("ddim", 50), ("ddim", 20), ("dpmpp_2m", 10), ("dpmpp_2m", 20), ("dpmpp_2m", 25), ("euler_a", 25)]


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    cfg = load_config(args.params)
    if not args.model.is_dir():
        raise SystemExit(f"{args.model}: no model here; `dvc repro finetune` writes models/round_0")
    e = dataclasses.replace(cfg.evaluate, images_per_prompt=args.images_per_prompt)
    templates = eval_prompts(e.prompts, e.num_prompts)
    scorers = build_scorers(cfg.score, load_concept(cfg.concept), ts_texts(cfg.concept, cfg.score.ts_prompt))
    backbone = load_round_model(cfg.model, args.model)  # the base the model's LoRA applies to
    model = RoundModel(args.model.name, round_lora(args.model))
    rows = []
    for scheduler, steps in VARIANTS:
        settings = dataclasses.replace(e, scheduler=scheduler, steps=steps)
        start = time.perf_counter()
        [samples] = sample_and_score(backbone, [model], templates, cfg.concept, settings, scorers, None,
                                     cfg.score.batch_size)
        seconds = time.perf_counter() - start
        rows.append({"scheduler": scheduler, "steps": steps, "seconds": seconds,
                     "IS": float(samples.scores["IS"].mean()), "TS": float(samples.scores["TS"].mean()),
                     "IS_std": float(samples.scores["IS"].std(ddof=1)), "TS_std": float(samples.scores["TS"].std(ddof=1)),
                     "images": len(samples.scores)})
    reference = rows[0]
    for row in rows:
        for key in ("IS", "TS"):
            row[f"d{key}_std"] = (row[key] - reference[key]) / reference[f"{key}_std"]
        row["speedup"] = reference["seconds"] / row["seconds"]
    result = {"model": str(args.model), "images": reference["images"], "torch": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows}
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def print_table(result: dict) -> None:
    print(f"{result['model']} on {result['images']} held-out images (same prompts and seeds for each sampler); "
          "dIS, dTS: difference from DDIM 50 in its per-image stds")
    print(f"{'sampler':<10} {'steps':>5} {'IS':>7} {'TS':>7} {'dIS':>7} {'dTS':>7} {'seconds':>8} {'speedup':>8}")
    for r in result["rows"]:
        print(f"{r['scheduler']:<10} {r['steps']:>5} {r['IS']:>7.4f} {r['TS']:>7.4f} {r['dIS_std']:>+7.2f} "
              f"{r['dTS_std']:>+7.2f} {r['seconds']:>8.1f} {r['speedup']:>7.2f}x")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--model", type=Path, default=Path("models/round_0"))
    parser.add_argument("--images-per-prompt", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None)
    return parser.parse_args(argv)


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
