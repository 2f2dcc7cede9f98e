"""The CPU thread budget of stage processes (dbdpo.threads): shares of the cores, the registry
of running stages, and a real second process taking its share."""

import importlib
import os
import subprocess
import sys

import pytest
import torch

from dbdpo import threads
from tests.conftest import REPO


def test_a_share_is_what_the_fixed_stages_leave_divided_among_the_others():
    assert threads.share([None], 2) == 2
    assert threads.share([None, None], 2) == 1
    assert threads.share([None, None], 16) == 8
    assert threads.share([None, None, None], 16) == 5
    assert threads.share([None, 4], 16) == 12
    assert threads.share([None, 2], 2) == 1  # never 0: a stage always runs
    assert threads.share([None, None, None], 2) == 1


@pytest.fixture
def budget(tmp_path, monkeypatch):
    """A registry of its own, four cores whatever the machine has, a recount on every call, no
    OMP_NUM_THREADS; torch's thread count and the registration are restored after."""
    monkeypatch.setattr(threads, "cores", lambda: 4)
    monkeypatch.setattr(threads, "RECHECK_SECONDS", 0.0)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    before = torch.get_num_threads()
    yield tmp_path / "registry"
    threads.unregister_stage()
    torch.set_num_threads(before)


def other_stage(registry, fixed: str) -> subprocess.Popen:
    """A second process registered as a stage (`fixed`: its thread count, or '' for a share)
    that runs until its stdin closes."""
    code = ("import sys; from dbdpo import threads; "
            f"threads.register_stage({fixed or None}, __import__('pathlib').Path({str(registry)!r})); "
            "print('registered', flush=True); sys.stdin.read()")
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    proc = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stdout.readline().strip() == "registered"
    return proc


def test_a_stage_takes_its_share_as_other_stages_start_and_end(budget):
    assert threads.register_stage(None, budget) == 4 and torch.get_num_threads() == 4
    other = other_stage(budget, "")
    try:
        assert threads.running(budget).count(None) == 2
        assert threads.rebalance() == 2 and torch.get_num_threads() == 2
    finally:
        other.stdin.close()
        other.wait()
    assert threads.rebalance() == 4  # the ended stage's entry is dropped, its cores come back
    assert list(budget.glob("*.stage")) == [budget / f"{os.getpid()}.stage"]


def test_a_fixed_count_is_kept_and_left_out_of_the_others_shares(budget, monkeypatch):
    other = other_stage(budget, "3")
    try:
        assert threads.register_stage(None, budget) == 1  # 4 cores, 3 of them fixed by the other stage
        threads.unregister_stage()
        monkeypatch.setenv("OMP_NUM_THREADS", "2")  # a launcher's (torchrun) or the user's count is fixed too
        assert threads.register_stage(None, budget) == 2 and threads.rebalance() == 2
        threads.unregister_stage()
        assert threads.register_stage(3, budget) == 3 and threads.rebalance() == 3
    finally:
        other.stdin.close()
        other.wait()


def test_an_ended_or_reused_pid_is_not_a_running_stage(budget):
    budget.mkdir(parents=True)
    ended = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    (budget / f"{ended.stdout.strip()}.stage").write_text("auto 123\n")  # SIGKILLed: its file is left
    # a live pid whose start time is not the registered one: the pid was reused by another process
    (budget / f"{os.getppid()}.stage").write_text("auto 0\n")
    (budget / "1234.tmp").write_text("auto")  # an entry being written
    assert threads.running(budget) == []
    assert list(budget.iterdir()) == [budget / "1234.tmp"]


def test_outside_a_stage_rebalance_changes_nothing(monkeypatch):
    monkeypatch.setattr(threads, "_stage", None)
    before = torch.get_num_threads()
    assert threads.rebalance() == before and torch.get_num_threads() == before  # the library on its own


def test_a_stage_run_in_process_is_no_longer_counted_once_its_command_ends(tmp_path, monkeypatch):
    """A stage's command run in-process (a test, a notebook) registers while it runs, then frees
    its cores and gives the caller its threads back, also when it fails: left registered, the
    caller halved the next stage processes' threads and moved their results' last bits (the dvc
    tests' early stops then retrained round 0 to other bytes)."""
    import yaml

    from tests.conftest import invoke_stage

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["concept"]["dir"] = str(REPO / "data/concept")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    monkeypatch.chdir(tmp_path)
    before = torch.get_num_threads()
    entry = threads.REGISTRY / f"{os.getpid()}.stage"

    result = invoke_stage("score", "--round", "round_1")  # registers, then finds no images to score

    assert result.exit_code != 0 and "rounds/round_1/samples.parquet" in result.output, result.output
    assert threads._stage is None and not entry.exists()
    assert torch.get_num_threads() == before


def test_every_stage_that_shares_the_cores_releases_them():
    """share_cores registers a stage in setup(processes=True); only the releases_cores wrapper of
    its command ends that registration, so a model stage without it would bring the bug above
    back in silence."""
    sharing = sorted(p.stem for p in (REPO / "stages").glob("*.py") if "processes=True" in p.read_text())
    assert sharing == ["dpo", "evaluate", "finetune", "frontier", "generate", "score"]
    for name in sharing:
        command, wrappers = importlib.import_module(f"stages.{name}").main, []
        while hasattr(command, "__wrapped__"):
            wrappers.append(command.__code__.co_name)  # wraps() copies __name__, not the code
            command = command.__wrapped__
        assert "released" in wrappers, (name, wrappers)
