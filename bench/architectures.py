"""The published SD 2-base, SD 2.1 and SDXL architectures, built with random weights.

Only the configs are kept (bench/full_configs/<arch>.json, the values of the checkpoints' own
config.json files), so the real sizes can be built and measured anywhere, without a
download: `bench/scale.py` times and profiles them. Random weights draw noise; these
pipelines are for speed and memory, never for results.
"""

from __future__ import annotations

import json
from functools import cache
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    CLIPTokenizer,
)

from dbdpo.backbones import Backbone
from dbdpo.tokenizer import clip_tokenizer

CONFIG_DIR = Path(__file__).parent / "full_configs"
FULL_ARCHS = ("sd2-base", "sd21", "sdxl")

# Parameters per part, as counted in the published checkpoints' weights; the papers and
# model cards round them: SD 2.x "865M UNet"; SDXL (Podell et al. 2023, Table 1) "2.6B"
# UNet and "817M" text encoders (CLIP ViT-L 123M + OpenCLIP ViT-bigG 695M).
PUBLISHED_PARAMETERS = {
    "sd2-base": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sd21": {"unet": 865_910_724, "vae": 83_653_863, "text_encoder": 340_387_840},
    "sdxl": {"unet": 2_567_463_684, "vae": 83_653_863, "text_encoder": 123_060_480,
             "text_encoder_2": 694_659_840},
}


@cache
def arch_config(arch: str) -> dict:
    """The shipped config of `arch`: pipeline class, native resolution, preset precision,
    and one config dict per part (unet, vae, text_encoder[, text_encoder_2], scheduler)."""
    if arch not in FULL_ARCHS:
        raise ValueError(f"architecture {arch!r}: expected one of {', '.join(FULL_ARCHS)}")
    return json.loads((CONFIG_DIR / f"{arch}.json").read_text())


def arch_precision(arch: str, device: str | torch.device) -> str:
    """`arch`'s preset precision on a GPU, fp32 elsewhere (a CPU samples and trains in fp32,
    as `load_backbone` does)."""
    return arch_config(arch)["precision"] if torch.device(device).type == "cuda" else "fp32"


def _parts(arch: str) -> dict[str, torch.nn.Module]:
    """The weighted parts of `arch`, initialized on the current default device."""
    cfg = arch_config(arch)
    parts = {
        "unet": UNet2DConditionModel(**cfg["unet"]),
        "vae": AutoencoderKL(**cfg["vae"]),
        "text_encoder": CLIPTextModel(CLIPTextConfig(**cfg["text_encoder"])),
    }
    if "text_encoder_2" in cfg:
        parts["text_encoder_2"] = CLIPTextModelWithProjection(CLIPTextConfig(**cfg["text_encoder_2"]))
    return parts


def parameter_counts(arch: str) -> dict[str, int]:
    """Parameters per part, counted on the meta device (no memory, about a second)."""
    with torch.device("meta"):
        return {name: sum(p.numel() for p in module.parameters()) for name, module in _parts(arch).items()}


def _tokenizer(pad: str) -> CLIPTokenizer:
    """CLIP's BPE tokenizer; SD 2.x and SDXL's second encoder pad with "!" (OpenCLIP)."""
    tokenizer = clip_tokenizer()
    if pad != tokenizer.pad_token:
        tokenizer.pad_token = pad
    return tokenizer


def build_full_pipeline(arch: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                        seed: int = 0) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """`arch` at full size with random (seeded) weights, initialized directly on `device`
    (no host copy of a GPU model), then cast to `dtype` as a whole, as `load_backbone`
    casts a loaded checkpoint (the pipelines and `encode_images` upcast the VAE where its
    config asks for it)."""
    cfg = arch_config(arch)
    torch.manual_seed(seed)
    with torch.device(device):
        parts = _parts(arch)
    for module in parts.values():
        module.requires_grad_(False)
        if dtype != torch.float32:
            module.to(dtype)
    scheduler = DDIMScheduler(**cfg["scheduler"])
    if cfg["pipeline"] == "StableDiffusionXLPipeline":
        pipe = StableDiffusionXLPipeline(**parts, tokenizer=_tokenizer(cfg["tokenizer_pad"]),
                                         tokenizer_2=_tokenizer(cfg["tokenizer_2_pad"]), scheduler=scheduler)
    else:
        pipe = StableDiffusionPipeline(**parts, tokenizer=_tokenizer(cfg["tokenizer_pad"]), scheduler=scheduler,
                                       safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def full_backbone(arch: str, device: str | torch.device = "cpu", dtype: torch.dtype = torch.float32,
                  resolution: int | None = None, seed: int = 0) -> Backbone:
    """A `Backbone` over `build_full_pipeline`, at `resolution` (default: the native one);
    the training and sampling code treat it exactly like a loaded checkpoint."""
    cfg = arch_config(arch)
    pipe = build_full_pipeline(arch, device, dtype, seed)
    return Backbone(pipe, resolution or cfg["resolution"])
