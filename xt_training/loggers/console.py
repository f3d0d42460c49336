"""The console logger: a progress bar per pass on a terminal, plain lines elsewhere, and summaries."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import Any, TextIO


def format_value(value: Any) -> str:
    """A metric value for humans: 4 significant decimals, large values without decimals."""
    if isinstance(value, float):
        return f"{value:.0f}" if abs(value) >= 1000 else f"{value:.4f}"
    if isinstance(value, list):
        return "[...]"
    return str(value)


def format_values(values: dict[str, Any]) -> str:
    return " | ".join(f"{k} {format_value(v)}" for k, v in values.items() if not isinstance(v, list))


class ConsoleLogger:
    """Progress and summaries on the console.

    On a terminal: a tqdm bar per pass (it/s, running loss and metrics, refreshed a few times a
    second). Elsewhere (CI, log files): a plain line at most every ``line_interval`` seconds, so a
    long run's log stays bounded. Always: one summary line per pass with the pass's exact values.
    """

    def __init__(self, file: TextIO | None = None, progress: bool | None = None, line_interval: float = 10.0):
        self.file = file
        self.progress = progress
        self.line_interval = line_interval
        self._bar: Any = None
        self._epoch = 0
        self._last_line = 0.0

    @property
    def _out(self) -> TextIO:
        return self.file or sys.stdout

    def start_pass(self, name: str, epoch: int, total: int | None) -> Callable[[], Any] | None:
        self._epoch = epoch
        self._last_line = time.monotonic()
        progress = self.progress if self.progress is not None else self._out.isatty()
        if not progress:
            return None
        from tqdm.auto import tqdm

        desc = f"{name} {epoch}" if epoch else name
        self._bar = tqdm(
            total=total, desc=desc, file=self._out, leave=False, mininterval=0.25, dynamic_ncols=True
        )
        return self._bar.update  # ~0.2 us a call: tqdm reads the clock only every `miniters` steps

    def update_pass(self, name: str, values: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.set_postfix_str(format_values(values), refresh=False)
        elif time.monotonic() - self._last_line >= self.line_interval:
            self._last_line = time.monotonic()
            print(f"  {self._label(name)} ... {format_values(values)}", file=self._out, flush=True)

    def end_pass(self, name: str, values: dict[str, Any]) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
        print(f"{self._label(name):<14} {format_values(values)}", file=self._out, flush=True)

    def _label(self, name: str) -> str:
        return f"epoch {self._epoch} {name}" if self._epoch else name

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None
