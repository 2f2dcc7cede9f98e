"""DPO step on the proving ground's backbone (CPU): ours vs diffusers' script step.

ours     : latents and text embeddings computed once (timed here too); winner+loser in one
           batched forward; reference = the same UNet with the DPO adapter disabled.
baseline : diffusers' train_diffusion_dpo.py step as its code does it (bench/diffusers_dpo.py):
           the same batched forward and adapter toggle, plus a VAE encode of both images and
           a text encode every step, and its gradient clipping.

    python bench/dpo_step.py [--steps 30] [--batch-size 4]

Prints steps/s and peak RSS growth of each, then the ratios (ours / baseline).
Each variant runs in its own subprocess so peak memory is measured separately.
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from diffusers_dpo import diffusers_dpo  # noqa: E402

from dbdpo.backbones import load_backbone  # noqa: E402
from dbdpo.conditioning import encode_prompts  # noqa: E402
from dbdpo.config import DpoConfig, ModelConfig  # noqa: E402
from dbdpo.dpo import PreferenceData, train_dpo  # noqa: E402
from dbdpo.training import encode_images  # noqa: E402

PROMPTS = ["a photo of sks toy on a table", "a photo of sks toy in the snow"]


def make_images(n: int):
    from PIL import Image

    g = torch.Generator().manual_seed(0)
    return [Image.fromarray((torch.rand(64, 64, 3, generator=g) * 255).to(torch.uint8).numpy()) for _ in range(n)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_ours(steps: int, batch_size: int) -> dict:
    backbone = load_backbone(ModelConfig())
    images = make_images(2 * batch_size)
    start_rss = peak_rss_mb()
    t0 = time.perf_counter()
    data = PreferenceData(
        latents=encode_images(backbone, images),
        sizes=None,
        text=encode_prompts(backbone, PROMPTS),
        winner=torch.arange(0, batch_size), loser=torch.arange(batch_size, 2 * batch_size),
        prompt=torch.arange(batch_size) % 2,
    )
    train_dpo(backbone, data, DpoConfig(steps=steps, batch_size=batch_size))
    return {"seconds": time.perf_counter() - t0, "peak_rss_growth_mb": peak_rss_mb() - start_rss}


def run_baseline(steps: int, batch_size: int) -> dict:
    from dbdpo.data import to_tensor

    backbone = load_backbone(ModelConfig())
    images = make_images(2 * batch_size)
    pixels = to_tensor(images, backbone.resolution)
    pair_pixels = torch.cat([pixels[:batch_size], pixels[batch_size:]], dim=1)  # (B, 6, H, W): winner, loser
    prompts = [PROMPTS[i % 2] for i in range(batch_size)]
    cfg = DpoConfig()
    start_rss = peak_rss_mb()
    t0 = time.perf_counter()
    diffusers_dpo(backbone.pipe, pair_pixels, prompts, steps, mixed_precision="no", gradient_checkpointing=False,
                  rank=cfg.lora_rank, learning_rate=cfg.learning_rate, beta=cfg.beta)
    return {"seconds": time.perf_counter() - t0, "peak_rss_growth_mb": peak_rss_mb() - start_rss}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--batch-size", type=int, default=4)
    parser.add_argument("--variant", choices=["ours", "baseline"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        fn = run_ours if args.variant == "ours" else run_baseline
        print(json.dumps(fn(args.steps, args.batch_size)))
        return
    results = {}
    for variant in ("baseline", "ours"):
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--steps", str(args.steps),
                              "--batch-size", str(args.batch_size)], capture_output=True, text=True, check=True)
        results[variant] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[variant]
        print(f"{variant:9s} {args.steps / r['seconds']:6.2f} steps/s   peak RSS growth {r['peak_rss_growth_mb']:7.1f} MB")
    speed = results["baseline"]["seconds"] / results["ours"]["seconds"]
    memory = results["ours"]["peak_rss_growth_mb"] / max(results["baseline"]["peak_rss_growth_mb"], 1e-9)
    print(f"ratio     {speed:6.2f}x steps/s (ours / baseline)   {memory:5.2f}x peak memory (ours / baseline)")


if __name__ == "__main__":
    main()
