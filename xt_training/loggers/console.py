"""The console logger: a progress bar per pass on a terminal, plain lines elsewhere, and epoch tables.

On a terminal each pass gets a tqdm bar (it/s, running loss and metrics). When the output is not a
terminal (CI, ``> train.log``, a notebook) a bar would write a carriage return per refresh, so the
logger prints a plain progress line at most every ``line_interval`` seconds instead: a long run's log
grows with its duration, not with its number of steps. At the end of each epoch it prints a table
with one row per loader and one column per metric, with the epoch's exact values.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from typing import Any, TextIO

from ..errors import ConfigError

__all__ = ["ConsoleLogger", "format_value", "format_values", "format_duration", "is_scalar"]


def is_scalar(value: Any) -> bool:
    """Whether a logged value is a number (non-scalar metrics, e.g. confusion matrices, are lists)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def format_value(value: Any) -> str:
    """A metric value for humans: 4 decimals; large values without decimals, tiny ones (an lr) in e-notation."""
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:.0f}"
        if 0 < abs(value) < 1e-3:
            return f"{value:.2e}"
        return f"{value:.4f}"
    if isinstance(value, list):
        return "[...]"
    return "-" if value is None else str(value)


def format_values(values: dict[str, Any]) -> str:
    return " | ".join(f"{k} {format_value(v)}" for k, v in values.items() if is_scalar(v))


def format_duration(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.1f} s"
    minutes, secs = divmod(round(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class ConsoleLogger:
    """Progress and summaries on the console.

    Args:
        save_dir: accepted like every logger's, and ignored: the console writes no files.
        file: where to write; default ``sys.stdout`` for the progress and the tables, ``sys.stderr`` for
            the notices (looked up at each write, so redirections work).
        progress: ``True`` for tqdm bars, ``False`` for plain lines; default: bars on a terminal only.
        line_interval: without bars, the least number of seconds between two progress lines.
        metrics: the names shown in the bar and progress lines besides the loss; default all.
            The epoch table always shows every metric.

    A pass that belongs to an epoch (``F.train``) is summarised in the epoch table; a pass outside an
    epoch (``F.test``, a ``Runner`` called directly) gets a summary line of its own.
    """

    def __init__(
        self,
        *,
        save_dir: str | os.PathLike[str] | None = None,
        file: TextIO | None = None,
        progress: bool | None = None,
        line_interval: float = 10.0,
        metrics: Iterable[str] | None = None,
    ):
        if not is_scalar(line_interval) or line_interval < 0:
            raise ConfigError(f"line_interval must be a number of seconds >= 0, not {line_interval!r}")
        if isinstance(metrics, str):
            raise ConfigError(f"metrics must be a list of names, e.g. [{metrics!r}], not a string")
        if progress:  # imported now (tqdm's lock set-up included), not inside the first training pass
            import tqdm.auto  # noqa: F401
        self.file = file
        self.progress = progress
        self.line_interval = float(line_interval)
        self.metrics = None if metrics is None else ["loss", *metrics]
        self._bar: Any = None
        self._epochs: int | None = None
        self._epoch = 0
        self._run_start = self._epoch_start = self._pass_start = self._last_line = time.monotonic()
        self._step = 0
        self._total: int | None = None
        self._running = {}

    @property
    def _out(self) -> TextIO:
        return self.file or sys.stdout

    def _print(self, text: str) -> None:
        print(text, file=self._out, flush=True)

    def start_run(self, config: dict[str, Any]) -> None:
        epochs = config.get("epochs")
        self._epochs = epochs if isinstance(epochs, int) else None
        self._run_start = time.monotonic()

    def start_pass(self, name: str, epoch: int, total: int | None) -> Callable[[], Any] | None:
        now = time.monotonic()
        if epoch != self._epoch:
            self._epoch_start = now
        self._epoch, self._total, self._step = epoch, total, 0
        self._running: dict[str, Any] = {}
        self._pass_start = self._last_line = now
        progress = self.progress if self.progress is not None else self._out.isatty()
        if not progress:
            return self._tick
        from tqdm.auto import tqdm

        # A terminal that reports no width (a pseudo-terminal nobody sized) would get an empty bar.
        sized = _width(self._out) > 0
        self._bar = tqdm(
            total=total,
            desc=self._label(name),
            file=self._out,
            leave=False,
            mininterval=0.25,
            dynamic_ncols=sized,
            ncols=None if sized else 100,
        )
        return self._bar.update  # ~0.2 us a call: tqdm reads the clock only every `miniters` steps

    def _tick(self) -> None:
        self._step += 1  # the only per-step work without a bar: a counter for the progress lines

    def update_pass(self, name: str, values: dict[str, Any]) -> None:
        # a slow metric (AUC) is left out of some logging steps: show its last value meanwhile
        values = self._running = {**self._running, **values}
        if self.metrics is not None:
            values = {k: v for k, v in values.items() if k in self.metrics}
        if self._bar is not None:
            self._bar.set_postfix_str(format_values(values), refresh=False)
            return
        now = time.monotonic()
        if now - self._last_line < self.line_interval:
            return
        self._last_line = now
        done = f"{self._step}/{self._total}" if self._total is not None else str(self._step)
        rate = self._step / max(now - self._pass_start, 1e-9)
        self._print(f"{self._label(name)}  {done}  {rate:.1f} it/s  {format_values(values)}")

    def end_pass(self, name: str, values: dict[str, Any]) -> None:
        self._close_bar()
        if not self._epoch:
            self._print(f"{name:<14} {format_values(values)}")

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        header = [f"epoch {epoch}/{self._epochs}" if self._epochs else f"epoch {epoch}"]
        header += [f"{k} {format_value(v)}" for k, v in values.items() if "/" not in k and k != "epoch"]
        header.append(format_duration(time.monotonic() - self._epoch_start))
        self._print("  ".join(header) + "\n" + epoch_table(values))

    def end_run(self, status: str) -> None:
        self._close_bar()
        elapsed = format_duration(time.monotonic() - self._run_start)
        if status == "completed":
            epochs = f"{self._epoch} epoch" + ("" if self._epoch == 1 else "s")
            self._print(f"run completed: {epochs} in {elapsed}")
        else:
            self._print(f"run {status} in epoch {self._epoch} after {elapsed}")

    def notice(self, message: str) -> None:
        # a message about the run, not its output: stdout keeps the progress and the tables
        out = self.file or sys.stderr
        if self._bar is not None:
            self._bar.write(message, file=out)  # above the bar, which stays intact
        else:
            print(message, file=out, flush=True)

    def close(self) -> None:
        self._close_bar()

    def _close_bar(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _label(self, name: str) -> str:
        if not self._epoch:
            return name
        return f"epoch {self._epoch}/{self._epochs} {name}" if self._epochs else f"epoch {self._epoch} {name}"


def _width(file: TextIO) -> int:
    try:
        return os.get_terminal_size(file.fileno()).columns
    except (OSError, ValueError, AttributeError):  # not a terminal, closed, or no file descriptor
        return 0


def epoch_table(values: dict[str, Any]) -> str:
    """The scalar values named ``loader/metric`` as a table: one row per loader, one column per metric."""
    rows: dict[str, dict[str, str]] = {}
    for key, value in values.items():
        loader, _, metric = key.partition("/")
        if metric and is_scalar(value):
            rows.setdefault(loader, {})[metric] = format_value(value)
    columns = list(dict.fromkeys(m for cells in rows.values() for m in cells))
    first = max((len(loader) for loader in rows), default=0)
    widths = [max(len(c), *(len(cells.get(c, "-")) for cells in rows.values())) for c in columns]
    lines = ["  ".join([" " * first, *(c.rjust(w) for c, w in zip(columns, widths))])]
    for loader, cells in rows.items():
        lines.append(
            "  ".join([loader.ljust(first), *(cells.get(c, "-").rjust(w) for c, w in zip(columns, widths))])
        )
    return "\n".join(line.rstrip() for line in lines)
