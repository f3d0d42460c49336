"""Fully sharded data parallel (``strategy='fsdp'``): FSDP2's ``fully_shard`` and sharded checkpoints.

Under torchrun, the Runner shards the model with :func:`shard_model` instead of wrapping it in
``DistributedDataParallel``: each rank keeps 1/N of every parameter, of its gradient and of the optimizer's
state, and gathers a unit's full parameters only while the unit runs. The units are the modules the user
names (``shard=[nn.TransformerEncoderLayer]``), by default those found by :func:`default_units`.

Checkpoints of such a run are sharded (:func:`save_sharded`): every rank writes its shard through
``torch.distributed.checkpoint`` (DCP) into a new directory, and rank 0 then points ``last.dcp`` at it
with one atomic rename, so a save cut off midway leaves the previous checkpoint whole. Beside the shards,
``xt.RANK.pt`` holds each rank's own state: its random number generators and its position in the epoch.

Importing this module costs ~1 s (``torch.distributed.fsdp`` and ``.checkpoint``): the engine imports it
only when a run asks for ``strategy='fsdp'``.
"""

from __future__ import annotations

import difflib
import math
import os
import shutil
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
from torch import nn
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard
from torch.distributed.fsdp.sharded_grad_scaler import ShardedGradScaler

from . import distributed
from .errors import CheckpointError, ConfigError
from .files import atomic_write

#: the default units: modules with more than this many parameters of their own (not in a smaller unit).
#: 1 M parameters (4 MB in fp32) keeps each all-gather large enough to be efficient while only a few
#: units' full parameters are held at a time (torch's own size-based policy of FSDP1 uses 100 M).
MIN_UNIT_PARAMS = 1_000_000
#: the file of each rank's own state in a sharded checkpoint
RANK_FILE = "xt.{rank}.pt"


def check_shard(shard: Any) -> list[type | str] | None:
    """``shard`` as a list of module classes or class names (None: the default units), or a ConfigError."""
    if shard is None:
        return None
    items = [shard] if isinstance(shard, (str, type)) else shard
    if not isinstance(items, Sequence) or not items or not all(isinstance(c, (str, type)) for c in items):
        raise ConfigError(
            f"shard must be a list of module classes or class names (e.g. [nn.TransformerEncoderLayer] or "
            f"['TransformerEncoderLayer']), or None for the default units, not {shard!r}"
        )
    return list(items)


def shard_model(
    model: nn.Module,
    device: torch.device,
    shard: list[type | str] | None,
    dtype: torch.dtype | None,
    cpu_offload: bool,
    optimizer: torch.optim.Optimizer,
) -> nn.Module:
    """Apply ``fully_shard`` to each unit of ``model`` (bottom-up), then to the model; return it (changed in place).

    ``dtype`` (bf16/fp16 ``precision``) runs forward and backward in that dtype through FSDP's
    ``MixedPrecisionPolicy``, reducing gradients in fp32, with fp32 outputs for the loss; ``cpu_offload``
    keeps the sharded parameters, gradients and optimizer step on the CPU. ``optimizer``, built on the
    unsharded parameters, is pointed at the sharded ones that replace them.
    """
    if any(optimizer.state.values()):
        raise ConfigError(
            f"the {type(optimizer).__name__} has taken steps already, and strategy='fsdp' shards the parameters "
            "it holds; pass an optimizer that has not stepped yet"
        )
    _check_same_weights(model, device)
    units = default_units(model) if shard is None else named_units(model, shard)
    before = dict(model.named_parameters())
    mesh = init_device_mesh(device.type, (distributed.world_size(),))
    offload = CPUOffloadPolicy(pin_memory=device.type == "cuda") if cpu_offload else OffloadPolicy()
    for module in [*units, model]:
        # the root's outputs in fp32: the loss is computed in full precision
        output = torch.float32 if module is model else None
        mixed = MixedPrecisionPolicy(param_dtype=dtype, reduce_dtype=torch.float32, output_dtype=output)
        fully_shard(
            module, mesh=mesh, mp_policy=mixed if dtype else MixedPrecisionPolicy(), offload_policy=offload
        )
    after = {id(before[name]): p for name, p in model.named_parameters()}
    for group in optimizer.param_groups:
        group["params"] = [after.get(id(p), p) for p in group["params"]]
    return model


def default_units(model: nn.Module, min_params: int = MIN_UNIT_PARAMS) -> list[nn.Module]:
    """The modules, bottom-up, whose parameters not already in a unit below them number more than ``min_params``.

    Left out: containers without a ``forward`` of their own (``ModuleList``: FSDP gathers a unit's
    parameters when the unit is called), and modules holding a parameter that is also used elsewhere
    (tied embeddings), which stay with the root.
    """
    counts: dict[int, int] = {}
    for _, p in model.named_parameters(remove_duplicate=False):
        counts[id(p)] = counts.get(id(p), 0) + 1
    units, taken = [], set()
    for module in _bottom_up(model):
        params = list(module.parameters())
        own = [p for p in params if id(p) not in taken]
        if (
            module is not model
            and type(module).forward is not nn.Module.forward
            and sum(p.numel() for p in own) > min_params
            and all(counts[id(p)] == 1 for p in params)
        ):
            units.append(module)
            taken.update(id(p) for p in own)
    return units


def named_units(model: nn.Module, shard: list[type | str]) -> list[nn.Module]:
    """The modules below the root that are instances of the classes ``shard`` gives (or names), bottom-up."""
    classes = {type(m).__name__ for m in model.modules()}
    for c in shard:
        if (c if isinstance(c, str) else c.__name__) not in classes and not (
            isinstance(c, type) and any(isinstance(m, c) for m in model.modules())
        ):
            name = c if isinstance(c, str) else c.__name__
            close = difflib.get_close_matches(name, classes, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"shard names {name!r}, which is no module class of the model; {hint}its classes: "
                f"{', '.join(sorted(classes))}"
            )
    return [
        m
        for m in _bottom_up(model)
        if m is not model
        and any(type(m).__name__ == c if isinstance(c, str) else isinstance(m, c) for c in shard)
    ]


def _bottom_up(module: nn.Module, seen: set[int] | None = None) -> Iterator[nn.Module]:
    """Every module once, each after the modules inside it."""
    seen = set() if seen is None else seen
    for child in module.children():
        if id(child) not in seen:
            yield from _bottom_up(child, seen)
    if id(module) not in seen:
        seen.add(id(module))
        yield module


def _check_same_weights(model: nn.Module, device: torch.device) -> None:
    """Refuse ranks that built different weights: each keeps its own shard of them, so the sharded model
    would be a mix (DDP copies rank 0's instead; FSDP never holds a whole model to copy)."""
    with torch.no_grad():
        total = sum(float(p.double().sum()) for p in model.parameters())
    t = torch.tensor([total, -total], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    # (not ==: CPUs of different nodes may add in other orders)
    if not math.isclose(float(t[0]), -float(t[1]), rel_tol=1e-9, abs_tol=1e-9):
        raise ConfigError(
            "the ranks built different initial weights, which strategy='fsdp' would shard into a mix of them; "
            "seed before building the model (torch.manual_seed(0)), the same on every rank"
        )


def grad_scaler(device: torch.device) -> ShardedGradScaler:
    """fp16's loss scaler for sharded gradients: every rank skips a step where any rank's shard overflowed."""
    return ShardedGradScaler(device.type)


def evaluation_forwards(batches: int | None, limit: int | None, device: torch.device) -> int:
    """The forward passes every rank makes in an evaluation pass: those of the rank with the most batches.

    FSDP gathers the parameters in every forward, with every rank, and evaluation shards (every example
    once) differ by a batch: a rank with fewer batches runs its last batch again, its outputs dropped.
    """
    if batches is None:
        raise ConfigError(
            "strategy='fsdp' needs evaluation loaders with a length (every rank must run as many forward "
            "passes as the others): use a map-style dataset, or an IterableDataset that defines __len__"
        )
    t = torch.tensor([batches if limit is None else min(limit, batches)], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def save_sharded(
    path: Path, model: nn.Module, optimizer: torch.optim.Optimizer, state: dict[str, Any]
) -> None:
    """Write a sharded checkpoint at ``path`` (a link to a directory beside it), on every rank together.

    The model's and optimizer's shards go through DCP, ``state`` (this rank's own) into ``xt.RANK.pt``,
    all into a new directory; once every rank has written, rank 0 points ``path`` at it (an atomic
    rename of a link) and removes the older ones. A save cut off before leaves ``path`` as it was.
    """
    version = path.with_name(distributed.from_rank_0(f".{path.name}.{uuid.uuid4().hex[:8]}"))
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.save({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=version)
    atomic_write(version / RANK_FILE.format(rank=distributed.rank()), lambda f: torch.save(state, f))
    dist.barrier()
    if not distributed.is_main():
        return
    # (one left by a kill is a .tmp file: the next run removes it, see rundir.hold)
    link = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    os.symlink(version.name, link)
    if path.is_dir() and not path.is_symlink():  # a copy of the run that followed the link
        shutil.rmtree(path)
    os.replace(link, path)
    for old in path.parent.glob(f".{path.name}.*"):
        if old.is_dir() and old.name != version.name:
            shutil.rmtree(old, ignore_errors=True)


def is_sharded(path: Path) -> bool:
    """Whether ``path`` is a sharded checkpoint (a DCP directory)."""
    return (path / ".metadata").is_file()


def read_rank_state(path: Path) -> tuple[dict[str, Any], int]:
    """This rank's own state in the sharded checkpoint ``path``, and the number of ranks that wrote it.

    Written by another number of ranks, the state is rank 0's: its position in the epoch and its random
    number generators are of a shard of the data that this run does not have.
    """
    if not is_sharded(path):
        raise CheckpointError(
            f"'{path}' is not a sharded checkpoint (no .metadata); strategy='fsdp' resumes from "
            "RUN_DIR/checkpoints/last.dcp"
        )
    world = len(list(path.glob(RANK_FILE.format(rank="*"))))
    mine = distributed.rank() if world == distributed.world_size() else 0
    return torch.load(path / RANK_FILE.format(rank=mine), weights_only=True), world


def load_sharded(path: Path, model: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load the model's and optimizer's shards of ``path`` (resharded if another number of ranks wrote it)."""
    model_state, optimizer_state = get_state_dict(model, optimizer)
    dcp.load({"model": model_state, "optimizer": optimizer_state}, checkpoint_id=path)
    set_state_dict(model, optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


def full_model_state(model: nn.Module) -> dict[str, torch.Tensor]:
    """The whole model's state_dict on rank 0's CPU ({} on the other ranks), gathered unit by unit."""
    return get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
