"""Scorers (CLIP-I / CLIP-T, DINO, any reward) and per-round score normalization.

A scorer is any callable `(images, texts) -> {name: (B,) float array}`; `score_images`
runs a set of them over image files in batches, decoding each image once.

DreamBoothDPO (arXiv 2505.20975, Sec. 3): with one pre-trained CLIP,
  IS(x) = mean_i cos(E_I(x), E_I(c_i))   concept fidelity vs the concept images c_i
  TS(x) = cos(E_I(x), E_T(p))            prompt alignment, p without the instance token.
HPSv2 (Wu et al. 2023, "Human Preference Score v2") is TS's formula with a CLIP ViT-H-14
fine-tuned on human preferences: its score.py scores diag(image_features @ text_features.T)
of open_clip's unit-norm features, so it loads and scores through the same open_clip path.
LAION's aesthetic predictor (improved-aesthetic-predictor, sac+logos+ava1-l14-linearMSE) is
a linear MLP on the unit-norm image embedding of OpenAI's CLIP ViT-L/14: a 1-10 rating.
With `clip_model: tiny` the CLIP is randomly initialized (seeded): the numbers are then a
deterministic smoke signal of the code path, not a measure of anything.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from PIL import Image

from dbdpo.config import RANDOM_WEIGHTS, WORLD_CLIP, ScoreConfig
from dbdpo.data import load_image_rgb
from dbdpo.devices import compute_device
from dbdpo.distributed import map_batches
from dbdpo.errors import ScorerError
from dbdpo.world import ASSETS

log = logging.getLogger(__name__)

Scorer = Callable[[list[Image.Image], list[str]], dict[str, np.ndarray]]
TINY_CLIP = "dbdpo-tiny-clip"
# The proving ground's scorer: an open_clip architecture registered from dbdpo/configs, with
# weights trained on the world by scripts/train_world_clip.py (docs/proving_ground.md).
WORLD_CLIP_WEIGHTS = ASSETS / "world_clip.safetensors"
CONFIG_DIR = Path(__file__).parent / "configs"


def load_open_clip(model_name: str, pretrained: str | None, seed: int = 0,
                   keys: tuple[str, str] = ("score.clip_model", "score.clip_pretrained")):
    """(model, preprocess, tokenizer) from open_clip.

    `model_name` is any open_clip name (ViT-B-32 ...), `dbdpo-world-clip` (the proving
    ground's trained CLIP; `pretrained` null means its shipped weights) or `tiny` (a seeded
    random 3.4M-param CLIP for code-path tests, never a default). `pretrained` is an
    open_clip tag, `random` (random weights: code-path tests only) or a local weights file (safetensors, or a torch file that open_clip reads
    with weights_only=True: tensors only, no code). `keys`: the params keys the two values
    came from, for the errors.
    """
    import open_clip

    open_clip.add_model_config(CONFIG_DIR)
    if model_name == "tiny":  # params validation refuses score.clip_pretrained with it
        model_name = TINY_CLIP
    elif model_name == WORLD_CLIP and pretrained is None:
        pretrained = str(WORLD_CLIP_WEIGHTS)
    if model_name not in open_clip.list_models():
        raise ScorerError(f"{keys[0]}={model_name!r} is not an open_clip model name (e.g. ViT-B-32)")
    if pretrained is None and model_name != TINY_CLIP:  # random weights would make every pair noise
        raise ScorerError(f"{keys[1]} is null for {keys[0]}={model_name!r}: name its weights (an open_clip tag "
                          f"such as openai, or a local weights file), or `{RANDOM_WEIGHTS}` for random weights "
                          "(code-path tests only: the scores then mean nothing)")
    if pretrained == RANDOM_WEIGHTS:
        pretrained = None
    torch.manual_seed(seed)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=pretrained)
    except Exception as e:  # download failure, bad file: one clear message either way
        raise ScorerError(
            f"{keys[1]}={pretrained!r} for {model_name}: cannot load "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}). Offline, download the "
            f"open_clip checkpoint on a connected machine and set {keys[1]} to its local path."
        ) from None
    if pretrained is None and model_name != TINY_CLIP:
        log.warning("score: %s has random weights (%s: %s): its scores mean nothing", model_name, keys[1],
                    RANDOM_WEIGHTS)
    model.eval()
    return model, preprocess, open_clip.get_tokenizer(model_name)


class ClipSimilarity:
    """IS and TS from one CLIP: each image embedded once, concept embeddings once per run.

    `text_columns` maps each TS column to the function that turns the scorer's text input
    (a prompt template) into the CLIP text, e.g. {"TS": template -> "a toy in the jungle"},
    so several TS variants share one image embedding. Without `concept_images` there is no
    IS column: HPSv2 is {"HPS": the TS text} on its own CLIP.
    """

    def __init__(self, model, preprocess, tokenizer, concept_images: list[Image.Image] | None,
                 text_columns: dict[str, Callable[[str], str]]):
        self.model, self.preprocess, self.tokenizer = model, preprocess, tokenizer
        self.device = next(model.parameters()).device
        self.text_columns = text_columns
        self.concept = None if concept_images is None else self.embed_images(concept_images)  # (C, D), unit norm
        self._text_cache: dict[str, torch.Tensor] = {}

    @torch.no_grad()
    def embed_images(self, images: list[Image.Image]) -> torch.Tensor:
        """(B, D) unit-norm image embeddings."""
        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        return F.normalize(self.model.encode_image(pixels).float(), dim=-1).cpu()

    @torch.no_grad()
    def embed_texts(self, texts: list[str]) -> torch.Tensor:
        """(B, D) unit-norm text embeddings; each distinct text is encoded once per run."""
        new = sorted({t for t in texts if t not in self._text_cache})
        if new:
            emb = F.normalize(self.model.encode_text(self.tokenizer(new).to(self.device)).float(), dim=-1).cpu()
            self._text_cache.update(zip(new, emb))
        return torch.stack([self._text_cache[t] for t in texts])

    def __call__(self, images: list[Image.Image], texts: list[str]) -> dict[str, np.ndarray]:
        img = self.embed_images(images)
        out = {} if self.concept is None else {"IS": (img @ self.concept.T).mean(dim=1).numpy()}
        for column, to_text in self.text_columns.items():
            out[column] = (img * self.embed_texts([to_text(t) for t in texts])).sum(dim=1).numpy()
        return out


IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def load_dino(name: str, seed: int = 0):
    """A ViT (DINO) from a hub id / local dir, or `tiny`: a seeded random ViT of the same class."""
    from transformers import ViTConfig, ViTModel

    if name == "tiny":
        torch.manual_seed(seed)
        config = ViTConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                           intermediate_size=64, image_size=64, patch_size=16)
        return ViTModel(config, add_pooling_layer=False).eval()
    try:
        return ViTModel.from_pretrained(name, add_pooling_layer=False).eval()
    except Exception as e:
        raise ScorerError(
            f"score.dino_model={name!r}: cannot load ({type(e).__name__}). Offline, download "
            "facebook/dino-vits16 on a connected machine and set score.dino_model to its local directory."
        ) from None


class DinoSimilarity:
    """DreamBooth's DINO metric: mean cosine of ViT [CLS] features to the concept images'."""

    def __init__(self, model, concept_images: list[Image.Image]):
        from torchvision import transforms

        size = model.config.image_size
        self.model, self.device = model, next(model.parameters()).device
        self.preprocess = transforms.Compose([
            transforms.Resize(size, interpolation=transforms.InterpolationMode.BICUBIC),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize(IMAGENET_MEAN, IMAGENET_STD),
        ])
        self.concept = self.embed(concept_images)

    @torch.no_grad()
    def embed(self, images: list[Image.Image]) -> torch.Tensor:
        pixels = torch.stack([self.preprocess(img) for img in images]).to(self.device)
        cls = self.model(pixel_values=pixels).last_hidden_state[:, 0]
        return F.normalize(cls.float(), dim=-1).cpu()

    def __call__(self, images: list[Image.Image], texts: list[str]) -> dict[str, np.ndarray]:
        return {"DINO": (self.embed(images) @ self.concept.T).mean(dim=1).numpy()}


def load_pickscore(name: str, seed: int = 0):
    """(CLIPModel, CLIPProcessor) of PickScore (Kirstain et al. 2023) from a hub id or a local
    directory holding both, or `tiny`: a seeded random CLIPModel of the same class."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    if name == "tiny":
        from dbdpo.tokenizer import clip_tokenizer

        torch.manual_seed(seed)
        config = CLIPConfig(
            text_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                             max_position_embeddings=77, vocab_size=49408),
            vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                               image_size=64, patch_size=16),
            projection_dim=32,
        )
        processor = CLIPProcessor(image_processor=CLIPImageProcessor(size={"shortest_edge": 64},
                                                                     crop_size={"height": 64, "width": 64}),
                                  tokenizer=clip_tokenizer())
        return CLIPModel(config).eval(), processor
    try:
        return CLIPModel.from_pretrained(name).eval(), CLIPProcessor.from_pretrained(name)
    except Exception as e:
        raise ScorerError(
            f"score.pickscore_model={name!r}: cannot load ({type(e).__name__}). Offline, download "
            "yuvalkirstain/PickScore_v1 and the processor of laion/CLIP-ViT-H-14-laion2B-s32B-b79K into one "
            "directory on a connected machine and set score.pickscore_model to it."
        ) from None


class PickScore:
    """PickScore reward: exp(logit_scale) * cos(E_I(x), E_T(prompt)) of a preference-tuned CLIP."""

    def __init__(self, model, processor, to_text: Callable[[str], str]):
        self.model, self.processor, self.to_text = model, processor, to_text
        self.device = next(model.parameters()).device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], texts: list[str]) -> dict[str, np.ndarray]:
        inputs = self.processor(images=images, text=[self.to_text(t) for t in texts], return_tensors="pt",
                                padding="max_length", truncation=True, max_length=77).to(self.device)
        out = self.model(**inputs)
        image = F.normalize(out.image_embeds.float(), dim=-1)
        text = F.normalize(out.text_embeds.float(), dim=-1)
        return {"PickScore": (self.model.logit_scale.exp() * (image * text).sum(-1)).cpu().numpy()}


def build_scorers(cfg: ScoreConfig, concept_images: list[Image.Image],
                  text_columns: dict[str, Callable[[str], str]]) -> list[Scorer]:
    """CLIP IS/TS (one TS column per entry of `text_columns`), DINO unless disabled, and
    PickScore, HPS and Aesthetic when `score.pickscore_model` / `score.hps_weights` /
    `score.aesthetic_weights` are set (the first two scored against the "TS" text). Models run
    on the GPU when there is one, in fp32."""
    device = compute_device()
    clip, preprocess, tokenizer = load_open_clip(cfg.clip_model, cfg.clip_pretrained, cfg.seed)
    scorers: list[Scorer] = [ClipSimilarity(clip.to(device), preprocess, tokenizer, concept_images, text_columns)]
    if cfg.dino_model is not None:
        scorers.append(DinoSimilarity(load_dino(cfg.dino_model, cfg.seed).to(device), concept_images))
    if cfg.pickscore_model is not None:
        model, processor = load_pickscore(cfg.pickscore_model, cfg.seed)
        scorers.append(PickScore(model.to(device), processor, text_columns["TS"]))
    if cfg.hps_weights is not None:
        scorers.append(ClipSimilarity(*load_hps(cfg.hps_weights, cfg.hps_arch, device), None,
                                      {"HPS": text_columns["TS"]}))
    if cfg.aesthetic_weights is not None:
        scorers.append(load_aesthetic(cfg.aesthetic_weights, cfg.aesthetic_clip, cfg.aesthetic_clip_pretrained,
                                      device))
    return scorers


def require_local_file(path: str, key: str, download: str, column: str) -> None:
    """A reward model's weights file (params key `key`) must be here: offline there is no hub
    to fetch it from, so the error says what to `download` and where the key points."""
    if not Path(path).is_file():
        raise ScorerError(f"{key}={path!r}: no such file. Download {download} on a connected machine and set "
                          f"{key} to its local path (or null for no {column} column)")


def load_hps(weights: str, arch: str, device: torch.device | str = "cpu"):
    """(model, preprocess, tokenizer) of HPSv2 (Wu et al. 2023): the open_clip `arch`
    (ViT-H-14 for HPS_v2_compressed.pt and HPS_v2.1_compressed.pt of xswu/HPSv2) with the
    weights of the local file `weights`. A square image's preprocessing (resize, center crop,
    OpenAI mean/std) is HPSv2's own."""
    require_local_file(weights, "score.hps_weights", "HPS_v2.1_compressed.pt from the hub repository xswu/HPSv2",
                       "HPS")
    model, preprocess, tokenizer = load_open_clip(arch, weights, keys=("score.hps_arch", "score.hps_weights"))
    return model.to(device), preprocess, tokenizer


class AestheticMlp(torch.nn.Module):
    """The aesthetic predictor's head: five linear layers, no activation between them (the
    `linearMSE` checkpoints; dropout is idle at inference). Its state-dict keys,
    layers.{0,2,4,6,7}.{weight,bias}, are the released file's."""

    def __init__(self, embed_dim: int):
        super().__init__()
        self.layers = torch.nn.Sequential(
            torch.nn.Linear(embed_dim, 1024), torch.nn.Dropout(0.2), torch.nn.Linear(1024, 128),
            torch.nn.Dropout(0.2), torch.nn.Linear(128, 64), torch.nn.Dropout(0.1), torch.nn.Linear(64, 16),
            torch.nn.Linear(16, 1))

    def forward(self, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, D) unit-norm image embeddings -> (B,) ratings."""
        return self.layers(embeddings).squeeze(-1)


class AestheticScore:
    """LAION's aesthetic rating of each image (text unused): the MLP on the unit-norm CLIP
    image embedding (`clip`: a ClipSimilarity with no columns, for its embed_images), as the
    predictor's simple_inference.py computes it."""

    def __init__(self, clip: ClipSimilarity, mlp: AestheticMlp):
        self.clip, self.mlp = clip, mlp
        self.device = next(mlp.parameters()).device

    @torch.no_grad()
    def __call__(self, images: list[Image.Image], texts: list[str]) -> dict[str, np.ndarray]:
        return {"Aesthetic": self.mlp(self.clip.embed_images(images).to(self.device)).cpu().numpy()}


def load_aesthetic(weights: str, clip_model: str, clip_pretrained: str | None,
                   device: torch.device | str = "cpu") -> AestheticScore:
    """The aesthetic predictor: the MLP from the local file `weights` (a torch state dict read
    with weights_only=True, or safetensors) on the open_clip model `clip_model` with
    `clip_pretrained` (ViT-L-14 / openai for the released MLPs)."""
    require_local_file(weights, "score.aesthetic_weights", "sac+logos+ava1-l14-linearMSE.pth from "
                       "github.com/christophschuhmann/improved-aesthetic-predictor", "Aesthetic")
    try:
        if weights.endswith(".safetensors"):
            from safetensors.torch import load_file

            state = load_file(weights)
        else:
            state = torch.load(weights, map_location="cpu", weights_only=True)
    except Exception as e:  # weights_only refuses a pickle of code (UnpicklingError): say so, not a traceback
        raise ScorerError(
            f"score.aesthetic_weights={weights!r}: not loadable as tensors alone ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:160]}); a file that needs pickled code is refused: use a state dict of "
            "tensors (torch.save(model.state_dict())) or safetensors") from None
    clip, preprocess, _ = load_open_clip(clip_model, clip_pretrained,
                                         keys=("score.aesthetic_clip", "score.aesthetic_clip_pretrained"))
    embed_dim = clip.visual.output_dim
    mlp = AestheticMlp(embed_dim)
    try:
        mlp.load_state_dict(state)
    except (RuntimeError, TypeError) as e:
        raise ScorerError(
            f"score.aesthetic_weights={weights!r}: not an aesthetic MLP on {clip_model}'s {embed_dim}-d embeddings "
            f"({type(e).__name__}: {str(e).splitlines()[0][:200]}); the released linearMSE files read ViT-L-14 (768)"
        ) from None
    return AestheticScore(ClipSimilarity(clip.to(device), preprocess, None, None, {}), mlp.to(device).eval())


def score_images(paths: list[str], texts: list[str], scorers: list[Scorer], batch_size: int,
                 desc: str = "score") -> pd.DataFrame:
    """One row per image file, one column per score name, in input order; the files are read
    one batch at a time (the batches split across processes under a launcher, every process
    getting every row: dbdpo.distributed)."""
    return _score(lambda index: [load_image_rgb(Path(paths[i]), min_size=1) for i in index], paths, texts,
                  scorers, batch_size, desc)


def score_loaded(images: list[Image.Image], labels: list[str], texts: list[str], scorers: list[Scorer],
                 batch_size: int, desc: str = "score") -> pd.DataFrame:
    """As score_images, for images already in memory (evaluate scores what it just sampled);
    `labels` name an image in errors, e.g. the path it was written to."""
    return _score(lambda index: [images[i] for i in index], labels, texts, scorers, batch_size, desc)


def _score(load: Callable[[list[int]], list[Image.Image]], labels: list[str], texts: list[str],
           scorers: list[Scorer], batch_size: int, desc: str) -> pd.DataFrame:
    """load(indices) -> those images; one row of scores per label."""
    def score_batch(index: list[int]) -> list[dict[str, float]]:
        images = load(index)
        columns: dict[str, np.ndarray] = {}
        for scorer in scorers:
            for name, values in scorer(images, [texts[i] for i in index]).items():
                values = np.asarray(values, dtype=np.float64)
                if not np.isfinite(values).all():
                    bad = labels[index[int(np.flatnonzero(~np.isfinite(values))[0])]]
                    raise ScorerError(f"{bad}: {name} is not finite (a blank or broken image?); "
                                      "no score table is written with it")
                columns[name] = values
        return [{name: float(values[row]) for name, values in columns.items()} for row in range(len(index))]

    return pd.DataFrame(map_batches(score_batch, list(range(len(labels))), batch_size, desc))
