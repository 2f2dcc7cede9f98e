import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from dbdpo.backbones import load_backbone
from dbdpo.config import LORA_TARGETS, ModelConfig
from dbdpo.lora import (
    TARGET_SETS,
    WEIGHT_NAME,
    LoraError,
    add_lora,
    by_component,
    load_lora,
    lora_rank,
    lora_state,
    merge_into,
    merged,
    merged_pipeline,
    save_kohya,
    save_lora,
    stack,
    to_kohya,
)
from dbdpo.tiny import build_tiny_pipeline
from dbdpo.world.backbone import build_world_pipeline
from tests.conftest import pipeline

ARCHS = [("sd2", "sd"), ("sdxl", "sdxl")]  # tiny architecture, the backbone kind it loads as


def random_lora(seed: int, rank: int = 4, arch: str = "world", targets: str = "attention"):
    """A LoRA with non-zero B (a fresh adapter has B = 0 and changes nothing)."""
    pipe = pipeline(arch)
    add_lora(pipe.unet, rank, "x", targets)
    g = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(v.shape, generator=g) for k, v in lora_state(pipe.unet, "x").items()}


def unet_output(unet):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 16, 16, generator=g)
    text = torch.randn(2, 77, unet.config.cross_attention_dim, generator=g)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500]), text).sample


def test_save_load_roundtrip_is_exact(tmp_path):
    state = random_lora(0)
    save_lora(build_world_pipeline(), state, tmp_path / "lora")
    loaded = load_lora(tmp_path / "lora")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not list(tmp_path.glob(".tmp-*"))


def test_a_corrupt_lora_file_is_named(tmp_path):
    (tmp_path / "round_1").mkdir()
    (tmp_path / "round_1" / WEIGHT_NAME).write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(LoraError, match=rf"round_1/{WEIGHT_NAME} is unreadable \(SafetensorError: .*\); rerun the stage"):
        load_lora(tmp_path / "round_1")


def test_non_finite_lora_is_neither_written_nor_read(tmp_path):
    state = random_lora(0)
    key = next(k for k in state if k.endswith("lora_B.weight"))
    state[key][0, 0] = float("nan")
    with pytest.raises(LoraError, match=r"lora: 1 non-finite LoRA values in 1 tensors .*lower learning rate"):
        save_lora(build_world_pipeline(), state, tmp_path / "lora")
    assert not (tmp_path / "lora").exists() and not list(tmp_path.glob(".tmp-*"))

    # a file written by another tool (or an older dbdpo) with an inf in it
    save_lora(build_world_pipeline(), random_lora(1), tmp_path / "ok")
    path = tmp_path / "ok" / WEIGHT_NAME
    with safe_open(str(path), framework="pt") as f:
        tensors, meta = {k: f.get_tensor(k) for k in f.keys()}, f.metadata()
    tensors[next(iter(tensors))][0, 0] = float("inf")
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(LoraError, match=f"{path}: 1 non-finite LoRA values"):
        load_lora(tmp_path / "ok")


def test_target_sets_are_the_configs_choices():
    assert tuple(TARGET_SETS) == LORA_TARGETS


def test_unet_target_set_adapts_convs_and_feed_forwards():
    state = random_lora(0, targets="unet")
    modules = dict(build_world_pipeline().unet.named_modules())
    kinds = {type(modules[k.removesuffix(".lora_A.weight")]).__name__ for k in state if k.endswith("lora_A.weight")}
    assert kinds == {"Linear", "Conv2d"}
    conv = "down_blocks.0.resnets.0.conv1"
    assert state[f"{conv}.lora_A.weight"].shape == (4, 64, 3, 3)  # (r, in, kh, kw)
    assert state[f"{conv}.lora_B.weight"].shape == (64, 4, 1, 1)  # (out, r, 1, 1)
    assert {"down_blocks.1.attentions.0.transformer_blocks.0.ff.net.2", "mid_block.resnets.0.time_emb_proj"} <= {
        k.removesuffix(".lora_A.weight") for k in state}
    assert len(state) > 2 * len(random_lora(0))


def test_lora_init_is_the_seeds_alone_whatever_the_global_rng_did_before():
    """peft draws A from torch's global RNG; ours from the seed, so a loop in a bench or a
    notebook starts where the same loop in a fresh stage process starts."""
    def fresh(seed, draws):
        pipe = pipeline("world")
        torch.rand(draws)  # whatever ran earlier in the process moved the global RNG
        add_lora(pipe.unet, 4, "x", "unet", seed=seed)
        return lora_state(pipe.unet, "x")

    first, again, other = fresh(0, draws=1000), fresh(0, draws=7), fresh(1, draws=1000)
    assert first.keys() == again.keys() == other.keys()
    for key in first:
        assert torch.equal(first[key], again[key]), key
        if key.endswith("lora_B.weight"):
            assert not first[key].any(), key  # B = 0: the model starts unchanged
        else:
            assert not torch.equal(first[key], other[key]), key


@pytest.mark.parametrize("targets", ["attention", "unet"])
def test_lora_init_has_pefts_distribution(targets):
    """U(-1/sqrt(fan_in), 1/sqrt(fan_in)), fan_in = in features x kernel size: the bound peft's
    Kaiming-uniform (a = sqrt 5) draw has, reached and not exceeded, with the uniform's std."""
    state = lora_state_of(targets, rank=16)
    for key, value in state.items():
        if key.endswith("lora_A.weight"):
            bound = value[0].numel() ** -0.5
            assert value.abs().max() <= bound, key
            assert value.abs().max() > 0.9 * bound, key
    a = torch.cat([v.flatten() * v[0].numel() ** 0.5 for k, v in state.items() if k.endswith("lora_A.weight")])
    assert a.std().item() == pytest.approx(3 ** -0.5, rel=0.02)  # U(-1, 1) after scaling by sqrt(fan_in)


def lora_state_of(targets: str, rank: int):
    pipe = pipeline("world")
    add_lora(pipe.unet, rank, "x", targets, seed=0)
    return lora_state(pipe.unet, "x")


@pytest.mark.parametrize("targets", ["attention", "unet"])
def test_merge_matches_diffusers_load_lora_weights(tmp_path, targets):
    state = random_lora(0, targets=targets)
    save_lora(build_world_pipeline(), state, tmp_path / "lora")
    by_diffusers = build_world_pipeline()
    by_diffusers.load_lora_weights(tmp_path / "lora")
    ours = build_world_pipeline()
    merge_into(ours.unet, load_lora(tmp_path / "lora"))
    base = unet_output(build_world_pipeline().unet)
    expected = unet_output(by_diffusers.unet)
    assert (expected - base).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(unet_output(ours.unet), expected, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("first_targets, first_rank, second_rank", [("attention", 4, 4), ("unet", 3, 2)])
def test_stacked_lora_equals_applying_both(tmp_path, first_targets, first_rank, second_rank):
    """unet + attention: a DreamBooth LoRA on every UNet layer, then a DPO LoRA on attention."""
    first, second = random_lora(1, rank=first_rank, targets=first_targets), random_lora(2, rank=second_rank)
    both = stack(first, second)
    assert lora_rank(both) == first_rank + second_rank and set(both) == set(first)
    if first_targets == "unet":  # the second LoRA adds zero rows where it has no layer
        conv = "down_blocks.0.resnets.0.conv1"
        assert torch.equal(both[f"{conv}.lora_A.weight"][first_rank:], torch.zeros(second_rank, 64, 3, 3))
    one_by_one = build_world_pipeline()
    merge_into(one_by_one.unet, first)
    merge_into(one_by_one.unet, second)
    stacked = build_world_pipeline()
    merge_into(stacked.unet, both)
    torch.testing.assert_close(unet_output(stacked.unet), unet_output(one_by_one.unet), atol=1e-5, rtol=1e-4)
    # ...and the saved stack loads in diffusers as one adapter with the same output
    save_lora(build_world_pipeline(), both, tmp_path / "stacked")
    pipe = build_world_pipeline()
    pipe.load_lora_weights(tmp_path / "stacked")
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(stacked.unet), atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("targets", ["attention", "unet"])
def test_merged_context_restores_base_weights_exactly(targets):
    pipe = build_world_pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with merged(pipe.unet, random_lora(3, targets=targets)):
        assert not torch.equal(pipe.unet.state_dict()["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
                               before["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_missing_lora_dir_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="models/round_0/pytorch_lora_weights.safetensors: no LoRA weights"):
        load_lora(tmp_path / "models" / "round_0")


def test_disabled_adapter_is_exactly_the_base_model():
    """The DPO reference relies on this: adapter disabled == the (merged) start model."""
    pipe = build_world_pipeline()
    base = unet_output(pipe.unet)
    add_lora(pipe.unet, 4, "dpo")
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_()
    assert (unet_output(pipe.unet) - base).abs().max() > 1e-3
    pipe.unet.disable_adapters()
    assert torch.equal(unet_output(pipe.unet), base)


def test_merge_into_half_precision_weights_adds_in_fp32():
    """On a GPU the frozen UNet is bf16; the start LoRA must not be rounded away when merged."""
    unet = build_world_pipeline().unet.to(torch.bfloat16)
    lora = {k: v * 1e-2 if "lora_B" in k else v for k, v in random_lora(0).items()}
    name = "down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q"
    layer = dict(unet.named_modules())[name]
    before = layer.weight.detach().clone()
    update = lora[f"{name}.lora_B.weight"] @ lora[f"{name}.lora_A.weight"]
    merge_into(unet, lora)
    expected = (before.float() + update).to(torch.bfloat16)  # one rounding, of the exact sum
    assert torch.equal(layer.weight, expected)
    naive = before + update.to(torch.bfloat16)  # two roundings: what `weight += update` did
    assert (naive != expected).any()


def pipeline_image(pipe) -> np.ndarray:
    """One 2-step sample at a fixed seed: the whole pipeline, text encoders to VAE."""
    out = pipe("a photo of sks toy", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")
    return out.images[0]


@pytest.mark.slow
@pytest.mark.parametrize("targets", ["attention", "unet"])
@pytest.mark.parametrize("arch,kind", ARCHS)
def test_lora_round_trips_through_the_pipelines_own_loader(tiny_dirs, tmp_path, arch, kind, targets):
    cfg = ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))
    state = random_lora(0, arch=arch, targets=targets)
    save_lora(load_backbone(cfg).pipe, state, tmp_path / "lora")
    loaded = load_lora(tmp_path / "lora")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)

    by_diffusers = load_backbone(cfg).pipe  # StableDiffusionXLPipeline.load_lora_weights for sdxl
    by_diffusers.load_lora_weights(tmp_path / "lora")
    first, second = pipeline_image(by_diffusers), pipeline_image(by_diffusers)
    np.testing.assert_array_equal(first, second)  # deterministic
    assert np.abs(first - pipeline_image(load_backbone(cfg).pipe)).max() > 1e-3  # and it changes the image
    np.testing.assert_allclose(pipeline_image(load_backbone(cfg, lora=state).pipe), first, atol=1e-4)


@pytest.mark.parametrize("targets", ["attention", "unet"])
@pytest.mark.parametrize("arch,kind", ARCHS)
def test_kohya_export_loads_with_the_same_output(tiny_dirs, tmp_path, arch, kind, targets):
    """SD 2 in diffusers' module names, SDXL in the SGM checkpoint's (kohya's SDXL naming: the
    tiny UNet has one layer per block, so down_blocks.1.attentions.0 is input_blocks.3.1)."""
    cfg = ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))
    state = random_lora(1, arch=arch, targets=targets)
    save_kohya(state, tmp_path / "concept.safetensors", dtype=torch.float32, sdxl=kind == "sdxl")
    with safe_open(str(tmp_path / "concept.safetensors"), framework="pt") as f:
        keys = set(f.keys())
        assert f.metadata() == {"ss_network_module": "networks.lora"}
    block = "input_blocks_3_1" if kind == "sdxl" else "down_blocks_1_attentions_0"
    prefix = f"lora_unet_{block}_transformer_blocks_0_attn1_to_out_0"
    assert {f"{prefix}.lora_down.weight", f"{prefix}.lora_up.weight", f"{prefix}.alpha"} <= keys
    assert len(keys) == 3 * len(state) // 2

    pipe = load_backbone(cfg).pipe  # diffusers converts kohya keys on load, as ComfyUI/A1111 do
    pipe.load_lora_weights(str(tmp_path), weight_name="concept.safetensors")
    np.testing.assert_allclose(pipeline_image(pipe), pipeline_image(load_backbone(cfg, lora=state).pipe), atol=1e-4)


def test_saved_loras_have_one_metadata_key_so_the_bytes_depend_only_on_the_tensors(tmp_path):
    """safetensors writes metadata keys in a per-process hash order: with diffusers' two keys,
    6 processes gave several md5s of the same tensors, and DVC reran every stage downstream.
    With one key the order cannot vary (the e2e forced-rerun test compares md5s across runs)."""
    import hashlib

    state = random_lora(0, arch="sd2")
    digests = set()
    for i in range(2):
        save_lora(build_tiny_pipeline("sd2"), state, tmp_path / f"lora{i}")
        save_kohya(state, tmp_path / f"kohya{i}.safetensors")
        digests.add(tuple(hashlib.md5(f.read_bytes()).hexdigest()
                          for f in (tmp_path / f"lora{i}" / WEIGHT_NAME, tmp_path / f"kohya{i}.safetensors")))
    assert len(digests) == 1
    with safe_open(str(tmp_path / "lora0" / WEIGHT_NAME), framework="pt") as f:
        assert list(f.metadata()) == ["lora_adapter_metadata"]  # what load_lora_weights reads
    with safe_open(str(tmp_path / "kohya0.safetensors"), framework="pt") as f:
        assert list(f.metadata()) == ["ss_network_module"]


def random_text_encoder_lora(seed: int, arch: str, rank: int = 4):
    """A UNet LoRA plus one on each text encoder's attention, keyed as DreamBooth writes it."""
    pipe = pipeline(arch)
    state = random_lora(seed, rank=rank, arch=arch)
    g = torch.Generator().manual_seed(seed + 100)
    for name in ("text_encoder", "text_encoder_2"):
        if getattr(pipe, name, None) is not None:
            add_lora(getattr(pipe, name), rank, "x", "text_encoder")
            state |= {f"{name}.{k}": 0.2 * torch.randn(v.shape, generator=g)
                      for k, v in lora_state(getattr(pipe, name), "x").items()}
    return state


@pytest.mark.parametrize("arch,kind", ARCHS)
def test_text_encoder_lora_round_trips_and_loads_with_diffusers(tiny_dirs, tmp_path, arch, kind):
    cfg = ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))
    state = random_text_encoder_lora(0, arch)
    encoders = {"text_encoder", "text_encoder_2"} if kind == "sdxl" else {"text_encoder"}
    assert set(by_component(state)) == {"unet", *encoders}
    save_lora(load_backbone(cfg).pipe, state, tmp_path / "lora")
    loaded = load_lora(tmp_path / "lora")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)

    by_diffusers = load_backbone(cfg).pipe
    by_diffusers.load_lora_weights(tmp_path / "lora")
    assert set(by_diffusers.get_list_adapters()) == {"unet", *encoders}
    ours = load_backbone(cfg, lora=state).pipe  # merged into the UNet and the text encoders
    np.testing.assert_allclose(pipeline_image(ours), pipeline_image(by_diffusers), atol=1e-4)


def test_text_encoder_layers_get_kohya_names():
    sd = to_kohya(random_text_encoder_lora(0, "sd2"))
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in sd)
    xl = to_kohya(random_text_encoder_lora(0, "sdxl"))
    assert {k.split("_text_model")[0] for k in xl if k.startswith("lora_te")} == {"lora_te1", "lora_te2"}
    assert not any(k.startswith("lora_unet_text_encoder") for k in sd | xl)


def test_kohya_unet_part_is_diffusers_conversion_and_text_encoders_keep_kohyas_names():
    """The UNet goes through diffusers' convert_state_dict_to_kohya as is. Its text-encoder
    names would not load in ComfyUI/A1111: SD's one encoder as lora_te1_ (kohya: lora_te_) and
    without the CLIP's text_model. path; those stay ours."""
    from diffusers.utils.state_dict_utils import convert_state_dict_to_kohya

    state = random_text_encoder_lora(0, "sd2")
    ours = to_kohya(state)
    unet = {f"unet.{k}": v for k, v in state.items() if not k.startswith("text_encoder")}
    by_diffusers = convert_state_dict_to_kohya(unet)
    assert by_diffusers and all(torch.equal(ours[k], v) for k, v in by_diffusers.items())
    encoder = convert_state_dict_to_kohya({k: v for k, v in state.items() if k.startswith("text_encoder")})
    assert any(k.startswith("lora_te1_encoder_layers_0_self_attn_q_proj.") for k in encoder)
    assert any(k.startswith("lora_te_text_model_encoder_layers_0_self_attn_q_proj.") for k in ours)
    assert len(ours) == len(by_diffusers) + len(encoder)


def test_merged_pipeline_restores_every_component_exactly():
    pipe = build_tiny_pipeline("sdxl")
    before = {n: {k: v.clone() for k, v in getattr(pipe, n).state_dict().items()}
              for n in ("unet", "text_encoder", "text_encoder_2")}
    with merged_pipeline(pipe, random_text_encoder_lora(1, "sdxl")):
        assert not torch.equal(pipe.text_encoder_2.state_dict()["text_model.encoder.layers.0.self_attn.q_proj.weight"],
                               before["text_encoder_2"]["text_model.encoder.layers.0.self_attn.q_proj.weight"])
    for name, weights in before.items():
        assert all(torch.equal(v, getattr(pipe, name).state_dict()[k]) for k, v in weights.items()), name


def a1111_compvis_name(key: str) -> str:
    """AUTOMATIC1111's table from a diffusers-named kohya key to its UNet's (SGM) module name
    (extensions-builtin/Lora/networks.py, convert_diffusers_name_to_compvis), restated: SD 1.x's
    layout (3 input blocks a level), which SDXL shares."""
    import re

    resnet = {"conv1": "in_layers_2", "conv2": "out_layers_3", "norm1": "in_layers_0", "norm2": "out_layers_0",
              "time_emb_proj": "emb_layers_1", "conv_shortcut": "skip_connection"}
    if m := re.match(r"lora_unet_down_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"input_blocks_{1 + i * 3 + j}"
    elif m := re.match(r"lora_unet_up_blocks_(\d+)_(attentions|resnets)_(\d+)_(.+)", key):
        i, kind, j, rest = int(m[1]), m[2], int(m[3]), m[4]
        block = f"output_blocks_{i * 3 + j}"
    elif m := re.match(r"lora_unet_mid_block_(attentions|resnets)_(\d+)_(.+)", key):
        kind, j, rest = m[1], int(m[2]), m[3]
        return f"diffusion_model_middle_block_{1 if kind == 'attentions' else j * 2}_{resnet.get(rest, rest)}"
    else:
        return key
    return f"diffusion_model_{block}_{1 if kind == 'attentions' else 0}_{resnet.get(rest, rest) if kind == 'resnets' else rest}"


def test_sdxl_kohya_names_are_the_modules_a1111_finds_for_every_layer_of_the_full_unet():
    """Every layer the `unet` target set adapts in the full SDXL UNet (on the meta device): our
    kohya SDXL key is the SGM module that A1111's published table converts the diffusers-named
    key to, so A1111/Forge find each layer under either naming."""
    from diffusers import UNet2DConditionModel

    from dbdpo.lora import TARGET_SETS
    from tests.test_bench import bench_module

    arch_config = bench_module("architectures").arch_config

    with torch.device("meta"):
        unet = UNet2DConditionModel(**arch_config("sdxl")["unet"])
    targets = TARGET_SETS["unet"]
    modules = [n for n, _ in unet.named_modules() if any(n == t or n.endswith("." + t) for t in targets)]
    assert len(modules) > 700  # the 70 transformer blocks' attentions and feed-forwards, and the resnets
    state = {f"{m}.lora_{ab}.weight": torch.zeros(1, 1) for m in modules for ab in "AB"}
    ours = {k.removesuffix(".lora_down.weight") for k in to_kohya(state, sdxl=True) if k.endswith(".lora_down.weight")}
    diffusers_named = {k.removesuffix(".lora_down.weight") for k in to_kohya(state) if k.endswith(".lora_down.weight")}
    assert ours == {a1111_compvis_name(k).replace("diffusion_model_", "lora_unet_", 1) for k in diffusers_named}
    assert len(ours) == len(modules) and not any("down_blocks" in k or "up_blocks" in k for k in ours)
