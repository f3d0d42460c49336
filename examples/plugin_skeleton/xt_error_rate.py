"""An xt-training plugin in one file: the metric ``error-rate``, the fraction of wrong predictions.

Two parts. The metric is a plain class with the metric contract -- ``update(y_pred, y)`` accumulates,
``compute()`` returns the value over everything since ``reset()``, ``higher_is_better`` says which way
it improves -- and needs no xt-training import.
The hook ``register_metrics`` gives it a name. It names the class as a ``"module:attr"`` string, so
``xt list`` and ``xt --help`` register the name without importing torch; the class is imported when a
run uses the metric.
"""

from __future__ import annotations

from typing import Any

from xt_training import hookimpl


class ErrorRate:
    """Fraction of examples whose predicted class (the argmax of ``(N, C)`` logits) is not the label.

    ``update`` receives several batches at once and adds to counts kept on the predictions' device:
    no host-device synchronisation until ``compute()``.
    """

    higher_is_better = False  # which way it improves: a run that monitors it keeps its lowest epoch

    def __init__(self) -> None:
        self.reset()

    def update(self, y_pred: Any, y: Any) -> None:
        wrong = (y_pred.argmax(1) != y).sum()
        self.wrong = wrong if self.wrong is None else self.wrong + wrong
        self.total += y.shape[0]

    def compute(self) -> Any:
        return self.wrong.float() / self.total if self.total else float("nan")

    def reset(self) -> None:
        self.wrong = None
        self.total = 0


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "error-rate", "xt_error_rate:ErrorRate", description="fraction of wrong predictions (1 - accuracy)"
    )
