"""The seed document's evaluation example: ``F.test`` on torchvision's ResNet-18 over a folder of images.

The seed evaluates a pretrained ResNet-18 on ``datasets.ImageFolder('path/to/images')``. Nothing is
downloaded here, so the model is ``resnet18(weights=None)`` -- random weights: expect chance-level
accuracy -- and the folder is generated first: ``--n-images`` PNGs in two class folders under
``--data-dir``. With your own folder and weights, drop ``write_images`` and load the weights
(``F.test(..., checkpoint_path=...)`` or ``resnet18(weights=...)``); the rest stays as it is.

Run: ``python examples/evaluate_resnet18.py [--n-images 64] [--image-size 256]``
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

from xt_training import metrics
from xt_training.utils import functional as F


def write_images(root: Path, n_images: int, size: int = 64, seed: int = 0) -> Path:
    """``n_images`` PNGs in ``root/bright`` and ``root/dark``: an ImageFolder with two classes."""
    from PIL import Image

    g = torch.Generator().manual_seed(seed)
    for i in range(n_images):
        label = ("dark", "bright")[i % 2]
        level = 0.3 + 0.4 * (i % 2)
        pixels = (level + 0.2 * torch.randn(size, size, 3, generator=g)).clamp(0, 1)
        (root / label).mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255).to(torch.uint8).numpy()).save(root / label / f"{i}.png")
    return root


def main(data_dir: str | Path, *, n_images: int = 64, image_size: int = 256, batch_size: int = 32) -> Any:
    write_images(Path(data_dir), n_images)

    # From here on, the seed's example (with weights=None and PyTorch's loss_fn(y_pred, y) order).
    test_dataset = datasets.ImageFolder(
        str(data_dir),
        transform=transforms.Compose([transforms.Resize(image_size), transforms.ToTensor()]),
    )
    test_loader = DataLoader(test_dataset, batch_size=batch_size)

    model = models.resnet18(weights=None)

    loss_fn = nn.CrossEntropyLoss()
    eval_metrics = {
        "acc": metrics.Accuracy(),
        "auc": metrics.ROC_AUC(),
        "eps": metrics.EPS(),
    }

    return F.test(
        test_loaders={"test": test_loader},
        model=model,
        loss_fn=loss_fn,
        eval_metrics=eval_metrics,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", help="where the generated images go; default: a temporary directory")
    parser.add_argument("--n-images", type=int, default=64)
    parser.add_argument("--image-size", type=int, default=256, help="the seed's Resize(256)")
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        results = main(
            args.data_dir or tmp,
            n_images=args.n_images,
            image_size=args.image_size,
            batch_size=args.batch_size,
        )
    print({name: {k: round(v, 4) for k, v in values.items()} for name, values in results.items()})
