"""Typed params: one dataclass per params.yaml group, built from a mapping with every value's
type checked. dbdpo.params loads and validates params.yaml into them once; the stages pass
them down.
"""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Literal

# The allowed values of every choice param live in its type, checked once when params are built.
# fp32, not accelerate's "no": DVC's `-S` rewrites params.yaml unquoted, and YAML 1.1 reads
# a bare `no` as false.
Precision = Literal["fp32", "fp16", "bf16"]
BackboneKind = Literal["world", "sd", "sdxl"]
FinetuneMethod = Literal["lora", "full"]
Optimizer = Literal["adamw", "adamw_8bit"]  # adamw_8bit: bitsandbytes
Scheduler = Literal["ddim", "dpmpp_2m", "euler_a"]  # the keys of dbdpo.sampling.SCHEDULERS
TsPrompt = Literal["with_class", "without_concept"]  # the text TS compares with (dbdpo.data)
PairMode = Literal["pairs", "rank"]
Normalize = Literal["zscore", "minmax", "none"]
FilterKind = Literal["none", "threshold", "angle"]
DpoLoss = Literal["diffusion_dpo", "rank_dpo"]
RankWeighting = Literal["dcg", "unit"]
RankBy = Literal["preference", "model"]  # what orders RankDPO's DCG ranks (dbdpo.losses.rank_dpo_loss)
ReportTo = Literal["tensorboard", "wandb"]  # accelerate's trackers, as diffusers' --report_to


@dataclass(frozen=True)
class ModelConfig:
    backbone: BackboneKind = "world"
    path: str | None = None
    revision: str | None = None
    variant: str | None = None  # weight files to load, e.g. fp16 (model.fp16.safetensors)
    vae: str | None = None  # a separate AutoencoderKL (hub id or local dir), e.g. an fp16-safe SDXL VAE
    resolution: int | None = None  # pixels; None = the UNet's native size (SD2.1 768, SDXL 1024)
    precision: Precision = "fp32"  # weights when sampling (generate, evaluate) on a GPU


@dataclass(frozen=True)
class ConceptConfig:
    dir: str = "data/concept"
    token: str = "sks"
    class_noun: str = "toy"
    min_size: int = 32


@dataclass(frozen=True)
class ConceptEntry:
    """One concept of a run over several (`concepts.<name>` in params.yaml): every key is given,
    so that dvc.yaml can list exactly the keys of it each stage reads (stages/concepts.py).
    Each replaces the concept group's key of its name; concept.min_size stays shared."""

    dir: str
    token: str
    class_noun: str


@dataclass(frozen=True)
class FinetuneConfig:
    method: FinetuneMethod = "lora"  # lora | full (every UNet weight, the paper's DreamBooth)
    train_text_encoder: bool = False  # also train the text encoder(s): fully, or a LoRA on their attention
    optimizer: Optimizer = "adamw"  # adamw | adamw_8bit (bitsandbytes, GPU)
    steps: int = 600
    learning_rate: float = 1e-3
    batch_size: int = 4
    lora_rank: int = 16
    # attention | unet (dbdpo.lora.TARGET_SETS), or a list of module names (["attn2.to_k", ...])
    lora_targets: str | tuple[str, ...] = "unet"
    instance_prompt: str = "a photo of {token} {class_noun}"
    captions: bool = False  # each photo's <photo>.txt caption as its instance prompt (photos without one: instance_prompt)
    prior_preservation: bool = False
    class_prompt: str = "a photo of a {class_noun}"
    num_class_images: int = 8
    prior_loss_weight: float = 1.0
    snr_gamma: float | None = None  # Min-SNR-gamma loss weighting (dbdpo.losses.min_snr_weights); None: off
    mixed_precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    checkpoint_every: int = 50  # save the loop's state every N steps to resume a killed run; 0: never
    seed: int = 0


@dataclass(frozen=True)
class SamplingConfig:
    """How a stage samples images (dbdpo.sampling.generate): generate and evaluate share these."""

    steps: int = 20  # denoising steps
    scheduler: Scheduler = "ddim"  # ddim | dpmpp_2m | euler_a (dbdpo.sampling.SCHEDULERS)
    guidance_scale: float = 7.5  # classifier-free guidance
    batch_size: int = 8  # images per pipeline call


@dataclass(frozen=True)
class GenerateConfig(SamplingConfig):
    prompts: str = "data/prompts/train.txt"  # the training prompt pool; rounds take disjoint slices
    num_prompts: int = 16
    images_per_prompt: int = 6
    seed: int = 0


@dataclass(frozen=True)
class ScoreConfig:
    clip_model: str = "dbdpo-world-clip"
    clip_pretrained: str | None = None
    dino_model: str | None = None
    pickscore_model: str | None = None
    hps_weights: str | None = None  # an HPSv2 checkpoint file: the HPS reward column when set
    hps_arch: str = "ViT-H-14"  # the open_clip architecture of hps_weights (HPSv2 and v2.1: ViT-H-14)
    aesthetic_weights: str | None = None  # LAION's aesthetic MLP file: the Aesthetic reward column when set
    aesthetic_clip: str = "ViT-L-14"  # the open_clip model whose image embedding the MLP reads
    aesthetic_clip_pretrained: str = "openai"  # its weights: an open_clip tag or a local file
    ts_prompt: TsPrompt = "without_concept"  # the authors' evaluator: token and class removed
    batch_size: int = 32
    seed: int = 0
    # RankDPO's reward ensemble: score column -> weight (ranked lists, pair.mode=rank)
    rewards: dict[str, float] = field(default_factory=lambda: {"IS": 1.0, "TS": 1.0})


@dataclass(frozen=True)
class PairConfig:
    mode: PairMode = "pairs"  # pairs (DreamBoothDPO) | rank (RankDPO ranked lists)
    lambda_: float = 0.5  # `lambda` in params.yaml
    normalize: Normalize = "zscore"
    max_per_prompt: int = 6
    max_total: int = 64
    seed: int = 0


@dataclass(frozen=True)
class FilterConfig:
    kind: FilterKind = "angle"
    angle: float = 25.0
    angle_min: float | None = None
    angle_max: float | None = None
    threshold: float = 0.0
    min_norm: float = 0.0


@dataclass(frozen=True)
class DpoConfig:
    loss: DpoLoss = "diffusion_dpo"  # diffusion_dpo | rank_dpo
    rank_weighting: RankWeighting = "dcg"  # rank_dpo pair weights: dcg (the paper's) | unit
    rank_by: RankBy = "preference"  # rank_dpo DCG ranks: preference (psi, the paper's) | model (current s)
    beta: float = 2500.0
    steps: int = 100
    learning_rate: float = 1e-3
    batch_size: int = 4
    gradient_accumulation_steps: int = 1
    lora_rank: int = 4
    # attention | unet (dbdpo.lora.TARGET_SETS), or a list of module names (["attn2.to_k", ...])
    lora_targets: str | tuple[str, ...] = "attention"
    max_grad_norm: float | None = None  # clip the gradient's norm to this (diffusers' DPO scripts: 1.0); None: no clipping
    weight_decay: float = 0.0  # AdamW's decoupled weight decay on the DPO LoRA (diffusers' DPO scripts: 1e-2)
    # the timesteps the loss is drawn on, uniformly in [min_timestep, max_timestep); max None:
    # the scheduler's num_train_timesteps. 0 and None: every timestep (Wallace et al.; the presets')
    min_timestep: int = 500
    max_timestep: int | None = None
    mixed_precision: Precision = "fp32"
    gradient_checkpointing: bool = False
    compile: bool = False  # torch.compile the UNet for the loop (GPU: fewer, fused kernels)
    checkpoint_every: int = 50  # save the loop's state every N steps to resume a killed run; 0: never
    seed: int = 0


@dataclass(frozen=True)
class RoundConfig:
    """One round: its start model and the knobs it overrides, e.g.
    `round_2: {start: round_1, generate: {num_prompts: 16}, dpo: {beta: 5000}}`."""

    start: str = "round_0"
    # group -> {field name: value}, each value type-checked as the group's own (build_round)
    overrides: dict[str, dict[str, object]] = field(default_factory=dict)


@dataclass(frozen=True)
class EvaluateConfig(SamplingConfig):
    # half the rounds' DDIM steps: the dev concepts' claims read alike (docs/proving_ground.md)
    steps: int = 10
    scheduler: Scheduler = "dpmpp_2m"
    prompts: str = "data/prompts/eval.txt"  # held-out prompts (contexts no training prompt uses)
    images_per_prompt: int = 2
    num_prompts: int = 20
    grid_prompts: int = 4
    seed: int = 1234


def early_stop_steps(fractions: tuple[float, ...], steps: int) -> tuple[int, ...]:
    """The step counts at which finetune keeps its LoRA: frontier.finetune_fractions of
    finetune.steps, each rounded to the nearest step."""
    return tuple(round(f * steps) for f in fractions)


@dataclass(frozen=True)
class FrontierConfig:
    """The baseline frontier (dbdpo.frontier): round 0 sampled on the evaluation prompts and
    seeds under the knobs a user of plain DreamBooth already has."""

    lora_scales: tuple[float, ...] = (0.5, 1.5)  # the DreamBooth LoRA's scale (1: as trained)
    guidance_scales: tuple[float, ...] = (4.0, 12.0)  # classifier-free guidance, for evaluate's
    # DreamBooth stopped early: finetune keeps its LoRA after these fractions of finetune.steps
    finetune_fractions: tuple[float, ...] = (0.25, 0.5)


@dataclass(frozen=True)
class ComputeConfig:
    """How many processes run a stage (dbdpo.distributed): not what it computes, so no stage
    lists these keys in dvc.yaml and changing them reruns nothing."""

    num_processes: int = 1  # processes in all, over every machine (accelerate's --num_processes)
    num_machines: int = 1
    machine_rank: int = 0  # this machine's index, 0 on the main one
    main_process_ip: str | None = None  # the main machine's address (num_machines > 1)
    main_process_port: int = 29500
    config_file: str | None = None  # an accelerate config file (`accelerate config`); its settings win
    # CPU threads of each stage process (dbdpo.threads); None: its share of the cores with the
    # other dbdpo stages running on the machine
    threads: int | None = None


@dataclass(frozen=True)
class LoggingConfig:
    """What the training stages report beside their DVCLive logs: like compute, read beside the
    declared params (it changes no tracked output), so changing it reruns nothing."""

    report_to: ReportTo | None = None  # also send each step's row (and the previews) to this tracker
    sample_every: int = 0  # finetune and dpo sample preview images every N steps (DVCLive log_image); 0: none


@dataclass(frozen=True)
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    concept: ConceptConfig = field(default_factory=ConceptConfig)
    # several concepts in one run, each under concepts/<name>/ (empty: the one concept above)
    concepts: dict[str, ConceptEntry] = field(default_factory=dict)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)
    generate: GenerateConfig = field(default_factory=GenerateConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    pair: PairConfig = field(default_factory=PairConfig)
    filter: FilterConfig = field(default_factory=FilterConfig)
    dpo: DpoConfig = field(default_factory=DpoConfig)
    rounds: dict[str, RoundConfig] = field(default_factory=lambda: {"round_1": RoundConfig()})
    evaluate: EvaluateConfig = field(default_factory=EvaluateConfig)
    frontier: FrontierConfig = field(default_factory=FrontierConfig)
    compute: ComputeConfig = field(default_factory=ComputeConfig)
    logging: LoggingConfig = field(default_factory=LoggingConfig)

    def round_names(self) -> list[str]:
        """Rounds in params order (each starts from the previous one's model)."""
        return list(self.rounds)

    def for_round(self, name: str) -> Config:
        """This config with round `name`'s overrides applied to its groups."""
        merged = {group: dataclasses.replace(getattr(self, group), **values)
                  for group, values in self.rounds[name].overrides.items()}
        return dataclasses.replace(self, **merged)

    def for_concept(self, name: str | None) -> Config:
        """The one-concept config of concept `name` of `concepts`: its folder, token and class
        noun in the concept group, no other concepts. None: this config, as it is."""
        if name is None:
            return self
        concept = dataclasses.replace(self.concept, **dataclasses.asdict(self.concepts[name]))
        return dataclasses.replace(self, concept=concept, concepts={})

    def round_plans(self) -> dict[str, RoundPlan]:
        """Every round's plan, in params order: each takes the next generate.num_prompts
        prompts of the training pool (rounds never share a prompt) and its own seed range."""
        plans, offset = {}, 0
        for index, name in enumerate(self.round_names(), start=1):
            generate = self.for_round(name).generate
            plans[name] = RoundPlan(name, index, self.rounds[name].start, (offset, offset + generate.num_prompts),
                                    round_seed(generate.seed, index))
            offset += generate.num_prompts
        return plans


@dataclass(frozen=True)
class RoundPlan:
    """Where a round sits in the run. A round's plan also depends on the rounds before it
    (their prompt counts); those reach its stages through its start model, since each round
    starts from the previous one (dbdpo.validation)."""

    name: str
    index: int  # 1 for round_1
    start: str  # the model it samples and DPO's reference: the previous round's
    prompts: tuple[int, int]  # [start, stop) of the training pool
    seed: int  # its first generation seed


SEEDS_PER_ROUND = 1_000_000  # round r's seeds start at generate.seed + r * this: rounds never share a seed


def round_seed(seed: int, round_index: int) -> int:
    """The first seed of round `round_index` (1 for round_1) when generation starts at `seed`."""
    return seed + round_index * SEEDS_PER_ROUND


ROUND_GROUPS = ("generate", "pair", "filter", "dpo")  # the groups a round may override


TS_PROMPTS = typing.get_args(TsPrompt)
RANK_BY = typing.get_args(RankBy)
LORA_TARGETS = ("attention", "unet")  # the keys of dbdpo.lora.TARGET_SETS (or a list of module names)
WORLD_CLIP = "dbdpo-world-clip"  # score.clip_model: the proving ground's trained CLIP (dbdpo.scoring)
RANDOM_WEIGHTS = "random"  # score.clip_pretrained: random weights, asked for by name (code-path tests only)


_YAML_NAMES = {"lambda_": "lambda"}


def yaml_name(field_name: str) -> str:
    """A field's key in params.yaml (lambda_ is `lambda`, a Python keyword)."""
    return _YAML_NAMES.get(field_name, field_name)
