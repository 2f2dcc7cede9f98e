"""What the UNet is conditioned on besides the noisy latent and the timestep.

SD 1.x/2.x: the text encoder's hidden states. SDXL adds two things (Podell et al. 2023,
Sec. 2.1-2.2): the pooled embedding of its second text encoder, and six "micro-conditioning"
ids per image (original height/width, crop top/left, target height/width) that tell the
UNet how the training image was resized and cropped. Training code builds these once per
round and calls the UNet through `predict`, so one loop serves both architectures.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from PIL import Image

from dbdpo.backbones import Backbone


@dataclass(frozen=True)
class TextConditioning:
    """hidden: (P, 77, D) token states for cross-attention (SDXL: both encoders concatenated,
    D = 768 + 1280); pooled: (P, Dp) SDXL's pooled text_encoder_2 embedding, None for SD."""

    hidden: torch.Tensor
    pooled: torch.Tensor | None

    def __len__(self) -> int:
        return len(self.hidden)

    def select(self, index: torch.Tensor) -> TextConditioning:
        """Rows `index` (B,) of both tensors: one conditioning per batch element."""
        return TextConditioning(self.hidden[index], None if self.pooled is None else self.pooled[index])


def text_conditioning(backbone: Backbone, prompts: list[str]) -> TextConditioning:
    """Encode with the pipeline's own `encode_prompt` (penultimate layers for SDXL, as it
    samples), without classifier-free guidance, on the text encoder's device and with
    autograd: what a step that trains the text encoder feeds the UNet."""
    pipe = backbone.pipe
    device = pipe.text_encoder.device
    if backbone.is_sdxl:
        hidden, _, pooled, _ = pipe.encode_prompt(prompts, device=device, num_images_per_prompt=1,
                                                  do_classifier_free_guidance=False)
        return TextConditioning(hidden, pooled)
    hidden, _ = pipe.encode_prompt(prompts, device, 1, do_classifier_free_guidance=False)
    return TextConditioning(hidden, None)


@torch.no_grad()
def encode_prompts(backbone: Backbone, prompts: list[str]) -> TextConditioning:
    """text_conditioning for a frozen text encoder: fp32 on the CPU, for caching."""
    text = text_conditioning(backbone, prompts)
    return TextConditioning(text.hidden.float().cpu(), None if text.pooled is None else text.pooled.float().cpu())


def size_ids(image: Image.Image, resolution: int) -> list[int]:
    """SDXL's six ids for an image that `data.to_tensor` resizes (shorter side to
    `resolution`) and center-crops to a square: [orig_h, orig_w, crop_top, crop_left, R, R].

    Crop offsets are in the resized image's pixels, as in SDXL's training data pipeline;
    an image generated at R x R gives [R, R, 0, 0, R, R].
    """
    width, height = image.size
    scale = resolution / min(width, height)
    top = round((height * scale - resolution) / 2)
    left = round((width * scale - resolution) / 2)
    return [height, width, top, left, resolution, resolution]


def image_size_ids(backbone: Backbone, images: list[Image.Image]) -> torch.Tensor | None:
    """(N, 6) float ids per image for SDXL; None for backbones without micro-conditioning."""
    if not backbone.is_sdxl:
        return None
    return torch.tensor([size_ids(img, backbone.resolution) for img in images], dtype=torch.float32)


def predict(unet, noisy: torch.Tensor, timesteps: torch.Tensor, text: TextConditioning,
            size: torch.Tensor | None, device) -> torch.Tensor:
    """UNet output (B, 4, h, w) for noisy latents (B, 4, h, w), timesteps (B,), text (B rows),
    size ids (B, 6) or None; inputs are moved to `device`.

    Float inputs are cast to the UNet's weight dtype (fp16/bf16 when training on a GPU), as
    diffusers' training scripts feed it: fp32 inputs under autocast kept parts of SDXL's
    activations in fp32 (4.1 GiB of fp32 tensors saved for backward at 1024 px and 1 pair,
    bench/activation_memory.py on an H200, where the script's step saves 0.03 GiB).
    """
    dtype = getattr(unet, "module", unet).conv_in.weight.dtype
    added = None
    if text.pooled is not None:
        if size is None:
            raise ValueError("SDXL needs the size/crop ids of every image (image_size_ids)")
        added = {"text_embeds": text.pooled.to(device, dtype), "time_ids": size.to(device, dtype)}
    return unet(noisy.to(device, dtype), timesteps.to(device), text.hidden.to(device, dtype),
                added_cond_kwargs=added).sample
