"""`dbdpo check` and the first stage's preflight (dbdpo.preflight): every weight, prompt file and
photo the params name, looked up on disk and in a Hugging Face cache built here, offline."""

import dataclasses
import shutil
import time

import huggingface_hub.constants
import pytest
from PIL import Image

from dbdpo.params import load_config
from dbdpo.preflight import check, pipeline_files, report_text
from tests.conftest import REPO, invoke_stage, preset_params

SDXL_FETCH = ("hf download stabilityai/stable-diffusion-xl-base-1.0 model_index.json scheduler/scheduler_config.json "
              "{tokenizer,tokenizer_2}/{merges.txt,special_tokens_map.json,tokenizer_config.json,vocab.json} "
              "{text_encoder,text_encoder_2}/{config.json,model.fp16.safetensors} "
              "{unet,vae}/{config.json,diffusion_pytorch_model.fp16.safetensors}")
CLIP_FETCH = "hf download timm/vit_base_patch32_clip_224.openai open_clip_model.safetensors open_clip_config.json"


@pytest.fixture
def hub_cache(tmp_path, monkeypatch):
    """An empty Hugging Face cache, offline; `put(repo, files)` adds a snapshot as the hub's
    downloads lay it out (refs/main -> snapshots/<commit>/<files>) and returns its folder."""
    cache = tmp_path / "hub"
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def put(repo: str, files: dict[str, bytes] | None = None, tree=None):
        root = cache / f"models--{repo.replace('/', '--')}"
        snapshot = root / "snapshots" / ("0" * 40)
        if tree is not None:
            shutil.copytree(tree, snapshot)
        for name, data in (files or {}).items():
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            (snapshot / name).write_bytes(data)
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / "main").write_text("0" * 40)
        return snapshot

    return put


def sdxl_preset():
    from dbdpo.presets import load_with_preset

    return load_with_preset(REPO / "params.yaml", REPO / "presets/sdxl.yaml")


def test_the_default_params_need_nothing_but_the_package(in_repo, hub_cache):
    report = check(load_config("params.yaml"))
    assert report.ok and report.warnings == [], report_text(report)


def test_an_absent_preset_names_each_missing_weight_with_the_command_that_fetches_only_it(in_repo, hub_cache):
    report = check(sdxl_preset())
    assert [(m.key, m.fetch) for m in report.missing] == [
        ("model.path", SDXL_FETCH), ("score.clip_pretrained", CLIP_FETCH),
        ("score.dino_model", "hf download facebook/dino-vits16 config.json model.safetensors --revision refs/pr/1 "
                             "--local-dir models/dino-vits16 (then set score.dino_model to that folder: main has "
                             "only a pickle)")]
    assert pipeline_files("stabilityai/stable-diffusion-2-base", "sd", None) == (
        "hf download stabilityai/stable-diffusion-2-base model_index.json scheduler/scheduler_config.json "
        "tokenizer/{merges.txt,special_tokens_map.json,tokenizer_config.json,vocab.json} "
        "text_encoder/{config.json,model.safetensors} {unet,vae}/{config.json,diffusion_pytorch_model.safetensors}")


def test_cached_hub_weights_pass(in_repo, hub_cache, tiny_dirs):
    hub_cache("stabilityai/stable-diffusion-xl-base-1.0", tree=tiny_dirs["sdxl"])
    hub_cache("timm/vit_base_patch32_clip_224.openai", {"open_clip_model.safetensors": b"weights"})
    hub_cache("facebook/dino-vits16", {"config.json": b"{}"})
    cfg = sdxl_preset()
    report = check(dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, variant=None)))  # the tiny files' variant
    assert report.ok, report_text(report)
    report = check(cfg)  # the preset asks for fp16 files, which this snapshot lacks
    assert [m.key for m in report.missing] == ["model.path"] and "for model.variant=fp16" in report.missing[0].what


def test_with_the_hub_reachable_an_uncached_file_is_a_warning(in_repo, hub_cache, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")
    report = check(sdxl_preset())
    assert report.ok
    assert any(w.startswith("score.clip_pretrained: ViT-B-32 / openai: not in the local Hugging Face cache; the stage "
                            f"that loads it downloads it ({CLIP_FETCH} fetches it now)") for w in report.warnings)


def test_local_files_prompts_and_photos_are_checked(in_repo, hub_cache, tmp_path):
    cfg = load_config("params.yaml")
    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("RGB", (640, 480), "red").save(photos / "dog.png")
    cfg = dataclasses.replace(
        cfg, concept=dataclasses.replace(cfg.concept, dir=str(photos)),
        score=dataclasses.replace(cfg.score, hps_weights=str(tmp_path / "HPS_v2.1_compressed.pt")),
        evaluate=dataclasses.replace(cfg.evaluate, prompts=str(tmp_path / "eval.txt")))
    report = check(cfg)
    assert [m.key for m in report.missing] == ["score.hps_weights", "evaluate.prompts"]
    assert report.missing[0].fetch == "hf download xswu/HPSv2 HPS_v2.1_compressed.pt"
    assert report.warnings == [f"concept.dir={photos}: photos of 640x480 px with model.backbone=world: the proving "
                               "ground's 64-pixel world model draws its own world, not real photos; use a GPU preset "
                               "(dbdpo init --preset sdxl|sd2)"]


def test_photos_below_the_models_size_are_a_warning(in_repo, hub_cache, tiny_dirs):
    cfg = load_config("params.yaml")
    cfg = dataclasses.replace(cfg, model=dataclasses.replace(cfg.model, backbone="sd", path=str(tiny_dirs["sd2"]),
                                                             resolution=512))
    report = check(cfg)
    assert report.ok and len(report.warnings) == 1
    assert report.warnings[0].startswith("concept.dir=data/concept: 6 photos below the model's 512 px (e.g. 64x64)")


def test_dbdpo_check_fails_in_seconds_naming_the_fetch_command(in_repo, hub_cache, tmp_path):
    (tmp_path / "params.yaml").write_text(preset_params("sdxl"))
    t0 = time.time()
    result = invoke_stage("check", "--params", str(tmp_path / "params.yaml"))
    assert result.exit_code == 1 and time.time() - t0 < 30
    assert f"         fetch: {CLIP_FETCH}" in result.stderr.splitlines()
    assert invoke_stage("check").exit_code == 0


def test_finetune_stops_before_any_work_and_keeps_the_previous_model(hub_cache, tmp_path, monkeypatch):
    project = tmp_path / "project"
    shutil.copytree(REPO / "data", project / "data")
    (project / "params.yaml").write_text(preset_params("sdxl"))
    (project / "models/round_0").mkdir(parents=True)
    (project / "models/round_0/pytorch_lora_weights.safetensors").write_bytes(b"an earlier run's")
    monkeypatch.chdir(project)
    result = invoke_stage("finetune")
    assert result.exit_code == 2
    assert result.stderr.startswith("error: the params name inputs that are not here (`dbdpo check` lists them):\n")
    assert f"         fetch: {CLIP_FETCH}" in result.stderr.splitlines()
    assert (project / "models/round_0/pytorch_lora_weights.safetensors").read_bytes() == b"an earlier run's"
