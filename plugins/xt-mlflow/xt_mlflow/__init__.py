"""xt-mlflow: MLflow tracking for xt-training, as a plugin (``--logger mlflow``).

Importing this package imports neither torch nor MLflow: the plugin is loaded by every ``xt`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "MLflowLogger"]

if TYPE_CHECKING:
    from .logger import MLflowLogger


def __getattr__(name: str) -> Any:
    if name == "MLflowLogger":
        from .logger import MLflowLogger

        return MLflowLogger
    raise AttributeError(f"module 'xt_mlflow' has no attribute {name!r}")
