import numpy as np
import pandas as pd
import pytest
from PIL import Image

from dbdpo.evaluation import (
    GRID_SCALE,
    LABEL_HEIGHT,
    RoundSamples,
    grid_row,
    headline,
    paired_gains,
    pareto_front,
    round_metrics,
    round_summary,
    rounds_table,
    tradeoff_figure,
)


def test_pareto_front_maximizes_both():
    is_values = [1.0, 2.0, 0.5, 1.0, 0.0]
    ts_values = [1.0, 0.0, 0.5, 1.0, 3.0]
    # c (0.5, 0.5) is beaten by a on both; a and its twin d tie (neither beats the other)
    assert pareto_front(is_values, ts_values).tolist() == [True, True, False, True, True]


def test_grid_row_places_each_round_side_by_side():
    images = [Image.new("RGB", (8, 8), color) for color in ((255, 0, 0), (0, 0, 255))]
    row = np.asarray(grid_row(images, ["round_0", "round_1"], pad=4))
    side = 8 * GRID_SCALE
    assert row.shape == (side + LABEL_HEIGHT, 2 * side + 4, 3)
    assert row[LABEL_HEIGHT + 1, 1].tolist() == [255, 0, 0]
    assert row[LABEL_HEIGHT + 1, side + 4 + 1].tolist() == [0, 0, 255]
    assert (row[:LABEL_HEIGHT] < 128).any()  # the labels are drawn

    captioned = np.asarray(grid_row(images, ["round_0", "round_1"], caption="a sks toy in the jungle " * 3, pad=4))
    # 36 px wide: 5 characters a line, so the prompt takes 15 lines under the images
    assert captioned.shape == (side + LABEL_HEIGHT * 16, 2 * side + 4, 3)
    assert (captioned[side + LABEL_HEIGHT:] < 128).any() and np.array_equal(captioned[:side + LABEL_HEIGHT], row)


def test_tradeoff_figure_is_a_png_with_error_bars(tmp_path):
    table = {name: {"IS": i, "TS": t, "IS_std": 0.1, "TS_std": 0.05, "images": 40}
             for name, i, t in (("round_0", 0.8, 0.20), ("round_1", 0.85, 0.22), ("round_2", 0.84, 0.25))}
    tradeoff_figure(table, tmp_path / "t.png")
    with Image.open(tmp_path / "t.png") as img:
        assert img.format == "PNG" and img.size == (500, 400)
    with pytest.raises(KeyError, match="IS_std"):  # no error bar without the round's std
        tradeoff_figure({"round_0": {"IS": 0.8, "TS": 0.2, "images": 40}}, tmp_path / "u.png")
    assert not (tmp_path / "u.png").exists()


def test_tradeoff_figure_draws_the_baselines_and_their_frontier(tmp_path):
    table = {name: {"IS": i, "TS": t, "IS_std": 0.1, "TS_std": 0.05, "images": 40}
             for name, i, t in (("round_0", 0.8, 0.20), ("round_1", 0.85, 0.22))}
    frontier = {"round_0": {"IS": 0.8, "TS": 0.20, "on_hull": True},
                "lora_scale_0.5": {"IS": 0.7, "TS": 0.24, "on_hull": True},
                "guidance_4": {"IS": 0.75, "TS": 0.19, "on_hull": False}}
    tradeoff_figure(table, tmp_path / "plain.png")
    tradeoff_figure(table, tmp_path / "frontier.png", frontier)
    with Image.open(tmp_path / "plain.png") as plain, Image.open(tmp_path / "frontier.png") as drawn:
        assert drawn.size == plain.size and not np.array_equal(np.asarray(drawn), np.asarray(plain))


def test_round_metrics_give_mean_std_and_count_per_score():
    scores = pd.DataFrame({"round": "round_1", "prompt_id": [0, 0, 1, 1], "seed": [5, 6, 5, 6],
                           "IS": [0.1, 0.2, 0.3, 0.6], "TS": [0.5, 0.5, 0.5, 0.5]})
    metrics = round_metrics([RoundSamples("round_1", [], [], scores)])["round_1"]
    assert list(metrics) == ["IS", "TS", "IS_std", "TS_std", "images"]
    assert metrics["IS"] == pytest.approx(0.3) and metrics["TS"] == pytest.approx(0.5)
    # sample std (ddof 1): deviations -0.2, -0.1, 0, 0.3 -> sqrt(0.14 / 3)
    assert metrics["IS_std"] == pytest.approx(np.sqrt(0.14 / 3)) and metrics["TS_std"] == 0.0
    assert metrics["images"] == 4


def frame(name, seeds, is_values, ts_values):
    return pd.DataFrame({"round": name, "prompt_id": [0] * len(seeds), "seed": seeds, "IS": is_values,
                         "TS": ts_values})


def test_paired_gains_are_per_image_differences_in_the_references_std():
    reference = frame("round_0", [1, 2, 3], [0.1, 0.2, 0.3], [0.2, 0.2, 0.5])  # IS std 0.1, TS std sqrt(0.03)
    after = frame("round_1", [1, 2, 3], [0.2, 0.4, 0.3], [0.2, 0.5, 0.5])
    gains = paired_gains(after, reference)
    ts_std = np.sqrt(0.03)
    # IS differences 0.1, 0.2, 0 in stds of 0.1: 1, 2, 0 -> mean 1, se = std([1, 2, 0]) / sqrt(3) = 1 / sqrt(3)
    assert gains["IS"] == pytest.approx(1.0) and gains["IS_se"] == pytest.approx(1 / np.sqrt(3))
    # TS differences 0, 0.3, 0 in stds of sqrt(0.03): 0, sqrt(3), 0 -> mean 1/sqrt(3)
    assert gains["TS"] == pytest.approx(0.3 / ts_std / 3)
    # S_0.5 per image: (1 + 0)/2, (2 + sqrt(3))/2, 0
    s = np.array([0.5, (2 + np.sqrt(3)) / 2, 0.0])
    assert gains["S_0.5"] == pytest.approx(s.mean()) and gains["S_0.5_se"] == pytest.approx(s.std(ddof=1) / np.sqrt(3))
    with pytest.raises(ValueError, match="same seeds, row by row"):
        paired_gains(frame("round_1", [1, 3, 2], [0.2, 0.4, 0.3], [0.2, 0.5, 0.5]), reference)


def test_the_rounds_table_and_its_headline():
    samples = [RoundSamples("round_0", [], [], frame("round_0", [1, 2, 3], [0.1, 0.2, 0.3], [0.2, 0.2, 0.5])),
               RoundSamples("round_1", [], [], frame("round_1", [1, 2, 3], [0.2, 0.4, 0.3], [0.2, 0.5, 0.5]))]
    table = rounds_table(samples)
    assert list(table["round_0"]) == ["IS", "TS", "IS_std", "TS_std", "images"]  # no gain over itself
    assert table["round_1"]["IS_gain"] == pytest.approx(1.0) and table["round_1"]["IS_gain_se"] == pytest.approx(
        1 / np.sqrt(3))
    assert headline(table) == {k: table["round_1"][k] for k in
                               ("IS", "TS", "IS_gain", "TS_gain", "S_0.5_gain", "S_0.5_gain_se")}
    assert round_summary("round_0", table["round_0"]) == (
        "round_0   IS 0.2000 ± 0.0577   TS 0.3000 ± 0.1000   (3 images)")
    assert round_summary("round_1", table["round_1"]).startswith(
        "round_1   IS 0.3000 ± 0.0577   TS 0.4000 ± 0.1000   gain (round_0 stds): IS +1.000 ± 0.577  TS +0.577 ± ")
    beyond = round_summary("round_1", table["round_1"] | {"beyond_frontier": -0.25})
    assert beyond.endswith("   beyond frontier -0.250   (3 images)")
    assert headline({"round_1": table["round_1"] | {"beyond_frontier": 0.5}})["beyond_frontier"] == 0.5


def test_grids_start_with_a_concept_photo_at_the_samples_size():
    """What IS compares with, beside every round: a 32 px photo is resized to the samples' 8 px."""
    from dbdpo.evaluation import comparison_grids

    rounds = [RoundSamples(name, [Image.new("RGB", (8, 8), color)] * 4, ["p0", "p0", "p1", "p1"], pd.DataFrame())
              for name, color in (("round_0", (255, 0, 0)), ("round_1", (0, 0, 255)))]
    grids = comparison_grids(rounds, num_prompts=2, images_per_prompt=2,
                             concept_photo=Image.new("L", (32, 32), 0))
    side = 8 * GRID_SCALE
    for grid in grids.values():
        row = np.asarray(grid)
        assert row.shape[1] == 3 * side + 2 * 4  # photo, round_0, round_1
        assert row[LABEL_HEIGHT + 1, 1].tolist() == [0, 0, 0]
        assert row[LABEL_HEIGHT + 1, side + 4 + 1].tolist() == [255, 0, 0]
        assert row[LABEL_HEIGHT + 1, 2 * (side + 4) + 1].tolist() == [0, 0, 255]


def test_tradeoff_rows_carry_each_rounds_standard_errors_and_front():
    from dbdpo.evaluation import tradeoff_rows

    table = {"round_0": {"IS": 0.2, "TS": 0.3, "IS_std": 0.1, "TS_std": 0.2, "images": 4},
             "round_1": {"IS": 0.3, "TS": 0.3, "IS_std": 0.3, "TS_std": 0.4, "images": 9}}
    rows = tradeoff_rows(table)
    assert rows == [{"round": "round_0", "IS": 0.2, "TS": 0.3, "IS_se": 0.05, "TS_se": 0.1, "pareto": False},
                    {"round": "round_1", "IS": 0.3, "TS": 0.3, "IS_se": pytest.approx(0.1), "TS_se": pytest.approx(0.4 / 3),
                     "pareto": True}]
