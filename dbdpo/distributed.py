"""Data parallelism across processes and machines, with accelerate (issue: scale out).

A stage runs in one process, or in N started by `accelerate launch` (`launch_command`):
- sampling and scoring split their list of *batches* across processes (`map_batches`):
  each batch is the one a single process would run, so every image and score is computed
  by the same kernels on the same inputs as in one process; the results are gathered and
  the main process writes the artifacts;
- training draws the global batch (batch_size x processes) from the one seeded generator
  every process holds, and each process trains on its slice (`local_slice`); DDP averages
  the gradients, so N processes x batch b take the step one process takes on batch N*b.
"""

from __future__ import annotations

import functools
import os
import sys
from collections.abc import Callable, Sequence
from typing import TypeVar

from tqdm.auto import tqdm

from dbdpo.config import ComputeConfig
from dbdpo.threads import rebalance

T = TypeVar("T")
R = TypeVar("R")

# Set by torchrun (which `accelerate launch` runs) in every process it starts.
LAUNCHED_ENV = "WORLD_SIZE"


def is_distributed(compute: ComputeConfig) -> bool:
    """Whether the settings ask for more than this one process."""
    return compute.num_processes > 1 or compute.num_machines > 1 or compute.config_file is not None


def launched() -> bool:
    """Whether this process was started by a launcher (and so must not launch again)."""
    return LAUNCHED_ENV in os.environ


def launch_command(compute: ComputeConfig, module: str, args: Sequence[str]) -> list[str]:
    """The argv that runs `python -m module *args` on this machine's share of the processes.

    `--multi_gpu` is accelerate's switch to torchrun, also on CPU-only machines (each process
    then takes the gloo backend, `process_state`). An argv list, never a shell string: no
    param value reaches a shell."""
    command = [sys.executable, "-m", "accelerate.commands.launch"]
    if compute.config_file is not None:
        command += ["--config_file", compute.config_file]
    command += ["--multi_gpu", "--num_processes", str(compute.num_processes),
                "--num_machines", str(compute.num_machines), "--machine_rank", str(compute.machine_rank),
                "--main_process_port", str(compute.main_process_port), "--mixed_precision", "no",
                "--dynamo_backend", "no"]
    if compute.main_process_ip is not None:
        command += ["--main_process_ip", compute.main_process_ip]
    return [*command, "-m", module, *args]


@functools.cache
def process_state():
    """accelerate's view of the processes (one, without a launcher). On a machine without a
    GPU it must be told to use the CPU, or it would see N unrelated single processes."""
    import torch  # here, not at import: a stage without a model (pair) never loads torch
    from accelerate import PartialState

    return PartialState(cpu=not torch.cuda.is_available())


def is_main_process() -> bool:
    """The process that writes artifacts, logs and checkpoints (the only one without a launcher)."""
    return not launched() or process_state().is_main_process


def num_processes() -> int:
    return process_state().num_processes if launched() else 1


def map_batches(fn: Callable[[list[T]], list[R]], items: list[T], batch_size: int, desc: str) -> list[R]:
    """fn over `items` in batches of `batch_size`, the batches split across processes in
    contiguous runs; every process gets every result, in item order. fn returns one result
    per item of its batch."""
    batches = [items[start : start + batch_size] for start in range(0, len(items), batch_size)]
    if num_processes() == 1:
        return [r for batch in tqdm(batches, desc=desc, unit="batch") for r in _checked(fn, batch)]
    from accelerate.utils import gather_object

    state = process_state()
    with state.split_between_processes(batches) as mine:
        mine_results = [_checked(fn, batch) for batch in tqdm(mine, desc=desc, unit="batch",
                                                               disable=not state.is_local_main_process)]
    gathered = gather_object(mine_results)  # every process's list of batch results, in rank order
    return [r for batch in gathered for r in batch]


def _checked(fn: Callable[[list[T]], list[R]], batch: list[T]) -> list[R]:
    rebalance()  # the cores shared with the stages that started or ended since
    results = list(fn(batch))
    if len(results) != len(batch):
        raise ValueError(f"a batch function returned {len(results)} results for {len(batch)} items")
    return results


def local_slice(global_size: int) -> slice:
    """This process's rows of a global batch of `global_size` (a multiple of the process count)."""
    count = num_processes()
    rank = process_state().process_index if count > 1 else 0
    local = global_size // count
    return slice(rank * local, (rank + 1) * local)


def mean_over_processes(values: dict[str, float]) -> dict[str, float]:
    """Each value averaged over the processes (the global batch's logged loss and stats).
    One process: the values as they are."""
    if num_processes() == 1:
        return values
    import torch

    state = process_state()
    total = torch.tensor(list(values.values()), dtype=torch.float64, device=state.device)
    torch.distributed.all_reduce(total)  # a sum, in place
    return {k: v / state.num_processes for k, v in zip(values, total.tolist(), strict=True)}


def same_on_every_process(value: int, what: str) -> None:
    """Raise unless every process holds `value` (e.g. the step a resumed loop starts at: a
    checkpoint one machine cannot read would let the processes train different steps)."""
    if num_processes() == 1:
        return
    from accelerate.utils import gather_object

    values = gather_object([value])
    if len(set(values)) != 1:
        raise RuntimeError(f"{what} differs between processes ({values}): every machine must see the same "
                           "checkpoints/ folder (a shared filesystem), or remove it to start over")
