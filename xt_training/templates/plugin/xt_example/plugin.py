"""The hooks: each gives the plugin's objects their names.

xt-training calls every ``register_*`` hook once when it loads its registry. A factory given as a
``"module:attr"`` string is imported only when a run uses the name, which keeps ``xt --help`` fast.
A function here that is named like a hook but lacks ``@hookimpl`` is reported by ``xt plugins``.
"""

from __future__ import annotations

from typing import Any

from xt_training import hookimpl


@hookimpl
def register_models(register: Any) -> None:
    register("example-mlp", "xt_example.models:mlp", description="a two-layer perceptron for tabular data")


@hookimpl
def register_data(register: Any) -> None:
    register("example-blobs", "xt_example.data:blobs", description="Gaussian blobs, one per class")


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "example-overconfident",
        "xt_example.metrics:Overconfident",
        description="fraction of examples wrong with a probability of at least `threshold` (0.9)",
    )


@hookimpl
def register_loggers(register: Any) -> None:
    register(
        "example-text", "xt_example.loggers:TextLogger", description="one text line per epoch in example.log"
    )


@hookimpl
def register_callbacks(register: Any) -> None:
    register(
        "example-stop-at",
        "xt_example.callbacks:StopAt",
        description="stop when the monitored value reaches `value`",
    )


@hookimpl
def register_commands(cli: Any) -> None:
    from .commands import best_command  # click only: no torch at start-up

    cli.add_command(best_command)
