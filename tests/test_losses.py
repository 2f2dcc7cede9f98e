import math

import pytest
import torch

from dbdpo.losses import diffusion_dpo_loss, min_snr_weights, per_sample_error, weighted_per_sample_error


def test_per_sample_error_is_mean_over_chw():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]])
    assert per_sample_error(pred, target).tolist() == [1.0, 1.0]


def test_weighted_per_sample_error_averages_each_image_under_its_own_weights():
    pred = torch.zeros(2, 2, 1, 2)  # 2 images, 2 channels, 1 x 2 cells
    target = torch.tensor([[[[1.0, 3.0]], [[1.0, 3.0]]], [[[2.0, 4.0]], [[0.0, 0.0]]]])
    # image 0: cell 0 weighs 1, cell 1 weighs 0 -> (1 + 1) / (2 channels x 1) = 1
    # image 1: cells weigh 1 and 0.5 -> (4 + 0.5 x 16 + 0 + 0) / (2 x 1.5) = 4
    weights = torch.tensor([[[[1.0, 0.0]]], [[[1.0, 0.5]]]])
    assert weighted_per_sample_error(pred, target, weights).tolist() == [1.0, 4.0]
    # a uniform weight, whatever its size, is the unweighted mean
    assert weighted_per_sample_error(pred, target, torch.full((2, 1, 1, 2), 0.3)).tolist() == pytest.approx(
        per_sample_error(pred, target).tolist(), rel=1e-6)


def test_min_snr_weights_exact_values():
    # alphas_cumprod 0.9, 0.8, 0.5, 0 give SNR = a / (1 - a) = 9, 4, 1, 0. gamma = 5:
    # epsilon: min(SNR, 5) / SNR = 5/9, 1, 1, and 1 at SNR 0 (0/0 there);
    # v: min(SNR, 5) / (SNR + 1) = 5/10, 4/5, 1/2, 0.
    alphas_cumprod = torch.tensor([0.9, 0.8, 0.5, 0.0], dtype=torch.float64)
    t = torch.tensor([0, 1, 2, 3, 0])
    eps = min_snr_weights(alphas_cumprod, t, 5.0, "epsilon")
    torch.testing.assert_close(eps, torch.tensor([5 / 9, 1.0, 1.0, 1.0, 5 / 9]))
    assert eps.dtype == torch.float32
    v = min_snr_weights(alphas_cumprod, t, 5.0, "v_prediction")
    torch.testing.assert_close(v, torch.tensor([0.5, 0.8, 0.5, 0.0, 0.5]))
    # gamma at or above every SNR: no weighting on an epsilon target
    assert min_snr_weights(alphas_cumprod, t, 9.0, "epsilon").tolist() == [1.0] * 5
    with pytest.raises(ValueError, match="unsupported prediction_type 'sample'"):
        min_snr_weights(alphas_cumprod, t, 5.0, "sample")


def test_diffusion_dpo_loss_exact_values():
    # Hand computation, beta = 10:
    #   pair 1: inside = (0.1-0.15) - (0.2-0.15) = -0.1 -> logit = -5 * -0.1 = 0.5
    #   pair 2: inside = (0.3-0.2) - (0.1-0.2)  =  0.2 -> logit = -5 *  0.2 = -1.0
    #   loss = mean(log(1+e^-0.5), log(1+e^1)) = mean(0.4740770, 1.3132617)
    policy_w, policy_l = torch.tensor([0.1, 0.3]), torch.tensor([0.2, 0.1])
    ref_w, ref_l = torch.tensor([0.15, 0.2]), torch.tensor([0.15, 0.2])
    loss, stats = diffusion_dpo_loss(policy_w, policy_l, ref_w, ref_l, beta=10.0)
    expected = (math.log1p(math.exp(-0.5)) + math.log1p(math.exp(1.0))) / 2
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(0.8936693, abs=1e-6)
    assert stats.implicit_accuracy == 0.5
    assert stats.reward_margin == pytest.approx(-0.25, abs=1e-6)
    assert stats.policy_error == pytest.approx(0.175, abs=1e-6)
    assert stats.reference_error == pytest.approx(0.175, abs=1e-6)


def test_policy_equal_to_reference_gives_log2():
    e_w, e_l = torch.tensor([0.3, 0.9, 0.1]), torch.tensor([0.5, 0.2, 0.4])
    loss, stats = diffusion_dpo_loss(e_w, e_l, e_w.clone(), e_l.clone(), beta=5000.0)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-7)
    assert stats.implicit_accuracy == 0.0 and stats.reward_margin == 0.0


def test_beta_to_zero_gives_log2_for_any_errors():
    loss, _ = diffusion_dpo_loss(torch.tensor([0.1]), torch.tensor([0.9]), torch.tensor([0.5]),
                                 torch.tensor([0.2]), beta=1e-9)
    assert loss.item() == pytest.approx(math.log(2), abs=1e-8)


def test_swapping_winner_and_loser_mirrors_the_logit():
    a, b, ra, rb = (torch.tensor([v]) for v in (0.2, 0.5, 0.3, 0.3))
    forward, s1 = diffusion_dpo_loss(a, b, ra, rb, beta=4.0)
    backward, s2 = diffusion_dpo_loss(b, a, rb, ra, beta=4.0)
    assert s1.reward_margin == pytest.approx(-s2.reward_margin)
    # -log s(x) - (-log s(-x)) = -x
    assert (forward - backward).item() == pytest.approx(-s1.reward_margin, abs=1e-6)


def test_gradient_step_lowers_the_loss():
    """Lowering the winner's error (and raising the loser's) is the descent direction."""
    policy_w = torch.tensor([0.5, 0.4], requires_grad=True)
    policy_l = torch.tensor([0.5, 0.6], requires_grad=True)
    ref_w, ref_l = torch.tensor([0.5, 0.5]), torch.tensor([0.5, 0.5])
    loss, _ = diffusion_dpo_loss(policy_w, policy_l, ref_w, ref_l, beta=20.0)
    loss.backward()
    assert (policy_w.grad > 0).all() and (policy_l.grad < 0).all()
    with torch.no_grad():
        stepped, _ = diffusion_dpo_loss(policy_w - 0.01 * policy_w.grad, policy_l - 0.01 * policy_l.grad,
                                        ref_w, ref_l, beta=20.0)
    assert stepped.item() < loss.item()


# --- RankDPO -------------------------------------------------------------------------------

from dbdpo.losses import model_ranks, preference_ranks, rank_dpo_loss  # noqa: E402


def test_rank_dpo_with_k2_and_unit_weights_is_diffusion_dpo():
    policy = torch.tensor([[0.1, 0.2], [0.3, 0.1], [0.5, 0.5]])
    reference = torch.tensor([[0.15, 0.15], [0.2, 0.2], [0.4, 0.6]])
    preference = torch.tensor([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])  # the winner: 0, 0, 1
    rank, _ = rank_dpo_loss(policy, reference, preference, beta=10.0, weighting="unit")
    pairwise, _ = diffusion_dpo_loss(torch.tensor([0.1, 0.3, 0.5]), torch.tensor([0.2, 0.1, 0.5]),
                                     torch.tensor([0.15, 0.2, 0.6]), torch.tensor([0.15, 0.2, 0.4]), beta=10.0)
    assert rank.item() == pytest.approx(pairwise.item(), abs=1e-7)


def test_rank_dpo_with_k2_and_dcg_weights_is_diffusion_dpo_times_delta12():
    policy, reference = torch.tensor([[0.1, 0.2], [0.3, 0.1]]), torch.tensor([[0.15, 0.15], [0.2, 0.2]])
    preference = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    unit, _ = rank_dpo_loss(policy, reference, preference, beta=10.0, weighting="unit")
    dcg, _ = rank_dpo_loss(policy, reference, preference, beta=10.0, weighting="dcg")
    # Delta_12 = |2^1 - 2^0| * |1/log 2 - 1/log 3| whichever image the model ranks first
    delta = 1.0 * abs(1 / math.log(2) - 1 / math.log(3))
    assert delta == pytest.approx(0.5324, abs=1e-4)
    assert dcg.item() == pytest.approx(delta * unit.item(), abs=1e-7)


def test_model_ranks():
    assert model_ranks(torch.tensor([[0.3, -0.1, 0.2, 0.0]])).tolist() == [[4, 1, 3, 2]]
    assert model_ranks(torch.tensor([[0.0, 0.0]])).tolist() == [[1, 2]]  # ties by index


def test_preference_ranks():
    assert preference_ranks(torch.tensor([[1 / 3, 1.0, 0.0, 2 / 3]])).tolist() == [[3, 1, 4, 2]]
    assert preference_ranks(torch.tensor([[0.5, 0.5]])).tolist() == [[1, 2]]  # ties by index


@pytest.mark.parametrize("rank_by, tau, value", [
    ("preference", [1, 2, 3, 4], 1.20339),  # the paper's: ranks by psi
    ("model", [2, 3, 1, 4], 0.86111),  # ranks by the current s (LambdaLoss / LiPO)
])
def test_rank_dpo_k4_exact_value(rank_by, tau, value):
    # s = policy - reference = [0.0, 0.1, -0.1, 0.2]; psi = [1, 2/3, 1/3, 0] (image 0 best)
    # beta = 2 -> logit_ij = -(s_i - s_j); gain G = 2^psi - 1
    policy = torch.tensor([[0.5, 0.6, 0.4, 0.7]])
    reference = torch.full((1, 4), 0.5)
    psi = torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0]])
    s = [0.0, 0.1, -0.1, 0.2]
    expected = 0.0
    for i in range(4):
        for j in range(4):
            if psi[0, i] > psi[0, j]:
                delta = abs((2 ** psi[0, i].item() - 1) - (2 ** psi[0, j].item() - 1)) * abs(
                    1 / math.log(1 + tau[i]) - 1 / math.log(1 + tau[j]))
                expected += delta * math.log1p(math.exp(s[i] - s[j]))
    loss, stats = rank_dpo_loss(policy, reference, psi, beta=2.0, rank_by=rank_by)
    assert loss.item() == pytest.approx(expected, abs=1e-6)
    assert expected == pytest.approx(value, abs=1e-5)
    # ordered pairs (i better than j) with s_i < s_j: (0,1), (0,3), (1,3), (2,3) -> 4 of 6
    assert stats.implicit_accuracy == pytest.approx(4 / 6)


def test_rank_dpo_default_ranks_by_preference_and_refuses_unknown_rankings():
    policy, reference = torch.tensor([[0.5, 0.6, 0.4, 0.7]]), torch.full((1, 4), 0.5)
    psi = torch.tensor([[1.0, 2 / 3, 1 / 3, 0.0]])
    default, _ = rank_dpo_loss(policy, reference, psi, beta=2.0)
    assert default.item() == rank_dpo_loss(policy, reference, psi, beta=2.0, rank_by="preference")[0].item()
    with pytest.raises(ValueError, match=r"unknown RankDPO ranking 'ensemble': expected preference \| model"):
        rank_dpo_loss(policy, reference, psi, beta=2.0, rank_by="ensemble")


def test_rank_dpo_is_invariant_to_permuting_the_images():
    g = torch.Generator().manual_seed(0)
    policy, reference = torch.rand(3, 5, generator=g), torch.rand(3, 5, generator=g)
    psi = torch.rand(3, 5, generator=g)
    perm = torch.tensor([3, 0, 4, 1, 2])
    a, _ = rank_dpo_loss(policy, reference, psi, beta=7.0)
    b, _ = rank_dpo_loss(policy[:, perm], reference[:, perm], psi[:, perm], beta=7.0)
    assert a.item() == pytest.approx(b.item(), abs=1e-6)


def test_rank_dpo_at_step_zero_and_equal_preferences():
    e = torch.tensor([[0.2, 0.4, 0.3]])
    loss, _ = rank_dpo_loss(e, e.clone(), torch.tensor([[1.0, 0.5, 0.0]]), beta=1000.0, weighting="unit")
    assert loss.item() == pytest.approx(3 * math.log(2), abs=1e-6)  # 3 ordered pairs, each log 2
    tied, _ = rank_dpo_loss(e, e * 0.5, torch.tensor([[0.5, 0.5, 0.5]]), beta=1000.0)
    assert tied.item() == 0.0  # no preference, no pair, no loss


def test_dpo_metric_is_the_mean_of_the_last_tenth_of_steps():
    from dbdpo.dpo import final_metrics

    rows = [{"step": s, "loss": float(s), "implicit_accuracy": s % 2} for s in range(20)]
    assert final_metrics(rows) == {"loss": 18.5, "implicit_accuracy": 0.5}  # steps 18, 19
    assert final_metrics(rows[:3]) == {"loss": 2.0, "implicit_accuracy": 0.0}  # at least one step
