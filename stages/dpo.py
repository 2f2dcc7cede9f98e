"""Stage dpo@round: a DPO LoRA on the round's preferences, reference = the round's start model
(Diffusion-DPO on pairs, or RankDPO on ranked lists: dpo.loss)."""

from pathlib import Path

import typer

from dbdpo.artifacts import read_parquet, remove_outputs, write_csv, write_json
from dbdpo.backbones import load_backbone
from dbdpo.dpo import preference_data, ranked_data, train_dpo, train_rank_dpo
from dbdpo.lora import load_lora, save_lora, stack
from dbdpo.provenance import check_made_from, folder_record, made_from
from stages.common import (
    LOGS,
    PARAMS_OPTION,
    ROUND_OPTION,
    checked_model,
    model_dir,
    round_dir,
    setup,
    stage_round,
    user_errors,
    writer,
)

app = typer.Typer(add_completion=False)


@app.command()
def main(round_name: str | None = ROUND_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Writes models/<round>/ (start LoRA stacked with the DPO LoRA: one file, relative to the
    base backbone), logs/dpo/<round>.csv (per step) and rounds/<round>/train/metrics.json."""
    round_name = stage_round(round_name, "dpo")
    cfg = setup(params, round_name).for_round(round_name)
    out = round_dir(round_name)
    with user_errors():
        check_made_from(out / "preferences", folder_record(out / "preferences"), writer("preferences", round_name))
        if cfg.dpo.loss == "rank_dpo":
            ranked = read_parquet(out / "preferences" / "ranked.parquet", ["prompt_id", "prompt", "path", "rank", "psi"])
        else:
            pairs = read_parquet(out / "preferences" / "pairs.parquet", ["winner_path", "loser_path", "prompt"])
        start_dir = checked_model(cfg.rounds[round_name].start)
        start = load_lora(start_dir)
        # the start LoRA merged: the reference is exactly the round's start model
        backbone = load_backbone(cfg.model, lora=start, precision=cfg.dpo.mixed_precision)
    remove_outputs(model_dir(round_name), LOGS / "dpo" / f"{round_name}.csv", out / "train" / "metrics.json")
    with user_errors():  # a diverged run stops here, before anything is written
        if cfg.dpo.loss == "rank_dpo":
            lists = [(g["prompt"].iat[0], g["path"].to_list(), g["psi"].to_list())
                     for _, g in ranked.sort_values(["prompt_id", "rank"]).groupby("prompt_id", sort=True)]
            dpo_state, log_rows = train_rank_dpo(backbone, ranked_data(backbone, lists), cfg.dpo)
        else:
            data = preference_data(backbone, pairs["winner_path"].to_list(), pairs["loser_path"].to_list(),
                                   pairs["prompt"].to_list())
            dpo_state, log_rows = train_dpo(backbone, data, cfg.dpo)
    save_lora(backbone.pipe, stack(start, dpo_state), model_dir(round_name),
              made_from=made_from(start_dir, out / "preferences"))
    write_csv(log_rows, LOGS / "dpo" / f"{round_name}.csv")
    last = log_rows[-max(1, len(log_rows) // 10):]  # mean of the last 10% of steps
    write_json({k: sum(r[k] for r in last) / len(last) for k in last[0] if k != "step"},
               out / "train" / "metrics.json")


if __name__ == "__main__":
    app()
