import pytest
import torch

from dbdpo.backbones import build_tiny_pipeline
from dbdpo.lora import add_lora, load_lora, lora_rank, lora_state, merge_into, merged, save_lora, stack


def random_lora(seed: int, rank: int = 4):
    """A LoRA with non-zero B (a fresh adapter has B = 0 and changes nothing)."""
    pipe = build_tiny_pipeline()
    add_lora(pipe.unet, rank, "x")
    g = torch.Generator().manual_seed(seed)
    return {k: 0.2 * torch.randn(v.shape, generator=g) for k, v in lora_state(pipe.unet, "x").items()}


def unet_output(unet):
    g = torch.Generator().manual_seed(0)
    sample = torch.randn(2, 4, 32, 32, generator=g)
    text = torch.randn(2, 77, 32, generator=g)
    with torch.no_grad():
        return unet(sample, torch.tensor([10, 500]), text).sample


def test_save_load_roundtrip_is_exact(tmp_path):
    state = random_lora(0)
    save_lora(build_tiny_pipeline(), state, tmp_path / "lora")
    loaded = load_lora(tmp_path / "lora")
    assert set(loaded) == set(state) and all(torch.equal(loaded[k], state[k]) for k in state)
    assert not list(tmp_path.glob(".tmp-*"))


def test_merge_matches_diffusers_load_lora_weights(tmp_path):
    state = random_lora(0)
    save_lora(build_tiny_pipeline(), state, tmp_path / "lora")
    by_diffusers = build_tiny_pipeline()
    by_diffusers.load_lora_weights(tmp_path / "lora")
    ours = build_tiny_pipeline()
    merge_into(ours.unet, load_lora(tmp_path / "lora"))
    base = unet_output(build_tiny_pipeline().unet)
    expected = unet_output(by_diffusers.unet)
    assert (expected - base).abs().max() > 1e-3  # the LoRA does change the output
    torch.testing.assert_close(unet_output(ours.unet), expected, atol=1e-5, rtol=1e-4)


def test_stacked_lora_equals_applying_both(tmp_path):
    first, second = random_lora(1), random_lora(2)
    both = stack(first, second)
    assert lora_rank(both) == 8
    one_by_one = build_tiny_pipeline()
    merge_into(one_by_one.unet, first)
    merge_into(one_by_one.unet, second)
    stacked = build_tiny_pipeline()
    merge_into(stacked.unet, both)
    torch.testing.assert_close(unet_output(stacked.unet), unet_output(one_by_one.unet), atol=1e-5, rtol=1e-4)
    # ...and the saved stack loads in diffusers as one rank-8 adapter with the same output
    save_lora(build_tiny_pipeline(), both, tmp_path / "stacked")
    pipe = build_tiny_pipeline()
    pipe.load_lora_weights(tmp_path / "stacked")
    torch.testing.assert_close(unet_output(pipe.unet), unet_output(stacked.unet), atol=1e-5, rtol=1e-4)


def test_merged_context_restores_base_weights_exactly():
    pipe = build_tiny_pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    with merged(pipe.unet, random_lora(3)):
        assert not torch.equal(pipe.unet.state_dict()["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"],
                               before["down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q.weight"])
    assert all(torch.equal(v, before[k]) for k, v in pipe.unet.state_dict().items())


def test_missing_lora_dir_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="models/round_0/pytorch_lora_weights.safetensors: no LoRA weights"):
        load_lora(tmp_path / "models" / "round_0")


def test_disabled_adapter_is_exactly_the_base_model():
    """The DPO reference relies on this: adapter disabled == the (merged) start model."""
    pipe = build_tiny_pipeline()
    base = unet_output(pipe.unet)
    add_lora(pipe.unet, 4, "dpo")
    with torch.no_grad():
        for name, p in pipe.unet.named_parameters():
            if "lora_B" in name:
                p.normal_()
    assert (unet_output(pipe.unet) - base).abs().max() > 1e-3
    pipe.unet.disable_adapters()
    assert torch.equal(unet_output(pipe.unet), base)
