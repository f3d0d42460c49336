"""Checkpoints: written atomically, loaded safely (``weights_only=True``), with errors that say what to do.

A checkpoint is a dict of tensors, numbers, strings, lists and dicts only::

    {'model': state_dict, 'optimizer': state_dict | None, 'scheduler': state_dict | None,
     'epoch': int, 'global_step': int, 'history': [epoch rows], 'monitor': str, 'best': float | None,
     'xt_training_version': str}
"""

from __future__ import annotations

import io
import json
import os
import pickle
import re
import shutil
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from ._version import __version__
from .batch import tensor_bytes
from .errors import CheckpointError, ConfigError


def check_writable(path: Path) -> None:
    """Make the directory of the output file ``path`` and prove it takes files: fail before the work."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        raise ConfigError(
            f"cannot write '{path}' ({e.strerror or e}); choose another output path (-o FILE)"
        ) from None


def atomic_write(path: str | os.PathLike[str], write: Any) -> None:
    """Write a file so that readers see the old file or the complete new one, never a partial one.

    ``write(f)`` writes to a temporary file in the same directory, which is flushed, fsync'ed and
    then renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    try:  # make the rename itself durable
        dir_fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def atomic_link(src: str | os.PathLike[str], dst: str | os.PathLike[str]) -> None:
    """Give ``src``'s content the second name ``dst``, atomically: a hard link (a copy where links fail).

    Safe for checkpoints because :func:`atomic_write` always creates a new file: writing ``src``
    again later leaves ``dst`` as it was.
    """
    src, dst = Path(src), Path(dst)
    tmp = dst.with_name(f".{dst.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(src, tmp)
    except OSError:
        shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def write_json(path: str | os.PathLike[str], obj: Any, background: BackgroundWriter | None = None) -> None:
    """Write ``obj`` as JSON with :func:`atomic_write`; with ``background``, on its thread (``obj`` is
    encoded here, so it may change afterwards)."""
    data = json.dumps(obj, indent=2).encode()
    if background is None:
        atomic_write(path, lambda f: f.write(data))
    else:
        background.submit(atomic_write, path, lambda f: f.write(data))


class BackgroundWriter:
    """Writes files on one background thread, in the order they are submitted.

    F.train serializes each checkpoint in memory (a consistent snapshot of the state) and trains on while
    this thread writes, fsyncs and renames it: on a slow or network disk that is seconds per checkpoint,
    and ~1 ms even on a fast one. A crash or kill meanwhile leaves the previous complete file (the writes
    are atomic). A failed write is raised by every later :meth:`submit` and :meth:`wait`; the writes queued
    after it are skipped (best.pt links last.pt: it must not link an older one).
    """

    def __init__(self) -> None:
        from concurrent.futures import ThreadPoolExecutor

        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="xt-writer")
        self._pending: list[Any] = []
        self._error: BaseException | None = None

    def submit(self, fn: Any, *args: Any) -> None:
        """Run ``fn(*args)`` on the thread after everything submitted before."""
        self._raise_error()
        self._pending = [f for f in self._pending if not f.done()]
        self._pending.append(self._pool.submit(self._run, fn, args))

    def _run(self, fn: Any, args: tuple[Any, ...]) -> None:
        if self._error is None:
            try:
                fn(*args)
            except BaseException as e:  # raised in the training thread: see _raise_error
                self._error = e

    def wait(self) -> None:
        """Return once everything submitted is written; raise the first failure."""
        for future in self._pending:
            future.result()
        self._pending = []
        self._raise_error()

    def _raise_error(self) -> None:
        if self._error is not None:  # for good: nothing is written after a failed write
            raise self._error

    def close(self) -> None:
        """Finish the writes and stop the thread (failures were raised by wait() or are already moot)."""
        for future in self._pending:
            future.result()
        self._pool.shutdown()


# Checkpoints larger than this are written directly by the training thread, without the in-memory
# copy that a background write needs.
_BACKGROUND_MAX_BYTES = 1 << 30


def unwrap_model(model: torch.nn.Module) -> torch.nn.Module:
    """The plain model inside DataParallel/DistributedDataParallel/torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


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
        "xt_training_version": __version__,
        **extra,
    }
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
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"checkpoint '{path}' holds objects other than tensors and plain data and was refused "
            f"(weights_only=True; {_first_sentence(e)}); only load it with torch.load(weights_only=False) "
            "if you trust its source"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, KeyError, IndexError, ValueError) as e:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated or corrupt ({_first_sentence(e)}); "
            "use an earlier checkpoint (e.g. last.pt instead of best.pt) or retrain"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        # a bare state_dict (torch.save(model.state_dict())) is accepted as the model's weights
        if isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values()):
            return {"model": state}
        raise CheckpointError(f"'{path}' is not an xt-training checkpoint or a state_dict")
    return state


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
    text = (
        re.sub(r"\x1b\[[0-9;]*m", "", str(e)).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    )
    return re.split(r"(?<=[.!?])\s", text, maxsplit=1)[0].rstrip(".")


def _strip_prefixes(weights: dict[str, Any]) -> dict[str, Any]:
    for prefix in ("module.", "_orig_mod."):
        if weights and all(k.startswith(prefix) for k in weights):
            weights = {k[len(prefix) :]: v for k, v in weights.items()}
    return weights


def _few(keys: list[str], n: int = 5) -> str:
    return ", ".join(keys[:n]) + (f" and {len(keys) - n} more" if len(keys) > n else "")
