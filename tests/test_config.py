
import dataclasses
import importlib.util

import pytest
import yaml

from dbdpo.config import round_seed
from dbdpo.data import eval_prompts, train_prompts
from dbdpo.errors import ConfigError
from dbdpo.params import config_from_dict, load_config
from stages.common import ParamView, UndeclaredRead


def params(**overrides):
    """The repository's params.yaml with `group.key` overrides."""
    with open("params.yaml") as f:
        raw = yaml.safe_load(f)
    for dotted, value in overrides.items():
        group, key = dotted.split("__")
        raw[group][key] = value
    return raw


def test_lora_targets_take_an_explicit_list_of_module_names(in_repo):
    cfg = config_from_dict(params(dpo__lora_targets=["attn2.to_k", "attn2.to_v"], finetune__lora_targets="unet"))
    assert cfg.dpo.lora_targets == ("attn2.to_k", "attn2.to_v") and cfg.finetune.lora_targets == "unet"


@pytest.mark.parametrize("text, message", [
    ("model:\n  backbone: world\n  backbone: sd\n", r"p.yaml: key 'backbone' is given twice in one mapping \(line 3\); keep one"),
    ("model:\n\tbackbone: world\n", r"p.yaml: not valid YAML \(line 2, column 1\): .*'\\t'.*; indent with spaces, not tabs"),
    ("model: [tiny\n", r"p.yaml: not valid YAML \(line 2, column 1\)"),
])
def test_a_params_file_yaml_would_misread_is_refused_by_line(tmp_path, text, message):
    """A duplicate key (the plain YAML loader keeps the last; DVC refuses the file) and a tab
    indent (a raw scanner traceback) name the file and the line."""
    (tmp_path / "p.yaml").write_text(text)
    with pytest.raises(ConfigError, match=message):
        load_config(tmp_path / "p.yaml")


def test_the_typed_configs_defaults_are_params_yaml(in_repo):
    """One source of truth: a Python user of FinetuneConfig() runs the method a dvc repro user
    runs; every group's dataclass defaults equal the repository's params.yaml."""
    cfg = load_config("params.yaml")
    for field in dataclasses.fields(cfg):
        value = getattr(cfg, field.name)
        if dataclasses.is_dataclass(value):
            assert type(value)() == value, field.name


def test_repository_params_load(in_repo):
    cfg = load_config("params.yaml")
    assert cfg.filter.kind == "angle" and cfg.filter.angle == 25.0
    assert cfg.pair.lambda_ == 0.5
    assert cfg.round_names() == ["round_1", "round_2"]
    assert cfg.rounds["round_2"].start == "round_1"


@pytest.mark.parametrize("overrides, message", [
    ({"pair__lambda": 1.5}, r"pair.lambda=1.5 is invalid: expected a value in \[0, 1\]"),
    ({"filter__angle": 0}, r"filter.angle=0.0 is invalid: expected a half-width in degrees in \(0, 180\]"),
    ({"filter__angle": 181}, r"filter.angle=181.0"),
    ({"generate__images_per_prompt": 1}, r"generate.images_per_prompt=1 is invalid: expected at least 2"),
    ({"generate__prompts": " "}, r"generate.prompts=' ' is invalid: expected the path of a prompt file"),
    ({"filter__kind": "cone"}, r"filter.kind='cone' is invalid: expected one of none \| threshold \| angle"),
    ({"filter__angel": 30}, r"unknown key filter.angel; the keys of filter are"),
    ({"dpo__steps": "many"}, r"dpo.steps: expected an integer, got 'many'"),
    ({"dpo__beta": "lots"}, r"dpo.beta: expected a number, got 'lots'"),
    ({"model__backbone": "tiny"}, r"model.backbone='tiny' was renamed: write backbone: world"),
    ({"model__backbone": "sd"}, r"model.path=None is invalid: expected a hub id or local directory"),
    ({"model__backbone": "sdxl"}, r"model.path=None is invalid: expected a hub id or local directory for backbone sdxl"),
    ({"model__resolution": 500}, r"model.resolution=500 is invalid: expected null \(the model's native size\) or a positive multiple of 8"),
    ({"model__vae": "madebyollin/sdxl-vae-fp16-fix"}, r"model.vae='madebyollin/sdxl-vae-fp16-fix' is invalid: expected null with backbone world"),
    ({"model__precision": "fp8"}, r"model.precision='fp8' is invalid: expected one of fp32 \| fp16 \| bf16"),
    ({"finetune__lora_targets": "convs"}, r"finetune.lora_targets='convs' is invalid: expected one of attention \| unet"),
    ({"dpo__lora_targets": "all"}, r"dpo.lora_targets='all' is invalid: expected one of attention \| unet"),
    ({"dpo__lora_targets": []}, r"dpo.lora_targets=\[\] is invalid: expected one of attention \| unet, or a non-empty list"),
    ({"dpo__lora_targets": ["to_k", 3]}, r"dpo.lora_targets: expected a name or a list of names, got \['to_k', 3\]"),
    ({"finetune__method": "dora"}, r"finetune.method='dora' is invalid: expected one of lora \| full"),
    ({"finetune__optimizer": "lion"}, r"finetune.optimizer='lion' is invalid: expected one of adamw \| adamw_8bit"),
    ({"finetune__snr_gamma": 0}, r"finetune.snr_gamma=0.0 is invalid: expected null \(no weighting\) or a value > 0"),
    ({"finetune__snr_gamma": float("nan")}, r"finetune.snr_gamma=nan is invalid: expected a finite number"),
    ({"dpo__min_timestep": -1}, r"dpo.min_timestep=-1 is invalid: expected a timestep >= 0"),
    ({"dpo__min_timestep": 500, "dpo__max_timestep": 500},
     r"dpo.max_timestep=500 is invalid: expected null \(up to the scheduler's last timestep\) or above dpo.min_timestep=500"),
    ({"dpo__checkpoint_every": -1}, r"dpo.checkpoint_every=-1 is invalid: expected a number of steps >= 0"),
    ({"dpo__rank_by": "ensemble"}, r"dpo.rank_by='ensemble' is invalid: expected one of preference \| model"),
    ({"pair__normalize": "rank"}, r"pair.normalize='rank'"),
    ({"score__rewards": {"IS": 1.0, "PickScore": 1.0}}, r"PickScore needs score.pickscore_model"),
    ({"score__rewards": {"TS": 1.0, "HPS": 1.0}}, r"HPS needs score.hps_weights"),
    ({"score__rewards": {"IS": 1.0, "Aesthetic": 1.0}}, r"Aesthetic needs score.aesthetic_weights"),
    # open_clip reads an empty tag as "no weights": a random CLIP under the MLP
    ({"score__aesthetic_weights": "mlp.pth", "score__aesthetic_clip_pretrained": ""},
     r"score.aesthetic_clip_pretrained='' is invalid: expected the CLIP weights the aesthetic MLP was trained on"),
    ({"score__rewards": {"IS": 0}}, r"score.rewards=\{'IS': 0.0\} is invalid: expected a non-empty mapping"),
    ({"dpo__loss": "rank_dpo"}, r"pair.mode='pairs' is invalid: expected rank with dpo.loss=rank_dpo"),
    # a weights file silently dropped would score with a random CLIP
    ({"pair__seed": -1}, r"pair.seed=-1 is invalid: expected a seed from 0 to"),
    ({"frontier__lora_scales": [0.5, 1]}, r"frontier.lora_scales\[1\]=1.0 is invalid: expected a scale > 0 other than 1"),
    ({"frontier__lora_scales": [0.5, 0.5]}, r"frontier.lora_scales=\[0.5, 0.5\] is invalid: expected each value once"),
    ({"frontier__lora_scales": 0.5}, r"frontier.lora_scales: expected a list of numbers, got 0.5"),
    ({"frontier__lora_scales": ["half"]}, r"frontier.lora_scales\[0\]: expected a number, got 'half'"),
    ({"frontier__guidance_scales": [7.5]}, r"frontier.guidance_scales\[0\]=7.5 is invalid: expected a scale > 0 other than evaluate"),
    ({"frontier__guidance_scales": [float("inf")]}, r"frontier.guidance_scales\[0\]=inf is invalid: expected a finite number"),
    ({"frontier__finetune_fractions": [0.5, 1.0]},
     r"frontier.finetune_fractions\[1\]=1.0 is invalid: expected a fraction in \(0, 1\) that stops at a step from 1"),
    ({"finetune__steps": 2, "frontier__finetune_fractions": [0.2]},  # would stop after 0 steps
     r"frontier.finetune_fractions\[0\]=0.2 is invalid: expected .* \(finetune.steps=2; all the steps are round 0"),
    ({"frontier__finetune_fractions": [0.5, 0.5001]},
     r"frontier.finetune_fractions=\[0.5, 0.5001\] is invalid: expected each value once \(each a distinct step of "
     r"finetune.steps=600\)"),
    ({"evaluate__num_prompts": 1, "evaluate__images_per_prompt": 1, "evaluate__grid_prompts": 1},
     r"evaluate.images_per_prompt=1 is invalid: expected at least 2 evaluation images in all"),
    ({"dpo__seed": 2**64}, r"dpo.seed=18446744073709551616 is invalid: expected a seed from 0 to"),
    ({"score__clip_model": "RN50"}, r"score.clip_pretrained=None is invalid: expected the weights of "
                                    r"score.clip_model=RN50: an open_clip tag .* or random \(random weights"),
    ({"score__clip_model": "tiny", "score__clip_pretrained": "/w/clip.safetensors"},
     r"score.clip_pretrained='/w/clip.safetensors' is invalid: expected null with score.clip_model=tiny"),
    # inf / nan pass "> 0" and would train to a NaN LoRA
    ({"dpo__learning_rate": float("inf")}, r"dpo.learning_rate=inf is invalid: expected a finite number"),
    ({"dpo__beta": yaml.safe_load("x: .inf")["x"]}, r"dpo.beta=inf is invalid: expected a finite number"),
    ({"finetune__learning_rate": float("nan")}, r"finetune.learning_rate=nan is invalid: expected a finite number"),
    ({"pair__lambda": float("nan")}, r"pair.lambda=nan is invalid: expected a finite number"),
    ({"score__rewards": {"IS": float("inf")}}, r"score.rewards.IS=inf is invalid: expected a finite number"),
])
def test_bad_values_name_the_key(in_repo, overrides, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(params(**overrides))


def test_yaml_exponent_without_dot_is_a_float(in_repo):
    # YAML 1.1 reads 1e-4 as a string; `dvc exp run -S dpo.learning_rate=1e-4` must still work.
    cfg = config_from_dict(params(dpo__learning_rate="1e-4"))
    assert cfg.dpo.learning_rate == 1e-4


def test_unknown_group_and_round_chain(in_repo):
    raw = params()
    raw["filters"] = {}
    with pytest.raises(ConfigError, match="unknown key filters"):
        config_from_dict(raw)
    raw = params()
    raw["rounds"] = {"round_1": {"start": "round_0"}, "round_2": {"start": "round_0"}}
    with pytest.raises(ConfigError, match=r"rounds.round_2.start='round_0' is invalid: expected round_1"):
        config_from_dict(raw)


@pytest.mark.parametrize("name", ["round_1$(touch pwned)", "round_1; rm -rf x", "round_x", "round_01", "r1"])
def test_round_names_are_refused_unless_round_n(in_repo, name):
    """DVC pastes the round name into a shell command line: only round_<n> may get there."""
    raw = params()
    raw["rounds"] = {name: {"start": "round_0"}}
    with pytest.raises(ConfigError, match=r"expected a round name round_<n> with n = 1, 2, \.\.\. and nothing else"):
        config_from_dict(raw)


def test_missing_group_or_key_is_an_error_not_a_code_default(in_repo):
    raw = params()
    del raw["dpo"]
    with pytest.raises(ConfigError, match=r"missing group dpo: params.yaml must set every group"):
        config_from_dict(raw)
    raw = params()
    del raw["dpo"]["beta"]
    with pytest.raises(ConfigError, match=r"missing key dpo.beta: every key of every group must be set"):
        config_from_dict(raw)


def test_missing_params_file(tmp_path):
    with pytest.raises(ConfigError, match="params file not found"):
        load_config(tmp_path / "params.yaml")


def test_params_survive_dvcs_yaml_rewrite(in_repo, tmp_path):
    """`dvc exp run -S` rewrites params.yaml with ruamel (YAML 1.2), dropping quotes: a value
    like "no" came back as a bare `no`, which PyYAML (1.1) reads as False."""
    from ruamel.yaml import YAML

    rt = YAML()
    with open("params.yaml") as f:
        data = rt.load(f)
    data["filter"]["angle"] = 30
    with open(tmp_path / "params.yaml", "w") as f:
        rt.dump(data, f)
    cfg = load_config(tmp_path / "params.yaml")
    assert cfg.filter.angle == 30.0 and cfg.dpo.mixed_precision == "fp32"


def two_rounds(round_2: dict) -> dict:
    raw = params()
    raw["rounds"] = {"round_1": {"start": "round_0"}, "round_2": {"start": "round_1", **round_2}}
    return raw


def test_round_overrides_apply_to_that_round_only(in_repo):
    cfg = config_from_dict(two_rounds({"generate": {"num_prompts": 3}, "dpo": {"beta": 5000},
                                       "filter": {"angle": 40}}))
    r1, r2 = cfg.for_round("round_1"), cfg.for_round("round_2")
    assert (r1.generate.num_prompts, r1.dpo.beta, r1.filter.angle) == (16, 2500.0, 25.0)
    assert (r2.generate.num_prompts, r2.dpo.beta, r2.filter.angle) == (3, 5000.0, 40.0)
    assert r2.generate.images_per_prompt == r1.generate.images_per_prompt  # not overridden
    # disjoint prompt slices that follow each round's own N, seeds a round apart, chained starts
    plans = list(cfg.round_plans().values())
    assert [(p.name, p.index, p.start, p.prompts) for p in plans] == [
        ("round_1", 1, "round_0", (0, 16)), ("round_2", 2, "round_1", (16, 19))]
    assert [p.seed for p in plans] == [round_seed(0, 1), round_seed(0, 2)] == [1_000_000, 2_000_000]
    assert list(cfg.round_plans()) == ["round_1", "round_2"]


@pytest.mark.parametrize("round_2, message", [
    ({"dpo": {"betta": 1}}, r"unknown key rounds.round_2.dpo.betta"),
    ({"score": {"batch_size": 2}}, r"unknown key rounds.round_2.score; a round has start and may override"),
    ({"pair": {"lambda": -1}}, r"rounds.round_2 overrides: pair.lambda=-1.0 is invalid"),
    ({"generate": {"images_per_prompt": "six"}}, r"rounds.round_2.generate.images_per_prompt: expected an integer"),
    ({"generate": {"prompts": "other.txt"}}, r"rounds.round_2.generate.prompts='other.txt' is invalid: expected no "
                                             r"per-round pool: rounds take disjoint slices of the one generate.prompts"),
])
def test_bad_round_overrides_name_the_round(in_repo, round_2, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(two_rounds(round_2))


def _key_paths(tree: dict, prefix: str = "") -> set[str]:
    paths = set()
    for key, value in tree.items():
        if isinstance(value, dict) and key not in ("rewards", "rounds"):
            paths |= _key_paths(value, f"{prefix}{key}.")
        else:
            paths.add(f"{prefix}{key}")
    return paths


@pytest.mark.parametrize("name, backbone, path, precision", [
    ("sd2", "sd", "stabilityai/stable-diffusion-2-base", "fp16"),  # the paper's SD2: 512 px, eps
    ("sd21", "sd", "stabilityai/stable-diffusion-2-1", "fp16"),  # 768 px, v-prediction
    ("sdxl", "sdxl", "stabilityai/stable-diffusion-xl-base-1.0", "bf16")])
def test_presets_are_overlays_that_validate_on_params(in_repo, name, backbone, path, precision):
    """A preset holds only the keys a GPU run changes; applied to params.yaml it validates with
    the paper's settings, and it repeats no default (apply_preset refuses one)."""
    from dbdpo.presets import load_with_preset

    preset = in_repo / "presets" / f"{name}.yaml"
    cfg = load_with_preset(in_repo / "params.yaml", preset)
    assert (cfg.model.backbone, cfg.model.path) == (backbone, path)
    # the composed pool and the DreamBooth paper's evaluation set, large enough for every round
    slices = {name: p.prompts for name, p in cfg.round_plans().items()}
    assert len(train_prompts(cfg.generate.prompts, slices)) == len(cfg.rounds)
    assert cfg.generate.prompts.endswith("pool_object.txt") and cfg.evaluate.prompts.endswith("dreambooth_object.txt")
    assert len(eval_prompts(cfg.evaluate.prompts, cfg.evaluate.num_prompts)) == 25
    assert cfg.evaluate.images_per_prompt == 10
    assert cfg.score.ts_prompt == "without_concept"  # the authors' evaluator's TS text
    assert cfg.finetune.mixed_precision == cfg.dpo.mixed_precision == precision
    assert cfg.finetune.gradient_checkpointing and cfg.dpo.gradient_checkpointing
    assert cfg.generate.steps == cfg.evaluate.steps == 50 and cfg.generate.guidance_scale == 7.5
    assert cfg.generate.scheduler == cfg.evaluate.scheduler == "ddim"  # the papers' sampler, not the world's
    assert (cfg.filter.kind, cfg.pair.lambda_, cfg.filter.angle) == ("angle", 0.5, 25.0)  # [20, 70] degrees
    keys = _key_paths(yaml.safe_load(preset.read_text()))
    assert keys < _key_paths(yaml.safe_load((in_repo / "params.yaml").read_text())) and len(keys) < 45


def test_params_with_a_preset_refuse_a_duplicate_key_as_params_alone_do(in_repo, tmp_path):
    """The merged text goes through params.yaml's own parser: a key given twice is named."""
    from dbdpo.presets import load_with_preset

    (tmp_path / "params.yaml").write_text((in_repo / "params.yaml").read_text() + "\nconcept:\n  token: xyz\n")
    with pytest.raises(ConfigError, match=r"with .*sdxl.yaml: key 'concept' is given twice in one mapping"):
        load_with_preset(tmp_path / "params.yaml", in_repo / "presets/sdxl.yaml")


def test_a_preset_writes_its_values_and_comments_into_params_and_refuses_what_is_not_an_overlay(in_repo):
    from dbdpo.presets import apply_preset

    base = (in_repo / "params.yaml").read_text()
    merged = apply_preset(base, "# why\nfinetune:\n  steps: 500   # the GPU's\n  batch_size: 1\n", "p")
    group = merged[merged.index("\nfinetune:\n"):merged.index("\ngenerate:\n")]
    lines = {line.split(":")[0].strip(): line for line in group.splitlines() if line.startswith("  ")}
    assert lines["steps"] == "  steps: 500              # the GPU's"  # at params.yaml's comment column
    assert lines["batch_size"].startswith("  batch_size: 1 ") and "# concept images a step" in lines["batch_size"]
    base_group = base[base.index("\nfinetune:\n"):base.index("\ngenerate:\n")]
    assert [a for a, b in zip(base.splitlines(), merged.splitlines()) if a != b] == [  # nothing else moved
        line for line in base_group.splitlines() if line.startswith(("  steps:", "  batch_size:"))]
    for preset, error in [("finetune:\n  stepz: 5\n", r"p: finetune.stepz is not a key of params.yaml"),
                          ("finetune:\n  steps: 600\n", r"p: finetune.steps: 600 is params.yaml's value already"),
                          ("score:\n  rewards:\n    IS: 2\n", r"p:2: 'rewards:': a preset sets scalar keys")]:
        with pytest.raises(ConfigError, match=error):
            apply_preset(base, preset, "p")


def test_the_8bit_optimizer_without_bitsandbytes_is_refused_before_any_work(in_repo):
    if importlib.util.find_spec("bitsandbytes") is not None:
        pytest.skip("bitsandbytes is installed here: the 8-bit AdamW is usable")
    raw = yaml.safe_load(open("params.yaml"))
    raw["finetune"]["optimizer"] = "adamw_8bit"
    with pytest.raises(ConfigError, match=r"finetune.optimizer='adamw_8bit' is invalid: expected adamw, or install "
                                          r"bitsandbytes \(pip install bitsandbytes\)"):
        config_from_dict(raw)


def test_a_stage_reads_only_the_keys_it_declares(in_repo):
    cfg = ParamView(load_config("params.yaml"), ("model.backbone", "pair", "rounds"), "pair@round_1")
    assert cfg.model.backbone == "world" and cfg.pair.lambda_ == 0.5 and list(cfg.rounds) == ["round_1", "round_2"]
    with pytest.raises(UndeclaredRead, match=r"pair@round_1 reads params key model.precision, which its declared "
                                             r"reads \(dvc.yaml's params for it: model.backbone, pair, rounds\)"):
        cfg.model.precision
    with pytest.raises(UndeclaredRead, match="reads params key filter.angle"):
        cfg.filter.angle  # the group itself is not a read; its keys are
    with pytest.raises(AttributeError, match="params file has no key 'for_round'"):
        cfg.for_round  # derived values come from the library (Config.round_plans), before the view
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.pair.lambda_ = 1.0
    # a declared group is the library's config object: what the library does with it in a unit
    # test (dataclasses.replace), it does in the pipeline
    from dbdpo.config import PairConfig

    assert type(cfg.pair) is PairConfig and dataclasses.replace(cfg.pair, lambda_=1.0).lambda_ == 1.0
    assert type(cfg.model) is ParamView  # only model.backbone is declared


def test_the_choice_types_name_what_the_code_implements():
    """A params choice is valid where the code that takes it has it: the precisions backbones
    casts to, the samplers sampling builds."""
    import typing

    from dbdpo.backbones import PRECISION_DTYPES
    from dbdpo.config import Precision, Scheduler
    from dbdpo.sampling import SCHEDULERS

    assert set(typing.get_args(Precision)) == set(PRECISION_DTYPES)
    assert set(typing.get_args(Scheduler)) == set(SCHEDULERS)
