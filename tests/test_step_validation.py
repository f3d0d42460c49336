"""Validation every N optimizer steps and the kept checkpoints (top k, every N epochs or steps), with resume."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import textwrap

import pytest
import torch
from conftest import ENV, make_classification, xt
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.callbacks import EarlyStopping
from xt_training.errors import ConfigError
from xt_training.loggers.console import format_value
from xt_training.utils import functional as F


def loaders(shuffle=True):
    """16 training batches of 16 (so 16 optimizer steps an epoch) and 2 validation batches."""
    x, y = make_classification(320)
    train = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=16, shuffle=shuffle)
    return train, DataLoader(TensorDataset(x[256:], y[256:]), batch_size=32)


def net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 3))


def test_validation_every_7_steps_selects_the_best_checkpoint_among_them(tmp_path):
    train, val = loaders()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    # gradient descent up to step 21, ascent after it: the best validation is the one at step 21, inside epoch 2
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 21 else -1.0)
    history = F.train(tmp_path, train, model, opt, 3, nn.CrossEntropyLoss(), val_loader=val, scheduler=sched,
                      scheduler_step="batch", val_every_n_steps=7, loggers=["jsonl"], quiet=True)  # fmt: skip
    # every 7 steps, besides each epoch's end; the epoch rows follow the validations inside them
    assert [(row["epoch"], row.get("step")) for row in history] == [
        (1, 7), (1, 14), (1, None), (2, 21), (2, 28), (2, None), (3, 35), (3, 42), (3, None)
    ]  # fmt: skip
    assert all(set(row) == {"epoch", "step", "val/loss"} for row in history if "step" in row)
    best_row = min(history, key=lambda row: row["val/loss"])
    assert best_row == {"epoch": 2, "step": 21, "val/loss": best_row["val/loss"]}
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert (best["global_step"], best["best"], best["history"][-1]) == (21, best_row["val/loss"], best_row)
    assert best["position"]["step"] == 5  # the 5th batch of epoch 2: a resumable position
    # its weights are those the validation measured
    model = net()
    model.load_state_dict(best["model"])
    assert (
        F.test({"val": val}, model, nn.CrossEntropyLoss(), quiet=True)["val"]["loss"] == best_row["val/loss"]
    )
    assert json.loads((tmp_path / "history.json").read_text()) == history
    # the loggers get each validation at its step
    logged = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [
        (r["epoch"], r["step"], r["val/loss"]) for r in logged if r["kind"] == "step" and "val/loss" in r
    ] == [(row["epoch"], row["step"], row["val/loss"]) for row in history if "step" in row]


def test_the_epochs_values_are_as_without_the_validations_inside(tmp_path):
    # the validation metrics are the training pass's objects too (train_metrics defaults to eval_metrics): the
    # validations inside the pass use copies, so the training values are whole (no randomness here)
    def run(save_dir, **options):
        train, val = loaders(shuffle=False)
        model = net()
        return F.train(save_dir, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(),
                       val_loader=val, eval_metrics={"acc": metrics.Accuracy()}, quiet=True, **options)  # fmt: skip

    plain = run(tmp_path / "plain")
    within = run(tmp_path / "within", val_every_n_steps=5)
    assert [row for row in within if "step" not in row] == plain
    assert [row["step"] for row in within if "step" in row] == [5, 10, 15, 20, 25, 30]


def test_save_top_k_and_every_n_through_f_train(tmp_path):
    train, val = loaders()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 if s < 21 else -1.0)
    history = F.train(tmp_path, train, model, opt, 3, nn.CrossEntropyLoss(), val_loader=val, scheduler=sched,
                      scheduler_step="batch", val_every_n_steps=7, save_top_k=2, save_every_n_epochs=2,
                      save_every_n_steps=10, quiet=True)  # fmt: skip
    kept = kept_files(tmp_path)
    # the two best validations (steps 21 and 16, the end of epoch 1), named by epoch, step and value
    top = sorted(history, key=lambda row: row["val/loss"])[:2]
    assert [(row["epoch"], row.get("step")) for row in top] == [(2, 21), (1, None)]
    assert {name for name in kept if "val_loss" in name} == {
        f"epoch=2-step=21-val_loss={format_value(top[0]['val/loss'])}.pt",
        f"epoch=1-step=16-val_loss={format_value(top[1]['val/loss'])}.pt",
    }
    # every 10 steps (the epochs' own at their ends) and every 2nd epoch
    assert {name for name in kept if "val_loss" not in name} == {
        "epoch=1-step=10.pt", "epoch=2-step=20.pt", "epoch=2-step=30.pt", "epoch=3-step=40.pt", "epoch=2-step=32.pt"
    }  # fmt: skip
    state = torch.load(tmp_path / "checkpoints" / "epoch=2-step=30.pt", weights_only=True)
    assert (state["global_step"], state["position"]["step"]) == (30, 14)


def kept_files(run_dir):
    return sorted(p.name for p in (run_dir / "checkpoints").iterdir() if p.name not in ("last.pt", "best.pt"))


# A training subprocess with shuffling, dropout and randomness in the data; validations every 7 steps,
# the 2 best kept. It SIGKILLs itself when its training data's fetch number `kill_at` comes, and saves the
# final weights.
SCRIPT = textwrap.dedent(
    """
    import os, random, signal, sys, time
    import torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from xt_training import metrics
    from xt_training.utils import functional as F

    torch.set_num_threads(1)
    save_dir, resume, kill_at = sys.argv[1], sys.argv[2] == "resume", int(sys.argv[3])
    torch.manual_seed(0); random.seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(320, 16, generator=g); y = (x[:, :3].sum(1) > 0).long()

    class Noisy(Dataset):
        fetched = 0
        def __len__(self): return 256
        def __getitem__(self, i):
            Noisy.fetched += 1
            if Noisy.fetched == kill_at:
                time.sleep(0.5)  # the checkpoint of the last validation is written meanwhile
                os.kill(os.getpid(), signal.SIGKILL)
            return x[i] + 0.01 * random.random() + 0.01 * torch.rand(16), y[i]

    train = DataLoader(Noisy(), batch_size=16, shuffle=True)
    val = DataLoader(list(zip(x[256:], y[256:])), batch_size=32)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    F.train(save_dir, train, model, opt, 3, nn.CrossEntropyLoss(), val_loader=val, eval_metrics={"acc": metrics.Accuracy()},
            val_every_n_steps=7, save_top_k=2, resume=resume, quiet=True)
    torch.save(model.state_dict(), save_dir + "/final.pt")
    """
)


def run_script(tmp_path, save_dir, mode, kill_at=0):
    script = tmp_path / "script.py"
    script.write_text(SCRIPT)
    return subprocess.run([sys.executable, str(script), str(save_dir), mode, str(kill_at)], env=ENV,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


@pytest.mark.slow
def test_a_sigkill_between_two_validations_resumes_bit_identical(tmp_path):
    reference = tmp_path / "reference"
    assert run_script(tmp_path, reference, "fresh").returncode == 0
    run = tmp_path / "run"
    # killed as the 9th batch of epoch 2 (step 25) loads: after the validation of step 21, before step 28's
    killed = run_script(tmp_path, run, "fresh", kill_at=(16 + 8) * 16 + 1)
    assert killed.returncode == -9, killed.stderr
    last = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert (last["global_step"], last["position"]["step"], last["history"][-1]["step"]) == (21, 5, 21)
    assert len(last["top_k"]) == 2
    # what a kill between a save and its bookkeeping leaves: a kept file of a later step, and one pushed out
    # of the top 2 but not yet removed; the resume removes both
    for name in ("epoch=2-step=28-val_loss=0.1000.pt", "epoch=1-step=7-val_loss=9.0000.pt"):
        (run / "checkpoints" / name).write_bytes(b"left by a kill")
    resumed = run_script(tmp_path, run, "resume")
    assert resumed.returncode == 0, resumed.stderr

    final, expected = (torch.load(d / "final.pt", weights_only=True) for d in (run, reference))
    assert all(torch.equal(final[k], expected[k]) for k in expected)
    assert (run / "history.json").read_text() == (reference / "history.json").read_text()
    # the same two kept files, holding the same states
    assert kept_files(run) == kept_files(reference) and len(kept_files(run)) == 2
    for name in kept_files(run):
        a, b = (torch.load(d / "checkpoints" / name, weights_only=True)["model"] for d in (run, reference))
        assert all(torch.equal(a[k], b[k]) for k in b)


@pytest.mark.slow
def test_save_top_k_keeps_exactly_the_two_best_through_xt_run(tmp_path):
    # 8 optimizer steps an epoch: validations at steps 3, 6 | 9, 12, 15 | 18, 21 besides the epochs' ends
    xt("run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=320", "--data-opt", "test_fraction=0",
       "--batch-size", "32", "--epochs", "3", "--val-every", "3", "--save-top-k", "2", "--save-every-epochs", "2",
       "--save-every", "5", "--save-dir", "run", "-q", cwd=tmp_path)  # fmt: skip
    run = tmp_path / "run"
    history = json.loads((run / "history.json").read_text())
    assert [row.get("step") for row in history] == [3, 6, None, 9, 12, 15, None, 18, 21, None]
    top = sorted(history, key=lambda row: row["val/loss"])[:2]
    top_files = [name for name in kept_files(run) if "val_loss" in name]
    assert len(top_files) == 2
    for name in top_files:  # each file holds the state of one of the two best validations, named by its value
        state = torch.load(run / "checkpoints" / name, weights_only=True)
        assert state["history"][-1] in top
        epoch, step, value = (
            state["history"][-1]["epoch"],
            state["global_step"],
            state["history"][-1]["val/loss"],
        )
        assert name == f"epoch={epoch}-step={step}-val_loss={format_value(value)}.pt"
    assert {name for name in kept_files(run) if "val_loss" not in name} == {
        "epoch=1-step=5.pt", "epoch=2-step=10.pt", "epoch=2-step=15.pt", "epoch=2-step=16.pt", "epoch=3-step=20.pt"
    }  # fmt: skip
    shown = xt("show", "run", cwd=tmp_path).stdout
    kept_line = next(line for line in shown.splitlines() if line.startswith("kept: "))
    assert sorted(kept_line.removeprefix("kept: ").split(", ")) == kept_files(run)
    assert "3 epochs and 7 validations inside them" in shown
    # the kept files and their count may change on resume; the validations may not (they steer the training)
    xt("run", "--resume", "run", "--epochs", "4", "--save-top-k", "1", "-q", cwd=tmp_path)
    assert len([name for name in kept_files(run) if "val_loss" in name]) == 1
    refused = xt("run", "--resume", "run", "--epochs", "5", "--val-every", "4", "-q", cwd=tmp_path, code=2)
    assert "val_every_n_steps: 3 then, 4 now" in refused.stderr


def test_early_stopping_counts_the_validations_inside_epochs(tmp_path):
    train, val = loaders()
    model = net()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing improves
    history = F.train(tmp_path, train, model, opt, 5, nn.CrossEntropyLoss(), val_loader=val, val_every_n_steps=7,
                      callbacks=[EarlyStopping(patience=3)], quiet=True)  # fmt: skip
    # step 7 sets the best; 14, the end of epoch 1 and step 21 do not improve: stopped there, inside epoch 2
    assert [(row["epoch"], row.get("step")) for row in history] == [(1, 7), (1, 14), (1, None), (2, 21)]
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (last["global_step"], last["position"]["step"]) == (21, 5)
    assert json.loads((tmp_path / "run.json").read_text())["status"] == "stopped"


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"val_every_n_steps": 0}, "val_every_n_steps must be a positive integer (or None: never), not 0"),
        ({"save_every_n_steps": 2.5}, "save_every_n_steps must be a positive integer (or None: never), not 2.5"),
        ({"save_top_k": -1}, "save_top_k must be a number of checkpoints (e.g. 3; 0: none), not -1"),
        ({"val_every_n_steps": 5, "val_loader": None}, "val_every_n_steps validates on val_loader, which is not given"),
        ({"val_every_n_steps": 5, "monitor": "train/loss"}, "the monitored value 'train/loss' is not one of its values"),
    ],
)  # fmt: skip
def test_bad_options(tmp_path, options, message):
    train, val = loaders()
    model = net()
    options = {"val_loader": val, **options}
    with pytest.raises(ConfigError, match=re.escape(message)):
        F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
                quiet=True, **options)  # fmt: skip


def test_a_validation_without_the_monitored_value_says_so(tmp_path):
    train, val = loaders()
    model = net()

    def loss_fn(y_pred, y):  # none in evaluation, as a detection model's
        return nn.functional.cross_entropy(y_pred, y) if y_pred.requires_grad else None

    with pytest.raises(
        ConfigError, match=r"^monitor 'val/loss' was not reported in epoch 1, step 5: a loss_fn"
    ):
        F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, loss_fn, val_loader=val,
                val_every_n_steps=5, quiet=True)  # fmt: skip
