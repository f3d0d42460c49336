"""Loggers: the Logger contract and the group that dispatches to several loggers.

A logger is any object with some of the methods of :class:`Logger`; every method is optional, so a
logger implements only what it needs (no base class to inherit). The loop calls them in this order::

    start_run(config)                      once, with the run's hyper-parameters/configuration
    for each epoch:
        for each pass (train, val, test...):
            tick = start_pass(name, epoch, total)   may return a callable, called once per step
            update_pass(name, values)               at logging steps: running values of this pass
            log_metrics({'train/loss': ...}, step)  at logging steps of training passes
            log_metrics({'val/loss': ...}, step)    with val_every_n_steps: each validation inside a
                                                    training pass (a pass the loggers see no start/end of)
            end_pass(name, values)                  exact values of the whole pass
        end_epoch(epoch, values, step)     all values of the epoch, as in the history ('val/acc', ...)
    flush()                                before each checkpoint: make what was logged so far durable
                                           (a run resumed from the checkpoint logs only what follows it)
    end_run(status)                        'completed', 'failed' or 'interrupted'
    notice(message)                        any time: a one-line message for the user (e.g. that the
                                           exact fast path for tensor data is used)
    close()

Values are plain Python floats (or nested lists for non-scalar metrics such as a confusion matrix);
they are read from the device only at logging steps.

A logger never ends a run: one whose method (or per-step callable) raises is reported once, in one line
on stderr naming the logger, the method and the error, and dropped: none of its methods is called again
(``close`` neither). The run and its own files (checkpoints, ``history.json``) go on as without it, so
a tracking server that goes away mid-run costs its logger, not the training.
"""

from __future__ import annotations

import difflib
import importlib
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, Protocol

from ..errors import ConfigError, first_line
from .console import ConsoleLogger

__all__ = ["Logger", "LoggerGroup", "BUILTIN", "create", "default_loggers"]

#: the built-in loggers by name: ``(class as 'module:attr', description)``; each takes ``save_dir``.
#: The built-in plugin registers these names; ``F.train(loggers=['csv'])`` creates them here.
BUILTIN = {
    "console": (
        "xt_training.loggers.console:ConsoleLogger",
        "progress bar on a terminal, plain lines elsewhere, a summary per pass",
    ),
    "tensorboard": (
        "xt_training.loggers.tensorboard:TensorBoardLogger",
        "TensorBoard event files in the run directory",
    ),
    "csv": ("xt_training.loggers.csv:CSVLogger", "one CSV row per logged step"),
    "jsonl": ("xt_training.loggers.jsonl:JSONLLogger", "one JSON line per logged step"),
}


def default_loggers(given: Iterable[Any], quiet: bool) -> list[Any]:
    """The loggers of a pass or a run: ``given``, with the console logger first unless one is given;
    with ``quiet``, without any console logger."""
    given = list(given)
    if quiet:
        return [lg for lg in given if not isinstance(lg, ConsoleLogger)]
    return given if any(isinstance(lg, ConsoleLogger) for lg in given) else [ConsoleLogger(), *given]


def create(name: str, save_dir: Path) -> Any:
    """A built-in logger by name; another name is an error naming the close match, or how to pass it."""
    if name not in BUILTIN:
        close = difflib.get_close_matches(name, BUILTIN, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown logger {name!r}; {hint}F.train takes the built-in names ({', '.join(BUILTIN)}) and logger "
            f"instances, e.g. xt_training.create_logger(NAME, save_dir=...) for a plugin's"
        )
    module, attr = BUILTIN[name][0].split(":")
    return getattr(importlib.import_module(module), attr)(save_dir=save_dir)


class Logger(Protocol):
    """The logger contract. Every method is optional; see the module docstring for the call order."""

    def start_run(self, config: dict[str, Any]) -> None: ...

    def start_pass(self, name: str, epoch: int, total: int | None) -> Callable[[], Any] | None: ...

    def update_pass(self, name: str, values: dict[str, Any]) -> None: ...

    def log_metrics(self, values: dict[str, Any], step: int) -> None: ...

    def end_pass(self, name: str, values: dict[str, Any]) -> None: ...

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None: ...

    def notice(self, message: str) -> None: ...

    def flush(self) -> None: ...

    def end_run(self, status: str) -> None: ...

    def close(self) -> None: ...


def _noop(*args: Any) -> None:
    return None


class LoggerGroup:
    """Calls each method on every logger that has it; drops a logger that raises (reported once)."""

    def __init__(self, loggers: Iterable[Any] = ()):
        self.loggers = list(loggers)
        self._ticks: list[tuple[Any, list[Callable[[], Any]]]] = []  # the pass's per-step callables, boxed

    def _call(self, method: str, *args: Any) -> list[tuple[Any, Any]]:
        """``(logger, what it returned)`` for each logger that did not fail."""
        results = []
        for lg in list(self.loggers):  # a copy: a failing logger leaves the list
            try:
                results.append((lg, getattr(lg, method, _noop)(*args)))
            except Exception as e:  # a logger's failure must not end the run
                self._drop(lg, method, e)
        return results

    def _drop(self, logger: Any, method: str, error: Exception) -> None:
        """Report ``logger``'s failure and call it no more, its per-step callable included."""
        self.loggers.remove(logger)
        for owner, box in self._ticks:
            if owner is logger:
                box[0] = _noop
        print(
            f"warning: logger {type(logger).__name__} failed in {method} ({type(error).__name__}: "
            f"{first_line(error)}); it is dropped and the run goes on without it",
            file=sys.stderr,
            flush=True,
        )

    def _guard(self, logger: Any, tick: Callable[[], Any]) -> Callable[[], Any]:
        """``tick``, which the loop calls once per step, made to drop its logger on an exception.

        It costs a Python call and a list lookup per step (~0.1 us; a try block is free until it catches).
        """
        box = [tick]
        self._ticks.append((logger, box))

        def guarded() -> None:
            try:
                box[0]()
            except Exception as e:
                self._drop(logger, "its per-step call", e)

        return guarded

    def start_run(self, config: dict[str, Any]) -> None:
        self._call("start_run", config)

    def start_pass(self, name: str, epoch: int, total: int | None) -> Callable[[], Any]:
        self._ticks = []  # the loop holds only the current pass's
        started = self._call("start_pass", name, epoch, total)
        ticks = [self._guard(lg, t) for lg, t in started if t is not None]
        if not ticks:
            return _noop
        if len(ticks) == 1:
            return ticks[0]
        return lambda: [t() for t in ticks]

    def update_pass(self, name: str, values: dict[str, Any]) -> None:
        self._call("update_pass", name, values)

    def log_metrics(self, values: dict[str, Any], step: int) -> None:
        self._call("log_metrics", values, step)

    def end_pass(self, name: str, values: dict[str, Any]) -> None:
        self._call("end_pass", name, values)

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        self._call("end_epoch", epoch, values, step)

    def notice(self, message: str) -> None:
        self._call("notice", message)

    def flush(self) -> None:
        self._call("flush")

    def end_run(self, status: str) -> None:
        self._call("end_run", status)

    def close(self) -> None:
        self._call("close")
