"""The code a benchmark measured, recorded in its results JSON (docs/results.md prints it): a
figure is only comparable with another measured on the same code."""

from __future__ import annotations

import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOT_CODE = (":(exclude)docs", ":(exclude)*.md", ":(exclude)bench/results")  # they change no figure a bench measures


def code_commit() -> str:
    """The repository's commit, abbreviated (`4d56420`), with `-dirty` when a tracked file
    other than the docs and results (docs/, *.md, bench/results/) differs from it; "unknown"
    outside a git checkout."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", str(ROOT), *args], capture_output=True, text=True, check=True,
                              timeout=60).stdout.strip()

    try:
        commit = git("rev-parse", "--short=7", "HEAD")
        changed = git("status", "--porcelain", "--untracked-files=no", "--", ".", *NOT_CODE)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{commit}-dirty" if changed else commit
