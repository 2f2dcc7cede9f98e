"""The held-out setup evaluate and frontier share: one piece, so that the baselines are sampled
and scored exactly as round 0 is, and pair with its images row by row."""

from stages.common import ParamView
from stages.layout import Layout


def held_out_setup(cfg: ParamView, layout: Layout):
    """The held-out prompt templates, the concept photos, the scorers (every TS form) and the
    round-0 backbone (layout's)."""
    from dbdpo.data import eval_prompts, load_concept, ts_texts
    from dbdpo.rounds import load_round_model
    from dbdpo.scoring import build_scorers

    templates = eval_prompts(cfg.evaluate.prompts, cfg.evaluate.num_prompts)
    concept = load_concept(cfg.concept)
    scorers = build_scorers(cfg.score, concept, ts_texts(cfg.concept, cfg.score.ts_prompt, every_form=True))
    backbone = load_round_model(cfg.model, layout.checked_model("round_0"), precision=cfg.model.precision)
    return templates, concept, scorers, backbone
