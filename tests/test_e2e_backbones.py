"""The real architectures through the real `dvc` CLI: tiny SD2 (v-prediction) and tiny SDXL
folders loaded as `backbone: sd` / `sdxl`, and the SDXL preset failing fast without weights."""

import json
import math
import shutil

import pandas as pd
import pytest
import yaml

from dbdpo.backbones import load_backbone
from dbdpo.config import ModelConfig
from tests.conftest import REPO
from tests.test_e2e_dvc import copy_project, fast_params, run

pytestmark = pytest.mark.slow

STAGES = ("finetune", "generate@round_1", "score@round_1", "pair@round_1", "dpo@round_1", "evaluate")


@pytest.mark.parametrize("arch, kind", [("sd2", "sd"), ("sdxl", "sdxl")])
def test_whole_pipeline_on_a_real_architecture(tmp_path, tiny_dirs, arch, kind):
    params = fast_params()
    params["model"].update(backbone=kind, path=str(tiny_dirs[arch]))
    params["score"]["dino_model"] = "tiny"  # the DINO column's code path, on a random ViT
    copy_project(tmp_path, params)
    out = run(["dvc", "repro"], tmp_path).stdout
    for stage in STAGES:
        assert f"Running stage '{stage}'" in out

    metrics = json.loads((tmp_path / "metrics.json").read_text())
    assert list(metrics) == ["final", "round_0", "round_1"]
    assert all(math.isfinite(metrics[r][k]) for r in ("round_0", "round_1") for k in ("IS", "TS", "DINO"))
    log = pd.read_csv(tmp_path / "logs/dpo/round_1.csv")
    assert log["loss"].iat[0] == pytest.approx(math.log(2), abs=1e-6)  # reference = start model
    assert log["loss"].map(math.isfinite).all()

    # the round's LoRA loads with the pipeline's own loader (SDXL: StableDiffusionXLPipeline)
    pipe = load_backbone(ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))).pipe
    pipe.load_lora_weights(tmp_path / "models/round_1")
    assert pipe.get_list_adapters() == {"unet": ["default_0"]}


@pytest.mark.parametrize("weights", ["absent folder", "folder without weights"])
def test_sdxl_preset_without_local_weights_fails_fast_and_writes_nothing(tmp_path, tiny_dirs, weights):
    model_dir = tmp_path / "sdxl-base"
    if weights == "folder without weights":  # e.g. an interrupted download: configs only
        shutil.copytree(tiny_dirs["sdxl"], model_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    project = tmp_path / "project"
    project.mkdir()
    copy_project(project, yaml.safe_load((REPO / "presets/sdxl.yaml").read_text()))

    result = run(["dvc", "exp", "run", "-S", f"model.path={model_dir}"], project, check=False)
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert "Running stage 'finetune'" in output and "Running stage 'generate" not in output
    expected = {"absent folder": f"model.path='{model_dir}' is not a directory with a diffusers pipeline",
                "folder without weights": f"model.path='{model_dir}': no .safetensors weights in {model_dir}/unet"}
    assert f"error: {expected[weights]}" in output
    assert not (project / "models").exists() or not any((project / "models").rglob("*.safetensors"))
    assert not list(project.rglob(".tmp-*"))
