"""LoRA adapters on the UNet: add, read out, stack rounds, merge, save, load.

Convention: every adapter has `lora_alpha == r`, so its update is exactly `B @ A`.
A round's model is saved as ONE LoRA relative to the base backbone: the DreamBooth LoRA and
each round's DPO LoRA stacked along the rank axis (`[B0 B1] @ [A0; A1] = B0 A0 + B1 A1`), so
`pipe.load_lora_weights("models/round_r")` gives exactly the round-r model, with no chain of
files to apply in order.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from dbdpo.artifacts import atomic_dir, atomic_file
from dbdpo.errors import LoraError
from dbdpo.provenance import RECORD_FILE

TARGET_MODULES = ["to_q", "to_k", "to_v", "to_out.0"]
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the adapter config (r, alpha, targets)

LoraState = dict[str, torch.Tensor]  # "<module>.lora_A.weight" (r, in) / ".lora_B.weight" (out, r)


def add_lora(unet: torch.nn.Module, rank: int, adapter_name: str) -> None:
    """Attach a trainable LoRA (B = 0, so the model starts unchanged) to the attention layers."""
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=TARGET_MODULES)
    unet.add_adapter(config, adapter_name=adapter_name)


def lora_state(unet: torch.nn.Module, adapter_name: str) -> LoraState:
    """The adapter's A/B matrices, detached fp32 copies, keyed without the adapter name."""
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def lora_rank(state: LoraState) -> int:
    ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise ValueError(f"LoRA state has mixed ranks {sorted(ranks)}")
    return ranks.pop()


def stack(first: LoraState, second: LoraState) -> LoraState:
    """One LoRA whose update is the sum of both updates (ranks add up)."""
    if set(first) != set(second):
        raise ValueError("cannot stack LoRAs that target different modules")
    out = {}
    for key, value in first.items():
        dim = 0 if key.endswith("lora_A.weight") else 1
        out[key] = torch.cat([value, second[key]], dim=dim)
    return out


def check_finite_lora(state: LoraState, where: str) -> None:
    """Refuse a LoRA with inf/NaN entries (a diverged run): it would draw black images."""
    bad = {k: int((~torch.isfinite(v)).sum()) for k, v in state.items() if not torch.isfinite(v).all()}
    if bad:
        raise LoraError(f"{where}: {sum(bad.values())} non-finite LoRA values in {len(bad)} tensors "
                         f"(first: {next(iter(bad))}); the training that made it diverged, rerun it "
                         "with a lower learning rate")


def save_lora(pipe, state: LoraState, directory: Path, made_from: dict[str, str] | None = None) -> None:
    """Write `state` in diffusers' LoRA format (safetensors), loadable by `pipe.load_lora_weights`,
    with `made_from` (see dbdpo.provenance) beside it when given."""
    check_finite_lora(state, str(directory))
    rank = lora_rank(state)
    metadata = {"r": rank, "lora_alpha": rank, "target_modules": TARGET_MODULES}
    with atomic_dir(directory) as tmp:
        type(pipe).save_lora_weights(
            tmp, unet_lora_layers=state, unet_lora_adapter_metadata=metadata, safe_serialization=True
        )
        _keep_one_metadata_key(tmp / WEIGHT_NAME)
        if made_from is not None:
            (tmp / RECORD_FILE).write_text(json.dumps(made_from, indent=2) + "\n")


def _keep_one_metadata_key(path: Path) -> None:
    """Rewrite a safetensors file with only diffusers' `lora_adapter_metadata` key.

    safetensors writes the `__metadata__` keys in a per-process hash order, so the file
    diffusers writes ({"format": "pt", "lora_adapter_metadata": ...}) gets different bytes
    from run to run, and DVC would rerun every downstream stage for nothing. With one key
    the bytes depend only on the tensors. `load_lora_weights` reads only that key.
    """
    with safe_open(str(path), framework="pt") as f:
        tensors = {k: f.get_tensor(k) for k in f.keys()}
        metadata = {k: v for k, v in (f.metadata() or {}).items() if k == LORA_METADATA_KEY}
    save_file(tensors, str(path), metadata=metadata)


def load_lora(directory: Path) -> LoraState:
    """Read a LoRA saved by `save_lora`, with its alpha/r scale folded into B."""
    path = Path(directory) / WEIGHT_NAME
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no LoRA weights (did the stage that writes {directory} run?)")
    with safe_open(str(path), framework="pt") as f:
        meta = json.loads((f.metadata() or {}).get(LORA_METADATA_KEY, "{}"))
        state = {k.removeprefix("unet."): f.get_tensor(k).float() for k in f.keys() if k.startswith("unet.")}
    check_finite_lora(state, str(path))
    rank = lora_rank(state)
    scale = float(meta.get("unet.lora_alpha", rank)) / float(meta.get("unet.r", rank))
    if scale != 1.0:
        state = {k: v * scale if k.endswith("lora_B.weight") else v for k, v in state.items()}
    return state


def to_kohya(state: LoraState) -> dict[str, torch.Tensor]:
    """The same LoRA in kohya-ss naming, read by ComfyUI, A1111/Forge and diffusers:
    `lora_unet_<module path, dots as underscores>.lora_down.weight` (A, (r, in)),
    `.lora_up.weight` (B, (out, r)) and `.alpha` (= r here, so the scale alpha/r is 1)."""
    out = {}
    for key, value in state.items():
        if not key.endswith("lora_A.weight"):
            continue
        name = key.removesuffix(".lora_A.weight")
        prefix = "lora_unet_" + name.replace(".", "_")
        out[f"{prefix}.lora_down.weight"] = value.contiguous()
        out[f"{prefix}.lora_up.weight"] = state[f"{name}.lora_B.weight"].contiguous()
        out[f"{prefix}.alpha"] = torch.tensor(float(value.shape[0]))
    return out


def save_kohya(state: LoraState, path: Path, dtype: torch.dtype = torch.float16) -> None:
    """Write `state` as one kohya-format .safetensors file (fp16 by default, as those tools ship)."""
    tensors = {k: v.to(dtype) for k, v in to_kohya(state).items()}
    # One metadata key only: with several, safetensors orders them per process and the same
    # LoRA would export to different bytes (rank and alpha are in the tensors anyway).
    metadata = {"ss_network_module": "networks.lora"}
    with atomic_file(path) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)


@torch.no_grad()
def merge_into(unet: torch.nn.Module, state: LoraState) -> None:
    """Add each `B @ A` into the base Linear weight it targets (the UNet must have no adapter).

    The sum is taken in fp32 and rounded once: adding a small update to fp16/bf16 weights
    in their own precision would round much of it away.
    """
    modules = dict(unet.named_modules())
    for key in state:
        if not key.endswith("lora_A.weight"):
            continue
        name = key.removesuffix(".lora_A.weight")
        layer = modules.get(name)
        if not isinstance(layer, torch.nn.Linear):
            raise KeyError(f"LoRA targets {name!r}, which is not a Linear layer of this UNet")
        update = state[f"{name}.lora_B.weight"].float() @ state[key].float()
        layer.weight.copy_(layer.weight.float() + update.to(layer.weight.device))


@contextlib.contextmanager
def merged(unet: torch.nn.Module, state: LoraState) -> Iterator[None]:
    """Merge `state` for the duration of the block, then restore the exact base weights."""
    modules = dict(unet.named_modules())
    names = [k.removesuffix(".lora_A.weight") for k in state if k.endswith("lora_A.weight")]
    saved = {n: modules[n].weight.detach().clone() for n in names if n in modules}
    merge_into(unet, state)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                modules[name].weight.copy_(weight)
