"""Write the proving ground's data files: data/concept/*.png and data/prompts/*.txt.

Deterministic: `python scripts/make_world_data.py` rewrites them byte for byte (a test writes
them to a scratch folder with `--out` and compares with the committed files).
"""

import argparse
from pathlib import Path

from dbdpo.world import render
from dbdpo.world_data import (
    CONCEPT_VIEWS,
    concept_views,
    eval_templates,
    train_templates,
)

DATA = Path(__file__).resolve().parent.parent / "data"

TRAIN_HEADER = """# Training prompt pool of the proving ground (scripts/make_world_data.py): 210 prompts on the
# world's 14 training contexts, none of which an evaluation prompt uses. Round i takes its own
# consecutive slice of generate.num_prompts prompts.
"""
EVAL_HEADER = """# DreamBooth-style evaluation prompts (Ruiz et al. 2023, Sec. 4.1) on the world's 10 held-out
# contexts (scripts/make_world_data.py): each context plain, then with a color the concept lacks.
"""


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=DATA, help="the data folder to write (default: the repository's)")
    data = parser.parse_args(argv).out
    concept = data / "concept"
    concept.mkdir(parents=True, exist_ok=True)
    for old in concept.glob("*.png"):
        old.unlink()
    for i, view in enumerate(concept_views(CONCEPT_VIEWS)):
        render(view).save(concept / f"toy_{i:02d}.png")
    prompts = data / "prompts"
    prompts.mkdir(parents=True, exist_ok=True)
    (prompts / "train.txt").write_text(TRAIN_HEADER + "\n".join(train_templates()) + "\n")
    (prompts / "eval.txt").write_text(EVAL_HEADER + "\n".join(eval_templates()) + "\n")


if __name__ == "__main__":
    main()
