"""Real-size speed and memory: SD 2-base (512 px), SD 2.1 (768 px) and SDXL (1024 px).

The published architectures with random weights (bench/architectures.py), each at its
native size in its preset's precision (SD 2.x fp16, SDXL bf16), in one run:

  dpo       our DPO step vs diffusers' script step (bench/diffusers_dpo.py) at 1 and 4
            pairs, gradient checkpointing off and on: steps/s, peak GPU memory, model
            FLOPs per step and MFU;
  cache     our once-per-round VAE + text encoding of the step's images (what the peer
            repeats every step): seconds and peak memory;
  finetune  our DreamBooth LoRA step (batch 1, checkpointing on);
  sample    images/s at batch 4, 50 DDIM steps, guidance 7.5.

FLOPs are counted by torch's FlopCounterMode over one step at 1 pair without checkpointing
(recomputation is not model work) and scale with the pairs; MFU divides them by the
measured step time and the device's dense fp16/bf16 peak. Peak memory is
torch.cuda.max_memory_allocated over the whole training call (weights included).

    python bench/scale.py [--archs sd2-base sd21 sdxl] [--out scale.json]

On a CPU it is a check that every path runs, not a measurement:

    python bench/scale.py --archs sd2-base --resolution 64 --pairs 1 --warmup 0 --steps 1 --sample-steps 2
"""

from __future__ import annotations

import argparse
import functools
import gc
import json
import logging
import platform
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import extract_model_from_parallel
from PIL import Image
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).parent))
from architectures import FULL_ARCHS, arch_precision, full_backbone  # noqa: E402
from diffusers_dpo import diffusers_dpo  # noqa: E402

from dbdpo.backbones import PRECISION_DTYPES  # noqa: E402
from dbdpo.conditioning import encode_prompts, image_size_ids  # noqa: E402
from dbdpo.config import DpoConfig, FinetuneConfig  # noqa: E402
from dbdpo.data import to_tensor  # noqa: E402
from dbdpo.dpo import PreferenceData, train_dpo  # noqa: E402
from dbdpo.dreambooth import train_dreambooth  # noqa: E402
from dbdpo.sampling import SampleRequest, generate  # noqa: E402
from dbdpo.training import encode_images  # noqa: E402

log = logging.getLogger("bench.scale")
STARTED = time.perf_counter()
PROMPTS = ["a photo of sks dog on the beach", "a photo of sks dog in the snow"]
# Dense (no sparsity) fp16/bf16 tensor-core peaks from NVIDIA's datasheets, TFLOP/s.
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H100": 989.4, "H200": 989.4, "A100": 312.0,
               "L40S": 362.1, "RTX 4090": 165.2}
ACCELERATE_PRECISION = {"fp32": "no", "fp16": "fp16", "bf16": "bf16"}


def device_peak_tflops(name: str) -> float | None:
    return next((peak for key, peak in PEAK_TFLOPS.items() if key in name), None)


def noise_images(count: int, resolution: int, seed: int = 0) -> list[Image.Image]:
    gen = torch.Generator().manual_seed(seed)
    pixels = (torch.rand(count, resolution, resolution, 3, generator=gen) * 255).to(torch.uint8).numpy()
    return [Image.fromarray(p) for p in pixels]


class Meter:
    """Wall time per step (after `warmup` steps) and peak device memory of one call."""

    def __init__(self, device: str, warmup: int):
        self.device, self.warmup, self.ends, self.rows = device, warmup, [], []

    def sync(self) -> None:
        if self.device == "cuda":
            torch.cuda.synchronize()

    def __enter__(self):
        self.sync()
        gc.collect()
        if self.device == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats()
        self.start = time.perf_counter()
        return self

    def on_step(self, row: dict) -> None:
        self.sync()
        self.ends.append(time.perf_counter())
        self.rows.append(row)

    def __exit__(self, *exc):
        self.sync()
        self.end = time.perf_counter()
        self.peak_gib = torch.cuda.max_memory_allocated() / 2**30 if self.device == "cuda" else None
        return False

    @property
    def seconds_per_step(self) -> float:
        first = self.ends[self.warmup - 1] if self.warmup else self.start
        return (self.ends[-1] - first) / (len(self.ends) - self.warmup)


def _clean(unet, adapter: str | None = None) -> None:
    """Undo what a training call leaves on the shared UNet: its adapter, checkpointing and
    accelerate's autocast wrapper around forward."""
    extract_model_from_parallel(unet, keep_fp32_wrapper=False)
    if adapter and adapter in getattr(unet, "peft_config", {}):
        unet.delete_adapters(adapter)
    unet.disable_gradient_checkpointing()
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def bench_arch(arch: str, args, device: str) -> list[dict]:
    precision = arch_precision(arch, device)
    backbone = full_backbone(arch, device, PRECISION_DTYPES[precision], resolution=args.resolution)
    pipe, resolution = backbone.pipe, backbone.resolution
    beta = 5000.0 if backbone.is_sdxl else 2500.0
    base = {"arch": arch, "resolution": resolution, "precision": precision}
    pairs_max = max(args.pairs)
    images = noise_images(2 * pairs_max, resolution)
    rows = []

    with Meter(device, 0) as m:
        data = PreferenceData(latents=encode_images(backbone, images), sizes=image_size_ids(backbone, images),
                              text=encode_prompts(backbone, PROMPTS), winner=torch.arange(pairs_max),
                              loser=torch.arange(pairs_max, 2 * pairs_max), prompt=torch.arange(pairs_max) % 2)
    rows.append({**base, "part": "cache", "images": len(images), "seconds": m.end - m.start, "peak_gib": m.peak_gib})
    pixels = to_tensor(images, resolution)

    def ours(pairs: int, checkpointing: bool, steps: int, meter=None, compile_unet: bool = False):
        cfg = DpoConfig(steps=steps, batch_size=pairs, lora_rank=8, learning_rate=1e-5, beta=beta,
                        mixed_precision=precision, gradient_checkpointing=checkpointing, compile=compile_unet)
        try:
            train_dpo(backbone, data, cfg, on_step=meter.on_step if meter else None)
        finally:
            _clean(pipe.unet, "dpo")

    def peer(pairs: int, checkpointing: bool, steps: int, meter=None):
        vae_dtype = pipe.vae.dtype  # the SDXL script moves the VAE to fp32; ours runs as loaded
        pair_pixels = torch.cat([pixels[:pairs], pixels[pairs_max : pairs_max + pairs]], dim=1)
        prompts = [PROMPTS[i % 2] for i in range(pairs)]
        try:
            diffusers_dpo(pipe, pair_pixels, prompts, steps, mixed_precision=ACCELERATE_PRECISION[precision],
                          gradient_checkpointing=checkpointing, beta=beta,
                          on_step=meter.on_step if meter else None)
        finally:
            _clean(pipe.unet)
            pipe.vae.to(vae_dtype)

    variants = {"diffusers": peer, "ours": ours, "ours-compiled": functools.partial(ours, compile_unet=True)}
    variants = {name: variants[name] for name in args.variants}
    flops = {}
    for name, run in {"diffusers": peer, "ours": ours}.items():
        with FlopCounterMode(display=False) as counter:
            run(1, False, 1)
        flops[name] = counter.get_total_flops()
    flops["ours-compiled"] = flops["ours"]  # compiling changes the kernels, not the model's work
    peak = device_peak_tflops(torch.cuda.get_device_name()) if device == "cuda" else None
    for pairs in args.pairs:
        for checkpointing in [mode == "on" for mode in args.checkpointing]:
            for name, run in variants.items():
                row = {**base, "part": "dpo", "variant": name, "pairs": pairs, "checkpointing": checkpointing,
                       "tflop_per_step": flops[name] * pairs / 1e12}
                if args.budget_s is not None and time.perf_counter() - STARTED > args.budget_s:
                    row["error"] = f"skipped: started after --budget-s {args.budget_s:g}"
                else:
                    try:
                        with Meter(device, args.warmup) as m:
                            run(pairs, checkpointing, args.warmup + args.steps, m)
                        # the first step includes compiling (ours-compiled) and warming caches
                        # first_loss: log 2 = 0.6931 when policy and reference agree, as they must at step 0
                        row.update(steps_per_s=1 / m.seconds_per_step, peak_gib=m.peak_gib,
                                   first_step_s=m.ends[0] - m.start, first_loss=m.rows[0]["loss"])
                        if peak:
                            row["mfu"] = row["tflop_per_step"] * row["steps_per_s"] / peak
                    except torch.cuda.OutOfMemoryError:
                        row["error"] = "out of memory"
                    except Exception as error:  # on a GPU one failing row (a compiler error) loses no other
                        if device == "cpu":
                            raise
                        log.exception("%s failed", name)
                        row["error"] = f"{type(error).__name__}: {str(error)[:200]}"
                rows.append(row)
                print(json.dumps(row), flush=True)

    if "finetune" in args.parts:
        rows.append({**base, **bench_finetune(backbone, images, precision, args, device)})
    if "sample" in args.parts:
        rows.append({**base, **bench_sample(backbone, args, device)})
    return rows  # the models go with this frame; the next Meter collects and empties the cache


def bench_finetune(backbone, images, precision: str, args, device: str) -> dict:
    """Our DreamBooth LoRA step: batch 1, gradient checkpointing on."""
    with Meter(device, args.warmup) as m:
        try:
            train_dreambooth(backbone, images[:4], "a photo of sks dog",
                             FinetuneConfig(steps=args.warmup + args.steps, batch_size=1, lora_rank=16,
                                            learning_rate=1e-4, mixed_precision=precision,
                                            gradient_checkpointing=True), on_step=m.on_step)
        finally:
            _clean(backbone.pipe.unet, "dreambooth")
    return {"part": "finetune", "batch": 1, "checkpointing": True,
            "steps_per_s": 1 / m.seconds_per_step, "peak_gib": m.peak_gib}


def bench_sample(backbone, args, device: str) -> dict:
    """Sampling images/s at batch `--sample-batch`, `--sample-steps` steps, guidance 7.5."""
    pipe, resolution = backbone.pipe, backbone.resolution
    requests = [SampleRequest(f"s{i}", i, PROMPTS[i % 2], PROMPTS[i % 2], i) for i in range(args.sample_batch)]
    generate(pipe, requests[:1], steps=2, guidance_scale=7.5, batch_size=1, resolution=resolution)  # warm-up
    with Meter(device, 0) as m:
        generate(pipe, requests, steps=args.sample_steps, guidance_scale=7.5, batch_size=args.sample_batch,
                 resolution=resolution)
    return {"part": "sample", "batch": args.sample_batch, "steps": args.sample_steps,
            "images_per_s": len(requests) / (m.end - m.start), "peak_gib": m.peak_gib}


def _fmt(value, spec: str) -> str:
    return "-" if value is None else format(value, spec)


def table(rows: list[dict]) -> str:
    lines = ["| arch | part | variant | pairs | ckpt | steps/s | peak GiB | TFLOP/step | MFU |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["part"] != "dpo":
            continue
        speed = r.get("error") or _fmt(r.get("steps_per_s"), ".2f")
        lines.append(f"| {r['arch']} {r['resolution']} {r['precision']} | dpo | {r['variant']} | {r['pairs']} | "
                     f"{'on' if r['checkpointing'] else 'off'} | {speed} | {_fmt(r.get('peak_gib'), '.1f')} | "
                     f"{r['tflop_per_step']:.1f} | {_fmt(r.get('mfu'), '.1%')} |")
    lines += ["", "| arch | DPO pairs | ckpt | variant | speed vs diffusers | peak memory vs diffusers |",
              "|---|---|---|---|---|---|"]
    dpo = {(r["arch"], r["pairs"], r["checkpointing"], r["variant"]): r for r in rows if r["part"] == "dpo"}
    for (arch, pairs, ckpt, variant), ours in dpo.items():
        peer = dpo.get((arch, pairs, ckpt, "diffusers"))
        if variant == "diffusers" or peer is None or "error" in ours or "error" in peer:
            continue
        memory = ours["peak_gib"] / peer["peak_gib"] if ours.get("peak_gib") else None
        lines.append(f"| {arch} | {pairs} | {'on' if ckpt else 'off'} | {variant} | "
                     f"{ours['steps_per_s'] / peer['steps_per_s']:.2f}x | {_fmt(memory, '.2f')}{'x' if memory else ''} |")
    lines += ["", "| arch | cache s (images) | cache peak GiB | finetune steps/s | finetune peak GiB | "
              "sample images/s | sample peak GiB |", "|---|---|---|---|---|---|---|"]
    for arch in dict.fromkeys(r["arch"] for r in rows):
        part = {r["part"]: r for r in rows if r["arch"] == arch and r["part"] != "dpo"}
        cache, tune, sample = part["cache"], part.get("finetune", {}), part.get("sample", {})
        lines.append(f"| {arch} | {cache['seconds']:.2f} ({cache['images']}) | {_fmt(cache['peak_gib'], '.1f')} | "
                     f"{_fmt(tune.get('steps_per_s'), '.2f')} | {_fmt(tune.get('peak_gib'), '.1f')} | "
                     f"{_fmt(sample.get('images_per_s'), '.3f')} | {_fmt(sample.get('peak_gib'), '.1f')} |")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--archs", nargs="+", choices=FULL_ARCHS, default=list(FULL_ARCHS))
    parser.add_argument("--resolution", type=int, default=None, help="pixels (default: each model's native size)")
    parser.add_argument("--pairs", type=int, nargs="+", default=[1, 4], help="DPO pairs per step")
    parser.add_argument("--checkpointing", nargs="+", choices=["off", "on"], default=["off", "on"],
                        help="DPO with gradient checkpointing off and/or on")
    parser.add_argument("--variants", nargs="+", choices=["diffusers", "ours", "ours-compiled"],
                        default=["diffusers", "ours", "ours-compiled"],
                        help="DPO steps to time: the diffusers script's, ours eager, ours with dpo.compile")
    parser.add_argument("--parts", nargs="*", choices=["finetune", "sample"], default=["finetune", "sample"],
                        help="measured besides the DPO step (the cache is always measured)")
    parser.add_argument("--budget-s", type=float, default=None,
                        help="start no DPO row after this many seconds (rows left are marked skipped)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    parser.add_argument("--steps", type=int, default=5, help="timed training steps per configuration")
    parser.add_argument("--sample-steps", type=int, default=50)
    parser.add_argument("--sample-batch", type=int, default=4)
    parser.add_argument("--out", type=Path, default=None, help="write every row as JSON here")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    name = torch.cuda.get_device_name() if device == "cuda" else platform.processor() or "cpu"
    print(f"device: {name}; torch {torch.__version__}; command: python bench/scale.py {' '.join(argv or sys.argv[1:])}")
    rows = []
    for arch in args.archs:
        try:
            rows += bench_arch(arch, args, device)
        except Exception:  # one architecture failing (e.g. out of memory outside a DPO row) must not lose the others
            log.exception("%s failed", arch)
            if device == "cpu":
                raise
        if args.out:
            args.out.write_text(json.dumps({"device": name, "torch": torch.__version__, "rows": rows}, indent=1))
    print(table(rows))
    return rows


if __name__ == "__main__":
    main()
