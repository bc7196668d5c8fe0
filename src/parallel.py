"""Data-parallel training (`train.processes`): N processes under torch.distributed, one share of every batch each.

`python -m src.train <variant>` with `train.processes` = N > 1 starts N copies of itself on this machine through
torchrun's launcher (`launch`); `torchrun ... -m src.train <variant>` starts them on one or several machines
(docs/data_parallel.md). Each copy joins the process group (`join`: gloo on the CPU, NCCL on GPUs), trains its
slice of each batch (src/loader.py) in a `DistributedDataParallel` model (`wrap`), and only rank 0 writes files.
"""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import torch
import torch.distributed as dist
from torch import nn

from src.errors import INTERRUPTED, ConfigError, Reported, UserError


def launched() -> bool:
    """Whether this process was started by torchrun (or its launcher), which describes the group in the
    environment."""
    return "WORLD_SIZE" in os.environ and "RANK" in os.environ


def launch(processes: int, args: list[str]) -> None:
    """Run `python <args>` as `processes` processes on this machine, as `torchrun --standalone` would; return when
    all have finished. Rank 0 prints to this terminal, the others into log files. A failed process stops the
    others: rank 0 has then printed why, or the error names the failed rank's log folder."""
    from torch.distributed.elastic.multiprocessing import DefaultLogsSpecs, SignalException, Std
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError
    from torch.distributed.launcher.api import LaunchConfig, elastic_launch

    for name in list(logging.root.manager.loggerDict):  # the launcher's own reports: ours below
        if name.startswith("torch.distributed.elastic"):
            logging.getLogger(name).setLevel(logging.CRITICAL)
    logs = Path(tempfile.mkdtemp(prefix="ddp-logs-"))
    config = LaunchConfig(min_nodes=1, max_nodes=1, nproc_per_node=processes, run_id=str(uuid.uuid4()),
                          rdzv_backend="c10d", rdzv_endpoint="localhost:0", max_restarts=0, monitor_interval=0.2,
                          logs_specs=DefaultLogsSpecs(str(logs), {r: Std.ALL for r in range(1, processes)}))
    try:
        elastic_launch(config, sys.executable)(*args)
    except SignalException:  # Ctrl-C or a kill: the launcher has stopped the processes, and rank 0 said so
        shutil.rmtree(logs, ignore_errors=True)
        raise Reported(INTERRUPTED) from None
    except ChildFailedError as e:
        if 0 in e.failures:
            shutil.rmtree(logs, ignore_errors=True)
            raise Reported from None
        rank = min(e.failures)
        raise UserError(f"training process {rank} of {processes} failed (exit code {e.failures[rank].exitcode})",
                        hint=f"its output is in {logs}") from None
    shutil.rmtree(logs, ignore_errors=True)


def run(processes: int, device: torch.device, module: str, args: list[str],
        body: Callable[[torch.device, int], None]) -> None:
    """A stage's work as `processes` data-parallel processes: with one, `body(device, 0)` here; with more, and
    outside torchrun, `python -m <module> <args>` as that many processes (`launch`), each of which comes back
    here under torchrun and runs `body(its device, its rank)` in the process group (`join`)."""
    if processes > 1 and not launched():
        launch(processes, ["-m", module, *args])
        return
    device, rank = join(processes, device)
    try:
        body(device, rank)
    finally:
        leave()


def join(processes: int, device: torch.device) -> tuple[torch.device, int]:
    """In a process that torchrun started: check that the group has `processes` processes, join it and return this
    process's device (its own GPU on CUDA) and rank. In any other process: `device` and rank 0."""
    if not launched():
        return device, 0
    world = int(os.environ["WORLD_SIZE"])
    if world != processes:
        raise ConfigError(f"torchrun started {world} processes but train.processes = {processes}; set "
                          f"-S train.processes={world} (the results depend on it)")
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", device_id=device
                                if device.type == "cuda" else None)
    return device, dist.get_rank()


def share() -> tuple[int, int]:
    """(rank, processes) of this process: (0, 1) outside a process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def wrap(model: nn.Module, device: torch.device, sync_bn: bool) -> nn.Module:
    """`model` as this process trains it: itself in one process, else in `DistributedDataParallel` (which averages
    the gradients and, by default, hands every process rank 0's BatchNorm buffers), its BatchNorms made
    `SyncBatchNorm`s with `sync_bn`. The weights stay `model`'s."""
    check_sync_bn(sync_bn, device)
    if share()[1] == 1:
        return model
    if sync_bn:
        nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return nn.parallel.DistributedDataParallel(model, device_ids=[device] if device.type == "cuda" else None)


def check_sync_bn(sync_bn: bool, device: torch.device) -> None:
    """SyncBatchNorm runs on CUDA devices only: refuse it elsewhere before any process starts."""
    if sync_bn and device.type != "cuda":
        raise ConfigError(f"sync_bn needs CUDA devices (PyTorch's SyncBatchNorm has no CPU implementation; this "
                          f"run's device is {device}); set it false or train on GPUs")


def total(value: torch.Tensor) -> torch.Tensor:
    """The sum of `value` over the processes (`value` itself in one process)."""
    if share()[1] > 1:
        value = value.clone()
        dist.all_reduce(value)
    return value


def leave() -> None:
    """Leave the process group, if this process joined one."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()
