"""The JSONL logger: one JSON object per line in ``save_dir/metrics.jsonl``, flushed at every write.

Two kinds of rows, told apart by ``kind``::

    {"kind": "step", "epoch": 1, "step": 50, "time": 1717171717.123, "train/loss": 0.69, "train/acc": 0.51, "lr": 0.1}
    {"kind": "epoch", "epoch": 1, "step": 125, "time": ..., "lr": 0.1, "train/loss": 0.52, "val/acc": 0.8}

A ``step`` row holds the running values of the training pass at a logging step (``step`` counts
optimizer steps) and the learning rate of every param group then (``lr``, ``lr/1``, ...), or the values of
a validation inside the epoch (``val_every_n_steps``: ``val/loss``, ...); an ``epoch`` row
is the epoch's row of the history (``lr``: param group 0's at the epoch's start; exact values of every loader,
non-scalar metrics such as confusion matrices included as nested lists), plus ``kind``, ``step`` and
``time`` (Unix seconds). As in ``history.json``, NaN and infinities are written as ``null``: standard JSON,
which every reader takes (pandas reads it as NaN).

Every row is flushed to the operating system when it is written, so a run that is killed keeps every
row it logged. A new run starts a new file; a resumed run (``F.train(..., resume=True)``) keeps the
rows of the run it continues, except those it is about to log again. Load it with
``pandas.read_json(path, lines=True)``.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from ..files import atomic_write, standard_json

__all__ = ["JSONLLogger", "FILENAME", "superseded"]

FILENAME = "metrics.jsonl"


class JSONLLogger:
    """Writes ``save_dir/metrics.jsonl``; see the module docstring.

    Args:
        save_dir: the run directory (the CLI passes it).
    """

    def __init__(self, *, save_dir: str | os.PathLike[str] | None = None):
        if save_dir is None:
            raise ConfigError(
                "JSONLLogger needs save_dir, the run directory: JSONLLogger(save_dir='runs/exp1')"
            )
        self.path = Path(save_dir) / FILENAME
        self._file: IO[str] | None = None
        self._resumed = False
        self._epoch = 0

    def start_run(self, config: dict[str, Any]) -> None:
        self._resumed = bool(config.get("resumed"))

    def start_pass(self, name: str, epoch: int, total: int | None) -> None:
        self._epoch = epoch

    def log_metrics(self, values: dict[str, Any], step: int) -> None:
        self._write(
            {"kind": "step", "epoch": self._epoch, "step": step, "time": round(time.time(), 3), **values}
        )

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        self._write({"kind": "epoch", "epoch": epoch, "step": step, "time": round(time.time(), 3), **values})

    def _write(self, row: dict[str, Any]) -> None:
        if self._file is None:
            self._open(row)
        self._file.write(json.dumps(standard_json(row), allow_nan=False) + "\n")
        self._file.flush()

    def _open(self, first: dict[str, Any]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self._resumed and self.path.exists():
            kept = [line for line in self.path.read_text(encoding="utf-8").splitlines() if _keep(line, first)]
            atomic_write(self.path, lambda f: f.write("".join(line + "\n" for line in kept).encode()))
        self._file = open(self.path, "a" if self._resumed else "w", encoding="utf-8")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None


def superseded(row: dict[str, Any], first: dict[str, Any]) -> bool:
    """Whether ``row``, logged by an interrupted run, is logged again by the resumed run whose first row is ``first``.

    The resumed run logs every epoch from ``first``'s on again, and every step from ``first``'s on
    (after its own step, when it resumes after the training pass and starts with the epoch row).
    """
    if row["kind"] == "epoch":
        return int(row["epoch"]) >= int(first["epoch"])
    step, first_step = int(row["step"]), int(first["step"])
    return step >= first_step if first["kind"] == "step" else step > first_step


def _keep(line: str, first: dict[str, Any]) -> bool:
    try:
        row = json.loads(line)
    except ValueError:  # not a row: drop it rather than fail the resumed run
        return False
    return isinstance(row, dict) and "kind" in row and not superseded(row, first)
