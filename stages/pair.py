"""Stage pair@round: winner/loser pairs from the round's scores, filtered and capped."""

from pathlib import Path

import typer

from dbdpo.artifacts import read_parquet, write_json, write_parquet
from dbdpo.pairs import build_pairs, to_pickapic
from stages.common import PARAMS_OPTION, ROUND_OPTION, round_dir, setup, user_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(round_name: str = ROUND_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Writes rounds/<round>/pairs.parquet, pickapic.parquet (diffusers DPO layout) and
    pair_summary.json (pairs kept by each step, a DVC metric)."""
    cfg = setup(params, round_name).for_round(round_name)
    out = round_dir(round_name)
    with user_errors():
        scores = read_parquet(out / "scores.parquet", ["image_id", "prompt_id", "prompt", "path", "IS", "TS"])
        pairs, summary = build_pairs(scores, cfg.pair, cfg.filter)
    write_parquet(pairs, out / "pairs.parquet")
    write_parquet(to_pickapic(pairs), out / "pickapic.parquet")
    write_json(summary.as_metrics(), out / "pair_summary.json")
    typer.echo(f"{round_name}: {summary.kept} pairs ({summary.as_metrics()})")


if __name__ == "__main__":
    app()
