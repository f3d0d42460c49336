"""The ``optuna-pruning`` callback: a trial's monitored value goes to Optuna after every epoch.

``xt tune`` adds it to every trial's run configuration and builds the run through the registry like any
callback, so it cannot be handed the Optuna trial as an option (``config.json`` holds only JSON). The
trial being run is published here instead (:func:`reporting_to`), and the callback finds it when it is
built. Outside a trial -- ``xt run --config STUDY/trials/7/config.json`` reproducing trial 7 -- there is
none, and the callback does nothing.

When Optuna prunes the trial, the callback sets ``run.should_stop``: F.train then ends the run after this
epoch's checkpoint and ``history.json`` are written, with the status ``'stopped'``, instead of treating an
exception as a crash (``crash.pt``, status ``'failed'``, the epoch's row lost). The tuner sees
:attr:`Reporting.pruned_at` and tells Optuna the trial was pruned.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from xt_training.errors import ConfigError

__all__ = ["OptunaPruning", "Reporting", "reporting_to", "NAME"]

NAME = "optuna-pruning"


@dataclass
class Reporting:
    """The Optuna trial a run reports to, and the epoch at which Optuna pruned it (None: not pruned)."""

    trial: Any
    pruned_at: int | None = None


_current: ContextVar[Reporting | None] = ContextVar("xt_optuna_trial", default=None)


@contextlib.contextmanager
def reporting_to(trial: Any) -> Iterator[Reporting]:
    """Runs built inside this block report to ``trial``."""
    reporting = Reporting(trial)
    token = _current.set(reporting)
    try:
        yield reporting
    finally:
        _current.reset(token)


class OptunaPruning:
    """Report the run's monitored value to the running `xt tune` trial each epoch; stop the run when pruned.

    It takes no options: the value is the run's ``monitor``, which ``xt tune`` sets to the study's.
    Outside an ``xt tune`` trial it does nothing, so a trial's saved configuration runs as it is.
    """

    def __init__(self) -> None:
        self.reporting = _current.get()

    def on_epoch_end(self, run: Any, row: dict[str, Any]) -> None:
        if self.reporting is None:
            return
        if run.monitor not in row:
            raise ConfigError(
                f"{NAME}: {run.monitor!r} is not in the history; choose one of: {', '.join(row)}"
            )
        value = float(row[run.monitor])
        if math.isnan(value):  # Optuna would store it, and the pruners would compare against NaN
            return
        trial = self.reporting.trial
        trial.report(value, step=run.epoch)
        if trial.should_prune():
            self.reporting.pruned_at = run.epoch
            run.should_stop = True
