"""Files that appear whole or not at all: atomic writes and links, JSON files, output checks, a writer thread.

Torch-free: loggers, checkpoints, run directories and exports all write through here.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from .errors import ConfigError


def check_writable(path: Path) -> None:
    """Make the directory of the output file ``path`` and prove it takes files: fail before the work."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as e:
        # mkdir says "File exists" where a folder on the path is a file
        why = (
            "a folder on its path is a file"
            if isinstance(e, (FileExistsError, NotADirectoryError))
            else e.strerror
        )
        raise ConfigError(f"cannot write '{path}' ({why or e}); choose another output path") from None


def atomic_write(path: str | os.PathLike[str], write: Any) -> None:
    """Write a file so that readers see the old file or the complete new one, never a partial one.

    ``write(f)`` writes to a temporary file in the same directory, which is flushed, fsync'ed and
    then renamed over ``path`` (``os.replace`` is atomic on POSIX and Windows).
    """
    path = Path(path)
    fd, tmp = temporary_beside(path)
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


def temporary_beside(path: Path) -> tuple[int, Path]:
    """A new empty file ``.NAME.XXXXXXXX.tmp`` beside ``path`` to write before renaming it over ``path``; its fd.

    The name is unique, so writers of the same ``path`` at the same time (two processes predicting into one
    file) never share a temporary; the mode is the one a plain ``open`` would give under the umask.
    """
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.fchmod(fd, 0o666 & ~_umask())  # mkstemp's 0600 would hide runs from the team that shares them
    return fd, Path(tmp)


def _umask() -> int:
    """The process's umask (read by setting it, so set back at once)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


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


def jsonable(value: Any) -> bool:
    """Whether ``value`` is plain JSON: None, bools, numbers, strings, and lists and str-keyed dicts of them."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(jsonable, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and jsonable(v) for k, v in value.items())
    return False


def standard_json(obj: Any) -> Any:
    """``obj`` with NaN and infinities as None, for standard JSON: Python's ``NaN``/``Infinity`` tokens are
    refused by strict readers (jq, JavaScript's ``JSON.parse``), while every reader takes ``null`` (pandas as NaN)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: standard_json(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [standard_json(v) for v in obj]
    return obj


def json_text(obj: Any) -> str:
    """``obj`` as indented standard JSON (:func:`standard_json`): what ``write_json`` writes and ``--json`` prints."""
    return json.dumps(standard_json(obj), indent=2, allow_nan=False)


def write_json(path: str | os.PathLike[str], obj: Any, background: BackgroundWriter | None = None) -> None:
    """Write ``obj`` as standard JSON (NaN and infinities as ``null``, :func:`standard_json`) with
    :func:`atomic_write`; with ``background``, on its thread (``obj`` is encoded here, so it may change afterwards)."""
    data = json_text(obj).encode()
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


def prepare_dir(path: str | os.PathLike[str], what: str = "save_dir") -> Path:
    """Create the directory ``path`` and prove that it takes files, before any work is done."""
    path = Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(
            f"{what} '{path}' is not writable ({e.strerror or e}); choose another directory"
        ) from None
    return path
