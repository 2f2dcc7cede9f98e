"""What the training stages report beside their DVCLive logs (logging.report_to,
logging.sample_every), and that reporting changes nothing they make."""

import struct
from pathlib import Path

import pytest
import yaml

from tests.conftest import invoke_stage


def finetune_project(root: Path, repo: Path, **logging) -> Path:
    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["concept"]["dir"] = str(repo / "data/concept")
    for group in ("generate", "evaluate"):  # the prompt files finetune's preflight checks
        params[group]["prompts"] = str(repo / params[group]["prompts"])
    params["finetune"].update(steps=4, batch_size=2, lora_rank=4, checkpoint_every=0)
    params["logging"].update(logging)
    root.mkdir()
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    return root


def tensorboard_tags(folder: Path) -> dict[str, list[int]]:
    """{tag: steps} of every scalar and image in the TensorBoard event files under `folder`
    (TFRecord framing: length, its CRC, the Event proto, its CRC)."""
    from tensorboardX.proto import event_pb2

    tags: dict[str, list[int]] = {}
    for path in folder.rglob("events.out.tfevents.*"):
        data = path.read_bytes()
        while data:
            (length,) = struct.unpack("<Q", data[:8])
            event = event_pb2.Event.FromString(data[12:12 + length])
            data = data[12 + length + 4:]
            for value in event.summary.value:
                tags.setdefault(value.tag, []).append(event.step)
    return tags


@pytest.mark.slow
def test_finetune_reports_to_tensorboard_and_previews_without_changing_the_model(in_repo, tmp_path, monkeypatch):
    pytest.importorskip("tensorboardX")
    lora = "models/round_0/pytorch_lora_weights.safetensors"
    plain = finetune_project(tmp_path / "plain", in_repo)
    monkeypatch.chdir(plain)
    assert invoke_stage("finetune").exit_code == 0

    reported = finetune_project(tmp_path / "reported", in_repo, report_to="tensorboard", sample_every=2)
    monkeypatch.chdir(reported)
    result = invoke_stage("finetune")
    assert result.exit_code == 0, result.output
    assert (reported / lora).read_bytes() == (plain / lora).read_bytes()  # previews draw on their own seeds

    images = sorted(p.relative_to(reported / "logs/finetune/plots/images").as_posix()
                    for p in (reported / "logs/finetune/plots/images").rglob("*.png"))
    assert images == ["step_00002/prompt_00.png", "step_00004/prompt_00.png"]
    assert not (plain / "logs/finetune/plots/images").exists()
    metrics = {p.stem for p in (reported / "logs/finetune/plots/metrics").glob("*.tsv")}
    assert {"loss", "learning_rate", "grad_norm", "probe_ratio"} <= metrics
    tags = tensorboard_tags(reported / "logs/finetune/tensorboard")
    assert tags["loss"] == tags["learning_rate"] == tags["grad_norm"] == [0, 1, 2, 3]
    assert tags["preview"] == [1, 3]


def test_a_tracker_that_is_not_installed_is_refused_naming_the_key(in_repo, tmp_path, monkeypatch):
    import importlib.util

    if importlib.util.find_spec("wandb") is not None:
        pytest.skip("wandb is installed here")
    project = finetune_project(tmp_path / "p", in_repo, report_to="wandb")
    monkeypatch.chdir(project)
    result = invoke_stage("finetune")
    assert result.exit_code == 2
    assert "logging.report_to='wandb' is invalid" in result.stderr and "pip install wandb" in result.stderr
    assert not (project / "models").exists()


def test_captions_true_without_caption_files_stops_before_round_0_is_removed(in_repo, tmp_path, monkeypatch):
    project = finetune_project(tmp_path / "p", in_repo)
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["finetune"]["captions"] = True
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "models/round_0").mkdir(parents=True)
    (project / "models/round_0/pytorch_lora_weights.safetensors").write_bytes(b"last run's LoRA")
    monkeypatch.chdir(project)
    result = invoke_stage("finetune")
    assert result.exit_code == 2 and "finetune.captions: true, but no photo" in result.stderr
    assert (project / "models/round_0/pytorch_lora_weights.safetensors").read_bytes() == b"last run's LoRA"
