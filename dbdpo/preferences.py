"""A round's preferences: winner/loser pairs (DreamBoothDPO, pair.mode=pairs) or every prompt's
ranked list (RankDPO, pair.mode=rank). The one place that knows which table each mode builds,
which files it writes, and which the DPO loss reads back. pandas only: the pair stage starts
without the model stack.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from dbdpo.artifacts import read_parquet
from dbdpo.config import FilterConfig, PairConfig
from dbdpo.pairs import build_pairs, ranked_lists, to_pickapic

PAIRS_FILE = "pairs.parquet"  # one row per pair (dbdpo.pairs.PAIR_COLUMNS)
# The same pairs in the Pick-a-Pic v2 layout, alone in a folder as a dataset's train split, so
# `datasets.load_dataset(folder)` and diffusers' train_diffusion_dpo.py read it as it is.
PICKAPIC_FILE = "pickapic/train.parquet"
RANKED_FILE = "ranked.parquet"  # one row per image, best first per prompt (dbdpo.pairs.RANKED_COLUMNS)

MODE_OF_LOSS = {"diffusion_dpo": "pairs", "rank_dpo": "rank"}  # dbdpo.validation keeps the two in step


@dataclass(frozen=True)
class Preferences:
    """mode: pairs | rank; table: the pairs or the ranked lists; summary: what was kept (counts),
    the round's DVC metric."""

    mode: str
    table: pd.DataFrame
    summary: dict[str, int]

    def ranked(self) -> list[tuple[str, list[str], list[float]]]:
        """rank mode: one (prompt, image paths best first, psi per image) per prompt, by prompt_id."""
        ordered = self.table.sort_values(["prompt_id", "rank"])
        return [(g["prompt"].iat[0], g["path"].to_list(), g["psi"].to_list())
                for _, g in ordered.groupby("prompt_id", sort=True)]


def build_preferences(scores: pd.DataFrame, pair: PairConfig, f: FilterConfig,
                      rewards: dict[str, float]) -> Preferences:
    """The round's preferences from its scores table (one row per image, raw scores).

    pairs: lambda-weighted winners, filtered and capped (dbdpo.pairs.build_pairs);
    rank: the `rewards` ensemble's ranked lists (dbdpo.pairs.ranked_lists; `f` unused).
    """
    if pair.mode == "rank":
        ranked = ranked_lists(scores, rewards, pair.normalize)
        summary = {"lists": int(ranked["prompt_id"].nunique()), "images_per_list": int(ranked["rank"].max())}
        return Preferences("rank", ranked, summary)
    pairs, pair_summary = build_pairs(scores, pair, f)
    return Preferences("pairs", pairs, pair_summary.as_metrics())


def write_preferences(prefs: Preferences, folder: Path) -> None:
    """The mode's files into `folder` (the pairs' Pick-a-Pic export reads every image)."""
    folder = Path(folder)
    if prefs.mode == "rank":
        prefs.table.to_parquet(folder / RANKED_FILE, index=False)
    else:
        prefs.table.to_parquet(folder / PAIRS_FILE, index=False)
        (folder / PICKAPIC_FILE).parent.mkdir()
        to_pickapic(prefs.table).to_parquet(folder / PICKAPIC_FILE, index=False)


def read_preferences(folder: Path, loss: str) -> Preferences:
    """What `loss` (dpo.loss) trains on, from a folder write_preferences wrote; the summary is
    not re-read (it is the pair stage's metric)."""
    mode = MODE_OF_LOSS[loss]
    if mode == "rank":
        table = read_parquet(Path(folder) / RANKED_FILE, ["prompt_id", "prompt", "path", "rank", "psi"])
    else:
        table = read_parquet(Path(folder) / PAIRS_FILE, ["winner_path", "loser_path", "prompt"])
    return Preferences(mode, table, {})
