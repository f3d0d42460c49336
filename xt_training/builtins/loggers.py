"""Built-in loggers (plugin module, ``register_loggers``); each takes ``save_dir``, the run directory.

The names are declared with the loggers themselves (:data:`xt_training.loggers.BUILTIN`).
"""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl
from ..loggers import BUILTIN


@hookimpl
def register_loggers(register: Any) -> None:
    for name, (factory, description) in BUILTIN.items():
        register(name, factory, description=description)
