"""Sequence tagging, one label per time step, with the seed's RNNModel as it is: it returns per-step logits
flattened to ``(N * T, C)`` (``x.contiguous().view(-1, C)``), so ``forward_fn`` flattens the targets to match.
Padded steps have the target -100, which ``CrossEntropyLoss`` and the metric leave out (``ignore_index``).

Run: ``python examples/sequence_tagging.py --save-dir runs/tagging`` (or ``xt run --model rnn-tagger --data
synthetic-tagging``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from xt_training import create_data, metrics
from xt_training.utils import functional as F

PAD = -100


class RNNModel(nn.Module):
    """The seed's RNNModel for token ids: embedding, GRU, per-step logits flattened."""

    def __init__(self, vocab_size: int, num_tags: int, hidden: int = 64):
        super().__init__()
        self.num_tags = num_tags
        self.embedding = nn.Embedding(vocab_size, 32, padding_idx=0)
        self.rnn = nn.GRU(32, hidden, batch_first=True)
        self.fc = nn.Linear(hidden, num_tags)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x, _ = self.rnn(self.embedding(x))
        x = self.fc(x)
        return x.contiguous().view(-1, self.num_tags)


def forward_fn(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    x, y = batch
    return model(x), y.reshape(-1)  # (N * T, C) logits, (N * T,) tags


def main(
    save_dir: str = "runs/tagging", *, n_samples: int = 1000, epochs: int = 5, quiet: bool = False
) -> Any:
    data = create_data("synthetic-tagging", n_samples=n_samples, vocab_size=50, num_tags=4)
    torch.manual_seed(0)
    model = RNNModel(vocab_size=50, num_tags=4)
    history = F.train(
        save_dir,
        data.loaders["train"],
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        epochs,
        nn.CrossEntropyLoss(ignore_index=PAD),
        val_loader=data.loaders["val"],
        eval_metrics={"accuracy": metrics.Accuracy(ignore_index=PAD)},
        forward_fn=forward_fn,
        monitor="val/accuracy",
        quiet=quiet,
    )
    return history, model, data


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/tagging")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    history, *_ = main(args.save_dir, epochs=args.epochs)
    print(f"validation accuracy over real tokens {history[-1]['val/accuracy']:.3f}")
