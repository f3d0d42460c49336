"""The built-in models: an MLP, the seed's CNN and RNN generalised. Plain ``nn.Module`` classes.

Every option is a keyword argument, so ``create_model('cnn', num_classes=5)`` and
``xt run --model cnn --model-opt channels=(8,16)`` name them directly. The CLI fills ``in_features``,
``in_channels``, ``image_size``, ``input_size`` and ``num_classes`` from the data set.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["MLP", "CNN", "RNNClassifier"]


def _sizes(name: str, value: int | Sequence[int]) -> list[int]:
    sizes = [value] if isinstance(value, int) else list(value)
    if not all(isinstance(s, int) and s > 0 for s in sizes):
        raise ConfigError(f"{name} must be positive integers, got {value!r}")
    return sizes


def _head(in_features: int, hidden: list[int], num_classes: int, dropout: float) -> list[nn.Module]:
    """Linear-ReLU(-Dropout) blocks through ``hidden`` sizes, then the linear output layer."""
    layers: list[nn.Module] = []
    for size in hidden:
        layers += [nn.Linear(in_features, size), nn.ReLU()]
        layers += [nn.Dropout(dropout)] if dropout else []
        in_features = size
    return [*layers, nn.Linear(in_features, num_classes)]


class MLP(nn.Sequential):
    """Multi-layer perceptron on flattened inputs (tabular rows, images or sequences alike).

    Args:
        in_features: numbers per example once flattened (the data's ``in_features``).
        num_classes: output logits (the data's ``num_classes``).
        hidden: the sizes of the hidden layers, one Linear-ReLU block each, e.g. ``(256, 128)``.
        dropout: dropout probability after each hidden layer (0: none).
    """

    def __init__(
        self,
        *,
        in_features: int = 20,
        num_classes: int = 3,
        hidden: int | Sequence[int] = (128,),
        dropout: float = 0.0,
    ):
        in_features, num_classes = _sizes("in_features and num_classes", [in_features, num_classes])
        super().__init__(nn.Flatten(), *_head(in_features, _sizes("hidden", hidden), num_classes, dropout))


class CNN(nn.Module):
    """The seed's CVModel generalised: conv-ReLU-maxpool blocks, then fully connected layers.

    With the defaults it is exactly the seed's model for 3x32x32 images and 10 classes:
    ``Conv2d(3, 6, 5) -> pool -> Conv2d(6, 16, 5) -> pool -> Linear(400, 120) -> Linear(120, 10)``.

    Args:
        in_channels: channels of the input images (the data's ``in_channels``).
        image_size: height and width of the input images, one number for square ones (the data's).
        num_classes: output logits (the data's ``num_classes``).
        channels: the output channels of the conv blocks, one conv-ReLU-maxpool block each.
        kernel_size: the convolutions' kernel size (no padding: each block shrinks the image).
        hidden: the sizes of the fully connected hidden layers.
        dropout: dropout probability after each fully connected hidden layer (0: none).
    """

    def __init__(
        self,
        *,
        in_channels: int = 3,
        image_size: int | tuple[int, int] = 32,
        num_classes: int = 10,
        channels: int | Sequence[int] = (6, 16),
        kernel_size: int = 5,
        hidden: int | Sequence[int] = (120,),
        dropout: float = 0.0,
    ):
        super().__init__()
        height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
        blocks: list[nn.Module] = []
        c = in_channels
        for out in _sizes("channels", channels):
            height, width = (height - kernel_size + 1) // 2, (width - kernel_size + 1) // 2
            if height < 1 or width < 1:
                raise ConfigError(
                    f"image_size {image_size!r} is too small for {len(_sizes('channels', channels))} "
                    f"conv blocks of kernel_size {kernel_size}; use fewer channels or a smaller kernel_size"
                )
            blocks += [nn.Conv2d(c, out, kernel_size), nn.ReLU(), nn.MaxPool2d(2, 2)]
            c = out
        self.features = nn.Sequential(*blocks)
        self.classifier = nn.Sequential(
            nn.Flatten(), *_head(c * height * width, _sizes("hidden", hidden), num_classes, dropout)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class RNNClassifier(nn.Module):
    """Sequence classifier (the seed's RNNModel): an RNN, LSTM or GRU over ``(N, T, F)`` inputs.

    The logits come from the last time step (both directions' final states when bidirectional); the
    initial hidden state is zeros of the batch's size, so any batch size works.

    Args:
        input_size: features per time step (the data's ``input_size``).
        num_classes: output logits (the data's ``num_classes``).
        hidden_size: features of the recurrent state.
        num_layers: stacked recurrent layers.
        cell: the recurrent cell: ``'rnn'``, ``'lstm'`` or ``'gru'``.
        bidirectional: also read each sequence backwards.
        dropout: dropout probability between stacked layers (needs ``num_layers`` > 1).
    """

    def __init__(
        self,
        *,
        input_size: int = 32,
        num_classes: int = 2,
        hidden_size: int = 128,
        num_layers: int = 2,
        cell: Literal["rnn", "lstm", "gru"] = "gru",
        bidirectional: bool = False,
        dropout: float = 0.0,
    ):
        super().__init__()
        rnn = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[cell]
        self.rnn = rnn(
            input_size,
            hidden_size,
            num_layers,
            batch_first=True,
            bidirectional=bidirectional,
            dropout=dropout,
        )
        self.fc = nn.Linear(hidden_size * (2 if bidirectional else 1), num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        _, hidden = self.rnn(x)
        if isinstance(hidden, tuple):  # LSTM: (h, c)
            hidden = hidden[0]
        directions = 2 if self.rnn.bidirectional else 1
        last_layer = hidden[-directions:]  # (directions, N, H)
        return self.fc(torch.cat(list(last_layer), dim=1))
