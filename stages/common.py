"""What every stage shares: logging, params (a stage reads only what dvc.yaml lists for it), the stage protocol."""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import logging
import os
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path

import typer

from dbdpo.config import Config, RoundPlan, yaml_name
from dbdpo.errors import MissingInput, StaleInputError, UserError
from dbdpo.params import load_config
from stages.layout import Layout

PARAMS_OPTION = typer.Option(Path("params.yaml"), "--params", help="params file (DVC's params.yaml)")
ROUND_OPTION = typer.Option(None, "--round", show_default=False,
                            help="round name from params.yaml `rounds`, e.g. round_1 (under dvc repro: "
                                 "from DVC_STAGE, e.g. generate@round_1)")

CONCEPT_OPTION = typer.Option(None, "--concept", show_default=False,
                              help="with params.yaml `concepts`: the concept to run, e.g. dog (under dvc repro: "
                                   "from DVC_STAGE, e.g. finetune-dog)")


class UndeclaredRead(RuntimeError):
    """A stage read a params key its declared reads (and so dvc.yaml) do not list: DVC would
    not rerun it when that key changes. A bug in the stage, not in the user's params."""


class ParamView:
    """A read-only view of a Config that lets a stage read only the keys it declares.

    `reads` are params.yaml keys or groups ("model", "concept.dir"), as the stage lists them
    in dvc.yaml. Reading a declared group gives its config object; reading a group of which
    only some keys are declared gives a view of it; reading a key outside `reads` raises
    UndeclaredRead, so dvc.yaml cannot silently miss a key a stage uses.
    """

    def __init__(self, target, reads: tuple[str, ...], who: str, prefix: str = ""):
        object.__setattr__(self, "_view", (target, tuple(reads), who, prefix))

    def __getattr__(self, name: str):
        target, reads, who, prefix = object.__getattribute__(self, "_view")
        names = {f.name for f in dataclasses.fields(target)}
        if name not in names:  # methods too: a stage reads keys, the library derives the rest
            raise AttributeError(f"params {prefix.rstrip('.') or 'file'} has no key {name!r}")
        key = prefix + yaml_name(name)
        value = getattr(target, name)
        declared = any(key == r or key.startswith(r + ".") for r in reads)
        if dataclasses.is_dataclass(value):
            # a whole declared group is the library's own config object (a dataclasses.replace
            # on it works as in the unit tests); a partly declared one stays a view
            return value if declared else ParamView(value, reads, who, key + ".")
        if not declared:
            raise UndeclaredRead(f"{who} reads params key {key}, which its declared reads (dvc.yaml's params "
                                 f"for it: {', '.join(reads)}) do not list")
        return value

    def __setattr__(self, name, value):
        raise dataclasses.FrozenInstanceError(f"params are read-only; cannot set {name}")

    def read_key(self, key: str):
        """A key by its params.yaml path ("pair.lambda", a group: "dpo"), read through the view
        like an attribute; a group comes back as a plain dict keyed by field name."""
        value = self
        for part in key.split("."):  # yaml names ("lambda") to field names ("lambda_")
            target = object.__getattribute__(value, "_view")[0] if isinstance(value, ParamView) else value
            value = getattr(value, next(f.name for f in dataclasses.fields(target) if yaml_name(f.name) == part))
        if isinstance(value, ParamView):
            return value.as_dict()
        return dataclasses.asdict(value) if dataclasses.is_dataclass(value) else value

    def as_dict(self) -> dict:
        """This group as a plain dict keyed by field name, every key read through the view."""
        target = object.__getattribute__(self, "_view")[0]
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(target)}
        return {name: v.as_dict() if isinstance(v, ParamView) else dataclasses.asdict(v) if dataclasses.is_dataclass(v)
                else v for name, v in values.items()}

    def __repr__(self) -> str:
        target, reads, who, _ = object.__getattribute__(self, "_view")
        return f"ParamView({type(target).__name__} for {who})"


def training_checkpoint(cfg: ParamView, reads: tuple[str, ...], directory: Path, every: int,
                        inputs: dict[str, str]):
    """Where a training stage keeps its checkpoint and the fingerprint a checkpoint must carry
    to be resumed: every params key the stage reads but `checkpoint_every`, and the digests of
    its inputs (dbdpo.checkpoints)."""
    from dbdpo.checkpoints import Checkpointing, fingerprint

    # rounds.${key}: a round's overrides, already applied to its groups
    values = {key: cfg.read_key(key) for key in reads if "${" not in key}
    for group in values.values():
        if isinstance(group, dict):
            group.pop("checkpoint_every", None)
    return Checkpointing(directory, every, fingerprint(values, inputs))


# The score keys every stage that builds the scorers reads (score, frontier, evaluate): not
# score.rewards, which only pair reads.
SCORER_READS = ("score.clip_model", "score.clip_pretrained", "score.dino_model", "score.pickscore_model",
                "score.hps_weights", "score.hps_arch", "score.aesthetic_weights", "score.aesthetic_clip",
                "score.aesthetic_clip_pretrained", "score.ts_prompt", "score.batch_size", "score.seed")

def _dvc_stage(stage: str) -> tuple[str | None, str | None] | None:
    """(concept, round) of the DVC stage running this command, from DVC_STAGE ("generate@round_1",
    "generate-dog@round_1", "finetune-dog"); None outside dvc repro or for another stage's name."""
    name, _, round_name = os.environ.get("DVC_STAGE", "").partition("@")
    base, _, concept = name.partition("-")
    return (concept or None, round_name or None) if base == stage else None


def stage_concept(concept: str | None, stage: str, cfg: Config) -> Layout:
    """The concept to run: --concept when given, else the one DVC names in DVC_STAGE
    ("finetune-dog"); checked against params `concepts` (none: the run's one concept)."""
    dvc = _dvc_stage(stage)
    if concept is None and dvc is not None:
        concept = dvc[0]
    if concept is None and cfg.concepts:
        fail(f"params.yaml lists concepts ({', '.join(cfg.concepts)}): name one with --concept, or, under dvc repro, "
             "run `dbdpo concepts` to write dvc.yaml's stages for them")
    if concept is not None and concept not in cfg.concepts:
        fail(f"concept {concept!r} is not in params.yaml concepts ({', '.join(cfg.concepts) or 'none'}): "
             + ("run `dbdpo concepts` to rewrite dvc.yaml's stages" if dvc is not None and dvc[0] else
                "add it there, or leave --concept out to run the one concept of `concept`"))
    return Layout(concept)


def stage_round(round_name: str | None, stage: str) -> str:
    """The round to run: --round when given, else the one DVC names in DVC_STAGE
    ("generate@round_1"). dvc.yaml passes no round on the command line, so no params.yaml
    key (a round name) is ever pasted into a shell command."""
    if round_name is not None:
        return round_name
    dvc = _dvc_stage(stage)
    if dvc is None or dvc[1] is None:
        dvc_stage = os.environ.get("DVC_STAGE", "")
        fail(f"--round is required (e.g. --round round_1) when {stage} runs outside dvc repro"
             + (f"; DVC_STAGE={dvc_stage!r} is not a {stage}@<round> stage" if dvc_stage else ""))
    return dvc[1]


def _load(params: Path) -> Config:
    """Logging + validated params; exits with a one-line error on bad params."""
    logging.basicConfig(level=logging.WARNING, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    logging.getLogger("dbdpo").setLevel(os.environ.get("DBDPO_LOG", "INFO"))
    with user_errors():
        return load_config(params)


def launch_if_asked(cfg: Config, stage: str, params: Path, layout: Layout, round_name: str | None = None) -> None:
    """Run this stage on the processes params' `compute` asks for: when it asks for more than
    one and this process was not started by a launcher, start `accelerate launch` on the same
    stage and exit with its status. (Each process of a launched stage then passes through here
    and runs its share.) compute is read beside the stage's declared params, not through them:
    it says how a stage runs, not what it makes."""
    from dbdpo.distributed import is_distributed, launch_command, launched

    if not is_distributed(cfg.compute) or launched():
        return
    args = ["--params", str(params), *(["--round", round_name] if round_name else []),
            *(["--concept", layout.concept] if layout.concept else [])]
    command = launch_command(cfg.compute, f"stages.{stage}", args)
    logging.getLogger("dbdpo").info("%s on %d processes: %s", stage, cfg.compute.num_processes, " ".join(command))
    raise typer.Exit(code=subprocess.run(command, check=False).returncode)


def share_cores(cfg: Config) -> None:
    """Register this model stage's process with the others running on the machine and take its
    threads (dbdpo.threads: compute.threads, or a share of the cores), until its command ends
    (releases_cores). Like launch_if_asked, it reads compute beside the declared params."""
    from dbdpo.threads import register_stage

    register_stage(cfg.compute.threads)


def setup(params: Path, stage: str, reads: tuple[str, ...], concept: str | None = None, processes: bool = False,
          before: Callable[[Config], None] | None = None) -> tuple[ParamView, Layout]:
    """The validated params as the stage may read them: only `reads`, the keys dvc.yaml lists
    for it (a read of any other key raises, so DVC reruns the stage on every key it uses); with
    params `concepts`, those of `concept` (stage_concept), and where its artifacts live.
    `processes`: the stage runs on compute.num_processes processes (launch_if_asked).
    `before`: a check of the whole params before any work (the first stage's preflight)."""
    cfg = _load(params)
    layout = stage_concept(concept, stage, cfg)
    cfg = cfg.for_concept(layout.concept)
    if before is not None:
        before(cfg)
    if processes:
        launch_if_asked(cfg, stage, params, layout)
        share_cores(cfg)
    return ParamView(cfg, reads, layout.stage(stage)), layout


def setup_round(params: Path, stage: str, reads: tuple[str, ...], concept: str | None, round_name: str,
                processes: bool = False) -> tuple[ParamView, dict[str, RoundPlan], Layout]:
    """setup() for a per-round stage: the round's params (its overrides applied; `rounds.${key}`
    in `reads` is this round's entry), every round's plan, this one's under its name, and where
    its artifacts live."""
    cfg = _load(params)
    if round_name not in cfg.rounds:
        fail(f"--round {round_name}: not in {params} rounds ({', '.join(cfg.rounds)})")
    layout = stage_concept(concept, stage, cfg)
    cfg = cfg.for_concept(layout.concept)
    if processes:
        launch_if_asked(cfg, stage, params, layout, round_name)
        share_cores(cfg)
    reads = tuple(r.replace("${key}", round_name) for r in reads)
    return ParamView(cfg.for_round(round_name), reads, layout.stage(stage, round_name)), cfg.round_plans(), layout


@contextlib.contextmanager
def producing(*outputs: Path) -> Iterator[bool]:
    """The stage protocol from the point its inputs are read and checked (under user_errors):
    the main process removes the stage's previous outputs, so that a failure from here on
    leaves nothing a later stage (or a hand run) would accept; then the body computes and
    writes them atomically with their made-from record. Yields whether this process writes:
    the main one; the other processes of a launched stage compute their share and return
    (dbdpo.distributed). The library's input errors inside end in one line, as user_errors'."""
    from dbdpo.artifacts import remove_outputs
    from dbdpo.distributed import is_main_process

    writes = is_main_process()
    if writes:
        remove_outputs(*outputs)
    with user_errors():
        yield writes


DISK_ERRORS = {errno.ENOSPC: "no space left on the device: free space, then rerun",
               errno.EDQUOT: "the disk quota is used up: free space, then rerun",
               errno.EROFS: "the file system is read-only: run the stage where it can write",
               errno.EACCES: "no permission to write there: fix the folder's permissions, then rerun"}


def disk_errors(command):
    """A stage command whose disk failures (a full disk, a read-only folder) end in one line
    naming the file and the fix; the atomic writes have left nothing half-written behind."""
    @functools.wraps(command)
    def guarded(*args, **kwargs):
        try:
            return command(*args, **kwargs)
        except OSError as e:
            if e.errno not in DISK_ERRORS:
                raise
            fail(f"{e.filename or 'a stage output'}: {e.strerror}; {DISK_ERRORS[e.errno]}")

    return guarded


def releases_cores(command):
    """A model stage command that, however it ends, frees the cores share_cores took and gives
    the calling process its thread count back. Run in-process (a test, a notebook), the caller
    would otherwise still count as a running stage until it exits, halving the threads of the
    stage processes after it and so moving their results' last bits."""
    @functools.wraps(command)
    def released(*args, **kwargs):
        import torch

        from dbdpo.threads import unregister_stage

        before = torch.get_num_threads()
        try:
            return command(*args, **kwargs)
        finally:
            unregister_stage()
            torch.set_num_threads(before)

    return released


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


def beside(cfg: ParamView) -> Config:
    """The whole params behind a stage's view, for the groups a stage reads beside its declared
    keys (compute, logging): they say how it runs and reports, not what it makes."""
    return object.__getattribute__(cfg, "_view")[0]


PREVIEW_PROMPTS = 2  # a DPO round's previews: its first prompts


@dataclasses.dataclass(frozen=True)
class TrainingLog:
    on_step: Callable[[dict], None] | None  # each step's row; None on a launched stage's other processes
    preview: object | None  # dbdpo.training.Preview with logging.sample_every, on every process


def _tracker(kind: str, directory: Path, run_name: str, config: Config):
    """accelerate's tracker for logging.report_to (as diffusers' --report_to), its run config stored."""
    from accelerate.tracking import TensorBoardTracker, WandBTracker

    if kind == "tensorboard":
        tracker = TensorBoardTracker("tensorboard", logging_dir=str(directory))  # <directory>/tensorboard
    else:
        tracker = WandBTracker("dbdpo", name=run_name)
    tracker.start()  # what Accelerator.init_trackers does: the writer or run is made here
    tracker.store_init_configuration(dataclasses.asdict(config))
    return tracker


@contextlib.contextmanager
def live_log(directory: Path, cfg: ParamView, run_name: str, prompts: list[str]) -> Iterator[TrainingLog]:
    """A training loop's logging. `on_step` logs each optimizer step's row with DVCLive as it
    happens: <directory>/plots/metrics/<name>.tsv (one file per quantity; dvc.yaml's titled
    panels draw them) and <directory>/metrics.json (the latest row). dvc.yaml declares both;
    DVCLive writes no dvc.yaml and saves no experiment of its own. With logging.sample_every,
    `preview` samples one image of each of `prompts` every N steps (DVCLive log_image:
    <directory>/plots/images/step_<n>/). With logging.report_to, rows and previews also go to
    that tracker. On a launched stage's other processes no log is written; they sample their
    share of the previews (dbdpo.distributed).
    """
    from dbdpo.distributed import is_main_process
    from dbdpo.training import Preview

    reporting = beside(cfg).logging
    main = is_main_process()
    live = tracker = None

    def log_images(step: int, images: list) -> None:
        if not main:
            return
        for i, image in enumerate(images):
            live.log_image(f"step_{step + 1:05d}/prompt_{i:02d}.png", image)
        if tracker is not None:
            import numpy as np

            stacked = np.stack([np.asarray(image) for image in images])
            tracker.log_images({"preview": stacked}, step=step,
                               **({"dataformats": "NHWC"} if reporting.report_to == "tensorboard" else {}))

    preview = Preview(reporting.sample_every, tuple(prompts), log_images) if reporting.sample_every else None
    if not main:
        yield TrainingLog(None, preview)
        return
    from dvclive import Live
    from scmrepo.exceptions import SCMError

    try:
        live = Live(str(directory), dvcyaml=False, save_dvc_exp=False)
    except SCMError as error:  # dvclive 3.49 reads HEAD even when it saves nothing
        fail(f"DVCLive cannot log to {directory} here ({error}): commit once (`git commit`), then rerun")
    if reporting.report_to is not None:
        tracker = _tracker(reporting.report_to, directory, run_name, beside(cfg))

    def on_step(row: dict) -> None:
        if row["step"] != live.step:
            raise ValueError(f"step {row['step']} logged as DVCLive step {live.step}: rows must come in order")
        for name, value in row.items():
            if name != "step":
                live.log_metric(name, value)
        if tracker is not None:
            tracker.log({k: v for k, v in row.items() if k != "step"}, step=row["step"])
        live.next_step()

    try:
        yield TrainingLog(on_step, preview)
    finally:
        live.end()
        if tracker is not None:
            tracker.finish()
