import math

import pytest
import torch

from dbdpo.losses import diffusion_dpo_loss, per_sample_error


def test_per_sample_error_is_mean_over_chw():
    pred = torch.zeros(2, 1, 2, 2)
    target = torch.tensor([[[[1.0, 1.0], [1.0, 1.0]]], [[[2.0, 0.0], [0.0, 0.0]]]])
    assert per_sample_error(pred, target).tolist() == [1.0, 1.0]


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
