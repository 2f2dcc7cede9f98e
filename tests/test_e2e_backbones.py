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
import yaml

from dbdpo.backbones import load_backbone
from dbdpo.config import ModelConfig
from tests.conftest import REPO, invoke_stage
from tests.test_e2e_dvc import copy_project, fast_params, run, run_stages_in_process

pytestmark = pytest.mark.slow

STAGES = ("finetune", "generate@round_1", "score@round_1", "pair@round_1", "dpo@round_1", "evaluate")


@pytest.mark.parametrize("arch, kind", [("sd2", "sd"), ("sdxl", "sdxl")])
def test_whole_pipeline_on_a_real_architecture(tmp_path, tiny_dirs, monkeypatch, arch, kind):
    params = fast_params()
    params["model"].update(backbone=kind, path=str(tiny_dirs[arch]))
    params["score"]["dino_model"] = "tiny"  # the DINO column's code path, on a random ViT
    copy_project(tmp_path, params)
    run_stages_in_process(tmp_path, monkeypatch, STAGES)

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


def sdxl_preset_project(tmp_path, model_dir=None):
    project = tmp_path / "project"
    project.mkdir()
    params = yaml.safe_load((REPO / "presets/sdxl.yaml").read_text())
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
    assert f"error: model.path='{model_dir}' is not a directory with a diffusers pipeline" in output
    assert_nothing_written(project)


def test_sdxl_preset_with_a_folder_without_weights_fails_fast(tmp_path, tiny_dirs):
    model_dir = tmp_path / "sdxl-base"  # e.g. an interrupted download: configs only
    shutil.copytree(tiny_dirs["sdxl"], model_dir, ignore=shutil.ignore_patterns("*.safetensors"))
    project = sdxl_preset_project(tmp_path, model_dir)
    result = invoke_stage("finetune", "--params", str(project / "params.yaml"))
    assert result.exit_code == 2
    assert result.stderr.strip().splitlines()[-1].startswith(
        f"error: model.path='{model_dir}': no .safetensors weights in {model_dir}/unet")
    assert_nothing_written(project)
