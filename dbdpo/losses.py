"""Diffusion losses as pure tensor functions (no models, no state): easy to pin in tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||target - prediction||^2 averaged over C, H, W: (B, C, H, W) -> (B,), in fp32."""
    return (target.float() - prediction.float()).pow(2).mean(dim=(1, 2, 3))


@dataclass(frozen=True)
class DpoStats:
    """Per-batch diagnostics (plain floats) for the training log."""

    loss: float
    implicit_accuracy: float  # fraction of pairs with -beta/2 * inside > 0
    reward_margin: float  # mean of -beta/2 * inside: how much more the policy prefers w over l
    policy_error: float  # mean policy error over winners and losers
    reference_error: float


def diffusion_dpo_loss(policy_w: torch.Tensor, policy_l: torch.Tensor, reference_w: torch.Tensor,
                       reference_l: torch.Tensor, beta: float) -> tuple[torch.Tensor, DpoStats]:
    """Diffusion-DPO (Wallace et al. 2024, Eq. 14 with per-element mean errors).

    All inputs are (B,) per-sample errors e(x) for winners (w) and losers (l) at the same
    noise and timestep:
        inside = (e_theta(w) - e_ref(w)) - (e_theta(l) - e_ref(l))
        L      = mean_B -log sigmoid(-beta/2 * inside)
    At step 0 (policy == reference) inside = 0 and L = log 2.
    """
    inside = (policy_w - reference_w) - (policy_l - reference_l)
    logits = -0.5 * beta * inside
    loss = -F.logsigmoid(logits).mean()
    stats = DpoStats(
        loss=loss.item(),
        implicit_accuracy=(logits > 0).float().mean().item(),
        reward_margin=logits.mean().item(),
        policy_error=torch.cat([policy_w, policy_l]).mean().item(),
        reference_error=torch.cat([reference_w, reference_l]).mean().item(),
    )
    return loss, stats
