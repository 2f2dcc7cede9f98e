"""Load a Stable Diffusion pipeline: SD 1.x/2.x or SDXL (hub id or local dir), or the tiny one.

The embedded `tiny` backbone is a real `StableDiffusionPipeline` (UNet2DConditionModel,
AutoencoderKL, CLIPTextModel, the real CLIP BPE tokenizer) built offline from the configs
below with a fixed seed, so every stage treats it exactly like SD. UNet and text encoder are
random; the VAE is trained on procedural shapes (scripts/train_tiny_vae.py) so that what the
UNet learns shows up as colors and shapes. It exercises the code; it draws nothing real.
"""

from __future__ import annotations

import functools
import gzip
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from safetensors.torch import load_file
from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

from dbdpo.config import ModelConfig

log = logging.getLogger(__name__)


class BackboneError(RuntimeError):
    """The requested backbone cannot be loaded (missing weights, offline, wrong kind)."""


# Trained by scripts/train_tiny_backbone.py on captioned procedural shapes: a random VAE
# decodes every latent to the same grey and a random UNet does not denoise, which would hide
# whatever finetune and DPO teach. The text encoder stays random (frozen, as in SD).
TINY_VAE_WEIGHTS = Path(__file__).parent / "assets" / "tiny_vae.safetensors"
TINY_UNET_WEIGHTS = Path(__file__).parent / "assets" / "tiny_unet.safetensors"

# Sizes measured in ENVIRONMENT.md: ~1M UNet params, 8 images x 20 steps in ~3.5 s on 2 cores.
TINY_UNET = dict(
    sample_size=32,
    in_channels=4,
    out_channels=4,
    block_out_channels=(32, 64),
    layers_per_block=1,
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
    cross_attention_dim=32,
    attention_head_dim=8,
    norm_num_groups=32,
)
TINY_VAE = dict(
    in_channels=3,
    out_channels=3,
    block_out_channels=(32, 64),
    down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
    up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
    latent_channels=4,
    norm_num_groups=32,
    sample_size=64,
    # 1 / RMS of the trained VAE's latents on its training images: unit-scale diffusion space.
    scaling_factor=0.293,
)
TINY_TEXT = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=4,
    max_position_embeddings=77,
    vocab_size=49408,
    bos_token_id=49406,
    eos_token_id=49407,
    pad_token_id=49407,
    projection_dim=32,
)
# The SD 1.x/2.x training schedule (scaled-linear betas, 1000 steps).
SD_SCHEDULE = dict(
    num_train_timesteps=1000,
    beta_start=0.00085,
    beta_end=0.012,
    beta_schedule="scaled_linear",
    prediction_type="epsilon",
    clip_sample=False,
    set_alpha_to_one=False,
    steps_offset=1,
)


@dataclass
class Backbone:
    """A loaded pipeline plus what the training code needs to know about it."""

    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline
    kind: str  # tiny | sd | sdxl

    @property
    def resolution(self) -> int:
        """Native image side in pixels (UNet sample size times the VAE's downsampling)."""
        return int(self.pipe.unet.config.sample_size) * int(self.pipe.vae_scale_factor)

    @property
    def prediction_type(self) -> str:
        return self.pipe.scheduler.config.prediction_type

    def training_scheduler(self) -> DDPMScheduler:
        """The forward-noising schedule the UNet was trained with."""
        return DDPMScheduler.from_config(self.pipe.scheduler.config)


@functools.cache
def clip_tokenizer_files() -> Path:
    """Write CLIP's vocab.json/merges.txt, rebuilt from the BPE file open_clip ships.

    Same construction as open_clip's SimpleTokenizer (and OpenAI's CLIP): 256 byte symbols,
    their `</w>` forms, the first 48,894 merges, then the two special tokens = 49,408 ids.
    """
    import open_clip

    bpe_path = Path(open_clip.__file__).parent / "bpe_simple_vocab_16e6.txt.gz"
    lines = gzip.open(bpe_path).read().decode("utf-8").split("\n")
    merges = [tuple(m.split()) for m in lines[1 : 49152 - 256 - 2 + 1]]
    byte_symbols = list(_bytes_to_unicode().values())
    vocab = byte_symbols + [s + "</w>" for s in byte_symbols] + ["".join(m) for m in merges]
    vocab += ["<|startoftext|>", "<|endoftext|>"]
    out = Path(tempfile.mkdtemp(prefix="dbdpo-clip-bpe-"))
    (out / "vocab.json").write_text(json.dumps({tok: i for i, tok in enumerate(vocab)}))
    (out / "merges.txt").write_text("#version: 0.2\n" + "\n".join(" ".join(m) for m in merges))
    return out


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP reversible byte -> printable unicode map."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    codes = printable[:]
    extra = 0
    for b in range(256):
        if b not in printable:
            printable.append(b)
            codes.append(256 + extra)
            extra += 1
    return dict(zip(printable, map(chr, codes)))


def clip_tokenizer() -> CLIPTokenizer:
    files = clip_tokenizer_files()
    # model_max_length is not stored in a bare vocab: CLIP's text context is 77 tokens.
    return CLIPTokenizer(
        str(files / "vocab.json"), str(files / "merges.txt"), model_max_length=TINY_TEXT["max_position_embeddings"]
    )


def build_tiny_pipeline(seed: int = 0, pretrained_unet: bool = True) -> StableDiffusionPipeline:
    """The embedded backbone: identical weights for the same seed, no network.

    The text encoder is random (seeded); VAE and UNet load their shipped trained weights
    (`pretrained_unet=False` keeps the UNet random: the starting point of its training).
    """
    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**TINY_UNET)
    vae = AutoencoderKL(**TINY_VAE)
    vae.load_state_dict(load_file(str(TINY_VAE_WEIGHTS)))
    if pretrained_unet:
        unet.load_state_dict(load_file(str(TINY_UNET_WEIGHTS)))
    text_encoder = CLIPTextModel(CLIPTextConfig(**TINY_TEXT))
    pipe = StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=clip_tokenizer(),
        unet=unet,
        scheduler=DDIMScheduler(**SD_SCHEDULE),
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _resolve_pretrained(path: str, revision: str | None) -> str:
    """A local directory as is; a hub id from the local cache, or downloaded if online.

    Fails fast with one clear message instead of huggingface_hub's retries and tracebacks.
    """
    if Path(path).is_dir():
        return path
    if Path(path).exists() or path.startswith((".", "/", "~")):
        raise BackboneError(
            f"model.path={path!r} is not a directory with a diffusers pipeline "
            "(model_index.json, unet/, vae/, text_encoder/ ...)"
        )
    from huggingface_hub import snapshot_download

    try:
        return snapshot_download(path, revision=revision, local_files_only=True)
    except Exception:
        pass
    if os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False"):
        raise BackboneError(
            f"model.path={path!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is "
            f"set. Download it on a connected machine (`huggingface-cli download {path}`) "
            "or set model.path to a local directory holding the pipeline."
        )
    try:
        return snapshot_download(path, revision=revision)
    except Exception as e:  # network, auth, unknown repo: all end the same way for the user
        raise BackboneError(
            f"model.path={path!r}: could not download from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Check the id and your "
            "network/token, or point model.path at a local directory."
        ) from None


def load_backbone(cfg: ModelConfig, dtype: torch.dtype = torch.float32) -> Backbone:
    """Build `tiny` or load `sd` / `sdxl` from `cfg.path`; the scheduler is DDIM from config."""
    if cfg.backbone == "tiny":
        return Backbone(build_tiny_pipeline(cfg.seed), "tiny")
    cls = StableDiffusionXLPipeline if cfg.backbone == "sdxl" else StableDiffusionPipeline
    local = _resolve_pretrained(cfg.path, cfg.revision)
    extra = {} if cfg.backbone == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    try:
        pipe = cls.from_pretrained(local, torch_dtype=dtype, **extra)
    except (OSError, ValueError, TypeError) as e:
        raise BackboneError(
            f"model.path={cfg.path!r} does not hold a loadable {cls.__name__} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); is model.backbone right?"
        ) from None
    # DDIM with the model's own training schedule and prediction type (epsilon or v).
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    log.info("loaded %s from %s", cls.__name__, local)
    return Backbone(pipe, cfg.backbone)
