"""The papers' claims as tests, on the proving ground's default params (slow; in CI).

Same seeds before and after; gains in units of round_0's std per image. bench/claims.py
measures every claim, this module asserts those that hold here, with thresholds set from its
measured values (README, "The papers' claims"):
  a. DreamBooth raises IS on the held-out evaluation prompts over the base model prompted
     with the class noun; on its own prompt with no context, by the 1 std the issue asks;
  b. DPO at lambda=0.5 with the angle filter raises S_0.5 by the final round (the params'
     two), with neither IS nor TS falling, on round 1's prompts (new seeds) and on the
     held-out contexts;
  c. lambda steers: lambda=0 gains more IS than lambda=1, on both prompt sets (that lambda=1
     gains more TS than lambda=0 is measured, not asserted: below).
The sizes asked (1 std for a, 0.3 for b) are not reached on this world (README).
"""

import dataclasses

import pytest

from dbdpo.params import load_config
from tests.conftest import REPO
from tests.test_bench import bench_module

pytestmark = pytest.mark.slow

# Measured by bench/claims.py on the default params (2026-11-27, 2-core CPU, N=16 prompts a round,
# TS against the authors' "a in the jungle"; ± the standard error over the images):
#   (a) +0.554 (finetune.seed 0's draw: seeds 1, 2 give 0.12, 0.26); on DreamBooth's own prompt with
#       no context +1.621 (seeds 1, 2: +1.30, +1.54);
#   (b) after two rounds, held-in S_0.5 +0.127±0.031 (IS +0.178, TS +0.076), held-out +0.065±0.032
#       (IS +0.064, TS +0.066); with dpo.seed 1 and 2 held-in +0.126 and +0.198, held-out +0.050 and
#       +0.087; with one thread (as here) held-in +0.129, held-out +0.054 (IS +0.047, TS +0.060).
#       After one round the held-out gain is +0.061 on dpo.seed 0 but +0.026 and +0.028 on 1 and 2:
#       too close to zero for a threshold with margin, so (b) is asserted on the final round, as
#       the claim reads;
#   (c) IS: held-in +0.210 vs +0.013, held-out +0.056 vs -0.052 (lambda=0 vs lambda=1).
# (a), (b)'s first round and lambda=0's gains are the same to three decimals with one thread (as
# here under xdist) and two (the bench); lambda=1's are not: held-in IS +0.057 / +0.013 and TS +0.025 /
# +0.051 with one / two threads. The whole chain differs in its last bits between the two,
# DreamBooth included; from one saved round_0 and the same round-1 images, the lambda=1 round
# samples the same images with either, so what lambda=1 amplifies is a last-bit difference
# upstream of its DPO round. It is the size of (c)'s TS margin (lambda=1 over lambda=0: held-in
# +0.024 and held-out +0.037 with two threads, -0.002 and +0.012 with one), so that side is not
# resolved on these defaults and is not asserted; (c)'s IS margins (0.15-0.20 held-in,
# 0.09-0.11 held-out) are. Thresholds at about half the smallest measured value.
A_IS_GAIN = 0.4  # the issue asks 1 std: not reached (README)
A_OWN_PROMPT_IS_GAIN = 1.0  # measured +1.62 (finetune.seed 1, 2: +1.30, +1.54); not claim (a)'s prompts
B_S_GAIN = {"held-in": 0.06, "held-out": 0.025}  # the issue asks 0.3 std: not reached (README)
C_IS_MARGIN = {"held-in": 0.07, "held-out": 0.045}
SETS = ("held-in", "held-out")


@pytest.fixture(scope="module")
def measured(tmp_path_factory):
    claims = bench_module("claims")
    cfg = load_config(REPO / "params.yaml")
    cfg = dataclasses.replace(cfg, concept=dataclasses.replace(cfg.concept, dir=str(REPO / cfg.concept.dir)),
                              generate=dataclasses.replace(cfg.generate, prompts=str(REPO / cfg.generate.prompts)),
                              evaluate=dataclasses.replace(cfg.evaluate, prompts=str(REPO / cfg.evaluate.prompts)))
    bench = claims.Bench(cfg, tmp_path_factory.mktemp("claims"))
    round_0 = bench.dreambooth()
    first = bench.round_scores(round_0, bench.round_prompts[0], 1, "round_1")
    out = {"base": bench.measure(None, "base", class_prompt=True, sets=("held-out",)),
           "round_0": bench.measure(round_0, "round_0")}
    own_prompt = claims.dreambooth_gain(out["base"]["held-out"], out["round_0"]["held-out"],
                                        bench.own_prompt(None, "base_alone"),
                                        bench.own_prompt(round_0, "round_0_alone"))["own_prompt_IS"]
    for lam in (0.0, 1.0):
        model = bench.dpo(round_0, first, claims.with_pairing(cfg, lam, "angle"), cfg.dpo.steps)
        out[lam] = bench.measure(model, f"lambda_{lam:g}")
    final = bench.dpo_rounds(round_0, first, claims.with_pairing(cfg, 0.5, "angle"), cfg.dpo.steps)[-1]
    out["final"] = bench.measure(final, "final")
    return {name: {where: claims.gains(s, out["round_0"][where]) for where, s in sets.items()}
            for name, sets in out.items()} | {"own prompt": own_prompt}


def test_a_dreambooth_raises_held_out_is_over_the_base_model(measured):
    assert -measured["base"]["held-out"]["IS"] >= A_IS_GAIN, measured["base"]


def test_a_dreambooth_learns_the_concept_at_one_std_on_its_own_prompt(measured):
    """With no context in the prompt ("a photo of sks toy" over the base model's "a photo of a
    toy"), round_0's IS gain is the size claim (a) asks; the held-out contexts take most of it."""
    assert measured["own prompt"] >= A_OWN_PROMPT_IS_GAIN, measured["own prompt"]


@pytest.mark.parametrize("where", SETS)
def test_b_dpo_raises_the_weighted_score_without_losing_either(measured, where):
    gain = measured["final"][where]
    assert gain["S_0.5"] >= B_S_GAIN[where] and gain["IS"] >= -0.1 and gain["TS"] >= -0.1, gain


@pytest.mark.parametrize("where", SETS)
def test_c_lambda_steers_fidelity(measured, where):
    fidelity, alignment = measured[0.0][where], measured[1.0][where]
    assert fidelity["IS"] - alignment["IS"] >= C_IS_MARGIN[where], (fidelity, alignment)
