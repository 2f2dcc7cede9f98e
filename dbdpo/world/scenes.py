"""The proving ground's world: seeded 64x64 scenes of one object on a context, with captions.

No real CLIP or SD weights can be downloaded where dbdpo is developed and tested, so the
default run lives in this closed world, in which every model (the world backbone, the world
CLIP scorer) is trained for real (docs/proving_ground.md). A scene is one object of a class
(toy, ball, cup, car, dog) with instance attributes (body color, pattern and its color,
size, position) on one of 24 contexts that stay recognizable at 64 px. Captions come at
several granularities ("a red striped toy on the beach", "a toy on the beach", "a beach",
"a on the beach"), so a model trained on them learns the object words, the context words,
and the "a in the jungle" form that TS is scored against.

A concept is one object instance with a feature no sampled scene has (`FEATURES`: the
default toy top's blue ring and green knob, a ball's band, a dog's collar, ...): the base model
cannot draw it from any caption, so DreamBooth has something to learn and IS something to
measure. `CONCEPT` is the default run's; dbdpo.world.concepts holds the set the claims are
measured on.

Everything is drawn with PIL at twice the size and downsampled (anti-aliased edges);
`render` is a pure function of the scene, so the same seed gives the same pixels.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageChops, ImageDraw

from dbdpo.world.contexts import CONTEXTS, RGB, SCALE, SIZE, STUDIO

_W = SIZE * SCALE
COLORS: dict[str, RGB] = {
    "red": (205, 35, 40), "orange": (240, 135, 25), "yellow": (245, 215, 40), "green": (40, 165, 60),
    "blue": (35, 75, 215), "purple": (135, 50, 175), "white": (245, 245, 245), "black": (25, 25, 30),
}
PATTERNS = ("plain", "striped", "dotted")
CLASSES = ("toy", "ball", "cup", "car", "dog")
SIZES = ("small", "big")
RING_BLUE: RGB = (30, 60, 200)  # the default concept's ring, a shade no caption's "blue" draws
KNOB_GREEN: RGB = (40, 160, 60)
# What a concept may have that no sampled object has, and the classes each is drawn on:
# ring (and a green knob) on a top; band: a vertical band through a ball; star: a mark on the
# body; collar: a dog's; ears: a dog's in the feature color; wheels: colored hubs; roof: a
# light bar on a car's cabin; handle: a cup's in the feature color.
FEATURES = {"ring": ("toy",), "band": ("ball",), "star": ("ball", "cup", "toy"), "collar": ("dog",),
            "ears": ("dog",), "wheels": ("car",), "roof": ("car",), "handle": ("cup",)}


@dataclass(frozen=True)
class Scene:
    """One object on one context. Sizes and positions are fractions of the image side."""

    context: str
    object_class: str
    color: str
    pattern: str
    pattern_color: str
    size: str
    radius: float  # object half-extent, fraction of the side
    x: float  # object center, fraction of the side
    y: float
    feature: str | None = None  # a concept's own part (FEATURES): never sampled
    feature_color: RGB = RING_BLUE
    seed: int = 0  # texture details of the context (leaf positions, stars, ...)


# The default concept: a red toy top with yellow stripes, a blue ring and a green knob.
CONCEPT = Scene(context="studio", object_class="toy", color="red", pattern="striped", pattern_color="yellow",
                size="big", radius=0.3, x=0.5, y=0.5, feature="ring")


# --- objects ----------------------------------------------------------------------------------

def _fill_pattern(img: Image.Image, mask: Image.Image, scene: Scene, box: tuple[float, ...]) -> None:
    """Paint the body color and the pattern (stripes or dots) inside `mask`."""
    layer = Image.new("RGB", img.size, COLORS[scene.color])
    d = ImageDraw.Draw(layer)
    x0, y0, x1, y1 = box
    second = COLORS[scene.pattern_color]
    if scene.pattern == "striped":
        band = max(2, (y1 - y0) / 6)
        y = y0
        i = 0
        while y < y1:
            if i % 2:
                d.rectangle([x0, y, x1, y + band], fill=second)
            y, i = y + band, i + 1
    elif scene.pattern == "dotted":
        r = max(1.5, (x1 - x0) / 14)
        for gy in range(4):
            for gx in range(4):
                cx = x0 + (gx + 0.5 + 0.5 * (gy % 2)) * (x1 - x0) / 4.5
                cy = y0 + (gy + 0.5) * (y1 - y0) / 4
                d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=second)
    img.paste(layer, mask=mask)


def _draw_object(img: Image.Image, scene: Scene) -> None:
    r = scene.radius * _W
    cx, cy = scene.x * _W, scene.y * _W
    mask = Image.new("L", img.size, 0)
    m = ImageDraw.Draw(mask)
    d = ImageDraw.Draw(img)
    dark = (30, 30, 30)
    box = (cx - r, cy - r, cx + r, cy + r)
    kind = scene.object_class
    if kind == "toy":  # a spinning top, side view: dome, cone to the tip, stem
        m.pieslice([cx - r, cy - 0.8 * r, cx + r, cy + 0.4 * r], 180, 360, fill=255)
        m.polygon([(cx - r, cy - 0.2 * r), (cx + r, cy - 0.2 * r), (cx, cy + r)], fill=255)
        _fill_pattern(img, mask, scene, box)
        if scene.feature == "ring":
            d.line([(cx - 0.95 * r, cy - 0.2 * r), (cx + 0.95 * r, cy - 0.2 * r)], fill=scene.feature_color,
                   width=max(2, int(r / 5)))
        stem = KNOB_GREEN if scene.feature == "ring" else dark
        d.rectangle([cx - 0.12 * r, cy - r, cx + 0.12 * r, cy - 0.75 * r], fill=stem)
    elif kind == "ball":
        m.ellipse(box, fill=255)
        _fill_pattern(img, mask, scene, box)
        if scene.feature == "band":  # clipped to the ball's outline
            band = Image.new("L", img.size, 0)
            ImageDraw.Draw(band).rectangle([cx - 0.2 * r, cy - r, cx + 0.2 * r, cy + r], fill=255)
            img.paste(scene.feature_color, mask=ImageChops.multiply(mask, band))
        d.ellipse([cx - 0.55 * r, cy - 0.6 * r, cx - 0.25 * r, cy - 0.3 * r], fill=(255, 255, 255))
    elif kind == "cup":  # body, dark rim, handle on the right
        body = (cx - 0.7 * r, cy - 0.7 * r, cx + 0.5 * r, cy + 0.8 * r)
        handle = scene.feature_color if scene.feature == "handle" else COLORS[scene.color]
        d.ellipse([cx + 0.25 * r, cy - 0.4 * r, cx + r, cy + 0.4 * r], outline=handle,
                  width=max(2, int(r / (3 if scene.feature == "handle" else 5))))
        m.polygon([(body[0], body[1]), (body[2], body[1]), (body[2] - 0.1 * r, body[3]), (body[0] + 0.1 * r, body[3])],
                  fill=255)
        _fill_pattern(img, mask, scene, body)
        d.ellipse([body[0], body[1] - 0.12 * r, body[2], body[1] + 0.12 * r], fill=dark)
    elif kind == "car":  # body, cabin, two wheels
        m.rectangle([cx - r, cy - 0.15 * r, cx + r, cy + 0.45 * r], fill=255)
        m.polygon([(cx - 0.55 * r, cy - 0.15 * r), (cx - 0.35 * r, cy - 0.6 * r), (cx + 0.35 * r, cy - 0.6 * r),
                   (cx + 0.6 * r, cy - 0.15 * r)], fill=255)
        _fill_pattern(img, mask, scene, (cx - r, cy - 0.6 * r, cx + r, cy + 0.45 * r))
        d.polygon([(cx - 0.4 * r, cy - 0.2 * r), (cx - 0.28 * r, cy - 0.5 * r), (cx + 0.3 * r, cy - 0.5 * r),
                   (cx + 0.45 * r, cy - 0.2 * r)], fill=(180, 220, 240))
        for wx in (cx - 0.55 * r, cx + 0.55 * r):
            d.ellipse([wx - 0.28 * r, cy + 0.2 * r, wx + 0.28 * r, cy + 0.76 * r], fill=dark)
            if scene.feature == "wheels":
                d.ellipse([wx - 0.16 * r, cy + 0.32 * r, wx + 0.16 * r, cy + 0.64 * r], fill=scene.feature_color)
        if scene.feature == "roof":
            d.rectangle([cx - 0.4 * r, cy - 0.8 * r, cx + 0.4 * r, cy - 0.6 * r], fill=scene.feature_color)
    elif kind == "dog":  # body, head, ears, legs, tail
        for lx in (cx - 0.6 * r, cx - 0.3 * r, cx + 0.2 * r, cx + 0.5 * r):
            m.rectangle([lx - 0.09 * r, cy, lx + 0.09 * r, cy + 0.75 * r], fill=255)
        m.ellipse([cx - 0.85 * r, cy - 0.35 * r, cx + 0.65 * r, cy + 0.35 * r], fill=255)
        m.ellipse([cx + 0.35 * r, cy - 0.85 * r, cx + r, cy - 0.2 * r], fill=255)
        m.line([(cx - 0.8 * r, cy - 0.1 * r), (cx - r, cy - 0.6 * r)], fill=255, width=max(2, int(r / 6)))
        _fill_pattern(img, mask, scene, box)
        if scene.feature == "ears":  # larger than a sampled dog's, in the feature color
            d.polygon([(cx + 0.36 * r, cy - 0.6 * r), (cx + 0.5 * r, cy - 1.05 * r), (cx + 0.68 * r, cy - 0.62 * r)],
                      fill=scene.feature_color)
        else:
            d.polygon([(cx + 0.42 * r, cy - 0.7 * r), (cx + 0.55 * r, cy - r), (cx + 0.62 * r, cy - 0.68 * r)],
                      fill=dark)
        if scene.feature == "collar":
            d.line([(cx + 0.3 * r, cy - 0.45 * r), (cx + 0.62 * r, cy - 0.12 * r)], fill=scene.feature_color,
                   width=max(2, int(r / 5)))
        d.ellipse([cx + 0.72 * r, cy - 0.62 * r, cx + 0.82 * r, cy - 0.52 * r], fill=dark)
    else:
        raise ValueError(f"unknown object class {kind!r}: expected one of {', '.join(CLASSES)}")
    if scene.feature == "star":  # a four-point star on the body's center
        s = 0.38 * r
        d.polygon([(cx, cy - s), (cx + 0.3 * s, cy - 0.3 * s), (cx + s, cy), (cx + 0.3 * s, cy + 0.3 * s),
                   (cx, cy + s), (cx - 0.3 * s, cy + 0.3 * s), (cx - s, cy), (cx - 0.3 * s, cy - 0.3 * s)],
                  fill=scene.feature_color)


def _draw_context(scene: Scene) -> Image.Image:
    """The scene's context alone, at the drawing size (_W)."""
    context = STUDIO if scene.context == "studio" else CONTEXTS[scene.context]
    img = Image.new("RGB", (_W, _W))
    context.draw(ImageDraw.Draw(img), random.Random(scene.seed))
    return img


def render(scene: Scene) -> Image.Image:
    """The scene as a 64x64 RGB image (a pure function of `scene`)."""
    img = _draw_context(scene)
    _draw_object(img, scene)
    return img.resize((SIZE, SIZE), Image.Resampling.LANCZOS)


def object_mask(scene: Scene) -> np.ndarray:
    """(_W, _W) bool, at the drawing size (twice the image's side): the pixels the object
    changes, its exact silhouette (a masked DreamBooth loss's mask: bench/claims.py's MaskedLoss)."""
    context = _draw_context(scene)
    drawn = context.copy()
    _draw_object(drawn, scene)
    return np.asarray(ImageChops.difference(drawn, context)).any(axis=-1)


# --- sampling and captions ---------------------------------------------------------------------

def sample_scene(rng: random.Random, contexts: tuple[str, ...] = tuple(CONTEXTS),
                 classes: tuple[str, ...] = CLASSES) -> Scene:
    """A random scene; never a concept (no sampled object has a concept's feature)."""
    color, pattern_color = rng.sample(sorted(COLORS), 2)
    size = rng.choice(SIZES)
    radius = rng.uniform(0.13, 0.19) if size == "small" else rng.uniform(0.24, 0.32)
    return Scene(
        context=rng.choice(contexts), object_class=rng.choice(classes), color=color,
        pattern=rng.choice(PATTERNS), pattern_color=pattern_color, size=size, radius=radius,
        x=rng.uniform(radius + 0.03, 0.97 - radius), y=rng.uniform(radius + 0.03, 0.97 - radius),
        seed=rng.randrange(2**31),
    )


def describe(scene: Scene, with_pattern: bool = True) -> str:
    """The object with its attributes: "red striped toy", "red toy"."""
    pattern = f" {scene.pattern}" if with_pattern and scene.pattern != "plain" else ""
    return f"{scene.color}{pattern} {scene.object_class}"


def captions(scene: Scene) -> list[str]:
    """Every caption of the scene, from the most to the least specific."""
    phrase = CONTEXTS[scene.context].phrase
    return [
        f"a {scene.size} {describe(scene)} {phrase}",
        f"a photo of a {describe(scene)} {phrase}",
        f"a {describe(scene, with_pattern=False)} {phrase}",
        f"a {scene.object_class} {phrase}",
        f"a photo of a {scene.object_class} {phrase}",
        f"a {describe(scene)}",
        f"a {scene.object_class}",
        CONTEXTS[scene.context].noun,
        f"a {phrase}",  # the TS form with token and class removed ("a in the jungle" style)
    ]


def random_caption(scene: Scene, rng: random.Random) -> str:
    return rng.choice(captions(scene))
