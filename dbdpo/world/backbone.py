"""The proving ground's backbone: a real `StableDiffusionPipeline` trained on the world.

`model.backbone: world` (the default) is a `StableDiffusionPipeline` (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, the real CLIP BPE tokenizer) whose UNet, VAE and text encoder are
trained on the world of `dbdpo.world.scenes` by scripts/train_world_backbone.py: "a photo of a
toy in the snow" draws a toy in the snow. The text encoder is trained with the UNet (a frozen
random one of this size reads attribute words poorly); the instance token `sks` never occurs in
a caption, so its embedding stays at its random init, as a rare token does in SD's CLIP.
"""

from __future__ import annotations

import functools
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    StableDiffusionPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel

from dbdpo.tokenizer import clip_tokenizer
from dbdpo.world.architecture import (
    SD_SCHEDULE,
    WORLD_TEXT,
    WORLD_UNET,
    WORLD_VAE,
    WORLD_WEIGHTS,
)

# The text encoder's token embedding is 49,408 x 64, yet the world's captions use 70 of its
# tokens; the other rows, `sks` among them, never get a gradient and stay at their init. So
# the shipped file holds the trained rows and a few untrained probe rows, and the loader
# replays the init for the rest: 6.3 MB less, which keeps the world's weights under 30 MB.
TOKEN_EMBEDDING = "embeddings.token_embedding.weight"
STORED_IDS = "embeddings.token_embedding.stored_ids"  # (n,) int64, sorted
STORED_ROWS = "embeddings.token_embedding.stored_rows"  # (n, 64) fp16, the rows of STORED_IDS
PROBE_IDS = "embeddings.token_embedding.probe_ids"  # (m,) int64, sorted: the untrained ones among them
NUM_PROBES = 64  # untrained rows stored to check the replayed init (the concept token's among them)
CONCEPT_TOKEN_ID = 48136  # "sks</w>", the default concept.token


@functools.cache
def initial_token_embedding() -> torch.Tensor:
    """(49408, 64) fp16: the world text encoder's token embedding before training, replayed
    exactly as scripts/train_world_backbone.py builds it (seed 0, VAE, UNet, then the text
    encoder). The global RNG is left as it was."""
    with torch.random.fork_rng(devices=[]):
        pipe = build_world_pipeline(seed=0, trained=False)
    return pipe.text_encoder.get_input_embeddings().weight.detach().half()


def sparse_token_embedding(state: dict[str, torch.Tensor], initial: torch.Tensor) -> dict[str, torch.Tensor]:
    """A text encoder's fp16 state dict with its token embedding replaced by the rows that
    differ from `initial` (fp16), plus NUM_PROBES untrained rows that let the loader check its
    replay of `initial`."""
    state = dict(state)
    weight = state.pop(TOKEN_EMBEDDING).half()
    trained = (weight != initial).any(dim=1)
    untrained_ids = (~trained).nonzero().squeeze(1)
    probes = untrained_ids[torch.linspace(0, len(untrained_ids) - 1, NUM_PROBES - 1).long()]
    if not trained[CONCEPT_TOKEN_ID]:
        probes = torch.cat([probes, torch.tensor([CONCEPT_TOKEN_ID])])
    ids = torch.cat([trained.nonzero().squeeze(1), probes]).unique()
    return state | {STORED_IDS: ids, STORED_ROWS: weight[ids].contiguous(), PROBE_IDS: probes.unique()}


def dense_token_embedding(state: dict[str, torch.Tensor], path: Path) -> dict[str, torch.Tensor]:
    """The inverse of sparse_token_embedding: the replayed init with the stored rows written
    in. Raises if the replayed init does not match the stored probe rows (a torch, diffusers or
    transformers that initializes differently from the one that trained the weights)."""
    state = dict(state)
    ids, rows, probes = state.pop(STORED_IDS), state.pop(STORED_ROWS), state.pop(PROBE_IDS)
    weight = initial_token_embedding().clone()
    replayed, stored = weight[probes].float(), rows[torch.searchsorted(ids, probes)].float()
    if not torch.allclose(replayed, stored, rtol=0, atol=1e-4):
        raise RuntimeError(
            f"{path}: the text encoder's untrained token embeddings come from replaying its random init, "
            f"and this torch / diffusers / transformers replays it differently (max difference "
            f"{(replayed - stored).abs().max().item():.3g}); install the versions in constraints.txt")
    weight[ids] = rows
    return state | {TOKEN_EMBEDDING: weight}


def load_world_part(module: torch.nn.Module, part: str) -> None:
    """Load shipped world weights (stored fp16 to keep the package small) into fp32 `module`."""
    path = WORLD_WEIGHTS[part]
    state = load_file(str(path))
    if STORED_IDS in state:
        state = dense_token_embedding(state, path)
    module.load_state_dict({k: v.float() for k, v in state.items()})


def build_world_pipeline(seed: int = 0, trained: bool = True) -> StableDiffusionPipeline:
    """The proving ground's backbone with the shipped trained weights; `trained=False`: its
    random init (seeded), the start of its training. No network."""
    torch.manual_seed(seed)
    vae = AutoencoderKL(**WORLD_VAE)
    unet = UNet2DConditionModel(**WORLD_UNET)
    text_encoder = CLIPTextModel(CLIPTextConfig(**WORLD_TEXT))
    if trained:
        load_world_part(vae, "vae")
        load_world_part(unet, "unet")
        load_world_part(text_encoder, "text_encoder")
    pipe = StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=clip_tokenizer(), unet=unet,
                                   scheduler=DDIMScheduler(**SD_SCHEDULE), safety_checker=None,
                                   feature_extractor=None, requires_safety_checker=False)
    pipe.set_progress_bar_config(disable=True)
    return pipe
