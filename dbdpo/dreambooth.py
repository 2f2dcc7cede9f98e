"""DreamBooth (Ruiz et al. 2023): bind the concept to its instance token with the denoising
loss on the concept images, plus the prior-preservation loss on the base model's own class
images when asked (Sec. 3.3). Writes round 0, the model every DPO round starts from.
finetune.snr_gamma weighs each image's denoising error by Min-SNR-gamma (dbdpo.losses), the
class images' as the concept's: both are the same objective, and prior_loss_weight alone sets
their balance (diffusers' DreamBooth LoRA scripts weigh the instance loss only).

finetune.method: `lora` trains a LoRA on the UNet (the proving ground's default, measured in
docs/proving_ground.md); `full` trains every UNet weight and, with finetune.train_text_encoder,
the text encoder(s), as the paper does and as DreamBoothDPO's experiments start from
(lr 2e-6, constant, batch 1, 400 steps): round 0 is then a whole diffusers pipeline, and
each later round is one LoRA relative to it.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from PIL import Image
from tqdm.auto import tqdm

from dbdpo.artifacts import atomic_dir
from dbdpo.backbones import Backbone
from dbdpo.checkpoints import Checkpointing, resume, save_if_due, trainable_weights
from dbdpo.conditioning import (
    TextConditioning,
    encode_prompts,
    image_size_ids,
    text_conditioning,
)
from dbdpo.config import ConceptConfig, FinetuneConfig, GenerateConfig
from dbdpo.distributed import local_slice, mean_over_processes, num_processes
from dbdpo.early_stops import EarlyStops
from dbdpo.errors import DataError
from dbdpo.lora import TEXT_ENCODERS, LoraState, lora_state, save_lora
from dbdpo.losses import min_snr_weights
from dbdpo.provenance import RECORD_FILE
from dbdpo.sampling import generate, plan_samples
from dbdpo.threads import rebalance
from dbdpo.training import (
    Preview,
    StepCallback,
    accelerate_training,
    check_finite,
    check_probe_health,
    denoising_errors,
    encode_images,
    every_and_last,
    freeze,
    pipeline_text_encoders,
    prepare_lora_training,
    preview_images,
    select_rows,
    step_log,
    training_mode,
)

log = logging.getLogger(__name__)

AUTOCAST = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}
FULL_WEIGHT_DECAY = 1e-2  # diffusers' train_dreambooth.py default (--adam_weight_decay)

# The health probe: DreamBooth's loss is drawn on fresh noise and timesteps every step, too
# noisy to compare with itself, and a ruined run's loss rises within the very steps it would
# be compared with. A fixed batch (the first PROBE_IMAGES concept and class images, each at
# PROBE_TIMESTEPS and fixed noise) gives a low-noise error curve whose start is the model as
# loaded, measured before any update (dbdpo.training.check_probe_health).
PROBE_EVERY = 50  # steps; the last step is always probed, before the model is returned
PROBE_IMAGES = 8
PROBE_TIMESTEPS = (0.25, 0.75)  # fractions of the scheduler's num_train_timesteps


def instance_prompt(cfg: FinetuneConfig, concept: ConceptConfig) -> str:
    """finetune.instance_prompt with the concept's token and class: "a photo of sks toy"."""
    return cfg.instance_prompt.format(token=concept.token, class_noun=concept.class_noun)


def instance_prompts(cfg: FinetuneConfig, concept: ConceptConfig, captions: list[str | None]) -> list[str]:
    """Each concept photo's prompt: its caption with finetune.captions (dbdpo.data.load_captions;
    instance_prompt for a photo without one), else instance_prompt for every photo, as the
    paper captions them all "a [V] [class noun]"."""
    if not cfg.captions:
        return [instance_prompt(cfg, concept)] * len(captions)
    if all(c is None for c in captions):
        raise DataError(f"finetune.captions: true, but no photo in concept.dir={concept.dir!r} has a caption file "
                        "(<photo>.txt); add them, or set finetune.captions: false")
    log.info("finetune.captions: %d of %d photos captioned by their file", sum(c is not None for c in captions),
             len(captions))
    return [instance_prompt(cfg, concept) if c is None else c for c in captions]


def class_prior(backbone: Backbone, cfg: FinetuneConfig, concept: ConceptConfig,
                sampling: GenerateConfig) -> tuple[list[Image.Image] | None, str | None]:
    """Prior preservation (Sec. 3.3): the base model's own images of the class keep DreamBooth
    from forgetting it. (cfg.num_class_images images of the class prompt, sampled as generate
    samples, seeds from cfg.seed; the prompt), or (None, None) when finetune.prior_preservation
    is off."""
    if not cfg.prior_preservation:
        return None, None
    prompt = cfg.class_prompt.format(token=concept.token, class_noun=concept.class_noun)
    plan = plan_samples([cfg.class_prompt], [prompt], cfg.num_class_images, cfg.seed)
    images = generate(backbone.pipe, plan, steps=sampling.steps, guidance_scale=sampling.guidance_scale,
                      batch_size=sampling.batch_size, resolution=backbone.resolution, scheduler=sampling.scheduler,
                      desc="class images")
    return images, prompt


def weights_precision(cfg: FinetuneConfig) -> str:
    """What load_backbone casts the weights to for this run: a LoRA trains on a frozen base in
    finetune.mixed_precision; full training keeps fp32 weights (AdamW updates of 2e-6 would
    vanish in fp16/bf16) and runs the forward under autocast to mixed_precision."""
    return cfg.mixed_precision if cfg.method == "lora" else "fp32"


def _optimizer(params: list[torch.Tensor], cfg: FinetuneConfig) -> torch.optim.Optimizer:
    if cfg.optimizer == "adamw_8bit":  # dbdpo.validation checked that bitsandbytes imports
        import bitsandbytes

        return bitsandbytes.optim.AdamW8bit(params, lr=cfg.learning_rate, weight_decay=FULL_WEIGHT_DECAY)
    fused = all(p.device.type == "cuda" for p in params)  # one kernel for all tensors: faster, no extra memory
    return torch.optim.AdamW(params, lr=cfg.learning_rate, weight_decay=FULL_WEIGHT_DECAY, fused=fused)


@dataclass(frozen=True)
class Probe:
    """A fixed denoising batch of M rows: latents, noise (M, 4, h, w), timesteps (M,), the
    prompt index of each row (M,) and SDXL size ids (M, 6) or None."""

    latents: torch.Tensor
    noise: torch.Tensor
    timesteps: torch.Tensor
    prompt: torch.Tensor
    sizes: torch.Tensor | None


def make_probe(sets: list[tuple[torch.Tensor, torch.Tensor | None, torch.Tensor]], num_train_timesteps: int,
               seed: int) -> Probe:
    """The probe over image sets [(latents (N, 4, h, w), size ids or None, each image's prompt
    index (N,))]: the first PROBE_IMAGES of each set, each at every PROBE_TIMESTEPS fraction,
    with noise from its own generator (the training draws stay as they were)."""
    latents, sizes, prompt = [], [], []
    for set_latents, set_sizes, set_prompts in sets:
        n = min(PROBE_IMAGES, len(set_latents))
        latents.append(set_latents[:n])
        sizes.append(None if set_sizes is None else set_sizes[:n])
        prompt.append(set_prompts[:n])
    repeats = len(PROBE_TIMESTEPS)
    latents = torch.cat(latents).repeat(repeats, 1, 1, 1)
    sizes = None if sizes[0] is None else torch.cat(sizes).repeat(repeats, 1)
    per_image = len(latents) // repeats
    timesteps = torch.tensor([int(f * num_train_timesteps) for f in PROBE_TIMESTEPS]).repeat_interleave(per_image)
    noise = torch.randn(latents.shape, generator=torch.Generator().manual_seed(seed))
    return Probe(latents, noise, timesteps, torch.cat(prompt).repeat(repeats), sizes)


@torch.no_grad()
def probe_error(unet, scheduler, probe: Probe, text: TextConditioning, batch_size: int, device) -> float:
    """The model's mean denoising error on the probe (the unweighted per-sample error), in
    batches of `batch_size` rows."""
    errors = []
    for start in range(0, len(probe.latents), batch_size):
        rows = slice(start, start + batch_size)
        errors.append(denoising_errors(unet, scheduler, probe.latents[rows], probe.noise[rows], probe.timesteps[rows],
                                       text.select(probe.prompt[rows]),
                                       None if probe.sizes is None else probe.sizes[rows], device))
    return torch.cat(errors).mean().item()


def _prepare_full_training(backbone: Backbone, cfg: FinetuneConfig):
    """Every UNet weight trainable (and the text encoders' with cfg.train_text_encoder), the
    rest frozen; returns (accelerator, unet, optimizer, trainable parameters)."""
    pipe = backbone.pipe
    freeze(pipe)
    trained = [pipe.unet, *(pipeline_text_encoders(pipe).values() if cfg.train_text_encoder else ())]
    for module in trained:
        module.requires_grad_(True)
    params = [p for module in trained for p in module.parameters()]
    autocast = AUTOCAST[cfg.mixed_precision] if pipe.unet.device.type == "cuda" else "no"
    return (*accelerate_training(pipe, trained, _optimizer(params, cfg), autocast, 1, cfg.gradient_checkpointing),
            params)


def train_dreambooth(backbone: Backbone, instance_images: list[Image.Image], instance_prompt: str | list[str],
                     cfg: FinetuneConfig, class_images: list[Image.Image] | None = None,
                     class_prompt: str | None = None, on_step: StepCallback | None = None,
                     checkpointing: Checkpointing | None = None, preview: Preview | None = None,
                     early_stops: EarlyStops | None = None,
                     loss_weights: torch.Tensor | None = None) -> tuple[LoraState | None, list[dict]]:
    """DreamBooth: denoising loss on the concept images with the instance prompt (one for all,
    or one per image: instance_prompts), plus the prior-preservation loss on class images when given.

    Returns (the LoRA, for finetune.method=lora; None for full, whose result is the backbone's
    pipeline itself, trained in place) and one log row per step (also passed to `on_step`, a
    resumed run's saved rows first). With `checkpointing` the loop saves its state every
    `checkpointing.every` steps and resumes from a matching saved state (dbdpo.checkpoints).
    With `preview`, it samples the model every `preview.every` steps (dbdpo.training.Preview).
    With `early_stops` (finetune.method lora), it keeps the LoRA after each of its step counts
    in `early_stops.loras`; a checkpoint carries those already kept. `loss_weights` (N, 1, h, w),
    one map a concept image in its latent cells: the instance loss weighs each cell by it
    (a masked loss: high on the concept, low on its photo's background); None: every cell alike.
    """
    scheduler = backbone.training_scheduler()
    latents, sizes = encode_images(backbone, instance_images), image_size_ids(backbone, instance_images)
    if loss_weights is not None and loss_weights.shape != (len(latents), 1, *latents.shape[2:]):
        raise ValueError(f"loss_weights {tuple(loss_weights.shape)}: expected one map a concept image in the latent "
                         f"grid, {(len(latents), 1, *latents.shape[2:])}")
    per_image = [instance_prompt] * len(instance_images) if isinstance(instance_prompt, str) else instance_prompt
    prompts = list(dict.fromkeys(per_image)) + ([class_prompt] if class_images else [])
    image_prompt = torch.tensor([prompts.index(p) for p in per_image])  # (N,) each photo's row of prompts
    cached = None if cfg.train_text_encoder else encode_prompts(backbone, prompts)
    if class_images:
        prior_latents, prior_sizes = encode_images(backbone, class_images), image_size_ids(backbone, class_images)

    if cfg.method == "lora":
        accelerator, unet, optimizer, params = prepare_lora_training(
            backbone, cfg.lora_rank, cfg.lora_targets, "dreambooth", cfg.learning_rate, 1, cfg.gradient_checkpointing,
            cfg.seed, text_encoders=cfg.train_text_encoder)
    else:
        accelerator, unet, optimizer, params = _prepare_full_training(backbone, cfg)
    hint = f"lower finetune.learning_rate (now {cfg.learning_rate:g})"
    device = accelerator.device
    gen = torch.Generator().manual_seed(cfg.seed)
    log.info("finetune (%s%s): %d concept images, %d class images, %d steps", cfg.method,
             " + text encoder" if cfg.train_text_encoder else "", len(latents),
             len(class_images) if class_images else 0, cfg.steps)

    def text(rows: torch.Tensor) -> TextConditioning:
        """The text states of `rows` (indices into prompts, one per batch element): cached, or
        encoded now so the text encoder gets gradients."""
        if cached is not None:
            return cached.select(rows)
        distinct = rows.unique()  # sorted: each distinct prompt encoded once
        return text_conditioning(backbone, [prompts[i] for i in distinct]).select(torch.searchsorted(distinct, rows))

    # Every process draws the global batch from the same generator and trains on its rows
    # (dbdpo.distributed); DDP averages the gradients: the step of one process on them all.
    global_batch = cfg.batch_size * num_processes()
    mine = local_slice(global_batch)

    def denoising_error(batch_latents: torch.Tensor, batch_text: TextConditioning,
                        batch_sizes: torch.Tensor | None, batch_weights: torch.Tensor | None = None) -> torch.Tensor:
        """The mean denoising error on this process's rows of a global batch of latents (and
        of their loss weights, when given); batch_text holds this process's rows already."""
        noise = torch.randn(batch_latents.shape, generator=gen)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (len(batch_latents),), generator=gen)
        batch_latents, noise, t = batch_latents[mine], noise[mine], t[mine]
        error = denoising_errors(unet, scheduler, batch_latents, noise, t, batch_text,
                                 None if batch_sizes is None else batch_sizes[mine], device,
                                 None if batch_weights is None else batch_weights[mine])
        if cfg.snr_gamma is not None:
            error = error * min_snr_weights(scheduler.alphas_cumprod, t, cfg.snr_gamma,
                                            scheduler.config.prediction_type).to(device)
        return error.mean()

    keep = TEXT_ENCODERS if cfg.train_text_encoder else ()
    trained = {"unet": accelerator.unwrap_model(unet),
               **(pipeline_text_encoders(backbone.pipe) if cfg.train_text_encoder else {})}
    weights = trainable_weights(trained)
    class_index = len(prompts) - 1  # the class prompt's row, with prior preservation
    prior_set = [(prior_latents, prior_sizes, torch.full((len(prior_latents),), class_index))] if class_images else []
    probe = make_probe([(latents, sizes, image_prompt), *prior_set], scheduler.config.num_train_timesteps, cfg.seed)

    def probed() -> float:
        """The probe's error now; every process computes it whole (no collective)."""
        with accelerator.autocast():
            probe_text = cached if cached is not None else text_conditioning(backbone, prompts)
            return probe_error(trained["unet"], scheduler, probe, probe_text, cfg.batch_size, device)

    def current_lora() -> LoraState:
        """The LoRA as it stands: the UNet's keys bare, a text encoder's under its component name."""
        state = {}
        for name, module in trained.items():
            prefix = "" if name == "unet" else f"{name}."
            state |= {prefix + k: v for k, v in lora_state(module, "dreambooth").items()}
        return state

    kept = early_stops if early_stops is not None and cfg.method == "lora" else EarlyStops(())
    if early_stops is not None and early_stops.steps and cfg.method != "lora":
        log.info("finetune.method %s keeps no early stops (a whole model each): the frontier has none", cfg.method)
    with training_mode(backbone, accelerator, keep):
        start_error = probed()  # the model as loaded: before a resumed run's weights replace it
        saved: dict[str, torch.Tensor] = {}
        rows, start = resume(checkpointing, weights, optimizer, gen, accelerator.scaler, on_step, extra=saved)
        kept.restore(saved)  # the early stops a resumed run passed before it was stopped
        for step in tqdm(range(start, cfg.steps), desc="finetune", unit="step", initial=start, total=cfg.steps):
            rebalance()  # the cores shared with the stages that started or ended since
            idx = torch.randint(0, len(latents), (global_batch,), generator=gen)
            with accelerator.autocast():
                instance_loss = denoising_error(latents[idx], text(image_prompt[idx[mine]]), select_rows(sizes, idx),
                                                None if loss_weights is None else loss_weights[idx])
                loss, losses = instance_loss, {}
                if class_images:
                    pidx = torch.randint(0, len(prior_latents), (global_batch,), generator=gen)
                    class_rows = torch.full((cfg.batch_size,), class_index)
                    prior_loss = denoising_error(prior_latents[pidx], text(class_rows), select_rows(prior_sizes, pidx))
                    loss = loss + cfg.prior_loss_weight * prior_loss
                    # the two parts apart only where there are two (without, they are the loss)
                    losses = {"instance_loss": instance_loss.item(), "prior_loss": prior_loss.item()}
            accelerator.backward(loss)
            grad_norm = check_finite(loss, params, step, "finetune", hint, grads_scaled=accelerator.scaler is not None)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            losses |= step_log(optimizer, grad_norm)
            rows.append({"step": step, **mean_over_processes({"loss": loss.item(), **losses})})
            if every_and_last(step, cfg.steps, PROBE_EVERY):
                rows[-1]["probe_ratio"] = probed() / max(start_error, 1e-12)
                check_probe_health(rows[-1]["probe_ratio"], step, "finetune", hint)
            if preview is not None and preview.due(step, cfg.steps):
                preview.log(step, preview_images(backbone, preview))
            if on_step is not None:
                on_step(rows[-1])
            if step + 1 in kept.steps:
                kept.loras[step + 1] = current_lora()
            save_if_due(checkpointing, step + 1, cfg.steps, rows, weights, optimizer, gen, accelerator.scaler,
                        extra=kept.tensors)
    if cfg.method == "lora":
        return current_lora(), rows
    for module in backbone.pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False).eval()
    return None, rows


def dreambooth(backbone: Backbone, concept_images: list[Image.Image], cfg: FinetuneConfig,
               concept: ConceptConfig, sampling: GenerateConfig, on_step: StepCallback | None = None,
               checkpointing: Checkpointing | None = None, preview: Preview | None = None,
               prompts: list[str] | None = None,
               early_stops: EarlyStops | None = None,
               loss_weights: torch.Tensor | None = None) -> tuple[LoraState | None, list[dict]]:
    """Round 0 as the finetune stage trains it: each photo's instance prompt (`prompts`, from
    instance_prompts; None: finetune.instance_prompt for all), the class images of prior
    preservation when cfg asks for them (drawn with `sampling`'s settings), then
    train_dreambooth (with `loss_weights`, its masked loss), whose result and log rows it returns."""
    class_images, class_prompt = class_prior(backbone, cfg, concept, sampling)
    return train_dreambooth(backbone, concept_images, prompts or instance_prompt(cfg, concept), cfg, class_images,
                            class_prompt, on_step, checkpointing, preview, early_stops, loss_weights)


def save_round_0(backbone: Backbone, lora: LoraState | None, directory: Path,
                 made_from: dict[str, str] | None = None) -> None:
    """models/round_0: the DreamBooth LoRA (diffusers' LoRA format), or for a full fine-tune
    (`lora` None) the whole pipeline as a diffusers folder of safetensors, loadable with
    `DiffusionPipeline.from_pretrained`; `made_from` (dbdpo.provenance) beside either."""
    if lora is not None:
        save_lora(backbone.pipe, lora, directory, made_from=made_from)
        return
    with atomic_dir(directory) as tmp:
        backbone.pipe.save_pretrained(tmp, safe_serialization=True)
        if made_from is not None:
            (tmp / RECORD_FILE).write_text(json.dumps(made_from, indent=2) + "\n")
