"""Regression: a plain PyTorch model, loss and optimizer; F.train runs the loop, metrics and checkpoints.

Run: ``python examples/regression.py --save-dir runs/regression`` (or, by name: ``xt run --model mlp
--data synthetic-regression``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from xt_training import create_data, metrics
from xt_training.utils import functional as F


def main(
    save_dir: str = "runs/regression", *, n_samples: int = 2000, epochs: int = 10, quiet: bool = False
) -> Any:
    data = create_data("synthetic-regression", n_samples=n_samples, n_features=10)  # targets (N, 1)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(10, 64), nn.ReLU(), nn.Linear(64, 1))
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    history = F.train(
        save_dir,
        data.loaders["train"],
        model,
        optimizer,
        epochs,
        nn.MSELoss(),
        val_loader=data.loaders["val"],
        eval_metrics={"mse": metrics.MSE(), "mae": metrics.MAE(), "r2": metrics.R2()},
        quiet=quiet,
    )
    predictions = F.predict(model, data.loaders["test"])  # (N, 1), in the loader's order
    return history, model, data, predictions


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/regression")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    history, *_ = main(args.save_dir, epochs=args.epochs)
    print(f"validation R2 {history[-1]['val/r2']:.3f}")
