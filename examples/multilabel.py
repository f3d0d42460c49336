"""Multi-label classification: float 0/1 targets of the logits' shape, BCEWithLogitsLoss, and metrics that
infer the multi-label task from those targets.

Run: ``python examples/multilabel.py --save-dir runs/multilabel`` (or ``xt run --model mlp --data
synthetic-multilabel``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from xt_training import create_data, metrics
from xt_training.utils import functional as F


def main(
    save_dir: str = "runs/multilabel", *, n_samples: int = 2000, epochs: int = 10, quiet: bool = False
) -> Any:
    data = create_data("synthetic-multilabel", n_samples=n_samples, n_features=20, num_labels=5)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 5))  # one logit per label
    history = F.train(
        save_dir,
        data.loaders["train"],
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        epochs,
        nn.BCEWithLogitsLoss(),
        val_loader=data.loaders["val"],
        # the task is inferred: targets (N, 5) of floats, like the logits -> multi-label
        eval_metrics={"f1": metrics.F1(), "accuracy": metrics.Accuracy(), "auc": metrics.ROC_AUC()},
        monitor="val/f1",
        quiet=quiet,
    )
    probabilities = F.predict(model, data.loaders["test"]).sigmoid()  # (N, 5): each label on or off
    return history, model, data, probabilities


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/multilabel")
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    history, *_ = main(args.save_dir, epochs=args.epochs)
    print(f"validation macro F1 {history[-1]['val/f1']:.3f}")
