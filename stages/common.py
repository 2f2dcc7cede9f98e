"""What every stage shares: logging, params, and the artifact layout of dvc.yaml."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator
from pathlib import Path

import typer

from dbdpo.config import Config, RoundPlan
from dbdpo.errors import MissingInput, StaleInputError, UserError
from dbdpo.params import ParamView, load_config
from dbdpo.provenance import check_made_from, folder_record

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="params file (DVC's params.yaml)")
ROUND_OPTION = typer.Option(None, "--round", show_default=False,
                            help="round name from params.yaml `rounds`, e.g. round_1 (under dvc repro: "
                                 "from DVC_STAGE, e.g. generate@round_1)")

MODELS = Path("models")
ROUNDS = Path("rounds")
EVAL = Path("eval")
LOGS = Path("logs")


def model_dir(round_name: str) -> Path:
    """models/round_0 is the DreamBooth LoRA; models/round_r the round-r model (one LoRA)."""
    return MODELS / round_name


def round_dir(round_name: str) -> Path:
    return ROUNDS / round_name


STAGE_OF = {"model": "dpo", "samples": "generate", "scores": "score", "preferences": "pair"}


def writer(artifact: str, round_name: str) -> str:
    """The DVC stage that writes `artifact` of a round, e.g. "pair@round_1"; round_0's model is finetune's."""
    return "finetune" if (artifact, round_name) == ("model", "round_0") else f"{STAGE_OF[artifact]}@{round_name}"


def checked_model(round_name: str) -> Path:
    """models/<round>, refused (StaleInputError) if what it was made from has changed since."""
    folder = model_dir(round_name)
    if folder.is_dir():
        check_made_from(folder, folder_record(folder), writer("model", round_name))
    return folder


def stage_round(round_name: str | None, stage: str) -> str:
    """The round to run: --round when given, else the one DVC names in DVC_STAGE
    ("generate@round_1"). dvc.yaml passes no round on the command line, so no params.yaml
    key (a round name) is ever pasted into a shell command."""
    if round_name is not None:
        return round_name
    dvc_stage = os.environ.get("DVC_STAGE", "")
    name, _, key = dvc_stage.partition("@")
    if name != stage or not key:
        fail(f"--round is required (e.g. --round round_1) when {stage} runs outside dvc repro"
             + (f"; DVC_STAGE={dvc_stage!r} is not a {stage}@<round> stage" if dvc_stage else ""))
    return key


def _load(params: Path) -> Config:
    """Logging + validated params; exits with a one-line error on bad params."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dbdpo").setLevel(os.environ.get("DBDPO_LOG", "INFO"))
    with user_errors():
        return load_config(params)


def setup(params: Path, stage: str, reads: tuple[str, ...]) -> ParamView:
    """The validated params as the stage may read them: only `reads`, the keys dvc.yaml lists
    for it (a read of any other key raises, so DVC reruns the stage on every key it uses)."""
    return ParamView(_load(params), reads, stage)


def setup_round(params: Path, stage: str, reads: tuple[str, ...],
                round_name: str) -> tuple[ParamView, dict[str, RoundPlan]]:
    """setup() for a per-round stage: the round's params (its overrides applied; `rounds.${key}`
    in `reads` is this round's entry) and every round's plan, this one's under its name."""
    cfg = _load(params)
    if round_name not in cfg.rounds:
        fail(f"--round {round_name}: not in {params} rounds ({', '.join(cfg.rounds)})")
    reads = tuple(r.replace("${key}", round_name) for r in reads)
    return ParamView(cfg.for_round(round_name), reads, f"{stage}@{round_name}"), cfg.round_plans()


def fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Turn the library's input errors (bad data, params, missing weights) into one clean line;
    the DVC advice is worded here, the library knows nothing of DVC."""
    try:
        yield
    except (MissingInput, StaleInputError) as e:
        fail(f"{e} (`dvc repro` runs every stage whose inputs changed, in order)")
    except UserError as e:
        fail(str(e))
