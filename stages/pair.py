"""Stage pair@round: the round's preferences from its scores: filtered winner/loser pairs
(pair.mode=pairs, DreamBoothDPO) or every prompt's ranked list (pair.mode=rank, RankDPO)."""

from pathlib import Path

import typer

from dbdpo.artifacts import atomic_dir, read_parquet, remove_outputs, write_json
from dbdpo.pairs import build_pairs, ranked_lists, to_pickapic
from dbdpo.provenance import RECORD_FILE, RECORD_KEY, check_made_from, made_from
from stages.common import (
    PARAMS_OPTION,
    ROUND_OPTION,
    round_dir,
    setup,
    stage_round,
    user_errors,
    writer,
)

app = typer.Typer(add_completion=False)


@app.command()
def main(round_name: str | None = ROUND_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Writes rounds/<round>/preferences/ (pairs.parquet + pickapic.parquet, the diffusers DPO
    layout, or ranked.parquet) and pair_summary.json (what was kept, a DVC metric)."""
    round_name = stage_round(round_name, "pair")
    cfg = setup(params, round_name).for_round(round_name)
    out = round_dir(round_name)
    with user_errors():
        scores = read_parquet(out / "scores.parquet", ["image_id", "prompt_id", "prompt", "path", "IS", "TS"])
        check_made_from(out / "scores.parquet", scores.attrs.get(RECORD_KEY), writer("scores", round_name))
        remove_outputs(out / "preferences", out / "pair_summary.json")
        if cfg.pair.mode == "rank":
            ranked = ranked_lists(scores, cfg.score.rewards, cfg.pair.normalize)
            summary = {"lists": int(ranked["prompt_id"].nunique()), "images_per_list": int(ranked["rank"].max())}
        else:
            pairs, pair_summary = build_pairs(scores, cfg.pair, cfg.filter)
            summary = pair_summary.as_metrics()
    with user_errors(), atomic_dir(out / "preferences") as tmp:  # the export reads every image
        if cfg.pair.mode == "rank":
            ranked.to_parquet(tmp / "ranked.parquet", index=False)
        else:
            pairs.to_parquet(tmp / "pairs.parquet", index=False)
            to_pickapic(pairs).to_parquet(tmp / "pickapic.parquet", index=False)
        write_json(made_from(out / "scores.parquet"), tmp / RECORD_FILE)
    write_json(summary, out / "pair_summary.json")
    typer.echo(f"{round_name}: {summary}")


if __name__ == "__main__":
    app()
