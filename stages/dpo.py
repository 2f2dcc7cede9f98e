"""Stage dpo@round: Diffusion-DPO LoRA on the round's pairs, reference = the start model."""

from pathlib import Path

import typer

from dbdpo.artifacts import read_parquet, write_csv, write_json
from dbdpo.backbones import load_backbone
from dbdpo.lora import load_lora, merge_into, save_lora, stack
from dbdpo.training import preference_data, train_dpo
from stages.common import LOGS, PARAMS_OPTION, ROUND_OPTION, model_dir, round_dir, setup, user_errors

app = typer.Typer(add_completion=False)


@app.command()
def main(round_name: str = ROUND_OPTION, params: Path = PARAMS_OPTION) -> None:
    """Writes models/<round>/ (start LoRA stacked with the DPO LoRA: one file, relative to the
    base backbone), logs/dpo/<round>.csv (per step) and rounds/<round>/train/metrics.json."""
    cfg = setup(params, round_name).for_round(round_name)
    out = round_dir(round_name)
    with user_errors():
        pairs = read_parquet(out / "pairs.parquet", ["winner_path", "loser_path", "prompt"])
        start = load_lora(model_dir(cfg.rounds[round_name].start))
        backbone = load_backbone(cfg.model)
    merge_into(backbone.pipe.unet, start)  # the reference: exactly the round's start model
    data = preference_data(backbone, pairs["winner_path"].to_list(), pairs["loser_path"].to_list(),
                           pairs["prompt"].to_list())
    dpo_state, log_rows = train_dpo(backbone, data, cfg.dpo)
    save_lora(backbone.pipe, stack(start, dpo_state), model_dir(round_name))
    write_csv(log_rows, LOGS / "dpo" / f"{round_name}.csv")
    last = log_rows[-max(1, len(log_rows) // 10):]  # mean of the last 10% of steps
    write_json({k: sum(r[k] for r in last) / len(last) for k in last[0] if k != "step"},
               out / "train" / "metrics.json")


if __name__ == "__main__":
    app()
