"""The run directory: what every entry point writes and every tool reads, in one place.

A run directory, whoever made it (``F.train``, ``xt run``, ``xt train CONFIG.py``, an ``xt tune`` trial)::

    run.json            what the run is: the model's class and constructor arguments, the input's shape,
                        the preprocessing, the monitored value and its direction, each value's direction
    history.json        one row per completed epoch
    checkpoints/        last.pt (every epoch, and mid-epoch), best.pt (the best monitored value)
    config.json         runs built by names (``xt run``): the resolved configuration, rebuilt by the tools
    config.py           runs of ``xt train CONFIG.py``: a copy of the config file
    notes.txt           the loop's notices; the loggers' files beside them

Paths inside the directory are stored relative to it and paths outside it (data files) absolute, so a
run works from any working directory and after the directory is moved. Torch-free.
"""

from __future__ import annotations

import difflib
import json
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from .errors import CheckpointError, ConfigError

RUN_FILE = "run.json"
HISTORY_FILE = "history.json"
CONFIG_FILE = "config.json"
CONFIG_PY = "config.py"
NOTES_FILE = "notes.txt"
CHECKPOINTS = "checkpoints"
LAST = "last.pt"  # the whole state: every epoch, and mid-epoch every checkpoint_every_n_steps
BEST = "best.pt"  # a second name of the last.pt of the epoch whose monitored value was the best
CRASH = "crash.pt"  # the weights at an exception, for inspection (never resumed from)
CHECKPOINT_NAMES = ("best", "last")


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


def checkpoints_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / CHECKPOINTS


def holds_run(path: str | os.PathLike[str]) -> bool:
    """Whether a run has trained in ``path``: it has a completed epoch or a checkpoint to resume from.

    Its files would mix with a new run's. A run that failed before either (a typo, a loss that does not
    fit) leaves nothing worth keeping: the same command may run there again.
    """
    path = Path(path)
    return (path / HISTORY_FILE).exists() or (path / CHECKPOINTS / LAST).exists()


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
