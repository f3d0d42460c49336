"""Models of the problem shapes beyond classification: a small U-Net, a text classifier, a sequence tagger.

Plain ``nn.Module`` classes with keyword options, like :mod:`~xt_training.builtins.nets`; the CLI fills
``in_channels``, ``num_classes`` and ``vocab_size`` from the data set.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from ..errors import ConfigError

__all__ = ["UNet", "TextClassifier", "SequenceTagger"]


def _block(c_in: int, c_out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
        nn.Conv2d(c_out, c_out, 3, padding=1),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    )


class UNet(nn.Module):
    """A small U-Net: per-pixel class logits ``(N, num_classes, H, W)`` for images ``(N, in_channels, H, W)``.

    Each entry of ``channels`` is one resolution: two 3x3 convolutions, then (but for the last) a 2x2
    max-pool down; the way up upsamples, concatenates the skip connection of the same resolution and
    applies two convolutions again. Any ``H, W`` works (odd sizes are matched by interpolation).

    Args:
        in_channels: channels of the input images (the data's ``in_channels``).
        num_classes: classes per pixel, one logit each (the data's ``num_classes``).
        channels: the channels of each resolution, from the finest down; two or more.
    """

    def __init__(self, *, in_channels: int = 3, num_classes: int = 2, channels: Sequence[int] = (16, 32, 64)):
        super().__init__()
        channels = list(channels)
        if len(channels) < 2 or not all(isinstance(c, int) and c > 0 for c in channels):
            raise ConfigError(f"channels must be two or more positive integers, got {channels!r}")
        self.down = nn.ModuleList()
        c = in_channels
        for out in channels:
            self.down.append(_block(c, out))
            c = out
        self.up = nn.ModuleList()
        self.merge = nn.ModuleList()
        for skip in reversed(channels[:-1]):
            self.up.append(nn.ConvTranspose2d(c, skip, 2, stride=2))
            self.merge.append(_block(2 * skip, skip))
            c = skip
        self.head = nn.Conv2d(c, num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, block in enumerate(self.down):
            x = block(x)
            if i < len(self.down) - 1:
                skips.append(x)
                x = nn.functional.max_pool2d(x, 2)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips)):
            x = up(x)
            if x.shape[-2:] != skip.shape[-2:]:
                x = nn.functional.interpolate(x, size=skip.shape[-2:], mode="nearest")
            x = merge(torch.cat([skip, x], dim=1))
        return self.head(x)


class TextClassifier(nn.Module):
    """Embedding + GRU text classifier: ``model(input_ids, attention_mask)`` -> logits ``(N, num_classes)``.

    Reads the GRU's output at each text's last real token (``attention_mask`` marks them; right padding),
    so a text's logits do not depend on how much its batch was padded.

    Args:
        vocab_size: the tokenizer's vocabulary size (the data's ``vocab_size``); token 0 is padding.
        num_classes: output logits (the data's ``num_classes``).
        embed_dim: features of each token's embedding.
        hidden_size: features of the GRU's state.
        num_layers: stacked GRU layers.
        dropout: dropout probability between stacked layers (needs ``num_layers`` > 1).
    """

    def __init__(
        self,
        *,
        vocab_size: int = 1000,
        num_classes: int = 2,
        embed_dim: int = 64,
        hidden_size: int = 64,
        num_layers: int = 1,
        dropout: float = 0.0,
    ):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden_size, num_layers, batch_first=True, dropout=dropout)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None) -> torch.Tensor:
        outputs, _ = self.gru(self.embedding(input_ids))  # (N, T, H)
        if attention_mask is None:
            last = outputs[:, -1]
        else:  # the last real step of each row; no host sync
            index = (attention_mask.sum(1).clamp(min=1) - 1).view(-1, 1, 1).expand(-1, 1, outputs.shape[2])
            last = outputs.gather(1, index).squeeze(1)
        return self.fc(last)


class SequenceTagger(nn.Module):
    """Embedding + GRU tagger (the seed's RNNModel): per-step logits, flattened to ``(N * T, num_classes)``.

    Unidirectional, so a step's logits depend on it and the steps before it only (padding after a
    sequence changes nothing). Flattened as the seed's model does; the data's ``forward_fn`` flattens the
    targets to match.

    Args:
        vocab_size: the number of distinct tokens (the data's ``vocab_size``); token 0 is padding.
        num_classes: tags, one logit each per step (the data's ``num_classes``).
        embed_dim: features of each token's embedding.
        hidden_size: features of the GRU's state.
        num_layers: stacked GRU layers.
    """

    def __init__(
        self,
        *,
        vocab_size: int = 1000,
        num_classes: int = 5,
        embed_dim: int = 32,
        hidden_size: int = 64,
        num_layers: int = 1,
    ):
        super().__init__()
        self.num_classes = num_classes
        self.embedding = nn.Embedding(vocab_size, embed_dim, padding_idx=0)
        self.gru = nn.GRU(embed_dim, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.gru(self.embedding(x))
        return self.fc(outputs).contiguous().view(-1, self.num_classes)
