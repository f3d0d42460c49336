"""Semantic segmentation: per-pixel class logits ``(N, C, H, W)`` against masks ``(N, H, W)``; IoU and Dice
over every pixel of the epoch. The model is a plain fully convolutional ``nn.Module``.

Run: ``python examples/segmentation.py --save-dir runs/segmentation`` (or ``xt run --model unet --data
synthetic-segmentation``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from xt_training import create_data, metrics
from xt_training.utils import functional as F


class TinyFCN(nn.Module):
    """Convolutions that keep the resolution, then a 1x1 convolution to class logits."""

    def __init__(self, in_channels: int = 3, num_classes: int = 3, width: int = 16):
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=2, dilation=2),
            nn.ReLU(),
            nn.Conv2d(width, num_classes, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def main(
    save_dir: str = "runs/segmentation", *, n_samples: int = 600, epochs: int = 5, quiet: bool = False
) -> Any:
    data = create_data("synthetic-segmentation", n_samples=n_samples, image_size=32)
    torch.manual_seed(0)
    model = TinyFCN(num_classes=data.info["num_classes"])
    history = F.train(
        save_dir,
        data.loaders["train"],
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        epochs,
        nn.CrossEntropyLoss(),  # takes (N, C, H, W) logits and (N, H, W) class masks as they are
        val_loader=data.loaders["val"],
        eval_metrics={"iou": metrics.IoU(), "dice": metrics.Dice()},
        monitor="val/iou",
        quiet=quiet,
    )
    masks = F.predict(model, data.loaders["test"]).argmax(1)  # (N, H, W) predicted classes
    return history, model, data, masks


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/segmentation")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    history, *_ = main(args.save_dir, epochs=args.epochs)
    print(f"validation mean IoU {history[-1]['val/iou']:.3f}")
