"""An RNN sequence classifier -- a working version of the seed document's ``RNNModel`` -- trained with ``F.train``.

The seed's sketch hard-codes a batch of 32 in ``init_hidden`` and returns one prediction per time step.
Fixed here: the hidden state follows the batch (and the device), and the classifier reads the last time
step, so the model returns one row of logits per sequence, shaped like the CNN's: the same ``F.train``
call trains both. (For one label per time step, see ``examples/sequence_tagging.py``.)

The data: sequences of 32 features; each class drifts in its own direction, hidden in noise, so a model
must integrate over the time steps to tell them apart.

Run: ``python examples/rnn_sequences.py [--save-dir runs/rnn] [--n-samples 2000] [--epochs 5]``
(``xt run --model rnn --data synthetic-sequences`` is the built-in version, by name.)
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.utils import functional as F


class RNNModel(nn.Module):
    """The seed's RNNModel: ``(N, T, 32)`` sequences -> ``(N, 2)`` logits."""

    def __init__(
        self, input_size: int = 32, hidden_size: int = 128, num_layers: int = 2, num_classes: int = 2
    ):
        super().__init__()
        self.rnn = nn.RNN(input_size, hidden_size, num_layers, batch_first=True)
        self.fc = nn.Linear(hidden_size, num_classes)

    def forward(self, x):
        hidden = self.init_hidden(x.shape[0], x.device)
        x, hidden = self.rnn(x, hidden)
        return self.fc(x[:, -1])  # the last step has seen the whole sequence

    def init_hidden(self, batch_size: int, device: torch.device) -> torch.Tensor:
        return torch.zeros(self.rnn.num_layers, batch_size, self.rnn.hidden_size, device=device)


def synthetic_sequences(
    n: int, length: int = 20, features: int = 32, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` sequences of 2 classes: a small class-specific offset at every step, under unit noise."""
    g = torch.Generator().manual_seed(seed)
    directions = 0.08 * torch.randn(2, features, generator=g)
    labels = torch.randint(0, 2, (n,), generator=g)
    x = directions[labels].unsqueeze(1) + torch.randn(n, length, features, generator=g)
    return x, labels


def main(save_dir: str, *, n_samples: int = 2000, epochs: int = 5, quiet: bool = False) -> Any:
    x, y = synthetic_sequences(n_samples)
    n_train = int(0.8 * n_samples)
    train_loader = DataLoader(TensorDataset(x[:n_train], y[:n_train]), batch_size=32, shuffle=True)
    val_loader = DataLoader(TensorDataset(x[n_train:], y[n_train:]), batch_size=256)

    torch.manual_seed(0)
    model = RNNModel()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    return F.train(
        save_dir,
        train_loader,
        model,
        optimizer,
        epochs,
        nn.CrossEntropyLoss(),
        val_loader=val_loader,
        eval_metrics={"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "f1": metrics.F1()},
        clip_grad_norm=1.0,  # plain RNNs like their gradients clipped
        quiet=quiet,
    )


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/rnn")
    parser.add_argument("--n-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    history = main(args.save_dir, n_samples=args.n_samples, epochs=args.epochs)
    print(f"validation accuracy: {history[-1]['val/acc']:.3f} (chance: 0.5)")
