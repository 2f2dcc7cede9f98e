"""The benchmarks' peer (diffusers' DPO step) and the real-size path, run small on the CPU."""

import dataclasses
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from tests.conftest import REPO, pipeline


def bench_module(name: str):
    sys.path.insert(0, str(REPO / "bench"))
    try:
        spec = importlib.util.spec_from_file_location(f"bench_{name}", REPO / "bench" / f"{name}.py")
        module = importlib.util.module_from_spec(spec)
        sys.modules[spec.name] = module  # as an import would: dataclasses look their module up there
        spec.loader.exec_module(module)
        return module
    finally:
        sys.path.remove(str(REPO / "bench"))


def test_full_architectures_have_the_published_parameter_counts():
    architectures = bench_module("architectures")
    arch_config, arch_precision, parameter_counts = (architectures.arch_config, architectures.arch_precision,
                                                     architectures.parameter_counts)
    counts = {arch: parameter_counts(arch) for arch in architectures.PUBLISHED_PARAMETERS}
    assert counts == architectures.PUBLISHED_PARAMETERS
    # the figures as the model cards and the SDXL paper (Table 1) round them
    assert counts["sd2-base"]["unet"] // 10**6 == 865
    assert round(counts["sdxl"]["unet"] / 1e9, 1) == 2.6
    assert (counts["sdxl"]["text_encoder"] + counts["sdxl"]["text_encoder_2"]) // 10**6 == 817
    assert arch_config("sd21")["scheduler"]["prediction_type"] == "v_prediction"
    # each preset's precision on a GPU; fp32 on a CPU, as load_backbone
    assert [arch_precision(a, "cuda") for a in ("sd2-base", "sd21", "sdxl")] == ["fp16", "fp16", "bf16"]
    assert arch_precision("sdxl", "cpu") == arch_precision("sdxl", torch.device("cpu")) == "fp32"
    with pytest.raises(ValueError, match="expected one of sd2-base, sd21, sdxl"):
        parameter_counts("sd3")


@pytest.mark.parametrize("arch", ["world", "sdxl"])
def test_diffusers_dpo_starts_at_log2_trains_and_leaves_the_unet_as_it_found_it(arch):
    diffusers_dpo = bench_module("diffusers_dpo").diffusers_dpo
    pipe = pipeline(arch)
    g = torch.Generator().manual_seed(0)
    pixels = torch.rand(2, 6, 64, 64, generator=g) * 2 - 1
    sample = torch.randn(1, 4, 16, 16, generator=g)
    text = torch.randn(1, 77, pipe.unet.config.cross_attention_dim, generator=g)
    added = ({"text_embeds": torch.randn(1, 32, generator=g), "time_ids": torch.tensor([[64.0, 64, 0, 0, 64, 64]])}
             if arch == "sdxl" else None)
    before = pipe.unet(sample, torch.tensor([500]), text, added_cond_kwargs=added).sample

    rows = diffusers_dpo(pipe, pixels, ["a photo of sks toy", "a sks toy in the snow"], 3, mixed_precision="no",
                         gradient_checkpointing=False, rank=4, learning_rate=1e-2, beta=2500.0)

    # gaussian LoRA init has B = 0: policy == reference, so -log sigmoid(0) and no accuracy
    assert rows[0]["loss"] == pytest.approx(math.log(2), abs=1e-6)
    assert rows[0]["implicit_acc"] == 0.0
    assert rows[2]["loss"] != pytest.approx(math.log(2), abs=1e-6)  # the LoRA moved
    assert not getattr(pipe.unet, "peft_config", {})
    after = pipe.unet(sample, torch.tensor([500]), text, added_cond_kwargs=added).sample
    torch.testing.assert_close(after, before, rtol=0, atol=0)


@pytest.mark.slow
def test_scale_bench_runs_every_path_on_the_full_sd2_architecture(tmp_path):
    scale = bench_module("scale")
    out = tmp_path / "scale.json"
    # ours-compiled is dpo.compile, tested on a tiny SDXL in tests/test_compile.py: compiling the
    # full-size blocks here would double this test's time on 2 cores
    rows = scale.main(["--archs", "sd2-base", "--resolution", "64", "--pairs", "1", "--checkpointing", "off",
                       "--warmup", "0", "--steps", "1", "--sample-steps", "1", "--sample-batch", "1",
                       "--variants", "diffusers", "ours", "--out", str(out)])
    parts = {(r["part"], r.get("variant")): r for r in rows}
    assert set(parts) == {("cache", None), ("dpo", "diffusers"), ("dpo", "ours"), ("finetune", None),
                          ("sample", None)}
    ours, peer = parts[("dpo", "ours")], parts[("dpo", "diffusers")]
    assert ours["steps_per_s"] > 0 and peer["steps_per_s"] > 0
    # both start where DPO must: policy == reference, loss log 2
    assert [peer["first_loss"], ours["first_loss"]] == pytest.approx([math.log(2)] * 2, abs=1e-6)
    # the peer VAE-encodes both images and text-encodes the prompt every step; ours does not
    assert peer["tflop_per_step"] > ours["tflop_per_step"] > 0
    assert parts[("sample", None)]["images_per_s"] > 0 and parts[("finetune", None)]["steps_per_s"] > 0
    assert out.is_file() and '"arch": "sd2-base"' in out.read_text()


def toy_params(tmp_path, steps: int = 1, prompts: int = 1) -> Path:
    """params.yaml at toy sizes in tmp_path, every claim's path still run: `steps` DreamBooth and
    DPO steps, `prompts` training prompts a round; the angle filter's window the whole half-plane,
    so toy rounds keep their pairs; DreamBooth stopped early after half the steps, where there
    are two or more."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"].update(steps=steps, batch_size=1)
    params["frontier"]["finetune_fractions"] = [0.5] if steps >= 2 else []
    params["generate"].update(num_prompts=prompts, images_per_prompt=3, steps=2)
    params["filter"]["angle"] = 90
    params["dpo"].update(steps=steps, batch_size=steps)
    params["evaluate"].update(num_prompts=2, images_per_prompt=1, steps=2, grid_prompts=prompts)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    return tmp_path / "params.yaml"


@pytest.mark.slow
def test_claims_bench_measures_every_variant(tmp_path, in_repo):
    """bench/claims.py end to end at toy sizes: every claim's row, on both prompt sets."""
    import json

    toy_params(tmp_path, steps=2, prompts=2)
    result = bench_module("claims").main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "c.json"),
                                          "--dreambooth-seeds", "0", "1", "--dpo-seeds", "1"])
    table = result["table"]
    assert list(table) == ["base (class prompt)", "round_0", "lambda=0.5 angle, round 1", "lambda=0.5 angle, round 2",
                           "lambda=0.5 threshold, round 1", "lambda=0 angle, round 1", "lambda=1 angle, round 1",
                           "lambda=0.5 angle, 1 round of 2N"]
    assert all(v == {"held-out": 2, "held-in": 6} for v in result["images"].values())
    # gains are relative to round_0: zero for round_0 itself, finite for every other model
    assert all(abs(x) < 1e-9 for where in table["round_0"].values() for x in where.values())
    assert all(math.isfinite(x) for sets in table.values() for where in sets.values() for x in where.values())
    assert json.loads((tmp_path / "c.json").read_text())["table"] == table
    # claim (a) by DreamBooth seed: the params' seed is the table's round_0; seed 1 is trained anew
    by_seed = result["dreambooth_seeds"]
    assert list(by_seed) == [0, 1] and by_seed[0]["IS"] == -table["base (class prompt)"]["held-out"]["IS"]
    assert by_seed[1] != by_seed[0] and all(math.isfinite(x) for g in by_seed.values() for x in g.values())
    assert all(set(g) == {"IS", "TS", "IS_se", "own_prompt_IS"} for g in by_seed.values())
    # claims (b)-(d) by DPO seed: the params' seed is the table's rows; seed 1 trains anew
    by_dpo_seed = result["dpo_seeds"]
    rows = ["lambda=0.5 angle, round 1", "lambda=0.5 angle, round 2", "lambda=0.5 threshold, round 1",
            "lambda=0 angle, round 1", "lambda=1 angle, round 1"]
    assert list(by_dpo_seed) == [0, 1] and all(list(by_dpo_seed[s]) == rows for s in (0, 1))
    assert all(by_dpo_seed[0][row] == table[row] for row in rows)
    assert by_dpo_seed[1]["lambda=0.5 angle, round 2"] != table["lambda=0.5 angle, round 2"]


@pytest.mark.slow
def test_claims_bench_measures_each_concept_of_a_split_and_their_mean(tmp_path, in_repo, capsys):
    """bench/claims.py --concepts at toy sizes: each concept trains on its own photos and class
    noun, one headline row a concept, and the mean over concepts with its standard error."""
    toy_params(tmp_path)
    claims = bench_module("claims")
    result = claims.main(["--params", str(tmp_path / "params.yaml"), "--concepts", "toy_top,dog_ears",
                          "--markdown", str(tmp_path / "claims.md")])
    assert list(result["concepts"]) == ["toy_top", "dog_ears"] == list(result["headline"])
    assert result["splits"] == {"toy_top": "dev", "dog_ears": "test"}
    rows, mean = result["headline"], result["mean"]
    assert rows["toy_top"] != rows["dog_ears"]  # another concept, another DreamBooth
    for key in ("a IS", "b held-out S_0.5", "c held-in TS margin", "d held-out threshold", "e held-in one round"):
        values = [rows["toy_top"][key], rows["dog_ears"][key]]
        assert mean[key]["mean"] == pytest.approx(sum(values) / 2)
        assert mean[key]["se"] == pytest.approx(abs(values[0] - values[1]) / 2)  # std over sqrt(2) of two values
    assert "dog_ears     test  |" in capsys.readouterr().out
    assert result["commit"] == bench_module("code_version").code_commit()  # the code the figures measured
    table = (tmp_path / "claims.md").read_text().splitlines()
    assert table[2].startswith("| concept | split | (a) IS held-out | (b) IS |")
    columns = bench_module("claims_report").HEADLINE_COLUMNS
    assert table[5] == "| dog_ears | test | " + " | ".join(f"{rows['dog_ears'][k]:+.3f}" for k in columns) + " |"
    assert table[6].startswith(f"| **mean ± se** | | **{mean['a IS']['mean']:+.3f}** ± {mean['a IS']['se']:.3f} |")
    with pytest.raises(SystemExit, match="--concepts: concepts 'toy_top,toy_bottom': unknown toy_bottom"):
        claims.main(["--params", str(tmp_path / "params.yaml"), "--concepts", "toy_top,toy_bottom"])


@pytest.mark.slow
def test_frontier_bench_places_each_concepts_rounds_against_its_own_baselines(tmp_path, in_repo, capsys):
    """bench/frontier.py at toy sizes: per concept, the rounds' gains and distance beyond the
    hull of that concept's baselines; then the mean over concepts with its standard error."""
    import math

    from dbdpo.frontier import frontier_table, rounds_beyond

    toy_params(tmp_path, steps=2)
    result = bench_module("frontier").main(["--params", str(tmp_path / "params.yaml"), "--concepts", "toy_top,dog_ears",
                                            "--out", str(tmp_path / "f.json")])
    assert list(result["concepts"]) == ["toy_top", "dog_ears"] and result["splits"]["dog_ears"] == "test"
    for name, concept in result["concepts"].items():
        assert list(concept["baselines"]) == ["lora_scale_0.5", "lora_scale_1.5", "guidance_4", "guidance_12", "steps_1"]
        assert list(concept["rounds"]) == ["round_1", "round_2"]
        # the distances are those of the library's hull through this concept's baselines
        hull, _ = frontier_table(concept["baselines"])
        rows = {"round_0": {}} | {r: {"IS_gain": g["IS"], "TS_gain": g["TS"]} for r, g in concept["rounds"].items()}
        beyond = rounds_beyond(rows, hull)
        assert concept["round_0_beyond_frontier"] == beyond["round_0"] <= 0
        assert {r: g["beyond_frontier"] for r, g in concept["rounds"].items()} == {r: beyond[r] for r in concept["rounds"]}
    values = [result["headline"][c]["round_2 beyond_frontier"] for c in ("toy_top", "dog_ears")]
    mean = result["mean"]["round_2 beyond_frontier"]
    assert mean["mean"] == pytest.approx(sum(values) / 2) and mean["se"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert all(math.isfinite(v) for v in values)
    table = capsys.readouterr().out.splitlines()
    assert table[2].startswith("| concept | split | round_1 IS | round_1 TS | round_1 S_0.5 | round_1 beyond_frontier |")
    assert table[6].startswith(f"| **mean ± se** | | **{result['mean']['round_1 IS']['mean']:+.3f}** ±")
    assert json.loads((tmp_path / "f.json").read_text())["commit"] == bench_module("code_version").code_commit()


@pytest.mark.slow
def test_dpo_transfer_bench_averages_variants_over_concepts(tmp_path, in_repo):
    """bench/dpo_transfer.py --concepts at toy sizes: each concept's own round 0 and table, and
    each variant's mean over the concepts; --round-0 with --concepts is refused."""
    toy_params(tmp_path)
    module = bench_module("dpo_transfer")
    result = module.main(["--params", str(tmp_path / "params.yaml"), "--concepts", "cup_star,car_roof",
                          "--out", str(tmp_path / "t.json"), "default", "beta=500 clip=1.0 weight_decay=0.01"])
    tables, mean, peer = result["concepts"], result["mean"], "beta=500 clip=1.0 weight_decay=0.01"
    assert list(tables) == ["cup_star", "car_roof"] and list(mean) == ["default", peer]
    for where in ("held-out", "held-in"):
        values = [tables[c][peer][where]["S_0.5"] for c in tables]
        assert mean[peer][where]["S_0.5"] == pytest.approx(sum(values) / 2)
        assert mean[peer][where]["S_0.5_se"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert json.loads((tmp_path / "t.json").read_text())["commit"] == bench_module("code_version").code_commit()
    params = yaml.safe_load((tmp_path / "params.yaml").read_text())
    step = module.variant_config(params, "clip=1.0 weight_decay=0.01").dpo  # the peer's DPO step
    assert (step.max_grad_norm, step.weight_decay) == (1.0, 0.01)
    with pytest.raises(SystemExit, match="leave out --round-0"):
        module.main(["--params", str(tmp_path / "params.yaml"), "--concepts", "dev", "--round-0", str(tmp_path),
                     "default"])


@pytest.mark.slow
def test_dreambooth_variants_bench_averages_claim_a_over_concepts(tmp_path, in_repo, capsys):
    """bench/dreambooth_variants.py at toy sizes: each variant's claim (a) on each concept
    against one base model per concept, and its mean over the concepts; a bad variant exits
    naming it before anything trains."""
    toy_params(tmp_path)
    module = bench_module("dreambooth_variants")
    result = module.main(["--params", str(tmp_path / "params.yaml"), "--concepts", "cup_star,car_roof",
                          "--out", str(tmp_path / "d.json"), "default", "steps=2 lr=2e-3", "backdrop=studio", "mask=0"])
    tables, mean = result["concepts"], result["mean"]
    assert list(tables) == ["cup_star", "car_roof"]
    assert list(mean) == ["default", "steps=2 lr=2e-3", "backdrop=studio", "mask=0"]
    assert tables["car_roof"]["backdrop=studio"] != tables["car_roof"]["default"]  # trained on other photos
    assert tables["car_roof"]["mask=0"] != tables["car_roof"]["default"]  # trained on the concept's cells alone
    for figure in ("IS", "TS", "own_prompt_IS"):
        values = [tables[c]["steps=2 lr=2e-3"][figure] for c in tables]
        assert mean["steps=2 lr=2e-3"][figure] == pytest.approx(sum(values) / 2)
        assert mean["steps=2 lr=2e-3"][f"{figure}_se"] == pytest.approx(abs(values[0] - values[1]) / 2)
    assert tables["cup_star"]["default"] != tables["cup_star"]["steps=2 lr=2e-3"]  # each variant trained its own
    assert (tmp_path / "d.json").is_file() and "claim (a) over 2 concepts" in capsys.readouterr().out
    for spec, error in [("rank=big", "rank='big' is not a int"), ("prior=yes", "prior='yes' is not a boolean"),
                        ("depth=3", "unknown key 'depth'"), ("backdrop=moon", "backdrop='moon'; expected one of studio"),
                        ("mask=1", "mask='1'; expected the background's weight"), ("mask=none", "mask='none'"),
                        ("lr=-1", "finetune.learning_rate")]:
        with pytest.raises(SystemExit, match=error):
            module.main(["--params", str(tmp_path / "params.yaml"), "--concepts", "cup_star", spec])


def test_a_backdrop_variant_redraws_the_concept_photos_changing_only_what_is_behind_the_concept():
    """backdrop=studio: the photos' own views (drawn on their own contexts, they are the
    concept's photo files pixel for pixel) on the studio backdrop: the background changes,
    the concept at the view's place does not."""
    import numpy as np
    from PIL import Image

    from dbdpo.world.concepts import CONCEPTS
    from dbdpo.world.scenes import render

    module = bench_module("dreambooth_variants")
    concept = CONCEPTS["car_roof"]
    assert module.training_photos(concept, None) is None
    studio = [np.asarray(p) for p in module.training_photos(concept, "studio")]
    files = sorted((REPO / "data/concepts/car_roof").glob("*.png"))
    views = module.concept_views(module.CONCEPT_VIEWS, concept=concept.scene)
    assert len(studio) == len(files) == len(views) == 6
    for view, photo, drawn in zip(views, files, studio):
        own = np.asarray(Image.open(photo).convert("RGB"))
        np.testing.assert_array_equal(np.asarray(render(view)), own)
        assert view.context != "studio" and (drawn != own).any(axis=-1).mean() > 0.3
        x, y = round(view.x * 64), round(view.y * 64)  # the concept's center: its body, whatever is behind
        np.testing.assert_array_equal(drawn[y - 2:y + 3, x - 2:x + 3], own[y - 2:y + 3, x - 2:x + 3])


def test_the_masked_loss_weighs_the_latent_cells_the_concept_covers():
    """MaskedLoss (--mask W, mask=W): 1 on every latent cell a pixel of the concept's
    silhouette falls in, widened by one cell; W on the rest."""
    import torch

    from dbdpo.world.concepts import CONCEPTS
    from dbdpo.world.scenes import object_mask

    module = bench_module("claims")
    concept = CONCEPTS["dog_collar"]
    weights = module.MaskedLoss(concept, 0.2).weights(16)
    assert weights.shape == (6, 1, 16, 16) and weights.unique().tolist() == pytest.approx([0.2, 1.0])
    for view, w in zip(module.concept_views(module.CONCEPT_VIEWS, concept=concept.scene), weights):
        silhouette = torch.from_numpy(object_mask(view))  # (128, 128): 8 x 8 pixels a latent cell
        covered = silhouette.reshape(16, 8, 16, 8).any(dim=3).any(dim=1)
        assert (w[0][covered] == 1).all()
        widened = torch.nn.functional.max_pool2d(covered[None].float(), 3, stride=1, padding=1)[0].bool()
        assert torch.allclose(w[0][~widened], torch.tensor(0.2)) and (w[0][widened] == 1).all()
        assert 0.1 < covered.float().mean() < 0.6  # the photos show the concept big


def test_claims_bench_refuses_a_mask_off_the_concept_set_or_out_of_range(in_repo):
    """--mask W needs --concepts (the world renders each concept's silhouette) and W in [0, 1),
    checked before anything loads."""
    claims = bench_module("claims")
    for argv in (["--mask", "0.2"], ["--concepts", "dev", "--mask", "1"], ["--concepts", "dev", "--mask", "-0.1"]):
        with pytest.raises(SystemExit, match=r"--mask .*: the background's weight, in \[0, 1\), with --concepts"):
            claims.main(argv)


def test_claims_bench_sets_params_keys_as_dvc_exp_run_does(in_repo):
    """--set KEY=VALUE reads VALUE as YAML and validates the result as params.yaml; a key the
    params lack or a bad value exits naming it."""
    from dbdpo.params import load_config

    params_cli = bench_module("params_cli")
    cfg = params_cli.params_with("params.yaml", ["finetune.train_text_encoder=true", "dpo.beta=5000"])
    assert cfg.finetune.train_text_encoder is True and cfg.dpo.beta == 5000.0
    assert params_cli.params_with("params.yaml", []) == load_config(REPO / "params.yaml")
    for override, error in [("finetune.depth=3", "KEY a key of params.yaml"), ("beta=1", "KEY a key of params.yaml"),
                            ("dpo.beta", "expected KEY=VALUE"), ("dpo.beta=-1", "dpo.beta")]:
        with pytest.raises(SystemExit, match=error):
            params_cli.params_with("params.yaml", [override])


def test_a_results_file_records_the_commit_of_the_code_it_measured(tmp_path, monkeypatch):
    code_version = bench_module("code_version")

    def git(*args):
        return subprocess.run(["git", "-C", str(REPO), *args], capture_output=True, text=True, check=True).stdout

    recorded, head = code_version.code_commit(), git("rev-parse", "HEAD").strip()
    changed = [line[3:] for line in git("status", "--porcelain", "--untracked-files=no").splitlines()]
    dirty = any(not (path.startswith(("docs/", "bench/results/")) or path.endswith(".md")) for path in changed)
    assert head.startswith(recorded.removesuffix("-dirty")) and recorded.endswith("-dirty") == dirty
    monkeypatch.setattr(code_version, "ROOT", tmp_path)  # no git checkout there
    assert code_version.code_commit() == "unknown"


@pytest.mark.slow
def test_claims_bench_measures_a_full_dreambooth_not_the_base_model(tmp_path, in_repo):
    """finetune.method=full: round_0 is the fine-tuned pipeline, saved and loaded as the stages
    do, and its images are its own (the bench once sampled the base model in its place, as
    `train_dreambooth` returns no LoRA for a full fine-tune); DPO stacks its LoRA on that
    pipeline; a saved round 0 of either kind loads onto the right base."""
    import torch

    from dbdpo.backbones import load_backbone
    from dbdpo.config import ModelConfig
    from dbdpo.lora import save_lora
    from dbdpo.params import load_config
    from tests.test_lora import random_lora

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["finetune"].update(method="full", steps=2, batch_size=1)
    params["frontier"]["finetune_fractions"] = []  # a full DreamBooth keeps no early stops
    params["generate"].update(num_prompts=1, images_per_prompt=3, steps=2)
    params["filter"]["kind"] = "none"
    params["dpo"].update(steps=1, batch_size=1)
    params["evaluate"].update(num_prompts=2, images_per_prompt=1, steps=2, grid_prompts=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    claims = bench_module("claims")
    bench = claims.Bench(load_config(tmp_path / "params.yaml"), tmp_path / "work")

    round_0 = bench.dreambooth()
    assert round_0.lora == {} and (Path(round_0.config.path) / "model_index.json").is_file()
    weight = lambda model: model.pipe.unet.conv_in.weight  # noqa: E731
    assert not torch.equal(weight(round_0.base), weight(bench.backbone))
    assert torch.equal(weight(bench.backbone), weight(load_backbone(ModelConfig())))  # the base model untouched
    base = bench.measure(None, "base", sets=("held-out",))["held-out"]
    tuned = bench.measure(round_0, "round_0", sets=("held-out",))["held-out"]
    assert (base["seed"] == tuned["seed"]).all() and (base["IS"] != tuned["IS"]).all()

    model = bench.dpo(round_0, bench.round_scores(round_0, bench.round_prompts[0], 1, "round_1"), bench.cfg, 1)
    assert model.base is round_0.base and model.config == round_0.config and model.lora

    again = bench.round_0(Path(round_0.config.path))
    assert again.config == round_0.config and again.lora == {} and torch.equal(weight(again.base), weight(round_0.base))
    save_lora(bench.backbone.pipe, random_lora(0), tmp_path / "lora")
    lora = bench.round_0(tmp_path / "lora")
    assert lora.base is bench.backbone and lora.config == bench.cfg.model and set(lora.lora) == set(random_lora(0))


@pytest.mark.slow
def test_claims_bench_dreambooth_preserves_the_prior_when_asked(tmp_path, in_repo, caplog):
    """finetune.prior_preservation: the bench's DreamBooth draws the class images and trains
    on them, as the finetune stage does (it once trained on the concept alone)."""
    import logging

    import torch

    from dbdpo.params import load_config

    cfg = load_config(REPO / "params.yaml")
    cfg = dataclasses.replace(cfg, concept=dataclasses.replace(cfg.concept, dir=str(REPO / cfg.concept.dir)),
                              generate=dataclasses.replace(cfg.generate, prompts=str(REPO / cfg.generate.prompts),
                                                           steps=2),
                              evaluate=dataclasses.replace(cfg.evaluate, prompts=str(REPO / cfg.evaluate.prompts)),
                              finetune=dataclasses.replace(cfg.finetune, steps=2, batch_size=1, num_class_images=2))
    claims = bench_module("claims")
    with caplog.at_level(logging.INFO, logger="dbdpo"):
        alone = claims.Bench(cfg, tmp_path / "alone").dreambooth()
        preserved = claims.Bench(dataclasses.replace(
            cfg, finetune=dataclasses.replace(cfg.finetune, prior_preservation=True)), tmp_path / "prior").dreambooth()
    assert "6 concept images, 0 class images" in caplog.text and "6 concept images, 2 class images" in caplog.text
    assert set(alone.lora) == set(preserved.lora)
    assert any(not torch.equal(alone.lora[k], preserved.lora[k]) for k in alone.lora)


def test_claims_bench_refuses_rank_dpo_params_before_any_work(tmp_path, in_repo):
    """RankDPO has no lambda or filter: claims (c) and (d) would compare one model with itself."""

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["dpo"]["loss"], params["pair"]["mode"] = "rank_dpo", "rank"
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    with pytest.raises(SystemExit, match=r"params.yaml: dpo.loss=rank_dpo; the claims vary Diffusion-DPO's lambda"):
        bench_module("claims").main(["--params", str(tmp_path / "params.yaml"), "--out", str(tmp_path / "c.json")])
    assert not (tmp_path / "c.json").exists()


@pytest.mark.slow
def test_dpo_transfer_bench_trains_one_round_per_variant(tmp_path, in_repo, caplog):
    """bench/dpo_transfer.py at toy sizes: one row per variant, round_0 loaded from a folder,
    a `layers=` variant; a bad key or value fails before anything trains or samples."""
    import logging

    from dbdpo.backbones import load_backbone
    from dbdpo.config import ModelConfig
    from dbdpo.lora import save_lora
    from tests.test_lora import random_lora

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"].update(num_prompts=2, images_per_prompt=3, steps=2)
    params["filter"]["angle"] = 90
    params["dpo"].update(steps=2, batch_size=2)
    params["evaluate"].update(num_prompts=2, images_per_prompt=1, steps=2, grid_prompts=2)
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    save_lora(load_backbone(ModelConfig()).pipe, random_lora(0), tmp_path / "round_0")
    module = bench_module("dpo_transfer")

    with caplog.at_level(logging.INFO, logger="dbdpo"):
        table = module.main(["--params", str(tmp_path / "params.yaml"), "--round-0", str(tmp_path / "round_0"),
                             "prompts=2", "prompts=2 beta=500 layers=attn2.to_k,attn2.to_v",
                             "prompts=2 mode=rank loss=rank_dpo"])
    # the DPO loops' opening lines, once a variant: RankDPO's on the 2 prompts' ranked lists
    loops = [r.getMessage() for r in caplog.records if r.name == "dbdpo.dpo"]
    assert [m.split(":")[0] for m in loops] == ["dpo", "dpo", "rank_dpo"]
    assert loops[2].startswith("rank_dpo: 2 lists of 3 images")
    assert list(table) == ["prompts=2", "prompts=2 beta=500 layers=attn2.to_k,attn2.to_v",
                           "prompts=2 mode=rank loss=rank_dpo"]
    assert all(math.isfinite(x) for sets in table.values() for where in sets.values() for x in where.values())
    assert table["prompts=2"] != table["prompts=2 beta=500 layers=attn2.to_k,attn2.to_v"]
    assert table["prompts=2 mode=rank loss=rank_dpo"] != table["prompts=2"]

    for variant, error in [("betta=5", "unknown key 'betta'; expected one of prompts, images"),
                           ("beta=big", "beta='big' is not a float"),
                           ("filter=wedge", "filter.kind='wedge' is invalid: expected one of"),
                           ("angle=0", "filter.angle=0.0 is invalid"),
                           ("loss=rank_dpo", "pair.mode='pairs' is invalid: expected rank with dpo.loss=rank_dpo")]:
        caplog.clear()
        with pytest.raises(SystemExit, match=error), caplog.at_level(logging.INFO, logger="dbdpo"):
            module.main(["--params", str(tmp_path / "params.yaml"), "prompts=2", variant])
        assert "dpo: " not in caplog.text, caplog.text


def small_generate_params(tmp_path):
    """params.yaml sampling 2 images of 2 steps."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"].update(images_per_prompt=2, steps=2, batch_size=2)
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    return path


@pytest.mark.slow
def test_is_ceiling_bench_scores_world_renders_and_both_models(tmp_path, in_repo):
    """bench/is_ceiling.py at toy sampling sizes: the world's renders of the concept, with or
    without its ring, score above other toys (what the IS gate promises); the described-concept
    row covers the plain prompts; round_0's split adds up."""

    from dbdpo.backbones import load_backbone
    from dbdpo.config import ModelConfig
    from dbdpo.lora import save_lora
    from tests.test_lora import random_lora

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["evaluate"].update(num_prompts=12, images_per_prompt=1, steps=2)  # 10 plain prompts, 2 with a color
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    save_lora(load_backbone(ModelConfig()).pipe, random_lora(0), tmp_path / "round_0")

    table = bench_module("is_ceiling").main(["--params", str(tmp_path / "params.yaml"),
                                             "--round-0", str(tmp_path / "round_0"), "--views", "2",
                                             "--by-prompt"])
    assert table.loc["concept, rendered", "images"] == 20 and table.loc["round_0", "images"] == 12
    assert table.loc["concept, rendered", "IS"] > table.loc["other toys, rendered", "IS"] + 0.2
    assert table.loc["concept, through the VAE", "IS"] > table.loc["other toys, through the VAE", "IS"] + 0.2
    assert table.loc["base model (class prompt)", "gain"] == 0
    # Without its ring the concept is a red toy with yellow stripes: still far above other toys.
    assert table.loc["concept without its ring, rendered", "images"] == 20
    assert table.loc["concept without its ring, rendered", "IS"] > table.loc["other toys, rendered", "IS"] + 0.2
    described = table.loc["base model (the concept described), plain prompts"]
    assert bench_module("is_ceiling").DESCRIPTION == "big red striped"
    assert described["images"] == 10 and described["TS"] != described["TS"]  # NaN: scored against another text
    alone = table.loc[["base model, the class prompt alone", "round_0, the instance prompt alone"]]
    assert (alone["images"] == 12).all() and alone["TS"].isna().all()
    assert table.loc["round_0, the instance prompt alone", "gain"] == pytest.approx(
        (alone["IS"].iat[1] - alone["IS"].iat[0]) / table.attrs["unit"])  # over the class prompt alone
    plain, color = table.loc["round_0, plain prompts"], table.loc["round_0, prompts asking another color"]
    assert (plain["images"], color["images"]) == (10, 2)
    assert abs((10 * plain["IS"] + 2 * color["IS"]) / 12 - table.loc["round_0", "IS"]) < 1e-6
    by_prompt = table.attrs["by_prompt"]
    assert len(by_prompt) == 12 and abs(by_prompt.mean() - table.loc["round_0", "gain"]) < 1e-6


def test_generate_bench_times_ours_against_the_diffusers_loop(tmp_path, in_repo, capsys):
    """bench/generate.py on the world backbone, one process: both rows over the same 4 images;
    a flag that cannot apply is refused before any model loads."""
    module = bench_module("generate")
    params = small_generate_params(tmp_path)
    result = module.main(["--params", str(params), "--prompts", "2", "--processes", "1",
                          "--out", str(tmp_path / "g.json")])
    assert list(result["rows"]) == ["diffusers loop", "ours, 1 process"]
    assert (result["images"], result["model"], result["resolution"]) == (4, "world", 64)
    assert result["rows"]["diffusers loop"]["speedup"] == 1.0
    assert all(row["images_per_s"] > 0 for row in result["rows"].values())
    assert (tmp_path / "g.json").is_file()
    for flags, error in [(["--resolution", "64"], "--resolution is for --arch"),
                         (["--processes", "0"], "--processes 0: expected 1 or more")]:
        capsys.readouterr()
        with pytest.raises(SystemExit):
            module.parse_args(["--params", str(params), *flags])
        assert error in capsys.readouterr().err


@pytest.mark.slow
def test_generate_bench_on_two_processes_samples_the_one_process_images(tmp_path, in_repo):
    """The N-process row (accelerate launch, each process one thread) samples the 1-process
    images. (The published architectures' sampling runs in the scale bench's test: the same
    `full_backbone` and `generate`, without a second full-size model in the suite.)"""
    module = bench_module("generate")
    result = module.main(["--params", str(small_generate_params(tmp_path)), "--prompts", "2", "--processes", "2"])
    two = result["rows"]["ours, 2 processes"]
    # byte-equal with one thread in every process (tests/test_distributed.py); this process may
    # run two threads, whose sums round apart by at most one level
    assert two["max_pixel_difference"] <= 1 and two["images_per_s"] > 0


@pytest.mark.slow
def test_startup_bench_runs_each_command_and_writes_the_results_section(tmp_path):
    """bench/startup.py runs every command once, each exiting 0 (pair pairs its six scored
    images); docs/results.md renders its JSON (tests/test_docs.py)."""
    module = bench_module("startup")
    out = tmp_path / "startup.json"
    result = module.main(["--repeat", "1", "--out", str(out)])
    assert [row["command"] for row in result["rows"]] == [
        "python -c pass", "python -c 'import torch'", f"python -c '{module.MODEL_STACK}'", "dbdpo show", "dbdpo check", "dbdpo status",
        "dbdpo pair --round round_1"]
    assert all(row["median_s"] == row["min_s"] > 0 for row in result["rows"])  # one run each
    assert result["rows"][1]["ratio_to_torch_import"] == 1.0 and json.loads(out.read_text()) == result
