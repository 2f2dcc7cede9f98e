"""The world's contexts: 24 backgrounds that stay recognizable at 64 px, each with the words
captions and prompts use for it. Drawn at `SCALE` times the output size with PIL; each
drawer gets its own seeded RNG for texture details (leaves, stars, bricks).
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from dataclasses import dataclass

from PIL import ImageDraw

SIZE = 64  # output side, pixels
SCALE = 2  # supersampling factor: draw at 128 px, downsample to 64
_S = SCALE
_W = SIZE * SCALE

RGB = tuple[int, int, int]

def _lerp(a: RGB, b: RGB, t: float) -> RGB:
    return tuple(round(x + (y - x) * t) for x, y in zip(a, b))


def _vgrad(d: ImageDraw.ImageDraw, top: RGB, bottom: RGB, y0: float = 0.0, y1: float = 1.0) -> None:
    """Vertical gradient between rows y0 and y1 (fractions)."""
    a, b = round(y0 * _W), round(y1 * _W)
    for y in range(a, b):
        d.line([(0, y), (_W, y)], fill=_lerp(top, bottom, (y - a) / max(1, b - a - 1)))


def _dots(d, rng, n, color, r0, r1, y0=0.0, y1=1.0) -> None:
    for _ in range(n):
        r = rng.uniform(r0, r1) * _S
        x, y = rng.uniform(0, _W), rng.uniform(y0 * _W, y1 * _W)
        d.ellipse([x - r, y - r, x + r, y + r], fill=color)


def _snow(d, rng):
    _vgrad(d, (200, 210, 225), (225, 230, 240), 0, 0.45)
    _vgrad(d, (250, 250, 252), (225, 232, 240), 0.45, 1)
    _dots(d, rng, 40, (255, 255, 255), 0.7, 1.4, 0, 0.5)


def _beach(d, rng):
    _vgrad(d, (120, 185, 240), (175, 215, 245), 0, 0.3)
    _vgrad(d, (20, 90, 170), (40, 130, 190), 0.3, 0.45)
    _vgrad(d, (240, 220, 160), (220, 190, 130), 0.45, 1)


def _jungle(d, rng):
    d.rectangle([0, 0, _W, _W], fill=(15, 60, 25))
    for _ in range(6):
        x = rng.uniform(0, _W)
        d.rectangle([x, 0, x + 4 * _S, _W], fill=(80, 55, 30))
    for _ in range(45):
        x, y, r = rng.uniform(0, _W), rng.uniform(0, _W), rng.uniform(3, 7) * _S
        d.ellipse([x - r, y - r / 2, x + r, y + r / 2], fill=_lerp((40, 150, 40), (120, 200, 60), rng.random()))


def _cobblestone(d, rng):
    d.rectangle([0, 0, _W, _W], fill=(70, 70, 75))
    step = 8 * _S
    for row in range(_W // step + 1):
        for col in range(_W // step + 1):
            x = col * step + (step / 2 if row % 2 else 0)
            y = row * step
            g = rng.randint(120, 165)
            d.ellipse([x + 1, y + 1, x + step - 2, y + step - 2], fill=(g, g, g + 5))


def _pink_fabric(d, rng):
    for y in range(_W):
        t = 0.5 + 0.5 * math.sin(y / (5 * _S) + rng.random() * 0.05)
        d.line([(0, y), (_W, y)], fill=_lerp((250, 190, 215), (225, 130, 170), t))


def _wooden_floor(d, rng):
    plank = 10 * _S
    for i in range(_W // plank + 1):
        d.rectangle([i * plank, 0, (i + 1) * plank, _W], fill=_lerp((190, 140, 85), (160, 110, 60), rng.random()))
        d.line([(i * plank, 0), (i * plank, _W)], fill=(95, 60, 30), width=_S)


def _city(d, rng):
    _vgrad(d, (150, 165, 185), (200, 205, 215), 0, 1)
    x = 0.0
    while x < _W:
        w, h = rng.uniform(8, 16) * _S, rng.uniform(0.35, 0.85) * _W
        g = rng.randint(50, 90)
        d.rectangle([x, _W - h, x + w, _W], fill=(g, g, g + 10))
        for wy in range(int(_W - h) + 3 * _S, _W - 2 * _S, 5 * _S):
            for wx in range(int(x) + 2 * _S, int(x + w) - 2 * _S, 4 * _S):
                d.rectangle([wx, wy, wx + _S * 1.5, wy + _S * 2], fill=(245, 220, 110))
        x += w + _S


def _mountain(d, rng):
    _vgrad(d, (110, 170, 235), (190, 220, 245), 0, 0.7)
    d.rectangle([0, 0.7 * _W, _W, _W], fill=(70, 140, 60))
    for cx in (rng.uniform(0.1, 0.4), rng.uniform(0.55, 0.9)):
        peak, base = (cx * _W, 0.15 * _W), 0.75 * _W
        half = 0.4 * _W
        d.polygon([(peak[0] - half, base), peak, (peak[0] + half, base)], fill=(110, 105, 115))
        cap = 0.3
        d.polygon([(peak[0] - half * cap, peak[1] + (base - peak[1]) * cap), peak,
                   (peak[0] + half * cap, peak[1] + (base - peak[1]) * cap)], fill=(250, 250, 250))


def _blue_house(d, rng):
    _vgrad(d, (150, 200, 240), (210, 230, 245), 0, 0.75)
    d.rectangle([0, 0.75 * _W, _W, _W], fill=(80, 150, 70))
    x0 = rng.uniform(0.05, 0.35) * _W
    d.rectangle([x0, 0.35 * _W, x0 + 0.6 * _W, 0.8 * _W], fill=(40, 80, 200))
    d.polygon([(x0 - 4 * _S, 0.36 * _W), (x0 + 0.3 * _W, 0.1 * _W), (x0 + 0.6 * _W + 4 * _S, 0.36 * _W)],
              fill=(120, 40, 35))
    d.rectangle([x0 + 0.25 * _W, 0.58 * _W, x0 + 0.35 * _W, 0.8 * _W], fill=(240, 240, 240))


def _wheat_field(d, rng):
    _vgrad(d, (120, 180, 240), (190, 220, 245), 0, 0.35)
    d.rectangle([0, 0.35 * _W, _W, _W], fill=(200, 160, 50))
    for _ in range(90):
        x, y = rng.uniform(0, _W), rng.uniform(0.3 * _W, _W)
        d.line([(x, y), (x + rng.uniform(-2, 2) * _S, y + 7 * _S)], fill=(240, 205, 90), width=_S)


def _kitchen_table(d, rng):
    _vgrad(d, (240, 230, 205), (225, 210, 180), 0, 0.35)
    for i, y in enumerate(range(int(0.35 * _W), _W, 7 * _S)):
        d.rectangle([0, y, _W, y + 7 * _S], fill=(150, 90, 45) if i % 2 else (135, 80, 40))
        d.line([(0, y), (_W, y)], fill=(90, 50, 25), width=_S)


def _desert(d, rng):
    _vgrad(d, (250, 225, 150), (250, 200, 120), 0, 0.5)
    sx = rng.uniform(0.2, 0.8) * _W
    d.ellipse([sx - 6 * _S, 0.1 * _W, sx + 6 * _S, 0.1 * _W + 12 * _S], fill=(255, 250, 220))
    phase = rng.uniform(0, 6)
    for x in range(_W):
        top = 0.5 * _W + 6 * _S * math.sin(x / (9 * _S) + phase)
        d.line([(x, top), (x, _W)], fill=(225, 150, 70))


def _under_water(d, rng):
    _vgrad(d, (40, 170, 200), (10, 60, 120), 0, 1)
    for _ in range(14):
        r = rng.uniform(1, 3) * _S
        x, y = rng.uniform(0, _W), rng.uniform(0, _W)
        d.ellipse([x - r, y - r, x + r, y + r], outline=(210, 240, 255), width=_S)


def _night_sky(d, rng):
    _vgrad(d, (5, 10, 40), (25, 35, 90), 0, 1)
    _dots(d, rng, 35, (255, 255, 230), 0.4, 0.9)
    mx, my = rng.uniform(0.15, 0.85) * _W, rng.uniform(0.1, 0.3) * _W
    d.ellipse([mx - 6 * _S, my - 6 * _S, mx + 6 * _S, my + 6 * _S], fill=(250, 240, 170))
    d.ellipse([mx - 3 * _S, my - 8 * _S, mx + 8 * _S, my + 4 * _S], fill=(8, 14, 48))


def _brick_wall(d, rng):
    d.rectangle([0, 0, _W, _W], fill=(200, 195, 185))
    h, w = 6 * _S, 12 * _S
    for row in range(_W // h + 1):
        for col in range(-1, _W // w + 1):
            x = col * w + (w / 2 if row % 2 else 0)
            d.rectangle([x + _S, row * h + _S, x + w - _S, row * h + h - _S],
                        fill=_lerp((170, 60, 40), (140, 45, 30), rng.random()))


def _outer_space(d, rng):
    d.rectangle([0, 0, _W, _W], fill=(5, 5, 10))
    _dots(d, rng, 30, (255, 255, 255), 0.3, 0.7)
    px, py, r = rng.uniform(0.15, 0.85) * _W, rng.uniform(0.15, 0.4) * _W, 9 * _S
    d.ellipse([px - r, py - r, px + r, py + r], fill=(200, 110, 60))
    d.ellipse([px - r * 1.8, py - r * 0.35, px + r * 1.8, py + r * 0.35], outline=(230, 200, 150), width=_S)


def _sunset(d, rng):
    _vgrad(d, (90, 40, 120), (250, 120, 60), 0, 0.6)
    d.ellipse([0.35 * _W, 0.45 * _W, 0.65 * _W, 0.75 * _W], fill=(255, 200, 80))
    d.rectangle([0, 0.62 * _W, _W, _W], fill=(50, 25, 45))


def _grass_field(d, rng):
    _vgrad(d, (130, 190, 245), (200, 230, 250), 0, 0.3)
    d.rectangle([0, 0.3 * _W, _W, _W], fill=(70, 170, 50))
    for _ in range(80):
        x, y = rng.uniform(0, _W), rng.uniform(0.3 * _W, _W)
        d.line([(x, y), (x + rng.uniform(-1, 1) * _S, y - 4 * _S)], fill=(40, 120, 30), width=_S)


def _autumn_leaves(d, rng):
    _vgrad(d, (230, 200, 150), (200, 150, 100), 0, 1)
    d.rectangle([0.65 * _W, 0, 0.75 * _W, _W], fill=(90, 55, 30))
    for _ in range(60):
        x, y, r = rng.uniform(0, _W), rng.uniform(0, _W), rng.uniform(2, 4) * _S
        d.ellipse([x - r, y - r, x + r, y + r],
                  fill=rng.choice([(220, 90, 20), (190, 40, 25), (235, 180, 30), (170, 80, 30)]))


def _dirt_road(d, rng):
    d.rectangle([0, 0, _W, _W], fill=(90, 150, 60))
    d.polygon([(0.4 * _W, 0), (0.6 * _W, 0), (_W, _W), (0, _W)], fill=(150, 110, 70))
    _dots(d, rng, 25, (120, 85, 55), 0.5, 1.2, 0.2, 1)


def _white_rug(d, rng):
    d.rectangle([0, 0, _W, _W], fill=(235, 232, 225))
    for _ in range(220):
        x, y = rng.uniform(0, _W), rng.uniform(0, _W)
        g = rng.randint(205, 255)
        d.line([(x, y), (x + rng.uniform(-2, 2) * _S, y + 2 * _S)], fill=(g, g, g - 5), width=_S)


def _purple_rug(d, rng):
    d.rectangle([0, 0, _W, _W], fill=(95, 40, 130))
    step = 10 * _S
    for y in range(0, _W + step, step):
        for x in range(0, _W + step, step):
            d.polygon([(x, y - 3 * _S), (x + 3 * _S, y), (x, y + 3 * _S), (x - 3 * _S, y)], fill=(200, 160, 60))


def _water_surface(d, rng):
    _vgrad(d, (60, 130, 200), (30, 80, 160), 0, 1)
    for y in range(3 * _S, _W, 6 * _S):
        phase = rng.uniform(0, 6)
        pts = [(x, y + 1.5 * _S * math.sin(x / (4 * _S) + phase)) for x in range(0, _W + 1, _S * 2)]
        d.line(pts, fill=(170, 210, 245), width=_S)


def _sunflowers(d, rng):
    _vgrad(d, (130, 190, 245), (200, 230, 250), 0, 0.25)
    d.rectangle([0, 0.25 * _W, _W, _W], fill=(60, 150, 45))
    for _ in range(10):
        x, y, r = rng.uniform(0, _W), rng.uniform(0.25 * _W, _W), rng.uniform(3, 5) * _S
        d.ellipse([x - r, y - r, x + r, y + r], fill=(250, 205, 30))
        d.ellipse([x - r / 2.5, y - r / 2.5, x + r / 2.5, y + r / 2.5], fill=(90, 50, 20))


def _studio(d, rng):
    _vgrad(d, (230, 230, 225), (185, 190, 200), 0, 1)


@dataclass(frozen=True)
class Context:
    phrase: str  # how a caption places the object: "in the jungle"
    noun: str  # the context alone: "a jungle"
    draw: Callable[[ImageDraw.ImageDraw, random.Random], None]


# Worded as in the DreamBooth evaluation prompts (Ruiz et al. 2023, Sec. 4.1) where they
# have the context; the first ten are those prompts' contexts and are held out of training
# prompts (EVAL_CONTEXTS), the rest serve the training pool.
CONTEXTS: dict[str, Context] = {
    "jungle": Context("in the jungle", "a jungle", _jungle),
    "snow": Context("in the snow", "snow", _snow),
    "beach": Context("on the beach", "a beach", _beach),
    "cobblestone": Context("on a cobblestone street", "a cobblestone street", _cobblestone),
    "pink_fabric": Context("on top of pink fabric", "pink fabric", _pink_fabric),
    "wooden_floor": Context("on top of a wooden floor", "a wooden floor", _wooden_floor),
    "city": Context("with a city in the background", "a city", _city),
    "mountain": Context("with a mountain in the background", "a mountain", _mountain),
    "blue_house": Context("with a blue house in the background", "a blue house", _blue_house),
    "wheat_field": Context("with a wheat field in the background", "a wheat field", _wheat_field),
    "kitchen_table": Context("on a kitchen table", "a kitchen table", _kitchen_table),
    "desert": Context("in the desert", "a desert", _desert),
    "under_water": Context("under water", "water", _under_water),
    "night_sky": Context("under a night sky", "a night sky", _night_sky),
    "brick_wall": Context("in front of a brick wall", "a brick wall", _brick_wall),
    "outer_space": Context("in outer space", "outer space", _outer_space),
    "sunset": Context("at sunset", "a sunset", _sunset),
    "grass_field": Context("in a grass field", "a grass field", _grass_field),
    "autumn_leaves": Context("with a tree and autumn leaves in the background", "autumn leaves", _autumn_leaves),
    "dirt_road": Context("on top of a dirt road", "a dirt road", _dirt_road),
    "white_rug": Context("on top of a white rug", "a white rug", _white_rug),
    "purple_rug": Context("on top of a purple rug", "a purple rug", _purple_rug),
    "water_surface": Context("floating on top of water", "a water surface", _water_surface),
    "sunflowers": Context("on top of green grass with sunflowers around it", "sunflowers", _sunflowers),
}
EVAL_CONTEXTS = tuple(list(CONTEXTS)[:10])
TRAIN_CONTEXTS = tuple(list(CONTEXTS)[10:])
# The concept photos' backdrop: a plain studio, in no caption.
STUDIO = Context("in a studio", "a studio", _studio)
