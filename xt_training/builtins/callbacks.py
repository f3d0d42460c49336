"""Built-in callbacks (plugin module, ``register_callbacks``)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl


@hookimpl
def register_callbacks(register: Any) -> None:
    register(
        "early-stopping",
        "xt_training.callbacks:EarlyStopping",
        description="stop when the monitored value has not improved for `patience` epochs",
    )
