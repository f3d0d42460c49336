"""Callbacks: code that F.train runs at fixed points of a run, e.g. early stopping.

A callback is any object with some of these methods (each optional, no base class)::

    on_train_start(run)            after set-up (and after a resume restored the state)
    on_pass_start(run, name)       before each training, validation and test pass ('train', 'val', 'test'...),
                                   e.g. to reset a carried hidden state; a resumed pass starts again too
    on_train_batch_start(run, batch, step)     before each training batch's forward
    on_before_optimizer_step(run, optimizer)   after backward, before clipping and the optimizer step:
                                   the gradients are in the parameters' .grad (unscaled under 16-mixed)
    on_train_batch_end(run, batch, step, y_pred, loss)       after each training batch (and its step)
    on_validation_batch_end(run, batch, step, y_pred, loss)  after each batch of a validation or test pass
    on_pass_end(run, name, values) after each pass that ran to its end, with the pass's values
    on_mid_epoch_validation(run, row)  after each validation of ``val_every_n_steps`` (between two optimizer
                                   steps), with its history row ``{'epoch', 'step', 'val/...'}``;
                                   set ``run.should_stop = True`` to end training there
    on_epoch_end(run, row)         after each epoch's passes and the loggers' end_epoch, with the epoch's
                                   history row (what it prints follows the epoch's table);
                                   set ``run.should_stop = True`` to end training after this epoch
    on_exception(run, error)       training failed with ``error`` (before crash.pt is saved and it is re-raised)
    on_train_end(run, status)      'completed', 'stopped', 'failed' or 'interrupted'
    state_dict() / load_state_dict(state)   saved in checkpoints, restored on resume

``run`` is the :class:`Run` of F.train: model, optimizer, history, save_dir, epoch, global_step,
monitor/mode/best, should_stop. Which callbacks implement a per-pass or per-step hook is read once per
pass: a hook that none implements costs nothing per step. ``batch`` is as the loop holds it (on the device
on a GPU), ``step`` counts the pass's batches from 1, ``loss`` is the batch's loss tensor (None where an
evaluation reports none); batches left out by ``nonfinite_loss='skip'`` get no batch-end hook.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .errors import ConfigError

__all__ = ["Run", "EarlyStopping"]


@dataclass
class Run:
    """What callbacks see of a running F.train."""

    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    save_dir: Path
    monitor: str
    mode: str
    history: list[dict[str, Any]] = field(default_factory=list)
    epoch: int = 0
    global_step: int = 0
    best: float | None = None
    should_stop: bool = False


class EarlyStopping:
    """Stop when ``monitor`` has not improved by more than ``min_delta`` for ``patience`` evaluations.

    The evaluations are the epochs, and with ``val_every_n_steps`` also the validations inside them (of a
    ``val/`` value: the others are measured once per epoch), as Lightning's counts validation checks.

    Args:
        patience: evaluations without improvement before the run stops.
        min_delta: the least change that counts as an improvement.
        monitor: a history name such as ``'val/loss'``; default: the run's monitored value.
        mode: ``'min'`` or ``'max'``; default: the run's mode.
    """

    def __init__(
        self, patience: int = 5, min_delta: float = 0.0, monitor: str | None = None, mode: str | None = None
    ):
        if isinstance(patience, bool) or not isinstance(patience, int) or patience < 1:
            raise ConfigError(f"EarlyStopping: patience must be a positive integer, not {patience!r}")
        if mode not in (None, "min", "max"):
            raise ConfigError(f"EarlyStopping: mode must be 'min' or 'max', not {mode!r}")
        self.patience = patience
        self.min_delta = abs(min_delta)
        self.monitor = monitor
        self.mode = mode
        self.best: float | None = None
        self.bad_epochs = 0

    def on_epoch_end(self, run: Run, row: dict[str, Any]) -> None:
        monitor = self.monitor or run.monitor
        if monitor not in row:
            raise ConfigError(
                f"EarlyStopping: {monitor!r} is not in the history; choose one of: {', '.join(row)}"
            )
        self._judge(run, row[monitor], monitor, "epochs")

    def on_mid_epoch_validation(self, run: Run, row: dict[str, Any]) -> None:
        monitor = self.monitor or run.monitor
        if monitor in row:  # a value of another pass is judged at the epoch's end
            self._judge(run, row[monitor], monitor, "evaluations")

    def _judge(self, run: Run, value: float, monitor: str, what: str) -> None:
        mode = self.mode or run.mode
        better = not math.isnan(value) and (
            self.best is None
            or (value < self.best - self.min_delta if mode == "min" else value > self.best + self.min_delta)
        )
        if better:
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.bad_epochs >= self.patience:
            run.should_stop = True
            print(f"early stopping: {monitor} has not improved for {self.patience} {what} (best {self.best})")

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_epochs": self.bad_epochs}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.best, self.bad_epochs = state["best"], state["bad_epochs"]
