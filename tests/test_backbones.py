import warnings

import numpy as np
import pytest
import torch
from diffusers import StableDiffusionPipeline, StableDiffusionXLPipeline
from safetensors.torch import load_file, save_file

from dbdpo.backbones import BackboneError, load_backbone
from dbdpo.config import ModelConfig
from dbdpo.tokenizer import clip_tokenizer
from dbdpo.world.architecture import WORLD_VAE, WORLD_WEIGHTS
from dbdpo.world.backbone import (
    CONCEPT_TOKEN_ID,
    PROBE_IDS,
    STORED_IDS,
    STORED_ROWS,
    TOKEN_EMBEDDING,
    build_world_pipeline,
    dense_token_embedding,
    initial_token_embedding,
    load_world_part,
)


def test_tokenizer_is_the_real_clip_bpe():
    # ids of OpenAI CLIP / open_clip for this prompt (docs/environment.md)
    assert clip_tokenizer()("a photo of sks dog").input_ids == [49406, 320, 1125, 539, 48136, 1929, 49407]
    assert clip_tokenizer().model_max_length == 77


def test_tiny_backbone_is_a_deterministic_sd_pipeline():
    a, b = load_backbone(ModelConfig()), load_backbone(ModelConfig())
    assert isinstance(a.pipe, StableDiffusionPipeline) and not a.is_sdxl
    assert a.resolution == 64 and a.pipe.scheduler.config.prediction_type == "epsilon"
    for module in ("unet", "vae", "text_encoder"):
        pa, pb = getattr(a.pipe, module).state_dict(), getattr(b.pipe, module).state_dict()
        assert all(torch.equal(pa[k], pb[k]) for k in pa), module
        # every part is the shipped trained world model, not a random init
        shipped = load_file(str(WORLD_WEIGHTS[module]))
        if module == "text_encoder":
            shipped = dense_token_embedding(shipped, WORLD_WEIGHTS[module])
        assert set(shipped) == set(pa) and all(torch.equal(shipped[k].float(), pa[k]) for k in pa), module
    untrained = build_world_pipeline(trained=False)
    assert not torch.equal(untrained.unet.conv_in.weight, a.pipe.unet.conv_in.weight)


def test_shipped_world_weights_fit_the_package_budget():
    """Issue 10: the world's weights ship in the package, 30 MB in all at most."""
    shipped = sorted(WORLD_WEIGHTS["unet"].parent.glob("*.safetensors"))
    assert len(shipped) == 4 and sum(p.stat().st_size for p in shipped) <= 30_000_000


def test_text_encoder_ships_its_trained_token_rows_and_replays_the_rest():
    stored = load_file(str(WORLD_WEIGHTS["text_encoder"]))
    assert TOKEN_EMBEDDING not in stored
    ids, rows, probes = stored[STORED_IDS], stored[STORED_ROWS], stored[PROBE_IDS]
    initial = initial_token_embedding()
    trained = ~torch.isin(ids, probes)
    # the world's caption words were trained, and only they; the concept token was not
    caption_ids = set(clip_tokenizer()("a photo of a big red striped toy on the beach").input_ids)
    assert caption_ids <= set(ids[trained].tolist()) and 60 <= int(trained.sum()) <= 200
    assert (rows[trained] != initial[ids[trained]]).any(dim=1).all()
    assert CONCEPT_TOKEN_ID in probes.tolist() and torch.equal(rows[~trained], initial[probes])
    # the loaded embedding: the init everywhere but the trained rows, whatever the build's seed
    encoder = build_world_pipeline(seed=5).text_encoder
    weight = encoder.get_input_embeddings().weight.detach()
    assert torch.equal(weight[ids], rows.float())
    others = torch.ones(len(weight), dtype=torch.bool)
    others[ids] = False
    assert torch.equal(weight[others], initial[others].float())


def test_a_replay_that_differs_from_the_stored_probes_is_a_clear_error(tmp_path, monkeypatch):
    """A library that initializes the text encoder differently must not load silently wrong."""
    stored = load_file(str(WORLD_WEIGHTS["text_encoder"]))
    probe_row = torch.searchsorted(stored[STORED_IDS], stored[PROBE_IDS][0])
    stored[STORED_ROWS][probe_row] += 0.01
    altered = tmp_path / "world_text_encoder.safetensors"
    save_file(stored, str(altered))
    monkeypatch.setitem(WORLD_WEIGHTS, "text_encoder", altered)
    encoder = build_world_pipeline(trained=False).text_encoder
    with pytest.raises(RuntimeError, match=r"world_text_encoder.safetensors: .*replays it differently.*constraints.txt"):
        load_world_part(encoder, "text_encoder")


def test_tiny_vae_decodes_latents_to_distinct_images():
    """The shipped VAE is trained: different latents give visibly different images."""
    vae = build_world_pipeline().vae
    latents = torch.randn(4, 4, 16, 16, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():  # as the pipeline decodes: unit-scale latents / scaling_factor
        images = vae.decode(latents / vae.config.scaling_factor).sample
    per_image_mean = images.mean(dim=(1, 2, 3))
    assert images.std().item() > 0.2
    assert (per_image_mean.max() - per_image_mean.min()).item() > 0.02


def _one_image(pipe) -> np.ndarray:
    out = pipe("a photo of sks toy", num_inference_steps=2, generator=torch.Generator().manual_seed(0),
               output_type="np")
    return out.images[0]


def test_local_directory_loads_through_the_sd_code_path(tmp_path):
    tiny = build_world_pipeline()
    tiny.save_pretrained(tmp_path / "sd")
    loaded = load_backbone(ModelConfig(backbone="sd", path=str(tmp_path / "sd")))
    assert isinstance(loaded.pipe, StableDiffusionPipeline) and loaded.resolution == 64
    np.testing.assert_allclose(_one_image(loaded.pipe), _one_image(build_world_pipeline()), atol=1e-5)


def test_uncached_hub_id_offline_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(BackboneError, match=r"not in the local Hugging Face cache and HF_HUB_OFFLINE is set"):
        load_backbone(ModelConfig(backbone="sd", path="stabilityai/stable-diffusion-2-1-base"))


def test_missing_local_path_is_a_clear_error(tmp_path):
    with pytest.raises(BackboneError, match="is not a directory with a diffusers pipeline"):
        load_backbone(ModelConfig(backbone="sd", path=str(tmp_path / "nowhere")))
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match="no model_index.json in .*empty; expected a diffusers pipeline"):
        load_backbone(ModelConfig(backbone="sd", path=str(tmp_path / "empty")))


def test_tiny_sd2_loads_as_sd_with_v_prediction(tiny_dirs):
    backbone = load_backbone(ModelConfig(backbone="sd", path=str(tiny_dirs["sd2"])))
    assert backbone.pipe.scheduler.config.prediction_type == "v_prediction" and not backbone.is_sdxl
    assert backbone.pipe.unet.config.use_linear_projection  # SD 2.x's attention projections
    assert backbone.training_scheduler().config.prediction_type == "v_prediction"
    assert type(backbone.pipe.scheduler).__name__ == "DDIMScheduler"


def test_tiny_sdxl_loads_as_sdxl_with_two_text_encoders(tiny_dirs):
    backbone = load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"])))
    assert isinstance(backbone.pipe, StableDiffusionXLPipeline) and backbone.is_sdxl
    assert backbone.pipe.text_encoder_2 is not None and backbone.pipe.scheduler.config.prediction_type == "epsilon"
    assert backbone.pipe.unet.config.addition_embed_type == "text_time"
    assert _one_image(backbone.pipe).shape == (64, 64, 3)


@pytest.mark.parametrize("arch", ["sd2", "sdxl"])
def test_tiny_folders_ship_their_tokenizers_as_the_hub_checkpoints_do(tiny_dirs, arch):
    """vocab.json and merges.txt (the files dbdpo.preflight downloads), no tokenizer.json: they
    load into the tokenizer clip_tokenizer() builds, the same ids to the last padding token."""
    from transformers import CLIPTokenizer

    reference = clip_tokenizer()
    for name in ("tokenizer",) if arch == "sd2" else ("tokenizer", "tokenizer_2"):
        folder = tiny_dirs[arch] / name
        assert sorted(p.name for p in folder.iterdir()) == ["merges.txt", "tokenizer_config.json", "vocab.json"]
        loaded = CLIPTokenizer.from_pretrained(folder)
        assert loaded.get_vocab() == reference.get_vocab() and loaded.model_max_length == 77
        assert loaded.all_special_tokens == reference.all_special_tokens
        for text in ("a photo of sks toy in the jungle, with a Blue hat!", "", "sks " * 100, "naïve café 東京"):
            ours, theirs = (t(text, padding="max_length", max_length=77, truncation=True) for t in (loaded, reference))
            assert ours.input_ids == theirs.input_ids and ours.attention_mask == theirs.attention_mask


def test_resolution_override_and_its_validation(tiny_dirs):
    backbone = load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"]), resolution=32))
    assert backbone.resolution == 32
    # the world VAE downsamples 4x and its UNet twice more: pixels in steps of 16 (SD: 8 x 8 = 64)
    with pytest.raises(BackboneError, match="model.resolution=40: this UNet needs a multiple of 16 pixels"):
        load_backbone(ModelConfig(resolution=40))


def test_incomplete_or_mismatched_pipeline_folders_fail_before_loading(tiny_dirs, tmp_path):
    import shutil

    with pytest.raises(BackboneError, match="holds a StableDiffusionXLPipeline.*set model.backbone: sdxl"):
        load_backbone(ModelConfig(backbone="sd", path=str(tiny_dirs["sdxl"])))
    with pytest.raises(BackboneError, match="set model.backbone: sd$"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sd2"])))

    broken = tmp_path / "sdxl"
    shutil.copytree(tiny_dirs["sdxl"], broken)
    shutil.rmtree(broken / "text_encoder_2")
    with pytest.raises(BackboneError, match=r"text_encoder_2 is missing; the download is incomplete"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(broken)))
    shutil.copytree(tiny_dirs["sdxl"] / "text_encoder_2", broken / "text_encoder_2")
    weights = broken / "unet" / "diffusion_pytorch_model.safetensors"
    weights.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:00\nsize 10\n")
    with pytest.raises(BackboneError, match="is a Git LFS pointer, not weights; run `git lfs pull`"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(broken)))
    weights.unlink()
    (broken / "unet" / "diffusion_pytorch_model.bin").write_bytes(b"pickle")
    with pytest.raises(BackboneError, match=r"no .safetensors weights in .*unet \(pickled .bin weights are not loaded\)"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(broken)))



def test_weight_variant_and_a_separate_vae(tiny_dirs, tmp_path):
    from diffusers import AutoencoderKL

    from dbdpo.tiny import build_tiny_pipeline

    build_tiny_pipeline("sdxl").save_pretrained(tmp_path / "fp16", variant="fp16")
    assert (tmp_path / "fp16/unet/diffusion_pytorch_model.fp16.safetensors").is_file()
    with pytest.raises(BackboneError, match=r"no .safetensors weights in .*unet; it has weights of model.variant fp16"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(tmp_path / "fp16")))
    with pytest.raises(BackboneError, match=r"no .safetensors weights in .*unet for model.variant=fp16; it has "
                                            r"weights of model.variant None"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"]), variant="fp16"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        variant = load_backbone(ModelConfig(backbone="sdxl", path=str(tmp_path / "fp16"), variant="fp16"))
    assert variant.pipe.unet.conv_in.weight.dtype == torch.float32  # fp16 files load as fp32 on a CPU
    assert not [w for w in caught if "torch_dtype" in str(w.message)]  # diffusers >= 0.40 calls it dtype
    default = load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"])))
    torch.testing.assert_close(variant.pipe.unet.conv_in.weight, default.pipe.unet.conv_in.weight, atol=1e-3, rtol=1e-3)

    torch.manual_seed(5)
    AutoencoderKL(**WORLD_VAE).save_pretrained(tmp_path / "vae")  # e.g. an fp16-safe VAE
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with_vae = load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"]), vae=str(tmp_path / "vae")))
    assert not [w for w in caught if "torch_dtype" in str(w.message)]
    assert torch.equal(with_vae.pipe.vae.encoder.conv_in.weight,
                       AutoencoderKL.from_pretrained(tmp_path / "vae").encoder.conv_in.weight)
    assert not torch.equal(with_vae.pipe.vae.encoder.conv_in.weight, default.pipe.vae.encoder.conv_in.weight)
    # a pipeline folder's vae/ works too; a folder without a VAE config does not
    other = load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"]), vae=str(tiny_dirs["sd2"])))
    assert torch.equal(other.pipe.vae.encoder.conv_in.weight, default.pipe.vae.encoder.conv_in.weight)
    (tmp_path / "empty").mkdir()
    with pytest.raises(BackboneError, match=r"model.vae='.*empty': no config.json in .*empty or its vae/; "
                                            r"expected an AutoencoderKL folder"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"]), vae=str(tmp_path / "empty")))
    with pytest.raises(BackboneError, match=r"model.vae='.*unet' does not hold a loadable AutoencoderKL \(ValueError"):
        load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"]), vae=str(tiny_dirs["sdxl"] / "unet")))
