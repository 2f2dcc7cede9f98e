"""DreamBooth and Diffusion-DPO training loops (LoRA, accelerate).

Both loops precompute what does not change during training: the VAE latents of every
training image and the text embeddings of every prompt are computed once, before step 0,
so a step costs only UNet forwards/backwards. The DPO reference model is the same UNet with
the trainable adapter disabled (no second copy); the round's start model is merged into the
base weights first, so "adapter disabled" is exactly the start model.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from PIL import Image
from tqdm.auto import tqdm

from dbdpo.backbones import Backbone
from dbdpo.config import DpoConfig, FinetuneConfig
from dbdpo.data import load_image_rgb, to_tensor
from dbdpo.lora import LoraState, add_lora, lora_state
from dbdpo.losses import diffusion_dpo_loss, per_sample_error

log = logging.getLogger(__name__)

ENCODE_BATCH = 16


@torch.no_grad()
def encode_images(backbone: Backbone, images: list[Image.Image]) -> torch.Tensor:
    """(N, 4, h, w) scaled VAE latents (posterior mean: deterministic), computed in batches."""
    vae = backbone.pipe.vae
    out = []
    for start in range(0, len(images), ENCODE_BATCH):
        pixels = to_tensor(images[start : start + ENCODE_BATCH], backbone.resolution)
        pixels = pixels.to(vae.device, vae.dtype)
        out.append(vae.encode(pixels).latent_dist.mean * vae.config.scaling_factor)
    return torch.cat(out).float()


@torch.no_grad()
def encode_prompts(backbone: Backbone, prompts: list[str]) -> torch.Tensor:
    """(N, 77, D) text-encoder hidden states, as the UNet's cross-attention expects them."""
    pipe = backbone.pipe
    embeds, _ = pipe.encode_prompt(prompts, pipe.text_encoder.device, 1, do_classifier_free_guidance=False)
    return embeds.float()


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses: the noise (epsilon) or the velocity (v-prediction backbones)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        return noise
    raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")


def _prepare(backbone: Backbone, rank: int, adapter: str, lr: float, mixed_precision: str,
             grad_accum: int, checkpointing: bool):
    """Freeze the pipeline, add the trainable LoRA, hand UNet + optimizer to accelerate."""
    pipe = backbone.pipe
    for module in (pipe.unet, pipe.vae, pipe.text_encoder):
        module.requires_grad_(False)
    add_lora(pipe.unet, rank, adapter)
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
    accelerator = Accelerator(
        mixed_precision="no" if mixed_precision == "fp32" or not torch.cuda.is_available() else mixed_precision,
        gradient_accumulation_steps=grad_accum,
        cpu=not torch.cuda.is_available(),
    )
    params = [p for p in pipe.unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    unet.train()
    return accelerator, unet, optimizer


# --- DreamBooth --------------------------------------------------------------------------


def train_dreambooth(backbone: Backbone, instance_images: list[Image.Image], instance_prompt: str,
                     cfg: FinetuneConfig, class_images: list[Image.Image] | None = None,
                     class_prompt: str | None = None) -> tuple[LoraState, list[dict]]:
    """DreamBooth LoRA (Ruiz et al. 2023): denoising loss on the concept images with the
    instance prompt, plus the prior-preservation loss on class images when given.

    Returns the LoRA weights and one log row per step.
    """
    scheduler = backbone.training_scheduler()
    latents = encode_images(backbone, instance_images)
    text = encode_prompts(backbone, [instance_prompt]).expand(cfg.batch_size, -1, -1)
    prior_latents = encode_images(backbone, class_images) if class_images else None
    prior_text = encode_prompts(backbone, [class_prompt]).expand(cfg.batch_size, -1, -1) if class_images else None

    accelerator, unet, optimizer = _prepare(backbone, cfg.lora_rank, "dreambooth", cfg.learning_rate,
                                            cfg.mixed_precision, 1, cfg.gradient_checkpointing)
    device = accelerator.device
    gen = torch.Generator().manual_seed(cfg.seed)
    log.info("finetune: %d concept images, %d class images, %d steps", len(latents),
             0 if prior_latents is None else len(prior_latents), cfg.steps)

    def denoising_error(batch_latents: torch.Tensor, batch_text: torch.Tensor) -> torch.Tensor:
        noise = torch.randn(batch_latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch_latents),), generator=gen)
        noisy = scheduler.add_noise(batch_latents, noise, t)
        target = training_target(scheduler, batch_latents, noise, t)
        pred = unet(noisy.to(device), t.to(device), batch_text.to(device)).sample
        return per_sample_error(pred, target.to(device)).mean()

    rows = []
    for step in tqdm(range(cfg.steps), desc="finetune", unit="step"):
        idx = torch.randint(0, len(latents), (cfg.batch_size,), generator=gen)
        with accelerator.autocast():
            instance_loss = denoising_error(latents[idx], text)
            loss = instance_loss
            if prior_latents is not None:
                pidx = torch.randint(0, len(prior_latents), (cfg.batch_size,), generator=gen)
                loss = loss + cfg.prior_loss_weight * denoising_error(prior_latents[pidx], prior_text)
        accelerator.backward(loss)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        rows.append({"step": step, "loss": loss.item(), "instance_loss": instance_loss.item()})
    return lora_state(accelerator.unwrap_model(unet), "dreambooth"), rows


# --- Diffusion-DPO -----------------------------------------------------------------------


@dataclass(frozen=True)
class PreferenceData:
    """Everything a DPO step reads, precomputed once per round.

    latents: (I, 4, h, w) one per distinct image; text: (P, 77, D) one per distinct prompt;
    winner/loser/prompt: (N,) indices into them, one entry per pair.
    """

    latents: torch.Tensor
    text: torch.Tensor
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
    latents = torch.cat([data.latents[data.winner[pair_idx]], data.latents[data.loser[pair_idx]]])
    noise2, t2 = torch.cat([noise, noise]), torch.cat([timesteps, timesteps])
    noisy = scheduler.add_noise(latents, noise2, t2)
    target = training_target(scheduler, latents, noise2, t2)
    text = data.text[data.prompt[pair_idx]].repeat(2, 1, 1)
    pred = unet(noisy.to(device), t2.to(device), text.to(device)).sample
    return per_sample_error(pred, target.to(device)).chunk(2)


def train_dpo(backbone: Backbone, data: PreferenceData, cfg: DpoConfig) -> tuple[LoraState, list[dict]]:
    """Diffusion-DPO on a fresh LoRA; the reference is the UNet as given (the start model).

    Returns the DPO LoRA (relative to the start model) and one log row per optimizer step.
    """
    scheduler = backbone.training_scheduler()
    accelerator, unet, optimizer = _prepare(backbone, cfg.lora_rank, "dpo", cfg.learning_rate,
                                            cfg.mixed_precision, cfg.gradient_accumulation_steps,
                                            cfg.gradient_checkpointing)
    base = accelerator.unwrap_model(unet)
    device = accelerator.device
    gen = torch.Generator().manual_seed(cfg.seed)
    num_pairs = len(data.winner)
    log.info("dpo: %d pairs over %d images and %d prompts, %d steps of %d pairs, beta=%g",
             num_pairs, len(data.latents), len(data.text), cfg.steps, cfg.batch_size, cfg.beta)
    rows = []
    for step in tqdm(range(cfg.steps), desc="dpo", unit="step"):
        step_stats = []
        for _ in range(cfg.gradient_accumulation_steps):
            with accelerator.accumulate(unet):
                pair_idx = torch.randint(0, num_pairs, (cfg.batch_size,), generator=gen)
                noise = torch.randn((cfg.batch_size, *data.latents.shape[1:]), generator=gen)
                t = torch.randint(0, scheduler.config.num_train_timesteps, (cfg.batch_size,), generator=gen)
                with accelerator.autocast():
                    policy_w, policy_l = dpo_errors(unet, scheduler, data, pair_idx, noise, t, device)
                    with torch.no_grad():
                        base.disable_adapters()  # reference = start model, same weights
                        ref_w, ref_l = dpo_errors(unet, scheduler, data, pair_idx, noise, t, device)
                        base.enable_adapters()
                loss, stats = diffusion_dpo_loss(policy_w, policy_l, ref_w, ref_l, cfg.beta)
                accelerator.backward(loss)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                step_stats.append(asdict(stats))
        rows.append({"step": step, **{k: float(np.mean([s[k] for s in step_stats])) for k in step_stats[0]}})
    return lora_state(base, "dpo"), rows
