"""The baseline frontier: its hull and each round's signed distance, against hand-computed values;
the baselines sampled by the world backbone."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dbdpo.config import FrontierConfig
from dbdpo.frontier import (
    BaselinePoint,
    baseline_gains,
    baseline_points,
    beyond_frontier,
    frontier_table,
    rounds_beyond,
    upper_right_hull,
)
from dbdpo.lora import scaled

# (TS, IS): round 0 at the origin, a fidelity knob up-left, an alignment knob down-right
ORIGIN, UP_LEFT, DOWN_RIGHT = (0.0, 0.0), (-1.0, 0.5), (0.5, -1.0)
HULL = np.array([UP_LEFT, ORIGIN, DOWN_RIGHT])


def test_the_hull_keeps_the_points_no_mixture_of_the_others_beats():
    points = [ORIGIN, UP_LEFT, DOWN_RIGHT,
              (0.2, -0.5),   # under the chord from the origin to DOWN_RIGHT
              (-0.5, 0.2),   # under the chord from UP_LEFT to the origin
              (0.25, -0.5),  # on the chord from the origin to DOWN_RIGHT: a mixture, not a vertex
              (0.5, -2.0),   # DOWN_RIGHT's TS with less IS
              (-2.0, 0.0)]   # beaten by the origin on both
    np.testing.assert_array_equal(upper_right_hull(points), HULL)
    # a point that beats the origin on TS and ties it on IS leaves the origin inside
    np.testing.assert_array_equal(upper_right_hull([ORIGIN, UP_LEFT, DOWN_RIGHT, (0.25, 0.0)]),
                                  [UP_LEFT, (0.25, 0.0), DOWN_RIGHT])
    np.testing.assert_array_equal(upper_right_hull([ORIGIN]), [ORIGIN])


@pytest.mark.parametrize("point, distance", [
    ((0.5, 0.5), math.sqrt(0.5)),    # beyond: nearest is the origin vertex
    ((0.0, -0.5), -math.sqrt(0.05)),  # inside: nearest is (0.2, -0.4) on the chord to DOWN_RIGHT
    ((2.0, -3.0), 1.5),               # right of the highest TS: the ray down from DOWN_RIGHT
    ((-3.0, 0.25), -0.25),            # left of the highest IS, under it: the ray left from UP_LEFT
    ((-3.0, 1.5), 1.0),               # above it
    (UP_LEFT, 0.0),                   # a vertex is on the frontier
    ((0.25, -0.5), 0.0),              # so is a mixture of two
])
def test_beyond_frontier_is_the_signed_distance_from_the_hull(point, distance):
    assert beyond_frontier(point, HULL) == pytest.approx(distance, abs=1e-12)


def test_round_0_inside_a_hull_a_baseline_pushes_out_is_negative():
    hull = upper_right_hull([ORIGIN, UP_LEFT, DOWN_RIGHT, (0.25, 0.0)])
    # the origin's distance from the chord UP_LEFT -> (0.25, 0): |1.25 * -0.5 - (-0.5) * 1| / |(1.25, -0.5)|
    assert beyond_frontier(ORIGIN, hull) == pytest.approx(-0.125 / math.sqrt(1.8125))


def test_a_lone_round_0_bounds_the_quadrant_below_and_left_of_it():
    hull = upper_right_hull([ORIGIN])
    assert beyond_frontier((3.0, 4.0), hull) == pytest.approx(5.0)
    assert beyond_frontier((-1.0, 2.0), hull) == pytest.approx(2.0)
    assert beyond_frontier((-1.0, -2.0), hull) == pytest.approx(-1.0)


def test_rounds_are_placed_by_their_gains_and_the_table_marks_the_vertices():
    gains = {"lora_scale_0.5": {"TS": 0.5, "IS": -1.0}, "guidance_3": {"TS": 0.2, "IS": -0.5},
             "guidance_12": {"TS": -1.0, "IS": 0.5}}
    hull, on_hull = frontier_table(gains)
    np.testing.assert_array_equal(hull, HULL)
    assert on_hull == {"round_0": True, "lora_scale_0.5": True, "guidance_3": False, "guidance_12": True}
    table = {"round_0": {"IS": 0.2}, "round_1": {"IS_gain": 0.5, "TS_gain": 0.5}}
    assert rounds_beyond(table, hull) == pytest.approx({"round_0": 0.0, "round_1": math.sqrt(0.5)})


def test_baseline_points_turn_one_knob_at_a_time():
    cfg = FrontierConfig(lora_scales=(0.25, 0.5), guidance_scales=(3.0,))
    assert baseline_points(cfg, 7.5, has_lora=True) == [
        BaselinePoint("lora_scale_0.25", 0.25, 7.5), BaselinePoint("lora_scale_0.5", 0.5, 7.5),
        BaselinePoint("guidance_3", 1.0, 3.0)]
    # a full DreamBooth has no LoRA to scale
    assert baseline_points(cfg, 7.5, has_lora=False) == [BaselinePoint("guidance_3", 1.0, 3.0)]
    # an early stop is its own LoRA at scale 1 and evaluate's guidance, after the knobs
    early = {"x.lora_A.weight": torch.ones(1, 2), "x.lora_B.weight": torch.ones(2, 1)}
    points = baseline_points(cfg, 7.5, has_lora=True, early_stops={"steps_150": early})
    assert [p.name for p in points] == ["lora_scale_0.25", "lora_scale_0.5", "guidance_3", "steps_150"]
    assert (points[-1].lora_scale, points[-1].guidance_scale) == (1.0, 7.5)
    lora = points[-1].lora({"x.lora_A.weight": torch.zeros(1, 2), "x.lora_B.weight": torch.zeros(2, 1)})
    assert all(torch.equal(lora[k], early[k]) for k in early) and points[0].early_stop is None


def test_a_scaled_lora_scales_each_update_and_nothing_else():
    a, b = torch.randn(2, 5), torch.randn(3, 2)
    state = {"x.lora_A.weight": a, "x.lora_B.weight": b}
    half = scaled(state, 0.5)
    torch.testing.assert_close(half["x.lora_B.weight"] @ half["x.lora_A.weight"], 0.5 * (b @ a))
    assert half["x.lora_A.weight"] is a and torch.equal(state["x.lora_B.weight"], b)


def test_baseline_gains_pair_each_point_with_round_0_image_by_image():
    round_0 = pd.DataFrame({"round": "round_0", "prompt_id": [0, 0, 1, 1], "seed": [5, 6, 5, 6],
                            "IS": [0.1, 0.2, 0.3, 0.6], "TS": [0.5, 0.4, 0.5, 0.6]})
    point = round_0.assign(round="guidance_3", IS=round_0["IS"] + 0.1)
    gains = baseline_gains(pd.concat([point, point.assign(round="guidance_12")], ignore_index=True), round_0)
    assert list(gains) == ["guidance_3", "guidance_12"]
    assert gains["guidance_3"]["IS"] == pytest.approx(0.1 / round_0["IS"].std()) and gains["guidance_3"]["TS"] == 0
    with pytest.raises(ValueError, match="same seeds"):
        baseline_gains(point.iloc[::-1], round_0)


def test_the_baselines_are_round_0_sampled_on_evaluates_prompts_and_seeds(in_repo):
    """At scale 1 and evaluate's guidance a baseline is round 0 itself, image for image; at scale
    0 it is the base model; a knob turned moves the scores."""
    from dbdpo.backbones import load_backbone
    from dbdpo.config import ConceptConfig, EvaluateConfig, ModelConfig, ScoreConfig
    from dbdpo.data import load_concept, ts_texts
    from dbdpo.evaluation import RoundModel, sample_and_score
    from dbdpo.frontier import sample_baselines
    from dbdpo.scoring import build_scorers
    from tests.test_lora import random_lora

    backbone, lora = load_backbone(ModelConfig()), random_lora(0)
    concept_cfg, e = ConceptConfig(), EvaluateConfig(steps=2, batch_size=4)
    scorers = build_scorers(ScoreConfig(), load_concept(concept_cfg), ts_texts(concept_cfg, "without_concept"))
    templates = ["a {token} {class_noun} in the jungle", "a {token} {class_noun} on the beach"]
    rounds = [RoundModel("round_0", lora), RoundModel("base", {})]
    round_0, base = (s.scores for s in sample_and_score(backbone, rounds, templates, concept_cfg, e, scorers, None, 8))
    points = [BaselinePoint("same", 1.0, e.guidance_scale), BaselinePoint("off", 0.0, e.guidance_scale),
              BaselinePoint("guidance_3", 1.0, 3.0),
              BaselinePoint("early_as_trained", 1.0, e.guidance_scale, early_stop=lora),
              BaselinePoint("early_other", 1.0, e.guidance_scale, early_stop=random_lora(1))]
    table = sample_baselines(backbone, lora, points, templates, concept_cfg, e, scorers, None, 8)
    rows = {name: rows.drop(columns="round").reset_index(drop=True) for name, rows in table.groupby("round")}
    pd.testing.assert_frame_equal(rows["same"], round_0.drop(columns="round"))
    pd.testing.assert_frame_equal(rows["off"], base.drop(columns="round"))
    assert not np.allclose(rows["guidance_3"]["IS"], round_0["IS"])
    # an early stop samples its own LoRA in round 0's place: round 0's gives round 0's images
    pd.testing.assert_frame_equal(rows["early_as_trained"], round_0.drop(columns="round"))
    assert not np.allclose(rows["early_other"]["IS"], round_0["IS"])
    assert sample_baselines(backbone, lora, [], templates, concept_cfg, e, scorers, None, 8).empty


def test_the_early_stops_folder_holds_each_lora_by_its_steps_and_a_missing_index_names_the_stage(tmp_path):
    """models/early_stops as finetune writes it and the frontier stage reads it back."""
    from dbdpo.backbones import load_backbone
    from dbdpo.config import ModelConfig
    from dbdpo.early_stops import EarlyStops, load_early_stops, save_early_stops
    from dbdpo.errors import MissingInput
    from tests.test_lora import random_lora

    stops = EarlyStops((150, 300), {300: random_lora(1), 150: random_lora(0)})
    save_early_stops(load_backbone(ModelConfig()).pipe, stops, 600, tmp_path / "early_stops", made_from={})
    loaded = load_early_stops(tmp_path / "early_stops")
    assert list(loaded) == ["steps_150", "steps_300"]  # by steps, whatever order they were kept in
    torch.testing.assert_close(loaded, {"steps_150": stops.loras[150], "steps_300": stops.loras[300]})
    with pytest.raises(MissingInput, match=r"early_stops.json is missing: run the finetune stage"):
        load_early_stops(tmp_path)
