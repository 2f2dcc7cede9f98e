"""Shared fixtures. Every model here is a real (tiny) model; nothing is mocked."""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("DVC_NO_ANALYTICS", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # `pytest -n N --dist loadfile` (the README's command): one torch thread per worker, set
    # before torch loads, so N workers share the cores instead of N x cores threads spinning
    # against each other (2 workers x 2 threads ran the suite at half speed); the stage
    # subprocesses of the dvc tests inherit it. Results do not depend on the thread count here
    # (docs/proving_ground.md: DreamBooth, sampling and scoring give the same IS on 1 and 2).
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(var, "1")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

REPO = Path(__file__).resolve().parent.parent


def preset_params(name: str) -> str:
    """params.yaml's text with presets/<name>.yaml applied: what `dbdpo init --preset` writes."""
    from dbdpo.presets import apply_preset

    return apply_preset((REPO / "params.yaml").read_text(), (REPO / "presets" / f"{name}.yaml").read_text(), name)


def pipeline(arch: str):
    """The world backbone (`world`) or a tiny random stand-in of a real architecture (`sd2`,
    `sdxl`), built in memory."""
    from dbdpo.tiny import build_tiny_pipeline
    from dbdpo.world.backbone import build_world_pipeline

    return build_world_pipeline() if arch == "world" else build_tiny_pipeline(arch)


def invoke_stage(stage: str, *args: str):
    """`python -m stages.<stage> ARGS` in-process (Typer's runner): a stage subprocess costs
    ~10 s of imports."""
    import importlib

    from typer.testing import CliRunner

    return CliRunner().invoke(importlib.import_module(f"stages.{stage}").app, list(args))


@pytest.fixture
def in_repo(monkeypatch):
    """Run with the repository as working directory (prompt sets live in data/)."""
    monkeypatch.chdir(REPO)
    return REPO


@pytest.fixture(scope="session")
def installed(tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """The package built as a wheel and installed alone into a folder: (that folder, an env
    whose `python` imports dbdpo and stages from it and whose PATH finds its `dbdpo` first, not
    this checkout's). Once per worker: tests/test_init.py and the dvc tests share it."""
    import shutil
    import subprocess
    import sys

    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"  # a copy: setuptools builds in the source tree (build/, *.egg-info)
    listed = subprocess.run(["git", "ls-files", "-co", "--exclude-standard"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.split()
    for name in listed:
        if (REPO / name).is_file() and not name.startswith(("models/", "rounds/", "eval/", "logs/")):
            (source / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / name, source / name)  # links become the files they point to
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(root / "dist"), str(source)], check=True, capture_output=True)
    (wheel,) = (root / "dist").glob("dbdpo-*.whl")
    site = root / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site), str(wheel)],
                   check=True, capture_output=True)
    env = {**os.environ, "PYTHONPATH": str(site), "PATH": f"{site / 'bin'}{os.pathsep}{os.environ['PATH']}",
           "HF_HUB_OFFLINE": "1", "DVC_NO_ANALYTICS": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t"}
    return site, env


@pytest.fixture(scope="session")
def tiny_dirs(tmp_path_factory) -> dict[str, Path]:
    """The tiny SD2 (v-prediction) and SDXL pipelines saved as diffusers folders, once per run:
    they load as `backbone: sd` / `sdxl` through the code that loads the real checkpoints."""
    from dbdpo.tiny import save_tiny_pipeline

    root = tmp_path_factory.mktemp("tiny-pipelines")
    return {arch: save_tiny_pipeline(arch, root / arch) for arch in ("sd2", "sdxl")}


# The order files reach the workers, longest first (pytest --durations on 2 workers): `--dist
# loadfile` keeps two files queued on each worker, the second waiting for the first, so the
# claims file goes first with a short file behind it, while the other worker takes the DVC
# end-to-end file and the learning-signal one; the rest go to whichever worker frees first.
# (Alphabetical order queued a long file behind test_claims.py; xdist's own order, by test count,
# started the claims file, with its few tests, last: pyproject's addopts turn that off.)
SCHEDULE = ("test_claims.py", "test_e2e_dvc.py", "test_config.py", "test_learning_signal.py", "test_distributed.py",
            "test_bench.py", "test_init.py", "test_compile.py", "test_e2e_backbones.py", "test_training.py")


def pytest_collection_modifyitems(items):
    def rank(item) -> int:
        name = item.path.name
        return SCHEDULE.index(name) if name in SCHEDULE else len(SCHEDULE)

    items.sort(key=rank)  # stable: within a file, tests keep their order
