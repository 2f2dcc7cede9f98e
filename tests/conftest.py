"""Shared fixtures. Every model here is a real (tiny) model; nothing is mocked."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def in_repo(monkeypatch):
    """Run with the repository as working directory (prompt sets live in data/)."""
    monkeypatch.chdir(REPO)
    return REPO
