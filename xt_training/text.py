"""Batches of raw text for any Hugging Face-style tokenizer: ``tokenizer(texts, padding=True, return_tensors='pt')``.

Generic engine code: the built-in ``synthetic-text`` data, plugins' text data and ``xt predict`` of a run
that saved a tokenizer all batch texts with these, and feed them to the model as ``model(**inputs)``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch.utils.data import Dataset

__all__ = ["TextDataset", "TextCollate", "text_forward"]


class TextDataset(Dataset):
    """Texts, with labels (``(text, label)`` items) or without (``text`` items, for predictions)."""

    def __init__(self, texts: Sequence[str], labels: Sequence[int] | None = None):
        self.texts, self.labels = list(texts), None if labels is None else list(labels)

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, i: int) -> Any:
        return self.texts[i] if self.labels is None else (self.texts[i], self.labels[i])


class TextCollate:
    """Tokenizes a batch of texts: ``(inputs, labels)``, or ``inputs`` alone for unlabelled texts."""

    def __init__(self, tokenizer: Any):
        self.tokenizer = tokenizer

    def __call__(self, items: list[Any]) -> Any:
        if items and isinstance(items[0], str):
            return dict(self.tokenizer(items, padding=True, return_tensors="pt"))
        texts, labels = zip(*items)
        return dict(self.tokenizer(list(texts), padding=True, return_tensors="pt")), torch.tensor(labels)


def text_forward(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    """``model(**inputs)`` for ``(inputs, labels)`` batches of tokenizer outputs, or ``inputs`` alone; of a
    Hugging Face model's output (a ``ModelOutput``), its ``.logits``."""
    inputs, labels = (batch, None) if isinstance(batch, Mapping) else batch
    output = model(**inputs)
    return getattr(output, "logits", output), labels
