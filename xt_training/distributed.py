"""Distributed data parallel on torch.distributed, started by ``torchrun`` (or ``xt run --nproc N``).

Under torchrun (``RANK``/``WORLD_SIZE``/``LOCAL_RANK`` set) the Runner initialises the process group
(NCCL on CUDA, gloo on CPU), uses the rank's local device, wraps the model in
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
import os
import sys
from collections.abc import Iterator
from typing import Any

import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, DistributedSampler, RandomSampler, Sampler


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


def init_from_env() -> bool:
    """Initialise the process group when started by torchrun with more than one process."""
    if active():
        return True
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or "RANK" not in os.environ:
        return False
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    if backend == "nccl":
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    dist.init_process_group(backend)
    # Tear the group down before the interpreter does, all ranks together: a rank whose peer has
    # already closed its connections, or whose gloo threads outlive it, aborts ("terminate called").
    sys.excepthook = _note_failure(sys.excepthook)
    atexit.register(shutdown)
    return True


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


def local_device() -> torch.device:
    """This rank's device: its local GPU under torchrun, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def wrap_model(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    from torch.nn.parallel import DistributedDataParallel

    if isinstance(model, DistributedDataParallel):
        return model
    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


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


def from_rank_0(value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank (itself in a single process)."""
    if not active():
        return value
    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]
