"""Where a run's artifacts live, as dvc.yaml declares them, and which stage writes each."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from dbdpo.provenance import check_made_from, folder_record

PRODUCER_STAGE = {"model": "dpo", "samples": "generate", "scores": "score", "preferences": "pair"}
RUN_PRODUCER_STAGE = {"baselines": "frontier", "early_stops": "finetune"}  # the whole run's, not a round's


CONCEPTS = Path("concepts")  # with params.yaml `concepts`: each concept's run under concepts/<name>/


@dataclasses.dataclass(frozen=True)
class Layout:
    """Where one concept's run lives, as dvc.yaml declares it: the project root for the run's
    one concept (params `concept`), concepts/<name>/ for each of params `concepts`; and the
    names of the DVC stages that write there (finetune, or finetune-<name>)."""

    concept: str | None = None

    @property
    def root(self) -> Path:
        return Path() if self.concept is None else CONCEPTS / self.concept

    @property
    def models(self) -> Path:
        return self.root / "models"

    @property
    def rounds(self) -> Path:
        return self.root / "rounds"

    @property
    def eval(self) -> Path:
        return self.root / "eval"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def checkpoints(self) -> Path:
        """A killed training stage's state (not a DVC output; git-ignored)."""
        return self.root / "checkpoints"

    @property
    def metrics(self) -> Path:
        """The run's headline (evaluate writes it; DVC's metrics file)."""
        return self.root / "metrics.json"

    @property
    def rounds_table(self) -> Path:
        """Every round's scores and gains (evaluate writes, show and status read)."""
        return self.eval / "rounds.json"

    @property
    def baselines(self) -> Path:
        """Round 0 under the baseline knobs (frontier writes, evaluate reads)."""
        return self.eval / "baselines"

    @property
    def frontier_table(self) -> Path:
        """The baselines' gains and the hull (evaluate writes)."""
        return self.eval / "frontier.json"

    @property
    def early_stops(self) -> Path:
        """DreamBooth stopped early (finetune writes, frontier reads)."""
        return self.models / "early_stops"

    def model_dir(self, round_name: str) -> Path:
        """models/round_0 is the DreamBooth LoRA; models/round_r the round-r model (one LoRA)."""
        return self.models / round_name

    def round_dir(self, round_name: str) -> Path:
        return self.rounds / round_name

    def checkpoint_dir(self, round_name: str) -> Path:
        """Where the training stage that writes `round_name`'s model keeps its checkpoint:
        checkpoints/finetune for round_0, checkpoints/dpo/<round> for the others."""
        return self.checkpoints / "finetune" if round_name == "round_0" else self.checkpoints / "dpo" / round_name

    def stage(self, name: str, round_name: str | None = None) -> str:
        """The DVC stage: "pair@round_1", or "pair-dog@round_1" for concept dog."""
        stage = name if self.concept is None else f"{name}-{self.concept}"
        return stage if round_name is None else f"{stage}@{round_name}"

    def producer(self, artifact: str, round_name: str | None) -> str:
        """The DVC stage that writes `artifact` of a round, e.g. "pair@round_1" (round_0's
        model is finetune's), or with no round the run's own artifact's ("frontier")."""
        if round_name is None:
            return self.stage(RUN_PRODUCER_STAGE[artifact])
        if (artifact, round_name) == ("model", "round_0"):
            return self.stage("finetune")
        return self.stage(PRODUCER_STAGE[artifact], round_name)

    def checked_model(self, round_name: str) -> Path:
        """models/<round>, refused (StaleInputError) if what it was made from has changed since."""
        return self.checked_folder(self.model_dir(round_name), "model", round_name)

    def checked_folder(self, folder: Path, artifact: str, round_name: str | None) -> Path:
        """A round's folder artifact (its model, its preferences; with no round the run's own,
        the early stops), refused (StaleInputError) if what it was made from has changed since
        its producer wrote it; a missing one is left to the reader, whose error names the stage."""
        if folder.is_dir():
            check_made_from(folder, folder_record(folder), self.producer(artifact, round_name))
        return folder

    def checked_table(self, path: Path, columns: list[str], artifact: str, round_name: str | None):
        """A round's table (its samples, its scores; with no round the run's baselines) read
        with `columns` checked, refused (StaleInputError) if what it was made from has changed
        since its producer wrote it."""
        from dbdpo.artifacts import read_parquet
        from dbdpo.provenance import RECORD_KEY

        table = read_parquet(path, columns)
        check_made_from(path, table.attrs.get(RECORD_KEY), self.producer(artifact, round_name))
        return table
