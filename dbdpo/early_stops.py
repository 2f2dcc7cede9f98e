"""DreamBooth stopped early: the baseline frontier's fewer-steps points (dbdpo.frontier).

The paper's baselines include plain DreamBooth trained for fewer steps. With a constant
learning rate and the batches and noise drawn from the run's seed, the LoRA after s steps of
one run is exactly the model a run of s steps ends with, so the finetune loop keeps it as it
passes (train_dreambooth's `early_stops`) instead of training again. The finetune stage writes
them to models/early_stops/, one diffusers LoRA folder each, which the frontier stage samples.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch

from dbdpo.artifacts import atomic_dir
from dbdpo.errors import MissingInput
from dbdpo.lora import LoraState, load_lora, save_lora
from dbdpo.provenance import RECORD_FILE

EARLY_STOPS_INDEX = "early_stops.json"


def early_stop_name(step: int) -> str:
    """The frontier's name for DreamBooth stopped after `step` steps: steps_<step>."""
    return f"steps_{step}"


@dataclass
class EarlyStops:
    """DreamBooth stopped early, as the baseline frontier samples it (dbdpo.frontier): the LoRA
    after each of `steps` optimizer steps of the one run, which train_dreambooth fills in
    `loras`. With a constant learning rate and the run's seeded draws, the LoRA after s steps
    is the one a run of finetune.steps = s ends with."""

    steps: tuple[int, ...]
    loras: dict[int, LoraState] = field(default_factory=dict)

    def named(self) -> dict[str, LoraState]:
        """{"steps_<s>": the LoRA after s steps}, by s: the frontier's names for its points."""
        return {early_stop_name(step): self.loras[step] for step in sorted(self.loras)}

    def tensors(self) -> dict[str, torch.Tensor]:
        """The kept LoRAs flat, "<steps>.<key>", as a checkpoint stores them."""
        return {f"{step}.{key}": value for step, lora in self.loras.items() for key, value in lora.items()}

    def restore(self, tensors: dict[str, torch.Tensor]) -> None:
        """The kept LoRAs back from `tensors` (as tensors() gives them)."""
        for name, value in tensors.items():
            step, key = name.split(".", 1)
            self.loras.setdefault(int(step), {})[key] = value


def save_early_stops(pipe, early_stops: EarlyStops, finetune_steps: int, directory: Path,
                     made_from: dict[str, str] | None = None) -> None:
    """models/early_stops: one diffusers LoRA folder per kept LoRA (steps_<s>/, `made_from` in
    each), and early_stops.json: {"finetune_steps": ..., "early_stops": {"steps_<s>": s}}. A run
    that kept none (no fractions, or finetune.method full) writes the index alone."""
    index = {"finetune_steps": finetune_steps,
             "early_stops": {early_stop_name(step): step for step in sorted(early_stops.loras)}}
    with atomic_dir(directory) as tmp:
        for name, step in index["early_stops"].items():
            save_lora(pipe, early_stops.loras[step], tmp / name, made_from=made_from)
        (tmp / EARLY_STOPS_INDEX).write_text(json.dumps(index, indent=2) + "\n")
        if made_from is not None:
            (tmp / RECORD_FILE).write_text(json.dumps(made_from, indent=2) + "\n")


def load_early_stops(directory: Path) -> dict[str, LoraState]:
    """{"steps_<s>": its LoRA} from a models/early_stops folder, in the index's order."""
    path = Path(directory) / EARLY_STOPS_INDEX
    if not path.is_file():
        raise MissingInput(f"{path} is missing: run the finetune stage (dvc repro finetune)")
    return {name: load_lora(Path(directory) / name) for name in json.loads(path.read_text())["early_stops"]}
