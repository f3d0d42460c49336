"""Batches as users bring them: dict batches and Hugging Face-style models, and a last batch of another size."""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch
from conftest import make_classification, mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.errors import BatchError, LossError
from xt_training.utils import functional as F


def records(x, y, target="labels"):
    """A list of per-example dicts, as a Hugging Face dataset yields them: the DataLoader collates dict batches."""
    return [{"x": row, target: label} for row, label in zip(x, y)]


# --- dict batches and Hugging Face conventions ----------------------------------------------------------
def test_a_dict_batch_with_labels_trains_as_its_x_y_pairs_do(tmp_path):
    x, y = make_classification(96)
    pairs = F.train(tmp_path / "pairs", DataLoader(TensorDataset(x, y), batch_size=32), *_sgd(mlp()),
                    epochs=2, loss_fn=nn.CrossEntropyLoss(), quiet=True)  # fmt: skip
    for target in ("labels", "label", "target", "targets", "y"):
        dicts = F.train(tmp_path / target, DataLoader(records(x, y, target), batch_size=32), *_sgd(mlp()),
                        epochs=2, loss_fn=nn.CrossEntropyLoss(), quiet=True)  # fmt: skip
        assert [row["train/loss"] for row in dicts] == [row["train/loss"] for row in pairs]


@dataclass
class Output:
    """What a Hugging Face model returns (a ModelOutput): the logits, and the loss when given labels."""

    logits: torch.Tensor
    loss: torch.Tensor | None = None


class TinyClassifier(nn.Module):
    """A sequence classifier with a Hugging Face model's forward: token ids, a mask, optional labels."""

    def __init__(self, vocab=20, classes=2):
        super().__init__()
        torch.manual_seed(0)
        self.embed = nn.Embedding(vocab, 8)
        self.head = nn.Linear(8, classes)

    def forward(self, input_ids, attention_mask, labels=None):
        mask = attention_mask.unsqueeze(-1).float()
        pooled = (self.embed(input_ids) * mask).sum(1) / mask.sum(1)
        logits = self.head(pooled)
        return Output(logits, nn.functional.cross_entropy(logits, labels) if labels is not None else None)


def token_batches(n=64, batch_size=16, labelled=True):
    """Texts of token ids; the label says whether token 1 occurs more often than token 2 (padding is 0)."""
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 20, (n, 10), generator=g)
    mask = torch.ones_like(ids)
    mask[::3, 7:] = 0  # some shorter texts
    ids = ids * mask
    items = [{"input_ids": i, "attention_mask": m} for i, m in zip(ids, mask)]
    if labelled:
        for item in items:
            item["labels"] = int((item["input_ids"] == 1).sum() > (item["input_ids"] == 2).sum())
    return DataLoader(items, batch_size=batch_size)


def hand_loop(model, loader, epochs=2, lr=0.5):
    """The loop a Hugging Face user writes: the model gets the whole batch and returns its loss."""
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for _ in range(epochs):
        for batch in loader:
            loss = model(**batch).loss
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
    return model


@pytest.mark.parametrize("loss_fn", [None, nn.CrossEntropyLoss()], ids=["model's loss", "loss_fn"])
def test_a_hugging_face_style_model_trains_on_its_dict_batches(tmp_path, loss_fn):
    loader = token_batches()
    model = TinyClassifier()
    history = F.train(tmp_path, loader, model, torch.optim.SGD(model.parameters(), lr=0.5), 2, loss_fn,
                      val_loader=token_batches(), eval_metrics={"acc": metrics.Accuracy()}, quiet=True)  # fmt: skip
    reference = hand_loop(TinyClassifier(), loader)
    for trained, expected in zip(model.parameters(), reference.parameters()):
        assert torch.allclose(trained, expected, atol=1e-6)
    # the metrics got the logits: the accuracy is the hand-computed one
    with torch.no_grad():
        correct = sum((model(**b).logits.argmax(1) == b["labels"]).sum().item() for b in token_batches())
    assert history[-1]["val/acc"] == pytest.approx(correct / 64)
    # and the loss is the model's own (with loss_fn=None) or the same cross-entropy, in both passes
    with torch.no_grad():
        val_loss = sum(model(**b).loss.item() * len(b["labels"]) for b in token_batches()) / 64
    assert history[-1]["val/loss"] == pytest.approx(val_loss, rel=1e-5)


def test_predictions_of_a_hugging_face_style_model_are_its_logits():
    model = TinyClassifier().eval()
    with torch.no_grad():
        expected = torch.cat([model(**b).logits for b in token_batches(labelled=False)])
    for labelled in (False, True):  # the labels of a labelled loader are not the model's input here
        assert torch.equal(F.predict(model, token_batches(labelled=labelled)), expected)


def test_dict_batches_that_fit_no_rule_get_a_forward_fn_with_their_keys(tmp_path):
    # the case: the hint took the first two keys, the mask as the targets
    with pytest.raises(BatchError) as e:
        F.train(tmp_path, token_batches(), *_sgd(mlp()), epochs=1, loss_fn=nn.CrossEntropyLoss(), quiet=True)
    assert str(e.value) == (
        "cannot feed a dict batch with keys 'input_ids', 'attention_mask', 'labels' to Sequential, whose forward "
        "takes (input); pass forward_fn=lambda model, batch: "
        "(model(batch['input_ids'], batch['attention_mask']), batch['labels'])"
    )
    x, y = make_classification(64)
    unlabelled = DataLoader([{"image": row, "mask": row > 0} for row in x], batch_size=32)
    with pytest.raises(
        BatchError,
        match=r"holds no targets under any of the keys 'labels', 'label', 'target', 'targets', 'y'; "
        r"call the targets' key 'labels', or pass forward_fn=lambda model, batch: "
        r"\(model\(batch\['image'\], batch\['mask'\]\), TARGETS\)$",
    ):
        F.train(tmp_path, unlabelled, *_sgd(mlp()), epochs=1, loss_fn=nn.CrossEntropyLoss(), quiet=True)


def test_a_model_output_without_what_the_loop_needs_is_named(tmp_path):
    x, y = make_classification(64)
    pairs = DataLoader(TensorDataset(x, y), batch_size=32)
    with pytest.raises(LossError, match=r"no loss_fn was given and the model's output \(Tensor\(32, 3\) float32\) "
                       r"carries no .loss to train on; pass a loss_fn"):  # fmt: skip
        F.train(tmp_path, pairs, *_sgd(mlp()), epochs=1, loss_fn=None, quiet=True)

    class Wrapped(nn.Module):  # (x, y) batches: the default forward leaves the output as it is
        def __init__(self):
            super().__init__()
            self.net = mlp()

        def forward(self, x):
            return Output(self.net(x))

    with pytest.raises(LossError, match=r"loss_fn failed on the model's output Output \(.*\); it holds the "
                       r"outputs in .logits: pass forward_fn=lambda model, batch: \(model\(batch\[0\]\).logits"):  # fmt: skip
        F.train(tmp_path, pairs, *_sgd(Wrapped()), epochs=1, loss_fn=nn.CrossEntropyLoss(), overwrite=True,
                quiet=True)  # fmt: skip


def _sgd(model):
    return model, torch.optim.SGD(model.parameters(), lr=0.1)


# --- a last, smaller batch ---------------------------------------------------------------------------------
class SeedRNN(nn.Module):
    """The seed document's RNNModel as it was written: its hidden state is sized for batches of 32."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.rnn = nn.RNN(8, 16, 2, batch_first=True)
        self.fc = nn.Linear(16, 2)

    def forward(self, x):
        out, _ = self.rnn(x, self.init_hidden())
        return self.fc(out[:, -1])

    def init_hidden(self):
        return torch.zeros(2, 32, 16)


def test_a_model_that_fails_on_the_last_smaller_batch_is_told_the_batch_size_changed(tmp_path):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(100, 5, 8, generator=g), torch.randint(0, 2, (100,), generator=g)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)  # the last batch holds 4
    changed = (
        r"\(Expected hidden size \(2, 4, 16\), got \[2, 32, 16\]\): the batch size changed, 4 vs 32 before: a model "
        r"that assumes a fixed batch size fails on the loader's last, smaller batch; size its state by the input "
        r"\(x.shape\[0\]\)"
    )
    with pytest.raises(BatchError, match=rf"^epoch 1, batch 4 of loader 'train' failed {changed}, or leave that "
                       r"batch out with DataLoader\(\.\.\., drop_last=True\)$"):  # fmt: skip
        F.train(tmp_path / "r", loader, *_sgd(SeedRNN()), epochs=1, loss_fn=nn.CrossEntropyLoss(), quiet=True)
    with pytest.raises(BatchError, match=rf"^the model failed on batch 4 of the loader, inputs Tensor\(4, 5, 8\) "
                       rf"float32 {changed}; DataLoader\(\.\.\., drop_last=True\) would leave its examples without "
                       r"predictions$"):  # fmt: skip
        F.predict(SeedRNN(), loader)
    # as the error says
    dropped = DataLoader(TensorDataset(x, y), batch_size=32, drop_last=True)
    F.train(tmp_path / "d", dropped, *_sgd(SeedRNN()), epochs=1, loss_fn=nn.CrossEntropyLoss(), quiet=True)
    # a first batch that fails is not a change of size: torch's error as it is
    with pytest.raises(RuntimeError, match=r"^Expected hidden size \(2, 16, 16\), got \[2, 32, 16\]$"):
        F.train(tmp_path / "f", DataLoader(TensorDataset(x, y), batch_size=16), *_sgd(SeedRNN()), epochs=1,
                loss_fn=nn.CrossEntropyLoss(), quiet=True)  # fmt: skip
