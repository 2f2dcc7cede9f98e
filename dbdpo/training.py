"""Training with accelerate, for SD 1.x/2.x and SDXL: what every loop shares. DreamBooth is
in dbdpo.dreambooth, the preference loops (Diffusion-DPO, RankDPO) in dbdpo.dpo.

Every loop precomputes what does not change during training: the VAE latents of every
training image, the text conditioning of every prompt (and SDXL's size/crop ids of every
image) are computed once, before step 0, and kept on the CPU until a batch needs them, so a
step costs only UNet forwards/backwards, and the VAE and text encoders leave the GPU while
the loop runs (DreamBooth with a trained text encoder encodes its prompts every step). The
DPO reference model is the same UNet with the trainable adapter disabled
(no second copy); the round's start model is merged into the base weights first, so
"adapter disabled" is exactly the start model.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from peft.helpers import disable_input_dtype_casting
from PIL import Image

from dbdpo.backbones import Backbone
from dbdpo.conditioning import TextConditioning, predict
from dbdpo.config import SamplingConfig
from dbdpo.data import to_tensor
from dbdpo.errors import TrainingDiverged
from dbdpo.lora import TEXT_ENCODERS, add_lora
from dbdpo.losses import per_sample_error, weighted_per_sample_error
from dbdpo.sampling import generate, plan_samples

log = logging.getLogger(__name__)

# Images per VAE encode call: 16 at the proving ground's 64 px, fewer as the side grows so
# the encoder's activations stay near those of 4 images at 512 px (SDXL at 1024 px: 1).
ENCODE_BATCH = 16
ENCODE_PIXELS = 4 * 512 * 512

# Variants of one transformer block: a UNet's blocks see up to 4 token counts (SD 2.x at
# 768 px: 9216, 2304, 576, 144), each with and without grad, and the first one's input
# needs no grad: 9, over dynamo's default of 8 (docs/benchmarks.md: past the limit the
# reference pass fell back to eager).
RECOMPILE_LIMIT = 16

StepCallback = Callable[[dict], None]  # called with each optimizer step's log row


@dataclass(frozen=True)
class Preview:
    """Sample images of the model in training every `every` steps and at the last: one image
    of each prompt, on `seed`, drawn with `sampling`'s settings, handed to `log(step, images)`.
    Every process of a launched loop samples its share (dbdpo.sampling.generate) and gets all;
    only the main one need log them."""

    every: int
    prompts: tuple[str, ...]
    log: Callable[[int, list[Image.Image]], None]
    sampling: SamplingConfig = SamplingConfig()
    seed: int = 0

    def due(self, step: int, steps: int) -> bool:
        return every_and_last(step, steps, self.every)


@torch.no_grad()
def preview_images(backbone: Backbone, preview: Preview) -> list[Image.Image]:
    """preview's images from the pipeline as it is now (the adapter in training enabled), every
    module in eval mode and the encoders beside the UNet for the duration, then all as they
    were. Sampling seeds its own generators: the loop's draws are untouched."""
    pipe = backbone.pipe
    modules = {name: m for name, m in pipe.components.items() if isinstance(m, torch.nn.Module)}
    training = {name: m.training for name, m in modules.items()}
    devices = {name: m.device for name, m in modules.items()}
    try:
        for name, module in modules.items():
            module.eval().to(pipe.unet.device)
        plan = plan_samples(list(preview.prompts), list(preview.prompts), 1, preview.seed)
        s = preview.sampling
        return generate(pipe, plan, steps=s.steps, guidance_scale=s.guidance_scale, batch_size=s.batch_size,
                        resolution=backbone.resolution, scheduler=s.scheduler, desc="preview")
    finally:
        for name, module in modules.items():
            module.train(training[name]).to(devices[name])


def encode_batch_size(resolution: int) -> int:
    return max(1, min(ENCODE_BATCH, ENCODE_PIXELS // resolution**2))


# Health beyond NaN: a finite but ruined run (too high a rate) fits its objective perfectly
# while the model stops denoising, so the loss alone looks ideal. Each signal is averaged over
# a window of steps (one batch's timesteps are too noisy) and compared with a bound that
# healthy runs stay far below (tests/test_training.py measures both sides).
HEALTH_WINDOW = 10  # steps
MAX_ERROR_RATIO = 5.0  # DPO: the policy's denoising error over the reference's, on the same batches
MAX_PROBE_RATIO = 3.0  # DreamBooth: the probe's error over the start model's (dbdpo.dreambooth)


def check_dpo_health(rows: list[dict], desc: str, hint: str) -> None:
    """Raise TrainingDiverged when, over the last HEALTH_WINDOW steps, the policy's denoising
    error is more than MAX_ERROR_RATIO times the reference's on the same noise and timesteps:
    DPO only reweights which images the model prefers, a model that no longer denoises is ruined
    whatever its loss and implicit accuracy say."""
    recent = rows[-HEALTH_WINDOW:]
    if len(recent) < 2:
        return
    ratio = sum(r["policy_error"] for r in recent) / max(sum(r["reference_error"] for r in recent), 1e-12)
    if ratio > MAX_ERROR_RATIO:
        raise TrainingDiverged(f"{desc} diverged by step {rows[-1]['step']}: the model's denoising error is "
                               f"{ratio:.1f}x the start model's on the same batches (healthy runs stay under "
                               f"{MAX_ERROR_RATIO:g}x); {hint}")


def check_probe_health(ratio: float, step: int, desc: str, hint: str) -> None:
    """Raise TrainingDiverged when the fixed probe batch's denoising error is more than
    MAX_PROBE_RATIO times the start model's (`ratio`): DreamBooth lowers the error on the
    concept's own images, so a model that no longer denoises them is ruined however its loss
    looks."""
    if ratio > MAX_PROBE_RATIO:
        raise TrainingDiverged(f"{desc} diverged by step {step}: the model's denoising error on a fixed batch of "
                               f"the training images is {ratio:.1f}x the start model's (healthy runs stay under "
                               f"{MAX_PROBE_RATIO:g}x); {hint}")


def check_finite(loss: torch.Tensor, params: list[torch.Tensor], step: int, desc: str, hint: str,
                 grads_scaled: bool = False) -> float | None:
    """Raise TrainingDiverged if the step's loss or any gradient is not finite (call after backward);
    return the gradients' total L2 norm (None with `grads_scaled`: it would be the scaled one).

    One device-to-host read a step: the flags and the norm travel together (a read per LoRA
    tensor would stall a GPU hundreds of times a step on SDXL). With fp16 loss scaling
    (`grads_scaled`) an inf gradient is the scaler's business, not a divergence: it skips
    that step and lowers the scale, so only the loss is checked.
    """
    grads = [p.grad for p in params if p.grad is not None]
    # The total norm is inf or NaN iff some entry is (foreach kernels: a few launches).
    norm = torch.nn.utils.get_total_norm(grads) if grads and not grads_scaled else None
    values = [loss.detach().float().reshape(()), *([norm.float().to(loss.device)] if norm is not None else [])]
    host = torch.stack(values).tolist()
    if not all(math.isfinite(v) for v in host):
        what = "loss" if not math.isfinite(host[0]) else "gradient"
        raise TrainingDiverged(f"{desc} diverged at step {step}: the {what} is not finite "
                               f"(loss {host[0]:.4g}); {hint}")
    return host[1] if norm is not None else None


def step_log(optimizer: torch.optim.Optimizer, grad_norm: float | None) -> dict[str, float]:
    """What every loop logs beside its losses: the learning rate and the gradients' norm
    (before any clipping), as diffusers' training scripts report them."""
    return {"learning_rate": optimizer.param_groups[0]["lr"], **({"grad_norm": grad_norm} if grad_norm is not None else {})}


@torch.no_grad()
def encode_images(backbone: Backbone, images: list[Image.Image]) -> torch.Tensor:
    """(N, 4, h, w) scaled VAE latents (posterior mean: deterministic), computed in batches."""
    vae = backbone.pipe.vae
    stored = vae.dtype
    # SDXL's VAE overflows in fp16 (its config says force_upcast): encode in fp32 then.
    upcast = stored == torch.float16 and bool(vae.config.get("force_upcast", False))
    if upcast:
        vae.to(torch.float32)
    out = []
    batch = encode_batch_size(backbone.resolution)
    try:
        for start in range(0, len(images), batch):
            pixels = to_tensor(images[start : start + batch], backbone.resolution)
            latents = vae.encode(pixels.to(vae.device, vae.dtype)).latent_dist.mean
            out.append((latents * vae.config.scaling_factor).float().cpu())
    finally:
        if upcast:
            vae.to(stored)
    return torch.cat(out)


def denoising_errors(unet, scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                     text: TextConditioning, sizes: torch.Tensor | None, device,
                     weights: torch.Tensor | None = None) -> torch.Tensor:
    """(B,) per-sample errors of the UNet's prediction of the training target, for latents
    (B, 4, h, w) noised with `noise` at `timesteps` (B,), text (B rows) and SDXL size ids
    (B, 6) or None: the step every loss here (DreamBooth, its probe, Diffusion-DPO, RankDPO)
    is built on. `weights` (B, 1, h, w): each latent cell's weight (weighted_per_sample_error);
    None: every cell alike."""
    noisy = scheduler.add_noise(latents, noise, timesteps)
    target = training_target(scheduler, latents, noise, timesteps)
    pred = predict(unet, noisy, timesteps, text, sizes, device)
    if weights is None:
        return per_sample_error(pred, target.to(device))
    return weighted_per_sample_error(pred, target.to(device), weights.to(device))


def every_and_last(step: int, steps: int, every: int) -> bool:
    """Whether loop step `step` (0-based, of `steps`) ends a run of `every` steps or the loop."""
    return (step + 1) % every == 0 or step + 1 == steps


def training_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet regresses: the noise (epsilon) or the velocity (v-prediction backbones)."""
    if scheduler.config.prediction_type == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if scheduler.config.prediction_type == "epsilon":
        return noise
    raise ValueError(f"unsupported prediction_type {scheduler.config.prediction_type!r}")


@contextlib.contextmanager
def training_mode(backbone: Backbone, accelerator: Accelerator, keep: tuple[str, ...] = ()) -> Iterator[None]:
    """What a training loop runs inside: the encoders off the GPU, and under autocast no
    input cast to the fp32 LoRA weights (peft casts each LoRA layer's input to the LoRA
    dtype; autocast can cast the small LoRA weights instead, which keeps SDXL's peak memory
    lower: docs/benchmarks.md). `keep`: encoders that train and so stay on the device
    (e.g. "text_encoder")."""
    with encoders_offloaded(backbone.pipe, keep), \
            disable_input_dtype_casting(backbone.pipe.unet, active=accelerator.mixed_precision != "no"):
        yield


@contextlib.contextmanager
def compiled_blocks(unet, active: bool = True) -> Iterator[None]:
    """The UNet's transformer blocks compiled with torch.compile for the duration, eager again
    afterwards (the pipeline then samples and exports as loaded).

    diffusers' regional compilation (`compile_repeated_blocks`): each BasicTransformerBlock
    shape compiles once and its every instance reuses the code, minutes less than compiling
    the whole UNet. Shapes are static (a loop's batch never changes); the reference pass
    (adapter disabled, no grad) compiles its own variant on the first step.
    """
    if not active:
        yield
        return
    import torch._dynamo  # only here: importing the compiler costs a stage's start-up
    import torch._inductor.config

    # Code compiled by an earlier loop (other shapes) would fill dynamo's recompile limit (8)
    # and send this loop's reference pass back to eager, which rounds unlike the compiled
    # policy: the first loss was 0.6655, not log 2 (H100, SDXL 1024, 4 pairs after 1-pair loops).
    torch._dynamo.reset()
    unet.compile_repeated_blocks(dynamic=False)
    try:
        # Round each fp16/bf16 intermediate as eager does: otherwise the policy and reference
        # graphs fuse differently, disagree by rounding before any training, and beta (thousands)
        # amplifies that into the loss (step 0's is log 2 only with this; tiny SDXL, bf16, CPU).
        # A variant over the recompile limit fails rather than silently running eager.
        with torch._inductor.config.patch(emulate_precision_casts=True), \
                torch._dynamo.config.patch(fail_on_recompile_limit_hit=True, recompile_limit=RECOMPILE_LIMIT):
            yield
    finally:
        for module in unet.modules():
            if module.__class__.__name__ in unet._repeated_blocks:
                module._compiled_call_impl = None  # what nn.Module.compile set: back to eager calls


@contextlib.contextmanager
def encoders_offloaded(pipe, keep: tuple[str, ...] = ()) -> Iterator[None]:
    """Move the VAE and text encoders to the CPU for the duration (a training loop reads
    only cached latents and text states), and back to where they were afterwards.
    Nothing moves when the UNet is on the CPU."""
    if pipe.unet.device.type == "cpu":
        yield
        return
    parts = [getattr(pipe, name, None) for name in ("vae", "text_encoder", "text_encoder_2") if name not in keep]
    parts = [(m, m.device) for m in parts if isinstance(m, torch.nn.Module)]
    for module, _ in parts:
        module.to("cpu")
    try:
        yield
    finally:
        for module, device in parts:
            module.to(device)


def prepare_lora_training(backbone: Backbone, rank: int, targets: str | Sequence[str], adapter: str, lr: float,
                          grad_accum: int, checkpointing: bool, seed: int, text_encoders: bool = False,
                          weight_decay: float = 0.0):
    """Freeze the pipeline, add the trainable LoRA (to the text encoders' attention too with
    `text_encoders`), its init drawn from `seed` (the UNet's; seed + i for the i-th text
    encoder), hand UNet + optimizer to accelerate; returns (accelerator, unet, optimizer,
    trainable parameters).

    Mixed precision follows the frozen weights, which `load_backbone` cast to the stage's
    `mixed_precision` on a GPU: fp16/bf16 weights run under autocast to that dtype, while
    the LoRA weights stay fp32 so the optimizer updates them at full precision.
    """
    pipe = backbone.pipe
    autocast = {torch.float32: "no", torch.float16: "fp16", torch.bfloat16: "bf16"}[pipe.unet.dtype]
    freeze(pipe)
    trained = [pipe.unet, *(pipeline_text_encoders(pipe).values() if text_encoders else ())]
    add_lora(pipe.unet, rank, adapter, targets, seed=seed)
    for i, encoder in enumerate(trained[1:], start=1):
        add_lora(encoder, rank, adapter, "text_encoder", seed=seed + i)
    params = [p for module in trained for p in module.parameters() if p.requires_grad]
    for param in params:
        param.data = param.data.float()
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    return (*accelerate_training(pipe, trained, optimizer, autocast, grad_accum, checkpointing), params)


def pipeline_text_encoders(pipe) -> dict[str, torch.nn.Module]:
    """The pipeline's text encoders by component name: SD's one, SDXL's two."""
    return {name: getattr(pipe, name) for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None}


def freeze(pipe) -> None:
    """No gradients for any part of the pipeline; training then opens what it trains."""
    for module in pipe.components.values():
        if isinstance(module, torch.nn.Module):
            module.requires_grad_(False)


def accelerate_training(pipe, trained: list[torch.nn.Module], optimizer: torch.optim.Optimizer,
                        mixed_precision: str, grad_accum: int, checkpointing: bool):
    """How every training setup ends: gradient checkpointing on the trained modules (the
    UNet first, then any text encoder), a fresh accelerate state with `mixed_precision`
    (no | fp16 | bf16), the UNet and optimizer prepared, the trained modules in train mode;
    returns (accelerator, unet, optimizer)."""
    if checkpointing:
        pipe.unet.enable_gradient_checkpointing()
        for encoder in trained[1:]:
            encoder.gradient_checkpointing_enable()
    # AcceleratorState is a process-wide singleton that refuses a second mixed-precision
    # setting; a process may train several models (tests, notebooks), so reset it. Its
    # distributed part (PartialState: ranks, process group) is kept.
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision, gradient_accumulation_steps=grad_accum,
                              cpu=pipe.unet.device.type == "cpu")
    unet, optimizer = accelerator.prepare(pipe.unet, optimizer)
    for module in trained:
        module.train()
    return accelerator, unet, optimizer


def select_rows(sizes: torch.Tensor | None, index: torch.Tensor) -> torch.Tensor | None:
    """SDXL size ids of the batch's images; None for SD."""
    return None if sizes is None else sizes[index]
