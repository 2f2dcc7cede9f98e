"""Training prompt pools at the papers' scale, composed from templates.

The DreamBoothDPO authors sample thousands of concept-agnostic training prompts and give each
round its own part of them; the default pool of the proving ground (data/prompts/train.txt)
has 210, on the only contexts its tiny models know. For a real backbone, this composer writes
a pool of any size from styles x attributes x actions x contexts, for an object or a live
subject, deterministically (same arguments, same bytes), without duplicates, and without any
context that an evaluation prompt uses (the evaluation stays on held-out contexts).

Each line is a template with the {token} and {class_noun} placeholders, as every prompt file:
the TS prompt drops them ("a photo of a in a library"), the generation prompt fills them in.

    dbdpo prompts --class-noun dog --n 4000 --out data/prompts/train_dog.txt
"""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

from dbdpo.errors import DataError

LIVE_NOUNS = {"dog", "cat", "puppy", "kitten", "bird", "horse", "rabbit", "hamster", "person", "man", "woman",
              "boy", "girl", "baby", "child", "parrot", "fox", "bear", "monkey", "duck", "pig", "cow"}

STYLES = ("a photo of", "a close-up photo of", "a wide-angle photo of", "a blurry photo of", "a black and white photo of",
          "a watercolor painting of", "an oil painting of", "a pencil sketch of", "a 3D render of",
          "a polaroid photo of", "a cinematic still of", "a toy-camera photo of", "")
ATTRIBUTES = ("", "small", "large", "clean", "dusty", "old", "new", "glowing", "faded")
ACTIONS = {
    "object": ("", "next to a cup of coffee", "beside a stack of books", "half covered in sand",
               "lit by warm lamplight", "casting a long shadow", "in soft morning light", "surrounded by flowers",
               "next to a potted plant", "with raindrops on it", "seen from above"),
    "live": ("", "sleeping", "running", "sitting", "jumping", "yawning", "playing with a ball",
             "chasing a butterfly", "looking at the camera", "lying down", "next to a food bowl"),
}
# Prepositional contexts; none is an evaluation context of the DreamBooth sets
# (data/prompts/dreambooth_*.txt: jungle, snow, beach, cobblestone street, pink fabric, wooden
# floor, city, mountain, blue house, wheat field, autumn leaves, Eiffel Tower, water, milk,
# sunflowers, mirror, sidewalk, dirt road, white or purple rug; hats, scarves and outfits).
CONTEXTS = (
    "in a library", "on a kitchen counter", "in a sunlit living room", "on a park bench", "in a forest clearing",
    "on a wooden dock", "in a desert at sunset", "on a rooftop at night", "in a flower garden", "at a train station",
    "in a cozy cafe", "on an office desk", "in a bathroom sink", "on a stone wall", "in a pumpkin patch",
    "under a cherry blossom tree", "in a bamboo forest", "on a frozen lake", "in a rainy alley", "on a picnic blanket",
    "in front of a lighthouse", "in front of a red barn", "on a boat deck", "in a greenhouse", "on a balcony",
    "in a museum hall", "on a bookshelf", "in a lavender field", "at a campfire", "on a sand dune",
    "in a neon-lit arcade", "in a hot air balloon", "on a moss-covered rock", "in a vineyard", "on a windowsill",
    "in a subway car", "on a tennis court", "in an art studio", "at a farmers market", "on a snowboard slope",
    "in a candy shop", "on a chessboard", "in a space station", "on the moon", "in a medieval castle",
    "on a bridge at dusk", "in a tulip field", "in a laundromat", "on a ferris wheel", "in a treehouse",
    "on a basketball court", "in a bakery", "on a lily pad", "in a pine forest", "at a music festival",
    "on a stack of pillows", "in a canyon", "in a lighthouse", "on a marble table", "in a glass display case",
)


def article(word: str) -> str:
    return "an" if word[:1].lower() in "aeiou" else "a"


def compose(style: str, attribute: str, action: str, context: str) -> str:
    """One template: "[style] a [attribute] {token} {class_noun} [action] context"."""
    subject = " ".join(w for w in (attribute, "{token}", "{class_noun}") if w)
    return " ".join(w for w in (style, article(subject), subject, action, context) if w)


def eval_contexts(eval_templates: list[str]) -> set[str]:
    """What follows the subject in each evaluation template ("in the jungle", "on top of pink fabric")."""
    contexts = {t.split("{class_noun}", 1)[1].strip() for t in eval_templates if "{class_noun}" in t}
    return contexts - {""}  # "a red {token} {class_noun}": a property, no context


def subject_kind(class_noun: str) -> str:
    """live for a known animal or person noun (its prompts get actions such as "sleeping"), else object."""
    return "live" if class_noun.lower() in LIVE_NOUNS else "object"


def compose_pool(kind: str, n: int, eval_templates: list[str] = (), seed: int = 0) -> list[str]:
    """`n` distinct templates for a `kind` subject (object | live), in a seeded order, none
    on a context of `eval_templates`. Raises DataError when the combinations cannot give `n`."""
    held_out = {re.sub(r"\s+", " ", c.lower()) for c in eval_contexts(list(eval_templates))}
    contexts = [c for c in CONTEXTS if c.lower() not in held_out]
    templates = sorted({compose(*c) for c in itertools.product(STYLES, ATTRIBUTES, ACTIONS[kind], contexts)})
    if n > len(templates):
        raise DataError(f"asked for {n} prompts; the composer has {len(templates)} distinct {kind} prompts")
    random.Random(seed).shuffle(templates)  # rounds take consecutive slices: mix contexts and styles
    return templates[:n]


def write_pool(out: Path, kind: str, n: int, eval_files: list[Path], seed: int = 0,
               class_noun: str | None = None) -> Path:
    """compose_pool's `n` templates for a `kind` subject, none on a context of the evaluation
    prompt files `eval_files`, written to `out` atomically under a header that says how they
    were made (`dbdpo prompts`). Same arguments, same bytes."""
    from dbdpo.artifacts import atomic_file
    from dbdpo.data import load_prompt_templates

    held = [t for path in eval_files for t in load_prompt_templates(path)]
    pool = compose_pool(kind, n, held, seed)
    subject = f"a {class_noun} ({kind})" if class_noun else f"any {kind} subject"
    header = (f"# {len(pool)} training prompts for {subject}: dbdpo prompts --kind {kind} --n {n} --seed {seed}.\n"
              f"# No context of {', '.join(p.name for p in eval_files)}. Round i takes its own slice of "
              "generate.num_prompts.\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        tmp.write_text(header + "\n".join(pool) + "\n", encoding="utf-8")
    return out
