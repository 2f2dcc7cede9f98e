import dataclasses
import math

import pytest
import torch

from dbdpo.backbones import Backbone, load_backbone
from dbdpo.conditioning import TextConditioning, encode_prompts
from dbdpo.config import ConceptConfig, DpoConfig, FinetuneConfig, ModelConfig
from dbdpo.data import load_concept
from dbdpo.dpo import PreferenceData, RankedData, dpo_errors, train_dpo, train_rank_dpo
from dbdpo.dreambooth import train_dreambooth
from dbdpo.errors import ConfigError, DataError
from dbdpo.lora import TARGET_SETS, merge_into
from dbdpo.losses import diffusion_dpo_loss
from dbdpo.training import MAX_PROBE_RATIO, TrainingDiverged, training_target
from tests.conftest import pipeline
from tests.test_lora import random_lora


def tiny() -> Backbone:
    return load_backbone(ModelConfig())


def random_preferences(backbone: Backbone, num_images=6, num_pairs=5) -> PreferenceData:
    g = torch.Generator().manual_seed(0)
    return PreferenceData(
        latents=torch.randn(num_images, 4, 16, 16, generator=g),
        sizes=torch.tensor([[64.0, 64, 0, 0, 64, 64]]).repeat(num_images, 1) if backbone.is_sdxl else None,
        text=encode_prompts(backbone, ["a photo of sks toy", "a sks toy in the snow"]),
        winner=torch.randint(0, num_images, (num_pairs,), generator=g),
        loser=torch.randint(0, num_images, (num_pairs,), generator=g),
        prompt=torch.randint(0, 2, (num_pairs,), generator=g),
    )


def random_ranked(backbone: Backbone) -> RankedData:
    """Two ranked lists of K = 3 random latents, best first."""
    data = random_preferences(backbone)
    return RankedData(latents=data.latents, sizes=data.sizes, text=data.text,
                      images=torch.tensor([[0, 1, 2], [3, 4, 5]]),
                      preference=torch.tensor([[1.0, 0.5, 0.0], [1.0, 0.5, 0.0]]), prompt=torch.tensor([0, 1]))


def test_step_zero_policy_equals_reference_exactly():
    """A fresh DPO adapter (B = 0) must leave the model unchanged: inside = 0, loss = log 2."""
    backbone = tiny()
    merge_into(backbone.pipe.unet, random_lora(0))  # a non-trivial start model
    _, rows = train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=1, batch_size=3))
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert rows[0]["reward_margin"] == 0.0 and rows[0]["implicit_accuracy"] == 0.0
    assert rows[0]["policy_error"] == rows[0]["reference_error"]


@pytest.mark.parametrize("loss", ["diffusion_dpo", "rank_dpo"])
def test_diverged_dpo_stops_with_the_step_and_the_params_to_lower(loss):
    """lr 1e30: Adam's first update (about lr in size) blows the LoRA up, so the next step's
    loss or gradient is inf/NaN."""
    backbone = tiny()
    cfg = DpoConfig(loss=loss, steps=20, batch_size=2, learning_rate=1e30, beta=1e9)
    with pytest.raises(TrainingDiverged, match=r"(dpo|rank_dpo) diverged at step [0-9]+: the (loss|gradient) is "
                                               r"not finite .*lower dpo.learning_rate \(now 1e\+30\) or dpo.beta "
                                               r"\(now 1e\+09\)"):
        if loss == "diffusion_dpo":
            train_dpo(backbone, random_preferences(backbone), cfg)
        else:
            train_rank_dpo(backbone, random_ranked(backbone), cfg)


@pytest.mark.parametrize("lr, beta, steps", [(1.0, 2500.0, 12), (10.0, 1e9, 3)])
def test_a_finite_but_ruined_dpo_run_stops_before_a_model_is_written(lr, beta, steps):
    """Too high a rate fits the DPO objective (accuracy 1, loss near 0) while the model stops
    denoising: its error on the same batches grows about 10x the start model's, where a healthy
    run stays near 1x (next test). Such runs once ended with exit 0 and a ruined LoRA."""
    backbone = tiny()
    with pytest.raises(TrainingDiverged, match=r"dpo diverged by step [0-9]+: the model's denoising error is "
                                               r"[0-9.]+x the start model's on the same batches .*lower "
                                               r"dpo.learning_rate"):
        train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=steps, batch_size=3, learning_rate=lr,
                                                                    beta=beta))


@pytest.mark.slow
def test_a_healthy_dpo_run_stays_far_inside_the_health_bound():
    """The default DPO rate: the windowed error ratio the guard watches stays well under its
    bound (the margin the bound rests on; the default run's rounds stay under 1.3x as well)."""
    from dbdpo.training import HEALTH_WINDOW, MAX_ERROR_RATIO

    backbone = tiny()
    _, rows = train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=40, batch_size=3))
    ratios = [sum(r["policy_error"] for r in rows[max(0, n - HEALTH_WINDOW + 1):n + 1])
              / sum(r["reference_error"] for r in rows[max(0, n - HEALTH_WINDOW + 1):n + 1]) for n in range(len(rows))]
    assert max(ratios) < MAX_ERROR_RATIO / 2, max(ratios)


def test_dpo_clips_the_gradient_norm_and_decays_the_weights_when_asked():
    """dpo.max_grad_norm and dpo.weight_decay, as diffusers' DPO scripts: a norm clipped to
    1e-12 leaves Adam's step at about 1e-4 of its size (its eps dominates such a gradient), and
    weight decay changes the LoRA that the same draws train."""
    def trained(**knobs):
        backbone = tiny()
        state, _ = train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=2, batch_size=3, **knobs))
        return torch.cat([v.flatten() for k, v in sorted(state.items()) if k.endswith("lora_B.weight")])

    plain, clipped = trained(), trained(max_grad_norm=1e-12)
    assert clipped.norm() < 1e-2 * plain.norm()
    assert torch.equal(trained(max_grad_norm=1e6), plain)  # a bound above the norm changes nothing
    assert not torch.equal(trained(weight_decay=0.5), plain)


def test_diverged_dreambooth_stops_with_the_step_and_the_param_to_lower():
    from PIL import Image

    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (64, 64), (30, 30, 200))]
    cfg = FinetuneConfig(steps=20, batch_size=2, learning_rate=1e30, lora_rank=4)
    with pytest.raises(TrainingDiverged, match=r"finetune diverged at step [0-9]+: .*lower finetune.learning_rate "
                                               r"\(now 1e\+30\)"):
        train_dreambooth(tiny(), images, "a photo of sks toy", cfg)


def test_a_finite_but_ruined_dreambooth_run_stops_before_a_model_is_written(in_repo):
    """30x the default rate: the loss stays finite while the model stops denoising its own
    concept images: its error on the fixed probe batch climbs past the bound by step 9, where
    the default run's falls (tests/test_claims.py). Its last step is probed before
    train_dreambooth returns, so nothing reaches the stage's writes."""
    concept = load_concept(ConceptConfig(dir="data/concept"))
    with pytest.raises(TrainingDiverged, match=r"finetune diverged by step 9: the model's denoising error on a "
                                               r"fixed batch of the training images is [0-9.]+x the start model's "
                                               r".*lower finetune.learning_rate \(now 0.03\)"):
        train_dreambooth(tiny(), concept, "a photo of sks toy", FinetuneConfig(steps=10, learning_rate=3e-2))


@pytest.mark.slow
def test_the_probe_is_logged_every_probe_every_steps_and_at_the_last(in_repo):
    """probe_ratio: the fixed batch's error over the model-as-loaded's, below 1 once DreamBooth
    has fit the concept's images a little."""
    from dbdpo import dreambooth

    concept = load_concept(ConceptConfig(dir="data/concept"))
    cfg = FinetuneConfig(steps=dreambooth.PROBE_EVERY + 2, batch_size=2, lora_rank=4)
    _, rows = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg)
    probed = [r["step"] for r in rows if "probe_ratio" in r]
    assert probed == [dreambooth.PROBE_EVERY - 1, cfg.steps - 1]
    assert all(0 < r["probe_ratio"] < 1 for r in rows if "probe_ratio" in r)


def test_reference_is_the_rounds_start_model_not_the_base():
    start = random_lora(0)
    backbone = tiny()
    merge_into(backbone.pipe.unet, start)
    data = random_preferences(backbone)
    cfg = DpoConfig(steps=1, batch_size=3, seed=5, min_timestep=0)  # the draw below: every timestep
    _, rows = train_dpo(backbone, data, cfg)

    # Recompute the step-0 reference error with independent copies of start and base models,
    # drawing the same batch, noise and timesteps as train_dpo does.
    def reference_error(unet) -> float:
        gen = torch.Generator().manual_seed(cfg.seed)
        idx = torch.randint(0, len(data.winner), (cfg.batch_size,), generator=gen)
        noise = torch.randn((cfg.batch_size, 4, 16, 16), generator=gen)
        t = torch.randint(0, 1000, (cfg.batch_size,), generator=gen)
        with torch.no_grad():
            w, l = dpo_errors(unet, tiny().training_scheduler(), data, idx, noise, t, "cpu")
        return torch.cat([w, l]).mean().item()

    start_model = tiny()
    merge_into(start_model.pipe.unet, start)
    assert rows[0]["reference_error"] == pytest.approx(reference_error(start_model.pipe.unet), abs=1e-6)
    assert rows[0]["reference_error"] != pytest.approx(reference_error(tiny().pipe.unet), abs=1e-4)


@pytest.mark.slow
def test_dpo_training_changes_only_the_adapter_and_lowers_the_loss():
    backbone = tiny()
    base_weights = {k: v.clone() for k, v in backbone.pipe.unet.state_dict().items()}
    data = random_preferences(backbone, num_images=4, num_pairs=2)
    data = PreferenceData(data.latents, None, data.text, winner=torch.tensor([0, 1]), loser=torch.tensor([2, 3]),
                          prompt=torch.tensor([0, 1]))
    state, _ = train_dpo(backbone, data, DpoConfig(steps=60, batch_size=4, learning_rate=3e-3, beta=5000,
                                                                 min_timestep=0))
    assert any(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)
    unet = backbone.pipe.unet
    for key, value in unet.state_dict().items():
        if "lora" not in key:
            assert torch.equal(value, base_weights[key.replace(".base_layer", "")]), key

    # The DPO loss on a fixed held-out draw of noise and timesteps: log 2 before training.
    g = torch.Generator().manual_seed(123)
    idx = torch.arange(2).repeat(32)
    noise, t = torch.randn(64, 4, 16, 16, generator=g), torch.randint(0, 1000, (64,), generator=g)
    scheduler = backbone.training_scheduler()
    with torch.no_grad():
        policy = dpo_errors(unet, scheduler, data, idx, noise, t, "cpu")
        unet.disable_adapters()
        reference = dpo_errors(unet, scheduler, data, idx, noise, t, "cpu")
    loss, _ = diffusion_dpo_loss(*policy, *reference, beta=5000)
    assert loss.item() < math.log(2) - 0.1


@pytest.mark.slow
@pytest.mark.parametrize("targets, lr", [("attention", 3e-3), ("unet", 1e-3)])
def test_dreambooth_lowers_the_denoising_loss_on_the_concept(in_repo, targets, lr):

    concept = load_concept(ConceptConfig(dir="data/concept"))
    state, rows = train_dreambooth(tiny(), concept, "a photo of sks toy",
                                   FinetuneConfig(steps=60, batch_size=2, learning_rate=lr, lora_targets=targets))
    layers = [n for n, _ in tiny().pipe.unet.named_modules()
              if any(n == t or n.endswith("." + t) for t in TARGET_SETS[targets])]
    assert len(state) == 2 * len(layers) and rows[0]["step"] == 0  # A and B of every targeted layer
    assert any(".resnets." in k for k in state) == (targets == "unet")
    early = sum(r["loss"] for r in rows[:15]) / 15
    late = sum(r["loss"] for r in rows[-15:]) / 15
    assert late < early


@pytest.mark.parametrize("train_text_encoder", [False, True])
def test_full_dreambooth_trains_the_unet_and_the_text_encoder_only_when_asked(in_repo, train_text_encoder):

    concept = load_concept(ConceptConfig(dir="data/concept"))
    backbone = tiny()
    before = {part: {k: v.clone() for k, v in getattr(backbone.pipe, part).state_dict().items()}
              for part in ("unet", "text_encoder", "vae")}
    cfg = FinetuneConfig(method="full", train_text_encoder=train_text_encoder, steps=3, batch_size=2,
                         learning_rate=1e-4)
    state, rows = train_dreambooth(backbone, concept, "a photo of sks toy", cfg)
    assert state is None and len(rows) == 3 and all(math.isfinite(r["loss"]) for r in rows)
    changed = {part: any(not torch.equal(v, getattr(backbone.pipe, part).state_dict()[k]) for k, v in weights.items())
               for part, weights in before.items()}
    assert changed == {"unet": True, "text_encoder": train_text_encoder, "vae": False}
    # the pipeline is left frozen, ready to sample and save
    assert not any(p.requires_grad for p in backbone.pipe.unet.parameters())


def test_training_target_epsilon_and_v_prediction_by_hand():
    """v = sqrt(a_t) * eps - sqrt(1 - a_t) * x0 (Salimans & Ho 2022), a_t = alphas_cumprod[t]."""
    from diffusers import DDPMScheduler

    from dbdpo.world.architecture import SD_SCHEDULE

    schedule = {k: v for k, v in SD_SCHEDULE.items() if k != "set_alpha_to_one"}
    x0, eps = torch.full((2, 1, 1, 1), 2.0), torch.full((2, 1, 1, 1), 0.5)
    t = torch.tensor([0, 999])
    eps_sched = DDPMScheduler(**schedule)
    assert torch.equal(training_target(eps_sched, x0, eps, t), eps)
    v_sched = DDPMScheduler(**{**schedule, "prediction_type": "v_prediction"})
    a = v_sched.alphas_cumprod[t].view(2, 1, 1, 1)
    expected = a.sqrt() * 0.5 - (1 - a).sqrt() * 2.0
    torch.testing.assert_close(training_target(v_sched, x0, eps, t), expected)
    # at t=0 almost all signal: v ~ eps - 0.03*x0; at t=999 almost all noise: v ~ -x0
    assert training_target(v_sched, x0, eps, t)[1].item() == pytest.approx(-2.0, abs=0.2)


def test_prior_preservation_adds_the_class_loss(in_repo):

    concept = load_concept(ConceptConfig(dir="data/concept"))
    cfg = FinetuneConfig(steps=3, batch_size=2)
    _, plain = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg)
    _, prior = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg, class_images=concept[:2],
                                class_prompt="a photo of a toy")
    # one loss (no copy of it as instance_loss), beside the rate and the gradient's norm
    assert all(set(r) - {"probe_ratio"} == {"step", "loss", "learning_rate", "grad_norm"} for r in plain)
    assert all(r["learning_rate"] == cfg.learning_rate and r["grad_norm"] > 0 for r in plain + prior)
    assert all(r["loss"] == pytest.approx(r["instance_loss"] + cfg.prior_loss_weight * r["prior_loss"])
               and r["prior_loss"] > 0 for r in prior)


@pytest.mark.slow
def test_min_snr_weighting_weighs_dreambooth_steps_and_is_off_above_every_snr(in_repo):
    """finetune.snr_gamma: gamma 1 scales down the nearly clean timesteps, so the same first
    batch (same noise, same timesteps) scores a lower loss and the LoRA trains elsewhere; a
    gamma above every SNR of the schedule weighs each step by exactly 1: the unweighted run."""

    concept = load_concept(ConceptConfig(dir="data/concept"))
    cfg = FinetuneConfig(steps=3, batch_size=4, lora_rank=4)
    plain_state, plain = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg)
    backbone = tiny()
    alphas_cumprod = backbone.training_scheduler().alphas_cumprod
    max_snr = (alphas_cumprod / (1 - alphas_cumprod)).max().item()
    above_state, above = train_dreambooth(backbone, concept, "a photo of sks toy",
                                          dataclasses.replace(cfg, snr_gamma=2 * max_snr))
    assert above == plain and all(torch.equal(above_state[k], v) for k, v in plain_state.items())
    weighted_state, weighted = train_dreambooth(tiny(), concept, "a photo of sks toy",
                                                dataclasses.replace(cfg, snr_gamma=1.0))
    assert weighted[0]["loss"] < plain[0]["loss"]
    assert not all(torch.equal(weighted_state[k], v) for k, v in plain_state.items())
    # the class images' error is weighed as the concept's (the same first draws in both runs)
    with_prior = {"class_images": concept[:2], "class_prompt": "a photo of a toy"}
    _, plain = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg, **with_prior)
    _, weighted = train_dreambooth(tiny(), concept, "a photo of sks toy",
                                   dataclasses.replace(cfg, snr_gamma=1.0), **with_prior)
    prior_part = [rows[0]["loss"] - rows[0]["instance_loss"] for rows in (plain, weighted)]
    assert 0 < prior_part[1] < 0.9 * prior_part[0]


def test_a_masked_dreambooth_loss_weighs_the_concepts_cells_and_a_uniform_mask_is_the_plain_loss(in_repo):
    """loss_weights (N, 1, h, w): a uniform map is the unweighted run (the same first loss, the
    same LoRA up to rounding); a map that leaves out half of each photo trains another LoRA;
    a map that does not fit the latents is refused before anything trains."""
    concept = load_concept(ConceptConfig(dir="data/concept"))
    cfg = FinetuneConfig(steps=3, batch_size=4, lora_rank=4)
    plain_state, plain = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg)
    backbone = tiny()
    side = backbone.resolution // backbone.pipe.vae_scale_factor
    uniform_state, uniform = train_dreambooth(backbone, concept, "a photo of sks toy", cfg,
                                              loss_weights=torch.full((len(concept), 1, side, side), 0.5))
    assert [r["loss"] for r in uniform] == pytest.approx([r["loss"] for r in plain], rel=1e-5)
    assert all(torch.allclose(uniform_state[k], v, rtol=1e-4, atol=1e-7) for k, v in plain_state.items())
    left_half = torch.zeros(len(concept), 1, side, side)
    left_half[..., : side // 2] = 1
    masked_state, masked = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg, loss_weights=left_half)
    assert masked[0]["loss"] != pytest.approx(plain[0]["loss"], rel=1e-3)
    assert not all(torch.allclose(masked_state[k], v, rtol=1e-4, atol=1e-7) for k, v in plain_state.items())
    with pytest.raises(ValueError, match=r"loss_weights \(6, 1, 4, 4\): expected one map a concept image"):
        train_dreambooth(tiny(), concept, "a photo of sks toy", cfg, loss_weights=torch.ones(len(concept), 1, 4, 4))


def test_dpo_errors_regress_the_velocity_on_v_prediction_backbones(tiny_dirs):
    """SD 2.x: e(x) = mean over C,H,W of (v - v_theta(x_t, t, c))^2 with x_t = sqrt(a) x0 +
    sqrt(1 - a) eps and v = sqrt(a) eps - sqrt(1 - a) x0, a = alphas_cumprod[t], by hand."""
    backbone = load_backbone(ModelConfig(backbone="sd", path=str(tiny_dirs["sd2"])))
    scheduler = backbone.training_scheduler()
    assert scheduler.config.prediction_type == "v_prediction"
    data = random_preferences(backbone)
    g = torch.Generator().manual_seed(7)
    pair_idx, t = torch.tensor([0, 3]), torch.tensor([50, 900])
    noise = torch.randn(2, 4, 16, 16, generator=g)
    unet = backbone.pipe.unet
    with torch.no_grad():
        winner_error, loser_error = dpo_errors(unet, scheduler, data, pair_idx, noise, t, "cpu")
        a = scheduler.alphas_cumprod[t].view(2, 1, 1, 1)
        for images, error in ((data.winner, winner_error), (data.loser, loser_error)):
            x0 = data.latents[images[pair_idx]]
            x_t = a.sqrt() * x0 + (1 - a).sqrt() * noise
            pred = unet(x_t, t, data.text.hidden[data.prompt[pair_idx]]).sample
            velocity = a.sqrt() * noise - (1 - a).sqrt() * x0
            torch.testing.assert_close(error, ((pred - velocity) ** 2).mean(dim=(1, 2, 3)))
            assert not torch.allclose(error, ((pred - noise) ** 2).mean(dim=(1, 2, 3)))  # not the eps error


def test_sdxl_size_ids_by_hand():
    from PIL import Image

    from dbdpo.conditioning import size_ids

    # 300x200 (w x h) to 64: shorter side 200 -> 64 (x0.32), width 96, center crop 16 px from the left
    assert size_ids(Image.new("RGB", (300, 200)), 64) == [200, 300, 0, 16, 64, 64]
    assert size_ids(Image.new("RGB", (64, 160)), 64) == [160, 64, 48, 0, 64, 64]
    assert size_ids(Image.new("RGB", (64, 64)), 64) == [64, 64, 0, 0, 64, 64]  # a generated image


def test_sdxl_pooled_text_and_size_ids_reach_the_unet(tiny_dirs):
    backbone = load_backbone(ModelConfig(backbone="sdxl", path=str(tiny_dirs["sdxl"])))
    data = random_preferences(backbone)
    assert data.text.hidden.shape == (2, 77, 64) and data.text.pooled.shape == (2, 32)  # 32 + 32 states
    scheduler, unet = backbone.training_scheduler(), backbone.pipe.unet
    g = torch.Generator().manual_seed(0)
    args = (torch.tensor([0, 1]), torch.randn(2, 4, 16, 16, generator=g), torch.tensor([100, 600]), "cpu")
    with torch.no_grad():
        base = torch.cat(dpo_errors(unet, scheduler, data, *args))
        cropped = PreferenceData(data.latents, data.sizes + torch.tensor([0.0, 0, 40, 0, 0, 0]), data.text,
                                 data.winner, data.loser, data.prompt)
        other_pooled = PreferenceData(data.latents, data.sizes,
                                      TextConditioning(data.text.hidden, torch.zeros_like(data.text.pooled)),
                                      data.winner, data.loser, data.prompt)
        assert not torch.allclose(torch.cat(dpo_errors(unet, scheduler, cropped, *args)), base)
        assert not torch.allclose(torch.cat(dpo_errors(unet, scheduler, other_pooled, *args)), base)


@pytest.mark.slow
@pytest.mark.parametrize("arch,kind", [("sd2", "sd"), ("sdxl", "sdxl")])
def test_dreambooth_and_dpo_train_on_real_architectures(tiny_dirs, in_repo, arch, kind):

    cfg = ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))
    concept = load_concept(ConceptConfig(dir="data/concept"))
    state, rows = train_dreambooth(load_backbone(cfg), concept, "a photo of sks toy",
                                   FinetuneConfig(steps=3, batch_size=2), class_images=concept[:2],
                                   class_prompt="a photo of a toy")
    assert all(math.isfinite(r["loss"]) and r["loss"] > r["instance_loss"] for r in rows)
    assert rows[-1]["probe_ratio"] < MAX_PROBE_RATIO / 2  # a healthy run on the real architecture
    assert any(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)
    backbone = load_backbone(cfg, lora=state)
    _, rows = train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=3, batch_size=2))
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)
    assert all(math.isfinite(r["loss"]) for r in rows)

    # RankDPO: lists of K = 3 images share a timestep; same conditioning path
    backbone = load_backbone(cfg, lora=state)
    state, rows = train_rank_dpo(backbone, random_ranked(backbone), DpoConfig(loss="rank_dpo", steps=3, batch_size=2))
    assert all(math.isfinite(r["loss"]) for r in rows) and len(rows) == 3
    assert any(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)


@pytest.mark.parametrize("arch,kind", [("sd2", "sd"), ("sdxl", "sdxl")])
def test_bf16_frozen_weights_train_an_fp32_lora_under_autocast(tiny_dirs, in_repo, arch, kind):
    """The GPU code path (half-precision frozen weights, fp32 LoRA, autocast), run on the CPU
    in bf16: what `load_backbone(..., precision="bf16")` gives a stage on a GPU."""

    cfg = ModelConfig(backbone=kind, path=str(tiny_dirs[arch]))
    concept = load_concept(ConceptConfig(dir="data/concept"))
    backbone = load_backbone(cfg)
    backbone.pipe.to(dtype=torch.bfloat16)
    state, rows = train_dreambooth(backbone, concept, "a photo of sks toy", FinetuneConfig(steps=3, batch_size=2))
    assert all(v.dtype == torch.float32 for v in state.values())
    assert all(math.isfinite(r["loss"]) for r in rows)
    assert any(v.abs().max() > 0 for k, v in state.items() if "lora_B" in k)
    assert backbone.pipe.unet.conv_in.weight.dtype == torch.bfloat16

    backbone = load_backbone(cfg, lora=state)
    backbone.pipe.to(dtype=torch.bfloat16)
    _, rows = train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=3, batch_size=2))
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-7)  # B = 0: policy == reference exactly
    assert all(math.isfinite(r["loss"]) for r in rows)


def test_fp16_vae_encodes_in_fp32_when_its_config_says_force_upcast():
    from PIL import Image

    from dbdpo.training import encode_images

    images = [Image.new("RGB", (64, 64), (200, 30, 40)), Image.new("RGB", (64, 64), (20, 90, 240))]
    backbone = tiny()
    reference = encode_images(backbone, images)
    backbone.pipe.vae.to(torch.float16)
    assert backbone.pipe.vae.config.force_upcast
    seen = []  # the dtype the encoder actually computes in
    backbone.pipe.vae.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[0].dtype))
    latents = encode_images(backbone, images)
    assert seen == [torch.float32]
    assert latents.dtype == torch.float32 and backbone.pipe.vae.dtype == torch.float16  # restored
    torch.testing.assert_close(latents, reference, atol=2e-2, rtol=1e-2)  # fp16-rounded weights only


def test_check_finite_leaves_overflowing_scaled_gradients_to_the_grad_scaler():
    from dbdpo.training import check_finite

    param = torch.nn.Parameter(torch.ones(3))
    param.grad = torch.tensor([1.0, float("inf"), 0.0])
    finite_loss = torch.tensor(0.5)
    # fp16 loss scaling: the scaler skips this step and lowers the scale, training goes on
    check_finite(finite_loss, [param], 7, "dpo", "lower dpo.learning_rate", grads_scaled=True)
    with pytest.raises(TrainingDiverged, match="dpo diverged at step 7: the gradient is not finite"):
        check_finite(finite_loss, [param], 7, "dpo", "lower dpo.learning_rate")
    with pytest.raises(TrainingDiverged, match="the loss is not finite"):
        check_finite(torch.tensor(float("nan")), [param], 7, "dpo", "lower dpo.learning_rate", grads_scaled=True)
    param.grad = torch.tensor([1.0, float("nan"), 0.0])
    with pytest.raises(TrainingDiverged, match="the gradient is not finite"):
        check_finite(finite_loss, [param], 7, "dpo", "lower dpo.learning_rate")


@pytest.mark.parametrize("arch", ["world", "sdxl"])
def test_predict_feeds_a_half_precision_unet_its_own_dtype(arch):
    """Cached latents and text states are fp32; a bf16 UNet gets them in bf16 (as diffusers'
    scripts feed it), not fp32 activations under autocast. Outside autocast a dtype mismatch
    would raise."""
    from dbdpo.conditioning import predict

    pipe = pipeline(arch)
    text = encode_prompts(Backbone(pipe, 64), ["a photo of sks toy"])
    unet = pipe.unet.to(torch.bfloat16)
    size = torch.tensor([[64.0, 64, 0, 0, 64, 64]]) if arch == "sdxl" else None
    out = predict(unet, torch.randn(1, 4, 16, 16), torch.tensor([10]), text, size, "cpu")
    assert out.dtype == torch.bfloat16 and out.shape == (1, 4, 16, 16) and torch.isfinite(out).all()


def test_a_failing_reference_pass_leaves_the_adapter_enabled():
    """The reference pass disables the DPO adapter; an error inside it must not leave it off,
    or a later loop on the same model would train an adapter that is not applied."""
    from peft.tuners.tuners_utils import BaseTunerLayer

    from dbdpo.dpo import adapters_disabled
    from dbdpo.lora import add_lora

    unet = tiny().pipe.unet
    add_lora(unet, 4, "dpo")
    layers = [m for m in unet.modules() if isinstance(m, BaseTunerLayer)]
    with pytest.raises(RuntimeError, match="out of memory"):
        with adapters_disabled(unet):
            assert all(layer.disable_adapters for layer in layers)
            raise RuntimeError("CUDA out of memory")
    assert layers and not any(layer.disable_adapters for layer in layers)


@pytest.mark.parametrize("loss", ["diffusion_dpo", "rank_dpo"])
def test_dpo_draws_its_timesteps_from_the_configured_range_only(loss):
    """dpo.min_timestep / max_timestep bound every timestep the UNet sees, policy and reference
    passes alike; out of the scheduler's range, the error names both keys and the bound."""
    backbone = tiny()
    seen = []
    backbone.pipe.unet.register_forward_pre_hook(lambda _, args: seen.append(args[1].clone()))
    cfg = DpoConfig(loss=loss, steps=3, batch_size=4, min_timestep=700, max_timestep=750)
    train = train_dpo if loss == "diffusion_dpo" else train_rank_dpo
    data = random_preferences(backbone) if loss == "diffusion_dpo" else random_ranked(backbone)
    train(backbone, data, cfg)
    timesteps = torch.cat(seen)
    assert len(seen) == 6 and timesteps.min() >= 700 and timesteps.max() < 750
    assert len(timesteps.unique()) > 3  # drawn, not one fixed value
    with pytest.raises(ConfigError, match=r"dpo.min_timestep=0, dpo.max_timestep=1001 is invalid for this backbone: "
                                          r"expected 0 <= dpo.min_timestep < dpo.max_timestep <= 1000"):
        train(tiny(), data, dataclasses.replace(cfg, min_timestep=0, max_timestep=1001))


def test_a_timestep_range_beyond_the_scheduler_fails_before_any_image_is_encoded(tmp_path):
    """The pairs name images that do not exist: the range error must come first."""
    import pandas as pd

    from dbdpo.dpo import train_on_preferences
    from dbdpo.preferences import Preferences

    missing = str(tmp_path / "missing.png")
    prefs = Preferences("pairs", pd.DataFrame({"winner_path": [missing], "loser_path": [missing],
                                               "prompt": ["a sks toy in the snow"]}), {})
    with pytest.raises(ConfigError, match=r"dpo.min_timestep=1000, dpo.max_timestep=None is invalid for this backbone"):
        train_on_preferences(tiny(), prefs, DpoConfig(min_timestep=1000))
    with pytest.raises(DataError, match="missing.png: not a readable image"):  # a valid range reaches the images
        train_on_preferences(tiny(), prefs, DpoConfig(min_timestep=999))


def test_dpo_previews_sample_the_policy_and_leave_the_training_as_it_was():
    """A Preview every 2 of 3 steps and at the last: images of the model in training, drawn on
    their own seeds, so the LoRA and the log rows equal a run without previews."""
    from dbdpo.config import SamplingConfig
    from dbdpo.training import Preview

    logged = []
    preview = Preview(2, ("a photo of sks toy",), lambda step, images: logged.append((step, images)),
                      SamplingConfig(steps=2))
    backbone = tiny()
    state, rows = train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=3, batch_size=3), preview=preview)
    backbone = tiny()
    plain_state, plain_rows = train_dpo(backbone, random_preferences(backbone), DpoConfig(steps=3, batch_size=3))
    assert [step for step, _ in logged] == [1, 2] and all(len(images) == 1 for _, images in logged)
    assert logged[0][1][0].size == (64, 64)
    assert rows == plain_rows and all(torch.equal(state[k], v) for k, v in plain_state.items())


@pytest.mark.slow
def test_captions_give_each_photo_its_own_prompt_and_one_caption_for_all_is_the_plain_run(in_repo):
    """finetune.captions: per-photo prompts train another LoRA than one prompt for all; the same
    prompt given per photo is the plain run, byte for byte (the text rows it selects are the
    same)."""
    from dbdpo.dreambooth import instance_prompts

    concept = load_concept(ConceptConfig(dir="data/concept"))
    cfg = FinetuneConfig(steps=3, batch_size=2, lora_rank=4)
    plain_state, plain = train_dreambooth(tiny(), concept, "a photo of sks toy", cfg)
    listed_state, listed = train_dreambooth(tiny(), concept, ["a photo of sks toy"] * len(concept), cfg)
    assert listed == plain and all(torch.equal(listed_state[k], v) for k, v in plain_state.items())
    own = [f"a photo of sks toy, view {i}" for i in range(len(concept))]
    own_state, _ = train_dreambooth(tiny(), concept, own, cfg)
    assert not all(torch.equal(own_state[k], v) for k, v in plain_state.items())

    captions = [None, "sks toy on a table", *[None] * (len(concept) - 2)]
    assert instance_prompts(dataclasses.replace(cfg, captions=True), ConceptConfig(), captions)[:2] == [
        "a photo of sks toy", "sks toy on a table"]
    assert set(instance_prompts(cfg, ConceptConfig(), captions)) == {"a photo of sks toy"}  # captions: false
    with pytest.raises(DataError, match=r"finetune.captions: true, but no photo .* has a caption file"):
        instance_prompts(dataclasses.replace(cfg, captions=True), ConceptConfig(), [None] * 3)
