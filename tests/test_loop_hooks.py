"""What a Lightning or Keras user reaches for in week one (issue 27): per-step hooks, debugging runs,
closure optimizers, the model summary -- each through F.train as a user calls it."""

from __future__ import annotations

import torch
import torch.nn.functional as TF
from conftest import mlp
from torch.utils.data import DataLoader, TensorDataset

from xt_training.utils import functional as F


class Recorder:
    """A callback implementing every per-pass and per-step hook; it records what each one saw."""

    def __init__(self):
        self.events: list[tuple] = []
        self.grads: list[torch.Tensor] = []
        self.batches: list[torch.Tensor] = []

    def on_pass_start(self, run, name):
        self.events.append(("pass_start", name))

    def on_pass_end(self, run, name, values):
        self.events.append(("pass_end", name, values["loss"]))

    def on_train_batch_start(self, run, batch, step):
        self.events.append(("train_start", step))

    def on_before_optimizer_step(self, run, optimizer):
        weight = run.model[0].weight
        self.grads.append(weight.grad.clone())
        self.events.append(("before_step", run.global_step))

    def on_train_batch_end(self, run, batch, step, y_pred, loss):
        self.batches.append(batch)
        self.events.append(("train_end", step, loss.item()))

    def on_validation_batch_end(self, run, batch, step, y_pred, loss):
        self.events.append(("val_end", step, tuple(y_pred.shape)))

    def on_exception(self, run, error):
        self.events.append(("exception", type(error).__name__))


def test_a_step_hook_callback_sees_every_batch_and_the_gradients(tabular, tmp_path):
    train, val, *_ = tabular
    recorder = Recorder()
    model = mlp()
    F.train(tmp_path / "run", train, model, torch.optim.SGD(model.parameters(), lr=0.1), 2, TF.cross_entropy,
            val_loader=val, callbacks=[recorder], quiet=True)  # fmt: skip
    per_epoch = (
        [("pass_start", "train")]
        + [
            e
            for step in range(1, 13)
            for e in (("train_start", step), ("before_step", None), ("train_end", step))
        ]
        + [("pass_end", "train"), ("pass_start", "val")]
        + [("val_end", step) for step in range(1, 5)]
        + [("pass_end", "val")]
    )
    assert [e[:2] if e[0] != "before_step" else e[:1] + (None,) for e in recorder.events] == per_epoch * 2
    # every batch of every epoch, in loader order: the examples of the data set, once each per epoch
    seen = torch.cat([x for x, _ in recorder.batches])
    assert seen.shape == (2 * 384, 16)
    x = train.dataset.tensors[0]
    assert torch.equal(seen[:384].sort(0).values, x.sort(0).values)
    # the gradients as the optimizer is about to step: the first one recomputed by hand on the first batch
    model0 = mlp()
    x0, y0 = recorder.batches[0]
    TF.cross_entropy(model0(x0), y0).backward()
    assert len(recorder.grads) == 24
    assert torch.allclose(recorder.grads[0], model0[0].weight.grad)
    # the loss each batch-end hook got is the batch's loss: they average to the pass's
    losses = [e[2] for e in recorder.events if e[0] == "train_end"][:12]
    assert abs(sum(losses) / 12 - [e for e in recorder.events if e[0] == "pass_end"][0][2]) < 1e-6


def test_on_exception_is_called_with_the_error(tabular, tmp_path):
    train, *_ = tabular
    recorder = Recorder()

    def failing_loss(y_pred, y):
        if len(recorder.events) > 5:
            raise RuntimeError("boom")
        return TF.cross_entropy(y_pred, y)

    model = mlp()
    try:
        F.train(tmp_path / "run", train, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, failing_loss,
                callbacks=[recorder], quiet=True)  # fmt: skip
    except RuntimeError:
        pass
    assert recorder.events[-1] == ("exception", "RuntimeError")


def test_a_callback_without_step_hooks_leaves_the_loop_as_it_is(tabular):
    """Hooks are looked up once per pass: no callback implements one, nothing wraps the loop."""
    from xt_training import Runner

    train, *_ = tabular
    model = mlp()
    runner = Runner(model, TF.cross_entropy, torch.optim.SGD(model.parameters(), lr=0.1), device="cpu",
                    quiet=True, callbacks=[object()])  # fmt: skip
    runner(DataLoader(TensorDataset(*train.dataset.tensors), batch_size=64))
    assert runner._before_step == [] and runner._plain_optimizer_step()
