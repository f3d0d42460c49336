"""The built-in loggers on real training runs: files read back with their real readers, real subprocesses."""

from __future__ import annotations

import csv
import fcntl
import io
import json
import math
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.errors import ConfigError
from xt_training.loggers.console import ConsoleLogger
from xt_training.loggers.csv import CSVLogger
from xt_training.loggers.jsonl import JSONLLogger
from xt_training.loggers.tensorboard import TensorBoardLogger
from xt_training.utils import functional as F

FIXED = ("kind", "step", "time")  # what a JSONL/CSV epoch row adds to the history row
STEPS_PER_EPOCH = 12  # 192 examples / batch 16
LOG_EVERY = 5
HISTOGRAM_EVERY = 10


def loaders(n: int = 256, batch_size: int = 16, seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    train = DataLoader(TensorDataset(x[:192], y[:192]), batch_size=batch_size, shuffle=True, generator=g)
    held_out = DataLoader(TensorDataset(x[192:], y[192:]), batch_size=32)
    return train, held_out


def model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 3))


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """One real 3-epoch run with every built-in logger (val, two test loaders, a non-scalar metric, a scheduler)."""
    save_dir = tmp_path_factory.mktemp("run")
    train, held_out = loaders()
    net = model()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.2)
    console = io.StringIO()
    history = F.train(
        save_dir,
        train,
        net,
        optimizer,
        3,
        nn.CrossEntropyLoss(),
        val_loader=held_out,
        test_loaders={"test": held_out, "other": held_out},
        scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1, gamma=0.5),
        eval_metrics={"acc": metrics.Accuracy(), "cm": metrics.ConfusionMatrix()},
        log_every_n_steps=LOG_EVERY,
        loggers=[
            ConsoleLogger(file=console, progress=False),
            TensorBoardLogger(save_dir=save_dir, histogram_every_n_steps=HISTOGRAM_EVERY, model=net),
            CSVLogger(save_dir=save_dir),
            JSONLLogger(save_dir=save_dir),
        ],
    )
    jsonl = [json.loads(line) for line in (save_dir / "metrics.jsonl").read_text().splitlines()]
    return SimpleNamespace(dir=save_dir, history=history, console=console.getvalue(), jsonl=jsonl)


def logging_steps(epochs: int = 3) -> list[int]:
    """Global steps at which the loop logs: the first step of each pass and every LOG_EVERY-th step."""
    per_pass = [s for s in range(1, STEPS_PER_EPOCH + 1) if s == 1 or s % LOG_EVERY == 0]
    return [(e - 1) * STEPS_PER_EPOCH + s for e in range(1, epochs + 1) for s in per_pass]


def scalar_items(row: dict) -> dict:
    return {k: v for k, v in row.items() if not isinstance(v, list)}


def events(log_dir: Path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "histograms": 0, "tensors": 0})
    acc.Reload()
    return acc


# --- TensorBoard -------------------------------------------------------------------------------------


def test_tensorboard_epoch_scalars_equal_the_history(run):
    acc = events(run.dir / "tensorboard")
    epoch_ends = [e * STEPS_PER_EPOCH for e in (1, 2, 3)]
    expected_tags = {f"epoch/{k}" for k in scalar_items(run.history[0]) if k != "epoch"}
    assert {t for t in acc.Tags()["scalars"] if t.startswith("epoch/")} == expected_tags
    assert "epoch/lr" in expected_tags and "epoch/test.other/acc" in expected_tags
    for tag in expected_tags:
        got = acc.Scalars(tag)
        assert [e.step for e in got] == epoch_ends, tag
        assert [e.value for e in got] == pytest.approx([row[tag[6:]] for row in run.history], rel=1e-6), tag
    assert [e.value for e in acc.Scalars("epoch/lr")] == pytest.approx([0.2, 0.1, 0.05])


def test_tensorboard_interval_scalars_are_the_logged_running_values(run):
    acc = events(run.dir / "tensorboard")
    interval = {t for t in acc.Tags()["scalars"] if not t.startswith("epoch/")}
    assert interval == {"train/loss", "train/acc"}  # no confusion matrix, no eval passes
    step_rows = [r for r in run.jsonl if r["kind"] == "step"]
    assert [e.step for e in acc.Scalars("train/loss")] == logging_steps()
    for tag in interval:
        # a metric whose compute() is slow (> 0.5 ms, as on a loaded machine) skips some logging steps
        rows = [r for r in step_rows if tag in r]
        got = acc.Scalars(tag)
        assert [e.step for e in got] == [r["step"] for r in rows]
        assert [e.value for e in got] == pytest.approx([r[tag] for r in rows], rel=1e-6)
    # the running value at an epoch's last logging step is its exact value when the step ends the epoch
    last = [r for r in step_rows if r["step"] == STEPS_PER_EPOCH * 3]
    assert last == [] or last[0]["train/loss"] == pytest.approx(run.history[-1]["train/loss"])


def test_tensorboard_scalars_keep_the_time_they_were_logged_at(tmp_path):
    # they reach the writer in bulk (at the epoch's end here), each logging step with its own wall time
    train, _ = loaders()
    net = model()

    def slow_forward(model, batch):
        time.sleep(0.02)
        return model(batch[0]), batch[1]

    F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
            forward_fn=slow_forward, log_every_n_steps=1, loggers=[TensorBoardLogger(save_dir=tmp_path)])  # fmt: skip
    walls = [e.wall_time for e in events(tmp_path / "tensorboard").Scalars("train/loss")]
    assert len(walls) == STEPS_PER_EPOCH and walls == sorted(walls)
    assert min(b - a for a, b in zip(walls, walls[1:])) >= 0.015  # the steps are >= 20 ms apart


def test_tensorboard_writes_in_the_training_thread(tmp_path):
    # no writer thread: SummaryWriter's, woken by every event, would compete with the loop for the GIL
    train, _ = loaders()
    net = model()
    before, extra = set(threading.enumerate()), []  # (earlier tests may have left e.g. tqdm's monitor)

    def forward(model, batch):  # threads started since, besides the checkpoints' writer (xt-writer)
        new = [t for t in threading.enumerate() if t not in before]
        extra.append([t.name for t in new if not t.name.startswith("xt-writer")])
        return model(batch[0]), batch[1]

    F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(),
            forward_fn=forward, log_every_n_steps=1, quiet=True, loggers=[TensorBoardLogger(save_dir=tmp_path)])  # fmt: skip
    assert extra == [[]] * 2 * STEPS_PER_EPOCH
    assert [e.step for e in events(tmp_path / "tensorboard").Scalars("train/loss")] == list(range(1, 25))


def test_tensorboard_hparams_hold_the_config_and_final_metrics(run):
    from tensorboard.plugins.hparams import plugin_data_pb2

    content = events(run.dir / "tensorboard").PluginTagToContent("hparams")
    data = {tag: plugin_data_pb2.HParamsPluginData.FromString(c) for tag, c in content.items()}
    hparams = data["_hparams_/session_start_info"].session_start_info.hparams
    assert hparams["optimizer"].string_value == "SGD"
    assert hparams["lr"].number_value == pytest.approx(0.2)
    assert hparams["epochs"].number_value == 3
    metric_tags = {m.name.tag for m in data["_hparams_/experiment"].experiment.metric_infos}
    assert metric_tags == {f"epoch/{k}" for k in scalar_items(run.history[-1]) if "/" in k}
    assert session_status(run.dir / "tensorboard") == "STATUS_SUCCESS"


def session_status(log_dir) -> str:
    """The status the HPARAMS dashboard shows for the run."""
    from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2

    content = events(log_dir).PluginTagToContent("hparams")["_hparams_/session_end_info"]
    return api_pb2.Status.Name(plugin_data_pb2.HParamsPluginData.FromString(content).session_end_info.status)


def test_tensorboard_histograms_of_weights_and_gradients(run):
    acc = events(run.dir / "tensorboard")
    names = [n for n, _ in model().named_parameters()]
    assert set(acc.Tags()["histograms"]) == {f"{kind}/{n}" for kind in ("weights", "grads") for n in names}
    # checked at logging steps: the first logging step at or after each multiple of HISTOGRAM_EVERY
    due, expected = 0, []
    for step in logging_steps():
        if step >= due:
            expected.append(step)
            due = (step // HISTOGRAM_EVERY + 1) * HISTOGRAM_EVERY
    assert [e.step for e in acc.Histograms("weights/0.weight")] == expected
    # each gradient is caught in the next backward pass: there is none after the run's last step
    grads = acc.Histograms("grads/0.weight")
    assert [e.step for e in grads] == [s for s in expected if s < 3 * STEPS_PER_EPOCH]
    assert all(g.histogram_value.num == 8 * 16 and g.histogram_value.sum_squares > 0 for g in grads)


def test_tensorboard_events_survive_a_failed_run(tmp_path):
    """A run that fails mid-training still leaves its scalars and hparams (flushed at end_run/close)."""
    train, _ = loaders()

    def exploding_loss(y_pred, y):
        exploding_loss.calls += 1
        loss = nn.functional.cross_entropy(y_pred, y)
        return loss * math.inf if exploding_loss.calls > 20 else loss

    exploding_loss.calls = 0
    net = model()
    with pytest.raises(FloatingPointError):
        F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 3, exploding_loss,
                log_every_n_steps=1, quiet=True, loggers=[TensorBoardLogger(save_dir=tmp_path)])  # fmt: skip
    acc = events(tmp_path / "tensorboard")
    assert [e.step for e in acc.Scalars("train/loss")] == list(range(1, 21))
    assert [e.step for e in acc.Scalars("epoch/train/loss")] == [STEPS_PER_EPOCH]
    assert "_hparams_/session_start_info" in acc.PluginTagToContent("hparams")
    assert session_status(tmp_path / "tensorboard") == "STATUS_FAILURE"


# --- CSV and JSONL -----------------------------------------------------------------------------------


def test_jsonl_epoch_rows_equal_the_history(run):
    epoch_rows = [r for r in run.jsonl if r["kind"] == "epoch"]
    assert [{k: v for k, v in r.items() if k not in FIXED} for r in epoch_rows] == run.history
    assert [r["step"] for r in epoch_rows] == [12, 24, 36]
    assert [r["step"] for r in run.jsonl if r["kind"] == "step"] == logging_steps()
    assert isinstance(epoch_rows[0]["val/cm"], list)  # non-scalar metrics are kept, as in the history
    assert all(list(r)[:4] == ["kind", "epoch", "step", "time"] for r in run.jsonl)


def test_csv_rows_equal_the_history_and_the_jsonl(run):
    with open(run.dir / "metrics.csv", newline="") as f:
        reader = csv.DictReader(f)
        rows = list(reader)
    header = reader.fieldnames
    assert header[:6] == ["kind", "epoch", "step", "time", "train/loss", "train/acc"]
    assert "val/cm" not in header and "train/cm" not in header
    assert len(rows) == len(run.jsonl)
    for row, line in zip(rows, run.jsonl):  # same rows, in the same order, values exact (repr round trip)
        expected = {k: str(v) for k, v in scalar_items(line).items() if k != "time"}
        assert {k: v for k, v in row.items() if v != "" and k != "time"} == expected
    epoch_rows = [r for r in rows if r["kind"] == "epoch"]
    for row, hist in zip(epoch_rows, run.history, strict=True):
        for key, value in scalar_items(hist).items():
            assert float(row[key]) == value, key


def test_csv_loads_with_pandas(run):
    pd = pytest.importorskip("pandas")
    df = pd.read_csv(run.dir / "metrics.csv")
    history = df[df.kind == "epoch"].reset_index(drop=True)
    assert list(history["val/acc"]) == [row["val/acc"] for row in run.history]
    assert list(history["epoch"]) == [1, 2, 3]
    assert df[df.kind == "step"]["val/acc"].isna().all()
    assert pd.read_json(run.dir / "metrics.jsonl", lines=True).shape[0] == len(df)


def test_csv_header_grows_when_new_names_appear(tmp_path):
    logger = CSVLogger(save_dir=tmp_path)
    logger.start_pass("train", 1, 10)
    logger.log_metrics({"train/loss": 0.5}, 1)
    first = (tmp_path / "metrics.csv").read_text()
    assert first.splitlines()[0] == "kind,epoch,step,time,train/loss"
    logger.log_metrics({"train/loss": 0.25, "train/acc": 0.75}, 5)
    logger.end_epoch(1, {"epoch": 1, "lr": 0.1, "train/loss": 0.2, "val/loss": 0.3, "val/cm": [[1, 0]]}, 10)
    with open(tmp_path / "metrics.csv", newline="") as f:
        lines = list(csv.reader(f))
    assert lines[0] == ["kind", "epoch", "step", "time", "train/loss", "train/acc", "lr", "val/loss"]
    assert all(len(line) == len(lines[0]) for line in lines)  # earlier rows padded: a rectangular table
    assert [line[4:] for line in lines[1:]] == [
        ["0.5", "", "", ""],
        ["0.25", "0.75", "", ""],
        ["0.2", "", "0.1", "0.3"],
    ]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    logger.close()


KILLED_SCRIPT = """
import sys, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from xt_training.utils import functional as F
from xt_training.loggers.csv import CSVLogger
from xt_training.loggers.jsonl import JSONLLogger
from xt_training.loggers.tensorboard import TensorBoardLogger

torch.set_num_threads(1)
save_dir, epochs, resume = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "resume"
g = torch.Generator().manual_seed(0)
x = torch.randn(2000, 8, generator=g)
y = (x[:, 0] > 0).long()
loader = DataLoader(TensorDataset(x, y), batch_size=1, shuffle=True, generator=g)
torch.manual_seed(0)
model = nn.Linear(8, 2)
F.train(save_dir, loader, model, torch.optim.SGD(model.parameters(), lr=0.01), epochs, nn.CrossEntropyLoss(),
        log_every_n_steps=10, checkpoint_every_n_steps=25, resume=resume, quiet=True,
        loggers=[CSVLogger(save_dir=save_dir), JSONLLogger(save_dir=save_dir), TensorBoardLogger(save_dir=save_dir)])
"""


def test_a_killed_run_leaves_readable_files_and_a_resumed_run_continues_them(tmp_path):
    script = tmp_path / "train.py"
    script.write_text(KILLED_SCRIPT)
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(script), str(run_dir), "3", "fresh"])
    jsonl = run_dir / "metrics.jsonl"
    deadline = time.monotonic() + 90
    try:  # wait until the second epoch has logged a few steps, then kill without warning
        while not (jsonl.exists() and '"kind": "step", "epoch": 2, "step": 2200' in jsonl.read_text()):
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before it was killed"
            time.sleep(0.05)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()

    killed = [json.loads(line) for line in jsonl.read_text().splitlines()]  # every line is complete JSON
    assert [r["epoch"] for r in killed if r["kind"] == "epoch"] == [1]
    assert (
        killed[-1]["kind"] == "step" and killed[-1]["epoch"] == 2 and killed[-1]["step"] < 4000
    )  # mid-epoch
    with open(run_dir / "metrics.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    # each logger flushed every row it wrote before the kill (the CSV logger writes first)
    assert len(killed) <= len(rows) <= len(killed) + 1
    assert [r["step"] for r in rows[: len(killed)]] == [str(r["step"]) for r in killed]

    acc = events(run_dir / "tensorboard")  # flushed at the end of epoch 1
    assert [e.step for e in acc.Scalars("epoch/train/loss")] == [2000]

    # resume from the last mid-epoch checkpoint: the rows logged after it are logged again, once
    subprocess.run([sys.executable, str(script), str(run_dir), "3", "resume"], check=True, timeout=120)
    history = json.loads((run_dir / "history.json").read_text())
    resumed = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [
        {k: v for k, v in r.items() if k not in FIXED} for r in resumed if r["kind"] == "epoch"
    ] == history
    steps = [r["step"] for r in resumed if r["kind"] == "step"]
    assert steps == sorted(set(steps)) and steps[-1] == 6000
    with open(run_dir / "metrics.csv", newline="") as f:
        assert [int(r["step"]) for r in csv.DictReader(f) if r["kind"] == "step"] == steps
    acc = events(run_dir / "tensorboard")  # TensorBoard hides the killed run's events past the resumed point
    assert [e.step for e in acc.Scalars("train/loss")] == steps
    assert [e.value for e in acc.Scalars("epoch/train/loss")] == pytest.approx(
        [r["train/loss"] for r in history]
    )


def test_a_new_run_in_the_same_directory_replaces_the_files(tmp_path):
    train, held_out = loaders()
    net = model()
    F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(), quiet=True,
            loggers=[CSVLogger(save_dir=tmp_path), JSONLLogger(save_dir=tmp_path), TensorBoardLogger(save_dir=tmp_path)])  # fmt: skip
    history = F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
                      quiet=True, loggers=[CSVLogger(save_dir=tmp_path), JSONLLogger(save_dir=tmp_path),
                                           TensorBoardLogger(save_dir=tmp_path)], overwrite=True)  # fmt: skip
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in lines if r["kind"] == "epoch"] == [1]
    with open(tmp_path / "metrics.csv", newline="") as f:
        assert [r["kind"] for r in csv.DictReader(f)].count("epoch") == 1
    acc = events(tmp_path / "tensorboard")  # the earlier run's events are hidden (purged from step 0)
    assert [e.value for e in acc.Scalars("epoch/train/loss")] == pytest.approx([history[0]["train/loss"]])


# --- console -----------------------------------------------------------------------------------------


def test_console_prints_an_epoch_table_per_epoch(run):
    lines = run.console.splitlines()
    for epoch in (1, 2, 3):
        start = next(i for i, line in enumerate(lines) if line.startswith(f"epoch {epoch}/3  lr "))
        header, *table = lines[start + 1 : start + 6]
        assert header.split() == ["loss", "acc"]  # one column per scalar metric: no confusion matrix
        assert [row.split()[0] for row in table] == ["train", "val", "test", "test.other"]
        values = {row.split()[0]: [float(v) for v in row.split()[1:]] for row in table}
        row = run.history[epoch - 1]
        for loader, (loss, acc) in values.items():
            assert loss == pytest.approx(row[f"{loader}/loss"], abs=1e-4)
            assert acc == pytest.approx(row[f"{loader}/acc"], abs=1e-4)
    assert lines[-1].startswith("run completed: 3 epochs in ")
    assert "\r" not in run.console


LONG_RUN_SCRIPT = """
import sys, torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from xt_training import metrics
from xt_training.loggers.console import ConsoleLogger
from xt_training.utils import functional as F

torch.set_num_threads(1)
x = torch.randn(int(sys.argv[2]), 4)
y = (x[:, 0] > 0).long()
model = nn.Linear(4, 2)
loggers = [ConsoleLogger(line_interval=float(sys.argv[3]))] if len(sys.argv) > 3 else None
F.train(sys.argv[1], DataLoader(TensorDataset(x, y), batch_size=1), model, torch.optim.SGD(model.parameters(), 0.01),
        2, nn.CrossEntropyLoss(), eval_metrics={"acc": metrics.Accuracy()}, log_every_n_steps=1, loggers=loggers)
"""


def test_console_output_off_a_terminal_is_plain_lines_bounded_by_time_not_steps(tmp_path):
    script = tmp_path / "long.py"
    script.write_text(LONG_RUN_SCRIPT)
    start = time.monotonic()
    out = subprocess.run(
        [sys.executable, str(script), str(tmp_path / "run"), "2500"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    elapsed = time.monotonic() - start
    # 5000 training steps, each a logging step: the default console logger prints a progress line at
    # most every 10 s, two epoch tables and a final line
    assert "\r" not in out and "\x1b" not in out
    lines = out.splitlines()
    assert len(lines) <= 2 * 3 + 1 + elapsed / 10 + 2, out
    assert lines[-1].startswith("run completed: 2 epochs")
    assert [line.split()[0] for line in lines if line.startswith(("train ", "train  "))] == ["train", "train"]


def test_console_progress_lines_off_a_terminal(tmp_path):
    train, held_out = loaders()
    out = io.StringIO()
    net = model()
    F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
            val_loader=held_out, log_every_n_steps=4, loggers=[ConsoleLogger(file=out, line_interval=0)])  # fmt: skip
    lines = out.getvalue().splitlines()
    progress = [line for line in lines if line.startswith("epoch 1/1 train ")]
    assert [line.split()[3] for line in progress] == ["1/12", "4/12", "8/12", "12/12"]
    assert all(" it/s  loss " in line for line in progress)
    assert [line for line in lines if line.startswith("epoch 1/1 val ")]  # eval passes report progress too


def test_console_shows_only_the_selected_metrics_while_running(tmp_path):
    train, held_out = loaders()
    out = io.StringIO()
    net = model()
    F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
            eval_metrics={"acc": metrics.Accuracy(), "f1": metrics.F1()}, log_every_n_steps=4,
            loggers=[ConsoleLogger(file=out, line_interval=0, metrics=["f1"])])  # fmt: skip
    text = out.getvalue()
    progress = [line for line in text.splitlines() if line.startswith("epoch 1/1 train ")]
    assert progress and all("| f1 " in line and "acc" not in line for line in progress)
    assert "  acc" in text  # the epoch table shows every metric


@pytest.mark.parametrize("columns", [120, 0], ids=["sized", "unsized"])
def test_console_on_a_terminal_draws_a_progress_bar(tmp_path, columns):
    script = tmp_path / "long.py"
    script.write_text(LONG_RUN_SCRIPT)
    leader, follower = pty.openpty()
    fcntl.ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    proc = subprocess.Popen(  # 6000 steps: the bar redraws every 0.25 s, the pass must take longer
        [sys.executable, str(script), str(tmp_path / "run"), "6000", "10"], stdout=follower, stderr=follower
    )
    os.close(follower)
    chunks = []
    while True:
        try:
            data = os.read(leader, 65536)
        except OSError:  # EIO: the process closed the terminal
            break
        if not data:
            break
        chunks.append(data)
    os.close(leader)
    assert proc.wait(timeout=60) == 0
    out = b"".join(chunks).decode()
    bars = re.findall(r"\r(epoch 1/2 train: [^\r]*)", out)  # redrawn in place: a carriage return, no newline
    assert len(bars) >= 2, out
    assert "it/s" in bars[-1] and "loss " in bars[-1] and "| acc " in bars[-1]  # rate and running values
    assert "  loss     acc" in out and "run completed: 2 epochs" in out


def test_console_summarises_each_pass_of_f_test(tmp_path):
    _, held_out = loaders()
    out = io.StringIO()
    F.test({"test": held_out, "other": held_out}, model(), nn.CrossEntropyLoss(),
           eval_metrics={"acc": metrics.Accuracy()}, loggers=[ConsoleLogger(file=out)])  # fmt: skip
    lines = [line for line in out.getvalue().splitlines() if not line.startswith("fast path")]
    assert [line.split()[0] for line in lines] == ["test", "other"]
    assert all(" loss " in line and "| acc " in line for line in lines)


# --- bad options -------------------------------------------------------------------------------------


@pytest.mark.parametrize("cls", [TensorBoardLogger, CSVLogger, JSONLLogger])
def test_file_loggers_need_a_save_dir(cls):
    with pytest.raises(ConfigError, match=rf"{cls.__name__} needs save_dir.*{cls.__name__}\(save_dir="):
        cls()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda d: TensorBoardLogger(save_dir=d, histogram_every_n_steps=0), "positive integer"),
        (lambda d: TensorBoardLogger(save_dir=d, histogram_every_n_steps=10), "pass model=model"),
        (lambda d: ConsoleLogger(line_interval=-1), "line_interval must be"),
        (lambda d: ConsoleLogger(metrics="acc"), r"\['acc'\]"),
    ],
)
def test_bad_logger_options_are_one_line_errors(tmp_path, make, message):
    with pytest.raises(ConfigError, match=message) as info:
        make(tmp_path)
    assert "\n" not in str(info.value)


def test_loggers_by_registered_name(tmp_path):
    train, _ = loaders()
    net = model()
    F.train(tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
            quiet=True, loggers=["tensorboard", "csv", "jsonl"])  # fmt: skip
    assert (tmp_path / "metrics.csv").exists() and (tmp_path / "metrics.jsonl").exists()
    assert "epoch/train/loss" in events(tmp_path / "tensorboard").Tags()["scalars"]


# --- a failing logger --------------------------------------------------------------------------------

FAILING_AT = [
    "start_run", "start_pass", "per-step call", "update_pass", "log_metrics", "end_pass", "end_epoch",
    "notice", "flush", "end_run", "close",
]  # fmt: skip


class FailingLogger:
    """Records its calls; raises in ``method`` (``'per-step call'``: in the callable start_pass returns)."""

    def __init__(self, method: str):
        self.method, self.calls = method, []

    def _call(self, name: str) -> None:
        self.calls.append(name)
        if name == self.method:
            raise OSError(f"tracker gone during {name}\nsecond line of the error")

    def start_pass(self, name, epoch, total):
        self._call("start_pass")
        return lambda: self._call("per-step call")

    def __getattr__(self, name):
        if name not in FAILING_AT:
            raise AttributeError(name)
        return lambda *args: self._call(name)


@pytest.mark.parametrize("method", FAILING_AT)
def test_a_failing_logger_is_reported_once_and_dropped_and_the_run_completes(tmp_path, capsys, method):
    train, held_out = loaders()
    net = model()
    failing = FailingLogger(method)
    history = F.train(
        tmp_path, train, net, torch.optim.SGD(net.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(),
        val_loader=held_out, log_every_n_steps=LOG_EVERY, loggers=[failing, JSONLLogger(save_dir=tmp_path)],
        quiet=True,
    )  # fmt: skip
    assert [row["epoch"] for row in history] == [1, 2]
    saved = json.loads((tmp_path / "history.json").read_text())
    assert [row["val/loss"] for row in saved] == [row["val/loss"] for row in history]
    assert all((tmp_path / "checkpoints" / name).is_file() for name in ("best.pt", "last.pt"))
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows if r["kind"] == "epoch"] == [1, 2]  # the other logger kept logging

    warnings = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert warnings == [
        f"warning: logger FailingLogger failed in {method if method != 'per-step call' else 'its per-step call'} "
        f"(OSError: tracker gone during {method}); it is dropped and the run goes on without it"
    ]
    assert failing.calls[-1] == method  # not called again once it failed
