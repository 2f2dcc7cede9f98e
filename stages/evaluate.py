"""Stage evaluate: every round's model on the held-out prompts -> metrics, plots, grids."""

from pathlib import Path

import typer

from stages.common import (
    CONCEPT_OPTION,
    PARAMS_OPTION,
    SCORER_READS,
    disk_errors,
    producing,
    releases_cores,
    setup,
    user_errors,
)
from stages.held_out import held_out_setup

# The params keys this stage reads, exactly as dvc.yaml lists them (a test checks both).
READS = ("model", "concept", *SCORER_READS, "rounds", "evaluate")

app = typer.Typer(add_completion=False)


@app.command()
@disk_errors
@releases_cores
def main(concept_name: str | None = CONCEPT_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Writes metrics.json (the last round's IS, TS, gains over round_0 and distance beyond the
    baseline frontier: the headline), eval/rounds.json (every round's mean and std of each score,
    its gains and beyond_frontier), eval/frontier.json (the baselines of the frontier stage and
    their hull), eval/tradeoff.csv, eval/tradeoff.png, eval/scores.parquet, eval/images/<round>/
    and eval/grids/ (same seed, every round)."""
    # the model stack loads here, not at import: `dbdpo <stage> --help` answers at once
    import pandas as pd

    from dbdpo.artifacts import atomic_dir, write_csv, write_json, write_parquet
    from dbdpo.backbones import round_lora
    from dbdpo.evaluation import (
        RoundModel,
        comparison_grids,
        headline,
        round_summary,
        rounds_table,
        sample_and_score,
        tradeoff_figure,
        tradeoff_rows,
    )
    from dbdpo.frontier import frontier_report

    cfg, layout = setup(params, "evaluate", READS, concept_name, processes=True)
    e = cfg.evaluate
    names = ["round_0", *cfg.rounds]
    with user_errors():
        models = [RoundModel(n, round_lora(layout.checked_model(n))) for n in names]
        baselines = layout.checked_table(layout.baselines / "scores.parquet", ["round", "prompt_id", "seed"],
                                         "baselines", None)
        templates, concept, scorers, backbone = held_out_setup(cfg, layout)
    out = layout.eval
    outputs = (out / "images", out / "scores.parquet", out / "tradeoff.csv", out / "tradeoff.png", out / "grids",
               layout.rounds_table, layout.frontier_table, layout.metrics)
    with producing(*outputs) as writes:
        if not writes:  # samples and scores its share; every process gets all (dbdpo.distributed)
            sample_and_score(backbone, models, templates, cfg.concept, e, scorers, None, cfg.score.batch_size)
            return
        with atomic_dir(out / "images") as image_dir:
            samples = sample_and_score(backbone, models, templates, cfg.concept, e, scorers, image_dir,
                                       cfg.score.batch_size)
        write_parquet(pd.concat([s.scores for s in samples], ignore_index=True), out / "scores.parquet")
        metrics, frontier = frontier_report(rounds_table(samples), baselines, samples[0].scores)
        write_csv(tradeoff_rows(metrics), out / "tradeoff.csv")
        tradeoff_figure(metrics, out / "tradeoff.png", frontier)
        with atomic_dir(out / "grids") as grid_dir:
            for prompt_id, grid in comparison_grids(samples, e.grid_prompts, e.images_per_prompt, concept[0]).items():
                grid.save(grid_dir / f"prompt_{prompt_id:02d}.png")
        write_json(metrics, layout.rounds_table)
        write_json(frontier, layout.frontier_table)
        write_json(headline(metrics), layout.metrics)
    for name, row in metrics.items():
        typer.echo(round_summary(name, row))


if __name__ == "__main__":
    app()
