"""Preference pairs within a prompt: lambda-weighted winner, threshold or angle filter, caps.

DreamBoothDPO (arXiv 2505.20975), Sec. 3.2, with the convention of its official pair
collection (`--atan_min 20 --atan_max 70`), as written in docs/design.md:
  S_l(x)  = l * TS(x) + (1 - l) * IS(x)                          weighted score
  (w, l)  : same prompt, S_l(w) > S_l(l)                         winner / loser
  phi     = degrees(atan2(dIS, dTS)), dIS = IS(w)-IS(l), dTS = TS(w)-TS(l)
  keep    : center - angle <= phi <= center + angle,  center = degrees(atan2(1-l, l))
            (0 deg = pure prompt alignment, 90 deg = pure fidelity; outside [0, 90] the
            winner is worse on one metric, the trade-off pairs the filter exists to drop)
IS/TS are normalized per round (`pair.normalize`) before all of this.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from dbdpo.config import FilterConfig, PairConfig
from dbdpo.errors import PairingError

log = logging.getLogger(__name__)

PAIR_COLUMNS = [
    "prompt_id", "prompt", "winner_id", "loser_id", "winner_path", "loser_path",
    "IS_w", "IS_l", "TS_w", "TS_l", "d_IS", "d_TS", "d_S", "angle", "norm",
]


def normalize(values: np.ndarray, method: str) -> np.ndarray:
    """Per-round normalization before pairing: zscore (population std), minmax, or none.

    A constant column maps to zeros (no preference signal) rather than dividing by zero.
    """
    values = np.asarray(values, dtype=np.float64)
    if method == "none":
        return values
    if method == "zscore":
        std = values.std()
        return (values - values.mean()) / std if std > 0 else np.zeros_like(values)
    if method == "minmax":
        span = values.max() - values.min()
        return (values - values.min()) / span if span > 0 else np.zeros_like(values)
    raise ValueError(f"unknown normalization {method!r}: expected zscore | minmax | none")


@dataclass(frozen=True)
class PairSummary:
    candidates: int  # within-prompt pairs with S(w) != S(l)
    ties: int  # pairs dropped because S(w) == S(l)
    kept_by_filter: int
    kept_after_prompt_cap: int
    kept: int  # final count, after pair.max_total
    # the filter kept every candidate: it filtered nothing (a threshold of 0 keeps every pair,
    # since the winner is the one with the higher S), so it compares as no filter
    filter_kept_every_candidate: bool = False

    def as_metrics(self) -> dict[str, int | bool]:
        return dict(self.__dict__)


def angle_window(lam: float, f: FilterConfig) -> tuple[float, float]:
    """[lo, hi] in degrees: explicit `angle_min/max`, else center(lambda) +- `angle`."""
    if f.angle_min is not None and f.angle_max is not None:
        return f.angle_min, f.angle_max
    center = math.degrees(math.atan2(1.0 - lam, lam))  # direction of (dTS, dIS) = (l, 1-l)
    return center - f.angle, center + f.angle


def candidate_pairs(scores: pd.DataFrame, lam: float, method: str) -> tuple[pd.DataFrame, int]:
    """Every within-prompt pair oriented winner-first by S_lambda; returns (pairs, ties).

    `scores` needs image_id, prompt_id, prompt, path, IS, TS (raw); deltas use the
    normalized scores, the IS_w/IS_l/TS_w/TS_l columns keep the raw ones for reporting.
    """
    is_n = normalize(scores["IS"].to_numpy(), method)
    ts_n = normalize(scores["TS"].to_numpy(), method)
    s = lam * ts_n + (1.0 - lam) * is_n
    rows, ties = [], 0
    for _, group in scores.groupby("prompt_id", sort=True):
        for a, b in itertools.combinations(group.index.to_list(), 2):
            ia, ib = scores.index.get_loc(a), scores.index.get_loc(b)
            if s[ia] == s[ib]:
                ties += 1
                continue
            w, l = (ia, ib) if s[ia] > s[ib] else (ib, ia)
            d_is, d_ts = is_n[w] - is_n[l], ts_n[w] - ts_n[l]
            rows.append(dict(
                prompt_id=int(scores["prompt_id"].iat[w]), prompt=scores["prompt"].iat[w],
                winner_id=scores["image_id"].iat[w], loser_id=scores["image_id"].iat[l],
                winner_path=scores["path"].iat[w], loser_path=scores["path"].iat[l],
                IS_w=scores["IS"].iat[w], IS_l=scores["IS"].iat[l],
                TS_w=scores["TS"].iat[w], TS_l=scores["TS"].iat[l],
                d_IS=d_is, d_TS=d_ts, d_S=s[w] - s[l],
                angle=math.degrees(math.atan2(d_is, d_ts)), norm=math.hypot(d_is, d_ts),
            ))
    return pd.DataFrame(rows, columns=PAIR_COLUMNS), ties


def filter_mask(pairs: pd.DataFrame, lam: float, f: FilterConfig) -> np.ndarray:
    """Boolean keep-mask of the configured filter (none | threshold | angle)."""
    if f.kind == "none":
        return np.ones(len(pairs), dtype=bool)
    if f.kind == "threshold":
        return (pairs["d_S"] > f.threshold).to_numpy()
    lo, hi = angle_window(lam, f)
    angle = pairs["angle"].to_numpy()
    return (angle >= lo) & (angle <= hi) & (pairs["norm"].to_numpy() >= f.min_norm)


def equal_budget_threshold(scores: pd.DataFrame, pair: PairConfig, f: FilterConfig) -> float:
    """The filter.threshold that keeps as many of `scores`' candidate pairs as the filter `f`
    keeps (the top ones by d_S): a comparison of two filters at one pair budget, so that it
    measures which pairs they keep, not how many (a threshold of 0 keeps every candidate)."""
    candidates, _ = candidate_pairs(scores, pair.lambda_, pair.normalize)
    keep = int(filter_mask(candidates, pair.lambda_, f).sum())
    d_s = np.sort(candidates["d_S"].to_numpy())[::-1]
    if keep >= len(d_s):
        return 0.0  # every candidate has d_S > 0
    if keep == 0:
        return float(d_s[0])
    return float((d_s[keep - 1] + d_s[keep]) / 2)


def cap(pairs: pd.DataFrame, max_per_prompt: int, max_total: int, seed: int) -> tuple[pd.DataFrame, int]:
    """Uniform seeded subsample: at most `max_per_prompt` per prompt, then `max_total` overall."""
    rng = np.random.default_rng(seed)
    per_prompt = [
        g.iloc[np.sort(rng.choice(len(g), size=min(len(g), max_per_prompt), replace=False))]
        for _, g in pairs.groupby("prompt_id", sort=True)
    ]
    capped = pd.concat(per_prompt) if per_prompt else pairs
    after_prompt_cap = len(capped)
    if len(capped) > max_total:
        capped = capped.iloc[np.sort(rng.choice(len(capped), size=max_total, replace=False))]
    return capped.reset_index(drop=True), after_prompt_cap


def build_pairs(scores: pd.DataFrame, pair: PairConfig, f: FilterConfig) -> tuple[pd.DataFrame, PairSummary]:
    """The whole pairing step; raises PairingError when nothing survives."""
    candidates, ties = candidate_pairs(scores, pair.lambda_, pair.normalize)
    kept = candidates[filter_mask(candidates, pair.lambda_, f)]
    final, after_prompt_cap = cap(kept, pair.max_per_prompt, pair.max_total, pair.seed)
    summary = PairSummary(len(candidates), ties, len(kept), after_prompt_cap, len(final),
                          filter_kept_every_candidate=f.kind != "none" and len(kept) == len(candidates) > 0)
    if summary.filter_kept_every_candidate:
        log.warning("filter.kind=%s kept every one of the %d candidate pairs: it filters nothing here",
                    f.kind, len(candidates))
    if len(final) == 0:
        hint = {
            "angle": "widen filter.angle (or filter.angle_min/angle_max), lower filter.min_norm",
            "threshold": "lower filter.threshold",
            "none": "raise generate.images_per_prompt (every pair was a tie)",
        }[f.kind]
        raise PairingError(
            f"no preference pairs left: {summary.candidates} candidates ({ties} ties dropped), "
            f"{summary.kept_by_filter} kept by filter.kind={f.kind}. To keep more: {hint}."
        )
    return final, summary


def to_pickapic(pairs: pd.DataFrame) -> pd.DataFrame:
    """Pick-a-Pic v2 layout (jpg_0, jpg_1, label_0, caption), readable by diffusers' DPO script.

    jpg_0 is the winner (label_0 = 1); the caption is the prompt with the instance token.
    """
    def read(path: str) -> bytes:
        with open(path, "rb") as f:
            return f.read()

    return pd.DataFrame({
        "jpg_0": [read(p) for p in pairs["winner_path"]],
        "jpg_1": [read(p) for p in pairs["loser_path"]],
        "label_0": np.ones(len(pairs)),
        "caption": pairs["prompt"].to_list(),
    })


RANKED_COLUMNS = ["prompt_id", "prompt", "image_id", "path", "rank", "psi", "ensemble"]


def ranked_lists(scores: pd.DataFrame, rewards: dict[str, float], method: str) -> pd.DataFrame:
    """RankDPO's ranked lists (Karthik et al. 2024, Sec. 3.2): every prompt's K images, best first.

    ensemble = sum_r w_r * normalize(score_r) / sum_r w_r (normalized per round, `method`);
    rank 1 = highest ensemble, ties broken by image_id. psi_i = sum_r w_r * (the fraction of the
    prompt's other images that reward r ranks i strictly above) / sum_r w_r: the ensemble's
    weighted preference (Algorithm 1; a tie wins nothing), so the weights shape the loss's
    targets, not only the order. Equal weights give the plain win count over rewards.
    """
    missing = [r for r in rewards if r not in scores.columns]
    if missing:
        raise PairingError(f"score.rewards names {missing}, which scores.parquet lacks (has: "
                           f"{', '.join(c for c in scores.columns if c not in ('image_id', 'prompt_id', 'prompt', 'path'))})")
    total = sum(rewards.values())
    frame = scores[["prompt_id", "prompt", "image_id", "path"]].copy()
    frame["ensemble"] = sum(w * normalize(scores[r].to_numpy(), method) for r, w in rewards.items()) / total
    psi = np.zeros(len(scores))
    for _, group in scores.groupby("prompt_id", sort=True):
        rows = scores.index.get_indexer(group.index)
        if len(rows) < 2:
            raise PairingError(f"prompt {int(group['prompt_id'].iat[0])} has one image: RankDPO needs K >= 2")
        for r, weight in rewards.items():
            values = scores[r].to_numpy()[rows]
            wins = (values[:, None] > values[None, :]).sum(1)
            psi[rows] += weight * wins / (total * (len(rows) - 1))
    frame["psi"] = psi
    frame = frame.sort_values(["prompt_id", "ensemble", "image_id"], ascending=[True, False, True])
    frame["rank"] = frame.groupby("prompt_id").cumcount() + 1
    return frame[RANKED_COLUMNS].reset_index(drop=True)
