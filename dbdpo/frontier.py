"""The baseline frontier: how far each round lands beyond what plain DreamBooth reaches.

DreamBoothDPO's headline (Ayupov et al., Sec. 4, the IS-TS trade-off figures) is that its rounds
land beyond the Pareto frontier of the baselines. A point on that frontier is a knob anyone
already had: here round 0 (the DreamBooth model) sampled on the evaluation prompts and seeds
with its LoRA at other scales and at other guidance scales, and DreamBooth stopped early (the
same run's LoRA after a fraction of its steps). The frontier is the upper-right
hull of those points and round 0 itself in the (TS, IS) plane, in round_0 stds. It is convex
because a mixture of two baselines (each prompt sampled by one or the other) reaches every
point between them, and it extends left and down because a worse score is always reachable.
A round's `beyond_frontier` is its signed distance from that hull: positive when no baseline
knob, nor any mixture of them, reaches it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from dbdpo.backbones import Backbone
from dbdpo.config import ConceptConfig, EvaluateConfig, FrontierConfig
from dbdpo.errors import StaleInputError
from dbdpo.evaluation import RoundModel, paired_gains, sample_and_score
from dbdpo.lora import LoraState, scaled
from dbdpo.scoring import Scorer


@dataclass(frozen=True)
class BaselinePoint:
    """Round 0 under one knob: its LoRA at `lora_scale`, sampled at `guidance_scale`; or, with
    `early_stop`, DreamBooth's LoRA after fewer steps in place of round 0's."""
    name: str  # e.g. lora_scale_0.5, guidance_3, steps_150
    lora_scale: float
    guidance_scale: float
    early_stop: LoraState | None = field(default=None, compare=False, repr=False)

    def lora(self, round_0: LoraState) -> LoraState:
        """This point's LoRA: round 0's (or the early stop's) at this point's scale."""
        return scaled(round_0 if self.early_stop is None else self.early_stop, self.lora_scale)

    def sampling(self, cfg: EvaluateConfig) -> EvaluateConfig:
        """evaluate's sampling settings at this point's guidance."""
        return dataclasses.replace(cfg, guidance_scale=self.guidance_scale)


def baseline_points(cfg: FrontierConfig, guidance_scale: float, has_lora: bool,
                    early_stops: dict[str, LoraState] | None = None) -> list[BaselinePoint]:
    """One point per knob value, the other knobs at round 0's own (LoRA scale 1, evaluate's
    guidance, every step), then one per early stop ({"steps_<s>": LoRA}, the finetune stage's
    models/early_stops). A round 0 with no LoRA (finetune.method: full) has no LoRA scale to
    turn and keeps no early stops."""
    scales = [BaselinePoint(f"lora_scale_{s:g}", s, guidance_scale) for s in cfg.lora_scales] if has_lora else []
    stops = [BaselinePoint(name, 1.0, guidance_scale, lora) for name, lora in (early_stops or {}).items()]
    return scales + [BaselinePoint(f"guidance_{g:g}", 1.0, g) for g in cfg.guidance_scales] + stops


def sample_baselines(backbone: Backbone, round_0: LoraState, points: list[BaselinePoint], templates: list[str],
                     concept: ConceptConfig, cfg: EvaluateConfig, scorers: list[Scorer], image_dir: Path | None,
                     score_batch_size: int) -> pd.DataFrame:
    """Every point's images on evaluate's prompts and seeds, scored (one row per image, the
    point's name in `round`), so that each is paired image by image with round 0's."""
    frames = [pd.DataFrame({"round": pd.Series(dtype=str), "prompt_id": pd.Series(dtype=int),
                            "seed": pd.Series(dtype=int)})]  # no point: no row
    for point in points:
        model = RoundModel(point.name, point.lora(round_0))
        frames += [s.scores for s in sample_and_score(backbone, [model], templates, concept, point.sampling(cfg),
                                                      scorers, image_dir, score_batch_size)]
    return pd.concat(frames, ignore_index=True)


def baseline_gains(baselines: pd.DataFrame, round_0: pd.DataFrame) -> dict[str, dict[str, float]]:
    """{point: paired_gains over round 0} for each point of `baselines` (sample_baselines' rows,
    which hold round 0's prompts and seeds row by row)."""
    return {name: paired_gains(rows.reset_index(drop=True), round_0.reset_index(drop=True))
            for name, rows in baselines.groupby("round", sort=False)}


def upper_right_hull(points: np.ndarray) -> np.ndarray:
    """The vertices of the upper-right hull of `points` ((n, 2): TS, IS), by TS ascending: the
    points no mixture of the others beats on both scores. The first has the highest IS, the last
    the highest TS; between them the chain is concave (every turn to the right)."""
    points = np.asarray(points, dtype=float)
    # from the highest TS down (the higher IS first on a tie), keep each point that beats every
    # point kept so far on IS: the points no other point beats or ties on both scores
    pareto = []
    for i in sorted(range(len(points)), key=lambda i: (-points[i, 0], -points[i, 1])):
        if not pareto or points[i, 1] > points[pareto[-1], 1]:
            pareto.append(i)
    chain: list[np.ndarray] = []
    for p in points[pareto[::-1]]:
        while len(chain) >= 2 and _cross(chain[-2], chain[-1], p) >= 0:  # chain[-1] is on or under the chord
            chain.pop()
        chain.append(p)
    return np.array(chain)


def _cross(o: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    """z of (a - o) x (b - o): negative when o -> a -> b turns right."""
    return float((a[0] - o[0]) * (b[1] - o[1]) - (a[1] - o[1]) * (b[0] - o[0]))


def _segment_distance(p: np.ndarray, a: np.ndarray, b: np.ndarray) -> float:
    ab = b - a
    t = 0.0 if not ab.any() else float(np.clip(np.dot(p - a, ab) / np.dot(ab, ab), 0.0, 1.0))
    return float(np.linalg.norm(p - (a + t * ab)))


def beyond_frontier(point, hull: np.ndarray) -> float:
    """Signed Euclidean distance of `point` (TS, IS) from the region the hull bounds (every point
    a vertex or a mixture of two beats or ties on both scores): positive outside it, negative
    inside, in the units of the coordinates (round_0 stds)."""
    p, hull = np.asarray(point, dtype=float), np.asarray(hull, dtype=float)
    first, last = hull[0], hull[-1]
    # the boundary: a ray left from the highest IS, the chain, a ray down from the highest TS
    left = abs(p[1] - first[1]) if p[0] <= first[0] else float(np.linalg.norm(p - first))
    down = abs(p[0] - last[0]) if p[1] <= last[1] else float(np.linalg.norm(p - last))
    distance = min([left, down, *(_segment_distance(p, a, b) for a, b in zip(hull[:-1], hull[1:]))])
    return distance if not _reached(p, hull) else -distance


def _reached(p: np.ndarray, hull: np.ndarray) -> bool:
    """Whether a vertex of the hull, or a mixture of two neighbours, scores at least `p` on both."""
    if p[0] > hull[-1, 0]:
        return False
    if p[0] <= hull[0, 0]:
        return bool(p[1] <= hull[0, 1])
    k = int(np.searchsorted(hull[:, 0], p[0]))  # hull[k-1, 0] < p[0] <= hull[k, 0]
    a, b = hull[k - 1], hull[k]
    return bool(p[1] <= a[1] + (b[1] - a[1]) * (p[0] - a[0]) / (b[0] - a[0]))


def frontier_table(gains: dict[str, dict[str, float]]) -> tuple[np.ndarray, dict[str, bool]]:
    """The hull of round 0 (the origin) and the baselines' gains ({point: paired_gains}), and
    for each point whether it is a vertex of it."""
    names = ["round_0", *gains]
    points = np.array([[0.0, 0.0], *([g["TS"], g["IS"]] for g in gains.values())])
    hull = upper_right_hull(points)
    on_hull = {n: any(np.array_equal(p, v) for v in hull) for n, p in zip(names, points)}
    return hull, on_hull


def rounds_beyond(table: dict[str, dict], hull: np.ndarray) -> dict[str, float]:
    """Each round's beyond_frontier from its gains over round 0 (rounds_table; round 0 is the
    origin, on the hull or inside it)."""
    out = {}
    for name, row in table.items():
        point = (row.get("TS_gain", 0.0), row.get("IS_gain", 0.0))
        out[name] = beyond_frontier(point, hull)
        if not math.isfinite(out[name]):
            raise ValueError(f"{name}: beyond_frontier is not finite ({out[name]})")
    return out


def frontier_report(table: dict[str, dict], baselines: pd.DataFrame,
                    round_0: pd.DataFrame) -> tuple[dict[str, dict], dict[str, dict]]:
    """`table` (evaluation.rounds_table) with each round's `beyond_frontier`, and the frontier
    (eval/frontier.json): round 0 and each baseline point of `baselines` (sample_baselines'
    rows) with its mean IS and TS, its gains over round 0 and their standard errors, and
    whether it is a vertex of the hull. A baseline table of other prompts or seeds than
    round 0's is stale: StaleInputError."""
    try:
        gains = baseline_gains(baselines, round_0)
    except ValueError:
        raise StaleInputError("the baselines were sampled on other prompts or seeds than evaluate's round_0; "
                              "rerun the frontier stage") from None
    hull, on_hull = frontier_table(gains)
    beyond = rounds_beyond(table, hull)
    rounds = {name: row | {"beyond_frontier": beyond[name]} for name, row in table.items()}
    means = baselines.groupby("round", sort=False)[["IS", "TS"]].mean() if gains else None
    points = {"round_0": {"IS": table["round_0"]["IS"], "TS": table["round_0"]["TS"], "IS_gain": 0.0, "TS_gain": 0.0,
                          "on_hull": on_hull["round_0"]}}
    for name, g in gains.items():
        points[name] = {"IS": float(means.loc[name, "IS"]), "TS": float(means.loc[name, "TS"]),
                        "IS_gain": g["IS"], "IS_gain_se": g["IS_se"], "TS_gain": g["TS"], "TS_gain_se": g["TS_se"],
                        "on_hull": on_hull[name]}
    return rounds, points
