"""Shared fixtures. Every model here is a real (tiny) model; nothing is mocked."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N --dist loadgroup` (the README's command): one torch thread per worker, set
    # before torch loads, so N workers share the cores instead of N x cores threads spinning
    # against each other; the stage subprocesses of the dvc tests inherit it. The measured
    # claims run on two threads in one group (`measured_threads`).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


# The papers' claims and the learning signal assert thresholds measured on 2 threads (torch's
# default on our 2-core CI). They share one xdist group, so one worker runs them one after the
# other, each on those 2 threads, while the others run the rest of the suite on one thread.
MEASURED_GROUP = pytest.mark.xdist_group("measured")
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
