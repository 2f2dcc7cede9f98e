"""The user-facing helper scripts: exit codes, files written, and what they contain.

Each script's Typer command runs in-process (a subprocess costs ~12 s of imports)."""

import importlib.util
import json
from pathlib import Path

import pytest
import torch
import typer
from safetensors import safe_open
from typer.testing import CliRunner

from dbdpo.backbones import load_backbone
from dbdpo.config import ModelConfig
from dbdpo.lora import save_lora
from tests.conftest import invoke_stage
from tests.test_lora import random_lora


def run_script(path, *args, cwd):
    """Run scripts/<name>.py's `main` as `python <path> <args>` would, from `cwd`."""
    spec = importlib.util.spec_from_file_location(f"script_{cwd / path}".replace("/", "_"), cwd / path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    app = typer.Typer(add_completion=False)
    app.command()(module.main)
    return CliRunner().invoke(app, list(args))


def error_text(result) -> str:
    """Typer's boxed error message as one line (the box wraps long paths)."""
    return " ".join(result.stderr.replace("│", " ").split())


def test_make_tiny_backbone_writes_a_loadable_sdxl_folder(in_repo, tmp_path):
    result = run_script("scripts/make_tiny_backbone.py", "sdxl", str(tmp_path / "sdxl"), cwd=in_repo)
    assert result.exit_code == 0, result.output
    assert f"-S model.backbone=sdxl -S model.path={tmp_path / 'sdxl'}" in result.stdout
    assert load_backbone(ModelConfig(backbone="sdxl", path=str(tmp_path / "sdxl"))).is_sdxl
    result = run_script("scripts/make_tiny_backbone.py", "sd3", str(tmp_path / "x"), cwd=in_repo)
    assert result.exit_code == 2 and "'sd3': expected one of sd2, sdxl" in error_text(result)
    assert not (tmp_path / "x").exists()


def test_export_kohya_writes_the_rounds_lora_in_fp16(in_repo, tmp_path):
    state = random_lora(0)
    save_lora(load_backbone(ModelConfig()).pipe, state, tmp_path / "round_1")
    out = tmp_path / "exports" / "round_1.safetensors"
    result = invoke_stage("export", "kohya", str(tmp_path / "round_1"), str(out))
    assert result.exit_code == 0, result.output
    name = "lora_unet_down_blocks_1_attentions_0_transformer_blocks_0_attn2_to_k"
    with safe_open(str(out), framework="pt") as f:
        assert len(list(f.keys())) == 3 * len(state) // 2
        down = f.get_tensor(f"{name}.lora_down.weight")
        assert down.dtype == torch.float16
        torch.testing.assert_close(down.float(), state["down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k.lora_A.weight"],
                                   atol=1e-3, rtol=1e-3)
        assert f.get_tensor(f"{name}.alpha").item() == 4.0
        # kohya's header keys, from the LoRA and the project's params (the proving ground's toy)
        assert f.metadata() == {"ss_network_module": "networks.lora", "ss_network_dim": "4", "ss_network_alpha": "4.0",
                                "ss_resolution": "(64, 64)",
                                "ss_tag_frequency": json.dumps({"concept": {"sks toy": 6}})}
    header = json.loads(out.read_bytes()[8:8 + int.from_bytes(out.read_bytes()[:8], "little")])
    assert list(header) == sorted(header) and list(header["__metadata__"]) == sorted(header["__metadata__"])

    missing = invoke_stage("export", "kohya", str(tmp_path / "round_9"), str(out))
    assert missing.exit_code == 2 and "no LoRA weights; run the stage that writes" in missing.stderr
    (tmp_path / "round_0").mkdir()
    (tmp_path / "round_0/model_index.json").write_text("{}")  # what a full DreamBooth writes
    pipeline = invoke_stage("export", "kohya", str(tmp_path / "round_0"), str(out))
    assert pipeline.exit_code == 2 and "is a whole pipeline (finetune.method=full), not a LoRA" in pipeline.stderr
    wrong = invoke_stage("export", "kohya", str(tmp_path / "round_1"), str(tmp_path / "x.pt"))
    assert wrong.exit_code == 2 and "x.pt: the output must end in .safetensors" in wrong.stderr


def test_export_kohya_names_an_sdxl_projects_lora_as_kohyas_sdxl_loras(in_repo, tmp_path, tiny_dirs):
    """backbone: sdxl in the params: the SGM checkpoint's module names (input_blocks...), which
    A1111/Forge's SDXL UNet has (tests/test_lora.py checks them against A1111's table)."""
    import yaml

    params = yaml.safe_load((in_repo / "params.yaml").read_text())
    params["model"].update(backbone="sdxl", path=str(tiny_dirs["sdxl"]))
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    state = random_lora(0, arch="sdxl")
    save_lora(load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"]))).pipe, state, tmp_path / "round_1")
    out = tmp_path / "round_1.safetensors"
    result = invoke_stage("export", "kohya", str(tmp_path / "round_1"), str(out), "--params", str(tmp_path / "params.yaml"))
    assert result.exit_code == 0, result.output
    with safe_open(str(out), framework="pt") as f:
        keys = list(f.keys())
    assert "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k.lora_down.weight" in keys
    assert not any("down_blocks" in k or "up_blocks" in k for k in keys)


def test_kohya_metadata_names_the_base_model_by_the_cross_attention_width():
    from dbdpo.lora import kohya_metadata

    def lora(width: int, rank: int = 8) -> dict:
        key = "down_blocks.1.attentions.0.transformer_blocks.0.attn2.to_k"
        return {f"{key}.lora_A.weight": torch.zeros(rank, width), f"{key}.lora_B.weight": torch.zeros(320, rank),
                "conv_in.lora_A.weight": torch.zeros(rank // 2, 4)}

    assert kohya_metadata(lora(2048))["ss_base_model_version"] == "sdxl_base_v1-0"
    assert kohya_metadata(lora(1024)) == {"ss_network_module": "networks.lora", "ss_network_dim": "8",
                                          "ss_network_alpha": "8.0", "ss_base_model_version": "sd_v2", "ss_v2": "True"}
    assert kohya_metadata(lora(768))["ss_v2"] == "False"
    assert "ss_base_model_version" not in kohya_metadata(lora(64))  # the proving ground's world: no kohya name


@pytest.mark.slow
def test_an_export_is_the_same_bytes_in_another_process(in_repo, tmp_path):
    """safetensors orders header keys per process; the export sorts them."""
    import subprocess
    import sys

    save_lora(load_backbone(ModelConfig()).pipe, random_lora(0), tmp_path / "round_1")
    here = tmp_path / "here.safetensors"
    assert invoke_stage("export", "kohya", str(tmp_path / "round_1"), str(here)).exit_code == 0
    there = tmp_path / "there.safetensors"
    subprocess.run([sys.executable, "-m", "stages.export", "kohya", str(tmp_path / "round_1"), str(there)], cwd=in_repo,
                   check=True, capture_output=True)
    assert there.read_bytes() == here.read_bytes()


def test_export_never_overwrites_without_force_nor_writes_into_models(in_repo, tmp_path, monkeypatch):
    """An export once overwrote the round's own tracked LoRA (evaluate then failed on "mixed
    ranks []"): models/ is refused, an existing file needs --force, a folder is named."""
    monkeypatch.chdir(tmp_path)
    round_1 = Path("models/round_1")
    save_lora(load_backbone(ModelConfig()).pipe, random_lora(0), round_1)
    own = round_1 / "pytorch_lora_weights.safetensors"
    before = own.read_bytes()
    for target in (own, Path("models/round_2.safetensors")):
        result = invoke_stage("export", "kohya", str(round_1), str(target), "--force")
        assert result.exit_code == 2 and "where the rounds' models live" in result.stderr, result.output
    assert own.read_bytes() == before

    out = Path("exports/r1.safetensors")
    assert invoke_stage("export", "kohya", str(round_1), str(out)).exit_code == 0
    first = out.read_bytes()
    again = invoke_stage("export", "kohya", str(round_1), str(out))
    assert again.exit_code == 2 and "exists; pass --force to overwrite it" in again.stderr
    assert invoke_stage("export", "kohya", str(round_1), str(out), "--force").exit_code == 0
    assert out.read_bytes() == first
    Path("exports/a_folder.safetensors").mkdir()
    folder = invoke_stage("export", "kohya", str(round_1), "exports/a_folder.safetensors", "--force")
    assert folder.exit_code == 2 and "is a folder" in folder.stderr
    assert sorted(p.name for p in Path("exports").iterdir()) == ["a_folder.safetensors", "r1.safetensors"]


def test_the_offline_plots_page_inlines_the_vega_versions_dvc_loads(in_repo):
    """.dvc/plots/offline.html must carry the very libraries DVC's own page would fetch (a
    dvc-render upgrade that moves them means: rerun scripts/offline_plots_template.py), keep
    DVC's placeholders, and load nothing from the network."""
    import re

    spec = importlib.util.spec_from_file_location("offline_template", in_repo / "scripts/offline_plots_template.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    page = (in_repo / ".dvc/plots/offline.html").read_text()
    inlined = re.findall(r"<!-- ([\w-]+) ([\d.]+), from https://registry\.npmjs\.org -->", page)
    assert inlined == module.cdn_packages() == [("vega", "5.20.2"), ("vega-lite", "5.2.0"), ("vega-embed", "6.18.2")]
    assert page.count("{plot_divs}") == 1 and "{scripts}" not in page and "<script src=" not in page
    assert (in_repo / "stages/init_files/offline.html").read_text() == page  # what dbdpo init writes
