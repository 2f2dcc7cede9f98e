"""Write the proving ground's data files: data/concept/*.png (the default run's concept),
data/concepts/<name>/*.png (the concept set, dbdpo.world.concepts) and data/prompts/*.txt.

Deterministic: `python scripts/make_world_data.py` rewrites them byte for byte (a test writes
them to a scratch folder with `--out` and compares with the committed files).
"""

import argparse
from pathlib import Path

from dbdpo.world.concepts import CONCEPTS
from dbdpo.world.data import (
    CONCEPT_VIEWS,
    concept_views,
    eval_templates,
    train_templates,
)
from dbdpo.world.scenes import render

DATA = Path(__file__).resolve().parent.parent / "data"

TRAIN_HEADER = """# Training prompt pool of the proving ground (scripts/make_world_data.py): 210 prompts on the
# world's 14 training contexts, none of which an evaluation prompt uses. Round i takes its own
# consecutive slice of generate.num_prompts prompts.
"""
EVAL_HEADER = """# DreamBooth-style evaluation prompts (Ruiz et al. 2023, Sec. 4.1) on the world's 10 held-out
# contexts (scripts/make_world_data.py): each context plain, then with a color the concept lacks.
"""


def write_photos(folder: Path, views, stem: str) -> None:
    """The views' renders as folder/<stem>_NN.png, and nothing else there."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.png"):
        old.unlink()
    for i, view in enumerate(views):
        render(view).save(folder / f"{stem}_{i:02d}.png")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA, help="the data folder to write (default: the repository's)")
    data = parser.parse_args(argv).out
    write_photos(data / "concept", concept_views(CONCEPT_VIEWS), "toy")
    for name, c in CONCEPTS.items():
        write_photos(data / "concepts" / name, concept_views(CONCEPT_VIEWS, concept=c.scene), c.class_noun)
    prompts = data / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    (prompts / "train.txt").write_text(TRAIN_HEADER + "\n".join(train_templates()) + "\n")
    (prompts / "eval.txt").write_text(EVAL_HEADER + "\n".join(eval_templates()) + "\n")


if __name__ == "__main__":
    main()
