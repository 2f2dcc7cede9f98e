"""The proving ground's concept set: the concepts the method's claims are measured on.

A result on one concept is an anecdote, so the claims are means over concepts (bench/claims.py
--concepts), as the papers evaluate over many subjects (DreamBooth's dataset has 30). Each
concept is one object instance with a part no sampled scene has (dbdpo.world.scenes.FEATURES), in
colors of its own, on one of the world's classes.

The split is fixed before anything is measured on it and never re-drawn:
- dev: the concepts defaults are chosen on (the default run's toy top is one of them);
- test: only measured, never tuned on. A default found to be chosen on a test concept moves
  that concept to dev, and a new test concept takes its place.
docs/proving_ground.md records when the split was fixed.

Every concept's photos are rendered as data/concept's are (dbdpo.world.data.concept_views,
the same draw), into data/concepts/<name>/ by scripts/make_world_data.py.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from dbdpo.world.scenes import COLORS, CONCEPT, FEATURES, Scene


@dataclass(frozen=True)
class WorldConcept:
    name: str  # data/concepts/<name>/
    split: str  # dev | test
    scene: Scene  # the instance, as dbdpo.world.scenes.render draws it

    @property
    def class_noun(self) -> str:
        return self.scene.object_class


def _concept(name: str, split: str, object_class: str, color: str, pattern: str, pattern_color: str,
             feature: str, feature_color: str) -> WorldConcept:
    if object_class not in FEATURES[feature]:
        raise ValueError(f"concept {name}: feature {feature!r} is drawn on {FEATURES[feature]}, not {object_class}")
    scene = replace(CONCEPT, object_class=object_class, color=color, pattern=pattern, pattern_color=pattern_color,
                    feature=feature, feature_color=COLORS[feature_color])
    return WorldConcept(name, split, scene)


SPLITS = ("dev", "test")
CONCEPTS: dict[str, WorldConcept] = {c.name: c for c in (
    WorldConcept("toy_top", "dev", CONCEPT),  # the default run's concept (data/concept)
    _concept("ball_band", "dev", "ball", "green", "dotted", "white", "band", "orange"),
    _concept("cup_star", "dev", "cup", "yellow", "plain", "black", "star", "purple"),
    _concept("dog_collar", "dev", "dog", "orange", "plain", "black", "collar", "blue"),
    _concept("car_roof", "dev", "car", "blue", "striped", "white", "roof", "red"),
    _concept("car_wheels", "test", "car", "green", "plain", "black", "wheels", "yellow"),
    _concept("dog_ears", "test", "dog", "white", "dotted", "black", "ears", "red"),
    _concept("cup_handle", "test", "cup", "purple", "striped", "yellow", "handle", "green"),
)}
DEFAULT_CONCEPT = "toy_top"


def concepts_of(selection: str) -> list[WorldConcept]:
    """The concepts a selection names: a split (dev, test), all, or names joined by commas."""
    if selection == "all":
        return list(CONCEPTS.values())
    if selection in SPLITS:
        return [c for c in CONCEPTS.values() if c.split == selection]
    names = [n.strip() for n in selection.split(",") if n.strip()]
    unknown = [n for n in names if n not in CONCEPTS]
    if unknown or not names:
        raise ValueError(f"concepts {selection!r}: unknown {', '.join(unknown) or 'empty selection'}; "
                         f"expected dev, test, all, or names from {', '.join(CONCEPTS)}")
    return [CONCEPTS[n] for n in names]
