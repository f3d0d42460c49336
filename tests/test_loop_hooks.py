"""What a Lightning or Keras user reaches for in week one (issue 27): per-step hooks, debugging runs,
closure optimizers, the model summary -- each through F.train as a user calls it."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as TF
from conftest import mlp, xt
from torch.utils.data import DataLoader, TensorDataset

from xt_training.errors import ConfigError
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


class Batches:
    """Records the inputs of every training and validation batch, per pass."""

    def __init__(self):
        self.passes: list[tuple[str, list[torch.Tensor]]] = []

    def on_pass_start(self, run, name):
        self.passes.append((name, []))

    def on_train_batch_end(self, run, batch, step, y_pred, loss):
        self.passes[-1][1].append(batch[0])

    on_validation_batch_end = on_train_batch_end


def test_fast_dev_run_runs_n_batches_of_each_pass_and_writes_nothing(tabular, tmp_path, capsys):
    train, val, *_ = tabular
    seen = Batches()
    model = mlp()
    save_dir = tmp_path / "run"
    history = F.train(save_dir, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 5, TF.cross_entropy,
                      val_loader=val, test_loaders={"test": val}, loggers=["csv", "jsonl"], callbacks=[seen],
                      fast_dev_run=2)  # fmt: skip
    assert not save_dir.exists() and list(tmp_path.iterdir()) == []
    assert [(name, len(b)) for name, b in seen.passes] == [("train", 2), ("val", 2), ("test", 2)]
    assert len(history) == 1 and "val/loss" in history[0] and "test/loss" in history[0]
    assert "fast_dev_run: one epoch of 2 batches of each pass; nothing is written" in capsys.readouterr().err


def test_limit_batches_count_and_fraction(tabular, tmp_path):
    train, val, *_ = tabular  # 12 training and 4 validation batches
    seen = Batches()
    model = mlp()
    F.train(tmp_path / "run", train, model, torch.optim.SGD(model.parameters(), lr=0.1), 2, TF.cross_entropy,
            val_loader=val, callbacks=[seen], quiet=True, limit_train_batches=0.25, limit_val_batches=1)  # fmt: skip
    assert [(name, len(b)) for name, b in seen.passes] == [("train", 3), ("val", 1)] * 2


def test_debugging_options_are_checked_before_training(tabular, tmp_path):
    train, *_ = tabular
    model = mlp()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    for kwargs, message in (
        ({"limit_train_batches": 1.5}, "limit_train_batches=1.5 is a fraction above 1"),
        ({"limit_train_batches": 0}, "limit_train_batches must be a number of batches"),
        ({"fast_dev_run": -1}, "fast_dev_run must be True, False or a number of batches"),
        ({"fast_dev_run": 1, "resume": True}, "fast_dev_run writes no checkpoints"),
        ({"overfit_batches": 20}, "overfit_batches=20, but train_loader has only 12 batches"),
    ):
        with pytest.raises(ConfigError, match=message):
            F.train(tmp_path / "run", train, model, optimizer, 1, TF.cross_entropy, quiet=True, **kwargs)


def test_overfit_batches_trains_on_the_same_batches_until_the_loss_is_near_zero(tabular, tmp_path):
    train, val, *_ = tabular
    seen = Batches()
    model = mlp()
    history = F.train(tmp_path / "run", train, model, torch.optim.Adam(model.parameters(), lr=0.01), 60,
                      TF.cross_entropy, callbacks=[seen], quiet=True, overfit_batches=2)  # fmt: skip
    first = seen.passes[0][1]
    assert len(first) == 2
    assert all(len(b) == 2 and all(torch.equal(x, y) for x, y in zip(b, first)) for _, b in seen.passes)
    assert history[0]["train/loss"] > 0.5
    assert history[-1]["train/loss"] < 0.01


TINY = ["--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200"]


@pytest.mark.slow
def test_cli_debugging_flags(tmp_path):
    """`xt run --fast-dev-run N` writes nothing; the limits and overfit_batches reach F.train and config.json."""
    out = xt("run", *TINY, "--fast-dev-run", "2", "--logger", "csv", cwd=tmp_path)
    assert list(tmp_path.iterdir()) == []
    assert "dry run: every part built, 2 batches of each pass trained; nothing written" in out.stdout
    bad = xt("run", *TINY, "--limit-train-batches", "1.5", cwd=tmp_path, code=2)
    assert "'1.5' is neither a number of batches (e.g. 10) nor a fraction in (0, 1]" in bad.stderr

    args = ["--limit-train-batches", "1", "--limit-val-batches", "0.5", "--overfit-batches", "2"]
    xt("run", *TINY, *args, "--epochs", "3", "--logger", "jsonl", "--save-dir", "run", cwd=tmp_path)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert [config[k] for k in ("limit_train_batches", "limit_val_batches", "overfit_batches")] == [1, 0.5, 2]
    epochs = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [e["step"] for e in epochs if e["kind"] == "epoch"] == [1, 2, 3]  # one optimizer step an epoch


def test_lbfgs_fits_a_linear_regression_through_f_train(tmp_path):
    """LBFGS.step() requires a closure: the loop passes one that recomputes the forward and loss."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 3, generator=g)
    y = x @ torch.tensor([[1.5], [-2.0], [0.5]]) + 0.3 + 0.1 * torch.randn(256, 1, generator=g)
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.LBFGS(model.parameters(), lr=1, max_iter=50, line_search_fn="strong_wolfe")
    loader = DataLoader(TensorDataset(x, y), batch_size=256)
    history = F.train(tmp_path / "run", loader, model, optimizer, 2, TF.mse_loss, quiet=True)
    # the least-squares solution, by torch.linalg
    solution = torch.linalg.lstsq(torch.cat([x, torch.ones(256, 1)], 1), y).solution.squeeze(1)
    assert torch.allclose(model.weight.detach().squeeze(0), solution[:3], atol=1e-4)
    assert torch.allclose(model.bias.detach(), solution[3:], atol=1e-4)
    best = TF.mse_loss(torch.cat([x, torch.ones(256, 1)], 1) @ solution[:, None], y).item()
    assert history[-1]["train/loss"] == pytest.approx(best, rel=1e-4)  # epoch 2's forward: at the optimum


def test_an_optimizer_without_state_dict_is_refused_before_training(tabular, tmp_path):
    class Plain:  # steps and zeroes, but checkpoints could not save it
        def __init__(self, params):
            self.params = list(params)

        def step(self):
            pass

        def zero_grad(self):
            pass

    train, *_ = tabular
    model = mlp()
    with pytest.raises(ConfigError, match="optimizer must have step, zero_grad, state_dict, load_state_dict"
                       r" \(checkpoints save its state, resume restores it\); Plain has no state_dict, "
                       "load_state_dict"):  # fmt: skip
        F.train(tmp_path / "run", train, model, Plain(model.parameters()), 1, TF.cross_entropy, quiet=True)
    assert not (tmp_path / "run").exists()


def test_model_summary_on_the_console_and_in_run_json(tabular, tmp_path, capsys):
    train, val, *_ = tabular
    model = mlp()  # 16*32+32 + 32*3+3 = 643 parameters
    model[0].bias.requires_grad_(False)
    F.train(tmp_path / "run", train, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, TF.cross_entropy,
            val_loader=val)  # fmt: skip
    line = ("model: Sequential, 643 parameters (611 trainable), 0.00 MB; "
            "first batch: input Tensor(32, 16) float32 -> output Tensor(32, 3) float32")  # fmt: skip
    assert line in capsys.readouterr().err
    summary = json.loads((tmp_path / "run" / "run.json").read_text())["summary"]
    assert summary == {"class": "Sequential", "parameters": 643, "trainable": 611, "size_mb": 0.002,
                       "input": "Tensor(32, 16) float32", "output": "Tensor(32, 3) float32"}  # fmt: skip
    assert not model._forward_hooks  # the summary's hook is gone

    F.train(tmp_path / "quiet", train, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, TF.cross_entropy,
            quiet=True)  # fmt: skip
    assert "model:" not in capsys.readouterr().err
    assert json.loads((tmp_path / "quiet" / "run.json").read_text())["summary"]["parameters"] == 643
