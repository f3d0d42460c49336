"""The model ``example-mlp``."""

from __future__ import annotations

from torch import nn


def mlp(*, in_features: int, num_classes: int, hidden: int = 32) -> nn.Module:
    """A two-layer perceptron.

    Args:
        in_features: inputs per example (the CLI passes the data's ``info['in_features']``).
        num_classes: outputs, one logit per class (from the data's ``info``).
        hidden: width of the hidden layer.
    """
    return nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))
