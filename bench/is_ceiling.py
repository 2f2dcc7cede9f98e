"""How much IS is there to gain on the held-out contexts? Claim (a)'s room, measured.

Scores, with the params' scorer against the concept photos, images of the evaluation prompts'
held-out contexts: the concept and other toys rendered by the world (the best any backbone
could draw), the concept without its ring (all that the world's captions can name of it), the
same after the VAE's round trip (the best this backbone's latents can hold), the base model
prompted with the class noun and round_0 (bench/claims.py's claim (a) pair, on the `evaluate`
seeds), and the base model prompted with the concept's description in place of the token ("a
big red striped toy in the jungle": what the backbone draws of it from text alone). Means, and
gains over the base model in round_0's std per image, as claim (a) counts them; round_0's gain
is also split into the plain prompts and those that ask for a color the concept lacks. Last,
both models on DreamBooth's own prompts with no context ("a photo of sks toy" over "a photo
of a toy"): how much of the concept round_0 learned, before a context word competes for it.

    python bench/is_ceiling.py --round-0 models/round_0 [--views 4] [--guidance-scale 7.5] [--steps 20] [--by-prompt]
"""

from __future__ import annotations

import argparse
import dataclasses
import logging
import random
import tempfile
from pathlib import Path

import pandas as pd
import torch
from claims import Bench, Model  # bench/claims.py
from PIL import Image

from dbdpo.data import to_tensor
from dbdpo.params import load_config
from dbdpo.scoring import score_loaded
from dbdpo.world.contexts import EVAL_CONTEXTS
from dbdpo.world.data import OTHER_COLORS, place_concept
from dbdpo.world.scenes import CONCEPT, SIZE, describe, render, sample_scene

log = logging.getLogger("is_ceiling")
# The concept in the world's caption words, in place of the token: "a big red striped toy".
DESCRIPTION = f"{CONCEPT.size} {describe(CONCEPT).removesuffix(' ' + CONCEPT.object_class)}"


def world_renders(views: int, seed: int = 0) -> dict[str, list[Image.Image]]:
    """`views` renders a held-out context of the concept (as the concept photos are placed),
    of the same without its ring and green knob (a red toy with yellow stripes, as a caption
    can describe it) and of other toys (random attributes; never the concept)."""
    rng = random.Random(seed)
    out = {"concept": [], "concept without its ring": [], "other toys": []}
    for context in EVAL_CONTEXTS:
        for _ in range(views):
            concept = place_concept(rng, context)
            out["concept"].append(render(concept))
            out["concept without its ring"].append(render(dataclasses.replace(concept, feature=None)))
            out["other toys"].append(render(sample_scene(rng, contexts=(context,), classes=("toy",))))
    return out


@torch.no_grad()
def vae_round_trip(vae, images: list[Image.Image]) -> list[Image.Image]:
    """Each image encoded to its latent mean and decoded: what the backbone's latents keep."""
    decoded = vae.decode(vae.encode(to_tensor(images, SIZE)).latent_dist.mean).sample.clamp(-1, 1)
    pixels = ((decoded.permute(0, 2, 3, 1) + 1) * 127.5).round().to(torch.uint8).numpy()
    return [Image.fromarray(p) for p in pixels]


def measure(bench: Bench, round_0: Model, views: int) -> pd.DataFrame:
    """One row a kind of image: mean IS, mean TS (the models' images), images, and the IS gain
    over the base model (on the same prompts) in round_0 stds."""
    base = bench.measure(None, "base", class_prompt=True, sets=("held-out",))["held-out"]
    trained = bench.measure(round_0, "round_0", sets=("held-out",))["held-out"]
    unit = trained["IS"].std()
    vae = bench.backbone.pipe.vae  # no DreamBooth trains the VAE
    kinds = {}
    for kind, images in world_renders(views).items():
        kinds[f"{kind}, rendered"] = images
        kinds[f"{kind}, through the VAE"] = vae_round_trip(vae, images)
    rows = {}
    for kind, images in kinds.items():
        labels = [f"{kind} {i}" for i in range(len(images))]
        rows[kind] = score_loaded(images, labels, [""] * len(images), bench.scorers, bench.cfg.score.batch_size,
                                  desc=kind)["IS"]
    asks_a_color = trained["template"].map(lambda t: any(f"a {c} {{token}}" in t for c in OTHER_COLORS))
    described = bench.sample(None, [t.format(token=DESCRIPTION, class_noun="{class_noun}") for t in bench.held_out],
                             bench.cfg.evaluate.images_per_prompt, bench.cfg.evaluate.seed, "described",
                             settings=bench.cfg.evaluate)[~asks_a_color]  # the same seeds as `base`, row by row
    described["TS"] = float("nan")  # scored against another text than the other rows' TS
    # No context at all: DreamBooth's own prompt, as many images as the held-out set.
    alone = {"base model, the class prompt alone": bench.own_prompt(None, "base_alone"),
             "round_0, the instance prompt alone": bench.own_prompt(round_0, "round_0_alone")}
    for scores in alone.values():
        scores["TS"] = float("nan")  # a prompt without a context: not the held-out TS
    models = {"base model (class prompt)": base, "base model (the concept described), plain prompts": described,
              "round_0": trained, "round_0, plain prompts": trained[~asks_a_color],
              "round_0, prompts asking another color": trained[asks_a_color], **alone}
    reference = {"round_0, plain prompts": base[~asks_a_color], "round_0, prompts asking another color": base[asks_a_color],
                 "base model (the concept described), plain prompts": base[~asks_a_color],
                 "round_0, the instance prompt alone": alone["base model, the class prompt alone"]}
    table = pd.DataFrame({kind: {"IS": s.mean(), "TS": float("nan"), "images": len(s)} for kind, s in rows.items()}
                         | {kind: {"IS": m["IS"].mean(), "TS": m["TS"].mean(), "images": len(m)}
                            for kind, m in models.items()}).T
    table["gain"] = [(table.loc[kind, "IS"] - reference.get(kind, base)["IS"].mean()) / unit for kind in table.index]
    table.attrs["unit"] = unit
    gain = (trained["IS"] - base["IS"]) / unit  # same prompts and seeds, row by row
    table.attrs["by_prompt"] = gain.groupby(trained["prompt"], sort=False).mean()
    return table


def main(argv: list[str] | None = None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--round-0", type=Path, required=True, help="models/round_0: the DreamBooth LoRA, or a full fine-tune's pipeline")
    parser.add_argument("--views", type=int, default=4, help="world renders per held-out context")
    parser.add_argument("--guidance-scale", type=float, help="sample the models at this guidance (evaluate's)")
    parser.add_argument("--steps", type=int, help="sample the models with this many steps (evaluate's)")
    parser.add_argument("--by-prompt", action="store_true", help="also print round_0's gain on each prompt")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(message)s")
    cfg = load_config(args.params)
    sampling = {k: v for k, v in (("guidance_scale", args.guidance_scale), ("steps", args.steps)) if v is not None}
    cfg = dataclasses.replace(cfg, evaluate=dataclasses.replace(cfg.evaluate, **sampling))
    with tempfile.TemporaryDirectory() as work:
        bench = Bench(cfg, Path(work))
        table = measure(bench, bench.round_0(args.round_0), args.views)
    print(f"held-out IS by kind of image; gain over the base model in round_0 stds "
          f"({table.attrs['unit']:.3f}); guidance {cfg.evaluate.guidance_scale:g}, {cfg.evaluate.steps} steps")
    print(table.to_string(na_rep="-", formatters={"IS": "{:.3f}".format, "TS": "{:.3f}".format,
                                                  "images": "{:.0f}".format, "gain": "{:+.3f}".format}))
    if args.by_prompt:
        print("round_0's gain by held-out prompt:")
        print(table.attrs["by_prompt"].to_string(float_format="{:+.3f}".format))
    return table


if __name__ == "__main__":
    main()
