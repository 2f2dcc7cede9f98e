"""The proving ground's data files: the concept photos and the prompt pools, from the world.

`scripts/make_world_data.py` writes them into data/ (committed); the functions are pure, so a
test can check that the committed files are exactly what they produce.

- Concept: `CONCEPT_VIEWS` photos of the concept toy, each on a different training context.
- Training pool: every template names a training context (`TRAIN_CONTEXTS`), in the words the
  world's captions use, plain or with an attribute the prompt asks for ("a purple sks toy in
  the desert": the trade-off between fidelity and the prompt that DPO has to balance).
- Evaluation prompts: DreamBooth's evaluation wording (Ruiz et al. 2023, Sec. 4.1) on the
  held-out contexts (`EVAL_CONTEXTS`), plain and with a color; no training prompt uses them.
"""

from __future__ import annotations

import random
from dataclasses import replace

from dbdpo.world.contexts import CONTEXTS, EVAL_CONTEXTS, TRAIN_CONTEXTS
from dbdpo.world.scenes import COLORS, CONCEPT, PATTERNS, SIZES, Scene

CONCEPT_VIEWS = 6
# Colors a prompt may ask for that the concept (red with yellow stripes) does not have.
OTHER_COLORS = tuple(c for c in COLORS if c not in (CONCEPT.color, CONCEPT.pattern_color))


def concept_views(n: int, seed: int = 0, contexts: tuple[str, ...] = TRAIN_CONTEXTS,
                  concept: Scene = CONCEPT) -> list[Scene]:
    """`n` photos of `concept` at varied size and place, on distinct `contexts` while they last.
    Every concept of the set (dbdpo.world.concepts) is drawn with the same seed, so all are
    photographed on the same contexts, sizes and places."""
    rng = random.Random(seed)
    order = rng.sample(contexts, len(contexts))
    return [place_concept(rng, order[i % len(order)], concept) for i in range(n)]


def place_concept(rng: random.Random, context: str, concept: Scene = CONCEPT) -> Scene:
    """`concept` on `context` as its photos show it: big (radius 0.24-0.32 of the image
    side), wherever it fits whole, with its own render seed."""
    radius = rng.uniform(0.24, 0.32)
    return replace(concept, context=context, radius=radius, x=rng.uniform(radius + 0.03, 0.97 - radius),
                   y=rng.uniform(radius + 0.03, 0.97 - radius), seed=rng.randrange(2**31))


def train_templates(seed: int = 0) -> list[str]:
    """The training prompt pool (210 templates), shuffled so that each round's consecutive
    slice mixes contexts and attribute kinds."""
    out = []
    for context in TRAIN_CONTEXTS:
        phrase = CONTEXTS[context].phrase
        out.append(f"a {{token}} {{class_noun}} {phrase}")
        out.append(f"a photo of a {{token}} {{class_noun}} {phrase}")
        out += [f"a {color} {{token}} {{class_noun}} {phrase}" for color in COLORS]
        out += [f"a {pattern} {{token}} {{class_noun}} {phrase}" for pattern in PATTERNS if pattern != "plain"]
        out += [f"a {size} {{token}} {{class_noun}} {phrase}" for size in SIZES]
        # one attribute combination per context, rotating through colors and patterns
        i = TRAIN_CONTEXTS.index(context)
        out.append(f"a {OTHER_COLORS[i % len(OTHER_COLORS)]} {PATTERNS[1 + i % 2]} {{token}} {{class_noun}} {phrase}")
    random.Random(seed).shuffle(out)
    return out


def eval_templates() -> list[str]:
    """DreamBooth-style evaluation prompts on the held-out contexts: each context plain, then
    each with a color the concept does not have (20 templates)."""
    plain = [f"a {{token}} {{class_noun}} {CONTEXTS[c].phrase}" for c in EVAL_CONTEXTS]
    colored = [f"a {OTHER_COLORS[i % len(OTHER_COLORS)]} {{token}} {{class_noun}} {CONTEXTS[c].phrase}"
               for i, c in enumerate(EVAL_CONTEXTS)]
    return plain + colored
