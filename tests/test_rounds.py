"""dbdpo.rounds: one implementation of a round, which the stages and the round benchmarks share."""

import ast
import dataclasses
import os
import subprocess
import sys

import pytest
import torch

from dbdpo.backbones import load_backbone, round_lora
from dbdpo.config import FilterConfig, GenerateConfig, ModelConfig, PairConfig
from dbdpo.lora import lora_rank, save_lora
from dbdpo.rounds import (
    concept_prompts,
    dpo_round,
    load_round_model,
    pair_round,
    sample_round,
    score_round,
)
from tests.conftest import REPO
from tests.test_lora import random_lora

# What a round does, one name each: only dbdpo.rounds may call these for a stage or a round benchmark.
ROUND_STEPS = {"load_backbone", "round_base", "generate", "plan_samples", "write_samples", "score_images",
               "build_preferences", "train_on_preferences", "train_dpo", "train_rank_dpo", "stack"}
ROUND_CALLERS = [*sorted((REPO / "stages").glob("*.py")), REPO / "bench" / "claims.py",
                 REPO / "bench" / "dpo_transfer.py"]
# Round 0 starts from the params' model itself (then dbdpo.dreambooth.dreambooth, which the
# bench calls too); Bench.dpo loads a fresh copy of an in-memory model (no folder to load it
# from); Bench.round_0 tells a saved LoRA from a whole pipeline, as load_round_model does.
ALLOWED = {("finetune.py", "load_backbone"), ("claims.py", "load_backbone"), ("claims.py", "round_base")}


def imported_names(path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {alias.asname or alias.name for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)
            and (node.module or "").startswith("dbdpo") and node.module != "dbdpo.rounds" for alias in node.names}


@pytest.mark.parametrize("path", ROUND_CALLERS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_stages_and_round_benchmarks_run_a_round_only_through_dbdpo_rounds(path):
    """A stage or bench/claims.py with its own copy of a round's step is how the bench once
    measured a DreamBooth without prior preservation: neither imports a step's parts."""
    copied = {name for name in imported_names(path) & ROUND_STEPS if (path.name, name) not in ALLOWED}
    assert not copied, f"{path.name} imports {sorted(copied)}: call dbdpo.rounds instead"


def test_a_round_samples_scores_pairs_and_stacks_its_dpo_lora(tmp_path, in_repo):
    """One round from a saved round 0 on the world backbone, at toy sizes: the samples are
    written where asked, scored, paired, and the round's model is round 0's LoRA and the DPO
    LoRA stacked along the rank axis (a DPO LoRA on an explicit list of module names)."""
    from dbdpo.data import load_concept, ts_texts
    from dbdpo.params import load_config
    from dbdpo.scoring import build_scorers

    cfg = load_config(REPO / "params.yaml")
    start = random_lora(0, rank=4)
    save_lora(load_backbone(ModelConfig()).pipe, start, tmp_path / "round_0")
    backbone = load_round_model(cfg.model, tmp_path / "round_0", round_lora(tmp_path / "round_0"))
    templates = ["a {token} {class_noun} on the beach", "a {token} {class_noun} in the snow"]
    sampling = GenerateConfig(steps=2, batch_size=4)
    samples = sample_round(backbone, templates, concept_prompts(templates, cfg.concept), 3, 7, sampling,
                           tmp_path / "images", tmp_path / "samples.parquet")
    assert samples["prompt"].to_list()[:4] == ["a sks toy on the beach"] * 3 + ["a sks toy in the snow"]
    assert sorted(p.name for p in (tmp_path / "images").iterdir()) == sorted(f"{i}.png" for i in samples["image_id"])

    scorers = build_scorers(cfg.score, load_concept(cfg.concept), ts_texts(cfg.concept, cfg.score.ts_prompt))
    scores = score_round(samples, scorers, 8)
    assert list(scores.columns) == ["image_id", "prompt_id", "prompt", "path", "IS", "TS"]
    assert scores[["IS", "TS"]].notna().all().all()

    prefs = pair_round(scores, PairConfig(), FilterConfig(kind="none"), {})
    assert prefs.mode == "pairs" and len(prefs.table) > 0
    dpo = dataclasses.replace(cfg.dpo, steps=2, batch_size=2, lora_rank=2, lora_targets=("attn2.to_k", "attn2.to_v"))
    lora, rows = dpo_round(backbone, start, prefs, dpo)
    assert len(rows) == 2
    assert lora_rank(lora) == 4 + 2
    trained_only = {k for k in lora if k not in start}
    assert trained_only == set()  # attn2.to_k / to_v are among round 0's attention layers
    key = next(k for k in start if "attn2.to_k" in k and k.endswith("lora_A.weight"))
    assert torch.equal(lora[key][:4], start[key])  # round 0's rows first, then the DPO LoRA's
    untouched = next(k for k in start if "attn1.to_q" in k and k.endswith("lora_B.weight"))
    assert torch.equal(lora[untouched][:, 4:], torch.zeros_like(lora[untouched][:, 4:]))


def test_the_pair_stage_runs_without_the_model_stack(tmp_path):
    """`dbdpo pair` imports no torch and no diffusers (seconds of imports, in every pair process
    of a sweep): the run goes through every import of the stage and stops at its missing scores."""
    probe = ("import atexit, sys\n"
             "atexit.register(lambda: print(sorted(m for m in ('torch', 'diffusers') if m in sys.modules)))\n"
             "from stages.pair import app\n"
             f"app(['--round', 'round_1', '--params', {str(REPO / 'params.yaml')!r}])\n")
    result = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True,
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    assert result.returncode == 2 and "scores.parquet" in result.stderr, result.stderr
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout
