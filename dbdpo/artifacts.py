"""Atomic artifact writes: build next to the target, then rename into place.

A stage killed halfway leaves only a `.tmp-*` sibling, never a half-written file or
directory under the real name that a later stage (or DVC) would take as complete; the next
write of the same target removes such leftovers. Outputs get the modes the user's umask
gives (mkstemp/mkdtemp create 0600/0700, which another user's tool could not read).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd

from dbdpo.errors import MissingInput, StaleInputError


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _apply_umask(root: Path) -> None:
    """chmod `root` and everything under it as if created by open()/mkdir() under the umask."""
    mask = _umask()
    paths = [root, *root.rglob("*")] if root.is_dir() else [root]
    for path in paths:
        path.chmod((0o777 if path.is_dir() else 0o666) & ~mask)


def _remove_leftovers(target: Path) -> None:
    """Temp siblings of `target` from an earlier, killed write (SIGKILL skips every cleanup)."""
    for prefix in (".tmp-", ".old-"):
        for stale in target.parent.glob(f"{prefix}{target.name}-*"):
            if stale.is_dir():
                shutil.rmtree(stale, ignore_errors=True)
            else:
                stale.unlink(missing_ok=True)


def remove_outputs(*paths: Path) -> None:
    """Delete a stage's previous outputs once its inputs are read and checked, before it works.

    As `dvc repro` does before running a stage, and for the same reason: a stage that then
    fails (run by hand, say) must not leave last run's outputs for the next stage to take
    as this run's.
    """
    for path in map(Path, paths):
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)


@contextlib.contextmanager
def atomic_dir(target: Path) -> Iterator[Path]:
    """Yield an empty temp directory; on success it replaces `target` whole."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{target.name}-", dir=target.parent))
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    _apply_umask(tmp)
    if target.exists():
        # rename() cannot replace a non-empty directory: move the old one aside first.
        old = Path(tempfile.mkdtemp(prefix=f".old-{target.name}-", dir=target.parent))
        os.replace(target, old / target.name)
        os.replace(tmp, target)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, target)


@contextlib.contextmanager
def atomic_file(target: Path) -> Iterator[Path]:
    """Yield a temp path in the target's directory; on success it is renamed to `target`."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_leftovers(target)
    fd, name = tempfile.mkstemp(prefix=f".tmp-{target.name}-", dir=target.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _apply_umask(tmp)
        os.replace(tmp, target)
    except BaseException:  # a failed rename (the target a folder, a read-only one) leaves no temp file either
        tmp.unlink(missing_ok=True)
        raise


def write_parquet(frame: pd.DataFrame, target: Path) -> None:
    with atomic_file(target) as tmp:
        frame.to_parquet(tmp, index=False)


def write_csv(rows: list[dict], target: Path) -> None:
    with atomic_file(target) as tmp:
        pd.DataFrame(rows).to_csv(tmp, index=False)


def write_json(data, target: Path) -> None:
    """`data` as JSON, atomically; a NaN or infinity raises (it is not JSON, and no later stage
    may read one) before anything is written."""
    text = json.dumps(data, indent=2, sort_keys=False, allow_nan=False) + "\n"
    with atomic_file(target) as tmp:
        tmp.write_text(text)


def read_parquet(path: Path, columns: list[str]) -> pd.DataFrame:
    """Read a stage's table and check it has the columns this stage needs."""
    path = Path(path)
    if not path.is_file():
        raise MissingInput(f"{path}: missing; run the stage that writes it first")
    try:
        frame = pd.read_parquet(path)
    except (OSError, ValueError) as e:  # pyarrow's ArrowInvalid is a ValueError
        raise StaleInputError(f"{path}: unreadable ({type(e).__name__}: {str(e).splitlines()[0][:160]}); delete it "
                              "and rerun the stage that writes it") from None
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise StaleInputError(f"{path}: missing columns {missing}; another version of dbdpo wrote it: rerun "
                              "the stage that writes it")
    return frame
