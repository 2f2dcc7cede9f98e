"""What each artifact was made from, so a stage run by hand refuses a stale input.

A stage records, inside what it writes, the content digest of every upstream artifact it
read (`made_from`); the stage that reads it next compares that record with the upstream
artifacts as they are now (`check_made_from`). `dvc repro` reruns stages in order, so there
the check always passes; it matters when stages run by hand: after rerunning `score` but not
`pair`, `python -m stages.dpo --round round_1` stops and names what to rerun instead of
training on preferences that no longer match the scores.

The record lives in the artifact: a table's parquet metadata (`DataFrame.attrs`), a folder's
`made_from.json` (models, preferences).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from dbdpo.errors import StaleInputError

RECORD_KEY = "made_from"  # DataFrame.attrs key
RECORD_FILE = "made_from.json"  # inside a folder artifact


def digest(path: Path) -> str:
    """md5 of a file's bytes; of a folder: of its files' relative paths and digests, sorted."""
    path = Path(path)
    if path.is_file():
        md5 = hashlib.md5()
        with path.open("rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                md5.update(chunk)
        return md5.hexdigest()
    files = sorted(p for p in path.rglob("*") if p.is_file())
    listing = "\n".join(f"{p.relative_to(path).as_posix()} {digest(p)}" for p in files)
    return hashlib.md5(listing.encode()).hexdigest()


def made_from(*inputs: Path) -> dict[str, str]:
    """The record of an artifact made from `inputs`: path (as given) -> digest."""
    return {str(p): digest(p) for p in inputs}


def folder_record(folder: Path) -> dict[str, str] | None:
    """The record stored in a folder artifact, None if it has none."""
    record = Path(folder) / RECORD_FILE
    return json.loads(record.read_text()) if record.is_file() else None


def check_made_from(artifact: Path, record: dict[str, str] | None, writer: str) -> None:
    """Raise StaleInputError unless every input in `record` still has the recorded digest.

    writer: the stage that writes `artifact`, named in the message (e.g. "pair@round_1").
    """
    if record is None:
        raise StaleInputError(f"{artifact} does not record what it was made from (an older version "
                              f"wrote it); rerun {writer}")
    for path, recorded in record.items():
        if not Path(path).exists():
            raise StaleInputError(f"{artifact} was made from {path}, which no longer exists; rerun {writer}")
        if digest(Path(path)) != recorded:
            raise StaleInputError(f"{artifact} was made from another {path} (it changed since); "
                                  f"rerun {writer} before this stage")
