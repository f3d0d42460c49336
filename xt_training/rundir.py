"""The run directory: what every entry point writes and every tool reads, in one place.

A run directory, whoever made it (``F.train``, ``xt run``, ``xt train CONFIG.py``, an ``xt tune`` trial)::

    run.json            what the run is: the model's class and constructor arguments, the input's shape,
                        the preprocessing, the monitored value and its direction, each value's direction;
                        its status ('running', at the end 'completed', 'stopped', 'failed', 'interrupted')
    history.json        one row per completed epoch; with val_every_n_steps also one per validation inside
                        an epoch, before the epoch's row: {'epoch': 2, 'step': 140, 'val/loss': ...}
    checkpoints/        last.pt (every epoch, and mid-epoch), best.pt (the best monitored value), and the kept
                        ones: epoch=E-step=S-MONITOR=VALUE.pt (save_top_k), epoch=E-step=S.pt (save_every_n_*);
                        strategy='fsdp' also last.dcp (every rank's shard of the state: what resume reads)
    config.json         runs built by names (``xt run``): the resolved configuration, rebuilt by the tools
    config.py           runs of ``xt train CONFIG.py``: a copy of the config file
    notes.txt           the loop's notices; the loggers' files beside them
    .xt.lock            while a run trains in the directory: locked by its process (see :func:`hold`)

Paths inside the directory are stored relative to it and paths outside it (data files) absolute, so a
run works from any working directory and after the directory is moved. Torch-free.
"""

from __future__ import annotations

import contextlib
import difflib
import json
import os
import re
import shutil
import threading
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError
from .files import prepare_dir

try:
    import fcntl
except ImportError:  # Windows: no advisory file locks; runs into one directory are not kept apart
    fcntl = None  # type: ignore[assignment]

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
CONFIG_FILE = "config.json"
CONFIG_PY = "config.py"
NOTES_FILE = "notes.txt"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # the whole state: every epoch, and mid-epoch every checkpoint_every_n_steps
BEST = "best.pt"  # a second name of the last.pt of the epoch whose monitored value was the best
#: strategy='fsdp': a link to the directory of the last sharded checkpoint (last.pt holds its weights whole)
LAST_SHARDED = "last.dcp"
CRASH = "crash.pt"  # the weights at an exception, for inspection (never resumed from)
CHECKPOINT_NAMES = ("best", "last")
#: the checkpoints kept besides last.pt and best.pt: ``epoch=3-step=120-val_loss=0.1234.pt`` (the top k by the
#: monitored value) and ``epoch=3-step=120.pt`` (every N epochs or steps)
KEPT_CHECKPOINT = re.compile(r"epoch=\d+-step=(?P<step>\d+)(?P<value>-.+=.+)?\.pt")
#: how to accept what only a trusted run directory may ask for (see :func:`untrusted`)
TRUST_FIX = "if you trust where the run came from, pass --trust (Python: trust=True)"
LOCK_FILE = ".xt.lock"


#: what a run writes into its directory (its loggers' files included), and so what ``overwrite`` deletes:
#: never anything else that the directory holds
RUN_FILES = (
    RUN_FILE, HISTORY_FILE, CONFIG_FILE, CONFIG_PY, CHECKPOINTS, NOTES_FILE, "test_results.json", "results.pt",
    "metrics.csv", "metrics.jsonl", "tensorboard", "curves.png", "lr_find.png",
    "tokenizer_config.json", "vocab.json", "model.*", "model-*.*", "mlflow.json",
)  # fmt: skip


def remove_run(path: str | os.PathLike[str]) -> list[str]:
    """Delete the files of the run in ``path`` (:data:`RUN_FILES`), leaving everything else; return their names."""
    removed = []
    for pattern in RUN_FILES:
        for item in sorted(Path(path).glob(pattern)):
            if item.is_dir() and not item.is_symlink():
                shutil.rmtree(item)
            else:
                item.unlink()
            removed.append(item.name)
    return removed


def untrusted(what: str) -> ConfigError:
    """The one-line refusal of ``what`` a run directory's file asks for: importing a module it names,
    running its ``config.py``, writing outside it. A run directory is data (it may come from anyone):
    untrusted, its names resolve only through the registry and its files are only read."""
    return ConfigError(f"{what}; a run directory is data and does not decide what runs: {TRUST_FIX}")


#: the files a training run writes atomically (besides its checkpoints): their temporaries are the run's own
ATOMIC_RUN_FILES = (RUN_FILE, HISTORY_FILE, CONFIG_FILE, "metrics.csv", "metrics.jsonl")

# the run directories this process holds: real path -> [lock file descriptor (None: unlocked), thread, depth]
_held: dict[str, list[Any]] = {}


@contextlib.contextmanager
def hold(path: str | os.PathLike[str], lock: bool = True) -> Iterator[bool]:
    """Hold the run directory ``path`` while a run trains in it; yield whether this is the outermost hold.

    The process that writes the run (``lock``: under DDP rank 0 only) makes the directory, and its
    outermost hold takes an exclusive lock on ``.xt.lock`` there, which the system lets go when the
    process ends, however it ends: a second writer -- another process, or another thread of this one --
    is refused in one line naming the holder's pid. Holds nest: ``xt run`` holds the directory around
    ``F.train``, which holds it again. Holding the directory, the run removes the temporary files that
    writes of an earlier run killed midway left there (no other run can be writing them), and at the end
    a directory that the hold made and nothing was written to goes again.
    """
    key = os.path.realpath(path)
    held = _held.get(key)
    if held is not None:
        if held[1] != threading.get_ident():
            raise ConfigError(
                f"'{path}' is in use by a run in another thread of this process; choose another directory"
            )
        held[2] += 1
        try:
            yield False
        finally:
            held[2] -= 1
        return
    path = Path(path)
    made = [p for p in (path, *path.parents) if not p.exists()] if lock else []
    fd = _lock(path) if lock else None
    if lock:
        _remove_temporaries(path)
    _held[key] = [fd, threading.get_ident(), 1]
    try:
        yield True
    finally:
        del _held[key]
        if fd is not None:
            (path / LOCK_FILE).unlink(missing_ok=True)  # before letting go: see _lock
            # DataLoader workers forked meanwhile share the lock: let go of it for them too
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)
        for folder in made:  # what the hold made, if nothing else was put there
            with contextlib.suppress(OSError):
                folder.rmdir()


def holding(path: str | os.PathLike[str]) -> bool:
    """Whether this process holds the run directory ``path`` (:func:`hold`)."""
    return os.path.realpath(path) in _held


def _lock(path: Path) -> int | None:
    """Lock ``path/.xt.lock`` (made if missing) for this process, or refuse in one line naming the holder."""
    prepare_dir(path)
    if fcntl is None:
        return None
    file = path / LOCK_FILE
    while True:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            for _ in range(20):  # the holder writes its pid just after it locks
                holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
                if holder:
                    break
                time.sleep(0.05)
            os.close(fd)
            raise ConfigError(
                f"'{path}' is in use by a run of {f'process {holder}' if holder else 'another process'}; "
                "wait for it to end, or choose another directory"
            ) from None
        with contextlib.suppress(FileNotFoundError):
            if os.fstat(fd).st_ino == os.stat(file).st_ino:
                break
        os.close(fd)  # a holder removed the file as it ended, after this opened it: lock the file there now
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _remove_temporaries(path: Path) -> None:
    """Remove what writes killed midway left: ``.NAME.XXXX.tmp`` of the checkpoints and the run's files."""
    names = [f"{CHECKPOINTS}/.*.tmp", *(f".{name}.*.tmp" for name in ATOMIC_RUN_FILES)]
    for tmp in [t for name in names for t in path.glob(name)]:
        tmp.unlink(missing_ok=True)


def checkpoints_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINTS


def kept_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """The checkpoints the run in ``run_dir`` keeps besides last.pt and best.pt (:data:`KEPT_CHECKPOINT`),
    in the order of their steps."""
    found = [
        (m, p)
        for p in checkpoints_dir(run_dir).glob("epoch=*.pt")
        if (m := KEPT_CHECKPOINT.fullmatch(p.name))
    ]
    return [p for m, p in sorted(found, key=lambda mp: (int(mp[0]["step"]), mp[1].name))]


def holds_run(path: str | os.PathLike[str]) -> bool:
    """Whether a run has trained in ``path``: it has a completed epoch or a checkpoint to resume from.

    Its files would mix with a new run's. A run that failed before either (a typo, a loss that does not
    fit) leaves nothing worth keeping: the same command may run there again.
    """
    path = Path(path)
    checkpoints = path / CHECKPOINTS
    return (path / HISTORY_FILE).exists() or any((checkpoints / n).exists() for n in (LAST, LAST_SHARDED))


def is_run_dir(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a run directory of any entry point."""
    path = Path(path)
    markers = (RUN_FILE, CONFIG_FILE, CONFIG_PY, HISTORY_FILE, CHECKPOINTS)
    return path.is_dir() and any((path / name).exists() for name in markers)


def check_run_dir(path: str | os.PathLike[str], fix: str) -> None:
    """A one-line error, ending in ``fix``, unless ``path`` is a run directory (:func:`is_run_dir`)."""
    if not is_run_dir(path):
        raise ConfigError(
            f"'{path}' is not a run directory (no {RUN_FILE}, {CONFIG_FILE} or {CHECKPOINTS}/); {fix}"
        )


def checkpoint_file(source: str | os.PathLike[str], checkpoint: str | os.PathLike[str] = "best") -> Path:
    """The one rule for "the checkpoint" of every tool: ``source`` a run directory or a checkpoint file.

    For a run directory, ``checkpoint`` is ``'best'`` (``checkpoints/best.pt``, the default), ``'last'``
    or a checkpoint file; a run without ``best.pt`` (its monitored value never improved) is an error that
    lists the checkpoints it has. A file as ``source`` is the checkpoint itself.
    """
    source = Path(source)
    if not source.is_dir():
        if source.is_file():
            return source
        raise CheckpointError(f"'{source}' does not exist; pass a run directory or a checkpoint file")
    if str(checkpoint) not in CHECKPOINT_NAMES:
        path = Path(checkpoint)
        if not path.exists() and path.parent == Path("."):
            # a bare name is a misspelt best/last more often than a missing file of the current directory
            close = difflib.get_close_matches(str(checkpoint), CHECKPOINT_NAMES, n=1)
            choices = "best, last, or a checkpoint file"
            hint = f"did you mean '{close[0]}'? ({choices})" if close else f"pass {choices}"
            raise CheckpointError(f"checkpoint '{checkpoint}' does not exist; {hint}")
        return path
    folder = checkpoints_dir(source)
    path = folder / (BEST if checkpoint == "best" else LAST)
    if path.is_file():
        return path
    others = sorted(p.stem for p in folder.glob("*.pt")) if folder.is_dir() else []
    if not others:
        files = sorted(map(str, source.glob("*.pt")))
        if files:  # a run's checkpoints/ itself
            raise CheckpointError(
                f"'{source}' is a folder of checkpoints, not a run directory; pass one of them: {', '.join(files)}"
            )
        raise CheckpointError(f"run directory '{source}' has no checkpoints; train it first")
    raise CheckpointError(
        f"run directory '{source}' has no {checkpoint}.pt (the monitored value never improved?); "
        f"pick one of its checkpoints: {', '.join(others)}"
    )


def read_json(path: str | os.PathLike[str], what: str) -> Any:
    """A JSON file of a run; a truncated or foreign one is a one-line error naming it."""
    try:
        return json.loads(Path(path).read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"'{path}' is not valid JSON ({e}); it may be truncated: {what}") from None


def read_run(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The run's ``run.json`` (``{}`` for a run written before it existed)."""
    file = Path(run_dir) / RUN_FILE
    return read_json(file, "rerun, or fix the file") if file.is_file() else {}


def default_save_dir(*parts: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<parts>-<YYYYmmdd-HHMMSS>``, with a counter appended if that directory already exists."""
    stem = "-".join([*parts, time.strftime("%Y%m%d-%H%M%S")])
    path, n = Path(root) / stem, 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stem}-{n}"
    return path


def is_path_option(key: str) -> bool:
    """Whether a factory option of this name holds a path (``path``, ``root``, ``predict_path``, ``*_dir``...)."""
    return key in ("path", "root", "dir", "file") or key.endswith(("_path", "_root", "_dir", "_file"))


def absolute_paths(options: dict[str, Any]) -> dict[str, Any]:
    """``options`` with each path option that names an existing file or directory made absolute.

    A run records its data's paths so: ``xt test RUN`` from another directory, or of a moved run
    directory, reads the same files.
    """
    return {
        k: str(Path(v).resolve())
        if is_path_option(k) and isinstance(v, str) and v and Path(v).exists()
        else v
        for k, v in options.items()
    }


def direction(name: str, metrics: Mapping[str, Any]) -> str | None:
    """Which way a history value ``'PASS/KEY'`` (``'val/loss'``, ``'val/f1'``, ``'val/f1/0'``) improves.

    ``'min'`` for a pass's loss; else what metric KEY of ``metrics`` declares as ``higher_is_better``
    (torchmetrics' attribute): True gives ``'max'``, False ``'min'``. ``None`` where it declares nothing:
    a name is no evidence (a Brier score is an error, a PSNR is not), so the caller asks for a mode.
    """
    key = name.split("/")[1] if "/" in name else name
    if key == "loss":
        return "min"
    higher = getattr(metrics.get(key), "higher_is_better", None)
    return None if not isinstance(higher, bool) else "max" if higher else "min"
