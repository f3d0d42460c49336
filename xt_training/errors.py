"""Errors that xt-training raises for bad input.

Every one carries a one-line message that names the problem and the fix; the CLI prints such
errors without a traceback. They subclass the built-in exception a Python user would expect
(``ValueError``, ``TypeError``, ...) so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import re

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours, which torch's exporters put into their messages


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
    """The loss, or the weights or optimizer state, became NaN or infinite."""


def first_line(error: BaseException | Warning | str) -> str:
    """An exception's (or warning's) message as one line for a one-line error: its first non-blank line,
    without terminal colour codes and with runs of spaces as one, else its type's name."""
    lines = [" ".join(ln.split()) for ln in _ANSI.sub("", str(error)).splitlines() if ln.strip()]
    return lines[0] if lines else type(error).__name__
