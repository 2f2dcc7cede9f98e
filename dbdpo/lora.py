"""LoRA adapters on the UNet (and DreamBooth's on the text encoders): add, read out, stack
rounds, merge, save, load.

Convention: every adapter has `lora_alpha == r`, so its update is exactly `B @ A`. A LoraState
keys the UNet's layers by their module names and a text encoder's by its pipeline component
first ("text_encoder.text_model.encoder.layers.0.self_attn.q_proj.lora_A.weight").
A round's model is saved as ONE LoRA relative to the base backbone: the DreamBooth LoRA and
each round's DPO LoRA stacked along the rank axis (`[B0 B1] @ [A0; A1] = B0 A0 + B1 A1`), so
`pipe.load_lora_weights("models/round_r")` gives exactly the round-r model, with no chain of
files to apply in order. After a full DreamBooth the base is models/round_0 itself (a whole
pipeline) and a round's LoRA is its DPO LoRAs stacked (dbdpo.backbones.round_base).
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from peft import LoraConfig
from peft.utils import get_peft_model_state_dict
from safetensors import safe_open
from safetensors.torch import save_file

from dbdpo.artifacts import atomic_dir, atomic_file
from dbdpo.errors import LoraError, MissingInput
from dbdpo.provenance import RECORD_FILE

# Which UNet layers an adapter trains (`finetune.lora_targets`, `dpo.lora_targets`).
# attention: the four attention projections, as diffusers' DreamBooth and DPO LoRA scripts.
# unet: also the transformer blocks' in/out and feed-forward projections and every ResNet
#   block's convolutions and time projection (LoCon-style): the proving ground's DreamBooth
#   default, chosen on the dev concepts' mean (docs/results.md, the DreamBooth screens).
TARGET_SETS = {
    "attention": ["to_q", "to_k", "to_v", "to_out.0"],
    "unet": ["to_q", "to_k", "to_v", "to_out.0", "proj_in", "proj_out", "ff.net.0.proj", "ff.net.2",
             "conv1", "conv2", "conv_shortcut", "time_emb_proj"],
}
WEIGHT_NAME = "pytorch_lora_weights.safetensors"
LORA_METADATA_KEY = "lora_adapter_metadata"  # diffusers' key for the adapter config (r, alpha, targets)

# What DreamBooth's text-encoder LoRA trains (finetune.train_text_encoder), as diffusers' DreamBooth
# LoRA scripts do: the attention projections of every CLIP layer.
TEXT_ENCODER_TARGETS = ["q_proj", "k_proj", "v_proj", "out_proj"]
TEXT_ENCODERS = ("text_encoder", "text_encoder_2")  # SD has the first, SDXL both

LoraState = dict[str, torch.Tensor]  # "<module>.lora_A.weight" (r, in) / ".lora_B.weight" (out, r)


def split_key(key: str) -> tuple[str, str]:
    """(pipeline component, key within it) of a LoraState key: text-encoder keys carry their
    component first, any other key is the UNet's."""
    component, _, rest = key.partition(".")
    return (component, rest) if component in TEXT_ENCODERS else ("unet", key)


def by_component(state: LoraState) -> dict[str, LoraState]:
    """The state split by pipeline component ("unet", "text_encoder", "text_encoder_2"),
    each keyed by its module names within that component."""
    parts: dict[str, LoraState] = {}
    for key, value in state.items():
        component, rest = split_key(key)
        parts.setdefault(component, {})[rest] = value
    return parts


def target_names(targets: str | Sequence[str]) -> list[str]:
    """The module names a LoRA adapts: a target set by its name (a key of TARGET_SETS;
    "text_encoder": TEXT_ENCODER_TARGETS), or an explicit list of names, taken as given."""
    if not isinstance(targets, str):
        return list(targets)
    return TEXT_ENCODER_TARGETS if targets == "text_encoder" else TARGET_SETS[targets]


def add_lora(module: torch.nn.Module, rank: int, adapter_name: str,
             targets: str | Sequence[str] = "attention", seed: int = 0) -> None:
    """Attach a trainable LoRA (B = 0, so the model starts unchanged) to the layers that
    `targets` names (target_names), its A matrices drawn from `seed` (seed_lora_init)."""
    names = target_names(targets)
    config = LoraConfig(r=rank, lora_alpha=rank, init_lora_weights=True, target_modules=names)
    module.add_adapter(config, adapter_name=adapter_name)
    seed_lora_init(module, adapter_name, seed)


def seed_lora_init(module: torch.nn.Module, adapter_name: str, seed: int) -> None:
    """Redraw every A of the adapter as peft's default init draws it, Kaiming-uniform with
    a = sqrt(5), i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in)), but from a CPU generator seeded with
    `seed`, in the module's parameter order. peft draws from torch's global RNG, which anything
    that ran earlier in the process has moved (a bench running many loops, a notebook), and
    which differs per device: this way a loop's seed alone fixes its start, on every device."""
    gen = torch.Generator().manual_seed(seed)
    marker = f".lora_A.{adapter_name}."
    with torch.no_grad():
        for name, param in module.named_parameters():
            if marker in name:
                bound = param[0].numel() ** -0.5  # fan_in: input features x kernel size
                draw = torch.rand(param.shape, generator=gen, dtype=torch.float32) * (2 * bound) - bound
                param.copy_(draw.to(param.dtype))


def lora_state(unet: torch.nn.Module, adapter_name: str) -> LoraState:
    """The adapter's A/B matrices, detached fp32 copies, keyed without the adapter name."""
    state = get_peft_model_state_dict(unet, adapter_name=adapter_name)
    return {k: v.detach().float().cpu().clone() for k, v in state.items()}


def lora_rank(state: LoraState) -> int:
    ranks = {v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")}
    if len(ranks) != 1:
        raise ValueError(f"LoRA state has mixed ranks {sorted(ranks)}")
    return ranks.pop()


def _zeros_like_rank(value: torch.Tensor, key: str, rank: int) -> torch.Tensor:
    """A zero A (rank, in, ...) or B (out, rank, ...) shaped like `value` but of rank `rank`."""
    shape = list(value.shape)
    shape[0 if key.endswith("lora_A.weight") else 1] = rank
    return value.new_zeros(shape)


def stack(first: LoraState, second: LoraState) -> LoraState:
    """One LoRA whose update is the sum of both updates (ranks add up).

    A layer only one of them targets gets zero rows in the other's part, which add nothing:
    a DreamBooth LoRA on every UNet layer stacks with a DPO LoRA on the attention layers.
    An empty LoRA (a full round 0, which is the base itself) adds nothing either.
    """
    if not first or not second:
        return dict(first or second)
    r1, r2 = lora_rank(first), lora_rank(second)
    out = {}
    for key in sorted(set(first) | set(second)):
        a = first[key] if key in first else _zeros_like_rank(second[key], key, r1)
        b = second[key] if key in second else _zeros_like_rank(first[key], key, r2)
        out[key] = torch.cat([a, b], dim=0 if key.endswith("lora_A.weight") else 1)
    return out


def scaled(state: LoraState, scale: float) -> LoraState:
    """`state` at `scale` (diffusers' LoRA scale, `cross_attention_kwargs={"scale": s}`): each
    layer's update B A times `scale`, by scaling B."""
    return {k: v * scale if k.endswith("lora_B.weight") else v for k, v in state.items()}


def target_modules(state: LoraState) -> list[str]:
    """The full names of the layers `state` adapts, as peft's `target_modules` reads them."""
    return sorted(k.removesuffix(".lora_A.weight") for k in state if k.endswith("lora_A.weight"))


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
    layers = {}
    for component, part in by_component(state).items():
        layers[f"{component}_lora_layers"] = part
        layers[f"{component}_lora_adapter_metadata"] = {"r": rank, "lora_alpha": rank,
                                                        "target_modules": target_modules(part)}
    with atomic_dir(directory) as tmp:
        type(pipe).save_lora_weights(tmp, safe_serialization=True, **layers)
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
        raise MissingInput(f"{path}: no LoRA weights; run the stage that writes {directory} first")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = json.loads((f.metadata() or {}).get(LORA_METADATA_KEY, "{}"))
            state = {k.removeprefix("unet."): f.get_tensor(k).float() for k in f.keys()
                     if k.startswith(("unet.", *(f"{name}." for name in TEXT_ENCODERS)))}
    except Exception as e:  # a truncated or overwritten file: safetensors' own error names no path
        raise LoraError(f"{path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160]}); rerun the "
                        f"stage that writes {directory} (dvc repro --force on it)") from None
    check_finite_lora(state, str(path))
    rank = lora_rank(state)
    scales = {c: float(meta.get(f"{c}.lora_alpha", rank)) / float(meta.get(f"{c}.r", rank))
              for c in ("unet", *TEXT_ENCODERS)}
    for key, value in state.items():
        component = split_key(key)[0]
        if key.endswith("lora_B.weight") and scales[component] != 1.0:
            state[key] = value * scales[component]
    return state


# kohya-ss names an SDXL UNet's modules as the original (SGM) checkpoint does: its SDXL LoRAs say
# input_blocks / middle_block / output_blocks, the names A1111/Forge's UNet has. A resnet's
# layers there (diffusers -> SGM), as in diffusers' convert_diffusers_to_original_sdxl.py:
SGM_RESNET_LAYERS = {"conv1": "in_layers.2", "conv2": "out_layers.3", "time_emb_proj": "emb_layers.1",
                     "conv_shortcut": "skip_connection", "norm1": "in_layers.0", "norm2": "out_layers.0"}


def layers_per_block(state: LoraState) -> int:
    """The UNet's layers_per_block, read off the LoRA's down-block module indices (SDXL: 2)."""
    indices = [int(k.split(".")[3]) for k in state if k.startswith("down_blocks.")]
    if not indices:
        raise ValueError("the LoRA adapts no down-block module: its SGM (kohya SDXL) names are unknown")
    return 1 + max(indices)


def sgm_module_name(module: str, per_block: int) -> str:
    """A diffusers UNet module path in the SGM checkpoint's naming, for a UNet of `per_block`
    layers per block: down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q ->
    input_blocks.4.1.transformer_blocks.0.attn1.to_q (each down level holds per_block
    layers and a downsampler, each up level per_block + 1 layers)."""
    parts = module.split(".")
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), parts[3:]
        block = f"middle_block.{1 if kind == 'attentions' else 2 * index}"
    elif parts[0] in ("down_blocks", "up_blocks") and parts[2] in ("attentions", "resnets"):
        level, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), parts[4:]
        block = (f"input_blocks.{1 + level * (per_block + 1) + index}" if parts[0] == "down_blocks"
                 else f"output_blocks.{level * (per_block + 1) + index}")
        block += ".1" if kind == "attentions" else ".0"
    else:
        raise ValueError(f"{module}: no SGM name for this module (kohya SDXL names cover the blocks' "
                         "attentions and resnets)")
    if kind == "resnets":
        rest = [SGM_RESNET_LAYERS[rest[0]], *rest[1:]]
    return ".".join([block, *rest])


def to_kohya(state: LoraState, sdxl: bool = False) -> dict[str, torch.Tensor]:
    """The same LoRA in kohya-ss naming, read by ComfyUI, A1111/Forge and diffusers:
    `lora_unet_<module path, dots as underscores>.lora_down.weight` (A, (r, in)),
    `.lora_up.weight` (B, (out, r)) and `.alpha` (= r here, so the scale alpha/r is 1); text
    encoder layers as `lora_te_` (SD) or `lora_te1_` / `lora_te2_` (SDXL's two).

    The UNet's module paths: diffusers' (`convert_state_dict_to_kohya`) for SD 1.x/2.x, as
    kohya's SD LoRAs name them; with `sdxl`, the SGM checkpoint's (sgm_module_name), as
    kohya's SDXL LoRAs do. The text encoders' are ours: diffusers names SD's single encoder
    `lora_te1_` (kohya's SD 1.x/2.x files say `lora_te_`) and keeps transformers 5's module
    paths, which lack the `text_model.` that ComfyUI's and A1111's CLIP have
    (tests/test_lora.py pins both differences).
    """
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    parts = by_component(state)
    out = {}
    if "unet" in parts and not sdxl:  # diffusers' own conversion
        unet = {f"unet.{key}": value for key, value in parts.pop("unet").items()}
        out = {k: v.contiguous() for k, v in convert_state_dict_to_kohya(unet).items()}
    per_block = layers_per_block(parts["unet"]) if "unet" in parts else 0
    encoders = {"text_encoder": "lora_te1_" if "text_encoder_2" in parts else "lora_te_", "text_encoder_2": "lora_te2_"}

    def kohya_name(component: str, module: str) -> str:
        if component == "unet":
            return "lora_unet_" + sgm_module_name(module, per_block).replace(".", "_")
        path = module if module.startswith("text_model.") else "text_model." + module
        return encoders[component] + path.replace(".", "_")

    for component, layers in parts.items():
        for key, value in layers.items():
            if not key.endswith("lora_A.weight"):
                continue
            module = key.removesuffix(".lora_A.weight")
            prefix = kohya_name(component, module)
            out[f"{prefix}.lora_down.weight"] = value.contiguous()
            out[f"{prefix}.lora_up.weight"] = layers[f"{module}.lora_B.weight"].contiguous()
            out[f"{prefix}.alpha"] = torch.tensor(value.shape[0])  # an integer, as diffusers writes the UNet's
    return out


# kohya-ss's names for the base models (its model_util), by the UNet's cross-attention width
KOHYA_BASE_VERSIONS = {768: "sd_v1", 1024: "sd_v2", 2048: "sdxl_base_v1-0"}


def kohya_metadata(state: LoraState, trigger: str | None = None, resolution: int | None = None,
                   images: int = 0) -> dict[str, str]:
    """The `ss_*` header keys kohya-ss's scripts write, which ComfyUI, A1111/Forge and CivitAI
    read: the network (module, the largest rank as its dim, alpha = dim: each module's own
    `alpha` tensor equals its rank, a scale of 1), the base model read off the UNet's
    cross-attention width, the training resolution, and the trigger phrase as kohya's
    `ss_tag_frequency` ({dataset folder: {caption: images}}), where those tools look for it."""
    ranks = [v.shape[0] for k, v in state.items() if k.endswith("lora_A.weight")]
    meta = {"ss_network_module": "networks.lora", "ss_network_dim": str(max(ranks)),
            "ss_network_alpha": str(float(max(ranks)))}
    widths = {v.shape[1] for k, v in state.items() if ".attn2.to_k.lora_A" in k and not k.startswith("text_encoder")}
    base = KOHYA_BASE_VERSIONS.get(next(iter(widths))) if len(widths) == 1 else None
    if base is not None:
        meta |= {"ss_base_model_version": base, "ss_v2": str(base == "sd_v2")}
    if resolution is not None:
        meta["ss_resolution"] = f"({resolution}, {resolution})"
    if trigger:
        meta["ss_tag_frequency"] = json.dumps({"concept": {trigger: images}})
    return meta


def save_kohya(state: LoraState, path: Path, metadata: dict[str, str] | None = None,
               dtype: torch.dtype = torch.float16, sdxl: bool = False) -> None:
    """Write `state` as one kohya-format .safetensors file (fp16 by default, as those tools ship;
    `sdxl`: kohya's SDXL names, to_kohya), with `metadata` beside `ss_network_module`. The
    header's keys are sorted: safetensors writes them in a per-process hash order, so the same
    LoRA would export to other bytes each run."""
    from safetensors.torch import save

    tensors = {k: v.to(dtype) for k, v in to_kohya(state, sdxl).items()}
    blob = save(tensors, metadata={"ss_network_module": "networks.lora", **(metadata or {})})
    size = int.from_bytes(blob[:8], "little")
    header = json.dumps(json.loads(blob[8:8 + size]), sort_keys=True, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # the format's 8-byte alignment of the tensor data
    with atomic_file(path) as tmp:
        tmp.write_bytes(len(header).to_bytes(8, "little") + header + blob[8 + size:])


@torch.no_grad()
def merge_into(model: torch.nn.Module, state: LoraState) -> None:
    """Add each `B @ A` into the base Linear or Conv2d weight of `model` (a UNet or a text
    encoder, without adapters) it targets, `state` keyed by `model`'s module names. For a
    conv, A is (r, in, kh, kw) and B is (out, r, 1, 1): the update is their product over r, an
    (out, in, kh, kw) kernel.

    The sum is taken in fp32 and rounded once: adding a small update to fp16/bf16 weights
    in their own precision would round much of it away.
    """
    modules = dict(model.named_modules())
    for key in state:
        if not key.endswith("lora_A.weight"):
            continue
        name = key.removesuffix(".lora_A.weight")
        layer = modules.get(name)
        if not isinstance(layer, (torch.nn.Linear, torch.nn.Conv2d)):
            raise KeyError(f"LoRA targets {name!r}, which is not a Linear or Conv2d layer of {type(model).__name__}")
        down, up = state[key].float(), state[f"{name}.lora_B.weight"].float()
        update = torch.einsum("or,ri...->oi...", up.flatten(1), down)
        layer.weight.copy_(layer.weight.float() + update.to(layer.weight.device))


@contextlib.contextmanager
def merged(model: torch.nn.Module, state: LoraState) -> Iterator[None]:
    """Merge `state` for the duration of the block, then restore the exact base weights."""
    modules = dict(model.named_modules())
    saved = {n: modules[n].weight.detach().clone() for n in target_modules(state) if n in modules}
    merge_into(model, state)
    try:
        yield
    finally:
        with torch.no_grad():
            for name, weight in saved.items():
                modules[name].weight.copy_(weight)


def merge_into_pipeline(pipe, state: LoraState) -> None:
    """merge_into for every component `state` adapts: the UNet and any text encoder."""
    for component, part in by_component(state).items():
        merge_into(getattr(pipe, component), part)


@contextlib.contextmanager
def merged_pipeline(pipe, state: LoraState) -> Iterator[None]:
    """merged for every component `state` adapts, for the duration of the block."""
    with contextlib.ExitStack() as stack:
        for component, part in by_component(state).items():
            stack.enter_context(merged(getattr(pipe, component), part))
        yield

