"""Everything a run will read, resolved before any work (`dbdpo check`, and the first stage).

A GPU run that finds its CLIP weights missing only at the score stage has spent DreamBooth and
a round of sampling first. So every weight the params name (backbone, VAE, CLIP, DINO,
PickScore, HPS, aesthetic), the prompt files and the concept photos are looked up on disk or
in the local Hugging Face cache first, and each one that is absent is reported with the
command that fetches exactly its files.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from dbdpo.config import RANDOM_WEIGHTS, WORLD_CLIP, Config
from dbdpo.errors import BackboneError, UserError
from dbdpo.model_files import (
    check_pipeline_dir,
    hub_offline,
    is_local_path,
    resolve_pretrained,
)
from dbdpo.world.architecture import WORLD_UNET, WORLD_VAE, WORLD_WEIGHTS

TOKENIZER_FILES = "{merges.txt,special_tokens_map.json,tokenizer_config.json,vocab.json}"


@dataclass(frozen=True)
class Missing:
    """One thing a run needs that is not here: the params key that names it, what it is, and
    the shell command that fetches only its files (None where no command can)."""

    key: str
    what: str
    fetch: str | None = None
    hub: bool = False  # a hub file the loading stage downloads itself when the hub is reachable


@dataclass(frozen=True)
class Report:
    missing: list[Missing]
    warnings: list[str]

    @property
    def ok(self) -> bool:
        return not self.missing


def pipeline_files(hub_id: str, kind: str, variant: str | None) -> str:
    """The `hf download` command of a diffusers pipeline's files that dbdpo reads: configs,
    tokenizers and the safetensors weights of `variant`, nothing else."""
    dot = f".{variant}" if variant else ""
    tokenizers, encoders = ("{tokenizer,tokenizer_2}", "{text_encoder,text_encoder_2}") if kind == "sdxl" else \
        ("tokenizer", "text_encoder")
    return (f"hf download {hub_id} model_index.json scheduler/scheduler_config.json {tokenizers}/{TOKENIZER_FILES} "
            f"{encoders}/{{config.json,model{dot}.safetensors}} "
            f"{{unet,vae}}/{{config.json,diffusion_pytorch_model{dot}.safetensors}}")


def _cached(repo: str, filename: str, revision: str | None = None) -> Path | None:
    from huggingface_hub import try_to_load_from_cache

    found = try_to_load_from_cache(repo, filename, revision=revision)
    return Path(found) if isinstance(found, str) else None


def check_backbone(cfg: Config) -> tuple[list[Missing], Path | None]:
    """model.path (and model.vae): the pipeline folder, or its hub snapshot in the local cache,
    with every part and the safetensors weights of model.variant. Returns the folder found."""
    m = cfg.model
    if m.backbone == "world":
        absent = [p for p in WORLD_WEIGHTS.values() if not p.is_file()]
        return [Missing("model.backbone", f"the proving ground's weights {p} (reinstall dbdpo)") for p in absent], None
    if m.path is None:
        return [Missing("model.path", f"model.backbone={m.backbone} needs model.path: a hub id or a pipeline folder")], None
    missing, folder, fetch = [], None, None
    if is_local_path(m.path):
        try:  # the loader's own resolution, so the message is the one a stage would give
            folder = resolve_pretrained(m.path, m.revision)
        except BackboneError as e:
            return [Missing("model.path", str(e))], None
    else:
        from huggingface_hub import snapshot_download

        try:
            folder = Path(snapshot_download(m.path, revision=m.revision, local_files_only=True))
        except Exception:
            folder = None
        fetch = pipeline_files(m.path, m.backbone, m.variant)
    if folder is None:
        missing.append(Missing("model.path", f"{m.path}: not in the local Hugging Face cache", fetch, hub=True))
    else:
        try:
            check_pipeline_dir(folder, m.backbone, m.path, m.variant)
        except BackboneError as e:
            missing.append(Missing("model.path", str(e), fetch))
    if m.vae is not None and not is_local_path(m.vae) and _cached(m.vae, "config.json") is None:
        missing.append(Missing("model.vae", f"{m.vae}: not in the local Hugging Face cache",
                               f"hf download {m.vae} config.json diffusion_pytorch_model.safetensors", hub=True))
    elif m.vae is not None and is_local_path(m.vae) and not (Path(m.vae).expanduser() / "config.json").is_file():
        missing.append(Missing("model.vae", f"{m.vae}: no config.json there (a diffusers AutoencoderKL folder)"))
    return missing, folder


def check_open_clip(model: str, pretrained: str | None, keys: tuple[str, str]) -> list[Missing]:
    """An open_clip model's weights: shipped (the world CLIP), a local file, or an open_clip tag
    whose hub file is in the local cache."""
    if model in ("tiny", WORLD_CLIP) and pretrained is None or pretrained == RANDOM_WEIGHTS:
        return []
    if pretrained is None:
        return [Missing(keys[1], f"null for {keys[0]}={model}: name its weights (an open_clip tag or a file)")]
    if is_local_path(pretrained):
        return [] if Path(pretrained).expanduser().is_file() else [Missing(keys[1], f"{pretrained}: no such file")]
    import open_clip

    hub = (open_clip.get_pretrained_cfg(model, pretrained) or {}).get("hf_hub", "").rstrip("/")
    if not hub:
        return [Missing(keys[1], f"{model} has no hub weights tagged {pretrained!r} in open_clip; download its "
                                 f"checkpoint and set {keys[1]} to the file")]
    if _cached(hub, "open_clip_model.safetensors") or _cached(hub, "open_clip_pytorch_model.bin"):
        return []
    return [Missing(keys[1], f"{model} / {pretrained}: not in the local Hugging Face cache",
                    f"hf download {hub} open_clip_model.safetensors open_clip_config.json", hub=True)]


def check_transformers_model(name: str | None, key: str, hub_files: str) -> list[Missing]:
    """A transformers model (DINO, PickScore) named by a hub id or a local folder."""
    if name is None or name == "tiny":
        return []
    if is_local_path(name):
        folder = Path(name).expanduser()
        return [] if (folder / "config.json").is_file() else [Missing(key, f"{name}: no config.json there")]
    if _cached(name, "config.json") is not None:
        return []
    return [Missing(key, f"{name}: not in the local Hugging Face cache", f"hf download {name} {hub_files}", hub=True)]


def check_scorers(cfg: Config) -> list[Missing]:
    s = cfg.score
    missing = check_open_clip(s.clip_model, s.clip_pretrained, ("score.clip_model", "score.clip_pretrained"))
    missing += check_transformers_model(s.dino_model, "score.dino_model", "config.json model.safetensors "
                                        "--revision refs/pr/1 --local-dir models/dino-vits16 (then set "
                                        "score.dino_model to that folder: main has only a pickle)")
    missing += check_transformers_model(s.pickscore_model, "score.pickscore_model",
                                        "config.json model.safetensors preprocessor_config.json")
    for key, file, source in (("score.hps_weights", s.hps_weights, "hf download xswu/HPSv2 HPS_v2.1_compressed.pt"),
                              ("score.aesthetic_weights", s.aesthetic_weights, None)):
        if file is not None and not Path(file).expanduser().is_file():
            missing.append(Missing(key, f"{file}: no such file", source))
    if s.aesthetic_weights is not None:
        missing += check_open_clip(s.aesthetic_clip, s.aesthetic_clip_pretrained,
                                   ("score.aesthetic_clip", "score.aesthetic_clip_pretrained"))
    return missing


def check_data(cfg: Config, size: int | None) -> tuple[list[Missing], list[str]]:
    """The concept photos and the prompt files, read as the stages read them; warnings for
    photos the backbone would learn poorly (`size`: the side it trains at, when known)."""
    from dbdpo.data import eval_prompts, load_concept, load_prompt_templates

    missing, warnings, sizes = [], [], []
    # the run's one concept, or each of `concepts`
    concepts = {f"concepts.{name}": cfg.for_concept(name).concept for name in cfg.concepts} or {"concept": cfg.concept}
    for key, concept in concepts.items():
        try:
            sizes += [p.size for p in load_concept(concept)]
        except UserError as e:
            missing.append(Missing(f"{key}.dir", str(e)))
    for key, read in (("generate.prompts", lambda: load_prompt_templates(Path(cfg.generate.prompts))),
                      ("evaluate.prompts", lambda: eval_prompts(cfg.evaluate.prompts, cfg.evaluate.num_prompts))):
        try:
            read()
        except UserError as e:
            missing.append(Missing(key, str(e)))
    if cfg.model.backbone == "world":
        world = pixels(WORLD_UNET, WORLD_VAE)
        other = sorted({s for s in sizes if s != (world, world)})
        if other:
            warnings.append(f"concept.dir={cfg.concept.dir}: photos of {other[0][0]}x{other[0][1]} px with "
                            f"model.backbone=world: the proving ground's {world}-pixel world model draws its "
                            "own world, not real photos; use a GPU preset (dbdpo init --preset sdxl|sd2)")
    elif size is not None:
        small = [s for s in sizes if min(s) < size]
        if small:
            warnings.append(f"concept.dir={cfg.concept.dir}: {len(small)} photos below the model's {size} px "
                            f"(e.g. {small[0][0]}x{small[0][1]}): they are upscaled, and DreamBooth learns the blur")
    return missing, warnings


def pixels(unet: dict, vae: dict) -> int:
    """The image side of a UNet and VAE config, as load_backbone computes it: the UNet's sample
    size times the VAE's downscale (2 per VAE block after the first)."""
    return unet["sample_size"] * 2 ** (len(vae["block_out_channels"]) - 1)


def native_size(cfg: Config, folder: Path | None) -> int | None:
    """The image side the backbone trains at: model.resolution, else its configs' `pixels`
    (the proving ground's, or the pipeline folder's); None when the folder is not here."""
    if cfg.model.resolution is not None:
        return cfg.model.resolution
    if cfg.model.backbone == "world":
        return pixels(WORLD_UNET, WORLD_VAE)
    configs = [folder / part / "config.json" for part in ("unet", "vae")] if folder is not None else []
    if not configs or not all(c.is_file() for c in configs):
        return None
    return pixels(*(json.loads(c.read_text()) for c in configs))


def check(cfg: Config, requirements: Path = Path("requirements.txt")) -> Report:
    """Every input the params name, resolved without loading a model. With the hub reachable
    (HF_HUB_OFFLINE unset), a hub file that is not cached is a warning: the stage that needs
    it downloads it. `requirements`: the project's pins, checked against the installed dbdpo."""
    from importlib.metadata import version

    missing, folder = check_backbone(cfg)
    missing += check_scorers(cfg)
    data_missing, warnings = check_data(cfg, native_size(cfg, folder))
    missing += data_missing
    if not hub_offline():
        warnings += [f"{m.key}: {m.what}; the stage that loads it downloads it ({m.fetch} fetches it now)"
                     for m in missing if m.hub]
        missing = [m for m in missing if not m.hub]
    pin = version_warning(requirements, version("dbdpo"))
    return Report(missing, warnings + ([pin] if pin else []))


def version_warning(requirements: Path, installed: str) -> str | None:
    """A warning when the project's requirements.txt (which `dbdpo init` writes) pins another
    dbdpo than the one installed: the stages' code is the installed package's."""
    if not requirements.is_file():
        return None
    pins = [line.split("==", 1)[1].strip() for line in requirements.read_text().splitlines()
            if line.replace(" ", "").startswith("dbdpo==")]
    if pins and pins[0] != installed:
        return (f"{requirements} pins dbdpo=={pins[0]}, but dbdpo {installed} is installed: results may differ from "
                f"the version the project was made with (`pip install dbdpo=={pins[0]}`, or update the pin)")
    return None


def report_text(report: Report) -> str:
    """What is missing, each with its fetch command, then the warnings."""
    lines = []
    for m in report.missing:
        lines.append(f"missing  {m.what if m.what.startswith(m.key) else f'{m.key}: {m.what}'}")
        if m.fetch:
            lines.append(f"         fetch: {m.fetch}")
    lines += [f"warning  {w}" for w in report.warnings]
    return "\n".join(lines) if lines else "everything the params name is here"
