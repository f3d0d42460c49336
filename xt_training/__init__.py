"""xt-training: the training and test loop around plain PyTorch.

Public names are imported lazily, so ``import xt_training`` (and the ``xt`` CLI) stay fast and do not
import torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import metrics, registry
    from .checkpoint import load_checkpoint, save_checkpoint
    from .exporting import export
    from .hookspecs import hookimpl
    from .registry import (
        Data,
        create_data,
        create_logger,
        create_metric,
        create_model,
        list_data,
        list_loggers,
        list_metrics,
        list_models,
    )
    from .runner import Runner
    from .runs import load_model

__all__ = [
    "__version__",
    "Runner",
    "metrics",
    "load_checkpoint",
    "save_checkpoint",
    "hookimpl",
    "registry",
    "Data",
    "create_model",
    "list_models",
    "create_data",
    "list_data",
    "create_metric",
    "list_metrics",
    "create_logger",
    "list_loggers",
    "export",
    "load_model",
]

_LAZY = {
    "Runner": ("xt_training.runner", "Runner"),
    "metrics": ("xt_training.metrics", None),
    "load_checkpoint": ("xt_training.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("xt_training.checkpoint", "save_checkpoint"),
    "hookimpl": ("xt_training.hookspecs", "hookimpl"),
    "registry": ("xt_training.registry", None),
    "Data": ("xt_training.registry", "Data"),
    "create_model": ("xt_training.registry", "create_model"),
    "list_models": ("xt_training.registry", "list_models"),
    "create_data": ("xt_training.registry", "create_data"),
    "list_data": ("xt_training.registry", "list_data"),
    "create_metric": ("xt_training.registry", "create_metric"),
    "list_metrics": ("xt_training.registry", "list_metrics"),
    "create_logger": ("xt_training.registry", "create_logger"),
    "list_loggers": ("xt_training.registry", "list_loggers"),
    "export": ("xt_training.exporting", "export"),
    "load_model": ("xt_training.runs", "load_model"),
}
assert set(__all__) == {"__version__", *_LAZY}


def __getattr__(name: str) -> Any:
    if name == "tune":  # the xt-optuna plugin's search, a separate distribution
        try:
            from xt_optuna import tune
        except ImportError:
            raise ImportError(
                "xt_training.tune is the hyper-parameter search of the xt-optuna plugin, which is not "
                "installed: from this project's checkout, pip install './plugins/xt-optuna' "
                "(it pulls in optuna; xt-optuna is on no package index)"
            ) from None
        globals()["tune"] = tune
        return tune
    if name not in _LAZY:
        raise AttributeError(f"module 'xt_training' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
