"""Exact resume after SIGKILL/SIGTERM/Ctrl-C, atomic checkpoints, early stopping, loop options."""

from __future__ import annotations

import json
import math
import os
import random
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest
import torch
import torch.nn.functional as TF
from conftest import SignalAtFetch, make_classification, mlp
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from xt_training import metrics
from xt_training.callbacks import EarlyStopping
from xt_training.checkpoint import nonfinite, save_checkpoint
from xt_training.errors import CheckpointError, ConfigError, MetricError, NonFiniteLossError
from xt_training.utils import functional as F

# A training script with shuffling, dropout, a per-batch scheduler, Python/NumPy randomness in the data
# and mid-epoch checkpoints; it prints nothing but the final weights' checksum.
SCRIPT = textwrap.dedent(
    """
    import random, sys, time
    import numpy as np, torch
    from torch import nn
    from torch.utils.data import DataLoader, Dataset
    from xt_training import metrics
    from xt_training.utils import functional as F

    torch.set_num_threads(1)
    save_dir, resume, delay = sys.argv[1], sys.argv[2] == "resume", float(sys.argv[3])
    torch.manual_seed(0); random.seed(0); np.random.seed(0)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(600, 16, generator=g); y = (x[:, :3].sum(1) > 0).long()

    class Noisy(Dataset):  # draws from Python's, NumPy's and torch's RNGs, like augmentations do
        def __len__(self): return 480
        def __getitem__(self, i):
            return x[i] + 0.01 * random.random() + 0.01 * float(np.random.rand()) + 0.01 * torch.rand(16), y[i]

    train = DataLoader(Noisy(), batch_size=16, shuffle=True)
    val = DataLoader(list(zip(x[480:], y[480:])), batch_size=40)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.3), nn.Linear(32, 2))
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.999 ** s)

    def loss_fn(y_pred, y):
        time.sleep(delay)
        return nn.functional.cross_entropy(y_pred, y)

    class Seen:  # a size-only metric: the pass's examples, carried into a resumed pass by its state
        def update(self, y_pred, y): raise AssertionError("size-only metrics get no outputs")
        def update_size(self, n): self.n += n
        def compute(self): return float(self.n)
        def reset(self): self.n = 0
        def get_state(self): return {"n": self.n}
        def set_state(self, state): self.n = state["n"]

    F.train(save_dir, train, model, opt, 4, loss_fn, val_loader=val, scheduler=sched, scheduler_step="batch",
            eval_metrics={"acc": metrics.Accuracy(), "seen": Seen()}, checkpoint_every_n_steps=7, resume=resume,
            quiet=True)
    print("WEIGHTS", torch.cat([p.detach().flatten() for p in model.parameters()]).double().sum().item())
    torch.save(model.state_dict(), save_dir + "/final.pt")
    """
)


def run_script(tmp_path, save_dir, *args):
    script = tmp_path / "train_script.py"
    script.write_text(SCRIPT)
    return subprocess.Popen(
        [sys.executable, str(script), str(save_dir), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def final_weights(save_dir):
    return torch.load(save_dir / "final.pt", weights_only=True)


def assert_same_weights(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("reference")
    proc = run_script(tmp, tmp / "run", "fresh", "0")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    history = (tmp / "run" / "history.json").read_text()
    assert [(row["train/seen"], row["val/seen"]) for row in json.loads(history)] == [(480.0, 120.0)] * 4
    return final_weights(tmp / "run"), history


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT])
def test_killed_run_resumes_bit_identical(tmp_path, reference, sig):
    save_dir = tmp_path / "run"
    proc = run_script(tmp_path, save_dir, "fresh", "0.02")
    deadline = time.time() + 120
    while not (save_dir / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1]
        time.sleep(0.02)
    time.sleep(random.Random(sig).uniform(0.05, 1.5))  # a step somewhere in the first epochs
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert "WEIGHTS" not in out, "the run finished before the signal; make it slower"
    if sig == signal.SIGTERM:
        assert proc.returncode == 0, err
        assert "stopped by SIGTERM: state saved to" in out and "resume with" in out
    elif sig == signal.SIGINT:
        assert proc.returncode in (130, -signal.SIGINT), err
        assert "stopped by SIGINT" in out
    else:
        assert proc.returncode == -signal.SIGKILL

    proc = run_script(tmp_path, save_dir, "resume", "0")
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err
    assert_same_weights(final_weights(save_dir), reference[0])
    assert (save_dir / "history.json").read_text() == reference[1]


class SignalAt(Dataset):
    """A data set that sends a signal to this process when item ``at`` is fetched the ``nth`` time."""

    def __init__(self, x, y, at, sig=signal.SIGTERM, nth=1):
        self.x, self.y, self.at, self.sig, self.nth, self.seen = x, y, at, sig, nth, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        if self.at is not None and i == self.at:
            self.seen += 1
            if self.seen == self.nth:
                os.kill(os.getpid(), self.sig)
        return self.x[i], self.y[i]


def train_signalled(tmp_path, train_at=None, val_at=None, resume=False, epochs=3, **options):
    torch.manual_seed(0)
    x, y = make_classification(320)
    if options.get("nonfinite_loss") == "skip":
        x[[3, 70, 141, 200]] = float("nan")  # the batches holding these are skipped
    train = DataLoader(SignalAt(x[:256], y[:256], train_at, nth=2), batch_size=32, shuffle=True)
    val = DataLoader(SignalAt(x[256:], y[256:], val_at, nth=2), batch_size=32)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.train(tmp_path, train, model, opt, epochs, nn.CrossEntropyLoss(), val_loader=val,
            eval_metrics={"acc": metrics.Accuracy()}, resume=resume, quiet=True, **options)  # fmt: skip
    return model.state_dict()


@pytest.mark.parametrize("where", ["train", "val"])
def test_sigterm_in_a_pass_saves_the_position_and_resume_is_exact(tmp_path, where, capsys):
    reference = train_signalled(tmp_path / "ref")
    kw = {"train_at": 5} if where == "train" else {"val_at": 40}
    with pytest.raises(SystemExit) as exit_info:
        train_signalled(tmp_path / "run", **kw)  # the signal comes in the 2nd epoch
    assert exit_info.value.code == 0
    state = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"]["phase"] == ("train" if where == "train" else "eval")
    resumed = train_signalled(tmp_path / "run", resume=True)
    assert_same_weights(resumed, reference)
    assert (tmp_path / "run" / "history.json").read_text() == (tmp_path / "ref" / "history.json").read_text()


def train_accumulating(save_dir, signal_at_step=None, resume=False):
    """3 epochs of 8 batches, an optimizer step every 4; SIGTERM while batch ``signal_at_step`` of epoch 2 loads."""
    torch.manual_seed(0)
    x, y = make_classification(320)
    n = None if signal_at_step is None else (8 + signal_at_step - 1) * 32 + 1
    train = DataLoader(SignalAtFetch(x[:256], y[:256], n), batch_size=32, shuffle=True)
    model = nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Dropout(0.2), nn.Linear(32, 3))
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.train(save_dir, train, model, opt, 3, nn.CrossEntropyLoss(), val_loader=DataLoader(list(zip(x[256:], y[256:])), batch_size=32),
            accumulate_grad_batches=4, resume=resume, quiet=True)  # fmt: skip
    return model.state_dict()


@pytest.fixture(scope="module")
def accumulating_reference(tmp_path_factory):
    save_dir = tmp_path_factory.mktemp("accumulating") / "run"
    return train_accumulating(save_dir), (save_dir / "history.json").read_text()


@pytest.mark.parametrize("step", [1, 2, 3, 4])
def test_a_stop_inside_an_accumulation_group_resumes_exactly(tmp_path, accumulating_reference, step):
    # the partial gradients of steps 1-3 are in no checkpoint: the stop comes after the group's optimizer step
    with pytest.raises(SystemExit) as exit_info:
        train_accumulating(tmp_path, signal_at_step=step)
    assert exit_info.value.code == 0
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["position"]["step"] == 4
    assert_same_weights(train_accumulating(tmp_path, resume=True), accumulating_reference[0])
    assert (tmp_path / "history.json").read_text() == accumulating_reference[1]


def test_resume_after_skipped_batches_is_exact(tmp_path):
    # the position counts the skipped batches: a resumed pass neither repeats batches nor forgets the count
    reference = train_signalled(tmp_path / "ref", nonfinite_loss="skip")
    history = json.loads((tmp_path / "ref" / "history.json").read_text())
    assert all(row["train/skipped"] > 0 for row in history)
    with pytest.raises(SystemExit):
        train_signalled(tmp_path / "run", train_at=60, nonfinite_loss="skip")  # in the 2nd epoch
    position = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["skipped"] > 0
    resumed = train_signalled(tmp_path / "run", resume=True, nonfinite_loss="skip")
    assert_same_weights(resumed, reference)
    assert (tmp_path / "run" / "history.json").read_text() == (tmp_path / "ref" / "history.json").read_text()


def test_resume_with_a_different_configuration_says_what_differs(tabular, tmp_path):
    train, _, _, _ = tabular
    model = mlp()
    F.train(
        tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, TF.cross_entropy, quiet=True
    )
    model = mlp()
    with pytest.raises(
        ConfigError, match=r"cannot resume .*differs .*\(lr: 0.1 then, 0.5 now\); use the same"
    ):
        F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.5), 2, TF.cross_entropy,
                resume=True, quiet=True)  # fmt: skip
    # more epochs is not a different run: training continues
    history = F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 2, TF.cross_entropy,
                      resume=True, quiet=True)  # fmt: skip
    assert [row["epoch"] for row in history] == [1, 2]


def test_resume_with_no_more_epochs(tmp_path):
    train_signalled(tmp_path / "run", epochs=2)
    last = tmp_path / "run" / "checkpoints" / "last.pt"
    written = last.stat().st_mtime_ns
    # a finished run resumed again (a retried job): nothing to do, and nothing is rewritten
    train_signalled(tmp_path / "run", epochs=2, resume=True)
    assert last.stat().st_mtime_ns == written
    with pytest.raises(ConfigError, match=r"with epochs=1: it has trained 2 epochs; pass epochs=3 or more$"):
        train_signalled(tmp_path / "run", epochs=1, resume=True)
    # stopped inside epoch 2: epochs=1 would drop the rest of it
    with pytest.raises(SystemExit):
        train_signalled(tmp_path / "part", train_at=5)
    with pytest.raises(
        ConfigError, match=r"it has trained 1 epoch and part of epoch 2; pass epochs=2 or more$"
    ):
        train_signalled(tmp_path / "part", epochs=1, resume=True)


def test_early_stopping_stops_and_its_state_is_checkpointed(tabular, tmp_path):
    train, val, _, _ = tabular
    model = mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.0)  # nothing improves
    stopper = EarlyStopping(patience=2, monitor="val/acc", mode="max")
    history = F.train(tmp_path, train, model, opt, 10, TF.cross_entropy, val_loader=val,
                      eval_metrics={"acc": metrics.Accuracy()}, callbacks=[stopper], quiet=True)  # fmt: skip
    assert len(history) == 3  # epoch 1 sets the best, 2 and 3 do not improve
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert state["callbacks"] == [{"best": history[0]["val/acc"], "bad_epochs": 2}]
    with pytest.raises(ConfigError, match="patience must be a positive integer"):
        EarlyStopping(patience=0)


def test_a_failed_save_keeps_the_previous_checkpoint(tmp_path):
    path = tmp_path / "last.pt"
    save_checkpoint(path, mlp(), epoch=1)
    before = path.read_bytes()
    with pytest.raises(Exception):  # noqa: B017 - any pickling error
        save_checkpoint(path, mlp(), epoch=2, unpicklable=lambda: None)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt"]  # no temporary file left


def test_disk_full_during_checkpoint_keeps_the_previous_one(tmp_path, monkeypatch):
    path = tmp_path / "last.pt"
    save_checkpoint(path, mlp(), epoch=1)
    before = path.read_bytes()

    def full(fd):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)  # simulated: the disk fills while the file is flushed
    with pytest.raises(OSError, match="No space left"):
        save_checkpoint(path, mlp(), epoch=2)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert torch.load(path, weights_only=True)["epoch"] == 1


class SlowDisk:
    """A callback that makes every fsync take `delay` seconds (or fail, `full`) from a given epoch's end on."""

    def __init__(self, monkeypatch, epoch, delay=0.0, full=False):
        self.monkeypatch, self.epoch, self.delay, self.full = monkeypatch, epoch, delay, full
        self.ends = {}
        self.synced = []  # when each slowed fsync returned

    def on_epoch_end(self, run, row):
        self.ends[run.epoch] = time.monotonic()
        if run.epoch == self.epoch:
            if self.full:  # it fills once the epoch before is written (history.json comes last)
                deadline = time.monotonic() + 10
                while not (run.save_dir / "history.json").exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            real = os.fsync

            def fsync(fd):
                if self.full:
                    raise OSError(28, "No space left on device")
                time.sleep(self.delay)
                real(fd)
                self.synced.append(time.monotonic())

            self.monkeypatch.setattr(os, "fsync", fsync)


def test_training_goes_on_while_the_checkpoint_is_written(tabular, tmp_path, monkeypatch):
    train, val, _, _ = tabular
    model = mlp()
    disk = SlowDisk(monkeypatch, epoch=1, delay=1.0)  # last.pt and history.json: 4 fsyncs, 4 s
    history = F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(),
                      val_loader=val, callbacks=[disk], quiet=True)  # fmt: skip
    # epoch 2 did not wait for epoch 1's files: it ended before their last fsync returned (an order of
    # events, not a time limit: a loaded machine slows both sides)
    assert len(disk.synced) >= 4 and disk.ends[2] < disk.synced[3]
    # F.train returned once everything was written
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 2
    assert json.loads((tmp_path / "history.json").read_text()) == history


def test_a_failed_background_write_fails_the_run_keeps_good_files(tabular, tmp_path, monkeypatch):
    train, val, _, _ = tabular
    model = mlp()
    disk = SlowDisk(monkeypatch, epoch=2, full=True)
    with pytest.raises(OSError, match="No space left on device"):
        F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 4, nn.CrossEntropyLoss(),
                val_loader=val, callbacks=[disk], quiet=True)  # fmt: skip
    monkeypatch.undo()
    assert 2 in disk.ends and 4 not in disk.ends  # the failure stopped the run
    ckpt = tmp_path / "checkpoints"
    assert torch.load(ckpt / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(ckpt / "best.pt", weights_only=True)["epoch"] == 1  # never linked to a failed write
    assert len(json.loads((tmp_path / "history.json").read_text())) == 1
    assert not [p for p in ckpt.iterdir() if p.name.endswith(".tmp")]  # no temporary file left


def test_an_exception_saves_crash_checkpoint_and_keeps_last(tabular, tmp_path, capsys):
    train, _, _, _ = tabular
    calls = []

    def loss_fn(y_pred, y):
        calls.append(1)
        if len(calls) > 15:
            raise ValueError("bad batch in user code")
        return TF.cross_entropy(y_pred, y)

    model = mlp()
    with pytest.raises(ValueError, match="bad batch in user code"):
        F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 3, loss_fn, quiet=True)
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["epoch"] == 1
    assert torch.load(tmp_path / "checkpoints" / "crash.pt", weights_only=True)["epoch"] == 2
    assert "the weights at the failure are in" in capsys.readouterr().out


def test_gradient_accumulation_equals_the_larger_batch(tmp_path):
    x, y = make_classification(256)
    results = []
    for batch, accumulate in ((64, 1), (32, 2)):
        model = mlp()
        loader = DataLoader(TensorDataset(x, y), batch_size=batch)
        F.train(tmp_path / str(batch), loader, model, torch.optim.SGD(model.parameters(), lr=0.5), 2,
                TF.cross_entropy, accumulate_grad_batches=accumulate, quiet=True)  # fmt: skip
        results.append(model.state_dict())
    for k in results[0]:
        torch.testing.assert_close(results[0][k], results[1][k], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("precision", ["bf16-mixed", "16-mixed"])
def test_mixed_precision_trains(tabular, tmp_path, precision):
    train, val, _, _ = tabular
    model = mlp()
    history = F.train(tmp_path, train, model, torch.optim.Adam(model.parameters(), 1e-2), 3, TF.cross_entropy,
                      val_loader=val, eval_metrics={"acc": metrics.Accuracy()}, precision=precision,
                      clip_grad_norm=1.0, quiet=True)  # fmt: skip
    assert history[-1]["val/acc"] > 0.6
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert (state["scaler"] is not None) == (precision == "16-mixed")


def test_gradient_clipping_limits_the_update(tmp_path):
    x, y = make_classification(64)
    loader = DataLoader(TensorDataset(x * 1000, y), batch_size=64)
    model = mlp()
    before = [p.detach().clone() for p in model.parameters()]
    F.train(tmp_path, loader, model, torch.optim.SGD(model.parameters(), lr=1.0), 1, TF.cross_entropy,
            clip_grad_norm=0.01, quiet=True)  # fmt: skip
    step = torch.cat([(p.detach() - b).flatten() for p, b in zip(model.parameters(), before)])
    assert step.norm() <= 0.01 + 1e-6


@pytest.mark.parametrize(
    ("option", "value", "message"),
    [
        ("precision", "fp8", "precision must be one of '32', 'bf16-mixed', '16-mixed', not 'fp8'"),
        ("accumulate_grad_batches", 0, "accumulate_grad_batches must be a positive integer, not 0"),
        ("checkpoint_every_n_steps", -5, "checkpoint_every_n_steps must be a positive integer, not -5"),
        ("log_every_n_steps", 2.5, "log_every_n_steps must be a positive integer, not 2.5"),
        ("device", "gpu:0", "invalid device 'gpu:0'"),
    ],
)
def test_bad_loop_options(tabular, tmp_path, option, value, message):
    model = mlp()
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")):
        F.train(tmp_path, tabular[0], model, torch.optim.SGD(model.parameters(), lr=0.1), 1, TF.cross_entropy,
                quiet=True, **{option: value})  # fmt: skip


def test_nonfinite_loss_skip_leaves_those_batches_out(tabular, tmp_path):
    train, _, _, _ = tabular
    calls = []

    def loss_fn(y_pred, y):
        calls.append(1)
        loss = TF.cross_entropy(y_pred, y)
        return loss * float("inf") if len(calls) in (3, 8) else loss

    model = mlp()
    history = F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), 2, loss_fn,
                      nonfinite_loss="skip", quiet=True)  # fmt: skip
    assert [row["train/skipped"] for row in history] == [2, 0]
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert history[0]["train/loss"] < 10 and "skipped 2 batches" in (tmp_path / "notes.txt").read_text()
    with pytest.raises(ConfigError, match="nonfinite_loss must be 'raise' or 'skip', not 'ignore'"):
        F.train(tmp_path / "other", train, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, loss_fn,
                nonfinite_loss="ignore", quiet=True)  # fmt: skip


def test_labels_out_of_range_name_the_metric():
    x, _ = make_classification(64)
    loader = DataLoader(TensorDataset(x, torch.full((64,), 7)), batch_size=32)  # 3 classes: 0, 1, 2
    with pytest.raises(
        MetricError,
        match=r"metric 'acc' \(Accuracy\) failed on y_pred Tensor\(32, 3\) float32 and y Tensor\(32,\) int64: .*",
    ):
        F.test({"test": loader}, mlp(), None, {"acc": metrics.Accuracy()}, quiet=True)


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 0), (signal.SIGINT, 130)])
def test_xt_run_stops_on_a_signal_and_resumes(tmp_path, sig, code):
    xt = [sys.executable, "-m", "xt_training"]
    # 150 steps an epoch: the signal comes after the first mid-epoch checkpoint (step 50), with ~400 to go
    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=4000",
           "--batch-size", "16", "--epochs", "3", "--checkpoint-every", "50"]  # fmt: skip
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([*xt, *run, "--save-dir", str(run_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)  # fmt: skip
    deadline = time.time() + 120
    while not (run_dir / "checkpoints" / "last.pt").exists():
        assert proc.poll() is None and time.time() < deadline, proc.communicate()
        time.sleep(0.05)
    proc.send_signal(sig)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == code, (out, err)
    assert f"stopped by {sig.name}: state saved to" in out
    if sig == signal.SIGTERM:
        assert f"xt run --resume {run_dir}" in out
        resumed = subprocess.run([*xt, "run", "--resume", str(run_dir)], capture_output=True, text=True,
                                 timeout=300)  # fmt: skip
        assert resumed.returncode == 0, resumed.stderr
        # it says where it goes on (the signal came mid-pass: a step of the training pass)
        assert re.search(
            rf"resuming the run in {re.escape(str(run_dir))} at step \d+ of epoch \d", resumed.stderr
        )
        history = json.loads((run_dir / "history.json").read_text())
        assert [row["epoch"] for row in history] == [1, 2, 3]
    else:
        assert err.strip().endswith("xt: interrupted")


def _xt(*args, cwd):
    """The real `xt` command line, in this process (a new process would import torch again), in ``cwd``."""
    from click.testing import CliRunner

    from xt_training.cli import cli

    old = os.getcwd()
    os.chdir(cwd)
    try:
        return CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)


def test_a_diverging_run_keeps_its_last_finite_checkpoint_and_resumes_from_it(tmp_path):
    # lr=1e3 diverges at step 9, between logging steps: the checkpoint of step 10 would hold NaN weights and
    # losses, which no resume gets past; it is refused, and step 5's stays
    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=20000",
           "--optimizer", "sgd", "--lr", "1e3", "--checkpoint-every", "5", "--save-dir", "nanrun", "-q"]  # fmt: skip
    first = _xt(*run, cwd=tmp_path)
    message = "xt: error: the loss is nan at epoch 1, step 9; lower the learning rate"
    assert first.exit_code == 2 and first.stderr.splitlines()[-1].startswith(message), first.output
    assert "(checkpoints/last.pt keeps the last finite state)" in first.stderr
    last = tmp_path / "nanrun" / "checkpoints" / "last.pt"
    state = torch.load(last, weights_only=True)
    assert state["position"]["step"] == 5 and nonfinite(state) == []
    saved = last.read_bytes()
    # the resume loads it and goes on exactly: to the same divergence, and the same checkpoint stays
    resumed = _xt("run", "--resume", "nanrun", "-q", cwd=tmp_path)
    assert resumed.exit_code == 2 and resumed.stderr.splitlines()[-1] == first.stderr.splitlines()[-1]
    assert last.read_bytes() == saved


class Root(nn.Module):
    """sqrt(w) at w = 0: a finite output whose gradient is infinite, so the weights go NaN/inf while the
    loss of the step stays finite; ``mask`` is -inf by design (as an attention mask may be)."""

    def __init__(self, w):
        super().__init__()
        self.fc, self.w = nn.Linear(16, 3), nn.Parameter(torch.tensor(w))
        self.register_buffer("mask", torch.tensor(float("-inf")))

    def forward(self, x):
        return self.fc(x) + self.w.sqrt()


def test_weights_that_become_nonfinite_are_never_saved(tmp_path):
    x, y = make_classification(32)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)

    def train(save_dir, model):
        opt = torch.optim.SGD(model.parameters(), lr=0.1)
        return F.train(save_dir, loader, model, opt, 1, nn.CrossEntropyLoss(), quiet=True)

    train(tmp_path / "fine", Root(1.0))  # a buffer that is -inf from the start is the model's own: saved
    saved = torch.load(tmp_path / "fine" / "checkpoints" / "last.pt", weights_only=True)
    assert saved["model"]["mask"] == -math.inf
    message = r"^the state became NaN/inf at epoch 1 \(model\.w\); .*\(nothing was saved\)$"
    with pytest.raises(NonFiniteLossError, match=message):
        train(tmp_path / "root", Root(0.0))  # one step, a finite loss: only the check before the save sees it
    assert not (tmp_path / "root" / "checkpoints" / "last.pt").exists()
    assert (tmp_path / "root" / "checkpoints" / "crash.pt").exists()  # the weights at the failure, to inspect


def _corrupt(path, in_place=False):
    """Truncate a checkpoint: in place (every hard link of it too), or as a new file beside its links."""
    data = path.read_bytes()
    if not in_place:
        path.unlink()
    path.write_bytes(data[:300])


def test_a_corrupt_last_pt_offers_the_intact_best_pt(tabular, tmp_path):
    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200",
           "--epochs", "2", "--save-dir", "r", "-q"]  # fmt: skip
    assert _xt(*run, cwd=tmp_path).exit_code == 0
    last, best = tmp_path / "r" / "checkpoints" / "last.pt", tmp_path / "r" / "checkpoints" / "best.pt"
    epoch = torch.load(best, weights_only=True)["epoch"]
    _corrupt(last)
    resumed = _xt("run", "--resume", "r", "--epochs", "3", cwd=tmp_path)
    assert resumed.exit_code == 2 and resumed.output.count("\n") == 1 and "Traceback" not in resumed.output
    assert resumed.output == (
        "xt: error: checkpoint 'r/checkpoints/last.pt' is truncated or corrupt (PytorchStreamReader failed reading "
        f"zip archive: failed finding central directory); its best.pt (epoch {epoch}) is intact: resume from there "
        "with `cp r/checkpoints/best.pt r/checkpoints/last.pt`, then `xt run --resume r`, or retrain\n"
    )
    last.write_bytes(best.read_bytes())  # as offered
    assert _xt("run", "--resume", "r", "--epochs", "3", "-q", cwd=tmp_path).exit_code == 0
    assert [row["epoch"] for row in json.loads((tmp_path / "r" / "history.json").read_text())] == [1, 2, 3]

    # a run of F.train is offered F.train's way; a best.pt that is the same file as last.pt is no way out
    model = mlp()
    args = (tabular[0], model, torch.optim.SGD(model.parameters(), lr=0.1))
    F.train(tmp_path / "py", *args, 1, nn.CrossEntropyLoss(), quiet=True)
    last, best = tmp_path / "py" / "checkpoints" / "last.pt", tmp_path / "py" / "checkpoints" / "best.pt"
    _corrupt(last)
    offer = (
        f"its best.pt (epoch 1) is intact: resume from there with F.train(..., resume='{best}'), or retrain"
    )
    with pytest.raises(
        CheckpointError,
        match=r"^checkpoint '.*last.pt' is truncated or corrupt \(.*\); " + re.escape(offer) + "$",
    ):
        F.train(tmp_path / "py", *args, 2, nn.CrossEntropyLoss(), quiet=True, resume=True)
    assert (
        F.train(tmp_path / "py", *args, 2, nn.CrossEntropyLoss(), quiet=True, resume=best)[-1]["epoch"] == 2
    )
    _corrupt(last, in_place=True)  # best.pt is its hard link (epoch 2 improved): as truncated
    assert best.samefile(last)
    with pytest.raises(CheckpointError, match=r"\); no other checkpoint of the run is intact: retrain$"):
        F.train(tmp_path / "py", *args, 3, nn.CrossEntropyLoss(), quiet=True, resume=True)
