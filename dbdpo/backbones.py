"""Load a Stable Diffusion pipeline: SD 1.x/2.x or SDXL (hub id or local dir), or the world's.

`world` (the default) is the proving ground's trained backbone, built by `dbdpo.world.backbone`
from shipped weights; `sd` / `sdxl` load real checkpoints. Every stage treats them the same way.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path

import diffusers
import torch
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DDPMScheduler,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
)

from dbdpo.config import ModelConfig
from dbdpo.devices import compute_device
from dbdpo.errors import BackboneError
from dbdpo.lora import LoraState, load_lora, merge_into_pipeline
from dbdpo.model_files import (
    check_pipeline_dir,
    check_weights,
    is_pipeline_folder,
    resolve_pretrained,
)
from dbdpo.world.backbone import build_world_pipeline

log = logging.getLogger(__name__)
# from_pretrained's dtype argument: diffusers 0.40 renamed torch_dtype (which warns until 1.0)
_DIFFUSERS = tuple(int(part) for part in diffusers.__version__.split(".")[:2])
FP32 = {"dtype" if _DIFFUSERS >= (0, 40) else "torch_dtype": torch.float32}


@dataclass
class Backbone:
    """A loaded pipeline plus what the training code needs to know about it."""

    pipe: StableDiffusionPipeline | StableDiffusionXLPipeline
    resolution: int  # image side in pixels for training and sampling

    @property
    def is_sdxl(self) -> bool:
        """SDXL conditions on two text encoders, a pooled embedding and size/crop ids."""
        return isinstance(self.pipe, StableDiffusionXLPipeline)

    def training_scheduler(self) -> DDPMScheduler:
        """The forward-noising schedule the UNet was trained with."""
        return DDPMScheduler.from_config(self.pipe.scheduler.config)


PRECISION_DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def load_backbone(cfg: ModelConfig, lora: LoraState | None = None, precision: str = "fp32",
                  device: torch.device | None = None) -> Backbone:
    """Build `world` or load `sd` / `sdxl` from `cfg.path`, with `lora` merged into the UNet
    (and the text encoders, where it adapts them).

    Weights load in fp32 and the LoRA merges in fp32 (a small update added to bf16 weights
    would be rounded away); only then is the pipeline cast to `precision` and moved to
    `device` (default: the GPU if any). On a CPU it stays fp32 whatever `precision` says.
    The scheduler becomes DDIM with the model's own training schedule and prediction type
    (epsilon for SD 1.x / SDXL, v_prediction for SD 2.x 768).
    """
    pipe = build_world_pipeline() if cfg.backbone == "world" else _load_pretrained(cfg)
    resolution = cfg.resolution or int(pipe.unet.config.sample_size) * int(pipe.vae_scale_factor)
    multiple = int(pipe.vae_scale_factor) * 2 ** (len(pipe.unet.config.block_out_channels) - 1)
    if resolution % multiple:
        raise BackboneError(f"model.resolution={resolution}: this UNet needs a multiple of {multiple} pixels")
    if lora is not None:
        merge_into_pipeline(pipe, lora)
    device = device or compute_device()
    dtype = PRECISION_DTYPES[precision] if device.type == "cuda" else torch.float32
    if dtype != torch.float32:
        pipe.to(dtype=dtype)
    if device.type != "cpu":
        pipe.to(device)
    pipe.set_progress_bar_config(disable=True)
    return Backbone(pipe, resolution)


def _load_pretrained(cfg: ModelConfig) -> StableDiffusionPipeline | StableDiffusionXLPipeline:
    cls = StableDiffusionXLPipeline if cfg.backbone == "sdxl" else StableDiffusionPipeline
    local = resolve_pretrained(cfg.path, cfg.revision)
    check_pipeline_dir(local, cfg.backbone, cfg.path, cfg.variant)
    extra = {} if cfg.backbone == "sdxl" else {"safety_checker": None, "requires_safety_checker": False}
    if cfg.vae is not None:
        extra["vae"] = _load_vae(cfg.vae)
    try:
        pipe = cls.from_pretrained(local, **FP32, use_safetensors=True, variant=cfg.variant,
                                   **extra)
    except (OSError, ValueError, TypeError) as e:
        raise BackboneError(
            f"model.path={cfg.path!r} does not hold a loadable {cls.__name__} "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); is model.backbone right?"
        ) from None
    pipe.scheduler = DDIMScheduler.from_config(pipe.scheduler.config)
    log.info("loaded %s from %s (%s)", cls.__name__, local, pipe.scheduler.config.prediction_type)
    return pipe


def _load_vae(path: str) -> AutoencoderKL:
    """A standalone AutoencoderKL (config.json + weights), e.g. madebyollin/sdxl-vae-fp16-fix,
    whose activations stay in fp16 range where SDXL's own VAE overflows, or the vae/ of
    another pipeline folder."""
    local = resolve_pretrained(path, None, key="model.vae")
    if not (local / "config.json").is_file() and (local / "vae" / "config.json").is_file():
        local = local / "vae"
    if not (local / "config.json").is_file():
        raise BackboneError(f"model.vae={path!r}: no config.json in {local} or its vae/; "
                            "expected an AutoencoderKL folder")
    check_weights(local, f"model.vae={path!r}", None)
    try:
        return AutoencoderKL.from_pretrained(local, **FP32, use_safetensors=True)
    except (OSError, ValueError, TypeError) as e:
        raise BackboneError(f"model.vae={path!r} does not hold a loadable AutoencoderKL "
                            f"({type(e).__name__}: {str(e).splitlines()[0][:200]})") from None


# --- a round's model: the base it applies to and its one LoRA ---------------------------------


def round_base(model: ModelConfig, round_0: Path) -> ModelConfig:
    """What every round's LoRA applies to: the params' model, or models/round_0 itself when
    DreamBooth fine-tuned the whole model (finetune.method: full)."""
    if not is_pipeline_folder(round_0):
        return model
    class_name = json.loads((Path(round_0) / "model_index.json").read_text()).get("_class_name")
    kind = "sdxl" if class_name == StableDiffusionXLPipeline.__name__ else "sd"
    return ModelConfig(backbone=kind, path=str(round_0), resolution=model.resolution)


def round_lora(folder: Path) -> LoraState:
    """A round's LoRA relative to round_base: empty for a full round 0 (it is the base)."""
    return {} if is_pipeline_folder(folder) else load_lora(folder)

