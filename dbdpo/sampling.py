"""Seeded, batched generation with a manifest.

Each image gets its own recorded seed and its own torch.Generator, so an image depends on
(model, prompt, seed) only, not on batch size or position: the same seed reproduces it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image
from tqdm.auto import tqdm

from dbdpo.artifacts import atomic_dir, write_parquet
from dbdpo.provenance import RECORD_KEY

SAMPLE_COLUMNS = ["image_id", "prompt_id", "template", "prompt", "seed", "path"]
@dataclass(frozen=True)
class SampleRequest:
    image_id: str
    prompt_id: int
    template: str  # prompt template, with {token} / {class_noun}
    prompt: str  # rendered prompt fed to the model
    seed: int


def plan_samples(templates: list[str], prompts: list[str], images_per_prompt: int, seed: int) -> list[SampleRequest]:
    """K requests per prompt; image (i, k) has seed `seed + i*K + k`, unique within the set."""
    return [
        SampleRequest(f"p{i:04d}_k{k:02d}", i, templates[i], prompts[i], seed + i * images_per_prompt + k)
        for i in range(len(prompts))
        for k in range(images_per_prompt)
    ]


@torch.no_grad()
def generate(pipe, requests: list[SampleRequest], *, steps: int, guidance_scale: float,
             batch_size: int, resolution: int, desc: str = "generate") -> list[Image.Image]:
    """Run the pipeline over `requests` in batches; returns PIL images in request order."""
    images: list[Image.Image] = []
    for start in tqdm(range(0, len(requests), batch_size), desc=desc, unit="batch"):
        batch = requests[start : start + batch_size]
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in batch]
        out = pipe(
            prompt=[r.prompt for r in batch],
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=resolution,
            width=resolution,
            output_type="pil",
        )
        images.extend(out.images)
    return images


def write_samples(requests: list[SampleRequest], images: list[Image.Image], image_dir: Path,
                  manifest: Path, made_from: dict[str, str] | None = None) -> pd.DataFrame:
    """PNG per image into `image_dir`, then the manifest; both atomic, manifest last. The
    manifest carries `made_from` (dbdpo.provenance) in its parquet metadata."""
    with atomic_dir(image_dir) as tmp:
        for r, img in zip(requests, images, strict=True):
            img.save(tmp / f"{r.image_id}.png")
    rows = [
        dict(image_id=r.image_id, prompt_id=r.prompt_id, template=r.template, prompt=r.prompt,
             seed=r.seed, path=str(Path(image_dir) / f"{r.image_id}.png"))
        for r in requests
    ]
    frame = pd.DataFrame(rows, columns=SAMPLE_COLUMNS)
    if made_from is not None:
        frame.attrs[RECORD_KEY] = made_from
    write_parquet(frame, manifest)
    return frame
