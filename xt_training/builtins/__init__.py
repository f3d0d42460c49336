"""The built-in plugins: ordinary plugin modules, registered through the same hooks as installed ones.

Each module of :data:`xt_training.registry.BUILTIN_PLUGINS` implements one ``register_*`` hook of :mod:`xt_training.hookspecs` and names its
factories as ``"module:attr"`` strings, so loading the registry imports neither torch nor torchmetrics.
Block one like any plugin: ``xt -p no:xt_training.builtins.models``.
"""

from __future__ import annotations
