import math

import numpy as np
import pandas as pd
import pytest

from dbdpo.config import FilterConfig, PairConfig
from dbdpo.pairs import (
    PairingError,
    angle_window,
    build_pairs,
    candidate_pairs,
    cap,
    filter_mask,
    to_pickapic,
)


def table(rows, prompt_id=0):
    """rows: (image_id, IS, TS) -> a scores table like the score stage writes."""
    return pd.DataFrame({
        "image_id": [r[0] for r in rows], "prompt_id": prompt_id, "prompt": f"prompt {prompt_id}",
        "path": [f"/img/{r[0]}.png" for r in rows], "IS": [r[1] for r in rows], "TS": [r[2] for r in rows],
    })


# a beats b on both metrics; c has the best IS but the worst TS: a trade-off image.
ABC = table([("a", 1.0, 1.0), ("b", 0.0, 0.0), ("c", 2.0, -1.0)])


def pair_keys(pairs):
    return sorted(zip(pairs["winner_id"], pairs["loser_id"]))


def test_candidates_are_oriented_by_weighted_score_with_exact_deltas():
    pairs, ties = candidate_pairs(ABC, lam=0.5, method="none")
    assert ties == 0
    by_key = {(w, l): row for w, l, row in zip(pairs["winner_id"], pairs["loser_id"], pairs.itertuples())}
    # S_0.5: a = 1.0, b = 0.0, c = 0.5
    assert set(by_key) == {("a", "b"), ("a", "c"), ("c", "b")}
    ab, ac, cb = by_key["a", "b"], by_key["a", "c"], by_key["c", "b"]
    assert (ab.d_IS, ab.d_TS, ab.d_S, ab.angle) == pytest.approx((1.0, 1.0, 1.0, 45.0))
    assert (ac.d_IS, ac.d_TS, ac.d_S) == pytest.approx((-1.0, 2.0, 0.5))
    assert ac.angle == pytest.approx(math.degrees(math.atan2(-1, 2)))  # -26.57: winner loses IS
    assert (cb.d_IS, cb.d_TS) == pytest.approx((2.0, -1.0))
    assert cb.angle == pytest.approx(math.degrees(math.atan2(2, -1)))  # 116.57: winner loses TS
    assert ab.norm == pytest.approx(math.sqrt(2))


def test_angle_filter_drops_pairs_that_trade_one_metric_for_the_other():
    pairs, _ = candidate_pairs(ABC, lam=0.5, method="none")
    keep = filter_mask(pairs, 0.5, FilterConfig(kind="angle", angle=25))
    assert pair_keys(pairs[keep]) == [("a", "b")]
    # the weighted score alone (no filter) lets both trade-off pairs in
    assert filter_mask(pairs, 0.5, FilterConfig(kind="none")).all()


@pytest.mark.parametrize("lam, window", [(0.5, (20.0, 70.0)), (0.0, (65.0, 115.0)), (1.0, (-25.0, 25.0)),
                                         (0.25, (math.degrees(math.atan2(0.75, 0.25)) - 25,
                                                 math.degrees(math.atan2(0.75, 0.25)) + 25))])
def test_angle_window_is_centered_on_the_lambda_direction(lam, window):
    assert angle_window(lam, FilterConfig(angle=25)) == pytest.approx(window)


def test_explicit_angle_window_overrides_the_half_width():
    assert angle_window(0.5, FilterConfig(angle=25, angle_min=10, angle_max=30)) == (10, 30)


def test_lambda_edges_keep_pure_alignment_or_pure_fidelity_pairs():
    # vs b: d gains only TS (phi = 0), e gains only IS (phi = 90)
    scores = table([("b", 0.0, 0.0), ("d", 0.0, 1.0), ("e", 1.0, 0.0)])
    f = FilterConfig(kind="angle", angle=25)
    pairs1, _ = candidate_pairs(scores, lam=1.0, method="none")  # alignment only
    assert ("d", "b") in pair_keys(pairs1[filter_mask(pairs1, 1.0, f)])
    assert ("e", "b") not in pair_keys(pairs1)  # S_1 = TS: e ties b, no pair at all
    pairs0, _ = candidate_pairs(scores, lam=0.0, method="none")  # fidelity only
    kept0 = pair_keys(pairs0[filter_mask(pairs0, 0.0, f)])
    assert ("e", "b") in kept0 and ("d", "b") not in kept0


def test_threshold_filter_keeps_pairs_above_tau():
    pairs, _ = candidate_pairs(ABC, lam=0.5, method="none")  # d_S: ab 1.0, ac 0.5, cb 0.5
    assert pair_keys(pairs[filter_mask(pairs, 0.5, FilterConfig(kind="threshold", threshold=0.4))]) == [
        ("a", "b"), ("a", "c"), ("c", "b")]
    assert pair_keys(pairs[filter_mask(pairs, 0.5, FilterConfig(kind="threshold", threshold=0.6))]) == [("a", "b")]


def test_min_norm_drops_short_pairs():
    scores = table([("a", 0.0, 0.0), ("b", 0.1, 0.1), ("c", 1.0, 1.0)])
    pairs, _ = candidate_pairs(scores, lam=0.5, method="none")
    kept = pairs[filter_mask(pairs, 0.5, FilterConfig(kind="angle", angle=25, min_norm=0.5))]
    assert pair_keys(kept) == [("c", "a"), ("c", "b")]


def test_ties_are_dropped_and_counted():
    scores = table([("a", 1.0, 0.0), ("b", 0.0, 1.0)])
    pairs, ties = candidate_pairs(scores, lam=0.5, method="none")
    assert len(pairs) == 0 and ties == 1


def test_pairs_never_cross_prompts():
    scores = pd.concat([table([("a", 1.0, 1.0), ("b", 0.0, 0.0)], 0),
                        table([("c", 5.0, 5.0), ("d", 3.0, 3.0)], 1)], ignore_index=True)
    pairs, _ = candidate_pairs(scores, lam=0.5, method="none")
    assert pair_keys(pairs) == [("a", "b"), ("c", "d")]


def test_zscore_normalization_changes_the_angle():
    # Raw IS varies 10x less than TS; z-scoring puts both on one scale before the arctan.
    scores = table([("a", 0.91, 0.30), ("b", 0.90, 0.20)])
    raw, _ = candidate_pairs(scores, lam=0.5, method="none")
    z, _ = candidate_pairs(scores, lam=0.5, method="zscore")
    assert raw["angle"].iat[0] == pytest.approx(math.degrees(math.atan2(0.01, 0.10)))
    assert z["angle"].iat[0] == pytest.approx(45.0)  # each column z-scores to +-1


def test_cap_is_seeded_uniform_and_bounded():
    scores = pd.concat([table([(f"p{p}i{i}", float(i), float(i)) for i in range(5)], p) for p in range(3)],
                       ignore_index=True)
    pairs, _ = candidate_pairs(scores, lam=0.5, method="none")  # 10 per prompt
    capped, after_prompt = cap(pairs, max_per_prompt=4, max_total=9, seed=0)
    assert after_prompt == 12 and len(capped) == 9
    assert capped.groupby("prompt_id").size().max() <= 4
    again, _ = cap(pairs, max_per_prompt=4, max_total=9, seed=0)
    pd.testing.assert_frame_equal(capped, again)
    other, _ = cap(pairs, max_per_prompt=4, max_total=9, seed=1)
    assert pair_keys(other) != pair_keys(capped)


def test_build_pairs_summary_counts():
    pairs, summary = build_pairs(ABC, PairConfig(lambda_=0.5, normalize="none", max_per_prompt=6, max_total=64),
                                 FilterConfig(kind="angle", angle=25))
    assert summary.as_metrics() == {"candidates": 3, "ties": 0, "kept_by_filter": 1,
                                    "kept_after_prompt_cap": 1, "kept": 1, "filter_kept_every_candidate": False}
    assert pair_keys(pairs) == [("a", "b")]


def test_an_equal_budget_threshold_keeps_as_many_pairs_as_the_angle_filter():
    """Claim (d) compares the filters at one pair budget: the threshold keeps the angle filter's
    count of candidates, the top ones by d_S."""
    from dbdpo.pairs import equal_budget_threshold

    pair = PairConfig(lambda_=0.5, normalize="none", max_per_prompt=6, max_total=64)
    angle = FilterConfig(kind="angle", angle=25)
    threshold = equal_budget_threshold(ABC, pair, angle)
    by_angle, _ = build_pairs(ABC, pair, angle)
    by_threshold, summary = build_pairs(ABC, pair, FilterConfig(kind="threshold", threshold=threshold))
    candidates, _ = candidate_pairs(ABC, 0.5, "none")
    assert summary.kept_by_filter == len(by_angle) == 1 and not summary.filter_kept_every_candidate
    assert by_threshold["d_S"].iat[0] == candidates["d_S"].max()
    assert equal_budget_threshold(ABC, pair, FilterConfig(kind="none")) == 0.0  # every candidate


def test_a_threshold_that_keeps_every_candidate_says_so(caplog):
    """The winner always has the higher S, so filter.threshold 0 keeps every pair: the claims'
    "threshold" row was no filter at all, and nothing said so."""
    pair = PairConfig(lambda_=0.5, normalize="none", max_per_prompt=6, max_total=64)
    with caplog.at_level("WARNING", logger="dbdpo.pairs"):
        _, summary = build_pairs(ABC, pair, FilterConfig(kind="threshold", threshold=0.0))
    assert summary.filter_kept_every_candidate and summary.kept_by_filter == summary.candidates == 3
    assert "filter.kind=threshold kept every one of the 3 candidate pairs" in caplog.text
    _, unfiltered = build_pairs(ABC, pair, FilterConfig(kind="none"))
    assert not unfiltered.filter_kept_every_candidate  # no filter asked: nothing to report


def test_no_pairs_left_is_a_clear_error_naming_the_param():
    with pytest.raises(PairingError, match=r"3 candidates.*0 kept by filter.kind=angle.*filter.angle"):
        build_pairs(ABC, PairConfig(normalize="none"), FilterConfig(kind="angle", angle_min=80, angle_max=85))


def test_pickapic_layout(tmp_path):
    for name, payload in (("w", b"winner-bytes"), ("l", b"loser-bytes")):
        (tmp_path / f"{name}.png").write_bytes(payload)
    pairs = pd.DataFrame({"winner_path": [str(tmp_path / "w.png")], "loser_path": [str(tmp_path / "l.png")],
                          "prompt": ["a sks toy"]})
    out = to_pickapic(pairs)
    assert list(out.columns) == ["jpg_0", "jpg_1", "label_0", "caption"]
    assert out.iloc[0].tolist() == [b"winner-bytes", b"loser-bytes", 1.0, "a sks toy"]
    assert np.issubdtype(out["label_0"].dtype, np.floating)


def test_ranked_lists_order_psi_and_ties():
    from dbdpo.pairs import ranked_lists

    # two scorers; image a beats everything on both, b and c split, d loses everything
    scores = table([("a", 3.0, 3.0), ("b", 2.0, 0.0), ("c", 1.0, 1.0), ("d", 0.0, -1.0)])
    ranked = ranked_lists(scores, {"IS": 1.0, "TS": 1.0}, "none")
    assert ranked["image_id"].tolist() == ["a", "b", "c", "d"]  # ensemble 3, 1, 1, -0.5 (b < c by id)
    assert ranked["rank"].tolist() == [1, 2, 3, 4]
    # psi: a wins 6/6; b wins IS vs c,d and TS vs d = 3/6; c wins IS vs d, TS vs b,d = 3/6; d 0/6
    np.testing.assert_allclose(ranked["psi"], [1.0, 0.5, 0.5, 0.0])
    np.testing.assert_allclose(ranked["ensemble"], [3.0, 1.0, 1.0, -0.5])
    only_ts = ranked_lists(scores, {"TS": 1.0}, "none")
    assert only_ts["image_id"].tolist() == ["a", "c", "b", "d"]
    tied = ranked_lists(table([("x", 1.0, 1.0), ("y", 1.0, 1.0), ("z", 0.0, 0.0)]), {"IS": 1.0}, "none")
    assert tied["psi"].tolist() == [0.5, 0.5, 0.0]  # strict wins: x and y beat z only (Algorithm 1)


def test_the_ensembles_weights_shape_psi_and_so_the_rank_dpo_loss():
    """psi was an unweighted win count: {IS: 10, TS: 1} and {IS: 1, TS: 1} gave the same psi and
    the same loss. Weighted (RankDPO's ensemble): b wins IS 2/3, TS 1/3; c wins IS 1/3, TS 2/3."""
    import torch

    from dbdpo.losses import rank_dpo_loss
    from dbdpo.pairs import ranked_lists

    scores = table([("a", 3.0, 3.0), ("b", 2.0, 0.0), ("c", 1.0, 1.0), ("d", 0.0, -1.0)])
    psi = {name: ranked_lists(scores, weights, "none").set_index("image_id")["psi"]
           for name, weights in {"equal": {"IS": 1.0, "TS": 1.0}, "IS": {"IS": 10.0, "TS": 1.0}}.items()}
    np.testing.assert_allclose(psi["IS"][["a", "b", "c", "d"]], [1.0, (10 * 2 + 1) / 33, (10 * 1 + 2) / 33, 0.0])
    policy, reference = torch.tensor([[0.10, 0.30, 0.20, 0.40]]), torch.tensor([[0.20, 0.20, 0.20, 0.20]])
    losses = [rank_dpo_loss(policy, reference, torch.tensor([psi[k][["a", "b", "c", "d"]].to_numpy()]), 100.0)[0]
              for k in ("equal", "IS")]
    assert not torch.isclose(losses[0], losses[1])


def test_ranked_lists_reject_unknown_rewards():
    from dbdpo.pairs import ranked_lists

    with pytest.raises(PairingError, match=r"score.rewards names \['PickScore'\], which scores.parquet lacks"):
        ranked_lists(ABC, {"PickScore": 1.0}, "none")
