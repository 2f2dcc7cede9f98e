"""A killed DPO loop resumes from its last checkpoint and ends where an uninterrupted one does."""

import logging

import pytest
import torch

from dbdpo.checkpoints import STATE_FILE, Checkpointing, load_loop_state
from dbdpo.config import DpoConfig
from dbdpo.dpo import train_dpo
from tests.test_training import random_preferences, tiny

CFG = DpoConfig(steps=6, batch_size=2, learning_rate=1e-2)


class Killed(Exception):
    """Stands for the process dying: nothing after it runs, only the disk survives."""


def kill_after(steps_done: int):
    def on_step(row: dict) -> None:
        if row["step"] + 1 == steps_done:
            raise Killed

    return on_step


def uninterrupted():
    backbone = tiny()
    return train_dpo(backbone, random_preferences(backbone), CFG)


def test_a_killed_dpo_run_resumes_from_its_checkpoint_to_the_same_lora(tmp_path, caplog):
    expected_state, expected_rows = uninterrupted()
    ckpt = Checkpointing(tmp_path / "ckpt", every=2, fingerprint="run-a")

    backbone = tiny()
    with pytest.raises(Killed):  # dies during step 5, after the checkpoint of step 4
        train_dpo(backbone, random_preferences(backbone), CFG, on_step=kill_after(5), checkpointing=ckpt)
    saved = load_loop_state(ckpt)
    assert saved.step == 4 and [r["step"] for r in saved.rows] == [0, 1, 2, 3]
    assert saved.optimizer and all("exp_avg" in s for s in saved.optimizer.values())

    backbone = tiny()  # a new process: fresh model, fresh LoRA init
    done = []
    with caplog.at_level(logging.INFO, logger="dbdpo"):
        state, rows = train_dpo(backbone, random_preferences(backbone), CFG, on_step=done.append,
                                checkpointing=ckpt)
    assert "resuming from the checkpoint after step 4" in caplog.text  # steps 0-3 did not rerun
    assert rows == done == expected_rows  # the log gets the saved rows first
    assert state.keys() == expected_state.keys()
    assert all(torch.equal(state[k], expected_state[k]) for k in state)


@pytest.mark.parametrize("content", [b"", b"\x08\x00\x00\x00\x00\x00\x00\x00{\"a\":", None])
def test_a_corrupt_checkpoint_is_named_with_the_folder_to_delete(tmp_path, content):
    """A truncated checkpoint made every dvc repro and dbdpo status crash with a raw
    SafetensorError until the user guessed which folder to delete."""
    from safetensors.torch import save_file

    from dbdpo.checkpoints import saved_step
    from dbdpo.errors import CheckpointError

    ckpt = Checkpointing(tmp_path / "dpo" / "round_1", every=2, fingerprint="f")
    ckpt.directory.mkdir(parents=True)
    if content is None:  # a safetensors file, but not a loop's state
        save_file({"x": torch.zeros(1)}, ckpt.directory / STATE_FILE)
    else:
        (ckpt.directory / STATE_FILE).write_bytes(content)
    for read in (lambda: load_loop_state(ckpt), lambda: saved_step(ckpt.directory)):
        with pytest.raises(CheckpointError, match=rf"{STATE_FILE} .*; delete {ckpt.directory} to start the stage over"):
            read()


def test_a_checkpoint_of_another_configuration_is_not_resumed(tmp_path):
    ckpt = Checkpointing(tmp_path / "ckpt", every=2, fingerprint="lr 1e-2")
    backbone = tiny()
    with pytest.raises(Killed):
        train_dpo(backbone, random_preferences(backbone), CFG, on_step=kill_after(3), checkpointing=ckpt)
    assert (ckpt.directory / STATE_FILE).is_file()

    other = Checkpointing(ckpt.directory, every=2, fingerprint="lr 1e-3")
    assert load_loop_state(other) is None
    done = []
    backbone = tiny()
    train_dpo(backbone, random_preferences(backbone), CFG, on_step=done.append, checkpointing=other)
    assert [r["step"] for r in done] == list(range(6))  # started over


def same_lora(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.slow
def test_a_killed_dreambooth_run_resumes_to_the_same_lora_and_early_stops(tmp_path, in_repo):
    """The finetune loop resumes the same way (prior preservation's class batches included),
    with the early stops it kept before the kill; each early stop is the LoRA a run of that
    many steps ends with."""
    import dataclasses

    from dbdpo.config import ConceptConfig, FinetuneConfig
    from dbdpo.data import load_concept
    from dbdpo.dreambooth import train_dreambooth
    from dbdpo.early_stops import EarlyStops

    concept = load_concept(ConceptConfig(dir="data/concept"))
    cfg = FinetuneConfig(steps=6, batch_size=2, lora_rank=4)

    def run(cfg=cfg, **kwargs):
        return train_dreambooth(tiny(), concept, "a photo of sks toy", cfg, concept[:2], "a photo of a toy", **kwargs)

    expected_stops = EarlyStops((1, 3))
    expected_state, expected_rows = run(early_stops=expected_stops)
    assert list(expected_stops.named()) == ["steps_1", "steps_3"]
    shorter, _ = run(dataclasses.replace(cfg, steps=3))
    assert same_lora(expected_stops.loras[3], shorter) and not same_lora(expected_stops.loras[1], shorter)
    ckpt = Checkpointing(tmp_path / "ckpt", every=2, fingerprint="finetune")
    with pytest.raises(Killed):
        run(on_step=kill_after(3), checkpointing=ckpt, early_stops=EarlyStops((1, 3)))
    assert load_loop_state(ckpt).step == 2
    stops = EarlyStops((1, 3))
    state, rows = run(checkpointing=ckpt, early_stops=stops)  # step 1's LoRA comes from the checkpoint
    assert rows == expected_rows and same_lora(state, expected_state)
    assert stops.loras.keys() == {1, 3} and all(same_lora(stops.loras[s], expected_stops.loras[s]) for s in (1, 3))
