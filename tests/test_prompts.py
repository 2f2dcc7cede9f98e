"""The prompt composer: pools at the papers' scale, deterministic, held-out contexts kept out."""

import re

import pytest

from dbdpo.config import ConceptConfig
from dbdpo.data import fill_prompt, load_prompt_templates, text_prompt
from dbdpo.errors import DataError
from dbdpo.prompts import (
    CONTEXTS,
    compose,
    compose_pool,
    eval_contexts,
    subject_kind,
    write_pool,
)
from tests.conftest import REPO, invoke_stage

EVAL_FILES = [REPO / "data/prompts/dreambooth_object.txt", REPO / "data/prompts/dreambooth_live.txt",
              REPO / "data/prompts/eval.txt"]


def test_compose_reads_as_english():
    assert compose("a photo of", "", "", "in a library") == "a photo of a {token} {class_noun} in a library"
    assert compose("", "old", "sleeping", "on a balcony") == "an old {token} {class_noun} sleeping on a balcony"
    assert compose("an oil painting of", "", "", "at a campfire") == "an oil painting of a {token} {class_noun} at a campfire"


@pytest.mark.parametrize("class_noun, kind", [("dog", "live"), ("backpack", "object"), ("Cat", "live")])
def test_the_class_noun_picks_the_subject_kind(class_noun, kind):
    assert subject_kind(class_noun) == kind


@pytest.mark.parametrize("kind", ["object", "live"])
def test_a_pool_of_4000_is_distinct_deterministic_and_off_the_eval_contexts(kind):
    held = [t for path in EVAL_FILES for t in load_prompt_templates(path)]
    pool = compose_pool(kind, 4000, held)
    assert len(pool) == 4000 and len(set(pool)) == 4000
    assert pool == compose_pool(kind, 4000, held)  # same arguments, same order
    assert pool != compose_pool(kind, 4000, held, seed=1)
    assert all("{token} {class_noun}" in t and "  " not in t for t in pool)
    assert not any(re.search(r"\ba [aeiou]", t) for t in pool)  # "an old", never "a old"
    for context in eval_contexts(held):
        assert not any(t.endswith(context) for t in pool), context
    # every context and style appears early: a round's slice mixes them
    assert len({c for c in CONTEXTS if any(t.endswith(c) for t in pool[:500])}) == len(CONTEXTS)
    cfg = ConceptConfig(token="sks", class_noun="dog")
    assert fill_prompt(pool[0], cfg).count("sks dog") == 1 and "sks" not in text_prompt(pool[0], cfg, "with_class")


def test_an_eval_context_is_removed_from_the_pool():
    pool = compose_pool("object", 2000, ["a {token} {class_noun} in a library"])
    assert not any(t.endswith("in a library") for t in pool)
    assert any(t.endswith("in a library") for t in compose_pool("object", 2000))


def test_asking_for_more_than_the_composer_holds_names_both_numbers():
    with pytest.raises(DataError, match=r"asked for 10000000 prompts; the composer has \d+ distinct live prompts"):
        compose_pool("live", 10_000_000)


def test_the_pool_is_a_prompt_file_the_pipeline_loads_the_same_bytes_each_time(tmp_path):
    out = write_pool(tmp_path / "p.txt", "live", 2500, EVAL_FILES, class_noun="dog")
    templates = load_prompt_templates(out)
    assert len(templates) == 2500 and out.read_text().startswith("# 2500 training prompts for a dog (live): ")
    first = out.read_bytes()
    write_pool(out, "live", 2500, EVAL_FILES, class_noun="dog")
    assert out.read_bytes() == first and not list(tmp_path.glob(".tmp-*"))


def test_dbdpo_prompts_runs_in_any_folder_with_the_shipped_evaluation_sets(tmp_path, monkeypatch):
    """It once ended in a DataError traceback outside this repository: its default evaluation
    files were the repository's."""
    monkeypatch.chdir(tmp_path)
    result = invoke_stage("prompts", "--class-noun", "dog", "--n", "4000", "--out", "data/prompts/train_dog.txt")
    assert result.exit_code == 0, result.output
    written = (tmp_path / "data/prompts/train_dog.txt").read_text().splitlines()
    assert written[1] == "# No context of dreambooth_object.txt, dreambooth_live.txt. Round i takes its own slice of " \
                         "generate.num_prompts."
    assert written[2:] == (REPO / "data/prompts/pool_live.txt").read_text().splitlines()[2:]
    missing = invoke_stage("prompts", "--kind", "object", "--eval", "nope.txt", "--out", "p.txt")
    assert missing.exit_code == 2 and missing.stderr.startswith("error: ") and "nope.txt" in missing.stderr
    assert invoke_stage("prompts", "--out", "p.txt").exit_code == 2


@pytest.mark.parametrize("kind", ["object", "live"])
def test_the_shipped_pools_are_the_composers_output(tmp_path, kind):
    """data/prompts/pool_<kind>.txt (the presets' generate.prompts) is what the command writes."""
    shipped = REPO / f"data/prompts/pool_{kind}.txt"
    out = write_pool(tmp_path / "p.txt", kind, 4000, EVAL_FILES[:2])
    assert out.read_text().splitlines()[2:] == shipped.read_text().splitlines()[2:]
    assert len(load_prompt_templates(shipped)) == 4000
