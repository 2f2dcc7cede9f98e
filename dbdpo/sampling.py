"""Seeded, batched generation with a manifest.

Each image gets its own recorded seed and its own torch.Generator, so an image depends on
(model, prompt, seed) only, not on its position: the same seed reproduces it. Batches are
fixed by the request list and batch size, so the same batches run on 1 or N processes
(dbdpo.distributed.map_batches) and the images are byte-identical.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import torch
from PIL import Image

from dbdpo.artifacts import atomic_dir, write_parquet
from dbdpo.distributed import map_batches
from dbdpo.provenance import RECORD_KEY

SAMPLE_COLUMNS = ["image_id", "prompt_id", "template", "prompt", "seed", "path"]

# generate.scheduler / evaluate.scheduler -> (diffusers scheduler class, its config overrides).
# DPM-Solver++ 2M is diffusers' `DPMSolverMultistepScheduler` with its default
# algorithm_type "dpmsolver++" and solver_order 2; euler_a is the ancestral Euler sampler.
SCHEDULERS = {
    "ddim": ("DDIMScheduler", {}),
    "dpmpp_2m": ("DPMSolverMultistepScheduler", {"algorithm_type": "dpmsolver++", "solver_order": 2}),
    "euler_a": ("EulerAncestralDiscreteScheduler", {}),
}


def use_scheduler(pipe, name: str) -> None:
    """Sample `pipe` with scheduler `name` (SCHEDULERS), built from the pipeline's own
    scheduler config (its betas, prediction type and timestep spacing carry over)."""
    import diffusers

    class_name, overrides = SCHEDULERS[name]
    if type(pipe.scheduler).__name__ == class_name and not overrides:
        return
    pipe.scheduler = getattr(diffusers, class_name).from_config(pipe.scheduler.config, **overrides)


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
def generate(pipe, requests: list[SampleRequest], *, steps: int, guidance_scale: float, batch_size: int,
             resolution: int, scheduler: str | None = None, desc: str = "generate") -> list[Image.Image]:
    """Run the pipeline over `requests` in batches (split across processes under a launcher)
    with `scheduler` (a SCHEDULERS name; None: the pipeline's own); returns PIL images in
    request order, on every process."""
    if scheduler is not None:
        use_scheduler(pipe, scheduler)

    def run(batch: list[SampleRequest]) -> list[Image.Image]:
        generators = [torch.Generator(device="cpu").manual_seed(r.seed) for r in batch]
        return pipe(
            prompt=[r.prompt for r in batch],
            generator=generators,
            num_inference_steps=steps,
            guidance_scale=guidance_scale,
            height=resolution,
            width=resolution,
            output_type="pil",
        ).images

    return map_batches(run, requests, batch_size, desc)


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
