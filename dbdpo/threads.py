"""The CPU threads of a stage process: the machine's cores shared by the dbdpo stages running on it.

Two torch processes that each take every core run several times slower than one after the
other, because OpenMP threads spin while they wait for a core the other process holds (what
`dvc queue start -j 2`, or two projects on one machine, gives). So a model stage registers in
a per-user folder of running stages, and a stage whose threads are not fixed takes its share of
the cores: the cores the fixed stages leave, divided among the others. `rebalance`, called once
per step of every long loop, rechecks that share as stages start and end.

A CPU kernel's float results depend on its thread count, so a share moves a result's last bits
with what runs beside it. `compute.threads` (or OMP_NUM_THREADS) fixes the count: then a stage
writes the same bytes whatever runs beside it.
"""

from __future__ import annotations

import atexit
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from dbdpo.artifacts import atomic_file

log = logging.getLogger(__name__)

REGISTRY = Path(tempfile.gettempdir()) / f"dbdpo-stages-{os.getuid()}"
RECHECK_SECONDS = 1.0  # a recount reads one small file per running stage
AUTO = "auto"  # a registry entry whose threads are the share, not fixed


@dataclass
class _Stage:
    threads: int | None  # fixed, or None: the share of the cores
    registry: Path
    checked: float = float("-inf")


_stage: _Stage | None = None


def cores() -> int:
    """The cores this process may run on (its CPU affinity, which a container or taskset narrows)."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def share(entries: list[int | None], available: int) -> int:
    """The threads of one stage whose count is not fixed, given every running stage's entry (its
    fixed thread count, or None), itself included: what the fixed ones leave of `available`
    cores, divided among the others; at least 1."""
    fixed = sum(t for t in entries if t is not None)
    flexible = max(1, sum(t is None for t in entries))
    return max(1, (available - fixed) // flexible)


def _start_time(pid: int) -> str:
    """The process's start time in clock ticks since boot (Linux /proc), so that a reused pid is
    not taken for the stage that had it; '' where /proc is absent."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return ""


def running(registry: Path) -> list[int | None]:
    """The entries of the stages registered in `registry` whose process still runs; the files of
    ended ones (a stage killed by SIGKILL leaves its file) are removed."""
    entries = []
    for file in registry.glob("*.stage"):
        try:
            threads, started = file.read_text().split()
            pid = int(file.stem)
        except (OSError, ValueError):
            continue  # a file being written or removed by its stage: counted on the next recount
        if _start_time(pid) != started or not _alive(pid):
            file.unlink(missing_ok=True)
            continue
        entries.append(None if threads == AUTO else int(threads))
    return entries


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process: alive
        pass
    return True


def register_stage(threads: int | None, registry: Path = REGISTRY) -> int:
    """Register this process as a running stage and set torch's threads: `threads`, else
    OMP_NUM_THREADS when set (a launcher's or the user's fixed count), else this stage's share.
    Returns the thread count set. The entry is removed when the process exits."""
    global _stage
    if _stage is None:
        atexit.register(unregister_stage)
    env = os.environ.get("OMP_NUM_THREADS", "")
    fixed = threads if threads is not None else (int(env) if env.isdigit() and int(env) > 0 else None)
    with atomic_file(registry / f"{os.getpid()}.stage") as tmp:  # a recount never reads half an entry
        tmp.write_text(f"{AUTO if fixed is None else fixed} {_start_time(os.getpid())}\n")
    _stage = _Stage(fixed, registry)
    if fixed is not None:
        import torch

        torch.set_num_threads(fixed)
        return fixed
    return rebalance()


def unregister_stage() -> None:
    """Remove this process's entry (a stage that ends frees its cores for the others)."""
    global _stage
    if _stage is not None:
        (_stage.registry / f"{os.getpid()}.stage").unlink(missing_ok=True)
        _stage = None


def rebalance() -> int:
    """Set torch's threads to this stage's share of the cores, at most one recount a second;
    a no-op for a fixed count or outside a registered stage (the library used on its own).
    Call it from the loop's thread: OpenMP's thread count is per calling thread."""
    import torch  # here, not at import: a stage without a model (pair) never loads torch

    if _stage is None or _stage.threads is not None:
        return torch.get_num_threads()
    now = time.monotonic()
    if now - _stage.checked >= RECHECK_SECONDS:
        _stage.checked = now
        threads = share(running(_stage.registry), cores())
        if threads != torch.get_num_threads():
            log.info("%d CPU threads: the cores shared with the dbdpo stages running on this machine", threads)
            torch.set_num_threads(threads)
    return torch.get_num_threads()
