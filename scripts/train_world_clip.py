"""Train the proving ground's CLIP scorer contrastively on captioned world scenes.

The default IS/TS scorer is this model, loaded through open_clip exactly like ViT-B-32 with a
local weights file (`score.clip_model: dbdpo-world-clip`, `score.clip_pretrained: null` = the
shipped file). It never sees the concept: like a real pre-trained CLIP, it only knows the
world's classes, attributes and contexts. Deterministic for a given torch build and machine:

    python scripts/train_world_clip.py                 # the shipped recipe: 1500 steps of 256
    python scripts/train_world_clip.py --steps 200     # a quick look

Writes dbdpo/world/assets/world_clip.safetensors (fp16) and prints the quality gates of
tests/test_world.py on held-out scenes.
"""

import argparse
import logging
import math
import random
import time
from pathlib import Path

import open_clip
import torch
import torch.nn.functional as F
from PIL import Image
from safetensors.torch import save_file

from dbdpo.scoring import CONFIG_DIR, WORLD_CLIP, WORLD_CLIP_WEIGHTS, load_open_clip
from dbdpo.world.quality import concept_auc, context_retrieval_accuracy, pixels
from dbdpo.world.scenes import captions, render, sample_scene

log = logging.getLogger("train_world_clip")


def batch_indices(by_context: dict[str, list[int]], batch_size: int, gen: torch.Generator) -> list[int]:
    """Half the batch at random, half in groups of 16 scenes that share a context.

    Contexts fill most of the image and are learned first; inside a group only the object
    (class, color, pattern, size) tells the captions apart, which is what IS and the class
    words of TS need.
    """
    contexts = sorted(by_context)
    everything = [i for c in contexts for i in by_context[c]]
    out = []
    while len(out) < batch_size // 2:
        pool = by_context[contexts[int(torch.randint(0, len(contexts), (1,), generator=gen))]]
        out += [pool[int(j)] for j in torch.randint(0, len(pool), (16,), generator=gen)]
    out = out[: batch_size // 2]
    out += [everything[int(j)] for j in torch.randint(0, len(everything), (batch_size - len(out),), generator=gen)]
    return out


def contrastive_loss(image_features, text_features, logit_scale, texts: list[str]) -> torch.Tensor:
    """CLIP's symmetric InfoNCE, where every identical caption in the batch counts as a match
    (several scenes share "a toy"): the loss never pushes an image away from its own text."""
    logits = logit_scale * F.normalize(image_features, dim=-1) @ F.normalize(text_features, dim=-1).T
    same = torch.tensor([[a == b for b in texts] for a in texts], dtype=torch.float32, device=logits.device)
    targets = same / same.sum(dim=1, keepdim=True)
    return 0.5 * (F.cross_entropy(logits, targets) + F.cross_entropy(logits.T, targets))


def train_clip(model_name: str, steps: int, batch_size: int, num_scenes: int, lr: float,
               device: str = "cpu") -> torch.nn.Module:
    """A randomly initialized open_clip `model_name` trained on `num_scenes` world scenes."""
    torch.manual_seed(0)
    rng = random.Random(0)
    start = time.time()
    scenes = [sample_scene(rng) for _ in range(num_scenes)]
    images = pixels([render(s) for s in scenes]).to(device)  # (N, 3, 64, 64), CLIP-normalized
    texts = [captions(s) for s in scenes]
    by_context: dict[str, list[int]] = {}
    for i, scene in enumerate(scenes):
        by_context.setdefault(scene.context, []).append(i)
    log.info("rendered %d scenes in %.0f s", num_scenes, time.time() - start)

    open_clip.add_model_config(CONFIG_DIR)
    model = open_clip.create_model(model_name, pretrained=None).to(device)  # random init
    tokenizer = open_clip.get_tokenizer(model_name)
    model.train()
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2 and "embedding" not in n]
    rest = [p for n, p in model.named_parameters() if not (p.ndim >= 2 and "embedding" not in n)]
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": rest, "weight_decay": 0.0}],
                                  lr=lr, betas=(0.9, 0.98), eps=1e-6)
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(s, steps) / steps)))
    gen = torch.Generator().manual_seed(0)
    for step in range(steps):
        idx = batch_indices(by_context, batch_size, gen)
        batch_texts = [rng.choice(texts[i]) for i in idx]
        loss = contrastive_loss(model.encode_image(images[idx]), model.encode_text(tokenizer(batch_texts).to(device)),
                                model.logit_scale.exp(), batch_texts)
        loss.backward()
        optimizer.step()
        schedule.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        if step % 100 == 0 or step == steps - 1:
            log.info("step %d loss %.4f (%.0f s)", step, loss.item(), time.time() - start)
    return model.eval().cpu()


def quality_gates(model, tokenizer) -> dict[str, float]:
    """The two gates of tests/test_world.py, with the same held-out seeds."""
    concept = [Image.open(p).convert("RGB") for p in sorted(Path("data/concept").glob("*.png"))]
    return {"retrieval_top1": context_retrieval_accuracy(model, tokenizer, n=300, seed=2024),
            "concept_auc": concept_auc(model, concept, n=100, seed=7)}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=1500)
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--scenes", type=int, default=20000)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s")
    start = time.time()
    model = train_clip(WORLD_CLIP, args.steps, args.batch_size, args.scenes, args.lr, args.device)
    WORLD_CLIP_WEIGHTS.parent.mkdir(parents=True, exist_ok=True)
    save_file({k: v.detach().half().contiguous() for k, v in model.state_dict().items()}, str(WORLD_CLIP_WEIGHTS))
    model, _, tokenizer = load_open_clip(WORLD_CLIP, None)  # the shipped fp16 weights, as stages load them
    log.info("wrote %s in %.0f s; quality gates %s", WORLD_CLIP_WEIGHTS, time.time() - start,
             quality_gates(model, tokenizer))


if __name__ == "__main__":
    main()
