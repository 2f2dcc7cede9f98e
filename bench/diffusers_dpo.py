"""The peer: one Diffusion-DPO LoRA training step as diffusers' example scripts do it.

Read from examples/research_projects/diffusion_dpo/train_diffusion_dpo.py (SD 1.x/2.x) and
train_diffusion_dpo_sdxl.py (SDXL), and reproduced step for step so a benchmark compares
against what users of those scripts really run:
  - frozen UNet and text encoder(s) in the mixed-precision dtype; the VAE in that dtype for
    SD, in fp32 for SDXL ("to avoid NaN losses"); all of them on the GPU for the whole run;
  - LoRA r = alpha = rank, gaussian init, on to_q/to_k/to_v/to_out.0; its weights upcast to
    fp32 under fp16 only; AdamW (weight decay 1e-2); accelerate's autocast and grad scaler;
  - every step: VAE-encode winner and loser pixels (latent_dist.sample(), in chunks of
    vae_encode_batch_size = 8) and tokenize + encode the prompts (SDXL: both encoders'
    penultimate states and the pooled embedding, plus the size/crop time ids);
  - winner and loser batched in one UNet forward sharing noise and timestep; the reference
    pass is the same UNet with the adapter disabled, under no_grad;
  - loss -logsigmoid(-beta/2 * (model_diff - ref_diff)); clip_grad_norm_(max_grad_norm=1.0)
    when gradients sync; the four logged values read back (.item()) every step.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.state import AcceleratorState
from accelerate.utils import extract_model_from_parallel
from peft import LoraConfig

ADAPTER = "diffusers_dpo"
DTYPES = {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def diffusers_dpo(pipe, pixels: torch.Tensor, prompts: list[str], steps: int, *, mixed_precision: str,
                  gradient_checkpointing: bool, rank: int = 8, learning_rate: float = 1e-5, beta: float = 5000.0,
                  seed: int = 0, on_step: Callable[[dict], None] | None = None) -> list[dict]:
    """Run `steps` DPO steps on `pixels` (B, 6, H, W) in [-1, 1], winner then loser channels,
    and `prompts` (B,), as the scripts' training loop does; returns the logged rows.

    The pipeline's parts are moved and cast as the script does; the LoRA is removed and the
    UNet's forward unwrapped afterwards, so the pipeline can be reused.
    """
    is_sdxl = hasattr(pipe, "text_encoder_2")
    AcceleratorState._reset_state(reset_partial_state=False)
    accelerator = Accelerator(mixed_precision=mixed_precision)
    device, weight_dtype = accelerator.device, DTYPES[mixed_precision]
    unet, vae, scheduler = pipe.unet, pipe.vae, pipe.scheduler
    encoders = [pipe.text_encoder, pipe.text_encoder_2] if is_sdxl else [pipe.text_encoder]
    tokenizers = [pipe.tokenizer, pipe.tokenizer_2] if is_sdxl else [pipe.tokenizer]
    for module in [unet, vae, *encoders]:
        module.requires_grad_(False)
    unet.to(device, dtype=weight_dtype)
    for encoder in encoders:
        encoder.to(device, dtype=weight_dtype)
    vae.to(device, dtype=torch.float32 if is_sdxl else weight_dtype)

    unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                target_modules=["to_k", "to_q", "to_v", "to_out.0"]), adapter_name=ADAPTER)
    if mixed_precision == "fp16":
        for param in unet.parameters():
            if param.requires_grad:
                param.data = param.to(torch.float32)
    if gradient_checkpointing:
        unet.enable_gradient_checkpointing()
    params = [p for p in unet.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=learning_rate, betas=(0.9, 0.999), weight_decay=1e-2, eps=1e-8)
    model, optimizer = accelerator.prepare(unet, optimizer)
    model.train()
    torch.manual_seed(seed)
    resolution = pixels.shape[-1]
    rows = []
    try:
        for _ in range(steps):
            with accelerator.accumulate(model):
                pixel_values = pixels.to(device, dtype=vae.dtype)
                feed = torch.cat(pixel_values.chunk(2, dim=1))
                latents = torch.cat([vae.encode(feed[i : i + 8]).latent_dist.sample() for i in range(0, len(feed), 8)])
                latents = latents * vae.config.scaling_factor
                latents = latents.to(weight_dtype)
                noise = torch.randn_like(latents).chunk(2)[0].repeat(2, 1, 1, 1)
                bsz = latents.shape[0] // 2
                timesteps = torch.randint(0, scheduler.config.num_train_timesteps, (bsz,), device=device).repeat(2)
                noisy = scheduler.add_noise(latents, noise, timesteps)
                hidden, added = _encode_prompts(encoders, tokenizers, prompts, is_sdxl, resolution, device, weight_dtype)
                model_pred = model(noisy, timesteps, hidden, added_cond_kwargs=added).sample
                if scheduler.config.prediction_type == "v_prediction":
                    target = scheduler.get_velocity(latents, noise, timesteps)
                else:
                    target = noise
                model_losses = F.mse_loss(model_pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
                model_w, model_l = model_losses.chunk(2)
                raw_model_loss = 0.5 * (model_w.mean() + model_l.mean())
                model_diff = model_w - model_l
                unet.disable_adapters()
                with torch.no_grad():
                    ref_pred = model(noisy, timesteps, hidden, added_cond_kwargs=added).sample
                    ref_loss = F.mse_loss(ref_pred.float(), target.float(), reduction="none").mean(dim=[1, 2, 3])
                    ref_w, ref_l = ref_loss.chunk(2)
                    ref_diff = ref_w - ref_l
                    raw_ref_loss = ref_loss.mean()
                unet.enable_adapters()
                inside = -0.5 * beta * (model_diff - ref_diff)
                loss = -F.logsigmoid(inside).mean()
                implicit_acc = (inside > 0).sum().float() / inside.size(0)
                accelerator.backward(loss)
                if accelerator.sync_gradients:
                    accelerator.clip_grad_norm_(params, 1.0)
                optimizer.step()
                optimizer.zero_grad()
            rows.append({"loss": loss.detach().item(), "raw_model_loss": raw_model_loss.detach().item(),
                         "ref_loss": raw_ref_loss.detach().item(), "implicit_acc": implicit_acc.detach().item(),
                         "time": time.perf_counter()})
            if on_step is not None:
                on_step(rows[-1])
    finally:
        extract_model_from_parallel(model, keep_fp32_wrapper=False)
        if gradient_checkpointing:
            unet.disable_gradient_checkpointing()
        unet.delete_adapters(ADAPTER)
    return rows


@torch.no_grad()
def _encode_prompts(encoders, tokenizers, prompts, is_sdxl, resolution, device, dtype):
    """The scripts' tokenize_captions + encode_prompt, for winner and loser (repeat 2)."""
    ids = [t(prompts, truncation=True, padding="max_length", max_length=t.model_max_length,
             return_tensors="pt").input_ids.to(device) for t in tokenizers]
    if not is_sdxl:
        return encoders[0](ids[0])[0].repeat(2, 1, 1), None
    states = []
    for encoder, input_ids in zip(encoders, ids, strict=True):
        out = encoder(input_ids, output_hidden_states=True)
        pooled = out[0]
        states.append(out.hidden_states[-2])
    hidden = torch.cat(states, dim=-1).repeat(2, 1, 1)
    # time ids: original size, crop top-left (0, 0: the images are generated at size), target size
    time_ids = torch.tensor([[resolution, resolution, 0, 0, resolution, resolution]], device=device, dtype=dtype)
    added = {"text_embeds": pooled.repeat(2, 1), "time_ids": time_ids.repeat(2 * len(prompts), 1)}
    return hidden, added
