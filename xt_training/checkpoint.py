"""Checkpoints: written atomically, loaded safely (``weights_only=True``), with errors that say what to do.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only::

    {'model': state_dict, 'optimizer': state_dict | None, 'scheduler': state_dict | None,
     'epoch': int, 'global_step': int, 'history': [epoch rows], 'monitor': str, 'best': float | None,
     'xt_training_version': str}
"""

from __future__ import annotations

import io
import os
import pickle
import re
import sys
import zipfile
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .batch import tensor_bytes
from .errors import CheckpointError, UnreadableCheckpointError, first_line
from .files import BackgroundWriter, atomic_write

# Checkpoints larger than this are written directly by the training thread, without the in-memory
# copy that a background write needs.
_BACKGROUND_MAX_BYTES = 1 << 30


def nonfinite(state: Any) -> list[str]:
    """The names (``model.1.weight``, ``optimizer.state.0.exp_avg``) of the floating-point tensors in the nested
    dicts and lists of ``state`` that hold a NaN or an inf; one host read for all of them."""
    named = [
        (n, t) for n, t in _tensors(state, "") if t.numel() and (t.is_floating_point() or t.is_complex())
    ]
    if not named:
        return []
    device = named[0][1].device
    # a tensor's largest magnitude is NaN or inf exactly where one of its elements is (max keeps NaN), and
    # reducing to it makes no copy of the tensor
    peaks = [torch.linalg.vector_norm(t.detach(), float("inf")).float().to(device) for _, t in named]
    finite = torch.isfinite(torch.stack(peaks)).tolist()
    return [n for (n, _), ok in zip(named, finite) if not ok]


def _tensors(obj: Any, prefix: str) -> Any:
    if isinstance(obj, torch.Tensor):
        # a DTensor (FSDP's shards): this rank's part; every rank checks its own
        yield prefix, obj.to_local() if hasattr(obj, "to_local") else obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            yield from _tensors(v, f"{prefix}.{k}" if prefix else str(k))
    elif isinstance(obj, (list, tuple)):
        for i, v in enumerate(obj):
            yield from _tensors(v, f"{prefix}.{i}" if prefix else str(i))


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DataParallel/DistributedDataParallel/torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_class(model: torch.nn.Module) -> type:
    """The class of the plain model inside the wrappers: ``fully_shard`` (FSDP2) makes a module an instance of
    a class ``FSDP<Name>`` that it derives from ``FSDPModule`` and the module's own class."""
    model = unwrap_model(model)
    fsdp = sys.modules.get("torch.distributed.fsdp")  # imported where a model was sharded
    if fsdp is not None and isinstance(model, fsdp.FSDPModule):
        mro = type(model).__mro__
        return mro[mro.index(fsdp.FSDPModule) + 1]
    return type(model)


def save_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    background: BackgroundWriter | None = None,
    **extra: Any,
) -> None:
    """Save model/optimizer/scheduler state and ``extra`` fields (epoch, history, ...) atomically.

    With ``background``, the state is serialized here and written on its thread (up to 1 GiB of
    tensors; larger checkpoints are written here, after the writes queued before). At most one
    checkpoint waits in memory: this first waits for the writes submitted before.
    """
    state = {
        "model": unwrap_model(model).state_dict(),
        "optimizer": optimizer.state_dict() if optimizer is not None else None,
        "scheduler": scheduler.state_dict() if scheduler is not None else None,
        **extra,
    }
    write_checkpoint(path, state, background)


def write_checkpoint(
    path: str | os.PathLike[str], state: dict[str, Any], background: BackgroundWriter | None = None
) -> None:
    """Write the checkpoint ``state`` (with the version of xt-training) atomically, as :func:`save_checkpoint`."""
    state = {**state, "xt_training_version": __version__}
    if background is not None:
        background.wait()
        if tensor_bytes(state) <= _BACKGROUND_MAX_BYTES:
            buffer = io.BytesIO()
            torch.save(state, buffer)  # the snapshot: training may change the tensors once this returns
            background.submit(atomic_write, path, lambda f: f.write(buffer.getbuffer()))
            return
    atomic_write(path, lambda f: torch.save(state, f))


#: how files of torch.save begin: a zip archive (PyTorch >= 1.6), or the legacy format's pickled magic number
_TORCH_SIGNATURES = (b"PK\x03\x04", b"\x80\x02\x8a\x0a")


def read_checkpoint(path: str | os.PathLike[str], map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint file with ``weights_only=True``: arbitrary pickled objects are refused."""
    path = Path(path)
    if (path / ".metadata").is_file():
        raise CheckpointError(
            f"'{path}' is a sharded checkpoint (strategy='fsdp'), which loads into a sharded model under "
            f"torchrun; the same weights in one file are in {path.with_suffix('.pt')}"
        )
    if path.is_dir():
        found = sorted(path.glob("*.pt")) or sorted(path.glob("checkpoints/*.pt"))
        which = f"one of its: {', '.join(map(str, found))}" if found else "e.g. RUN_DIR/checkpoints/best.pt"
        raise CheckpointError(
            f"'{path}' is a directory, not a checkpoint file; pass a checkpoint file, {which}"
        )
    if not path.is_file():
        where = path.parent
        others = sorted(p.name for p in where.glob("*.pt")) if where.is_dir() else []
        hint = f"; checkpoints there: {', '.join(others)}" if others else ""
        raise CheckpointError(f"checkpoint '{path}' does not exist{hint}")
    with path.open("rb") as f:
        head = f.read(16)
    # torch.load's own errors for other files (a config file, an HTML page, a Git LFS pointer) talk about
    # unsafe objects or internal errors: say what the file is instead
    if not head.startswith(_TORCH_SIGNATURES):
        what = "it is empty" if not head else f"it starts with {head!r}"
        raise CheckpointError(
            f"'{path}' is not a PyTorch checkpoint ({what}, not the zip archive that torch.save writes); "
            "pass a checkpoint file such as RUN_DIR/checkpoints/best.pt"
        )
    program = _program(path)
    if program is not None:  # torch.load's own error would call it corrupt
        saver, loader = program
        raise CheckpointError(
            f"'{path}' is {saver}, a whole model, not a checkpoint of weights; load it with {loader}('{path}'), "
            "or pass a checkpoint such as RUN_DIR/checkpoints/best.pt"
        )
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' holds objects other than tensors and plain data and was refused "
            f"(weights_only=True; {_first_sentence(e)}); only load it with torch.load(weights_only=False) "
            "if you trust its source"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError) as e:
        others = sorted(p.name for p in path.parent.glob("*.pt") if p.name != path.name)
        raise UnreadableCheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({_first_sentence(e)})",
            f"use another checkpoint ({', '.join(others)} there) or retrain" if others else "retrain",
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        # a bare state_dict (torch.save(model.state_dict())) is accepted as the model's weights
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise CheckpointError(f"'{path}' is not an xt-training checkpoint or a state_dict")
    return state


def _program(path: Path) -> tuple[str, str] | None:
    """``(what saved it, what loads it)`` for a TorchScript or torch.export archive, else None."""
    try:
        with zipfile.ZipFile(path) as archive:  # reads the archive's directory only
            names = {name.partition("/")[2] for name in archive.namelist()}
    except (zipfile.BadZipFile, OSError):  # torch.load says what is wrong with it
        return None
    if "constants.pkl" in names:
        return "a TorchScript model (torch.jit.save)", "torch.jit.load"
    if "archive_format" in names:
        return "an exported program (torch.export.save)", "torch.export.load"
    return None


def load_checkpoint(
    path: str | os.PathLike[str],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer | None = None,
    scheduler: Any = None,
    *,
    map_location: Any = "cpu",
    strict: bool = True,
) -> dict[str, Any]:
    """Load a checkpoint into ``model`` (and ``optimizer``/``scheduler`` when given); return the checkpoint.

    Loads with ``weights_only=True``. Keys of models saved inside DataParallel/DDP (``module.``) or
    ``torch.compile`` (``_orig_mod.``) wrappers are mapped to the plain model.
    """
    state = read_checkpoint(path, map_location)
    weights = _strip_prefixes(state["model"])
    target = unwrap_model(model)
    try:
        result = target.load_state_dict(weights, strict=False)
    except RuntimeError as e:  # parameters of another shape
        sizes = [ln.strip() for ln in str(e).splitlines() if "size mismatch" in ln]
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {type(target).__name__}: {_few(sizes, 3)}; "
            "build the model with the options it was trained with"
        ) from None
    if strict and (result.missing_keys or result.unexpected_keys):
        parts = []
        if result.missing_keys:
            parts.append(f"missing keys {_few(result.missing_keys)}")
        if result.unexpected_keys:
            parts.append(f"unexpected keys {_few(result.unexpected_keys)}")
        raise CheckpointError(
            f"checkpoint '{path}' does not fit {type(target).__name__}: {'; '.join(parts)}; "
            "build the model with the options it was trained with"
        )
    if optimizer is not None and state.get("optimizer") is not None:
        optimizer.load_state_dict(state["optimizer"])
    if scheduler is not None and state.get("scheduler") is not None:
        scheduler.load_state_dict(state["scheduler"])
    return state


def _first_sentence(e: BaseException) -> str:
    """torch's reason, for a one-line message: its first sentence, without terminal colour codes."""
    return re.split(r"(?<=[.!?])\s", first_line(e), maxsplit=1)[0].rstrip(".")


def _strip_prefixes(weights: dict[str, Any]) -> dict[str, Any]:
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
