"""Diffusion losses as pure tensor functions (no models, no state): easy to pin in tests."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from dbdpo.config import RANK_BY


def per_sample_error(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """||target - prediction||^2 averaged over C, H, W: (B, C, H, W) -> (B,), in fp32."""
    return (target.float() - prediction.float()).pow(2).mean(dim=(1, 2, 3))


def weighted_per_sample_error(prediction: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """||target - prediction||^2 weighted per latent cell: (B, C, H, W) with weights (B, 1, H, W)
    -> (B,), in fp32. Each image's errors are averaged under its own weights (sum of w * e over
    C x sum of w), so a mask that keeps a third of the cells scales no image's loss, only where
    it comes from: the masked DreamBooth loss that trains on the concept's pixels and lets the
    photos' backgrounds go (kohya's sd-scripts' masked loss, weighted by the mean instead of
    summed). Weights of 1 everywhere give per_sample_error."""
    error = (target.float() - prediction.float()).pow(2) * weights
    return error.sum(dim=(1, 2, 3)) / (weights.sum(dim=(1, 2, 3)) * prediction.shape[1])


def min_snr_weights(alphas_cumprod: torch.Tensor, timesteps: torch.Tensor, gamma: float,
                    prediction_type: str) -> torch.Tensor:
    """Min-SNR-gamma loss weights (Hang et al. 2023, "Efficient Diffusion Training via Min-SNR
    Weighting Strategy"), as diffusers' `--snr_gamma`: (B,) float32 for timesteps (B,).

    SNR(t) = alphas_cumprod[t] / (1 - alphas_cumprod[t]). The x0-space weight min(SNR, gamma)
    becomes min(SNR, gamma) / SNR on an epsilon target and min(SNR, gamma) / (SNR + 1) on a
    velocity target. Low-noise timesteps (SNR > gamma) then weigh less and the steps that lay
    out the image weigh as before. A zero-terminal-SNR step (SNR 0) keeps weight 1 on an
    epsilon target, where the formula is 0/0.
    """
    ac = alphas_cumprod.to(torch.float64)[timesteps.cpu()]
    snr = ac / (1 - ac)
    clipped = torch.clamp(snr, max=gamma)
    if prediction_type == "epsilon":
        weights = torch.where(snr > 0, clipped / snr.clamp(min=torch.finfo(torch.float64).tiny), 1.0)
    elif prediction_type == "v_prediction":
        weights = clipped / (snr + 1)
    else:
        raise ValueError(f"unsupported prediction_type {prediction_type!r}")
    return weights.float()


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


def dcg_discount(ranks: torch.Tensor) -> torch.Tensor:
    """D(tau) = log(1 + tau), tau = 1 for the best-ranked item."""
    return torch.log1p(ranks.float())


def model_ranks(scores: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B, K) ranks 1..K of each image under the model: the lowest s = e_theta - e_ref
    (the image the policy denoises best relative to the reference) ranks first; ties by index."""
    order = torch.argsort(scores, dim=1, stable=True)
    return torch.argsort(order, dim=1, stable=True) + 1


def preference_ranks(preference: torch.Tensor) -> torch.Tensor:
    """(B, K) -> (B, K) ranks 1..K by the ground-truth preference psi: the highest psi ranks
    first; ties by index (Karthik et al. 2024, Algorithm 2: "determine ranking tau by sorting
    images based on phi(x_i)")."""
    return model_ranks(-preference)


def rank_dpo_loss(policy: torch.Tensor, reference: torch.Tensor, preference: torch.Tensor, beta: float,
                  weighting: str = "dcg", rank_by: str = "preference") -> tuple[torch.Tensor, DpoStats]:
    """RankDPO (Karthik et al. 2024, arXiv 2410.18013 v2, Sec. 3.3 and Algorithm 2).

    policy, reference: (B, K) per-image errors e_theta, e_ref of K images of one prompt (shared
    timestep per prompt). preference: (B, K) psi_i, the fraction of (reward model, other image)
    comparisons image i strictly wins (Algorithm 1). With s_i = e_theta(x_i) - e_ref(x_i):
        L = mean_B  sum_{i,j: psi_i > psi_j}  Delta_ij * -log sigmoid(-beta/2 * (s_i - s_j))
        Delta_ij = |G_i - G_j| * |1/D(tau_i) - 1/D(tau_j)|,  G = 2^psi - 1,  D(tau) = log(1 + tau)
    tau: the ranks by psi (rank_by="preference", the paper's), or under the current model's s
    (rank_by="model", the LambdaLoss/LiPO form; no gradient through the weights). The paper
    writes sigma(-beta (s_i - s_j)); beta/2 here, so that beta means the same as in
    Diffusion-DPO. weighting="unit" sets Delta = 1: for K = 2 this is exactly Diffusion-DPO.
    """
    if rank_by not in RANK_BY:
        raise ValueError(f"unknown RankDPO ranking {rank_by!r}: expected {' | '.join(RANK_BY)}")
    s = policy - reference
    better = preference.unsqueeze(2) > preference.unsqueeze(1)  # (B, K, K): i preferred over j
    logits = -0.5 * beta * (s.unsqueeze(2) - s.unsqueeze(1))  # (B, K, K)
    if weighting == "unit":
        weights = torch.ones_like(logits)
    elif weighting == "dcg":
        with torch.no_grad():
            gain = torch.exp2(preference.float()) - 1
            ranks = preference_ranks(preference) if rank_by == "preference" else model_ranks(s.detach())
            inv_discount = 1.0 / dcg_discount(ranks)
            weights = (gain.unsqueeze(2) - gain.unsqueeze(1)).abs() * (
                inv_discount.unsqueeze(2) - inv_discount.unsqueeze(1)).abs()
    else:
        raise ValueError(f"unknown RankDPO weighting {weighting!r}: expected dcg | unit")
    terms = -F.logsigmoid(logits) * weights * better
    loss = terms.sum(dim=(1, 2)).mean()
    pair_logits = logits[better]
    stats = DpoStats(
        loss=loss.item(),
        implicit_accuracy=(pair_logits > 0).float().mean().item() if pair_logits.numel() else 0.0,
        reward_margin=pair_logits.mean().item() if pair_logits.numel() else 0.0,
        policy_error=policy.mean().item(),
        reference_error=reference.mean().item(),
    )
    return loss, stats
