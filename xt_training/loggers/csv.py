"""The CSV logger: one row per logged step in ``save_dir/metrics.csv``, flushed at every write.

Columns: ``kind``, ``epoch``, ``step``, ``time``, then one column per value name in the order the names
first appeared (``train/loss``, ``train/acc``, ``lr``, ``val/loss``, ...). A ``step`` row holds the
running values of the training pass at a logging step (``step`` counts optimizer steps) and the learning
rate of every param group then (``lr``, ``lr/1``, ...), or the values of a validation inside the epoch
(``val_every_n_steps``); an ``epoch`` row is the epoch's row of the history:
exact values of every loader, and ``lr`` as param group 0's at the start of the epoch. Cells a row has no value for
are empty. Non-scalar metrics (confusion matrices) are left out: ``metrics.jsonl`` keeps them.

Every row is flushed to the operating system when it is written, so a killed run keeps every row it
logged. When a row brings new names (the first epoch row brings the validation values)
the file is rewritten with the wider header into a temporary file that is renamed over the old one,
so the file on disk is always a complete, rectangular table. A new run starts a new file; a resumed
run (``F.train(..., resume=True)``) keeps the rows of the run it continues, except those it is about
to log again. Load it with::

    df = pandas.read_csv('runs/exp1/metrics.csv')
    history = df[df.kind == 'epoch']
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path
from typing import IO, Any

from ..errors import ConfigError
from ..files import atomic_write
from .console import is_scalar
from .jsonl import superseded

__all__ = ["CSVLogger", "FILENAME"]

FILENAME = "metrics.csv"


class CSVLogger:
    """Writes ``save_dir/metrics.csv``; see the module docstring.

    Args:
        save_dir: the run directory (the CLI passes it).
    """

    def __init__(self, *, save_dir: str | os.PathLike[str] | None = None):
        if save_dir is None:
            raise ConfigError("CSVLogger needs save_dir, the run directory: CSVLogger(save_dir='runs/exp1')")
        self.path = Path(save_dir) / FILENAME
        self.columns: list[str] = []
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._resumed = False
        self._epoch = 0

    def start_run(self, config: dict[str, Any]) -> None:
        self._resumed = bool(config.get("resumed"))

    def start_pass(self, name: str, epoch: int, total: int | None) -> None:
        self._epoch = epoch

    def log_metrics(self, values: dict[str, Any], step: int) -> None:
        self._write("step", self._epoch, step, values)

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        self._write("epoch", epoch, step, values)

    def _write(self, kind: str, epoch: int, step: int, values: dict[str, Any]) -> None:
        row = {"kind": kind, "epoch": epoch, "step": step, "time": round(time.time(), 3)}
        row.update((k, v) for k, v in values.items() if k not in row and is_scalar(v))
        if self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            rows = [r for r in self._read() if not superseded(r, row)] if self._resumed else []
            self._rewrite(rows, [*self.columns, *(k for k in row if k not in self.columns)])
        elif any(k not in self.columns for k in row):
            self._file.close()
            self._rewrite(self._read(), [*self.columns, *(k for k in row if k not in self.columns)])
        self._writer.writerow(row)
        self._file.flush()

    def _read(self) -> list[dict[str, str]]:
        """The rows of the file (empty without one); sets the columns to its header."""
        if not self.path.exists():
            return []
        with open(self.path, newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            self.columns = list(reader.fieldnames or [])
        return rows

    def _rewrite(self, rows: list[dict[str, str]], columns: list[str]) -> None:
        """Replace the file with ``rows`` under the header ``columns`` (atomically), then append to it."""

        def write(f: IO[bytes]) -> None:
            text = io.StringIO()
            writer = csv.DictWriter(text, columns, restval="")
            writer.writeheader()
            writer.writerows(rows)
            f.write(text.getvalue().encode())

        atomic_write(self.path, write)
        self.columns = columns
        self._file = open(self.path, "a", newline="", encoding="utf-8")
        self._writer = csv.DictWriter(self._file, columns, restval="")

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
