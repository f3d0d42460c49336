"""Errors that xt-training raises for bad input.

Every one carries a one-line message that names the problem and the fix; the CLI prints such
errors without a traceback. They subclass the built-in exception a Python user would expect
(``ValueError``, ``TypeError``, ...) so existing ``except`` clauses keep working.
"""

from __future__ import annotations

import os
import re
import sysconfig
import traceback
from collections.abc import Mapping

_ANSI = re.compile(r"\x1b\[[0-9;]*m")  # terminal colours, which torch's exporters put into their messages
_WORKER = re.compile(r"Caught \w+ in DataLoader worker process \d+\.\nOriginal Traceback")


class XtError(Exception):
    """Base class of xt-training's user-facing errors."""


class ConfigError(XtError, ValueError):
    """An argument, option or configuration value is invalid."""


class ConfigTypeError(ConfigError, TypeError):
    """An argument is of the wrong kind (a number where a metric belongs); ``except TypeError`` catches it too."""


class BatchError(XtError, TypeError):
    """A loader yielded a batch the loop cannot unpack."""


class LossError(XtError, ValueError):
    """The loss function returned something the loop cannot back-propagate or average."""


class MetricError(XtError, ValueError):
    """A metric failed to update or compute; the message names the metric and the shapes."""


class CheckpointError(XtError, RuntimeError):
    """A checkpoint is missing, corrupt, unsafe or does not fit the model."""


class UnreadableCheckpointError(CheckpointError):
    """A checkpoint file that torch cannot read (truncated or corrupt). ``problem`` is the message without its
    fix, for a caller that knows a better one (a resume offers the run's intact ``best.pt``)."""

    def __init__(self, problem: str, fix: str):
        super().__init__(f"{problem}; {fix}")
        self.problem = problem


class NonFiniteLossError(XtError, FloatingPointError):
    """The loss, or the weights or optimizer state, became NaN or infinite."""


def own_message(error: BaseException) -> str:
    """The message of ``error``, that of the original where a DataLoader worker raised it: torch raises
    the same type again in the main process with ``Caught X in DataLoader worker process N`` and the
    worker's traceback as its message, whose last line is the original ``module.X: message``."""
    text = str(error)
    if not _WORKER.match(text):
        return text
    last = text.rstrip().splitlines()[-1]
    name = f"{type(error).__module__}.{type(error).__qualname__}: "
    return last.removeprefix(name).removeprefix(f"{type(error).__qualname__}: ")


def first_line(error: BaseException | Warning | str) -> str:
    """An exception's (or warning's) message as one line for a one-line error: its first non-blank line,
    without terminal colour codes and with runs of spaces as one, else its type's name."""
    lines = [" ".join(ln.split()) for ln in _ANSI.sub("", str(error)).splitlines() if ln.strip()]
    return lines[0] if lines else type(error).__name__


#: where the standard library and installed packages live: frames there are nobody's own code
_LIBRARIES = tuple(
    {
        os.path.realpath(p) + os.sep
        for k in ("stdlib", "platstdlib", "purelib", "platlib")
        if (p := sysconfig.get_path(k))
    }
)


def raised_in(error: BaseException, owners: Mapping[str, str] | None = None) -> str | None:
    """Where user or plugin code raised ``error``: ``plugin 'mine' (xt-mine 1.0), xt_mine/metrics.py:41 in
    update`` or ``model.py:12 in forward``; None where only xt-training and libraries ran.

    ``owners`` maps a plugin's top-level module name to the plugin, as messages name it. The deepest
    frame of such code is the one named: a torch error raised for a user's model names the model's line.
    """
    for frame, line in reversed(list(traceback.walk_tb(error.__traceback__))):
        module = str(frame.f_globals.get("__name__", ""))
        file, function = frame.f_code.co_filename, frame.f_code.co_name
        top = module.split(".")[0]
        if owners and top in owners:
            return f"plugin {owners[top]}, {_in_package(file, module)}:{line} in {function}"
        if top != "xt_training" and not file.startswith("<") and not _library(file):
            return f"{_relative(file)}:{line} in {function}"
    return None


def line_in(error: BaseException, package: str) -> str | None:
    """``xt_mine/plugin.py:3``: the deepest line of the top-level module ``package`` in ``error``'s
    traceback; None for a SyntaxError, whose message names its file and line."""
    if isinstance(error, SyntaxError):
        return None
    for frame, line in reversed(list(traceback.walk_tb(error.__traceback__))):
        module = str(frame.f_globals.get("__name__", ""))
        if module.split(".")[0] == package:
            return f"{_in_package(frame.f_code.co_filename, module)}:{line}"
    return None


def deepest(error: BaseException) -> str | None:
    """``file:line in function`` of the frame that raised ``error``."""
    frames = list(traceback.walk_tb(error.__traceback__))
    if not frames:
        return None
    frame, line = frames[-1]
    return f"{_relative(frame.f_code.co_filename)}:{line} in {frame.f_code.co_name}"


def _library(file: str) -> bool:
    return os.path.realpath(file).startswith(_LIBRARIES)


def _in_package(file: str, module: str) -> str:
    """``xt_mine/metrics.py`` for the file of module ``xt_mine.metrics``: the path a plugin's author knows."""
    depth = module.count(".") + 1 + (os.path.basename(file) == "__init__.py")
    return "/".join(file.split(os.sep)[-depth:])


def _relative(file: str) -> str:
    path = os.path.relpath(file)
    return file if path.startswith("..") else path
