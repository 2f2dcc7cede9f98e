"""`dbdpo status`: where a project stands. Each round: trained or not, its held-out IS/TS from
eval/rounds.json, a finetune or DPO run stopped midway (its checkpoint, which `dvc repro`
resumes); then the stages `dvc repro` would run, and why."""

import json
from pathlib import Path

import typer

from dbdpo.config import Config
from stages.common import PARAMS_OPTION, user_errors
from stages.layout import Layout

STAGE_ORDER = ("finetune", "generate", "score", "pair", "dpo", "frontier", "evaluate", "summary")

app = typer.Typer(add_completion=False)


def pipeline_order(address: str, rounds: list[str]) -> tuple[int, int]:
    """Sort key of a dvc.yaml address ("pair@round_1", "pair-dog@round_1") in the order
    `dvc repro` runs them."""
    name, _, round_name = address.partition("@")
    name = name.partition("-")[0]
    if round_name in rounds:
        return rounds.index(round_name) + 1, STAGE_ORDER.index(name)
    return (0 if name == "finetune" else len(rounds) + 1), STAGE_ORDER.index(name)


@app.command()
def main(params: Path = PARAMS_OPTION) -> None:
    """Print each round's state and what `dvc repro` would run next (run in the project folder)."""
    from dvc.repo import Repo

    from dbdpo.params import load_config

    with user_errors():
        cfg = load_config(params)
    rounds = list(cfg.round_plans())
    for layout in [Layout(name) for name in cfg.concepts] or [Layout()]:
        if layout.concept is not None:
            typer.echo(f"{layout.concept}:")
        round_lines(cfg, layout, rounds)
    changed = Repo(".").status()
    if not changed:
        typer.echo("dvc status: up to date")
        return
    typer.echo("dvc repro would run:")
    for address in sorted(changed, key=lambda a: pipeline_order(a, rounds)):
        typer.echo(f"  {address:<24} {'; '.join(describe(change) for change in changed[address])}")


def round_lines(cfg: Config, layout: Layout, rounds: list[str]) -> None:
    """Each round of one concept's run: trained or not, its held-out IS/TS, a stopped run."""
    from dbdpo.checkpoints import saved_step
    from dbdpo.errors import CheckpointError

    metrics = json.loads(layout.rounds_table.read_text()) if layout.rounds_table.is_file() else {}
    for name in ["round_0", *rounds]:
        line = f"{name:<9} {'trained' if layout.model_dir(name).is_dir() else 'not trained':<12}"
        if name in metrics:
            line += f" held-out IS {metrics[name]['IS']:.4f}  TS {metrics[name]['TS']:.4f}"
        folder = layout.checkpoint_dir(name)
        try:
            step = saved_step(folder)
        except CheckpointError as e:
            typer.echo(f"{line} {e}")
            continue
        if step is not None:
            stage, total = (("finetune", cfg.finetune.steps) if name == "round_0"
                            else ("dpo", cfg.for_round(name).dpo.steps))
            line += f" {stage} stopped after step {step} of {total} ({folder}; dvc repro resumes there)"
        typer.echo(line)


def describe(change) -> str:
    """One entry of `dvc status`: {"changed deps": {"dbdpo": "modified", "params.yaml": {"dpo":
    "modified"}}} -> "deps: dbdpo modified, params.yaml (dpo modified)"."""
    if not isinstance(change, dict):
        return str(change)  # e.g. "always changed"
    parts = []
    for kind, what in change.items():
        items = [f"{path} ({', '.join(f'{k} {v}' for k, v in state.items())})" if isinstance(state, dict)
                 else f"{path} {state}" for path, state in what.items()]
        parts.append(f"{kind.removeprefix('changed ')}: {', '.join(items)}")
    return "; ".join(parts)


if __name__ == "__main__":
    app()
