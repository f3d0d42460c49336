"""Built-in metrics: every metric of :mod:`xt_training.metrics` under a kebab-case name.

Plugin module (``register_metrics``). ``loss`` and ``mean`` build :class:`~xt_training.metrics.Loss` and
:class:`~xt_training.metrics.Mean` around a function named by a string, since a command line cannot
pass a function.
"""

from __future__ import annotations

from typing import Any

from .. import registry
from ..hookspecs import hookimpl

METRICS = {
    "accuracy": ("Accuracy", "fraction of correct predictions (binary, multiclass, multi-label)"),
    "top-k-accuracy": ("TopKAccuracy", "fraction of examples whose label is among the k top classes"),
    "roc-auc": ("ROC_AUC", "area under the ROC curve over the whole epoch"),
    "f1": ("F1", "F1 score (two classes: the positive class's; more: macro average)"),
    "precision": ("Precision", "precision (two classes: the positive class's; more: macro average)"),
    "recall": ("Recall", "recall (two classes: the positive class's; more: macro average)"),
    "kappa": ("Kappa", "Cohen's kappa"),
    "confusion-matrix": ("ConfusionMatrix", "confusion matrix (rows: true class)"),
    "eps": ("EPS", "examples per second"),
}


def loss_metric(*, loss: str = "cross-entropy", **options: Any) -> Any:
    """The epoch mean of a registered loss (``xt list losses``), e.g. an L1 error beside an MSE training loss.

    Args:
        loss: the registered loss's name; any other option goes to that loss.
    """
    from ..metric_contract import Loss  # lazy: imports torch (this module is loaded by `xt list`)

    return Loss(registry.create("loss", loss, **options))


def mean_metric(*, fn: str, higher_is_better: bool | None = None) -> Any:
    """The epoch mean of a function ``fn(y_pred, y) -> scalar`` named as ``'module:attr'``.

    Args:
        fn: the function, as ``'module:attr'`` (its module importable).
        higher_is_better: which way it improves (needed to monitor it without ``--mode``).
    """
    from ..metric_contract import Mean  # lazy: imports torch (this module is loaded by `xt list`)

    return Mean(registry.load_object(fn), higher_is_better=higher_is_better)


@hookimpl
def register_metrics(register: Any) -> None:
    for name, (cls, description) in METRICS.items():
        register(name, f"xt_training.metrics:{cls}", description=description)
    register("loss", loss_metric, description="the epoch mean of a registered loss (loss=NAME)")
    register(
        "mean", mean_metric, description="the epoch mean of a function fn='module:attr'", imports=("fn",)
    )
