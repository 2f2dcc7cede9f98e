"""Every concept's trade-off figure of a several-concept project side by side, each under its
name: the README's picture of the test concepts.

    python scripts/compose_tradeoffs.py PROJECT --out docs/tradeoff_test_concepts.png

PROJECT is a project whose params.yaml lists `concepts` and whose `dvc repro` has run; each
concept's concepts/<name>/eval/tradeoff.png is read as its evaluate stage wrote it.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from dbdpo.params import load_config
from stages.layout import Layout

LABEL_HEIGHT = 30  # pixels above each figure for its concept's name


def compose(project: Path) -> Image.Image:
    names = list(load_config(project / "params.yaml").concepts)
    if not names:
        raise SystemExit(f"{project}/params.yaml lists no concepts")
    figures = []
    for name in names:
        path = project / Layout(name).eval / "tradeoff.png"
        if not path.is_file():
            raise SystemExit(f"{path} is missing: run `dvc repro` in {project}")
        figures.append(Image.open(path).convert("RGB"))
    width, height = max(f.width for f in figures), max(f.height for f in figures)
    sheet = Image.new("RGB", (width * len(figures), height + LABEL_HEIGHT), "white")
    draw, font = ImageDraw.Draw(sheet), ImageFont.load_default(size=20)
    for i, (name, figure) in enumerate(zip(names, figures)):
        sheet.paste(figure, (i * width, LABEL_HEIGHT))
        draw.text((i * width + width // 2, LABEL_HEIGHT // 2), name, fill="black", anchor="mm", font=font)
    return sheet


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("project", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    compose(args.project).save(args.out)


if __name__ == "__main__":
    main()
