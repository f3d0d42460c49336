"""Distributed data parallel on torch.distributed, started by ``torchrun`` (or ``xt run --nproc N``), or
by SLURM's ``srun`` (:mod:`xt_training.slurm` gives its tasks torchrun's variables).

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the Runner initialises the process group
(NCCL on CUDA, XCCL on XPU, gloo on the CPU: :func:`backend_for`), uses the rank's local device, wraps the model in
``DistributedDataParallel`` for training, and gives loaders without a distributed sampler one:

- training loaders a ``DistributedSampler`` (shuffled when the loader shuffled; ``set_epoch`` each
  epoch), which pads the last shard so that every rank takes the same number of steps;
- evaluation loaders a :class:`ShardSampler` that gives every example to exactly one rank, without
  padding duplicates, so synchronised metrics equal those of one process.

Metrics are synchronised across ranks when a pass ends; values reported during a pass are rank 0's.
Only rank 0 writes checkpoints, history, logs and progress bars.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import sys
import tempfile
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.constants import default_pg_timeout
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler

from . import slurm
from .devices import accelerator, device_count
from .errors import ConfigError, first_line

#: how long a process waits for the others to join, in seconds (default 300); torch's own wait is 30
#: minutes, which looks like a hang when a rank was started by hand and its peers never come
RENDEZVOUS_TIMEOUT_ENV = "XT_RENDEZVOUS_TIMEOUT"
SINGLE = "or unset RANK and WORLD_SIZE for a single process"


def active() -> bool:
    """Whether this process is one rank of an initialised process group."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if active() else 0


def world_size() -> int:
    return dist.get_world_size() if active() else 1


def is_main() -> bool:
    """Rank 0 (or a single process): the one that writes files and prints."""
    return rank() == 0


def env_int(name: str, default: int, low: int, high: int | None = None) -> int:
    """The whole number in environment variable ``name`` (``default`` when unset), within [low, high]."""
    raw = os.environ.get(name)
    if raw is None:
        return default
    try:
        value: int | None = int(raw)
    except ValueError:
        value = None
    if value is None or value < low or (high is not None and value > high):
        bounds = f">= {low}" if high is None else f"from {low} to {high}"
        raise ConfigError(
            f"environment variable {name}={raw!r} must be a whole number {bounds}; fix or unset it"
        )
    return value


def init_from_env() -> bool:
    """Initialise the process group when started by torchrun with more than one process.

    Bad ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT`` values and peers that do not join
    within ``XT_RENDEZVOUS_TIMEOUT`` seconds are one-line
    errors (:class:`ConfigError`) naming them.
    """
    if active():
        return True
    from_slurm = slurm.torchrun_variables()
    os.environ.update(from_slurm)  # a task that srun started: what torchrun would have set, from SLURM's
    world = env_int("WORLD_SIZE", 1, 1)
    if world == 1 or "RANK" not in os.environ:
        return False
    rank = env_int("RANK", 0, 0, world - 1)
    missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if not os.environ.get(v)]
    if missing:
        raise ConfigError(
            f"RANK={rank} and WORLD_SIZE={world} ask for {world} processes, which need "
            f"{' and '.join(missing)} (where rank 0 listens) too; start them with torchrun "
            f"(or `xt run --nproc N`), {SINGLE}"
        )
    env_int("MASTER_PORT", 0, 1, 2**16 - 1)
    device = local_device()
    wait = env_int(RENDEZVOUS_TIMEOUT_ENV, 300, 1)
    try:
        with _stderr_held():
            store, _, _ = next(dist.rendezvous("env://", timeout=timedelta(seconds=wait)))
    except dist.DistError as e:
        fix = (
            "start every task with srun (SLURM_PROCID and SLURM_NTASKS gave RANK and WORLD_SIZE), "
            "or name the job 'interactive' to start the processes another way"
            if from_slurm
            else f"start every rank (torchrun does), {SINGLE}"
        )
        raise ConfigError(
            f"RANK={rank} of WORLD_SIZE={world} could not join the others at MASTER_ADDR="
            f"{os.environ['MASTER_ADDR']} MASTER_PORT={os.environ['MASTER_PORT']} within "
            f"{RENDEZVOUS_TIMEOUT_ENV}={wait} s ({first_line(e)}); {fix}"
        ) from None
    store.set_timeout(default_pg_timeout)  # only joining is bounded so; a slow rank 0 later is no failure
    if device.type != "cpu":
        torch.get_device_module(device.type).set_device(device)
    dist.init_process_group(backend_for(device.type), store=store, rank=rank, world_size=world)
    # Tear the group down before the interpreter does, all ranks together: a rank whose peer has
    # already closed its connections, or whose gloo threads outlive it, aborts ("terminate called").
    sys.excepthook = _note_failure(sys.excepthook)
    atexit.register(shutdown)
    return True


@contextlib.contextmanager
def _stderr_held() -> Iterator[None]:
    """File descriptor 2 into a temporary file while the block runs, written out unless it raised: torch's
    C++ store logs each failed try to connect with a 40-line stack trace there, under the one-line error."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
        held.seek(0)
        os.write(2, held.read())


_failed = False


def _note_failure(hook: Any) -> Any:
    def excepthook(*args: Any) -> None:
        global _failed
        _failed = True  # no barrier at exit: the other ranks may never get there
        hook(*args)

    return excepthook


def shutdown() -> None:
    """Leave the process group together with the other ranks (also at exit, unless a rank failed)."""
    if not active():
        return
    # A rare gloo race can abort this process while the group is torn down or after it; what the
    # program printed must not die with it in the stdio buffers: flush before anything else.
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    if not _failed:
        try:
            dist.barrier()
        except RuntimeError:
            pass
    dist.destroy_process_group()


def backend_for(device_type: str) -> str:
    """The process group's backend for tensors on ``device_type``: torch's default, nccl for CUDA (and ROCm),
    xccl for XPU, gloo for the CPU; gloo also where torch.distributed has none of its own (MPS)."""
    return dist.Backend.default_device_backend_map.get(device_type, "gloo")


def local_device() -> torch.device:
    """This rank's device: the accelerator's ``LOCAL_RANK``-th device under torchrun (the only one, where the
    rank sees one: ``srun --gpus-per-task=1``), else the CPU -- also on an accelerator whose tensors only
    gloo would take, which takes CPU ones (MPS)."""
    local_rank, found = env_int("LOCAL_RANK", 0, 0), accelerator()
    if found is None or backend_for(found.type) == "gloo":
        return torch.device("cpu")
    count = device_count(found.type)
    if count > 1 and local_rank >= count:
        raise ConfigError(
            f"LOCAL_RANK={local_rank} has no {found.type} device of its own: torch finds {count} here; start "
            f"at most {count} processes on this machine"
        )
    return torch.device(found.type, local_rank if count > 1 else 0)


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type != "cpu" else None)


class ShardSampler(Sampler[int]):
    """Every ``world_size``-th index from ``rank``: each example once over all ranks, no padding."""

    def __init__(self, length: int, rank: int, world_size: int):
        self.length, self.rank, self.world_size = length, rank, world_size

    def __iter__(self) -> Iterator[int]:
        return iter(range(self.rank, self.length, self.world_size))

    def __len__(self) -> int:
        return len(range(self.rank, self.length, self.world_size))


def shard_loader(loader: Any, training: bool) -> Any:
    """``loader`` with a sampler that gives this rank its share (the loader itself if it has one)."""
    if not isinstance(loader, DataLoader) or isinstance(loader.sampler, (DistributedSampler, ShardSampler)):
        return loader
    if loader.batch_sampler is not None and type(loader.batch_sampler).__name__ != "BatchSampler":
        return loader  # a custom batch sampler decides for itself
    if not hasattr(loader.dataset, "__len__"):
        return loader  # an IterableDataset shards itself (torch.utils.data.get_worker_info / rank)
    if training:
        sampler: Sampler[int] = DistributedSampler(
            loader.dataset,
            shuffle=isinstance(loader.sampler, RandomSampler),
            seed=int(torch.initial_seed()) % 2**31,
        )
    else:
        sampler = ShardSampler(len(loader.dataset), rank(), world_size())
    return DataLoader(
        loader.dataset,
        batch_size=loader.batch_size,
        sampler=sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        drop_last=loader.drop_last,
        timeout=loader.timeout,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        generator=loader.generator,
    )


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """The sum of ``tensor`` over all ranks (``tensor`` itself in a single process)."""
    if active():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def any_rank(flag: bool, device: torch.device) -> bool:
    """True on every rank when ``flag`` is true on any rank (e.g. a stop request)."""
    if not active():
        return flag
    t = torch.tensor([1.0 if flag else 0.0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def gathered(value: Any) -> list[Any]:
    """``value`` of every rank, in rank order, on every rank (``[value]`` in a single process)."""
    if not active():
        return [value]
    values: list[Any] = [None] * world_size()
    dist.all_gather_object(values, value)
    return values


def from_rank_0(value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank (itself in a single process)."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
