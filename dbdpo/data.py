"""Concept images and prompt sets: load, validate, preprocess.

Prompt files hold one template a line with `{token}` and `{class_noun}` placeholders
("a {token} {class_noun} in the jungle"); `#` lines are comments.
"""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from dbdpo.config import TS_PROMPTS, ConceptConfig
from dbdpo.errors import DataError

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff"}


def _wide_gray_to_rgb(img: Image.Image) -> Image.Image:
    """16/32-bit integer and float grayscale to 8-bit RGB, scaled by the mode's range.

    PIL's own convert clips them at 255, so a 16-bit PNG (0..65535) turns all white.
    A 16-bit file (I;16 modes: PNG, TIFF) spans 0..65535 whatever its values, so a dark one
    stays dark; 32-bit integers: 0..65535 (0..255 if no value exceeds 255, 8-bit values stored
    wide); float: 0..1 (0..255 likewise).
    """
    values = np.asarray(img, dtype=np.float64)
    if img.mode.startswith("F"):
        full = 1.0 if values.max(initial=0.0) <= 1.0 else 255.0
    elif img.mode.startswith("I;16"):
        full = 65535.0
    else:
        full = 255.0 if values.max(initial=0.0) <= 255 else 65535.0
    gray = np.clip(np.round(values / full * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(np.stack([gray] * 3, axis=-1), mode="RGB")


def load_image_rgb(path: Path, min_size: int) -> Image.Image:
    """Open one image as upright RGB, or raise DataError naming the file and the fix."""
    try:
        with Image.open(path) as img:
            img.load()
            # Phone photos store rotation in EXIF; CLIP and the VAE must see them upright.
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                # Composite transparency on white instead of letting it turn black.
                rgba = img.convert("RGBA")
                img = Image.new("RGB", rgba.size, (255, 255, 255))
                img.paste(rgba, mask=rgba.getchannel("A"))
            elif img.mode.startswith(("I", "F")):
                img = _wide_gray_to_rgb(img)
            else:
                img = img.convert("RGB")  # L, CMYK, P, YCbCr ... all have an RGB form
    except Image.DecompressionBombError as e:
        raise DataError(f"{path}: {e}; downscale the photo (the models see at most 1024 px)") from None
    except (UnidentifiedImageError, OSError, SyntaxError) as e:
        raise DataError(f"{path}: not a readable image ({e}); remove it or re-save it as PNG/JPEG") from None
    if min(img.size) < min_size:
        raise DataError(
            f"{path}: {img.size[0]}x{img.size[1]} px is smaller than concept.min_size={min_size}; "
            "use a larger photo or lower concept.min_size"
        )
    return img


def concept_files(cfg: ConceptConfig) -> tuple[list[Path], dict[Path, Path]]:
    """The photos of `cfg.dir` sorted by file name, and each one's caption file (<photo>.txt,
    the kohya / diffusers dataset habit) where it has one. Anything else in the folder is an
    error naming it."""
    folder = Path(cfg.dir)
    if not folder.is_dir():
        raise DataError(f"concept.dir={cfg.dir!r} is not a directory of concept images")
    files = sorted(p for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    for sub in sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if any(f.suffix.lower() in IMAGE_SUFFIXES for f in sub.rglob("*") if f.is_file()):
            raise DataError(f"{sub}: a folder of images inside concept.dir={cfg.dir!r}; DreamBooth trains on "
                            "concept.dir's own files only: move them up into it, or out of it")
    images = [p for p in files if p.suffix.lower() in IMAGE_SUFFIXES]
    by_stem = {p.stem: p for p in files if p.suffix.lower() == ".txt"}
    captions = {image: by_stem[image.stem] for image in images if image.stem in by_stem}
    others = [p for p in files if p not in images and p not in captions.values()]
    if others:
        raise DataError(
            f"{others[0]}: not an image file ({', '.join(sorted(IMAGE_SUFFIXES))}) nor a photo's caption "
            f"(<photo>.txt); concept.dir must hold only the concept's images"
        )
    if not images:
        raise DataError(f"concept.dir={cfg.dir!r} holds no images")
    return images, captions


def load_concept(cfg: ConceptConfig) -> list[Image.Image]:
    """All images of `cfg.dir`, sorted by file name, RGB with EXIF orientation applied. Every
    file must be a usable image or a photo's caption (load_captions reads those)."""
    images, captions = concept_files(cfg)
    if captions:
        log.info("concept.dir: %d photos have a caption file; finetune.captions: true trains on them, else every "
                 "photo is captioned finetune.instance_prompt, as DreamBooth does", len(captions))
    return [load_image_rgb(p, cfg.min_size) for p in images]


def load_captions(cfg: ConceptConfig) -> list[str | None]:
    """Each photo's caption (load_concept's order), its {token} and {class_noun} filled in, or
    None for a photo without one. A caption must name the instance token (kohya's captions
    carry their trigger word), or DreamBooth would not bind the concept to it."""
    images, files = concept_files(cfg)
    captions = []
    for image in images:
        if image not in files:
            captions.append(None)
            continue
        path = files[image]
        try:
            text = " ".join(path.read_text(encoding="utf-8").split())
        except UnicodeDecodeError as e:
            raise DataError(f"{path}: not UTF-8 ({e.reason}); re-save the caption as UTF-8") from None
        if "{" in text:
            try:
                text = fill_prompt(text, cfg)
            except (KeyError, IndexError, ValueError) as e:
                raise DataError(f"{path}: {text!r} has a placeholder other than {{token}} and {{class_noun}} "
                                f"({e}); write a literal brace as {{{{ or }}}}") from None
        if cfg.token not in text.split():
            raise DataError(f"{path}: the caption {text!r} does not name the instance token {cfg.token!r} "
                            f"(concept.token); add it, or {{token}}")
        captions.append(text)
    return captions


def to_tensor(images: list[Image.Image], resolution: int) -> torch.Tensor:
    """Resize the shorter side to `resolution`, center-crop; returns (B, 3, R, R) in [-1, 1]."""
    import torch  # here, not at import: reading photos and prompts (`dbdpo check`) needs no torch

    arrays = []
    for img in images:
        img = ImageOps.fit(img, (resolution, resolution), Image.Resampling.BICUBIC)
        arrays.append(np.asarray(img, dtype=np.float32) / 127.5 - 1.0)
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


PLACEHOLDERS = {"token", "class_noun"}


def load_prompt_templates(path: Path) -> list[str]:
    """The non-empty, non-comment lines of a UTF-8 prompt file, each checked to fill in (fill_prompt):
    placeholders {token} (required) and {class_noun} only; a literal brace is written {{ }}."""
    if not path.is_file():
        raise DataError(f"{path}: prompt file not found")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        line = path.read_bytes()[: e.start].count(b"\n") + 1
        raise DataError(f"{path}:{line}: not UTF-8 ({e.reason}); re-save the file as UTF-8") from None
    templates = []
    for number, raw in enumerate(text.splitlines(), start=1):
        t = raw.strip()
        if not t or t.startswith("#"):
            continue
        try:
            names = {name for _, name, _, _ in string.Formatter().parse(t) if name is not None}
        except ValueError as e:
            raise DataError(f"{path}:{number}: {t!r}: {e}; write a literal brace as {{{{ or }}}}") from None
        if names - PLACEHOLDERS:
            raise DataError(f"{path}:{number}: {t!r} uses {{{sorted(names - PLACEHOLDERS)[0]}}}; the "
                            "placeholders are {token} and {class_noun}")
        if "token" not in names:
            raise DataError(f"{path}:{number}: prompt {t!r} lacks the {{token}} placeholder")
        templates.append(t)
    if not templates:
        raise DataError(f"{path}: no prompts")
    return templates


def fill_prompt(template: str, cfg: ConceptConfig) -> str:
    """The generation prompt, with the instance token: "a sks toy in the jungle"."""
    return template.format(token=cfg.token, class_noun=cfg.class_noun)


def text_prompt(template: str, cfg: ConceptConfig, mode: str) -> str:
    """The prompt TS is scored against, without the instance token (CLIP never learned it).

    with_class: "a toy in the jungle"; without_concept (the lab's evaluator): "a in the jungle".
    """
    class_noun = cfg.class_noun if mode == "with_class" else ""
    text = template.format(token="", class_noun=class_noun)
    return re.sub(r"\s+", " ", text).strip()


def ts_texts(cfg: ConceptConfig, mode: str, every_form: bool = False) -> dict[str, Callable[[str], str]]:
    """The TS columns to score and each one's text for a prompt template: "TS" against the
    `mode` form (score.ts_prompt); with every_form also the other form under its own name
    (TS_with_class or TS_without_concept), so evaluate reports both, none twice."""
    columns = {"TS": partial(text_prompt, cfg=cfg, mode=mode)}
    if every_form:
        columns |= {f"TS_{m}": partial(text_prompt, cfg=cfg, mode=m) for m in TS_PROMPTS if m != mode}
    return columns


def train_prompts(path: str | Path, slices: dict[str, tuple[int, int]]) -> dict[str, list[str]]:
    """Each round's prompts [start, stop) of the training pool at `path` (rounds get disjoint
    slices), every slice checked, the pool read once: a pool too small for the last round
    fails before the first round samples anything."""
    path = Path(path)
    pool = load_prompt_templates(path)
    for name, (start, stop) in slices.items():
        if stop > len(pool):
            raise DataError(
                f"rounds.{name}: {path}: this round needs prompts {start}..{stop - 1} but the pool "
                f"has {len(pool)}; lower generate.num_prompts, use fewer rounds, or add prompts"
            )
    return {name: pool[start:stop] for name, (start, stop) in slices.items()}


def eval_prompts(path: str | Path, num_prompts: int) -> list[str]:
    """The first `num_prompts` held-out evaluation prompts of the file at `path`."""
    path = Path(path)
    templates = load_prompt_templates(path)
    if num_prompts > len(templates):
        raise DataError(f"evaluate.num_prompts={num_prompts}: {path} has only {len(templates)} prompts")
    return templates[:num_prompts]
