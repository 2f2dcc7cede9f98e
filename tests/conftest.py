"""Shared fixtures. Every model here is a real (tiny) model; nothing is mocked."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N --dist loadfile` (the README's command): one torch thread per worker, set
    # before torch loads, so N workers share the cores instead of N x cores threads spinning
    # against each other; the stage subprocesses of the dvc tests inherit it. The papers'
    # claims run on the two threads they were measured on (`measured_threads`).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# The papers' claims assert thresholds measured on 2 threads (torch's default on our 2-core
# CI): their module runs on those 2 threads while the other worker runs the rest on one.
# (xdist's loadgroup, which could pin more modules to one worker, ignores its marks with this
# pytest: pytest-dev/pytest-xdist#1386.)
MEASURED_THREADS = 2


@pytest.fixture(scope="module")
def measured_threads():
    """The module runs on MEASURED_THREADS torch threads (as its thresholds were measured)."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(MEASURED_THREADS)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def in_repo(monkeypatch):
    """Run with the repository as working directory (prompt sets live in data/)."""
    monkeypatch.chdir(REPO)
    return REPO


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """The tiny SD2 (v-prediction) and SDXL pipelines saved as diffusers folders, once per run:
    they load as `backbone: sd` / `sdxl` through the code that loads the real checkpoints."""
    from dbdpo.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {arch: save_tiny_pipeline(arch, root / arch) for arch in ("sd2", "sdxl")}
