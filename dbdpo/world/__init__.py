"""The proving ground: a closed procedural world in which every model is really trained.

- `scenes`: the renderer (seeded 64 px scenes of one object on a context) and its captions;
- `contexts`: the contexts, split into training and held-out evaluation contexts;
- `data`: the concept photos and prompt pools written to data/ (scripts/make_world_data.py);
- `concepts`: the concept set and its fixed dev / test split;
- `architecture`: the world backbone's part configs and weight files (plain data);
- `backbone`: the trained world backbone (`model.backbone: world`), its weights in `assets/`;
- `quality`: the quality gates of the world's CLIP scorer.

The method (`dbdpo`) knows the world only as a backbone and a scorer to load: nothing here is
imported by a stage but the backbone and its architecture, so editing the renderer reruns no stage.
"""

from pathlib import Path

ASSETS = Path(__file__).parent / "assets"  # the trained weights (scripts/train_world_*.py), fp16 safetensors
