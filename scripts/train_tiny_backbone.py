"""Train the embedded tiny backbone's VAE and UNet on procedural images.

A random VAE decodes every latent to nearly the same grey and a random UNet does not
denoise, so nothing finetune or DPO teach would be visible. This script gives the tiny
AutoencoderKL and UNet2DConditionModel (configs in dbdpo.backbones) real weights in about
15 CPU minutes: the VAE on randomly colored shapes over gradients, the UNet on named shapes
captioned like "a red circle on a blue background" (the text encoder stays random and
frozen, as SD's CLIP is frozen). Weights ship as dbdpo/assets/tiny_{vae,unet}.safetensors.
Deterministic for a given torch build:

    python scripts/train_tiny_backbone.py --part vae               # 800 steps
    python scripts/train_tiny_backbone.py --part unet              # 1200 steps, on the VAE above
"""

import argparse
import math
import random

import numpy as np
import torch
from diffusers import AutoencoderKL, DDPMScheduler
from PIL import Image, ImageDraw
from safetensors.torch import save_file

from dbdpo.backbones import SD_SCHEDULE, TINY_UNET_WEIGHTS, TINY_VAE, TINY_VAE_WEIGHTS, build_tiny_pipeline

COLORS = {
    "red": (210, 40, 40), "yellow": (240, 210, 40), "green": (50, 160, 60), "blue": (40, 70, 200),
    "purple": (140, 60, 170), "white": (240, 240, 240), "black": (25, 25, 30), "orange": (240, 140, 30),
}
SHAPES = ("circle", "square", "striped disc")


def jitter(rng: random.Random, color: tuple) -> tuple:
    return tuple(min(255, max(0, c + rng.randint(-25, 25))) for c in color)


def procedural_image(rng: random.Random, size: int = 64) -> tuple[Image.Image, str]:
    """A two-tone gradient background with one named shape on it, and its caption."""
    bg_name, fg_name = rng.sample(sorted(COLORS), 2)
    shape = rng.choice(SHAPES)
    top, bottom = jitter(rng, COLORS[bg_name]), jitter(rng, COLORS[bg_name])
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        a = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(round(t * (1 - a) + b * a) for t, b in zip(top, bottom)))
    r = rng.uniform(size / 6, size / 2.6)
    cx, cy = rng.uniform(r, size - r), rng.uniform(r, size - r)
    box = [cx - r, cy - r, cx + r, cy + r]
    fg = jitter(rng, COLORS[fg_name])
    if shape == "circle":
        draw.ellipse(box, fill=fg)
    elif shape == "square":
        draw.rectangle(box, fill=fg)
    else:
        other = jitter(rng, COLORS[rng.choice(sorted(set(COLORS) - {fg_name, bg_name}))])
        wedges = rng.randint(4, 10)
        for i in range(wedges):
            start = i * 360 / wedges + rng.uniform(0, 10)
            draw.pieslice(box, start, start + 360 / wedges, fill=fg if i % 2 else other)
    return img, f"a {fg_name} {shape} on a {bg_name} background"


def random_color(rng: random.Random) -> tuple:
    return tuple(rng.randrange(256) for _ in range(3))


def random_shapes_image(rng: random.Random, size: int) -> Image.Image:
    """VAE data: a random-color gradient with 1-4 ellipses, boxes or wedge discs on top."""
    top, bottom = random_color(rng), random_color(rng)
    img = Image.new("RGB", (size, size))
    draw = ImageDraw.Draw(img)
    for y in range(size):
        a = y / (size - 1)
        draw.line([(0, y), (size, y)], fill=tuple(round(t * (1 - a) + b * a) for t, b in zip(top, bottom)))
    for _ in range(rng.randint(1, 4)):
        r = rng.uniform(4, size / 2.5)
        cx, cy = rng.uniform(0, size), rng.uniform(0, size)
        box = [cx - r, cy - r, cx + r, cy + r]
        kind = rng.randrange(3)
        if kind == 0:
            draw.ellipse(box, fill=random_color(rng))
        elif kind == 1:
            draw.rectangle(box, fill=random_color(rng))
        else:
            wedges, c1, c2 = rng.randint(4, 10), random_color(rng), random_color(rng)
            for i in range(wedges):
                start = i * 360 / wedges
                draw.pieslice(box, start, start + 360 / wedges, fill=c1 if i % 2 else c2)
    return img


def to_batch(images: list[Image.Image]) -> torch.Tensor:
    arrays = [np.asarray(img, dtype=np.float32) / 127.5 - 1 for img in images]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2)


def batch(rng: random.Random, n: int, size: int) -> tuple[torch.Tensor, list[str]]:
    pairs = [procedural_image(rng, size) for _ in range(n)]
    return to_batch([img for img, _ in pairs]), [c for _, c in pairs]


def cosine(optimizer, steps):
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: 0.5 * (1 + math.cos(math.pi * s / steps)))


def train_vae(steps: int, batch_size: int) -> None:
    torch.manual_seed(0)
    rng = random.Random(0)
    vae = AutoencoderKL(**TINY_VAE)
    optimizer = torch.optim.AdamW(vae.parameters(), lr=2e-3, weight_decay=0.0)
    schedule = cosine(optimizer, steps)
    for step in range(steps):
        # Fully convolutional: 32 px images teach the same local decoder 4x cheaper.
        x = to_batch([random_shapes_image(rng, 32) for _ in range(batch_size)])
        posterior = vae.encode(x).latent_dist
        rec_loss = (vae.decode(posterior.sample()).sample - x).abs().mean()
        kl = posterior.kl().mean() / x[0].numel()
        (rec_loss + 1e-4 * kl).backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            print(f"vae step {step} l1 {rec_loss.item():.4f} kl {kl.item():.4f}", flush=True)
    TINY_VAE_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(TINY_VAE_WEIGHTS))


def train_unet(steps: int, batch_size: int) -> None:
    pipe = build_tiny_pipeline(seed=0, pretrained_unet=False)
    unet, vae = pipe.unet, pipe.vae
    vae.requires_grad_(False)
    pipe.text_encoder.requires_grad_(False)
    scheduler = DDPMScheduler(**{k: v for k, v in SD_SCHEDULE.items() if k != "set_alpha_to_one"})
    rng = random.Random(1)
    gen = torch.Generator().manual_seed(1)
    optimizer = torch.optim.AdamW(unet.parameters(), lr=1e-3, weight_decay=0.0)
    schedule = cosine(optimizer, steps)
    for step in range(steps):
        x, captions = batch(rng, batch_size, 64)
        captions = ["" if rng.random() < 0.1 else c for c in captions]  # for classifier-free guidance
        with torch.no_grad():
            latents = vae.encode(x).latent_dist.sample(gen) * vae.config.scaling_factor
            text, _ = pipe.encode_prompt(captions, "cpu", 1, do_classifier_free_guidance=False)
        noise = torch.randn(latents.shape, generator=gen)
        t = torch.randint(0, 1000, (batch_size,), generator=gen)
        pred = unet(scheduler.add_noise(latents, noise, t), t, text).sample
        loss = (pred - noise).pow(2).mean()
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        if step % 100 == 0 or step == steps - 1:
            print(f"unet step {step} mse {loss.item():.4f}", flush=True)
    save_file({k: v.contiguous() for k, v in unet.state_dict().items()}, str(TINY_UNET_WEIGHTS))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["vae", "unet"], required=True)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    if args.part == "vae":
        train_vae(args.steps or 800, args.batch_size)
    else:
        train_unet(args.steps or 1200, args.batch_size)


if __name__ == "__main__":
    main()
