"""Synthetic data sets of the problem shapes beyond classification: regression, multi-label, segmentation, tagging.

Like the classification sets in :mod:`~xt_training.builtins.datasets`, each is generated from its options
alone (``seed`` included, never the global RNG), lives in tensors (``TensorDataset``, so the loop's fast path
applies) and returns :class:`~xt_training.registry.Data` with the suggested loss and metrics. ``num_classes``
in ``info`` is the width of the model's output, the name the built-in models take it by.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from ..errors import ConfigError
from ..registry import Data
from .datasets import _check, _loaders, _split_sizes

__all__ = [
    "synthetic_regression",
    "synthetic_multilabel",
    "synthetic_segmentation",
    "synthetic_tagging",
    "tagging_forward",
    "IGNORE_INDEX",
]

#: the target of padded positions: ``CrossEntropyLoss`` ignores it by default, metrics via ``ignore_index``
IGNORE_INDEX = -100


def synthetic_regression(
    *,
    n_samples: int = 2000,
    n_features: int = 10,
    n_targets: int = 1,
    noise: float = 0.1,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
) -> Data:
    """Tabular regression: targets ``(N, n_targets)`` are a random linear map of Gaussian features plus noise.

    The map has unit output variance, so ``noise`` is the noise-to-signal ratio of the standard deviations
    and a perfect model reaches an R² of about ``1 / (1 + noise**2)``.

    Args:
        n_samples: examples generated, before the split.
        n_features: features per row.
        n_targets: targets per row.
        noise: the noise's standard deviation relative to the targets' (more: harder).
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, n_features, generator=g)
    w = torch.randn(n_features, n_targets, generator=g) / math.sqrt(n_features)
    y = x @ w + noise * torch.randn(n_samples, n_targets, generator=g)
    sizes = _split_sizes(n_samples, val_fraction, test_fraction)
    info = {"num_classes": n_targets, "in_features": n_features}
    return Data(_loaders(x, y, sizes, batch_size), info, loss="mse", metrics=["mse", "mae", "r2"])


def synthetic_multilabel(
    *,
    n_samples: int = 2000,
    n_features: int = 20,
    num_labels: int = 5,
    noise: float = 0.5,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
) -> Data:
    """Multi-label rows: label ``j`` is on (1.0) when a random linear score ``j`` plus noise is positive.

    Targets are float 0/1 of shape ``(N, num_labels)``, the shape of the logits, so the metrics infer the
    multi-label task; any number of labels may be on at once.

    Args:
        n_samples: examples generated, before the split.
        n_features: features per row.
        num_labels: labels, each on or off.
        noise: standard deviation of the noise added to the scores (more: harder).
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, n_features, generator=g)
    w = torch.randn(n_features, num_labels, generator=g) / math.sqrt(n_features)
    y = (x @ w + noise * torch.randn(n_samples, num_labels, generator=g) > 0).float()
    sizes = _split_sizes(n_samples, val_fraction, test_fraction)
    info = {"num_classes": num_labels, "in_features": n_features}
    return Data(
        _loaders(x, y, sizes, batch_size),
        info,
        loss="bce-with-logits",
        metrics=["f1", "accuracy", "roc-auc"],
    )


SHAPES = ("rectangle", "disk")


def synthetic_segmentation(
    *,
    n_samples: int = 600,
    image_size: int = 32,
    max_shapes: int = 3,
    noise: float = 0.3,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 16,
    seed: int = 0,
) -> Data:
    """Images ``(3, S, S)`` with 1 to ``max_shapes`` rectangles and disks drawn on a noisy background.

    The mask ``(S, S)`` gives each pixel's class: 0 background, 1 rectangle, 2 disk (a later shape covers
    an earlier one). Each kind has its own colour, varied per shape, plus per-pixel noise.

    Args:
        n_samples: examples generated, before the split.
        image_size: height and width of the square images.
        max_shapes: the most shapes drawn on one image.
        noise: standard deviation of the per-pixel noise.
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    if image_size < 8 or max_shapes < 1:
        raise ConfigError(f"image_size must be >= 8 and max_shapes >= 1, got {image_size} and {max_shapes}")
    g = torch.Generator().manual_seed(seed)
    colours = torch.rand(len(SHAPES), 3, generator=g) * 2 - 1
    rows = torch.arange(image_size).view(-1, 1).float()
    cols = torch.arange(image_size).view(1, -1).float()
    images = noise * torch.randn(n_samples, 3, image_size, image_size, generator=g)
    masks = torch.zeros(n_samples, image_size, image_size, dtype=torch.long)
    counts = torch.randint(1, max_shapes + 1, (n_samples,), generator=g)
    for i in range(n_samples):
        for _ in range(int(counts[i])):
            kind = int(torch.randint(0, len(SHAPES), (1,), generator=g))
            cy, cx = (torch.rand(2, generator=g) * image_size).tolist()
            half_h, half_w = (torch.rand(2, generator=g) * image_size / 4 + image_size / 10).tolist()
            if SHAPES[kind] == "rectangle":
                inside = ((rows - cy).abs() <= half_h) & ((cols - cx).abs() <= half_w)
            else:
                inside = (rows - cy) ** 2 + (cols - cx) ** 2 <= half_h**2
            colour = colours[kind] + 0.2 * torch.randn(3, generator=g)
            images[i][:, inside] = colour[:, None] + noise * torch.randn(3, int(inside.sum()), generator=g)
            masks[i][inside] = kind + 1
    sizes = _split_sizes(n_samples, val_fraction, test_fraction)
    info = {
        "num_classes": len(SHAPES) + 1,
        "classes": ["background", *SHAPES],
        "in_channels": 3,
        "image_size": image_size,
    }
    return Data(
        _loaders(images, masks, sizes, batch_size), info, loss="cross-entropy", metrics=["iou", "dice"]
    )


def synthetic_tagging(
    *,
    n_samples: int = 1000,
    vocab_size: int = 50,
    num_tags: int = 4,
    min_len: int = 4,
    max_len: int = 16,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 32,
    seed: int = 0,
) -> Data:
    """Sequence tagging: token ids ``(N, max_len)`` of varying length, one tag per token.

    A token's tag is its word class, shifted by one when the token before it is a "marker" word, so a
    model needs context, not just the token. Sequences are padded with token 0 and tag ``-100``
    (:data:`IGNORE_INDEX`). ``forward_fn`` is :func:`tagging_forward`: the model returns per-step logits
    flattened to ``(N * T, num_tags)`` (as the seed's RNNModel does), the targets are flattened to match
    and padded steps are left out.

    Args:
        n_samples: examples generated, before the split.
        vocab_size: distinct tokens, padding (0) included.
        num_tags: tags a token may have.
        min_len: the fewest tokens of a sequence.
        max_len: the most tokens of a sequence (the padded length).
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    if not 1 <= min_len <= max_len or vocab_size < 3 or num_tags < 2:
        raise ConfigError(
            "need 1 <= min_len <= max_len, vocab_size >= 3 and num_tags >= 2, got "
            f"min_len={min_len}, max_len={max_len}, vocab_size={vocab_size}, num_tags={num_tags}"
        )
    g = torch.Generator().manual_seed(seed)
    word_class = torch.randint(0, num_tags, (vocab_size,), generator=g)
    marker = torch.rand(vocab_size, generator=g) < 0.2
    marker[0] = False  # padding
    tokens = torch.randint(1, vocab_size, (n_samples, max_len), generator=g)
    lengths = torch.randint(min_len, max_len + 1, (n_samples,), generator=g)
    real = torch.arange(max_len) < lengths[:, None]
    after_marker = torch.cat([torch.zeros(n_samples, 1, dtype=torch.bool), marker[tokens[:, :-1]]], dim=1)
    tags = (word_class[tokens] + after_marker.long()) % num_tags
    x = torch.where(real, tokens, 0)
    y = torch.where(real, tags, IGNORE_INDEX)
    sizes = _split_sizes(n_samples, val_fraction, test_fraction)
    info = {"num_classes": num_tags, "vocab_size": vocab_size, "seq_len": max_len}
    return Data(
        _loaders(x, y, sizes, batch_size),
        info,
        loss="cross-entropy",
        metrics=["accuracy"],
        forward_fn=tagging_forward,
    )


def tagging_forward(model: torch.nn.Module, batch: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(x, y)`` token batches: per-step logits ``(N * T, C)`` and the flat tags, padded steps left out.

    Unlabelled batches (``x`` alone, for predictions) keep every step, padding included, so the
    predictions have ``N * T`` rows in the loader's order.
    """
    if isinstance(batch, torch.Tensor) or len(batch) == 1:
        x = batch if isinstance(batch, torch.Tensor) else batch[0]
        return model(x), None
    x, y = batch
    logits = model(x)  # (N * T, C): the seed's RNNModel flattens its per-step logits
    y = y.reshape(-1)
    if logits.shape[0] != y.shape[0]:
        raise ConfigError(
            f"the model returned {logits.shape[0]} rows of per-step logits for {y.shape[0]} steps; "
            "a tagging model returns (N * T, num_tags)"
        )
    keep = y != IGNORE_INDEX
    return logits[keep], y[keep]
