"""The proving ground's world and its shipped models: the renderer is deterministic, the
committed data files are what the world produces, and the trained CLIP passes its quality gates
on held-out scenes (so IS and TS of a default run measure something)."""

import hashlib
import random
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest

from dbdpo.scoring import WORLD_CLIP, load_open_clip
from dbdpo.world.concepts import CONCEPTS, DEFAULT_CONCEPT, concepts_of
from dbdpo.world.contexts import CONTEXTS, EVAL_CONTEXTS, TRAIN_CONTEXTS
from dbdpo.world.data import concept_views, eval_templates, train_templates
from dbdpo.world.quality import concept_auc, context_retrieval_accuracy, roc_auc
from dbdpo.world.scenes import CLASSES, CONCEPT, render, sample_scene
from tests.conftest import REPO


def test_world_has_the_promised_size():
    assert len(CLASSES) >= 4 and CONCEPT.object_class in CLASSES
    assert len(CONTEXTS) >= 16 and not set(EVAL_CONTEXTS) & set(TRAIN_CONTEXTS)


def test_render_is_a_pure_function_of_the_scene():
    scene = sample_scene(random.Random(3))
    a, b = np.asarray(render(scene)), np.asarray(render(scene))
    assert a.shape == (64, 64, 3) and np.array_equal(a, b)
    assert not np.array_equal(a, np.asarray(render(sample_scene(random.Random(4)))))


def test_sampled_scenes_never_draw_a_concept():
    rng = random.Random(0)
    assert not any(sample_scene(rng).feature for _ in range(2000))
    assert all(view.feature == "ring" for view in concept_views(6))
    for concept in CONCEPTS.values():
        assert all(view.feature == concept.scene.feature for view in concept_views(6, concept=concept.scene))


def test_the_concept_set_spans_classes_and_a_fixed_split():
    """At least 8 concepts over 4 classes, each with its own feature and colors; about 5 dev and
    3 test, the default run's toy top in dev. The split is written here: a change to it is a
    change to this test."""
    assert {name: c.split for name, c in CONCEPTS.items()} == {
        "toy_top": "dev", "ball_band": "dev", "cup_star": "dev", "dog_collar": "dev", "car_roof": "dev",
        "car_wheels": "test", "dog_ears": "test", "cup_handle": "test"}
    assert len({c.class_noun for c in CONCEPTS.values()}) >= 4
    assert CONCEPTS[DEFAULT_CONCEPT].scene == CONCEPT
    looks = {(c.scene.object_class, c.scene.color, c.scene.feature, c.scene.feature_color) for c in CONCEPTS.values()}
    assert len(looks) == len(CONCEPTS)
    # each concept draws its feature: the same photo without it differs
    for c in CONCEPTS.values():
        view = concept_views(1, concept=c.scene)[0]
        assert not np.array_equal(np.asarray(render(view)), np.asarray(render(replace(view, feature=None)))), c.name
    assert [c.name for c in concepts_of("test")] == ["car_wheels", "dog_ears", "cup_handle"]
    assert [c.name for c in concepts_of("toy_top, dog_ears")] == ["toy_top", "dog_ears"]
    with pytest.raises(ValueError, match="unknown toy_bottom; expected dev, test, all"):
        concepts_of("toy_top,toy_bottom")


def test_prompt_pools_hold_out_the_eval_contexts():
    train, evaluation = train_templates(), eval_templates()
    assert len(train) == len(set(train)) >= 200  # four rounds of N=50 without reuse
    for context in EVAL_CONTEXTS:
        assert not any(t.endswith(CONTEXTS[context].phrase) for t in train), context
        assert any(t.endswith(CONTEXTS[context].phrase) for t in evaluation), context
    assert all("{token} {class_noun}" in t for t in train + evaluation)


def test_committed_data_files_are_what_the_world_makes(tmp_path):
    """scripts/make_world_data.py reproduces data/ byte for byte (written to a scratch folder:
    the repository's own files stay untouched while other tests read them)."""
    def digests(root):
        return {p.relative_to(root).as_posix(): hashlib.md5(p.read_bytes()).hexdigest()
                for p in sorted(root.rglob("*")) if p.is_file()}

    subprocess.run([sys.executable, "scripts/make_world_data.py", "--out", str(tmp_path)], cwd=REPO, check=True)
    written, committed = digests(tmp_path), digests(REPO / "data")
    assert {"prompts/train.txt", "prompts/eval.txt"} <= set(written) and {k: committed.get(k) for k in written} == written
    assert {k for k in committed if k.startswith("concept")} <= set(written)  # no stray concept image
    assert len([k for k in written if k.startswith("concepts/")]) == 6 * len(CONCEPTS)
    # the default run's photos are the toy top's in the set
    assert {k.removeprefix("concept/"): v for k, v in written.items() if k.startswith("concept/")} == {
        k.removeprefix("concepts/toy_top/"): v for k, v in written.items() if k.startswith("concepts/toy_top/")}


def test_roc_auc_by_hand():
    assert roc_auc(np.array([3.0, 2.0]), np.array([1.0, 2.0])) == pytest.approx((1 + 1 + 1 + 0.5) / 4)


@pytest.fixture(scope="module")
def world_clip():
    model, _, tokenizer = load_open_clip(WORLD_CLIP, None)
    return model, tokenizer


def test_world_clip_retrieves_class_and_context(world_clip):
    """TS gate: top-1 image -> text retrieval among the 120 "a <class> <context>" captions
    (every caption of one class differs from the others in context) on held-out scenes."""
    model, tokenizer = world_clip
    assert context_retrieval_accuracy(model, tokenizer, n=300, seed=2024) >= 0.80


def test_world_clip_is_ranks_the_concept_above_other_toys(world_clip):
    """IS gate: new photos of the concept on held-out contexts score above other toys."""
    from PIL import Image

    model, _ = world_clip
    concept = [Image.open(p).convert("RGB") for p in sorted((REPO / "data/concept").glob("*.png"))]
    assert concept_auc(model, concept, n=100, seed=7) >= 0.95
