"""Weight averaging (EMA, SWA) and your own state in the checkpoint (issue 27), through F.train and `xt run`:
the numbers against torch reference loops, exact resume after SIGTERM and SIGKILL."""

from __future__ import annotations

import copy
import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import SignalAtFetch, make_classification, xt
from test_fault_tolerance import SignalAt, assert_same_weights
from torch import nn
from torch.optim.swa_utils import SWALR, AveragedModel, update_bn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.errors import ConfigError
from xt_training.utils import functional as F

AVERAGING = {"ema": {"ema_decay": 0.8}, "swa": {"swa_start": 2, "swa_lr": 0.05}}


def bn_model(dropout: float = 0.0) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(dropout), nn.Linear(32, 3)
    )


def loaders():
    x, y = make_classification(256)
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=32)
    return train, val


def val_loss(model, val):
    model.eval()
    with torch.no_grad():
        total = sum(nn.functional.cross_entropy(model(x), y) * len(y) for x, y in val)
    model.train()
    return (total / len(val.dataset)).item()


def floats(state):
    return {k: v for k, v in state.items() if v.is_floating_point()}


def test_ema_weights_equal_a_hand_computed_ema(tmp_path):
    decay, epochs = 0.8, 3
    train, val = loaders()
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    history = F.train(tmp_path, train, model, optimizer, epochs, nn.CrossEntropyLoss(), val, ema_decay=decay,
                      export="pt2", quiet=True)  # fmt: skip

    # the same steps by hand: the EMA of every float parameter and buffer, after every optimizer step
    reference = bn_model()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.1, momentum=0.9)
    torch.manual_seed(1)
    ema, losses = None, []
    for _ in range(epochs):
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(reference(x), y).backward()
            optimizer.step()
            weights = {k: v.clone() for k, v in floats(reference.state_dict()).items()}
            ema = weights if ema is None else {k: decay * ema[k] + (1 - decay) * weights[k] for k in ema}
        averaged = copy.deepcopy(reference)
        averaged.load_state_dict(ema, strict=False)
        losses.append(val_loss(averaged, val))

    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert_same_weights(last["averaging"]["raw"], reference.state_dict())  # training itself is unchanged
    assert last["averaging"]["count"] == epochs * len(train)
    for k, v in ema.items():  # the model ends with the EMA, and last.pt's model is it
        torch.testing.assert_close(model.state_dict()[k], v, rtol=1e-5, atol=1e-6)
        assert torch.equal(last["model"][k], model.state_dict()[k])
    # the EMA is another model than the trained one: the comparison above tells them apart
    assert not torch.allclose(ema["0.weight"], reference[0].weight, atol=1e-3)
    assert not torch.allclose(ema["1.running_var"], reference[1].running_var, atol=1e-3)
    # validation evaluated the EMA (its BatchNorm statistics included)
    assert [row["val/loss"] for row in history] == pytest.approx(losses, rel=1e-5)
    # best.pt and the export hold the EMA of the best epoch, not the trained weights
    best = torch.load(tmp_path / "checkpoints" / "best.pt", weights_only=True)
    assert not torch.equal(best["model"]["0.weight"], best["averaging"]["raw"]["0.weight"])
    best_model = bn_model().eval()
    best_model.load_state_dict(best["model"])
    x = val.dataset.tensors[0]
    exported = torch.export.load(tmp_path / "model.pt2").module()
    torch.testing.assert_close(exported(x), best_model(x))


def test_swa_averages_each_epoch_and_updates_the_batchnorm_statistics(tmp_path):
    epochs, swa_start = 4, 2
    train, val = loaders()
    model = bn_model()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    torch.manual_seed(1)
    history = F.train(tmp_path, train, model, optimizer, epochs, nn.CrossEntropyLoss(), val, scheduler=scheduler,
                      swa_start=swa_start, swa_lr=0.05, quiet=True)  # fmt: skip

    # torch's recipe by hand (epochs counted from 1 here)
    reference = bn_model()
    optimizer = torch.optim.SGD(reference.parameters(), lr=0.2, momentum=0.9)
    scheduler = torch.optim.lr_scheduler.StepLR(optimizer, step_size=1, gamma=0.5)
    swa_model, swa_scheduler = AveragedModel(reference), SWALR(optimizer, swa_lr=0.05)
    torch.manual_seed(1)
    losses, rates = [], []
    for epoch in range(1, epochs + 1):
        rates.append(optimizer.param_groups[0]["lr"])
        for x, y in train:
            optimizer.zero_grad()
            nn.functional.cross_entropy(reference(x), y).backward()
            optimizer.step()
        if epoch >= swa_start:
            swa_model.update_parameters(reference)
            if epoch == epochs:
                update_bn(train, swa_model)
        losses.append(val_loss(swa_model.module if epoch >= swa_start else reference, val))
        (swa_scheduler if epoch >= swa_start else scheduler).step()

    assert [row["lr"] for row in history] == rates
    assert [row["val/loss"] for row in history] == pytest.approx(losses, rel=1e-6)
    assert_same_weights(model.state_dict(), swa_model.module.state_dict())
    last = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert_same_weights(last["averaging"]["raw"], reference.state_dict())
    assert_same_weights(last["model"], swa_model.module.state_dict())
    # update_bn computed statistics of its own: neither those of the trained weights nor those it started from
    bn = model[1]
    assert not torch.allclose(bn.running_mean, reference[1].running_mean, atol=1e-3)
    assert not torch.allclose(bn.running_var, torch.ones(32), atol=1e-3)


def train_signalled(save_dir, averaging, train_at=None, val_at=None, resume=False):
    """3 epochs; SIGTERM when item ``train_at`` (``val_at``) of the training (validation) data is fetched in
    the 3rd epoch, where the average holds several weights and, for SWA, update_bn has run before validation."""
    torch.manual_seed(0)
    x, y = make_classification(320)
    train = DataLoader(SignalAt(x[:256], y[:256], train_at, nth=3), batch_size=32, shuffle=True)
    val = DataLoader(SignalAt(x[256:], y[256:], val_at, nth=3), batch_size=32)
    model = bn_model(dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.train(save_dir, train, model, opt, 3, nn.CrossEntropyLoss(), val, eval_metrics={"acc": metrics.Accuracy()},
            resume=resume, quiet=True, **AVERAGING[averaging])  # fmt: skip
    return model.state_dict()


@pytest.mark.parametrize("averaging", ["ema", "swa"])
@pytest.mark.parametrize("where", ["train", "val"])
def test_sigterm_and_resume_with_averaging_is_exact(tmp_path, averaging, where):
    reference = train_signalled(tmp_path / "ref", averaging)
    with pytest.raises(SystemExit):
        train_signalled(tmp_path / "run", averaging, **{f"{where}_at": 5})
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["epoch"] == 2 and last["position"]["phase"] == ("train" if where == "train" else "eval")
    # EMA: one weight per optimizer step; SWA: one per epoch from the 2nd on, the 3rd's before its validation
    expected = last["global_step"] if averaging == "ema" else 1 + (where == "val")
    assert last["averaging"]["count"] == expected
    assert_same_weights(train_signalled(tmp_path / "run", averaging, resume=True), reference)
    assert (tmp_path / "run" / "history.json").read_text() == (tmp_path / "ref" / "history.json").read_text()
    ref_last = torch.load(tmp_path / "ref" / "checkpoints" / "last.pt", weights_only=True)
    resumed_last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert_same_weights(resumed_last["averaging"]["raw"], ref_last["averaging"]["raw"])


def train_killed(save_dir, averaging, kill_at=None, resume=False):
    """3 epochs, a checkpoint every 3 optimizer steps; SIGKILL at the ``kill_at``-th fetch of a training example."""
    torch.manual_seed(0)
    x, y = make_classification(320)
    train = DataLoader(SignalAtFetch(x[:256], y[:256], kill_at, signal.SIGKILL), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[256:], y[256:]), batch_size=64)
    model = bn_model(dropout=0.2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    F.train(save_dir, train, model, opt, 3, nn.CrossEntropyLoss(), val,
            checkpoint_every_n_steps=3, resume=resume, quiet=True, **AVERAGING[averaging])  # fmt: skip
    return model.state_dict()


@pytest.mark.parametrize("averaging", ["ema", "swa"])
def test_sigkill_and_resume_with_averaging_is_exact(tmp_path, averaging):
    # killed in a process of its own while batch 6 of epoch 3 loads; meanwhile the uninterrupted run here
    call = f"train_killed({str(tmp_path / 'run')!r}, {averaging!r}, kill_at={2 * 256 + 5 * 32 + 1})"
    code = (
        f"import sys; sys.path[:0] = [{str(Path(__file__).parent)!r}]; from test_averaging import *; {call}"
    )
    killed = subprocess.Popen([sys.executable, "-c", code], stderr=subprocess.PIPE, text=True)
    reference = train_killed(tmp_path / "ref", averaging)
    err = killed.communicate(timeout=300)[1]
    assert killed.returncode == -signal.SIGKILL, err
    position = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["phase"] == "train" and position["row"]["epoch"] == 3  # a checkpoint inside the epoch
    assert_same_weights(train_killed(tmp_path / "run", averaging, resume=True), reference)
    assert (tmp_path / "run" / "history.json").read_text() == (tmp_path / "ref" / "history.json").read_text()


class LanguageModel(nn.Module):
    """pytorch/examples' word_language_model in small: embedding, LSTM, decoder; the hidden state goes in and out."""

    def __init__(self, vocab=20, hidden=16):
        super().__init__()
        self.embed, self.lstm = nn.Embedding(vocab, hidden), nn.LSTM(hidden, hidden)
        self.decode = nn.Linear(hidden, vocab)

    def forward(self, x, hidden):
        out, hidden = self.lstm(self.embed(x), hidden)
        return self.decode(out), hidden


class Hidden:
    """The hidden state carried from batch to batch, registered with F.train(state={'hidden': ...})."""

    def __init__(self):
        self.h = None

    def state_dict(self):
        return {"h": self.h}

    def load_state_dict(self, state):
        self.h = state["h"]


class ResetHidden:
    """A callback: each pass starts from a zero hidden state (word_language_model's init_hidden per epoch)."""

    def __init__(self, hidden):
        self.hidden = hidden

    def on_pass_start(self, run, name):
        self.hidden.h = None


class Batches:
    """A callback with its own state: the batches of each pass, counted from its on_pass_start, and of the run."""

    def __init__(self):
        self.passes, self.n, self.total = [], 0, 0

    def on_pass_start(self, run, name):
        self.n = 0

    def on_train_batch_end(self, run, batch, step, y_pred, loss):
        self.n += 1
        self.total += 1

    on_validation_batch_end = on_train_batch_end

    def on_pass_end(self, run, name, values):
        self.passes.append((name, self.n))

    def state_dict(self):
        return {"passes": self.passes, "n": self.n, "total": self.total}

    def load_state_dict(self, state):
        self.passes, self.n, self.total = [tuple(p) for p in state["passes"]], state["n"], state["total"]


def train_language_model(save_dir, register=True, train_at=None, val_at=None, resume=False):
    """3 epochs over a token stream cut into (bptt, batch) chunks, in order; SIGTERM while chunk ``train_at``
    (``val_at``) of the training (validation) data loads in the 2nd epoch."""
    g = torch.Generator().manual_seed(0)
    stream = torch.randint(0, 20, (28 * 7 * 4 + 1,), generator=g)
    chunks = stream[:-1].view(28, 7, 4), stream[1:].view(28, 7, 4)  # 28 chunks of 7 steps, batch 4
    train = DataLoader(SignalAt(chunks[0][:24], chunks[1][:24], train_at, nth=2), batch_size=None)
    val = DataLoader(SignalAt(chunks[0][24:], chunks[1][24:], val_at, nth=2), batch_size=None)
    hidden, counter = Hidden(), Batches()

    def forward(model, batch):
        x, y = batch
        out, h = model(x, hidden.h)
        hidden.h = tuple(t.detach() for t in h)  # word_language_model's repackage_hidden
        return out.reshape(-1, 20), y.reshape(-1)

    torch.manual_seed(0)
    model = LanguageModel()
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    F.train(save_dir, train, model, opt, 3, nn.CrossEntropyLoss(), val, forward_fn=forward,
            callbacks=[ResetHidden(hidden), counter], state={"hidden": hidden} if register else None,
            resume=resume, quiet=True)  # fmt: skip
    return model.state_dict(), (counter.passes, counter.total)


@pytest.mark.parametrize("where", ["train", "val"])
def test_a_carried_lstm_hidden_state_registered_as_state_resumes_bit_identically(tmp_path, where):
    reference, counts = train_language_model(tmp_path / "ref")
    assert counts == ([("train", 24), ("val", 4)] * 3, 3 * 28)
    run = tmp_path / "run"
    with pytest.raises(SystemExit):
        train_language_model(run, **{f"{where}_at": 2})
    position = torch.load(run / "checkpoints" / "last.pt", weights_only=True)["position"]
    assert position["phase"] == ("train" if where == "train" else "eval") and position["row"]["epoch"] == 2
    resumed, resumed_counts = train_language_model(run, resume=True)
    assert_same_weights(resumed, reference)
    assert (run / "history.json").read_text() == (tmp_path / "ref" / "history.json").read_text()
    # the callback's state goes on from the checkpoint: in a pass resumed from its middle, though its
    # on_pass_start ran again; after a stop in validation, as it was before that validation (run again)
    assert resumed_counts == counts


def test_without_state_a_resumed_lstm_starts_from_a_zero_hidden_state(tmp_path):
    """What the issue saw with word_language_model: the carried state is lost, and the weights differ."""
    reference, _ = train_language_model(tmp_path / "ref", register=False)
    with pytest.raises(SystemExit):
        train_language_model(tmp_path / "run", register=False, train_at=10)
    resumed, _ = train_language_model(tmp_path / "run", register=False, resume=True)
    assert any(not torch.equal(resumed[k], reference[k]) for k in reference)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"state": {"hidden": [1, 2]}}, "state['hidden'] must have state_dict() and load_state_dict()"),
        ({"state": [Hidden()]}, "state must be a dict of name -> object with state_dict()"),
        ({"ema_decay": 1.5}, "ema_decay must be a number between 0 and 1"),
        ({"ema_decay": 0.9, "swa_start": 1, "swa_lr": 0.1}, "two ways to average the weights; choose one"),
        ({"swa_start": 1}, "swa_start needs swa_lr"),
        ({"swa_start": 3, "swa_lr": 0.1}, "swa_start=3 is after the last epoch (2)"),
        ({"swa_lr": 0.1}, "swa_lr is the learning rate of SWA, which needs swa_start=EPOCH"),
        ({"swa_start": 1, "swa_lr": -1}, "swa_lr must be a positive number"),
    ],
)
def test_bad_averaging_and_state_options_are_refused_before_training(tmp_path, options, message):
    train, val = loaders()
    model = bn_model()
    with pytest.raises(ConfigError) as error:
        F.train(tmp_path / "run", train, model, torch.optim.SGD(model.parameters(), lr=0.1), 2,
                nn.CrossEntropyLoss(), val, quiet=True, **options)  # fmt: skip
    assert message in str(error.value) and "\n" not in str(error.value)
    assert not (tmp_path / "run").exists()


def test_resume_refuses_other_averaging_or_other_state(tmp_path):
    train, val = loaders()

    def run(epochs, **options):
        model = bn_model()
        F.train(tmp_path, train, model, torch.optim.SGD(model.parameters(), lr=0.1), epochs, nn.CrossEntropyLoss(),
                val, resume=True, quiet=True, **options)  # fmt: skip

    run(1, ema_decay=0.9, state={"hidden": Hidden()})
    with pytest.raises(ConfigError, match=r"ema_decay: 0.9 then, None now"):
        run(2, state={"hidden": Hidden()})
    with pytest.raises(ConfigError, match=r"it holds state= \['hidden'\], this run \[\]"):
        run(2, ema_decay=0.9)
    run(2, ema_decay=0.9, state={"hidden": Hidden()})


def test_cli_averaging_flags(tmp_path):
    """`xt run --ema-decay` reaches F.train and config.json; `--swa-start`/`--swa-lr` reach the configuration
    (a resume with them is refused: the run trained without)."""
    args = ["--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200", "-q"]
    xt("run", *args, "--epochs", "2", "--ema-decay", "0.9", "--save-dir", "run", cwd=tmp_path)
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (config["ema_decay"], config["swa_start"], config["swa_lr"]) == (0.9, None, None)
    last = torch.load(tmp_path / "run" / "checkpoints" / "last.pt", weights_only=True)
    assert last["config"]["ema_decay"] == 0.9 and last["averaging"]["count"] == last["global_step"] > 0
    out = xt("run", "--resume", "run", "--swa-start", "2", "--swa-lr", "0.01", cwd=tmp_path, code=2)
    assert "(swa_start: None then, 2 now; swa_lr: None then, 0.01 now)" in out.stderr
