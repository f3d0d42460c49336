"""The metric ``example-overconfident``: the metric contract, ``update``/``compute``/``reset``."""

from __future__ import annotations

from typing import Any

import torch


class Overconfident:
    """Fraction of examples classified wrongly with a probability of at least ``threshold``: the errors a
    user would have trusted. ``y_pred`` holds ``(N, C)`` logits, ``y`` the labels.

    ``update`` receives several batches at once and adds to counts kept on the predictions' device: no
    host-device synchronisation until ``compute()``.

    Args:
        threshold: the probability (of the predicted class) from which a prediction counts as confident.
    """

    higher_is_better = False  # which way it improves: a run that monitors it keeps its lowest epoch

    def __init__(self, threshold: float = 0.9) -> None:
        self.threshold = threshold
        self.reset()

    def update(self, y_pred: Any, y: Any) -> None:
        confidence, predicted = torch.softmax(y_pred.float(), dim=1).max(dim=1)
        count = ((predicted != y) & (confidence >= self.threshold)).sum()
        self.count = count if self.count is None else self.count + count
        self.total += y.shape[0]

    def compute(self) -> Any:
        return self.count.float() / self.total if self.total else float("nan")

    def reset(self) -> None:
        self.count = None
        self.total = 0
