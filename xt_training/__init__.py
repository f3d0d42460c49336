"""xt-training: the training and test loop around plain PyTorch.

Public names are imported lazily, so ``import xt_training`` (and the ``xt`` CLI) stay fast and do not
import torch until a name that needs it is used.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from ._version import __version__

if TYPE_CHECKING:
    from . import metrics
    from .checkpoint import load_checkpoint, save_checkpoint
    from .runner import Runner

__all__ = ["__version__", "Runner", "metrics", "load_checkpoint", "save_checkpoint"]

_LAZY = {
    "Runner": ("xt_training.runner", "Runner"),
    "metrics": ("xt_training.metrics", None),
    "load_checkpoint": ("xt_training.checkpoint", "load_checkpoint"),
    "save_checkpoint": ("xt_training.checkpoint", "save_checkpoint"),
}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'xt_training' has no attribute {name!r}")
    module, attr = _LAZY[name]
    value = importlib.import_module(module)
    value = value if attr is None else getattr(value, attr)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))
