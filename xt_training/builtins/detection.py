"""Object detection in torchvision's format: ``synthetic-detection``, its ``forward_fn`` and the ``detection`` loss.

A torchvision detection model takes a list of images and, in training mode, their targets
(``{'boxes': (K, 4) x1 y1 x2 y2, 'labels': (K,)}`` per image) and returns its own loss dict; in eval mode
it returns ``{'boxes', 'scores', 'labels'}`` per image. The loop needs nothing special for that:
:func:`detection_forward` is the ``forward_fn`` that hands the targets to the model while training, and
:class:`DetectionLoss` sums the loss dict. Evaluation passes report no loss (the model computes none in
eval mode), so a run monitors a metric such as ``val/map``. The models come from the xt-vision plugin
(``fasterrcnn-mobilenet``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
from torch.utils.data import DataLoader

from ..errors import ConfigError, LossError
from ..registry import Data
from .datasets import _check, _split_sizes

__all__ = ["synthetic_detection", "collate_detection", "detection_forward", "DetectionLoss"]

COLOURS = {
    "red": (1.0, -0.6, -0.6),
    "green": (-0.6, 1.0, -0.6),
    "blue": (-0.6, -0.6, 1.0),
    "white": (1.0, 1.0, 1.0),
}


def synthetic_detection(
    *,
    n_samples: int = 200,
    image_size: int = 64,
    num_classes: int = 2,
    max_objects: int = 3,
    noise: float = 0.2,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 8,
    seed: int = 0,
) -> Data:
    """Images ``(3, S, S)`` with 1 to ``max_objects`` filled rectangles on a noisy background, and their boxes.

    The rectangle's colour is its class (red, green, blue, white: labels 1 to ``num_classes``; 0 is the
    background, so ``info['num_classes']`` is ``num_classes + 1``, as torchvision's models count).
    Batches are ``(images, targets)``: lists, one entry per image.

    Args:
        n_samples: examples generated, before the split.
        image_size: height and width of the square images.
        num_classes: object classes, one colour each (background not counted).
        max_objects: the most rectangles drawn on one image.
        noise: standard deviation of the per-pixel noise.
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    names = list(COLOURS)
    if not 1 <= num_classes <= len(names) or max_objects < 1 or image_size < 16:
        raise ConfigError(
            f"num_classes must be 1 to {len(names)}, max_objects >= 1 and image_size >= 16, got "
            f"num_classes={num_classes}, max_objects={max_objects}, image_size={image_size}"
        )
    g = torch.Generator().manual_seed(seed)
    colours = torch.tensor([COLOURS[n] for n in names[:num_classes]])
    examples = []
    for _ in range(n_samples):
        image = noise * torch.randn(3, image_size, image_size, generator=g)
        count = int(torch.randint(1, max_objects + 1, (1,), generator=g))
        sizes = torch.randint(image_size // 6, image_size // 2 + 1, (count, 2), generator=g)
        x1 = (torch.rand(count, generator=g) * (image_size - sizes[:, 0])).long()
        y1 = (torch.rand(count, generator=g) * (image_size - sizes[:, 1])).long()
        labels = torch.randint(1, num_classes + 1, (count,), generator=g)
        boxes = torch.stack([x1, y1, x1 + sizes[:, 0], y1 + sizes[:, 1]], dim=1)
        for (a, b, c, d), label in zip(boxes.tolist(), labels.tolist()):
            image[:, b:d, a:c] = colours[label - 1][:, None, None]  # a later object covers an earlier one
        examples.append((image, {"boxes": boxes.float(), "labels": labels}))
    n_train, n_val, _ = _split_sizes(n_samples, val_fraction, test_fraction)
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n_samples)}
    loaders = {
        split: DataLoader(examples[a:b], batch_size, shuffle=split == "train", collate_fn=collate_detection)
        for split, (a, b) in bounds.items()
        if b > a
    }
    info = {
        "num_classes": num_classes + 1,
        "classes": ["background", *names[:num_classes]],
        "in_channels": 3,
        "image_size": image_size,
    }
    return Data(
        loaders,
        info,
        loss="detection",
        metrics=["map"],
        forward_fn=detection_forward,
        monitor="val/map",
    )


def collate_detection(items: list[Any]) -> Any:
    """``[(image, target), ...]`` -> ``(images, targets)``, both lists (images may differ in size)."""
    if items and isinstance(items[0], torch.Tensor):
        return list(items)  # unlabelled images
    images, targets = zip(*items)
    return list(images), list(targets)


def detection_forward(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    """Feed ``(images, targets)`` to a torchvision-style detection model: with the targets while training.

    Training mode returns the model's loss dict, eval mode its detections. A batch of images alone
    (unlabelled, for predictions) gives detections and no targets.
    """
    if isinstance(batch, tuple) and len(batch) == 2 and isinstance(batch[1], list):
        images, targets = batch
    else:
        images, targets = batch, None
    if model.training:
        if targets is None:
            raise ConfigError("a detection model needs (images, targets) batches to train")
        return model(images, targets), targets
    return model(images), targets


class DetectionLoss:
    """The loss of a model that computes its own losses: the (weighted) sum of its loss dict.

    Given detections instead of a loss dict (a model in eval mode) it returns ``None``: the pass reports
    no loss.

    Args:
        weights: factors of single terms, e.g. ``{'loss_classifier': 2.0}``; the others count once.
    """

    def __init__(self, *, weights: dict[str, float] | None = None):
        self.weights = dict(weights or {})

    def __call__(self, y_pred: Any, y: Any) -> torch.Tensor | None:
        if not isinstance(y_pred, Mapping):
            return None
        if not y_pred:
            raise LossError(
                "the model returned an empty loss dict; is it a detection model in training mode?"
            )
        unknown = sorted(set(self.weights) - set(y_pred))
        if unknown:
            raise LossError(f"weights name {unknown} but the model's losses are {sorted(y_pred)}")
        return sum(value * self.weights.get(name, 1.0) for name, value in y_pred.items())
