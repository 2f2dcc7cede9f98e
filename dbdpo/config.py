"""Typed params: `params.yaml` is loaded once into these dataclasses, validated, passed down.

Every error names the key (e.g. ``filter.angle``) and the value that would be accepted, and is
raised before any model is built, so a bad sweep value costs a second, not a training run.
"""

from __future__ import annotations

import dataclasses
import math
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import yaml


class ConfigError(ValueError):
    """A params.yaml value is missing, unknown or out of range."""


@dataclass(frozen=True)
class ModelConfig:
    backbone: str = "tiny"
    path: str | None = None
    revision: str | None = None
    variant: str | None = None  # weight files to load, e.g. fp16 (model.fp16.safetensors)
    vae: str | None = None  # a separate AutoencoderKL (hub id or local dir), e.g. an fp16-safe SDXL VAE
    resolution: int | None = None  # pixels; None = the UNet's native size (SD2.1 768, SDXL 1024)
    precision: str = "fp32"  # weights when sampling (generate, evaluate) on a GPU


@dataclass(frozen=True)
class ConceptConfig:
    dir: str = "data/concept"
    token: str = "sks"
    class_noun: str = "toy"
    kind: str = "object"
    min_size: int = 32


@dataclass(frozen=True)
class FinetuneConfig:
    steps: int = 600
    learning_rate: float = 5e-3
    batch_size: int = 4
    lora_rank: int = 16
    lora_targets: str = "attention"  # attention | unet (dbdpo.lora.TARGET_SETS)
    instance_prompt: str = "a photo of {token} {class_noun}"
    prior_preservation: bool = False
    class_prompt: str = "a photo of a {class_noun}"
    num_class_images: int = 8
    prior_loss_weight: float = 1.0
    mixed_precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass(frozen=True)
class GenerateConfig:
    num_prompts: int = 8
    images_per_prompt: int = 4
    steps: int = 20
    guidance_scale: float = 7.5
    batch_size: int = 8
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig:
    clip_model: str = "dbdpo-world-clip"
    clip_pretrained: str | None = None
    dino_model: str | None = None
    pickscore_model: str | None = None
    ts_prompt: str = "with_class"
    batch_size: int = 32
    seed: int = 0
    # RankDPO's reward ensemble: score column -> weight (ranked lists, pair.mode=rank)
    rewards: dict[str, float] = field(default_factory=lambda: {"IS": 1.0, "TS": 1.0})


@dataclass(frozen=True)
class PairConfig:
    mode: str = "pairs"  # pairs (DreamBoothDPO) | rank (RankDPO ranked lists)
    lambda_: float = 0.5  # `lambda` in params.yaml
    normalize: str = "zscore"
    max_per_prompt: int = 6
    max_total: int = 64
    seed: int = 0


@dataclass(frozen=True)
class FilterConfig:
    kind: str = "angle"
    angle: float = 25.0
    angle_min: float | None = None
    angle_max: float | None = None
    threshold: float = 0.0
    min_norm: float = 0.0


@dataclass(frozen=True)
class DpoConfig:
    loss: str = "diffusion_dpo"  # diffusion_dpo | rank_dpo
    rank_weighting: str = "dcg"  # rank_dpo pair weights: dcg (the paper's) | unit
    rank_by: str = "preference"  # rank_dpo DCG ranks: preference (psi, the paper's) | model (current s)
    beta: float = 2500.0
    steps: int = 100
    learning_rate: float = 1e-3
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lora_rank: int = 4
    lora_targets: str = "attention"  # attention | unet (dbdpo.lora.TARGET_SETS)
    mixed_precision: str = "fp32"
    gradient_checkpointing: bool = False
    seed: int = 0


@dataclass(frozen=True)
class RoundConfig:
    """One round: its start model and the knobs it overrides, e.g.
    `round_2: {start: round_1, generate: {num_prompts: 16}, dpo: {beta: 5000}}`."""

    start: str = "round_0"
    overrides: dict[str, dict] = field(default_factory=dict)  # group -> {params.yaml key: value}


@dataclass(frozen=True)
class EvaluateConfig:
    images_per_prompt: int = 2
    num_prompts: int = 20
    steps: int = 20
    guidance_scale: float = 7.5
    batch_size: int = 8
    grid_prompts: int = 4
    seed: int = 1234


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    rounds: dict[str, RoundConfig] = field(default_factory=lambda: {"round_1": RoundConfig()})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)

    def round_names(self) -> list[str]:
        """Rounds in params order (each starts from the previous one's model)."""
        return list(self.rounds)

    def for_round(self, name: str) -> Config:
        """This config with round `name`'s overrides applied to its groups."""
        merged = {}
        for group, values in self.rounds[name].overrides.items():
            base = getattr(self, group)
            current = {_yaml_name(f.name): getattr(base, f.name) for f in dataclasses.fields(base)}
            merged[group] = _build(type(base), {**current, **values}, f"rounds.{name}.{group}")
        return dataclasses.replace(self, **merged)

    def prompt_slice(self, name: str) -> tuple[int, int]:
        """[start, stop) of round `name` in the training prompt pool: rounds never share prompts."""
        start = 0
        for other in self.round_names():
            count = self.for_round(other).generate.num_prompts
            if other == name:
                return start, start + count
            start += count
        raise KeyError(name)


ROUND_GROUPS = ("generate", "pair", "filter", "dpo")  # the groups a round may override


# --- loading -----------------------------------------------------------------------------

_YAML_NAMES = {"lambda_": "lambda"}


def _yaml_name(field_name: str) -> str:
    return _YAML_NAMES.get(field_name, field_name)


def _coerce(value, annotation, key: str):
    """Check `value` against a field annotation (str, int, float, bool, X | None)."""
    if isinstance(annotation, types.UnionType):
        args = typing.get_args(annotation)
        if value is None and type(None) in args:
            return None
        annotation = next(a for a in args if a is not type(None))
    if typing.get_origin(annotation) is dict:
        if not isinstance(value, dict) or not all(isinstance(k, str) for k in value):
            raise ConfigError(f"{key}: expected a mapping of names to numbers, got {value!r}")
        return {k: _coerce(v, float, f"{key}.{k}") for k, v in value.items()}
    if annotation is float and not isinstance(value, bool) and isinstance(value, (int, str)):
        # YAML 1.1 reads `1e-4` (no dot) as a string: accept any spelling float() accepts.
        try:
            return float(value)
        except ValueError:
            raise ConfigError(f"{key}: expected a number, got {value!r}") from None
    if annotation is bool and not isinstance(value, bool):
        raise ConfigError(f"{key}: expected true or false, got {value!r}")
    if annotation is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ConfigError(f"{key}: expected an integer, got {value!r}")
    if not isinstance(value, annotation):
        raise ConfigError(f"{key}: expected {annotation.__name__}, got {value!r}")
    return value


def _build(cls, data, prefix: str, complete: bool = False):
    """cls from a params mapping; `complete`: every key must be given (no silent code default)."""
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping of keys, got {data!r}")
    hints = typing.get_type_hints(cls)
    known = {_yaml_name(f.name): f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(known))
    if unknown:
        raise ConfigError(
            f"unknown key {prefix}.{unknown[0]}; the keys of {prefix} are: {', '.join(known)}"
        )
    missing = [name for name in known if name not in data]
    if complete and missing:
        raise ConfigError(f"missing key {prefix}.{missing[0]}: every key of every group must be set "
                          "(copy it from the repository's params.yaml)")
    values = {}
    for name, f in known.items():
        if name in data:
            values[f.name] = _coerce(data[name], hints[f.name], f"{prefix}.{name}")
    return cls(**values)


def _build_round(data, prefix: str) -> RoundConfig:
    if not isinstance(data, dict):
        raise ConfigError(f"{prefix}: expected a mapping like {{start: round_0}}, got {data!r}")
    unknown = sorted(set(data) - {"start", *ROUND_GROUPS})
    if unknown:
        raise ConfigError(f"unknown key {prefix}.{unknown[0]}; a round has start and may override "
                          f"{', '.join(ROUND_GROUPS)}")
    if not isinstance(data.get("start"), str):
        raise ConfigError(f"{prefix}.start: expected the previous round's name (round_0 for the first)")
    hints = typing.get_type_hints(Config)
    overrides = {}
    for group in ROUND_GROUPS:
        if group in data:
            values = data[group] or {}
            _build(hints[group], values, f"{prefix}.{group}")  # key and type check, before use
            overrides[group] = values
    return RoundConfig(start=data["start"], overrides=overrides)


def config_from_dict(raw: dict) -> Config:
    """Build and validate a Config from the parsed params.yaml mapping."""
    if not isinstance(raw, dict):
        raise ConfigError("params.yaml: expected a mapping of stage groups")
    top = {f.name: f for f in dataclasses.fields(Config)}
    unknown = sorted(set(raw) - set(top))
    if unknown:
        raise ConfigError(f"unknown key {unknown[0]}; the groups are: {', '.join(top)}")
    hints = typing.get_type_hints(Config)
    groups = {}
    missing = [name for name in top if name not in raw]
    if missing:
        raise ConfigError(f"missing group {missing[0]}: params.yaml must set every group ({', '.join(top)}); "
                          "copy it from the repository's params.yaml")
    for name in top:
        if name != "rounds":
            groups[name] = _build(hints[name], raw[name], name, complete=True)
    rounds = raw["rounds"]
    if not isinstance(rounds, dict) or not rounds:
        raise ConfigError("rounds: expected a non-empty mapping like {round_1: {start: round_0}}")
    groups["rounds"] = {str(k): _build_round(v, f"rounds.{k}") for k, v in rounds.items()}
    config = Config(**groups)
    validate(config)
    return config


def load_config(path: str | Path = "params.yaml") -> Config:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: params file not found (run from the repository root)")
    with path.open() as f:
        raw = yaml.safe_load(f) or {}
    try:
        return config_from_dict(raw)
    except ConfigError as e:
        raise ConfigError(f"{path}: {e}") from None


# fp32, not accelerate's "no": DVC's `-S` rewrites params.yaml unquoted, and YAML 1.1 reads
# a bare `no` as false.
PRECISIONS = ("fp32", "fp16", "bf16")
LORA_TARGETS = ("attention", "unet")  # the keys of dbdpo.lora.TARGET_SETS
RANK_BY = ("preference", "model")  # RankDPO's DCG ranks (dbdpo.losses.rank_dpo_loss)

# --- validation --------------------------------------------------------------------------


def _require(ok: bool, key: str, value, expected: str) -> None:
    if not ok:
        raise ConfigError(f"{key}={value!r} is invalid: expected {expected}")


def _one_of(value, choices: tuple, key: str) -> None:
    _require(value in choices, key, value, "one of " + " | ".join(map(str, choices)))


def _positive(value, key: str) -> None:
    _require(value > 0, key, value, "a value > 0")


def _finite_floats(c: Config) -> None:
    """inf / nan pass every `> 0` check and then poison training: refuse them up front."""
    for group in dataclasses.fields(c):
        value = getattr(c, group.name)
        if not dataclasses.is_dataclass(value):
            continue
        for f in dataclasses.fields(value):
            v = getattr(value, f.name)
            items = v.items() if isinstance(v, dict) else [(None, v)]
            for sub, x in items:
                if isinstance(x, float) and not math.isfinite(x):
                    key = f"{group.name}.{f.name.rstrip('_')}" + (f".{sub}" if sub is not None else "")
                    _require(False, key, x, "a finite number")


# A round name reaches DVC's shell command line (`--round ${key}`): only these characters.
ROUND_NAME = re.compile(r"round_[1-9][0-9]*")


def validate(c: Config) -> None:
    """Range and consistency checks; raises ConfigError naming the first bad key."""
    validate_groups(c)
    names = c.round_names()
    for i, name in enumerate(names):
        _require(ROUND_NAME.fullmatch(name) is not None, f"rounds.{name}", name,
                 "a round name round_<n> with n = 1, 2, ... and nothing else (round_0 is the "
                 "DreamBooth model)")
        expected = "round_0" if i == 0 else names[i - 1]
        _require(c.rounds[name].start == expected, f"rounds.{name}.start",
                 c.rounds[name].start, f"{expected} (the previous round's model)")
        if c.rounds[name].overrides:
            try:
                validate_groups(c.for_round(name))
            except ConfigError as e:
                raise ConfigError(f"rounds.{name} overrides: {e}") from None


def validate_groups(c: Config) -> None:
    """Checks of the stage groups (also run on each round's overridden config)."""
    _finite_floats(c)
    _one_of(c.model.backbone, ("tiny", "sd", "sdxl"), "model.backbone")
    if c.model.resolution is not None:
        _require(c.model.resolution > 0 and c.model.resolution % 8 == 0, "model.resolution",
                 c.model.resolution, "null (the model's native size) or a positive multiple of 8 pixels")
    _one_of(c.model.precision, PRECISIONS, "model.precision")
    if c.model.backbone != "tiny":
        _require(bool(c.model.path), "model.path", c.model.path,
                 f"a hub id or local directory for backbone {c.model.backbone}")
    else:
        for key in ("path", "variant", "vae"):
            _require(getattr(c.model, key) is None, f"model.{key}", getattr(c.model, key),
                     "null with backbone tiny (it is built in); set model.backbone: sd or sdxl to load weights")
    _one_of(c.concept.kind, ("object", "live"), "concept.kind")
    _require(bool(c.concept.token.strip()), "concept.token", c.concept.token, "a non-empty token")
    _require(bool(c.concept.class_noun.strip()), "concept.class_noun", c.concept.class_noun,
             "a non-empty class noun")
    _positive(c.concept.min_size, "concept.min_size")

    for key in ("steps", "learning_rate", "batch_size", "lora_rank", "num_class_images"):
        _positive(getattr(c.finetune, key), f"finetune.{key}")
    _require(c.finetune.prior_loss_weight >= 0, "finetune.prior_loss_weight",
             c.finetune.prior_loss_weight, "a value >= 0")
    _one_of(c.finetune.mixed_precision, PRECISIONS, "finetune.mixed_precision")
    _one_of(c.finetune.lora_targets, LORA_TARGETS, "finetune.lora_targets")

    _positive(c.generate.num_prompts, "generate.num_prompts")
    _require(c.generate.images_per_prompt >= 2, "generate.images_per_prompt",
             c.generate.images_per_prompt, "at least 2 images per prompt to form pairs")
    for key in ("steps", "batch_size"):
        _positive(getattr(c.generate, key), f"generate.{key}")

    _require(not (c.score.clip_model == "tiny" and c.score.clip_pretrained is not None), "score.clip_pretrained",
             c.score.clip_pretrained, "null with score.clip_model=tiny (a random CLIP for code-path tests); "
             "name the weights' architecture in score.clip_model instead")
    _one_of(c.score.ts_prompt, ("with_class", "without_concept"), "score.ts_prompt")
    _require(bool(c.score.rewards) and all(w > 0 for w in c.score.rewards.values()), "score.rewards",
             c.score.rewards, "a non-empty mapping of score names to weights > 0")
    available = {"IS", "TS"} | ({"DINO"} if c.score.dino_model else set()) | (
        {"PickScore"} if c.score.pickscore_model else set())
    _require(set(c.score.rewards) <= available, "score.rewards", c.score.rewards,
             f"names among {', '.join(sorted(available))} (DINO needs score.dino_model, "
             "PickScore needs score.pickscore_model)")
    _positive(c.score.batch_size, "score.batch_size")

    _one_of(c.pair.mode, ("pairs", "rank"), "pair.mode")
    _require(0.0 <= c.pair.lambda_ <= 1.0, "pair.lambda", c.pair.lambda_, "a value in [0, 1]")
    _one_of(c.pair.normalize, ("zscore", "minmax", "none"), "pair.normalize")
    _positive(c.pair.max_per_prompt, "pair.max_per_prompt")
    _positive(c.pair.max_total, "pair.max_total")

    _one_of(c.filter.kind, ("none", "threshold", "angle"), "filter.kind")
    _require(0.0 < c.filter.angle <= 180.0, "filter.angle", c.filter.angle,
             "a half-width in degrees in (0, 180]")
    if (c.filter.angle_min is None) != (c.filter.angle_max is None):
        raise ConfigError("filter.angle_min and filter.angle_max must be set together (or both null)")
    if c.filter.angle_min is not None:
        _require(-180.0 <= c.filter.angle_min < c.filter.angle_max <= 180.0, "filter.angle_min",
                 (c.filter.angle_min, c.filter.angle_max), "-180 <= angle_min < angle_max <= 180")
    _require(c.filter.min_norm >= 0, "filter.min_norm", c.filter.min_norm, "a value >= 0")

    _one_of(c.dpo.loss, ("diffusion_dpo", "rank_dpo"), "dpo.loss")
    _one_of(c.dpo.rank_weighting, ("dcg", "unit"), "dpo.rank_weighting")
    _one_of(c.dpo.rank_by, RANK_BY, "dpo.rank_by")
    expected_mode = "rank" if c.dpo.loss == "rank_dpo" else "pairs"
    _require(c.pair.mode == expected_mode, "pair.mode", c.pair.mode,
             f"{expected_mode} with dpo.loss={c.dpo.loss} (set both: -S dpo.loss=rank_dpo -S pair.mode=rank)")
    for key in ("beta", "steps", "learning_rate", "batch_size", "gradient_accumulation_steps",
                "lora_rank"):
        _positive(getattr(c.dpo, key), f"dpo.{key}")
    _one_of(c.dpo.mixed_precision, PRECISIONS, "dpo.mixed_precision")
    _one_of(c.dpo.lora_targets, LORA_TARGETS, "dpo.lora_targets")

    for key in ("images_per_prompt", "num_prompts", "steps", "batch_size", "grid_prompts"):
        _positive(getattr(c.evaluate, key), f"evaluate.{key}")
    _require(c.evaluate.grid_prompts <= c.evaluate.num_prompts, "evaluate.grid_prompts",
             c.evaluate.grid_prompts, f"at most evaluate.num_prompts={c.evaluate.num_prompts}")
