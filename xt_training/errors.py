"""Errors that xt-training raises for bad input.

Every one carries a one-line message that names the problem and the fix; the CLI prints such
errors without a traceback. They subclass the built-in exception a Python user would expect
(``ValueError``, ``TypeError``, ...) so existing ``except`` clauses keep working.
"""

from __future__ import annotations


class XtError(Exception):
    """Base class of xt-training's user-facing errors."""


class ConfigError(XtError, ValueError):
    """An argument, option or configuration value is invalid."""


class BatchError(XtError, TypeError):
    """A loader yielded a batch the loop cannot unpack."""


class LossError(XtError, ValueError):
    """The loss function returned something the loop cannot back-propagate or average."""


class MetricError(XtError, ValueError):
    """A metric failed to update or compute; the message names the metric and the shapes."""


class CheckpointError(XtError, RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the model."""


class NonFiniteLossError(XtError, FloatingPointError):
    """The loss became NaN or infinite."""


def first_line(error: BaseException) -> str:
    """An exception's message as one line for a one-line error: its first line, else its type's name."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__
