"""Text classification with a tokenizer built from the training texts (nothing is downloaded).

The batches are ``({'input_ids', 'attention_mask'}, labels)`` -- a Hugging Face-style tokenizer's output
-- and the model takes them as keyword arguments: ``forward_fn`` says so, in one line. The tokenizer is
saved with the run, as ``xt run`` does, so ``xt predict`` can read raw text later.

Run: ``python examples/text_classification.py --save-dir runs/text`` (or ``xt run --model text-gru --data
synthetic-text``, then ``xt predict RUN_DIR --input texts.txt -o predictions.csv``).
"""

from __future__ import annotations

import argparse
from typing import Any

import torch
from torch import nn

from xt_training import create_data, metrics
from xt_training.utils import functional as F


class GRUClassifier(nn.Module):
    """Embeddings, a GRU, and the logits of each text's last real token."""

    def __init__(self, vocab_size: int, num_classes: int, dim: int = 32):
        super().__init__()
        self.embedding = nn.Embedding(vocab_size, dim, padding_idx=0)
        self.gru = nn.GRU(dim, dim, batch_first=True)
        self.fc = nn.Linear(dim, num_classes)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        outputs, _ = self.gru(self.embedding(input_ids))
        last = attention_mask.sum(1) - 1  # right padding: the last real token of each text
        return self.fc(outputs[torch.arange(len(outputs)), last])


def forward_fn(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    inputs, labels = batch
    return model(**inputs), labels


def main(save_dir: str = "runs/text", *, n_samples: int = 1200, epochs: int = 5, quiet: bool = False) -> Any:
    data = create_data("synthetic-text", n_samples=n_samples, num_classes=3)
    tokenizer = data.tokenizer  # built from the training split only
    torch.manual_seed(0)
    model = GRUClassifier(len(tokenizer), num_classes=3)
    history = F.train(
        save_dir,
        data.loaders["train"],
        model,
        torch.optim.Adam(model.parameters(), lr=1e-2),
        epochs,
        nn.CrossEntropyLoss(),
        val_loader=data.loaders["val"],
        eval_metrics={"accuracy": metrics.Accuracy()},
        forward_fn=forward_fn,
        quiet=quiet,
    )
    tokenizer.save_pretrained(save_dir)
    texts = [
        "the team scored a late goal",
        "simmer the garlic sauce in the oven",
        "a new album with great drums",
    ]
    logits = F.predict(model, [tokenizer(texts)], forward_fn=lambda m, inputs: (m(**inputs), None))
    return history, model, data, [data.info["classes"][i] for i in logits.argmax(1).tolist()]


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--save-dir", default="runs/text")
    parser.add_argument("--epochs", type=int, default=5)
    args = parser.parse_args()
    history, _, _, topics = main(args.save_dir, epochs=args.epochs)
    print(f"validation accuracy {history[-1]['val/accuracy']:.3f}; topics of three new texts: {topics}")
