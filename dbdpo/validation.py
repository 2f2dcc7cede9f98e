"""Range and consistency checks of a built Config: each error names the first bad key, the
value and what would be accepted."""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import re

from dbdpo.config import (
    LORA_TARGETS,
    RANDOM_WEIGHTS,
    WORLD_CLIP,
    Config,
    SamplingConfig,
    early_stop_steps,
    yaml_name,
)
from dbdpo.errors import ConfigError


def _require(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _one_of(value, choices: tuple, key: str) -> None:
    _require(value in choices, key, value, "one of " + " | ".join(map(str, choices)))


def _lora_targets(value: str | tuple[str, ...], key: str) -> None:
    """A target set's name, or an explicit list of module names (each a suffix of a layer's name)."""
    if isinstance(value, str):
        _one_of(value, LORA_TARGETS, key)
    else:
        _require(bool(value) and all(name.strip() for name in value), key, list(value),
                 f"one of {' | '.join(LORA_TARGETS)}, or a non-empty list of module names such as [to_k, to_v]")


def _positive(value, key: str) -> None:
    _require(value > 0, key, value, "a value > 0")


def _sampling(s: SamplingConfig, group: str) -> None:
    for key in ("steps", "batch_size"):
        _positive(getattr(s, key), f"{group}.{key}")


def _finite_floats(c: Config) -> None:
    """inf / nan pass every `> 0` check and then poison training: refuse them up front."""
    for group in dataclasses.fields(c):
        value = getattr(c, group.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            items = (((f".{k}", x) for k, x in v.items()) if isinstance(v, dict) else
                     ((f"[{i}]", x) for i, x in enumerate(v)) if isinstance(v, tuple) else [("", v)])
            for sub, x in items:
                if isinstance(x, float) and not math.isfinite(x):
                    _require(False, f"{group.name}.{yaml_name(f.name)}{sub}", x, "a finite number")


# A round name reaches DVC's shell command line (`--round ${key}`): only these characters.
ROUND_NAME = re.compile(r"round_[1-9][0-9]*")


# A concept name names its folder (concepts/<name>/) and its stages (finetune-<name>): no `-`,
# which separates the stage from the concept in DVC_STAGE, and nothing a path or shell reads.
CONCEPT_NAME = re.compile(r"[A-Za-z0-9_]+")


def validate(c: Config) -> None:
    """Range and consistency checks; raises ConfigError naming the first bad key."""
    validate_groups(c)
    for name, entry in c.concepts.items():
        _require(CONCEPT_NAME.fullmatch(name) is not None, f"concepts.{name}", name,
                 "a name of letters, digits and _ (it names the folder concepts/<name>/ and the stages "
                 "finetune-<name>, generate-<name>@round_1, ...)")
        for key, value in dataclasses.asdict(entry).items():
            _require(bool(value.strip()), f"concepts.{name}.{key}", value, "a non-empty value")
    names = c.round_names()
    for i, name in enumerate(names):
        _require(ROUND_NAME.fullmatch(name) is not None, f"rounds.{name}", name,
                 "a round name round_<n> with n = 1, 2, ... and nothing else (round_0 is the "
                 "DreamBooth model)")
        expected = "round_0" if i == 0 else names[i - 1]
        _require(c.rounds[name].start == expected, f"rounds.{name}.start",
                 c.rounds[name].start, f"{expected} (the previous round's model)")
        _require("prompts" not in c.rounds[name].overrides.get("generate", {}), f"rounds.{name}.generate.prompts",
                 c.rounds[name].overrides.get("generate", {}).get("prompts"),
                 "no per-round pool: rounds take disjoint slices of the one generate.prompts file")
        if c.rounds[name].overrides:
            try:
                validate_groups(c.for_round(name))
            except ConfigError as e:
                raise ConfigError(f"rounds.{name} overrides: {e}") from None


MAX_SEED = 2**63 - 1  # torch.Generator.manual_seed takes no more; a round adds its offset (config.round_seed)


def _seeds(c: Config) -> None:
    """Every group's `seed`: a generator seed, 0 .. MAX_SEED (torch and numpy refuse others, but
    only once a model is loaded)."""
    for group in dataclasses.fields(c):
        value = getattr(c, group.name)
        if dataclasses.is_dataclass(value) and hasattr(value, "seed"):
            _require(0 <= value.seed <= MAX_SEED // 2, f"{group.name}.seed", value.seed,
                     f"a seed from 0 to {MAX_SEED // 2}")


def validate_groups(c: Config) -> None:
    """Checks of the stage groups (also run on each round's overridden config)."""
    _finite_floats(c)
    _seeds(c)
    if c.model.resolution is not None:
        _require(c.model.resolution > 0 and c.model.resolution % 8 == 0, "model.resolution",
                 c.model.resolution, "null (the model's native size) or a positive multiple of 8 pixels")
    if c.model.backbone != "world":
        _require(bool(c.model.path), "model.path", c.model.path,
                 f"a hub id or local directory for backbone {c.model.backbone}")
    else:
        for key in ("path", "variant", "vae"):
            _require(getattr(c.model, key) is None, f"model.{key}", getattr(c.model, key),
                     "null with backbone world (it is built in); set model.backbone: sd or sdxl to load weights")
    _require(bool(c.concept.token.strip()), "concept.token", c.concept.token, "a non-empty token")
    _require(bool(c.concept.class_noun.strip()), "concept.class_noun", c.concept.class_noun,
             "a non-empty class noun")
    _positive(c.concept.min_size, "concept.min_size")

    for key in ("steps", "learning_rate", "batch_size", "lora_rank", "num_class_images"):
        _positive(getattr(c.finetune, key), f"finetune.{key}")
    _require(c.finetune.prior_loss_weight >= 0, "finetune.prior_loss_weight",
             c.finetune.prior_loss_weight, "a value >= 0")
    _require(c.finetune.snr_gamma is None or c.finetune.snr_gamma > 0, "finetune.snr_gamma",
             c.finetune.snr_gamma, "null (no weighting) or a value > 0 (5 is the paper's)")
    _require(c.finetune.optimizer != "adamw_8bit" or importlib.util.find_spec("bitsandbytes") is not None,
             "finetune.optimizer", c.finetune.optimizer, "adamw, or install bitsandbytes (pip install bitsandbytes) "
             "for its 8-bit AdamW")
    _lora_targets(c.finetune.lora_targets, "finetune.lora_targets")

    for key in ("generate.prompts", "evaluate.prompts"):
        group, name = key.split(".")
        value = getattr(getattr(c, group), name)
        _require(bool(value.strip()), key, value, "the path of a prompt file (one template a line)")
    _positive(c.generate.num_prompts, "generate.num_prompts")
    _require(c.generate.images_per_prompt >= 2, "generate.images_per_prompt",
             c.generate.images_per_prompt, "at least 2 images per prompt to form pairs")
    _sampling(c.generate, "generate")

    _require(c.score.clip_pretrained is not None or c.score.clip_model in ("tiny", WORLD_CLIP), "score.clip_pretrained",
             None, f"the weights of score.clip_model={c.score.clip_model}: an open_clip tag (openai, "
             f"laion2b_s34b_b79k), a local weights file, or {RANDOM_WEIGHTS} (random weights: code-path tests only)")
    _require(not (c.score.clip_model == "tiny" and c.score.clip_pretrained is not None), "score.clip_pretrained",
             c.score.clip_pretrained, "null with score.clip_model=tiny (a random CLIP for code-path tests); "
             "name the weights' architecture in score.clip_model instead")
    _require(bool(c.score.rewards) and all(w > 0 for w in c.score.rewards.values()), "score.rewards",
             c.score.rewards, "a non-empty mapping of score names to weights > 0")
    available = {"IS", "TS"} | ({"DINO"} if c.score.dino_model else set()) | (
        {"PickScore"} if c.score.pickscore_model else set()) | ({"HPS"} if c.score.hps_weights else set()) | (
        {"Aesthetic"} if c.score.aesthetic_weights else set())
    _require(set(c.score.rewards) <= available, "score.rewards", c.score.rewards,
             f"names among {', '.join(sorted(available))} (DINO needs score.dino_model, "
             "PickScore needs score.pickscore_model, HPS needs score.hps_weights, "
             "Aesthetic needs score.aesthetic_weights)")
    _require(c.score.aesthetic_weights is None or bool(c.score.aesthetic_clip_pretrained),
             "score.aesthetic_clip_pretrained", c.score.aesthetic_clip_pretrained,
             "the CLIP weights the aesthetic MLP was trained on (openai, or a local file): a random CLIP's "
             "embeddings would make its ratings meaningless")
    _positive(c.score.batch_size, "score.batch_size")

    _require(0.0 <= c.pair.lambda_ <= 1.0, "pair.lambda", c.pair.lambda_, "a value in [0, 1]")
    _positive(c.pair.max_per_prompt, "pair.max_per_prompt")
    _positive(c.pair.max_total, "pair.max_total")

    _require(0.0 < c.filter.angle <= 180.0, "filter.angle", c.filter.angle,
             "a half-width in degrees in (0, 180]")
    if (c.filter.angle_min is None) != (c.filter.angle_max is None):
        raise ConfigError("filter.angle_min and filter.angle_max must be set together (or both null)")
    if c.filter.angle_min is not None:
        _require(-180.0 <= c.filter.angle_min < c.filter.angle_max <= 180.0, "filter.angle_min",
                 (c.filter.angle_min, c.filter.angle_max), "-180 <= angle_min < angle_max <= 180")
    _require(c.filter.min_norm >= 0, "filter.min_norm", c.filter.min_norm, "a value >= 0")

    expected_mode = "rank" if c.dpo.loss == "rank_dpo" else "pairs"
    _require(c.pair.mode == expected_mode, "pair.mode", c.pair.mode,
             f"{expected_mode} with dpo.loss={c.dpo.loss} (set both: dpo.loss=rank_dpo with pair.mode=rank)")
    for key in ("beta", "steps", "learning_rate", "batch_size", "gradient_accumulation_steps",
                "lora_rank"):
        _positive(getattr(c.dpo, key), f"dpo.{key}")
    _lora_targets(c.dpo.lora_targets, "dpo.lora_targets")
    _require(c.dpo.max_grad_norm is None or c.dpo.max_grad_norm > 0, "dpo.max_grad_norm", c.dpo.max_grad_norm,
             "null (no clipping) or a norm > 0 (diffusers' DPO scripts: 1.0)")
    _require(c.dpo.weight_decay >= 0, "dpo.weight_decay", c.dpo.weight_decay, "a value >= 0 (diffusers': 1e-2)")
    _require(c.dpo.min_timestep >= 0, "dpo.min_timestep", c.dpo.min_timestep, "a timestep >= 0 (0: from the first)")
    _require(c.dpo.max_timestep is None or c.dpo.max_timestep > c.dpo.min_timestep, "dpo.max_timestep",
             c.dpo.max_timestep, f"null (up to the scheduler's last timestep) or above dpo.min_timestep={c.dpo.min_timestep}")
    for group in ("finetune", "dpo"):
        every = getattr(c, group).checkpoint_every
        _require(every >= 0, f"{group}.checkpoint_every", every, "a number of steps >= 0 (0: no checkpoints)")

    _sampling(c.evaluate, "evaluate")
    for key in ("images_per_prompt", "num_prompts", "grid_prompts"):
        _positive(getattr(c.evaluate, key), f"evaluate.{key}")
    _require(c.evaluate.num_prompts * c.evaluate.images_per_prompt >= 2, "evaluate.images_per_prompt",
             c.evaluate.images_per_prompt, f"at least 2 evaluation images in all (with evaluate.num_prompts="
             f"{c.evaluate.num_prompts}): a round's std and standard errors need two")
    _require(c.evaluate.grid_prompts <= c.evaluate.num_prompts, "evaluate.grid_prompts",
             c.evaluate.grid_prompts, f"at most evaluate.num_prompts={c.evaluate.num_prompts}")
    _frontier(c)
    _compute(c)
    _logging(c)


def _frontier(c: Config) -> None:
    """frontier: LoRA scales > 0 other than 1 (round 0 itself), guidance scales > 0 other than
    evaluate's, fractions of finetune.steps that stop at distinct steps before the last; each
    value once."""
    f = c.frontier
    for i, scale in enumerate(f.lora_scales):
        _require(0 < scale != 1, f"frontier.lora_scales[{i}]", scale,
                 "a scale > 0 other than 1 (round 0 as trained, already a point of the frontier)")
    for i, guidance in enumerate(f.guidance_scales):
        _require(guidance > 0 and guidance != c.evaluate.guidance_scale, f"frontier.guidance_scales[{i}]", guidance,
                 f"a scale > 0 other than evaluate.guidance_scale={c.evaluate.guidance_scale} (round 0 itself)")
    steps = c.finetune.steps
    early = early_stop_steps(f.finetune_fractions, steps)
    for i, (fraction, step) in enumerate(zip(f.finetune_fractions, early)):
        _require(0 < fraction < 1 and 1 <= step < steps, f"frontier.finetune_fractions[{i}]", fraction,
                 f"a fraction in (0, 1) that stops at a step from 1 to finetune.steps - 1 "
                 f"(finetune.steps={steps}; all the steps are round 0 itself)")
    for key, values in (("lora_scales", f.lora_scales), ("guidance_scales", f.guidance_scales)):
        _require(len(set(values)) == len(values), f"frontier.{key}", list(values), "each value once")
    _require(len(set(early)) == len(early), "frontier.finetune_fractions", list(f.finetune_fractions),
             f"each value once (each a distinct step of finetune.steps={steps})")


# the import each tracker needs (accelerate's TensorBoardTracker takes tensorboardX when tensorboard is absent)
TRACKER_PACKAGES = {"tensorboard": ("tensorboard", "tensorboardX"), "wandb": ("wandb",)}


def _logging(c: Config) -> None:
    """logging: a tracker whose package is installed; previews that sample the UNet as it trains."""
    g = c.logging
    _require(g.sample_every >= 0, "logging.sample_every", g.sample_every, "a number of steps >= 0 (0: no previews)")
    if g.report_to is not None:
        packages = TRACKER_PACKAGES[g.report_to]
        _require(any(importlib.util.find_spec(name) is not None for name in packages), "logging.report_to",
                 g.report_to, f"a tracker whose package is installed (pip install {packages[0]}), or null")
    _require(g.sample_every == 0 or not c.dpo.compile, "logging.sample_every", g.sample_every,
             "0 with dpo.compile: true (previews at other shapes would recompile the UNet's compiled blocks)")


def _compute(c: Config) -> None:
    """compute: processes and machines (dbdpo.distributed)."""
    k = c.compute
    for key in ("num_processes", "num_machines", "main_process_port"):
        _positive(getattr(k, key), f"compute.{key}")
    if k.threads is not None:
        _positive(k.threads, "compute.threads")
    _require(k.num_processes % k.num_machines == 0, "compute.num_processes", k.num_processes,
             f"a multiple of compute.num_machines={k.num_machines} (the same number on every machine)")
    _require(0 <= k.machine_rank < k.num_machines, "compute.machine_rank", k.machine_rank,
             f"0 .. compute.num_machines-1 = {k.num_machines - 1}")
    _require(k.num_machines == 1 or bool(k.main_process_ip), "compute.main_process_ip", k.main_process_ip,
             "the main machine's address when compute.num_machines > 1")
    # Only the UNet is wrapped for data parallelism: a text encoder trained beside it would
    # get each process's own gradients and drift apart between processes.
    _require(k.num_processes == 1 or not c.finetune.train_text_encoder, "finetune.train_text_encoder",
             c.finetune.train_text_encoder, f"false with compute.num_processes={k.num_processes} (text encoder "
             "training runs on one process)")
