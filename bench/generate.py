"""Sampling speed: our generate stage against a plain diffusers loop, and on 1 vs N processes,
in one run on the same model, prompts, steps and guidance.

  diffusers loop    one pipeline call per prompt with num_images_per_prompt=K and one seeded
                    generator: the loop a script writes first
  ours, 1 process   dbdpo.sampling.generate as the generate stage runs it: batches of
                    generate.batch_size images across prompts, each image its own seed
  ours, N processes the same under `accelerate launch` (dbdpo.distributed, --processes N):
                    each process runs whole batches; the table gives the largest pixel
                    difference from the 1-process images (0: the same bytes; on a CPU only when
                    each process runs as many threads as the 1-process run)

Images/s is over the sampling alone (the model loaded and warmed up first). On a CPU the
processes share the cores: 1 process uses every core, N processes one core's share each; on
GPUs each process takes its own GPU, so N processes need N GPUs (--processes 1: no N row).

The model is the params' (the world backbone by default), or with --arch one of the published
architectures with random weights (bench/architectures.py) at its native size and its
preset's precision on a GPU: the speed of SD 2.x / SDXL sampling without downloading them.

    python bench/generate.py [--params params.yaml] [--prompts 16] [--processes 2] [--out generate.json]
    python bench/generate.py --preset presets/sdxl.yaml --arch sdxl --prompts 2 --processes 1
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))  # run as bench.generate under accelerate launch too
from architectures import FULL_ARCHS, arch_precision, full_backbone  # noqa: E402

from dbdpo.backbones import PRECISION_DTYPES, Backbone, load_backbone
from dbdpo.config import ComputeConfig, Config
from dbdpo.data import fill_prompt, train_prompts
from dbdpo.devices import compute_device
from dbdpo.distributed import is_main_process, launch_command, launched, process_state
from dbdpo.presets import load_with_preset
from dbdpo.sampling import SampleRequest, generate, plan_samples

log = logging.getLogger("bench.generate")


def requests(cfg: Config, num_prompts: int) -> list[SampleRequest]:
    """K seeded requests for each of the pool's first `num_prompts` training prompts."""
    templates = train_prompts(cfg.generate.prompts, {"bench": (0, num_prompts)})["bench"]
    return plan_samples(templates, [fill_prompt(t, cfg.concept) for t in templates], cfg.generate.images_per_prompt, 0)


def pixels(images) -> np.ndarray:
    """(n, h, w, 3) uint8: every image's pixels, in order."""
    return np.stack([np.asarray(image) for image in images])


def ours(pipe, cfg: Config, plan: list[SampleRequest], resolution: int) -> tuple[float, np.ndarray]:
    """(seconds, pixels) of the generate stage's sampling, after a one-batch warm-up."""
    g = cfg.generate
    kw = dict(steps=g.steps, guidance_scale=g.guidance_scale, batch_size=g.batch_size, resolution=resolution,
              scheduler=g.scheduler)
    generate(pipe, plan[: g.batch_size], desc="warm-up", **kw)
    barrier()
    start = time.perf_counter()
    images = generate(pipe, plan, desc="ours", **kw)
    barrier()
    return time.perf_counter() - start, pixels(images)


def diffusers_loop(pipe, cfg: Config, plan: list[SampleRequest], resolution: int) -> float:
    """Seconds for one call per prompt, K images each (after a one-call warm-up)."""
    g = cfg.generate
    k = g.images_per_prompt
    prompts = [r.prompt for r in plan[::k]]

    def call(prompt: str, seed: int) -> None:
        pipe(prompt, num_images_per_prompt=k, generator=torch.Generator().manual_seed(seed),
             num_inference_steps=g.steps, guidance_scale=g.guidance_scale, height=resolution, width=resolution)

    call(prompts[0], 0)
    start = time.perf_counter()
    for i, prompt in enumerate(prompts):
        call(prompt, i)
    return time.perf_counter() - start


def backbone_for(cfg: Config, arch: str | None, resolution: int | None) -> Backbone:
    """The params' model, or `arch`'s published architecture with random weights (in its
    preset's precision on a GPU, fp32 on a CPU)."""
    if arch is None:
        return load_backbone(cfg.model)
    device = compute_device()
    return full_backbone(arch, device, PRECISION_DTYPES[arch_precision(arch, device)], resolution=resolution)


def barrier() -> None:
    if launched():
        process_state().wait_for_everyone()


def worker(args) -> None:
    """One of N launched processes: sample our way; the main process writes the figures."""
    cfg = load_with_preset(args.params, args.preset)
    backbone = backbone_for(cfg, args.arch, args.resolution)
    seconds, images = ours(backbone.pipe, cfg, requests(cfg, args.prompts), backbone.resolution)
    if is_main_process():
        np.save(Path(args.worker_out).with_suffix(".npy"), images)
        Path(args.worker_out).write_text(json.dumps({"seconds": seconds}))


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.worker_out:
        worker(args)
        return {}
    cfg = load_with_preset(args.params, args.preset)
    plan = requests(cfg, args.prompts)
    backbone = backbone_for(cfg, args.arch, args.resolution)
    pipe, res = backbone.pipe, backbone.resolution
    rows = {"diffusers loop": {"seconds": diffusers_loop(pipe, cfg, plan, res)}}
    seconds, one = ours(pipe, cfg, plan, res)
    rows["ours, 1 process"] = {"seconds": seconds, "max_pixel_difference": 0}
    if args.processes > 1:
        rows[f"ours, {args.processes} processes"] = several_processes(args, one)
    base = rows["diffusers loop"]["seconds"]
    for row in rows.values():
        row["images_per_s"] = len(plan) / row["seconds"]
        row["speedup"] = base / row["seconds"]
    result = {"images": len(plan), "prompts": args.prompts, "params": dataclasses.asdict(cfg.generate),
              "model": args.arch or cfg.model.backbone, "resolution": res, "dtype": str(pipe.unet.dtype),
              "gpu": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
              "torch": torch.__version__, "cpu": platform.processor() or platform.machine(),
              "cores": os.cpu_count(), "threads": torch.get_num_threads(), "device": "cuda" if torch.cuda.is_available() else "cpu", "rows": rows}
    print_table(result)
    if args.out:
        Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    return result


def several_processes(args, one: np.ndarray) -> dict:
    """The N-process row: the same sampling under `accelerate launch`, and its largest pixel
    difference from the 1-process images `one`."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "worker.json"
        forwarded = ["--params", str(args.params), *(["--preset", str(args.preset)] if args.preset else []),
                     "--prompts", str(args.prompts), "--worker-out", str(out)]
        if args.arch:
            forwarded += ["--arch", args.arch]
        if args.resolution:
            forwarded += ["--resolution", str(args.resolution)]
        subprocess.run(launch_command(ComputeConfig(num_processes=args.processes), "bench.generate", forwarded),
                       check=True)
        worker = json.loads(out.read_text())
        other = np.load(out.with_suffix(".npy"), allow_pickle=False)
    difference = int(np.abs(other.astype(int) - one.astype(int)).max())
    return {"seconds": worker["seconds"], "max_pixel_difference": difference, "threads_per_process": 1}


def print_table(result: dict) -> None:
    g = result["params"]
    where = result["gpu"] or f"{result['device']} ({result['cores']} cores)"
    print(f"{result['model']} {result['resolution']} px {result['dtype']}: {result['images']} images "
          f"({result['prompts']} prompts x {g['images_per_prompt']}), {g['steps']} {g['scheduler']} steps, "
          f"guidance {g['guidance_scale']}, batch {g['batch_size']}, {where}")
    print(f"{'variant':<22} {'images/s':>9} {'vs diffusers':>13} {'max pixel diff vs 1 process':>28}")
    for name, row in result["rows"].items():
        diff = row.get("max_pixel_difference", "-")
        print(f"{name:<22} {row['images_per_s']:>9.2f} {row['speedup']:>12.2f}x {diff:>28}")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--params", type=Path, default=Path("params.yaml"))
    parser.add_argument("--preset", type=Path, default=None, help="a preset applied over --params (presets/sdxl.yaml)")
    parser.add_argument("--prompts", type=int, default=16, help="training prompts (K images each)")
    parser.add_argument("--processes", type=int, default=2, help="1: no N-process row (one GPU)")
    parser.add_argument("--arch", choices=FULL_ARCHS, default=None,
                        help="a published architecture with random weights instead of the params' model")
    parser.add_argument("--resolution", type=int, default=None, help="with --arch: image side (default: native)")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--worker-out", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.processes < 1:
        parser.error(f"--processes {args.processes}: expected 1 or more")
    if args.resolution is not None and args.arch is None:
        parser.error("--resolution is for --arch; the params' model samples at model.resolution")
    return args


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    main()
