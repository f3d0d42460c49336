"""Built-in loggers (plugin module, ``register_loggers``); each takes ``save_dir``, the run directory."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_loggers(register: Any) -> None:
    register(
        "console",
        "xt_training.loggers.console:ConsoleLogger",
        description="progress bar on a terminal, plain lines elsewhere, a summary per pass",
    )
    register(
        "tensorboard",
        "xt_training.loggers.tensorboard:TensorBoardLogger",
        description="TensorBoard event files in the run directory",
    )
    register("csv", "xt_training.loggers.csv:CSVLogger", description="one CSV row per logged step")
    register("jsonl", "xt_training.loggers.jsonl:JSONLLogger", description="one JSON line per logged step")
