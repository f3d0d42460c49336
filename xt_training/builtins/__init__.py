"""The built-in plugins: ordinary plugin modules, registered through the same hooks as installed ones.

Each module below implements one ``register_*`` hook of :mod:`xt_training.hookspecs` and names its
factories as ``"module:attr"`` strings, so loading the registry imports neither torch nor torchmetrics.
Block one like any plugin: ``xt -p no:xt_training.builtins.models``.
"""

from __future__ import annotations

PLUGINS = (
    "xt_training.builtins.models",
    "xt_training.builtins.data",
    "xt_training.builtins.metrics",
    "xt_training.builtins.losses",
    "xt_training.builtins.optimizers",
    "xt_training.builtins.schedulers",
    "xt_training.builtins.loggers",
    "xt_training.builtins.callbacks",
    "xt_training.builtins.export_command",
    "xt_training.builtins.shapes",
    "xt_training.builtins.predict_command",
)
