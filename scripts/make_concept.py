"""Draw the embedded concept: a striped toy top (red/yellow body, blue ring, green knob).

Deterministic: `python scripts/make_concept.py` rewrites data/concept/*.png byte for byte.
Six 128 px views on different backgrounds, positions and sizes, so DreamBooth must bind the
object, not the scene, to the instance token.
"""

import math
import random
from pathlib import Path

from PIL import Image, ImageDraw

SIZE = 128
BACKGROUNDS = [
    ((230, 230, 220), (180, 190, 200)),  # grey studio
    ((120, 170, 90), (60, 110, 50)),     # grass
    ((200, 170, 120), (150, 110, 70)),   # wooden floor
    ((150, 200, 240), (240, 240, 255)),  # sky
    ((70, 70, 90), (30, 30, 40)),        # dark room
    ((240, 210, 210), (200, 120, 150)),  # pink fabric
]


def background(top, bottom) -> Image.Image:
    img = Image.new("RGB", (SIZE, SIZE))
    draw = ImageDraw.Draw(img)
    for y in range(SIZE):
        a = y / (SIZE - 1)
        draw.line([(0, y), (SIZE, y)], fill=tuple(round(t * (1 - a) + b * a) for t, b in zip(top, bottom)))
    return img


def draw_toy(img: Image.Image, cx: float, cy: float, r: float, tilt: float) -> None:
    draw = ImageDraw.Draw(img)
    # Body: alternating red/yellow wedges, the toy's signature.
    wedges = 8
    for i in range(wedges):
        start = math.degrees(tilt) + i * 360 / wedges
        color = (210, 30, 40) if i % 2 == 0 else (250, 210, 40)
        draw.pieslice([cx - r, cy - r, cx + r, cy + r], start, start + 360 / wedges, fill=color)
    ring = r * 0.55
    draw.ellipse([cx - ring, cy - ring, cx + ring, cy + ring], outline=(30, 60, 200), width=max(2, int(r / 6)))
    knob = r * 0.2
    draw.ellipse([cx - knob, cy - knob, cx + knob, cy + knob], fill=(40, 160, 60))


def main() -> None:
    rng = random.Random(0)
    out = Path(__file__).resolve().parent.parent / "data" / "concept"
    out.mkdir(parents=True, exist_ok=True)
    for i, (top, bottom) in enumerate(BACKGROUNDS):
        img = background(top, bottom)
        r = rng.uniform(28, 44)
        cx = rng.uniform(r + 4, SIZE - r - 4)
        cy = rng.uniform(r + 4, SIZE - r - 4)
        draw_toy(img, cx, cy, r, tilt=rng.uniform(0, math.pi))
        img.save(out / f"toy_{i:02d}.png", optimize=True)


if __name__ == "__main__":
    main()
