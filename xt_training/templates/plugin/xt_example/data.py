"""The data set ``example-blobs``: generated, so nothing is downloaded."""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader, TensorDataset

from xt_training.registry import Data


def blobs(
    *, n_samples: int = 600, n_features: int = 4, num_classes: int = 3, batch_size: int = 32, seed: int = 0
) -> Data:
    """One Gaussian blob per class around a random centre; 2/3 of the examples train, 1/3 validate.

    Args:
        n_samples: examples generated.
        n_features: features per example.
        num_classes: classes (blobs).
        batch_size: examples per batch (the CLI passes ``--batch-size``).
        seed: seeds the generated data, so every run sees the same examples.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(num_classes, (n_samples,), generator=g)
    centres = 3 * torch.randn(num_classes, n_features, generator=g)
    x = centres[y] + torch.randn(n_samples, n_features, generator=g)
    cut = 2 * n_samples // 3
    loaders = {
        "train": DataLoader(TensorDataset(x[:cut], y[:cut]), batch_size=batch_size, shuffle=True),
        "val": DataLoader(TensorDataset(x[cut:], y[cut:]), batch_size=batch_size),
    }
    # info: what the model factory may take (by parameter name); loss and metrics: the defaults of a run
    info = {"in_features": n_features, "num_classes": num_classes}
    return Data(loaders, info, loss="cross-entropy", metrics=["accuracy"])
