"""Train the seed document's ``CVModel`` on synthetic 32x32 images, then test its best checkpoint.

Everything here is plain PyTorch -- the model class is the seed's, the data is a ``TensorDataset`` --
except the two calls that replace the hand-written loops: ``F.train`` and ``F.test``. The images are
learnable: each of the 10 classes has its own smooth colour pattern, buried in noise.

Run: ``python examples/train_cnn.py [--save-dir runs/cnn] [--n-samples 3000] [--epochs 5]``
(``xt run --model cnn --data synthetic-images`` trains the built-in version of the same by name.)
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
import torch.nn.functional as nnF
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.utils import functional as F


class CVModel(nn.Module):
    """The seed's 2D CNN, unchanged: 3x32x32 images -> 10 class logits."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 10)

    def forward(self, x):
        x = self.pool(nnF.relu(self.conv1(x)))
        x = self.pool(nnF.relu(self.conv2(x)))
        x = x.view(-1, 16 * 5 * 5)
        x = nnF.relu(self.fc1(x))
        x = self.fc2(x)
        return x


def synthetic_images(n: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images of 10 classes: a class-specific low-resolution pattern, upsampled, plus noise."""
    g = torch.Generator().manual_seed(seed)
    patterns = nnF.interpolate(torch.randn(10, 3, 4, 4, generator=g), size=32, mode="bilinear")
    labels = torch.randint(0, 10, (n,), generator=g)
    images = patterns[labels] + 3.0 * torch.randn(n, 3, 32, 32, generator=g)
    return images, labels


def main(
    save_dir: str, *, n_samples: int = 3000, epochs: int = 5, batch_size: int = 64, quiet: bool = False
) -> Any:
    x, y = synthetic_images(n_samples)
    n_train, n_val = int(0.7 * n_samples), int(0.15 * n_samples)
    train_loader = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=batch_size, shuffle=True)
    val_loader = DataLoader(
        TensorDataset(x[n_train : n_train + n_val], y[n_train : n_train + n_val]), batch_size=256
    )
    test_loader = DataLoader(TensorDataset(x[n_train + n_val :], y[n_train + n_val :]), batch_size=256)

    torch.manual_seed(0)
    model = CVModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=2e-3)
    loss_fn = nn.CrossEntropyLoss()
    eval_metrics = {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC()}

    history = F.train(
        save_dir,
        train_loader,
        model,
        optimizer,
        epochs,
        loss_fn,
        val_loader=val_loader,
        eval_metrics=eval_metrics,
        monitor="val/acc",  # best.pt is the epoch with the highest validation accuracy
        quiet=quiet,
    )
    results = F.test(
        {"test": test_loader},
        model,
        loss_fn,
        eval_metrics=eval_metrics,
        checkpoint_path=f"{save_dir}/checkpoints/best.pt",
        quiet=quiet,
    )
    return history, results


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/cnn")
    parser.add_argument("--n-samples", type=int, default=3000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    history, results = main(args.save_dir, n_samples=args.n_samples, epochs=args.epochs)
    print(f"test accuracy of the best checkpoint: {results['test']['acc']:.3f} (chance: 0.1)")
