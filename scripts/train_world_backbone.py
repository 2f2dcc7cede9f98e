"""Train the proving ground's backbone (VAE, then UNet + text encoder) on captioned world scenes.

The default `model.backbone: world` is a StableDiffusionPipeline built from these weights
(dbdpo/world/backbone.py): it draws "a photo of a toy in the snow" as a toy in the snow, and it never
sees the concept (no sampled scene has the concept's ring), so DreamBooth has something to
learn. Deterministic for a given torch build and machine:

    python scripts/train_world_backbone.py --part vae     # 1000 steps of 32 scenes
    python scripts/train_world_backbone.py --part unet    # 1100 steps of 64, on the VAE above

The defaults are the recipe of the shipped weights (docs/proving_ground.md has the CPU times).

Writes dbdpo/world/assets/world_{vae,unet,text_encoder}.safetensors (fp16; the text encoder's token
embedding as its trained rows, the rest replayed from the init when loaded).
"""

import argparse
import logging
import math
import random
import time

import torch
from diffusers import DDPMScheduler
from safetensors.torch import save_file

from dbdpo.data import to_tensor
from dbdpo.world.architecture import SD_SCHEDULE, WORLD_WEIGHTS
from dbdpo.world.backbone import (
    build_world_pipeline,
    initial_token_embedding,
    load_world_part,
    sparse_token_embedding,
)
from dbdpo.world.scenes import SIZE, captions, render, sample_scene

log = logging.getLogger("train_world_backbone")


def to_batch(images) -> torch.Tensor:
    """(B, 3, 64, 64) in [-1, 1]: the pipeline's pixel range, as every stage prepares images."""
    return to_tensor(images, SIZE)


def cosine_with_warmup(optimizer, steps: int):
    warmup = max(1, steps // 20)
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))


def save_fp16(module: torch.nn.Module, part: str) -> None:
    """fp16 halves the package; the loader casts back to fp32 (the model is then these weights).
    The text encoder keeps only its trained token-embedding rows (dbdpo.world.backbone.sparse_token_embedding)."""
    WORLD_WEIGHTS[part].parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().half().contiguous() for k, v in module.state_dict().items()}
    if part == "text_encoder":
        state = sparse_token_embedding(state, initial_token_embedding())
    save_file(state, str(WORLD_WEIGHTS[part]))


def fit_vae(vae, images: torch.Tensor, steps: int, batch_size: int, lr: float = 2e-3, device: str = "cpu"):
    """Train `vae` to reconstruct `images` (N, 3, 64, 64) in [-1, 1]: L1 + a small KL."""
    vae.to(device).train()
    optimizer = torch.optim.AdamW(vae.parameters(), lr=lr, weight_decay=0.0)
    schedule = cosine_with_warmup(optimizer, steps)
    gen = torch.Generator().manual_seed(0)
    start = time.time()
    for step in range(steps):
        # Fully convolutional: random 32 px crops teach the same local decoder 4x cheaper.
        idx = torch.randint(0, len(images), (batch_size,), generator=gen)
        top, left = (8 * torch.randint(0, 5, (2,), generator=gen)).tolist()  # on the latent grid
        x = images[idx, :, top : top + 32, left : left + 32].to(device)
        posterior = vae.encode(x).latent_dist
        latents = posterior.mean + posterior.std * torch.randn(posterior.mean.shape, generator=gen).to(device)
        rec_loss = (vae.decode(latents).sample - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()
        (rec_loss + 1e-4 * kl).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            log.info("vae step %d l1 %.4f kl %.4f (%.0f s)", step, rec_loss.item(), kl.item(), time.time() - start)
    return vae.eval().cpu()


@torch.no_grad()
def reconstruction_l1(vae, images: torch.Tensor) -> float:
    """Mean absolute error of decode(encode(x).mean) on whole 64 px images, in [-1, 1] units."""
    return (vae.decode(vae.encode(images).latent_dist.mean).sample.clamp(-1, 1) - images).abs().mean().item()


def train_vae(steps: int, batch_size: int, num_scenes: int) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    images = to_batch([render(sample_scene(rng)) for _ in range(num_scenes)])
    vae = fit_vae(build_world_pipeline(trained=False).vae, images, steps, batch_size)
    held_out = to_batch([render(sample_scene(random.Random(99))) for _ in range(64)])
    with torch.no_grad():
        rms = vae.encode(images[:256]).latent_dist.mean.pow(2).mean().sqrt().item()
    log.info("held-out L1 %.4f; latent rms %.3f: WORLD_VAE scaling_factor must be %.3f",
             reconstruction_l1(vae, held_out), rms, 1 / rms)
    save_fp16(vae, "vae")


def fit_unet(pipe, scenes, steps: int, batch_size: int, lr: float, device: str = "cpu") -> None:
    """Train `pipe`'s UNet and text encoder (in place) to denoise the VAE latents of `scenes`
    given one of their captions: SD's epsilon objective on SD's noise schedule."""
    rng = random.Random(1)
    unet, vae, text_encoder = pipe.unet.to(device), pipe.vae.to(device), pipe.text_encoder.to(device)
    vae.requires_grad_(False)
    start = time.time()
    with torch.no_grad():  # every scene encoded once; a step samples from its posterior
        moments = []
        for i in range(0, len(scenes), 256):
            pixels = to_batch([render(s) for s in scenes[i : i + 256]]).to(device)
            moments.append(vae.encode(pixels).latent_dist.parameters)
        moments = torch.cat(moments)
    texts = [captions(s) for s in scenes]
    log.info("encoded %d scenes (%.0f s)", len(scenes), time.time() - start)
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k != "set_alpha_to_one"})
    params = list(unet.parameters()) + list(text_encoder.parameters())
    optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=0.0)
    schedule = cosine_with_warmup(optimizer, steps)
    gen = torch.Generator().manual_seed(1)
    unet.train()
    text_encoder.train()
    for step in range(steps):
        idx = torch.randint(0, len(scenes), (batch_size,), generator=gen)
        mean, logvar = moments[idx].chunk(2, dim=1)
        noise_z = torch.randn(mean.shape, generator=gen).to(device)
        latents = (mean + torch.exp(0.5 * logvar) * noise_z) * vae.config.scaling_factor
        # 10% empty captions teach the unconditional branch that classifier-free guidance uses.
        batch_captions = ["" if rng.random() < 0.1 else rng.choice(texts[i]) for i in idx.tolist()]
        ids = pipe.tokenizer(batch_captions, padding="max_length", max_length=pipe.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt").input_ids.to(device)
        noise = torch.randn(latents.shape, generator=gen).to(device)
        t = torch.randint(0, scheduler.config.num_train_timesteps, (batch_size,), generator=gen).to(device)
        pred = unet(scheduler.add_noise(latents, noise, t), t, text_encoder(ids)[0]).sample
        loss = (pred - noise).pow(2).mean()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            log.info("unet step %d mse %.4f (%.0f s)", step, loss.item(), time.time() - start)
    pipe.to("cpu")
    unet.eval()
    text_encoder.eval()


def train_unet(steps: int, batch_size: int, num_scenes: int, lr: float) -> None:
    torch.manual_seed(1)
    rng = random.Random(1)
    pipe = build_world_pipeline(trained=False)
    load_world_part(pipe.vae, "vae")  # trained first (--part vae)
    fit_unet(pipe, [sample_scene(rng) for _ in range(num_scenes)], steps, batch_size, lr)
    save_fp16(pipe.unet, "unet")
    save_fp16(pipe.text_encoder, "text_encoder")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["vae", "unet"], required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=None)
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=1e-3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    if args.part == "vae":
        train_vae(args.steps or 1000, args.batch_size or 32, args.scenes)
    else:
        train_unet(args.steps or 1100, args.batch_size or 64, args.scenes, args.lr)


if __name__ == "__main__":
    main()
