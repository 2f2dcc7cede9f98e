"""The code a benchmark measured, recorded in its results JSON (docs/results.md prints it): a
figure is only comparable with another measured on the same code."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def code_commit() -> str:
    """The repository's commit, abbreviated (`4d56420`), with `-dirty` when a tracked file
    differs from it; "unknown" outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    try:
        commit, changed = git("rev-parse", "--short=7", "HEAD"), git("status", "--porcelain", "--untracked-files=no")
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if changed else commit
