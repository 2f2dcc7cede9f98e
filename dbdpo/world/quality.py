"""Quality gates of the proving ground's scorer, on held-out world scenes.

A trained CLIP earns its place as the default IS/TS scorer by two measurements (tested in
tests/test_world.py on the shipped weights, printed by its training script):
- TS means something: image -> text retrieval over every "a <class> <context>" caption picks
  the scene's own class and context;
- IS means something: against the concept's reference photos, new photos of the concept
  score above other instances of its class (ROC-AUC).
"""

from __future__ import annotations

import random

import numpy as np
import torch
import torch.nn.functional as F
from open_clip import OPENAI_DATASET_MEAN, OPENAI_DATASET_STD
from PIL import Image

from dbdpo.world.contexts import CONTEXTS, EVAL_CONTEXTS
from dbdpo.world.data import concept_views
from dbdpo.world.scenes import CLASSES, CONCEPT, render, sample_scene

# open_clip's own pixel normalization constants, as its preprocess applies them.
CLIP_MEAN = torch.tensor(OPENAI_DATASET_MEAN).view(3, 1, 1)
CLIP_STD = torch.tensor(OPENAI_DATASET_STD).view(3, 1, 1)


def pixels(images: list[Image.Image]) -> torch.Tensor:
    """(B, 3, 64, 64) CLIP-normalized tensors of 64 px RGB images (what preprocess gives)."""
    arrays = np.stack([np.asarray(img, dtype=np.float32) / 255.0 for img in images])
    return (torch.from_numpy(arrays).permute(0, 3, 1, 2) - CLIP_MEAN) / CLIP_STD


@torch.no_grad()
def embed_images(model, images: list[Image.Image]) -> torch.Tensor:
    return F.normalize(model.encode_image(pixels(images)).float(), dim=-1)


@torch.no_grad()
def embed_texts(model, tokenizer, texts: list[str]) -> torch.Tensor:
    return F.normalize(model.encode_text(tokenizer(texts)).float(), dim=-1)


def context_retrieval_accuracy(model, tokenizer, n: int, seed: int) -> float:
    """Top-1 accuracy of picking "a <class> <context phrase>" for `n` held-out scenes, among
    all len(CLASSES) x len(CONTEXTS) such captions (120): class and context must both match."""
    rng = random.Random(seed)
    scenes = [sample_scene(rng) for _ in range(n)]
    pairs = [(c, k) for c in CLASSES for k in CONTEXTS]
    texts = embed_texts(model, tokenizer, [f"a {c} {CONTEXTS[k].phrase}" for c, k in pairs])
    best = (embed_images(model, [render(s) for s in scenes]) @ texts.T).argmax(dim=1)
    return float(np.mean([pairs[b] == (s.object_class, s.context) for b, s in zip(best.tolist(), scenes)]))


def roc_auc(positive: np.ndarray, negative: np.ndarray) -> float:
    """P(a random positive scores above a random negative); ties count half."""
    diff = positive[:, None] - negative[None, :]
    return float((diff > 0).mean() + 0.5 * (diff == 0).mean())


def concept_auc(model, concept_images: list[Image.Image], n: int, seed: int) -> float:
    """ROC-AUC of IS (mean cosine to `concept_images`) separating `n` new concept photos on
    held-out contexts from `n` other toys on the same contexts."""
    rng = random.Random(seed)
    reference = embed_images(model, concept_images)
    positives = [render(s) for s in concept_views(n, seed=seed, contexts=EVAL_CONTEXTS)]
    negatives = [render(sample_scene(rng, contexts=EVAL_CONTEXTS, classes=(CONCEPT.object_class,)))
                 for _ in range(n)]
    score = lambda imgs: (embed_images(model, imgs) @ reference.T).mean(dim=1).numpy()  # noqa: E731
    return roc_auc(score(positives), score(negatives))
