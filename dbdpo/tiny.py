"""Tiny stand-ins for SD 2.x and SDXL, built offline: small random pipelines of the real
architectures, for code paths only (their images mean nothing).

`sd2` (v-prediction, linear attention projections, like SD 2.x) and `sdxl` (two text encoders,
the pooled text embedding and size/crop micro-conditioning, like SDXL) have random (seeded)
UNets and text encoders over the proving ground's trained VAE. `save_tiny_pipeline` writes
either as an ordinary diffusers folder, which loads as `backbone: sd` / `sdxl` through exactly
the code that loads the real checkpoints. (The proving ground's trained backbone is
`dbdpo.world.backbone`; `tiny` always means random.)
"""

from __future__ import annotations

from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

from dbdpo.tokenizer import clip_tokenizer, write_clip_tokenizer_files
from dbdpo.world.architecture import SD_SCHEDULE, WORLD_TEXT, WORLD_VAE
from dbdpo.world.backbone import load_world_part

# The SD 2.x / SDXL stand-ins: small and random, for code paths only.
TEST_UNET = dict(
    sample_size=16,  # 64 px through the world VAE, like the default backbone
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
    use_linear_projection=True,  # SD 2.x and SDXL: linear (not 1x1-conv) attention projections
)
TEST_TEXT = {**WORLD_TEXT, "hidden_size": 32, "intermediate_size": 64, "projection_dim": 32}
# SDXL's UNet: cross-attention over both text encoders' states (32 + 32), and an added
# embedding of the pooled text_encoder_2 output (32) and the six size/crop ids (6 x 8).
TEST_SDXL_UNET = {
    **TEST_UNET,
    "cross_attention_dim": 64,
    "addition_embed_type": "text_time",
    "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 6 * 8 + 32,
}
V_SCHEDULE = {**SD_SCHEDULE, "prediction_type": "v_prediction"}
TINY_ARCHS = ("sd2", "sdxl")


def build_tiny_pipeline(arch: str, seed: int = 0) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    """The tiny `arch` stand-in: identical weights for the same seed, no network."""
    if arch not in TINY_ARCHS:
        raise ValueError(f"tiny architecture {arch!r}: expected one of {', '.join(TINY_ARCHS)}")
    torch.manual_seed(seed)
    vae = AutoencoderKL(**WORLD_VAE)
    load_world_part(vae, "vae")
    if arch == "sdxl":
        pipe = StableDiffusionXLPipeline(
            vae=vae,
            text_encoder=CLIPTextModel(CLIPTextConfig(**TEST_TEXT)),
            text_encoder_2=CLIPTextModelWithProjection(CLIPTextConfig(**TEST_TEXT)),
            tokenizer=clip_tokenizer(),
            tokenizer_2=clip_tokenizer(),
            unet=UNet2DConditionModel(**TEST_SDXL_UNET),
            scheduler=DDIMScheduler(**SD_SCHEDULE),
        )
    else:
        unet = UNet2DConditionModel(**TEST_UNET)
        text_encoder = CLIPTextModel(CLIPTextConfig(**TEST_TEXT))
        pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                       scheduler=DDIMScheduler(**V_SCHEDULE), safety_checker=None,
                                       feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def save_tiny_pipeline(arch: str, directory: Path, seed: int = 0) -> Path:
    """Write the tiny `arch` stand-in as a diffusers folder (safetensors), loadable as
    `backbone: sd` (sd2) or `backbone: sdxl` with `model.path: <directory>`. Its tokenizers
    are in the hub checkpoints' layout (vocab.json, merges.txt; `dbdpo.preflight`'s download
    list), not the tokenizer.json save_pretrained writes, which is slower to load."""
    directory = Path(directory)
    pipe = build_tiny_pipeline(arch, seed)
    pipe.save_pretrained(directory, safe_serialization=True)
    for name in ("tokenizer", "tokenizer_2"):
        if getattr(pipe, name, None) is not None:
            (directory / name / "tokenizer.json").unlink()
            write_clip_tokenizer_files(directory / name)
    return directory
