"""Shared fixtures: small learnable data sets generated on the spot (nothing is downloaded)."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

# Tests run on 2 CPU cores next to each other; one thread per process keeps them predictable.
torch.set_num_threads(1)


def make_classification(n: int = 512, features: int = 16, classes: int = 3, seed: int = 0):
    """Linearly separable-ish data: the label is the argmax of a fixed random projection."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return x, (x @ w).argmax(1)


@pytest.fixture
def tabular():
    """(train_loader, val_loader, n_features, n_classes)."""
    x, y = make_classification()
    train = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[384:], y[384:]), batch_size=32)
    return train, val, 16, 3


def mlp(features: int = 16, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))
