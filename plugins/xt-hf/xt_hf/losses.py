"""The losses of token-level tasks, equal to what a ``transformers`` model returns as ``.loss`` given its labels.

Positions labelled ``-100`` (padding, a word's later pieces) count for nothing, as in ``transformers``.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from xt_training.errors import LossError

IGNORE = -100


def token_cross_entropy() -> Any:
    """Cross-entropy of every labelled token: logits ``(N, T, C)``, labels ``(N, T)``."""
    return _token_loss


def next_token_cross_entropy() -> Any:
    """Cross-entropy of each token's logits against the next token: logits ``(N, T, V)``, labels ``(N, T)``."""
    return _next_token_loss


def _token_loss(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    if y_pred.ndim != 3 or y_pred.shape[:2] != y.shape:
        raise LossError(
            f"token losses take logits (N, T, C) and labels (N, T); got {tuple(y_pred.shape)} and {tuple(y.shape)}"
        )
    return F.cross_entropy(y_pred.flatten(0, 1).float(), y.flatten(), ignore_index=IGNORE)


def _next_token_loss(y_pred: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return _token_loss(y_pred[:, :-1], y[:, 1:])


class TokenAccuracy:
    """The share of labelled tokens (label not ``-100``) whose highest logit is their label."""

    higher_is_better = True

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.right, self.total = 0, 0

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        if isinstance(y, list):  # batches of different lengths, concatenated as lists of examples
            for p, t in zip(y_pred, y):
                self.update(p[None], t[None])
            return
        kept = y != IGNORE
        self.right += int((y_pred.argmax(-1)[kept] == y[kept]).sum())
        self.total += int(kept.sum())

    def compute(self) -> torch.Tensor:
        return torch.tensor(self.right / self.total if self.total else float("nan"))


def token_accuracy() -> TokenAccuracy:
    """Accuracy over the labelled tokens of token classification."""
    return TokenAccuracy()
