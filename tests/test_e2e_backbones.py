"""The real architectures through every stage: tiny SD2 (v-prediction) and tiny SDXL folders
loaded as `backbone: sd` / `sdxl`, and the SDXL preset failing fast without weights.

The stages run in-process, in dvc.yaml's order, with the commands `dvc repro` runs (a stage
subprocess costs ~10 s of imports); tests/test_e2e_dvc.py runs the same commands through the
`dvc` CLI on the default backbone.
"""

import json
import math
import shutil

import pandas as pd
import pytest
import torch
import yaml

from dbdpo.backbones import load_backbone, round_base, round_lora
from dbdpo.config import ModelConfig
from tests.conftest import invoke_stage, preset_params
from tests.test_e2e_dvc import (
    ROUND_2,
    copy_project,
    fast_params,
    run,
    run_stages_in_process,
)

pytestmark = pytest.mark.slow

STAGES = ("finetune", "generate@round_1", "score@round_1", "pair@round_1", "dpo@round_1", "frontier", "evaluate")


@pytest.mark.parametrize("arch, kind", [("sd2", "sd"), ("sdxl", "sdxl")])
def test_whole_pipeline_on_a_real_architecture(tmp_path, tiny_dirs, monkeypatch, arch, kind):
    """Through the several-concept path (`dbdpo concepts`, stages named finetune-toy, ...,
    artifacts under concepts/toy/); the world's e2e tests run the one-concept path."""
    params = fast_params()
    params["model"].update(backbone=kind, path=str(tiny_dirs[arch]))
    params["score"]["dino_model"] = "tiny"  # the DINO column's code path, on a random ViT
    params["concepts"] = {"toy": {"dir": "data/concept", "token": "sks", "class_noun": "toy"}}
    copy_project(tmp_path, params)
    monkeypatch.chdir(tmp_path)
    assert invoke_stage("concepts").exit_code == 0
    run_stages_in_process(tmp_path, monkeypatch, [s.replace("@", "-toy@") if "@" in s else f"{s}-toy" for s in STAGES])
    run_stages_in_process(tmp_path, monkeypatch, ["summary"])

    toy = tmp_path / "concepts/toy"
    rounds = json.loads((toy / "eval/rounds.json").read_text())
    assert list(rounds) == ["round_0", "round_1"]
    assert all(math.isfinite(rounds[r][k]) for r in ("round_0", "round_1") for k in ("IS", "TS", "DINO", "beyond_frontier"))
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert metrics["concepts"]["toy"]["IS"] == rounds["round_1"]["IS"] and metrics["se"]["IS"] is None  # one concept
    log = pd.read_csv(toy / "logs/dpo/round_1/plots/metrics/loss.tsv", sep="\t")
    assert log["loss"].iat[0] == pytest.approx(math.log(2), abs=1e-6)  # reference = start model
    assert log["loss"].map(math.isfinite).all()

    # the round's LoRA loads with the pipeline's own loader (SDXL: StableDiffusionXLPipeline)
    pipe = load_backbone(ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))).pipe
    pipe.load_lora_weights(toy / "models/round_1")
    assert pipe.get_list_adapters() == {"unet": ["default_0"]}


def unet_output(pipe, seed: int = 0):
    """The UNet's prediction on a seeded input: equal outputs mean equal models."""
    unet = pipe.unet
    gen = torch.Generator().manual_seed(seed)
    size = unet.config.sample_size
    latents = torch.randn((1, unet.config.in_channels, size, size), generator=gen)
    text = torch.randn((1, 77, unet.config.cross_attention_dim), generator=gen)
    added = None
    if unet.config.addition_embed_type == "text_time":  # SDXL: pooled text + size ids
        pooled = unet.add_embedding.linear_1.in_features - 6 * unet.config.addition_time_embed_dim
        added = {"text_embeds": torch.randn((1, pooled), generator=gen),
                 "time_ids": torch.tensor([[size * 8.0, size * 8.0, 0, 0, size * 8.0, size * 8.0]])}
    with torch.no_grad():
        return unet(latents, torch.tensor([500]), text, added_cond_kwargs=added).sample


def text_output(pipe, prompt: str = "a photo of sks toy"):
    """Every text encoder's last hidden states for `prompt`: equal outputs, equal encoders."""
    outputs = []
    for name in ("text_encoder", "text_encoder_2"):
        encoder = getattr(pipe, name, None)
        if encoder is not None:
            ids = pipe.tokenizer(prompt, padding="max_length", max_length=77, return_tensors="pt").input_ids
            with torch.no_grad():
                outputs.append(encoder(ids).last_hidden_state)
    return torch.cat(outputs, dim=-1)


@pytest.mark.parametrize("arch, kind, method", [("sd2", "sd", "full"), ("sdxl", "sdxl", "full"),
                                                ("sdxl", "sdxl", "lora")])
def test_dreambooth_with_the_text_encoder_then_dpo_loads_with_diffusers_alone(tmp_path, tiny_dirs, monkeypatch,
                                                                             arch, kind, method):
    """finetune.train_text_encoder through every stage. full (the paper's DreamBooth: UNet +
    text encoders) writes round 0 as a diffusers pipeline and each later round is one LoRA on
    it; lora puts the text encoders' LoRA in round 0's file and every round carries it. Either
    way diffusers' own loaders give our round-2 model: from_pretrained(base) + load_lora_weights."""
    from diffusers import DiffusionPipeline

    params = fast_params(rounds=2)
    params["model"].update(backbone=kind, path=str(tiny_dirs[arch]))
    params["finetune"].update(method=method, train_text_encoder=True, learning_rate=1e-3, steps=4)
    copy_project(tmp_path, params)
    run_stages_in_process(tmp_path, monkeypatch, (*STAGES[:-2], *ROUND_2, "frontier", "evaluate"))

    round_0, round_2 = tmp_path / "models/round_0", tmp_path / "models/round_2"
    base = load_backbone(ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))).pipe
    encoders = ("text_encoder", "text_encoder_2") if kind == "sdxl" else ("text_encoder",)
    if method == "full":
        assert (round_0 / "model_index.json").is_file() and not list(round_0.rglob("*.bin"))
        pipe = DiffusionPipeline.from_pretrained(round_0)
        assert type(pipe) is type(base)
        for part in ("unet", *encoders):
            before, after = getattr(base, part).state_dict(), getattr(pipe, part).state_dict()
            assert any(not torch.equal(before[k], after[k]) for k in before), f"{part} did not train"
        assert torch.equal(base.vae.state_dict()["decoder.conv_out.weight"],
                           pipe.vae.state_dict()["decoder.conv_out.weight"])  # the VAE never trains
    else:
        assert {key.partition(".")[0] for key in load_lora_keys(round_2)} == {"unet", *encoders}
        pipe = base
    for r in ("round_1", "round_2"):  # reference = the round's start model as written
        loss = pd.read_csv(tmp_path / f"logs/dpo/{r}/plots/metrics/loss.tsv", sep="\t")
        assert loss["loss"].iat[0] == pytest.approx(math.log(2), abs=1e-6)

    ours = load_backbone(round_base(ModelConfig(backbone=kind, path=str(tiny_dirs[arch])), round_0),
                         lora=round_lora(round_2)).pipe
    before = unet_output(pipe)
    pipe.load_lora_weights(round_2)
    assert not torch.allclose(unet_output(pipe), before, atol=1e-4)  # the round's LoRA changes the model
    torch.testing.assert_close(unet_output(pipe), unet_output(ours), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(text_output(pipe), text_output(ours), atol=1e-4, rtol=1e-4)
    rounds = json.loads((tmp_path / "eval/rounds.json").read_text())
    assert all(math.isfinite(rounds[r][k]) for r in ("round_0", "round_1", "round_2") for k in ("IS", "TS"))


def load_lora_keys(folder):
    from safetensors import safe_open

    with safe_open(str(folder / "pytorch_lora_weights.safetensors"), framework="pt") as f:
        return list(f.keys())


def sdxl_preset_project(tmp_path, model_dir=None):
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load(preset_params("sdxl"))
    if model_dir is not None:
        params["model"]["path"] = str(model_dir)
    copy_project(project, params)
    return project


def assert_nothing_written(project):
    assert not (project / "models").exists() or not any((project / "models").rglob("*.safetensors"))
    assert not list(project.rglob(".tmp-*"))


def test_sdxl_preset_with_an_absent_model_folder_stops_dvc_at_finetune(tmp_path):
    model_dir = tmp_path / "sdxl-base"
    project = sdxl_preset_project(tmp_path)
    result = run(["dvc", "exp", "run", "-S", f"model.path={model_dir}"], project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Running stage 'finetune'" in output and "Running stage 'generate" not in output
    # the first stage checks every input before any work: the backbone and the preset's absent scorers
    assert f"missing  model.path='{model_dir}' is not a directory with a diffusers pipeline" in output
    assert ("missing  score.clip_pretrained: ViT-B-32 / openai: not in the local Hugging Face cache\n"
            "         fetch: hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors "
            "open_clip_config.json") in output
    assert_nothing_written(project)


def test_sdxl_preset_with_a_folder_without_weights_fails_fast(tmp_path, tiny_dirs):
    model_dir = tmp_path / "sdxl-base"  # e.g. an interrupted download: configs only
    shutil.copytree(tiny_dirs["sdxl"], model_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    project = sdxl_preset_project(tmp_path, model_dir)
    result = invoke_stage("finetune", "--params", str(project / "params.yaml"))
    assert result.exit_code == 2
    assert f"\nmissing  model.path='{model_dir}': no .safetensors weights in {model_dir}/unet" in result.stderr
    assert_nothing_written(project)
