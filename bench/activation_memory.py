"""Where a DPO step's activation memory goes: bytes saved for backward, ours vs diffusers' step.

Runs one step of each on a full-size architecture with random weights (bf16) and counts the
tensors autograd saves for the backward pass (unique storages, via saved-tensor hooks), by
dtype, then the (dtype, shape) groups where the two differ most. Peak memory shows that a gap
exists; this shows which activations make it.

    python bench/activation_memory.py --arch sdxl --resolution 1024
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from architectures import FULL_ARCHS, full_backbone  # noqa: E402
from diffusers_dpo import diffusers_dpo  # noqa: E402
from scale import PROMPTS, _clean, noise_images  # noqa: E402

from dbdpo.conditioning import encode_prompts, image_size_ids  # noqa: E402
from dbdpo.config import DpoConfig  # noqa: E402
from dbdpo.data import to_tensor  # noqa: E402
from dbdpo.dpo import PreferenceData, train_dpo  # noqa: E402
from dbdpo.training import encode_images  # noqa: E402


def saved_bytes(run) -> tuple[collections.Counter, collections.Counter]:
    """Bytes of the distinct storages autograd saves while `run()` runs: by dtype, by (dtype, shape)."""
    seen = {}

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        seen[storage.data_ptr()] = (str(tensor.dtype), tuple(tensor.shape), storage.nbytes())
        return tensor

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        run()
    by_dtype, by_shape = collections.Counter(), collections.Counter()
    for dtype, shape, nbytes in seen.values():
        by_dtype[dtype] += nbytes
        by_shape[(dtype, shape)] += nbytes
    return by_dtype, by_shape


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", choices=FULL_ARCHS, default="sdxl")
    parser.add_argument("--resolution", type=int, default=None)
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args(argv)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    backbone = full_backbone(args.arch, device, torch.bfloat16, resolution=args.resolution)
    pipe, resolution = backbone.pipe, backbone.resolution
    images = noise_images(2, resolution)
    data = PreferenceData(latents=encode_images(backbone, images), sizes=image_size_ids(backbone, images),
                          text=encode_prompts(backbone, PROMPTS[:1]), winner=torch.tensor([0]),
                          loser=torch.tensor([1]), prompt=torch.tensor([0]))
    pixels = to_tensor(images, resolution)
    pair = torch.cat([pixels[:1], pixels[1:]], dim=1)

    def ours():
        try:
            train_dpo(backbone, data, DpoConfig(steps=1, batch_size=1, lora_rank=8, mixed_precision="bf16"))
        finally:
            _clean(pipe.unet, "dpo")

    def peer():
        try:
            diffusers_dpo(pipe, pair, PROMPTS[:1], 1, mixed_precision="bf16", gradient_checkpointing=False)
        finally:
            _clean(pipe.unet)

    results = {"ours": saved_bytes(ours), "diffusers": saved_bytes(peer)}
    for name, (by_dtype, _) in results.items():
        print(f"{name:9s}", {dtype: f"{nbytes / 2**30:.3f} GiB" for dtype, nbytes in by_dtype.items()})
    diff = collections.Counter(results["ours"][1])
    diff.subtract(results["diffusers"][1])
    for (dtype, shape), nbytes in sorted(diff.items(), key=lambda kv: -abs(kv[1]))[: args.top]:
        print(f"{dtype:15s} {str(shape):24s} ours - diffusers {nbytes / 2**20:9.1f} MiB")
    return results


if __name__ == "__main__":
    main()
