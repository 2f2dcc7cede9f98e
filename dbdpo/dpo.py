"""Preference training on a fresh LoRA: Diffusion-DPO on pairs and RankDPO on ranked lists.

What a step reads (latents, text conditioning, SDXL size ids) is encoded once per round, before
step 0 (dbdpo.training). The reference model is the same UNet with the "dpo" adapter disabled:
the round's start model, merged into the base weights when the backbone was loaded.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from tqdm.auto import tqdm

from dbdpo.backbones import Backbone
from dbdpo.checkpoints import Checkpointing, resume, save_if_due, trainable_weights
from dbdpo.conditioning import TextConditioning, encode_prompts, image_size_ids
from dbdpo.config import DpoConfig
from dbdpo.data import load_image_rgb
from dbdpo.distributed import local_slice, mean_over_processes, num_processes
from dbdpo.errors import ConfigError
from dbdpo.lora import LoraState, lora_state
from dbdpo.losses import diffusion_dpo_loss, rank_dpo_loss
from dbdpo.preferences import Preferences
from dbdpo.threads import rebalance
from dbdpo.training import (
    Preview,
    StepCallback,
    check_dpo_health,
    check_finite,
    compiled_blocks,
    denoising_errors,
    encode_images,
    prepare_lora_training,
    preview_images,
    select_rows,
    step_log,
    training_mode,
)

log = logging.getLogger(__name__)


# --- Diffusion-DPO -----------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceData:
    """Everything a DPO step reads, precomputed once per round.

    latents: (I, 4, h, w) one per distinct image; sizes: (I, 6) SDXL size/crop ids or None;
    text: P rows, one per distinct prompt; winner/loser/prompt: (N,) indices, one per pair.
    """

    latents: torch.Tensor
    sizes: torch.Tensor | None
    text: TextConditioning
    winner: torch.Tensor
    loser: torch.Tensor
    prompt: torch.Tensor


def preference_data(backbone: Backbone, winner_paths: list[str], loser_paths: list[str],
                    prompts: list[str]) -> PreferenceData:
    """Encode each distinct image and prompt once (an image is often in several pairs)."""
    paths = sorted(set(winner_paths) | set(loser_paths))
    path_index = {p: i for i, p in enumerate(paths)}
    unique_prompts = sorted(set(prompts))
    prompt_index = {p: i for i, p in enumerate(unique_prompts)}
    images = [load_image_rgb(Path(p), min_size=1) for p in paths]
    return PreferenceData(
        latents=encode_images(backbone, images),
        sizes=image_size_ids(backbone, images),
        text=encode_prompts(backbone, unique_prompts),
        winner=torch.tensor([path_index[p] for p in winner_paths]),
        loser=torch.tensor([path_index[p] for p in loser_paths]),
        prompt=torch.tensor([prompt_index[p] for p in prompts]),
    )


def dpo_errors(unet, scheduler, data: PreferenceData, pair_idx: torch.Tensor, noise: torch.Tensor,
               timesteps: torch.Tensor, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample errors (B,), (B,) of winners and losers, in ONE batched UNet forward.

    Winner and loser of a pair share the noise and timestep (Wallace et al. 2024, Eq. 14).
    """
    image_idx = torch.cat([data.winner[pair_idx], data.loser[pair_idx]])
    latents = data.latents[image_idx]
    text = data.text.select(data.prompt[pair_idx].repeat(2))
    return denoising_errors(unet, scheduler, latents, torch.cat([noise, noise]), torch.cat([timesteps, timesteps]),
                            text, select_rows(data.sizes, image_idx), device).chunk(2)


@contextlib.contextmanager
def adapters_disabled(model) -> Iterator[None]:
    """`model` without its LoRA adapters for the duration (the DPO reference: the same
    weights, the round's start model), enabled again on the way out even if the pass fails
    (a disabled adapter left behind would train nothing in a later loop on this model)."""
    model.disable_adapters()
    try:
        yield
    finally:
        model.enable_adapters()


def timestep_range(cfg: DpoConfig, num_train_timesteps: int) -> tuple[int, int]:
    """[low, high) of the timesteps the DPO loss is drawn on: dpo.min_timestep up to
    dpo.max_timestep (None: the scheduler's num_train_timesteps, so 0 and None draw every
    timestep, as Wallace et al. 2024 do). Raising min_timestep trains on the noisier steps
    only, where a sample's layout is decided (what is drawn, and where); the nearly clean
    steps refine detail. docs/proving_ground.md measures it."""
    high = num_train_timesteps if cfg.max_timestep is None else cfg.max_timestep
    if not 0 <= cfg.min_timestep < high <= num_train_timesteps:
        raise ConfigError(f"dpo.min_timestep={cfg.min_timestep}, dpo.max_timestep={cfg.max_timestep} is invalid for "
                          f"this backbone: expected 0 <= dpo.min_timestep < dpo.max_timestep <= "
                          f"{num_train_timesteps}, its scheduler's num_train_timesteps")
    return cfg.min_timestep, high


def _preference_loop(backbone: Backbone, cfg: DpoConfig, draw, errors, loss_fn, desc: str,
                     on_step: StepCallback | None, checkpointing: Checkpointing | None, preview: Preview | None):
    """The DPO loop shared by Diffusion-DPO and RankDPO, on a fresh LoRA named "dpo".

    draw(gen, timesteps, size) -> batch (a tuple of tensors of `size` rows, timesteps drawn from the
    range [low, high) given); errors(unet, scheduler, batch, device) -> per-image
    errors; loss_fn(policy_errors, reference_errors, batch) -> (loss, DpoStats). The reference pass is
    the same UNet with the adapter disabled, under no_grad, on the same batch, noise and t.
    With `checkpointing`, the loop saves its state every `checkpointing.every` steps and
    resumes from a saved state with the same fingerprint (dbdpo.checkpoints). With `preview`, it
    samples the policy every `preview.every` steps (dbdpo.training.Preview).
    """
    scheduler = backbone.training_scheduler()
    timesteps = timestep_range(cfg, scheduler.config.num_train_timesteps)
    accelerator, unet, optimizer, params = prepare_lora_training(
        backbone, cfg.lora_rank, cfg.lora_targets, "dpo", cfg.learning_rate, cfg.gradient_accumulation_steps,
        cfg.gradient_checkpointing, cfg.seed, weight_decay=cfg.weight_decay)
    hint = f"lower dpo.learning_rate (now {cfg.learning_rate:g}) or dpo.beta (now {cfg.beta:g})"
    base = accelerator.unwrap_model(unet)
    gen = torch.Generator().manual_seed(cfg.seed)
    weights = trainable_weights({"unet": base})
    rows, start = resume(checkpointing, weights, optimizer, gen, accelerator.scaler, on_step)
    global_batch = cfg.batch_size * num_processes()
    mine = local_slice(global_batch)
    with training_mode(backbone, accelerator), compiled_blocks(base, cfg.compile):
        for step in tqdm(range(start, cfg.steps), desc=desc, unit="step", initial=start, total=cfg.steps):
            rebalance()  # the cores shared with the stages that started or ended since
            step_stats = []
            for _ in range(cfg.gradient_accumulation_steps):
                with accelerator.accumulate(unet):
                    # every process draws the global batch from the same generator and takes
                    # its rows; DDP averages the gradients (dbdpo.distributed)
                    batch = tuple(x[mine] for x in draw(gen, timesteps, global_batch))
                    with accelerator.autocast():
                        policy = errors(unet, scheduler, batch, accelerator.device)
                        with torch.no_grad(), adapters_disabled(base):  # reference = start model
                            reference = errors(unet, scheduler, batch, accelerator.device)
                    loss, stats = loss_fn(policy, reference, batch)
                    accelerator.backward(loss)
                    grad_norm = check_finite(loss, params, step, desc, hint,
                                             grads_scaled=accelerator.scaler is not None)
                    if cfg.max_grad_norm is not None and accelerator.sync_gradients:  # as diffusers' DPO scripts
                        accelerator.clip_grad_norm_(params, cfg.max_grad_norm)
                    optimizer.step()
                    optimizer.zero_grad(set_to_none=True)
                    step_stats.append(asdict(stats))
            means = {k: float(np.mean([s[k] for s in step_stats])) for k in step_stats[0]}
            means |= step_log(optimizer, grad_norm)  # the norm of the step's whole accumulated gradient
            rows.append({"step": step, **mean_over_processes(means)})
            if on_step is not None:
                on_step(rows[-1])
            check_dpo_health(rows, desc, hint)  # before a checkpoint of a ruined state is saved
            if preview is not None and preview.due(step, cfg.steps):
                preview.log(step, preview_images(backbone, preview))
            save_if_due(checkpointing, step + 1, cfg.steps, rows, weights, optimizer, gen, accelerator.scaler)
    return lora_state(base, "dpo"), rows


def train_dpo(backbone: Backbone, data: PreferenceData, cfg: DpoConfig, on_step: StepCallback | None = None,
              checkpointing: Checkpointing | None = None,
              preview: Preview | None = None) -> tuple[LoraState, list[dict]]:
    """Diffusion-DPO on a fresh LoRA; the reference is the UNet as given (the start model).

    Returns the DPO LoRA (relative to the start model) and one log row per optimizer step
    (also passed to `on_step`, a resumed run's saved rows first).
    """
    log.info("dpo: %d pairs over %d images and %d prompts, %d steps of %d pairs, beta=%g, timesteps [%d, %s)",
             len(data.winner), len(data.latents), len(data.text), cfg.steps, cfg.batch_size, cfg.beta,
             cfg.min_timestep, cfg.max_timestep or "T")

    def draw(gen, timesteps, size):
        pair_idx = torch.randint(0, len(data.winner), (size,), generator=gen)
        noise = torch.randn((size, *data.latents.shape[1:]), generator=gen)
        return pair_idx, noise, torch.randint(*timesteps, (size,), generator=gen)

    def errors(unet, scheduler, batch, device):
        return torch.stack(dpo_errors(unet, scheduler, data, *batch, device))  # (2, B): winners, losers

    def loss_fn(policy, reference, batch):
        return diffusion_dpo_loss(policy[0], policy[1], reference[0], reference[1], cfg.beta)

    return _preference_loop(backbone, cfg, draw, errors, loss_fn, "dpo", on_step, checkpointing, preview)


# --- RankDPO -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RankedData:
    """Ranked lists, precomputed once per round.

    latents: (I, 4, h, w) one per image; sizes: (I, 6) SDXL size/crop ids or None; text: P
    rows, one per prompt; images: (L, K) indices into latents, best first; preference: (L, K)
    psi of each; prompt: (L,) indices into text.
    """

    latents: torch.Tensor
    sizes: torch.Tensor | None
    text: TextConditioning
    images: torch.Tensor
    preference: torch.Tensor
    prompt: torch.Tensor


def ranked_data(backbone: Backbone, lists: list[tuple[str, list[str], list[float]]]) -> RankedData:
    """lists: (prompt, K image paths best first, their psi). Each image and prompt encoded once."""
    paths = [p for _, list_paths, _ in lists for p in list_paths]
    prompts = sorted({prompt for prompt, _, _ in lists})
    prompt_index = {p: i for i, p in enumerate(prompts)}
    if len({len(list_paths) for _, list_paths, _ in lists}) != 1:
        raise ValueError("every ranked list must hold the same number K of images")
    images = [load_image_rgb(Path(p), min_size=1) for p in paths]
    k = len(lists[0][1])
    return RankedData(
        latents=encode_images(backbone, images),
        sizes=image_size_ids(backbone, images),
        text=encode_prompts(backbone, prompts),
        images=torch.arange(len(paths)).view(len(lists), k),
        preference=torch.tensor([psi for _, _, psi in lists], dtype=torch.float32),
        prompt=torch.tensor([prompt_index[prompt] for prompt, _, _ in lists]),
    )


def rank_errors(unet, scheduler, data: RankedData, list_idx: torch.Tensor, noise: torch.Tensor,
                timesteps: torch.Tensor, device) -> torch.Tensor:
    """(B, K) per-image errors of B ranked lists in one batched forward; one timestep per list
    (shared by its K images), one noise per image (docs/design.md, RankDPO)."""
    batch, k = data.images[list_idx].shape
    image_idx = data.images[list_idx].flatten()
    latents = data.latents[image_idx]
    text = data.text.select(data.prompt[list_idx].repeat_interleave(k))
    return denoising_errors(unet, scheduler, latents, noise.flatten(0, 1), timesteps.repeat_interleave(k), text,
                            select_rows(data.sizes, image_idx), device).view(batch, k)


def train_rank_dpo(backbone: Backbone, data: RankedData, cfg: DpoConfig, on_step: StepCallback | None = None,
                   checkpointing: Checkpointing | None = None,
                   preview: Preview | None = None) -> tuple[LoraState, list[dict]]:
    """RankDPO on a fresh LoRA (cfg.batch_size ranked lists a step); reference = the start model."""
    num_lists, k = data.images.shape
    log.info("rank_dpo: %d lists of %d images, %d steps of %d lists, beta=%g, timesteps [%d, %s), %s weights ranked "
             "by %s", num_lists, k, cfg.steps, cfg.batch_size, cfg.beta, cfg.min_timestep, cfg.max_timestep or "T",
             cfg.rank_weighting, cfg.rank_by)

    def draw(gen, timesteps, size):
        list_idx = torch.randint(0, num_lists, (size,), generator=gen)
        noise = torch.randn((size, k, *data.latents.shape[1:]), generator=gen)
        return list_idx, noise, torch.randint(*timesteps, (size,), generator=gen)

    def errors(unet, scheduler, batch, device):
        return rank_errors(unet, scheduler, data, *batch, device)

    def loss_fn(policy, reference, batch):
        preference = data.preference[batch[0]].to(policy.device)
        return rank_dpo_loss(policy, reference, preference, cfg.beta, cfg.rank_weighting, cfg.rank_by)

    return _preference_loop(backbone, cfg, draw, errors, loss_fn, "rank_dpo", on_step, checkpointing, preview)


# --- either loss on a round's preferences ----------------------------------------------------


def train_on_preferences(backbone: Backbone, prefs: Preferences, cfg: DpoConfig, on_step: StepCallback | None = None,
                         checkpointing: Checkpointing | None = None,
                         preview: Preview | None = None) -> tuple[LoraState, list[dict]]:
    """Diffusion-DPO on pairs or RankDPO on ranked lists, as the preferences were built."""
    timestep_range(cfg, backbone.training_scheduler().config.num_train_timesteps)  # before encoding the images
    if prefs.mode == "rank":
        return train_rank_dpo(backbone, ranked_data(backbone, prefs.ranked()), cfg, on_step, checkpointing, preview)
    t = prefs.table
    data = preference_data(backbone, t["winner_path"].to_list(), t["loser_path"].to_list(), t["prompt"].to_list())
    return train_dpo(backbone, data, cfg, on_step, checkpointing, preview)


def final_metrics(rows: list[dict]) -> dict[str, float]:
    """The run's end state, a DVC metric: each logged quantity's mean over the last 10% of
    steps (at least one), as one step's batch is too noisy to compare experiments by."""
    last = rows[-max(1, len(rows) // 10):]
    return {k: sum(r[k] for r in last) / len(last) for k in last[0] if k != "step"}
