"""Expected calibration error and Brier score, following xt-training's metric contract.

``update(y_pred, y)`` receives predictions and integer labels of several batches at once and adds them
to running sums kept on the predictions' device (no host synchronisation); ``compute()`` returns the
value over everything since ``reset()``.

Predictions are binary (``(N,)`` or ``(N, 1)``: the probability or logit of class 1) or multiclass
(``(N, C)``). With ``from_logits=None`` they count as probabilities when every value is in [0, 1] (and,
for multiclass, every row sums to 1), otherwise as logits (sigmoid / softmax), as torchmetrics decides.
"""

from __future__ import annotations

from typing import Literal

import torch

__all__ = ["ExpectedCalibrationError", "BrierScore"]


def probabilities(y_pred: torch.Tensor, from_logits: bool | None) -> torch.Tensor:
    """``(N, C)`` class probabilities; binary predictions become two columns ``[1 - p, p]``."""
    if not isinstance(y_pred, torch.Tensor) or y_pred.ndim not in (1, 2):
        shape = tuple(y_pred.shape) if isinstance(y_pred, torch.Tensor) else type(y_pred).__name__
        raise ValueError(f"predictions must be (N,), (N, 1) or (N, C), got {shape}")
    y_pred = y_pred.detach().float()
    binary = y_pred.ndim == 1 or y_pred.shape[1] == 1
    if binary:
        p = y_pred.reshape(-1)
        if from_logits or (from_logits is None and not bool(((p >= 0) & (p <= 1)).all())):
            p = p.sigmoid()
        return torch.stack([1 - p, p], dim=1)
    if from_logits is None:
        in_range = bool(((y_pred >= 0) & (y_pred <= 1)).all())
        from_logits = not (in_range and torch.allclose(y_pred.sum(1), torch.ones(()), atol=1e-3))
    return y_pred.softmax(1) if from_logits else y_pred


def _labels(y: torch.Tensor, probs: torch.Tensor) -> torch.Tensor:
    y = y.reshape(-1).long()
    if y.shape[0] != probs.shape[0]:
        raise ValueError(f"{probs.shape[0]} predictions but {y.shape[0]} labels")
    if bool(((y < 0) | (y >= probs.shape[1])).any()):
        raise ValueError(f"labels must be class indices in [0, {probs.shape[1] - 1}]")
    return y


class ExpectedCalibrationError:
    """Expected calibration error: how far confidence is from accuracy, over equal-width confidence bins.

    The confidence of an example is the probability of its predicted class, a hit is a correct
    prediction. With ``norm='l1'`` the value is ``sum_b n_b / N * |accuracy_b - confidence_b|``; with
    ``norm='max'`` the largest gap of a non-empty bin (maximum calibration error). Bins are
    ``[b / n_bins, (b + 1) / n_bins)``, the last one closed.
    """

    higher_is_better = False  # an error: a run monitoring it keeps its lowest epoch

    def __init__(self, n_bins: int = 15, norm: Literal["l1", "max"] = "l1", from_logits: bool | None = None):
        if isinstance(n_bins, bool) or not isinstance(n_bins, int) or n_bins < 1:
            raise ValueError(f"n_bins must be a positive integer, got {n_bins!r}")
        if norm not in ("l1", "max"):
            raise ValueError(f"norm must be 'l1' or 'max', got {norm!r}")
        self.n_bins, self.norm, self.from_logits = n_bins, norm, from_logits
        self.reset()

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        probs = probabilities(y_pred, self.from_logits)
        confidence, predicted = probs.max(1)
        hits = (predicted == _labels(y, probs)).float()
        bins = (confidence * self.n_bins).long().clamp(0, self.n_bins - 1)
        if self._count is None:
            self._count, self._confidence, self._hits = (probs.new_zeros(self.n_bins) for _ in range(3))
        self._count.index_add_(0, bins, torch.ones_like(confidence))
        self._confidence.index_add_(0, bins, confidence)
        self._hits.index_add_(0, bins, hits)

    def compute(self) -> torch.Tensor:
        if self._count is None or not bool(self._count.any()):
            return torch.tensor(float("nan"))
        seen = self._count > 0
        count = self._count[seen]
        gaps = (self._hits[seen] / count - self._confidence[seen] / count).abs()
        return gaps.max() if self.norm == "max" else (gaps * count).sum() / count.sum()

    def reset(self) -> None:
        self._count: torch.Tensor | None = None
        self._confidence: torch.Tensor | None = None
        self._hits: torch.Tensor | None = None


class BrierScore:
    """Brier score: the mean over examples of ``sum_c (p_c - [y == c])^2``.

    Multiclass values lie in [0, 2]. Binary predictions give the classic ``(p - y)^2`` in [0, 1]
    (the two-column sum would double it).
    """

    higher_is_better = False

    def __init__(self, from_logits: bool | None = None):
        self.from_logits = from_logits
        self.reset()

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        binary = y_pred.ndim == 1 or (y_pred.ndim == 2 and y_pred.shape[1] == 1)
        probs = probabilities(y_pred, self.from_logits)
        onehot = torch.nn.functional.one_hot(_labels(y, probs), probs.shape[1]).to(probs.dtype)
        errors = ((probs - onehot) ** 2).sum(1) / (2 if binary else 1)
        self._sum = errors.sum() if self._sum is None else self._sum + errors.sum()
        self._n += errors.shape[0]

    def compute(self) -> torch.Tensor:
        return self._sum / self._n if self._n else torch.tensor(float("nan"))

    def reset(self) -> None:
        self._sum: torch.Tensor | None = None
        self._n = 0
