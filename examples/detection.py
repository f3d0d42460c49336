"""Object detection with a torchvision model that computes its own losses -- through the unchanged loop.

torchvision's detection models take ``(images, targets)`` while training and return a loss dict; in eval mode
they take images and return boxes. The loop's one way to feed a batch, ``forward_fn(model, batch) ->
(y_pred, y)``, covers it: hand the targets to the model while training. The loss sums the loss dict; the
evaluation passes report no loss (the model computes none in eval mode), so the best checkpoint follows
``val/map``. Needs pycocotools for the metric (``pip install pycocotools``).

Run: ``python examples/detection.py --save-dir runs/detection`` (or, with the xt-vision plugin,
``xt run --model fasterrcnn-mobilenet --data synthetic-detection``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torchvision

from xt_training import create_data, metrics
from xt_training.utils import functional as F


def forward_fn(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    images, targets = batch  # lists: one image tensor and one {'boxes', 'labels'} dict per image
    if model.training:
        return model(images, targets), targets  # the loss dict
    return model(images), targets  # the detections: {'boxes', 'scores', 'labels'} per image


def loss_fn(y_pred: Any, y: Any) -> torch.Tensor | None:
    if isinstance(y_pred, dict):
        return sum(y_pred.values())
    return None  # eval mode: no loss to report


def main(
    save_dir: str = "runs/detection", *, n_samples: int = 200, epochs: int = 5, quiet: bool = False
) -> Any:
    data = create_data("synthetic-detection", n_samples=n_samples, image_size=64, batch_size=4)
    torch.manual_seed(0)
    model = torchvision.models.detection.fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=data.info["num_classes"], min_size=64, max_size=64
    )
    history = F.train(
        save_dir,
        data.loaders["train"],
        model,
        torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
        epochs,
        loss_fn,
        val_loader=data.loaders["val"],
        eval_metrics={"map": metrics.MeanAveragePrecision()},
        train_metrics={},  # in training mode the model returns losses, not boxes
        forward_fn=forward_fn,
        monitor="val/map",
        quiet=quiet,
    )
    detections = F.predict(model, data.loaders["test"], forward_fn=forward_fn)  # one dict per image
    return history, model, data, detections


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/detection")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    history, *_ = main(args.save_dir, epochs=args.epochs)
    print(f"training loss {history[0]['train/loss']:.3f} -> {history[-1]['train/loss']:.3f}")
