"""xt-optuna: hyper-parameter search for xt-training on Optuna, as a plugin.

``xt tune`` (and :func:`tune` here) runs an Optuna study whose trials are ordinary xt-training runs in
``STUDY_DIR/trials/<number>/``; the ``optuna-pruning`` callback reports each epoch's monitored value so
that hopeless trials stop early; ``xt show STUDY_DIR`` and ``xt plot STUDY_DIR`` summarise a study.

Importing this package imports neither torch nor Optuna: the plugin is loaded by every ``xt`` command.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["__version__", "tune"]

if TYPE_CHECKING:
    from .tuning import tune


def __getattr__(name: str) -> Any:
    if name == "tune":
        from .tuning import tune

        return tune
    raise AttributeError(f"module 'xt_optuna' has no attribute {name!r}")
