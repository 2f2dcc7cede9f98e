"""The generated docs (scripts/make_docs.py): they equal what the code and bench/results give,
so a knob or a result cannot drift from its page."""

import dataclasses
import importlib.util
import typing

import pytest

from dbdpo.config import Config, yaml_name
from tests.conftest import REPO


@pytest.fixture(scope="module")
def make_docs():
    spec = importlib.util.spec_from_file_location("make_docs", REPO / "scripts" / "make_docs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_generated_pages_are_current(make_docs, capsys):
    assert make_docs.main(["--check"]) == 0, capsys.readouterr().err


def test_the_knobs_page_has_one_row_per_params_key_with_its_comment(make_docs):
    page = make_docs.knobs_markdown(REPO)
    hints = typing.get_type_hints(Config)
    for group in (f.name for f in dataclasses.fields(Config) if f.name not in ("rounds", "concepts")):
        for f in dataclasses.fields(hints[group]):
            assert page.count(f"| `{group}.{yaml_name(f.name)}` |") == 1, (group, f.name)
    assert "| `pair.lambda` | float | `0.5` |  | S = lambda*TS + (1-lambda)*IS |" in page
    assert "| `model.precision` | fp32 \\| fp16 \\| bf16 | `fp32` | sd2: `fp16`<br>sd21: `fp16`<br>sdxl: `bf16` |" in page


def test_key_comments_take_trailing_comments_and_their_continuation_lines(make_docs):
    text = ("dpo:\n"
            "  beta: 2500.0  # the KL weight\n"
            "  clip: null    # clip the norm; null: none (the\n"
            "                # proving ground's)\n"
            "  # a block comment about the next key, not a continuation\n"
            "  steps: 100\n"
            "score:\n"
            "  rewards:      # the ensemble\n"
            "    IS: 1.0     # a nested key: its parent's row covers it\n")
    assert make_docs.key_comments(text) == {
        "dpo.beta": "the KL weight", "dpo.clip": "clip the norm; null: none (the proving ground's)",
        "score.rewards": "the ensemble"}


def test_each_results_section_names_the_commit_its_bench_measured(make_docs):
    assert make_docs.measured_on({"commit": "4d56420-dirty"}) == "Code: commit `4d56420-dirty`."
    assert make_docs.measured_on({}) == "Code: not recorded (measured before the benches recorded their commit)."
    page = make_docs.results_markdown(REPO).splitlines()
    headings = [i for i, line in enumerate(page) if line.startswith("### ")]
    assert headings and all(page[i + 2].startswith("Code: ") for i in headings)


def test_a_claims_section_names_its_overrides_and_its_masked_loss(make_docs):
    """A claims file's heading and command give back what it ran: each --set, and --mask."""
    import json

    result = json.loads((REPO / "bench/results/claims_dev_lora_rank4.json").read_text())
    heading, _, table = make_docs.claims_section(REPO / "bench/results/x.json", result | {"mask": 0.2})
    assert heading.startswith("### The claims on the dev concepts, with finetune.lora_rank=4, DreamBooth's masked "
                              "loss (background 0.2) (")
    assert "`python bench/claims.py --concepts dev --set finetune.lora_rank=4 --mask 0.2 --out bench/results/x.json`" \
        in table


def test_the_readme_results_block_is_the_benchs_own_table(make_docs, tmp_path):
    (tmp_path / "bench" / "results").mkdir(parents=True)
    (tmp_path / "bench" / "results" / "claims_test.md").write_text("| a |\n|---|\n| +0.1 |\n")
    (tmp_path / "README.md").write_text("intro\n<!-- results:claims_test -->\nstale\n<!-- /results -->\nend\n")
    assert make_docs.readme_markdown(tmp_path) == ("intro\n<!-- results:claims_test -->\n| a |\n|---|\n| +0.1 |\n"
                                                   "<!-- /results -->\nend\n")
    (tmp_path / "README.md").write_text("<!-- results:absent -->\n<!-- /results -->\n")
    with pytest.raises(SystemExit, match="bench/results/absent.md"):
        make_docs.readme_markdown(tmp_path)


def test_the_readme_stays_a_readme():
    """A newcomer's page: short, with how to run one's own concept on a GPU on its first screen."""
    lines = (REPO / "README.md").read_text().splitlines()
    assert len(lines) <= 250, len(lines)
    assert any("dbdpo init" in line and "--preset sdxl" in line for line in lines[:60])
