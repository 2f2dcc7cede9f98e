"""A round's preferences for either loss: built, written and read back as dpo trains on them."""

import pandas as pd
import pytest
from PIL import Image

from dbdpo.config import FilterConfig, PairConfig
from dbdpo.errors import MissingInput
from dbdpo.preferences import build_preferences, read_preferences, write_preferences


def scores_on_disk(tmp_path) -> pd.DataFrame:
    """Two prompts x 3 images, each a real PNG (the Pick-a-Pic export embeds the bytes)."""
    rows = []
    for prompt_id, values in enumerate([[(1.0, 1.0), (0.0, 0.0), (2.0, -1.0)], [(0.5, 0.2), (0.1, 0.9), (0.0, 0.0)]]):
        for k, (image_sim, text_sim) in enumerate(values):
            path = tmp_path / f"p{prompt_id}_{k}.png"
            Image.new("RGB", (8, 8), (40 * k, 0, 0)).save(path)
            rows.append(dict(image_id=f"p{prompt_id}_{k}", prompt_id=prompt_id, prompt=f"prompt {prompt_id}",
                             path=str(path), IS=image_sim, TS=text_sim))
    return pd.DataFrame(rows)


def test_pairs_round_trip_with_the_pickapic_export(tmp_path):
    scores = scores_on_disk(tmp_path)
    prefs = build_preferences(scores, PairConfig(normalize="none"), FilterConfig(kind="none"), {"IS": 1.0})
    # S_0.5 of prompt 0: a 1.0, b 0.0, c 0.5 -> 3 pairs; prompt 1: 0.35, 0.5, 0.0 -> 3 pairs
    assert prefs.mode == "pairs" and prefs.summary["kept"] == 6 and prefs.summary["ties"] == 0
    out = tmp_path / "preferences"
    out.mkdir()
    write_preferences(prefs, out)
    assert sorted(str(p.relative_to(out)) for p in out.rglob("*.parquet")) == ["pairs.parquet",
                                                                               "pickapic/train.parquet"]
    assert [p.name for p in (out / "pickapic").iterdir()] == ["train.parquet"]  # a dataset folder
    back = read_preferences(out, "diffusion_dpo")
    assert back.mode == "pairs" and back.table["winner_path"].to_list() == prefs.table["winner_path"].to_list()
    pickapic = pd.read_parquet(out / "pickapic/train.parquet")
    assert pickapic["jpg_0"].iat[0] == open(prefs.table["winner_path"].iat[0], "rb").read()


def test_ranked_lists_round_trip_best_first(tmp_path):
    scores = scores_on_disk(tmp_path)
    prefs = build_preferences(scores, PairConfig(mode="rank", normalize="none"), FilterConfig(), {"IS": 1.0})
    assert prefs.mode == "rank" and prefs.summary == {"lists": 2, "images_per_list": 3}
    out = tmp_path / "preferences"
    out.mkdir()
    write_preferences(prefs, out)
    assert [p.name for p in out.iterdir()] == ["ranked.parquet"]
    lists = read_preferences(out, "rank_dpo").ranked()
    # by IS alone: prompt 0 c (2.0) > a (1.0) > b (0.0); psi = strict wins / 2 comparisons
    assert [(prompt, [p.rsplit("/", 1)[1] for p in paths], psi) for prompt, paths, psi in lists] == [
        ("prompt 0", ["p0_2.png", "p0_0.png", "p0_1.png"], [1.0, 0.5, 0.0]),
        ("prompt 1", ["p1_0.png", "p1_1.png", "p1_2.png"], [1.0, 0.5, 0.0])]


def test_reading_what_another_loss_wrote_names_the_missing_file(tmp_path):
    scores = scores_on_disk(tmp_path)
    prefs = build_preferences(scores, PairConfig(normalize="none"), FilterConfig(kind="none"), {"IS": 1.0})
    write_preferences(prefs, tmp_path)
    with pytest.raises(MissingInput, match="ranked.parquet: missing; run the stage that writes it first"):
        read_preferences(tmp_path, "rank_dpo")
