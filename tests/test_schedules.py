"""Learning-rate schedules: a schedule shorter than the run is refused before training, and the learning rate
of every param group is logged at every logging step."""

from __future__ import annotations

import csv
import io
import json

import pytest
import torch
from conftest import make_classification, mlp, xt
from torch import nn
from torch.optim.lr_scheduler import OneCycleLR
from torch.utils.data import DataLoader, TensorDataset

from xt_training.errors import ConfigError
from xt_training.loggers.console import ConsoleLogger
from xt_training.utils import functional as F


def loader(n=128, batch_size=32):
    x, y = make_classification(n)
    return DataLoader(TensorDataset(x, y), batch_size=batch_size)


def one_cycle(model, **kw):
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
    return optimizer, OneCycleLR(optimizer, max_lr=0.1, **kw)


def test_a_one_cycle_schedule_shorter_than_the_run_is_refused_before_training(tmp_path):
    model = mlp()
    before = [p.clone() for p in model.parameters()]
    optimizer, scheduler = one_cycle(model, total_steps=10)  # 3 epochs of 4 batches take 12 steps
    with pytest.raises(ConfigError) as e:
        F.train(tmp_path, loader(), model, optimizer, 3, nn.CrossEntropyLoss(), scheduler=scheduler,
                scheduler_step="batch", quiet=True)  # fmt: skip
    assert str(e.value) == (
        "OneCycleLR has total_steps=10, but the run takes 12 optimizer steps (3 epochs of 4 optimizer steps); "
        "size it for them: total_steps=12, or epochs=3, steps_per_epoch=4"
    )
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # nothing trained
    assert not (tmp_path / "history.json").exists()
    # stepped per epoch, it is stepped once an epoch
    optimizer, scheduler = one_cycle(model, total_steps=2)
    with pytest.raises(ConfigError, match=r"^OneCycleLR has total_steps=2, but scheduler_step='epoch' steps it once "
                       r"per epoch, 3 times; pass scheduler_step='batch' to step it per optimizer step, or size it "
                       r"for total_steps=3$"):  # fmt: skip
        F.train(
            tmp_path, loader(), model, optimizer, 3, nn.CrossEntropyLoss(), scheduler=scheduler, quiet=True
        )


def test_with_accumulation_a_schedule_counts_optimizer_steps_the_last_partial_group_included(tmp_path):
    # 5 batches in groups of 2: steps after batches 2, 4 and 5, so 3 optimizer steps an epoch
    model = mlp()
    optimizer, scheduler = one_cycle(model, epochs=2, steps_per_epoch=3)
    F.train(tmp_path / "ok", loader(160), model, optimizer, 2, nn.CrossEntropyLoss(), scheduler=scheduler,
            scheduler_step="batch", accumulate_grad_batches=2, quiet=True)  # fmt: skip
    assert scheduler.last_epoch == scheduler.total_steps == 6  # the schedule ran to its end, no further
    model = mlp()  # (the optimizer over this model's parameters: another's would train nothing)
    optimizer, scheduler = one_cycle(model, epochs=2, steps_per_epoch=2)
    with pytest.raises(ConfigError, match=r"the run takes 6 optimizer steps \(2 epochs of 3 optimizer steps "
                       r"\(accumulate_grad_batches=2\)\)"):  # fmt: skip
        F.train(tmp_path / "short", loader(160), model, optimizer, 2, nn.CrossEntropyLoss(), scheduler=scheduler,
                scheduler_step="batch", accumulate_grad_batches=2, quiet=True)  # fmt: skip


def test_the_cli_sizes_one_cycle_in_optimizer_steps(tmp_path):
    xt("run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200",
       "--scheduler", "one-cycle", "--accumulate-grad-batches", "3", "--epochs", "2", "-q", "--save-dir", "r",
       cwd=tmp_path)  # fmt: skip
    state = torch.load(tmp_path / "r" / "checkpoints" / "last.pt", weights_only=True)["scheduler"]
    # the cycle ends with the run (it was sized for batches, 3 times the optimizer steps)
    assert state["last_epoch"] == state["total_steps"]


def test_the_learning_rate_of_every_param_group_is_logged_at_every_logging_step(tmp_path):
    model = mlp()
    body, head = list(model[0].parameters()), list(model[2].parameters())
    optimizer = torch.optim.SGD([{"params": body}, {"params": head, "lr": 0.01}], lr=0.1)
    scheduler = OneCycleLR(optimizer, max_lr=[0.1, 0.01], epochs=2, steps_per_epoch=4)
    console = io.StringIO()
    history = F.train(tmp_path, loader(), model, optimizer, 2, nn.CrossEntropyLoss(), scheduler=scheduler,
                      scheduler_step="batch", log_every_n_steps=1,
                      loggers=["csv", "jsonl", "tensorboard", ConsoleLogger(file=console, line_interval=0)])  # fmt: skip

    # the learning rates after each of the run's optimizer steps, from a fresh copy of the schedule
    reference = torch.optim.SGD([{"params": [torch.zeros(1)]}, {"params": [torch.zeros(1)]}], lr=0.1)
    replay = OneCycleLR(reference, max_lr=[0.1, 0.01], epochs=2, steps_per_epoch=4)
    expected = {}
    for step in range(1, 9):
        reference.step()
        replay.step()
        expected[step] = [g["lr"] for g in reference.param_groups]

    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in rows if r["kind"] == "step"]
    assert [r["step"] for r in steps] == list(range(1, 9))
    assert [[r["lr"], r["lr/1"]] for r in steps] == [pytest.approx(expected[s]) for s in range(1, 9)]
    with open(tmp_path / "metrics.csv", newline="") as f:
        csv_steps = [r for r in csv.DictReader(f) if r["kind"] == "step"]
    assert [float(r["lr/1"]) for r in csv_steps] == pytest.approx([expected[s][1] for s in range(1, 9)])

    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tensorboard"))
    events.Reload()
    assert [(e.step, e.value) for e in events.Scalars("lr")] == [
        (s, pytest.approx(expected[s][0], rel=1e-6)) for s in range(1, 9)
    ]
    # the console's running values show it
    progress = [line for line in console.getvalue().splitlines() if line.startswith("epoch 2/2 train ")]
    assert progress and all(" lr " in line and " lr/1 " in line for line in progress)
    # the history's lr: param group 0's at the start of each epoch (max_lr / 25 first, then the one after step 4)
    assert [row["lr"] for row in history] == pytest.approx([0.1 / 25, expected[4][0]])
