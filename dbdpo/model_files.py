"""A model's files before any of it is loaded: a hub id or a local folder, the local Hugging
Face cache, and whether a diffusers pipeline folder is complete, with safetensors weights.

Nothing here imports torch or diffusers, so `dbdpo check` answers without loading the model
stack; dbdpo.backbones loads what these functions found.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from dbdpo.errors import BackboneError


def hub_offline() -> bool:
    """Whether HF_HUB_OFFLINE forbids the hub, read as huggingface_hub reads it, but now (its own
    constant is read once, at import)."""
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def is_local_path(name: str) -> bool:
    """Whether a params value names a path on disk rather than a hub id."""
    return Path(name).exists() or name.startswith((".", "/", "~"))


def resolve_pretrained(path: str, revision: str | None, key: str = "model.path") -> Path:
    """A local directory as is; a hub id from the local cache, or downloaded if online.

    Fails fast with one clear message instead of huggingface_hub's retries and tracebacks.
    """
    if Path(path).is_dir():
        return Path(path)
    if is_local_path(path):
        raise BackboneError(
            f"{key}={path!r} is not a directory with a diffusers "
            + ("pipeline (model_index.json, unet/, vae/, text_encoder/ ...)" if key == "model.path" else "model")
        )
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(path, revision=revision, local_files_only=True))
    except Exception:
        pass
    if hub_offline():
        raise BackboneError(
            f"{key}={path!r}: not in the local Hugging Face cache and HF_HUB_OFFLINE is "
            f"set. Download it on a connected machine (`huggingface-cli download {path}`) "
            f"or set {key} to a local directory."
        )
    try:
        return Path(snapshot_download(path, revision=revision))
    except Exception as e:  # network, auth, unknown repo: all end the same way for the user
        raise BackboneError(
            f"{key}={path!r}: could not download from the Hugging Face hub "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Check the id and your "
            f"network/token, or point {key} at a local directory."
        ) from None


# Components each kind needs: folders that must exist, and which of them hold weights.
PIPELINE_PARTS = {
    "sd": ("unet", "vae", "text_encoder", "tokenizer", "scheduler"),
    "sdxl": ("unet", "vae", "text_encoder", "text_encoder_2", "tokenizer", "tokenizer_2", "scheduler"),
}
WEIGHT_PARTS = ("unet", "vae", "text_encoder", "text_encoder_2")


def check_pipeline_dir(directory: Path, kind: str, shown: str, variant: str | None = None) -> None:
    """Fail in milliseconds, naming what is missing, before gigabytes of weights are read.

    Weights must be safetensors: `.bin` files are pickles, which we never load.
    """
    index = directory / "model_index.json"
    if not index.is_file():
        raise BackboneError(f"model.path={shown!r}: no model_index.json in {directory}; "
                            "expected a diffusers pipeline folder (save_pretrained / huggingface-cli download)")
    class_name = json.loads(index.read_text()).get("_class_name", "")
    if ("XL" in class_name) != (kind == "sdxl"):
        right = "sdxl" if "XL" in class_name else "sd"
        raise BackboneError(f"model.path={shown!r} holds a {class_name}, not what model.backbone={kind} "
                            f"loads; set model.backbone: {right}")
    for part in PIPELINE_PARTS[kind]:
        folder = directory / part
        if not folder.is_dir():
            raise BackboneError(f"model.path={shown!r}: {folder} is missing; the download is incomplete")
        if part in WEIGHT_PARTS:
            check_weights(folder, f"model.path={shown!r}", variant)


def _weights_variant(file: Path) -> str | None:
    """diffusers' file naming: model.safetensors (None), model.fp16.safetensors and
    model.fp16-00001-of-00002.safetensors ("fp16")."""
    parts = file.name.split(".")
    return parts[1].split("-")[0] if len(parts) == 3 else None


def check_weights(folder: Path, shown: str, variant: str | None) -> None:
    """`folder` must hold safetensors weights of `variant` (model.variant), not LFS pointers."""
    files = sorted(folder.glob("*.safetensors"))
    weights = [f for f in files if _weights_variant(f) == variant]
    if not weights:
        found = sorted({str(_weights_variant(f)) for f in files})
        hint = (f"; it has weights of model.variant {' / '.join(found)} (None = no variant)" if files
                else " (pickled .bin weights are not loaded); download the safetensors files or convert the checkpoint")
        wanted = f" for model.variant={variant}" if variant else ""
        raise BackboneError(f"{shown}: no .safetensors weights in {folder}{wanted}{hint}")
    for file in weights:
        if file.stat().st_size < 1024 and file.read_bytes().startswith(b"version https://git-lfs"):
            raise BackboneError(f"{shown}: {file} is a Git LFS pointer, not weights; "
                                "run `git lfs pull` in the model folder")


def is_pipeline_folder(folder: Path) -> bool:
    """A whole diffusers pipeline (model_index.json), as a full DreamBooth writes round 0."""
    return (Path(folder) / "model_index.json").is_file()
