"""Every stage on 2 CPU processes (accelerate launch, gloo) against 1 process: sampling and
scoring write the same bytes, training on 2 x batch b takes the steps 1 x batch 2b takes."""

import math
import shutil
import sys

import pandas as pd
import pytest
import torch
import yaml
from safetensors.torch import load_file

from dbdpo.config import ComputeConfig
from dbdpo.distributed import launch_command, map_batches
from dbdpo.params import config_from_dict
from tests.conftest import REPO, invoke_stage

WEIGHTS = "pytorch_lora_weights.safetensors"
SMALL = {
    "finetune": {"steps": 3, "lora_rank": 4, "checkpoint_every": 0},
    "generate": {"num_prompts": 2, "images_per_prompt": 3, "steps": 3, "batch_size": 2},
    "filter": {"angle": 90},
    "dpo": {"steps": 3, "checkpoint_every": 0},
    "evaluate": {"num_prompts": 3, "images_per_prompt": 1, "steps": 3, "batch_size": 2, "grid_prompts": 1},
    "score": {"batch_size": 2},
    "frontier": {"lora_scales": [0.5], "guidance_scales": [4.0], "finetune_fractions": [0.5]},
}


def params(processes: int, batch: int) -> dict:
    """The repository's params made small, one round, on `processes` processes of `batch` each."""
    p = yaml.safe_load((REPO / "params.yaml").read_text())
    for group, values in SMALL.items():
        p[group].update(values)
    p["finetune"]["batch_size"] = p["dpo"]["batch_size"] = batch
    p["rounds"] = {"round_1": {"start": "round_0"}}
    p["compute"]["num_processes"] = processes
    return p


def project(root, processes: int, batch: int):
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params(processes, batch), sort_keys=False))
    (root / "data").mkdir()
    for name in ("concept", "prompts"):
        (root / "data" / name).symlink_to(REPO / "data" / name)
    return root


def stage(monkeypatch, root, name: str, *args: str) -> None:
    monkeypatch.chdir(root)
    result = invoke_stage(name, *args)
    assert result.exit_code == 0, f"{name} in {root.name}: {result.output}"


def files(folder) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def assert_same_training(a, b) -> None:
    """Two LoRA files trained alike: the difference of all their tensors within 1e-3 of the
    training's own update (the B matrices, which start at zero).

    Not element by element: AdamW divides each gradient element by its own running size, so
    an element whose gradient is near zero takes a step anywhere in [-lr, lr] on summation
    order alone (2 processes sum the batch in two halves): a few such elements, a tiny part of
    the whole update. A run that trained its half-batch alone, or on other rows, is off by the
    order of the update itself."""
    wa, wb = load_file(a), load_file(b)
    assert wa.keys() == wb.keys()
    difference = torch.sqrt(sum(((wa[k] - wb[k]) ** 2).sum() for k in wa))
    update = torch.sqrt(sum((wa[k] ** 2).sum() for k in wa if "lora_B" in k))
    assert update > 0 and difference <= 1e-3 * update, (float(difference), float(update))


def log_rows(folder) -> pd.DataFrame:
    return pd.read_csv(folder / "plots/metrics/loss.tsv", sep="\t")


@pytest.mark.slow
def test_two_processes_write_what_one_writes(tmp_path, monkeypatch):
    # one thread in this process and in each launched one: CPU kernels round by thread count
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        compare_one_and_two_processes(tmp_path, monkeypatch)
    finally:
        torch.set_num_threads(threads)


def compare_one_and_two_processes(tmp_path, monkeypatch):
    one = project(tmp_path / "one", processes=1, batch=4)
    two = project(tmp_path / "two", processes=2, batch=2)

    # DreamBooth: 2 processes x batch 2 = 1 process x batch 4 (DDP averages the two halves' gradients)
    for root in (one, two):
        stage(monkeypatch, root, "finetune")
    for lora in ("round_0", "early_stops/steps_2"):  # the early stop too: after 2 of the 3 steps
        assert_same_training(one / "models" / lora / WEIGHTS, two / "models" / lora / WEIGHTS)
    losses_one, losses_two = log_rows(one / "logs/finetune"), log_rows(two / "logs/finetune")
    assert losses_two["loss"].to_list() == pytest.approx(losses_one["loss"].to_list(), rel=1e-5)
    # from here on both sample the same models: the artifacts must be byte-identical
    for models in ("round_0", "early_stops"):
        shutil.rmtree(two / "models" / models)
        shutil.copytree(one / "models" / models, two / "models" / models)

    for name in ("generate", "score"):
        for root in (one, two):
            stage(monkeypatch, root, name, "--round", "round_1")
    assert files(one / "rounds/round_1") == files(two / "rounds/round_1")
    assert len(files(one / "rounds/round_1/images")) == 6

    stage(monkeypatch, one, "pair", "--round", "round_1")
    shutil.copytree(one / "rounds/round_1/preferences", two / "rounds/round_1/preferences")
    for root in (one, two):
        stage(monkeypatch, root, "dpo", "--round", "round_1")
    assert_same_training(one / "models/round_1" / WEIGHTS, two / "models/round_1" / WEIGHTS)
    dpo_one, dpo_two = log_rows(one / "logs/dpo/round_1"), log_rows(two / "logs/dpo/round_1")
    assert math.isclose(dpo_one["loss"][0], math.log(2), abs_tol=1e-6)
    # beta scales the weights' tiny relative difference into the next losses, well inside rel 1e-3
    assert dpo_two["loss"].to_list() == pytest.approx(dpo_one["loss"].to_list(), rel=1e-3)
    shutil.rmtree(two / "models/round_1")
    shutil.copytree(one / "models/round_1", two / "models/round_1")

    for root in (one, two):
        stage(monkeypatch, root, "frontier")
    assert files(one / "eval/baselines") == files(two / "eval/baselines")
    for root in (one, two):
        stage(monkeypatch, root, "evaluate")
    assert files(one / "eval/images") == files(two / "eval/images")
    assert (one / "eval/scores.parquet").read_bytes() == (two / "eval/scores.parquet").read_bytes()
    assert (one / "metrics.json").read_bytes() == (two / "metrics.json").read_bytes()


def test_launch_command_is_an_argv_with_every_setting():
    compute = ComputeConfig(num_processes=16, num_machines=2, machine_rank=1, main_process_ip="10.0.0.1",
                            main_process_port=29600)
    command = launch_command(compute, "stages.dpo", ["--params", "params.yaml", "--round", "round_1"])
    assert command[:3] == [sys.executable, "-m", "accelerate.commands.launch"]
    flags = dict(zip(command[3:], command[4:]))
    assert flags["--num_processes"] == "16" and flags["--num_machines"] == "2" and flags["--machine_rank"] == "1"
    assert flags["--main_process_ip"] == "10.0.0.1" and flags["--main_process_port"] == "29600"
    assert "--config_file" not in command
    assert command[-6:] == ["-m", "stages.dpo", "--params", "params.yaml", "--round", "round_1"]
    with_file = launch_command(ComputeConfig(config_file="my accelerate.yaml"), "stages.score", [])
    assert with_file[3:5] == ["--config_file", "my accelerate.yaml"]  # one argument, spaces and all


def test_one_process_maps_batches_in_order_and_checks_their_length():
    assert map_batches(lambda b: [x * 10 for x in b], list(range(7)), 3, "t") == [0, 10, 20, 30, 40, 50, 60]
    with pytest.raises(ValueError, match="returned 1 results for 3 items"):
        map_batches(lambda b: b[:1], list(range(3)), 3, "t")


@pytest.mark.parametrize(("changes", "message"), [
    ({"num_processes": 3, "num_machines": 2, "main_process_ip": "h"}, "compute.num_processes=3 is invalid: expected "
                                                                      "a multiple of compute.num_machines=2"),
    ({"num_processes": 4, "num_machines": 2, "machine_rank": 2, "main_process_ip": "h"}, "compute.machine_rank=2"),
    ({"num_processes": 4, "num_machines": 2}, "compute.main_process_ip=None is invalid: expected the main "
                                              "machine's address"),
    ({"num_processes": 0}, "compute.num_processes=0"),
])
def test_bad_compute_settings_name_the_key(changes, message):
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["compute"].update(changes)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        config_from_dict(raw)


def test_text_encoder_training_is_refused_on_several_processes():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["compute"]["num_processes"] = 2
    raw["finetune"]["train_text_encoder"] = True
    with pytest.raises(ValueError, match="finetune.train_text_encoder=True is invalid: expected false with "
                                         "compute.num_processes=2"):
        config_from_dict(raw)
