"""`dbdpo`: one command for the pipeline. Its stage subcommands are the very Typer commands of
stages/<name>.py that dvc.yaml runs (`python -m stages.<name>`), and `export kohya` writes a
round's LoRA for ComfyUI / A1111.

A subcommand's module is imported only when that subcommand runs or shows its help, and the
stage modules import the model stack only inside their commands, so `dbdpo --help` and
`dbdpo <stage> --help` answer without loading torch.
"""

from __future__ import annotations

import importlib

import typer
from typer.core import TyperGroup

# name -> (module holding a Typer `app`, one line for `dbdpo --help`)
COMMANDS = {
    "finetune": ("stages.finetune", "DreamBooth on the concept images -> models/round_0"),
    "generate": ("stages.generate", "K seeded images per prompt of a round, from its start model"),
    "score": ("stages.score", "IS, TS (and extras) for every image of a round"),
    "pair": ("stages.pair", "a round's preference pairs or ranked lists from its scores"),
    "dpo": ("stages.dpo", "Diffusion-DPO or RankDPO on a round's preferences"),
    "frontier": ("stages.frontier", "round 0 at other LoRA and guidance scales: the baselines evaluate compares with"),
    "evaluate": ("stages.evaluate", "every round on the held-out prompts: metrics, plots, grids"),
    "export": ("stages.export", "write a round's model for other tools (kohya LoRA)"),
    "prompts": ("stages.prompts", "a training prompt pool at the papers' scale, no evaluation context in it"),
    "init": ("stages.init", "a new DVC project for your concept, ready for dvc repro"),
    "show": ("stages.show", "each round's held-out IS, TS and gains over round_0, with standard errors"),
    "summary": ("stages.summary", "several concepts' headlines and their mean ± se over the concepts"),
    "concepts": ("stages.concepts", "dvc.yaml for params.yaml's concepts: one dvc repro runs them all"),
    "check": ("stages.check", "every weight, prompt file and photo the params name: what is missing, how to fetch it"),
    "status": ("stages.status", "each round's state, a stopped run's checkpoint, what dvc repro would run"),
}


class LazyCommands(TyperGroup):
    """A command group (Typer's own click, so the stage commands' exits and errors pass through
    it) that imports a subcommand's module only when that subcommand is used."""

    def list_commands(self, ctx) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx, name: str):
        if name not in COMMANDS:
            return None
        module = importlib.import_module(COMMANDS[name][0])
        command = typer.main.get_command(module.app)
        command.name = name
        reads = getattr(module, "READS", None)
        if reads is not None:  # a stage: say which params.yaml keys it reads (dvc.yaml lists the same)
            command.help = (command.help or "") + "\n\nReads params: " + ", ".join(reads)
        return command

    def format_commands(self, ctx, formatter) -> None:
        with formatter.section("Commands"):
            formatter.write_dl([(name, text) for name, (_, text) in COMMANDS.items()])


app = typer.Typer(cls=LazyCommands, name="dbdpo", rich_markup_mode=None, add_completion=False,
                  no_args_is_help=True)


def print_version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"dbdpo {version('dbdpo')}")
        raise typer.Exit()


@app.callback()
def dbdpo(_version: bool = typer.Option(False, "--version", callback=print_version, is_eager=True,
                                        help="Show the installed dbdpo version (pip's) and exit.")) -> None:
    """DreamBooth + self-scored DPO as a DVC pipeline: `dvc repro` runs these stages in order;
    each also runs alone, e.g. `dbdpo pair --round round_1`."""


cli = typer.main.get_command(app)


def main() -> None:
    cli()


if __name__ == "__main__":
    main()
