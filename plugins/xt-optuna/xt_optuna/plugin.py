"""The plugin module named by the entry point: ``xt tune``, the pruning callback, study directories in show/plot.

Nothing heavy is imported here (every ``xt`` command loads this module): Optuna and torch are imported
by the command and the hooks when they run.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from xt_training.hookspecs import hookimpl

from .study import is_study_dir


@hookimpl
def register_commands(cli: Any) -> None:
    from .command import tune_command

    cli.add_command(tune_command)


@hookimpl
def register_callbacks(register: Any) -> None:
    register(
        "optuna-pruning",
        "xt_optuna.pruning:OptunaPruning",
        description="report the monitored value to the running `xt tune` trial; stop it when pruned",
    )


@hookimpl
def show_directory(path: Path) -> str | None:
    if not is_study_dir(path):
        return None
    from .summary import show

    return show(path)


@hookimpl
def plot_directory(path: Path, out: Path | None) -> list[Path] | None:
    if not is_study_dir(path):
        return None
    from .summary import plot

    return plot(path, out)
