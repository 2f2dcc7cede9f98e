"""Resumable training loops: the state a loop needs to continue exactly where it stopped.

Every `every` optimizer steps a loop saves, into one safetensors file (no pickles: accelerate's
`save_state` pickles the optimizer and the RNG states), its trainable weights, the optimizer's
moments, the generator that draws its batches, the fp16 grad scaler, the log rows so far and
what else the loop keeps (`extra` tensors: DreamBooth's early stops).
A rerun with the same fingerprint (the caller's hash of everything that shapes the run: config,
inputs) loads it and goes on from the next step, so a killed run ends on the same weights as
an uninterrupted one; a different fingerprint starts over. Saves are atomic: a kill during a
save leaves the previous checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import logging
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from safetensors import safe_open

from dbdpo.artifacts import atomic_file
from dbdpo.distributed import is_main_process, same_on_every_process
from dbdpo.errors import CheckpointError

if TYPE_CHECKING:  # torch loads where a loop saves or restores: `dbdpo status` reads a header without it
    import torch

log = logging.getLogger(__name__)

STATE_FILE = "state.safetensors"


@dataclass(frozen=True)
class Checkpointing:
    """Where a loop keeps its checkpoint, how often it saves (optimizer steps; 0: never), and
    the fingerprint a checkpoint must carry to be resumed."""

    directory: Path
    every: int
    fingerprint: str


@dataclass(frozen=True)
class LoopState:
    """step: optimizer steps done; rows: their log rows; the rest as `save_loop_state` takes it."""

    step: int
    rows: list[dict]
    weights: dict[str, torch.Tensor]
    optimizer: dict[int, dict[str, torch.Tensor]]
    generator: torch.Tensor
    scaler: dict | None
    extra: dict[str, torch.Tensor]


def fingerprint(*parts) -> str:
    """A short hash of JSON-able `parts` (a config as a dict, input digests): what a checkpoint
    must match to be resumed."""
    text = json.dumps(parts, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def save_loop_state(ckpt: Checkpointing, step: int, rows: list[dict], weights: dict[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer, generator: torch.Generator, scaler=None,
                    extra: dict[str, torch.Tensor] | None = None) -> None:
    """Save after `step` optimizer steps: `weights` by name (the trainable ones), the optimizer's
    per-parameter state (its hyperparameters come from the config, which the fingerprint pins),
    and `extra` tensors by name."""
    import torch
    from safetensors.torch import save_file

    tensors = {f"weights.{name}": value.detach().cpu().contiguous() for name, value in weights.items()}
    tensors |= {f"extra.{name}": value.detach().cpu().contiguous() for name, value in (extra or {}).items()}
    for index, state in optimizer.state_dict()["state"].items():
        for key, value in state.items():
            tensors[f"optimizer.{index}.{key}"] = torch.as_tensor(value).detach().cpu().contiguous()
    tensors["generator"] = generator.get_state()
    metadata = {"fingerprint": ckpt.fingerprint, "step": str(step), "rows": json.dumps(rows),
                "scaler": json.dumps(scaler.state_dict() if scaler is not None else None)}
    # one file renamed over the last: a kill at any moment leaves one whole checkpoint (a
    # directory swap has a moment with none)
    with atomic_file(ckpt.directory / STATE_FILE) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    log.info("checkpoint after step %d in %s", step, ckpt.directory)


def load_loop_state(ckpt: Checkpointing) -> LoopState | None:
    """The saved state if `ckpt.directory` holds one with the same fingerprint, else None."""
    path = ckpt.directory / STATE_FILE
    metadata = _metadata(path)
    if metadata is None:
        return None
    if metadata.get("fingerprint") != ckpt.fingerprint:
        log.info("%s was saved by another configuration or other inputs: starting over", path)
        return None
    from safetensors.torch import load_file

    tensors = _read(path, load_file)
    optimizer: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in tensors.items():
        if key.startswith("optimizer."):
            _, index, name = key.split(".", 2)
            optimizer.setdefault(int(index), {})[name] = value
    weights = {key.removeprefix("weights."): v for key, v in tensors.items() if key.startswith("weights.")}
    extra = {key.removeprefix("extra."): v for key, v in tensors.items() if key.startswith("extra.")}
    step = int(metadata["step"])
    log.info("resuming from the checkpoint after step %d in %s", step, ckpt.directory)
    return LoopState(step=step, rows=json.loads(metadata["rows"]), weights=weights, optimizer=optimizer,
                     generator=tensors["generator"], scaler=json.loads(metadata["scaler"]), extra=extra)


def restore_loop_state(state: LoopState, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
                       generator: torch.Generator, scaler=None) -> None:
    """Put a loaded state back into the live weights, optimizer, generator and scaler."""
    import torch

    if state.weights.keys() != weights.keys():
        raise ValueError("the checkpoint's trainable weights are not this model's: delete it to start over")
    with torch.no_grad():
        for name, value in weights.items():
            value.copy_(state.weights[name])
    optimizer.load_state_dict({"state": state.optimizer, "param_groups": optimizer.state_dict()["param_groups"]})
    generator.set_state(state.generator)
    if scaler is not None and state.scaler is not None:
        scaler.load_state_dict(state.scaler)


def trainable_weights(modules: dict[str, torch.nn.Module]) -> dict[str, torch.Tensor]:
    """What a checkpoint holds of the models: every parameter that trains, by component and name."""
    return {f"{component}.{name}": p for component, module in modules.items()
            for name, p in module.named_parameters() if p.requires_grad}


def resume(ckpt: Checkpointing | None, weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer,
           generator: torch.Generator, scaler=None, on_step=None,
           extra: dict[str, torch.Tensor] | None = None) -> tuple[list[dict], int]:
    """(log rows so far, first step to run): a matching checkpoint restored into the live
    objects and its `extra` tensors into `extra`, its rows replayed through `on_step` (the log
    starts over with the whole history), or ([], 0). Every process of a launched stage reads the
    checkpoint and must find the same step (dbdpo.distributed)."""
    saved = load_loop_state(ckpt) if ckpt is not None else None
    same_on_every_process(0 if saved is None else saved.step, f"the step to resume from {ckpt and ckpt.directory}")
    if saved is None:
        return [], 0
    restore_loop_state(saved, weights, optimizer, generator, scaler)
    if extra is not None:
        extra.update(saved.extra)
    for row in saved.rows if on_step is not None else ():
        on_step(row)
    return saved.rows, saved.step


def save_if_due(ckpt: Checkpointing | None, steps_done: int, total_steps: int, rows: list[dict],
                weights: dict[str, torch.Tensor], optimizer: torch.optim.Optimizer, generator: torch.Generator,
                scaler=None, extra: Callable[[], dict[str, torch.Tensor]] | None = None) -> None:
    """Save every `ckpt.every` steps (with the tensors `extra()` gives, asked for only then); not
    after the last one (the caller writes the result). The main process saves; the others hold
    the same state (dbdpo.distributed)."""
    if ckpt is not None and ckpt.every and steps_done % ckpt.every == 0 and steps_done < total_steps \
            and is_main_process():
        save_loop_state(ckpt, steps_done, rows, weights, optimizer, generator, scaler, extra() if extra else None)


def saved_step(directory: Path) -> int | None:
    """How many steps the checkpoint in `directory` holds (None: no checkpoint)."""
    metadata = _metadata(Path(directory) / STATE_FILE)
    return None if metadata is None else int(metadata["step"])


def _metadata(path: Path) -> dict[str, str] | None:
    """A checkpoint file's metadata, read from its header alone; None if there is no file."""
    if not path.is_file():
        return None

    def header(file):
        with safe_open(file, "numpy") as f:  # the header alone: no tensor is read
            return f.metadata()

    metadata = _read(path, header)
    if not metadata or not {"fingerprint", "step", "rows", "scaler"} <= metadata.keys():
        raise CheckpointError(f"{path} is not a dbdpo checkpoint (its header lacks the loop's state); delete "
                              f"{path.parent} to start the stage over")
    return metadata


def _read(path: Path, read):
    """read(path), a corrupt or truncated file (a kill mid-copy, a full disk) named with the fix."""
    try:
        return read(path)
    except Exception as e:  # safetensors raises its own SafetensorError, OSError or ValueError
        raise CheckpointError(f"{path} is unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160]}); delete "
                              f"{path.parent} to start the stage over") from None


def remove_checkpoint(ckpt: Checkpointing) -> None:
    """Once the loop has finished: nothing is left to resume."""
    shutil.rmtree(ckpt.directory, ignore_errors=True)
