"""One run-directory format: every entry point's run works with every tool, from any directory, after a move."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from torch import nn

from xt_training import load_model, registry
from xt_training.cli import cli
from xt_training.errors import CheckpointError, ConfigError
from xt_training.rundir import checkpoint_file
from xt_training.utils import functional as F

# a user's model module, importable (the fixture puts its folder on sys.path)
NET = """
from torch import nn


class Net(nn.Module):
    def __init__(self, in_features, hidden=16, num_classes=3):
        super().__init__()
        self.in_features, self.hidden, self.num_classes = in_features, hidden, num_classes
        self.body = nn.Sequential(nn.Linear(in_features, hidden), nn.ReLU(), nn.Linear(hidden, num_classes))

    def forward(self, x):
        return self.body(x)
"""


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    pkg = tmp_path / "usercode"
    pkg.mkdir()
    (pkg / "user_net.py").write_text(NET)
    monkeypatch.syspath_prepend(str(pkg))
    import importlib

    return importlib.import_module("user_net"), pkg


def _data():
    return registry.create_data("synthetic-classification", n_samples=200, batch_size=32)


def _train(save_dir, model, **kwargs):
    data = _data()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    return F.train(
        save_dir, data.loaders["train"], model, optimizer, 2, nn.CrossEntropyLoss(), data.loaders["val"],
        quiet=True, **kwargs,
    )  # fmt: skip


def _xt(*args, cwd):
    """The real `xt` command line, in this process (each `xt` process would import torch again), in ``cwd``."""
    old = os.getcwd()
    os.chdir(cwd)
    try:
        result = CliRunner().invoke(cli, [str(a) for a in args])
    finally:
        os.chdir(old)
    return SimpleNamespace(returncode=result.exit_code, stdout=result.stdout, stderr=result.stderr)


def test_an_f_train_run_records_its_model_and_loads_by_class(tmp_path, user_module):
    module, _ = user_module
    model = module.Net(20, hidden=8)
    _train(tmp_path / "run", model)
    record = json.loads((tmp_path / "run" / "run.json").read_text())
    init = {"in_features": 20, "hidden": 8, "num_classes": 3}
    assert record["model"] == {"class": "user_net:Net", "init": init, "missing": []}
    assert record["input"] == {"shape": [20], "dtype": "float32"}
    assert record["monitor"] == "val/loss" and record["mode"] == "min"
    loaded = load_model(tmp_path / "run")
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(v, best[k]) for k, v in loaded.state_dict().items())
    assert not loaded.training


def test_a_model_of_star_args_is_passed_in(tmp_path):
    _train(tmp_path / "run", nn.Sequential(nn.Linear(20, 3)))
    with pytest.raises(
        ConfigError, match=r"Sequential takes \*args, whose values a run cannot record; pass the"
    ):
        load_model(tmp_path / "run")
    assert isinstance(load_model(tmp_path / "run", model=nn.Sequential(nn.Linear(20, 3))), nn.Sequential)


def test_a_model_that_cannot_be_rebuilt_is_passed_in(tmp_path):
    class Local(nn.Module):  # not importable: defined in a function
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(20, 3)

        def forward(self, x):
            return self.fc(x)

    _train(tmp_path / "run", Local())
    with pytest.raises(ConfigError, match=r"cannot be imported.*load_model\(.*model=Local\(\.\.\.\)\)"):
        load_model(tmp_path / "run")
    loaded = load_model(tmp_path / "run", model=Local())
    assert isinstance(loaded, Local)


def test_f_train_refuses_a_directory_that_holds_a_run_and_overwrite_replaces_it(tmp_path, user_module):
    module, _ = user_module
    _train(tmp_path / "run", module.Net(20))
    before = {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()}
    with pytest.raises(
        ConfigError, match=r"already holds a run; continue it with resume=True, or pass overwrite=True"
    ):
        _train(tmp_path / "run", module.Net(20))
    assert {p: p.read_bytes() for p in (tmp_path / "run").rglob("*") if p.is_file()} == before  # intact
    (tmp_path / "run" / "mine.txt").write_text("not the run's")
    history = _train(tmp_path / "run", module.Net(20, hidden=4), overwrite=True)
    assert len(history) == 2 and (tmp_path / "run" / "mine.txt").read_text() == "not the run's"  # kept
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"]["init"]["hidden"] == 4


def test_a_constructor_argument_the_model_does_not_keep_is_not_guessed(tmp_path, user_module):
    class Activated(user_module[0].Net):  # keeps in_features, hidden, num_classes; not act
        def __init__(self, in_features, hidden=16, num_classes=3, act="relu"):
            super().__init__(in_features, hidden, num_classes)
            self.body[1] = nn.GELU() if act == "gelu" else nn.ReLU()

    Activated.__module__, Activated.__qualname__ = "user_net", "Net"  # as if importable: the record decides
    _train(tmp_path / "run", Activated(20, act="gelu"))
    assert json.loads((tmp_path / "run" / "run.json").read_text())["model"]["missing"] == ["act"]
    with pytest.raises(ConfigError, match=r"does not keep act as attributes of the same names"):
        load_model(tmp_path / "run")  # a ReLU model with the GELU model's weights would load without a word


def test_files_of_a_run_follow_the_umask(tmp_path, user_module):
    old = os.umask(0o022)
    try:
        _train(tmp_path / "run", user_module[0].Net(20))
    finally:
        os.umask(old)
    for name in ("run.json", "history.json", "checkpoints/last.pt"):
        assert (tmp_path / "run" / name).stat().st_mode & 0o777 == 0o644, name


def test_f_train_on_csv_data_records_its_standardisation(tmp_path, user_module):
    rows = ["big,small,label"] + [f"{1000 + 37 * (i % 11)},{0.001 * (i % 5)},{i % 3}" for i in range(90)]
    (tmp_path / "t.csv").write_text("\n".join(rows) + "\n")
    data = registry.create_data("csv", path=str(tmp_path / "t.csv"), batch_size=16)
    model = user_module[0].Net(2)
    F.train(tmp_path / "run", data.loaders["train"], model, torch.optim.Adam(model.parameters()), 1,
            nn.CrossEntropyLoss(), quiet=True)  # fmt: skip
    recorded = json.loads((tmp_path / "run" / "run.json").read_text())["normalization"]
    assert recorded == data.info["normalization"] and recorded["mean"][0] > 1000


def test_f_test_and_f_predict_take_a_run_directory(tmp_path, user_module):
    module, _ = user_module
    _train(tmp_path / "run", module.Net(20))
    data = _data()
    fresh = module.Net(20)
    preds = F.predict(fresh, data.loaders["test"], checkpoint_path=tmp_path / "run")
    assert torch.equal(preds, F.predict(load_model(tmp_path / "run"), data.loaders["test"]))
    results = F.test({"test": data.loaders["test"]}, module.Net(20), nn.CrossEntropyLoss(),
                     checkpoint_path=tmp_path / "run", quiet=True)  # fmt: skip
    assert "loss" in results["test"]
    assert checkpoint_file(tmp_path / "run") == tmp_path / "run" / "checkpoints" / "best.pt"
    with pytest.raises(CheckpointError, match="did you mean 'last'"):
        checkpoint_file(tmp_path / "run", "lst")


@pytest.mark.slow
def test_every_entry_points_run_works_from_another_directory_and_after_a_move(tmp_path, user_module):
    """xt run (a CSV file given by a relative path), xt train CONFIG.py and F.train: load_model, xt test,
    xt predict, xt export and xt show, run from another directory, on the moved run directories."""
    module, _ = user_module
    work = tmp_path / "work"
    work.mkdir()
    rows = ["a,b,label"] + [f"{i % 7},{(i * 3) % 5},{'yes' if i % 7 > 3 else 'no'}" for i in range(120)]
    (work / "data.csv").write_text("\n".join(rows) + "\n")
    done = _xt("run", "--model", "mlp", "--data", "csv", "--data-opt", "path=data.csv", "--data-opt", "test_fraction=0.2", "--epochs", "1",
               "--save-dir", "byname", "-q", cwd=work)  # fmt: skip
    assert done.returncode == 0, done.stderr
    (work / "config.py").write_text(
        textwrap.dedent("""
        import torch
        from torch import nn
        from xt_training import registry
        from user_net import Net
        data = registry.create_data("synthetic-classification", n_samples=200, batch_size=32)
        model = Net(20)
        train_loader, val_loader = data.loaders["train"], data.loaders["val"]
        test_loaders = {"test": data.loaders["test"]}
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
        loss_fn = nn.CrossEntropyLoss()
        epochs = 1
        quiet = True
    """)
    )
    done = _xt("train", "config.py", "--save-dir", "byfile", "-q", cwd=work)
    assert done.returncode == 0, done.stderr
    _train(work / "byfunction", module.Net(20))

    moved = tmp_path / "elsewhere"
    shutil.move(str(work), str(moved))  # the runs move with their directory; data.csv moves too...
    (tmp_path / "work").mkdir()
    shutil.copy(
        moved / "data.csv", tmp_path / "work" / "data.csv"
    )  # ...but xt run recorded its absolute path
    other = tmp_path / "other"
    other.mkdir()
    for run, test_args in (
        ("byname", []),
        ("byfile", ["--trust"]),  # its config.py is run: our own
        ("byfunction", ["--data", "synthetic-classification", "--data-opt", "n_samples=200"]),
    ):
        run_dir = moved / run
        assert isinstance(load_model(run_dir), nn.Module)
        done = _xt("test", run_dir, *test_args, "--json", cwd=other)
        assert done.returncode == 0, (run, done.stderr)
        assert "loss" in json.loads(done.stdout)["test"]
        predict_args = (
            [] if run == "byname" else ["--data", "synthetic-classification", "--data-opt", "n_samples=200"]
        )
        done = _xt("predict", run_dir, *predict_args, "-o", other / f"{run}.csv", cwd=other)
        assert done.returncode == 0, (run, done.stderr)
        assert (other / f"{run}.csv").read_text().startswith("prediction,")
        done = _xt("export", run_dir, "-o", other / f"{run}.onnx", cwd=other)
        assert done.returncode == 0, (run, done.stderr)
        done = _xt("show", run_dir, cwd=other)
        assert done.returncode == 0 and "history" in done.stdout, (run, done.stderr)
        shown = "configuration (config.json)" if run == "byname" else "class: user_net:Net"
        assert shown in done.stdout, (run, done.stdout)


@pytest.mark.slow
def test_the_exported_csv_model_on_raw_rows_equals_xt_predict(tmp_path):
    """The CSV data standardises its features; the ONNX file must too: a deployer feeds it raw rows."""
    rows = ["big,small,label"] + [
        f"{1000 + 37 * (i % 11)},{0.001 * (i % 5)},{i % 11 > 5}" for i in range(150)
    ]
    (tmp_path / "train.csv").write_text("\n".join(rows) + "\n")
    raw = [[1050.0, 0.002], [1370.0, 0.004], [1000.0, 0.0]]
    (tmp_path / "new.csv").write_text("big,small\n" + "\n".join(f"{a},{b}" for a, b in raw) + "\n")
    steps = [
        ["run", "--model", "mlp", "--data", "csv", "--data-opt", "path=train.csv", "--epochs", "2",
         "--save-dir", "run", "-q"],
        ["export", "run", "-o", "model.onnx"],
        ["predict", "run", "--input", "new.csv", "-o", "predicted.npy"],
    ]  # fmt: skip
    for args in steps:
        done = _xt(*args, cwd=tmp_path)
        assert done.returncode == 0, done.stderr
    np.save(tmp_path / "raw.npy", np.array(raw, dtype=np.float32))
    script = (
        "import sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession('model.onnx')\n"
        "out = s.run(None, {s.get_inputs()[0].name: np.load('raw.npy')})[0]\n"
        "np.save('onnx.npy', out)\n"
        "assert 'torch' not in sys.modules and 'xt_training' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    onnx, predicted = np.load(tmp_path / "onnx.npy"), np.load(tmp_path / "predicted.npy")
    np.testing.assert_allclose(onnx, predicted, rtol=1e-4, atol=1e-5)
    # the same model fed the raw rows without its scaling gives other outputs: the graph applies it
    assert (
        json.loads((tmp_path / "run" / "config.json").read_text())["info"]["normalization"]["mean"][0] > 1000
    )


def test_xt_run_overwrite_replaces_a_held_run_and_a_failed_run_blocks_nothing(tmp_path):
    tiny = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200",
            "--epochs", "1", "--save-dir", "r", "-q"]  # fmt: skip
    assert _xt(*tiny, cwd=tmp_path).returncode == 0
    refused = _xt(*tiny, cwd=tmp_path)
    assert (
        refused.returncode == 2
        and "already holds a run" in refused.stderr
        and "--overwrite" in refused.stderr
    )
    (tmp_path / "r" / "checkpoints" / "old.pt").write_text("of the old run")
    (tmp_path / "r" / "notes.md").write_text("the user's")
    assert _xt(*tiny, "--overwrite", cwd=tmp_path).returncode == 0
    assert not (tmp_path / "r" / "checkpoints" / "old.pt").exists()  # the old run's files went
    assert (tmp_path / "r" / "notes.md").read_text() == "the user's"  # what is not a run's stays
    # a run that fails in its first batch leaves no epoch and no checkpoint: the same command may run again
    failing = ["run", "--model", "mlp", "--data", "synthetic-classification", "--loss", "bce-with-logits",
               "--epochs", "1", "--save-dir", "f", "-q"]  # fmt: skip
    first, second = _xt(*failing, cwd=tmp_path), _xt(*failing, cwd=tmp_path)
    assert first.returncode != 0 and second.stderr.splitlines()[-1] == first.stderr.splitlines()[-1]
    assert "already holds a run" not in second.stderr


@pytest.mark.slow
def test_a_second_run_into_a_directory_in_use_is_refused_and_a_dead_holder_blocks_nothing(tmp_path):
    # a run holds its directory from its start: stopped there, a second run (this process) is refused
    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=300",
           "--epochs", "2", "-q", "--save-dir", "twin"]  # fmt: skip
    first = subprocess.Popen([sys.executable, "-m", "xt_training", *run], cwd=tmp_path, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)  # fmt: skip
    lock, deadline = tmp_path / "twin" / ".xt.lock", time.time() + 120
    while not (lock.exists() and lock.read_text().strip() == str(first.pid)):
        assert first.poll() is None and time.time() < deadline, first.communicate()
        time.sleep(0.01)
    first.send_signal(signal.SIGSTOP)
    try:
        second = _xt(*run, cwd=tmp_path)
    finally:
        first.send_signal(signal.SIGCONT)
    assert second.returncode == 2
    assert second.stderr == (
        f"xt: error: 'twin' is in use by a run of process {first.pid}; wait for it to end, or choose another "
        "directory\n"
    )
    assert first.wait(timeout=300) == 0, first.communicate()
    twin = tmp_path / "twin"  # one run, whole: the lock is gone with it
    assert sorted(p.name for p in twin.iterdir()) == ["checkpoints", "config.json", "history.json", "notes.txt",
                                                      "run.json"]  # fmt: skip
    assert [row["epoch"] for row in json.loads((twin / "history.json").read_text())] == [1, 2]
    assert _xt("test", "twin", "-q", cwd=tmp_path).returncode == 0
    # a holder killed with SIGKILL leaves its lock file, locked by nobody: the next run goes ahead
    kill = "import os; from xt_training.rundir import hold; h = hold('gone'); h.__enter__(); os.kill(os.getpid(), 9)"
    assert subprocess.run([sys.executable, "-c", kill], cwd=tmp_path).returncode == -signal.SIGKILL
    assert (tmp_path / "gone" / ".xt.lock").exists()
    assert _xt(*run[:-1], "gone", cwd=tmp_path).returncode == 0


# Killed while a checkpoint is written (a slow disk: each write waits in fsync), ten times, then resumed. The
# killing parent only imports torch, so its forked children start at once and safely.
KILLED_WRITES = """
import os, signal, sys, time
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from xt_training.utils import functional as F

save_dir, ckpt = sys.argv[1], os.path.join(sys.argv[1], "checkpoints")

def train(slow):
    torch.set_num_threads(1)
    if slow:
        fsync = os.fsync
        os.fsync = lambda fd: (time.sleep(0.1), fsync(fd))
    g = torch.Generator().manual_seed(0)
    x = torch.randn(256, 16, generator=g)
    model = nn.Linear(16, 2)
    F.train(save_dir, DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16), model,
            torch.optim.SGD(model.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(), checkpoint_every_n_steps=1,
            resume=True, quiet=True)

def temporaries():
    return [n for n in os.listdir(ckpt) if n.endswith(".tmp")] if os.path.isdir(ckpt) else []

left = []
for _ in range(10):
    before = set(temporaries())
    pid = os.fork()
    if pid == 0:
        train(slow=True)
        os._exit(0)
    # this run writes a checkpoint, and has written one before (it is a run to resume, not to start again)
    deadline = time.time() + 60
    while not (os.path.exists(os.path.join(ckpt, "last.pt")) and set(temporaries()) - before):
        assert time.time() < deadline and os.waitpid(pid, os.WNOHANG) == (0, 0), "no write to kill"
        time.sleep(0.002)
    os.kill(pid, signal.SIGKILL)
    os.waitpid(pid, 0)
    left.append(len(temporaries()))
train(slow=False)
print("LEFT", left)
"""


@pytest.mark.slow
def test_no_temporary_file_is_left_after_killed_writes_and_a_resume(tmp_path):
    script = tmp_path / "killed_writes.py"
    script.write_text(KILLED_WRITES)
    done = subprocess.run([sys.executable, str(script), str(tmp_path / "run")], capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert done.returncode == 0, done.stderr
    left = json.loads(done.stdout.split("LEFT", 1)[1])
    # each kill left its write's temporary (unless the write ended first), and the next run removed it
    assert max(left) == 1 and sum(left) >= 5, left
    assert not [p for p in (tmp_path / "run").rglob("*") if p.name.endswith(".tmp")]
    assert len(json.loads((tmp_path / "run" / "history.json").read_text())) == 2


def test_a_run_that_never_completed_a_step_is_replaced_by_the_corrected_command(tmp_path):
    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200",
           "--epochs", "1", "-q", "--save-dir"]  # fmt: skip
    failed = _xt(*run, "f", "--loss", "bce-with-logits", cwd=tmp_path)  # fails in its first batch
    assert failed.returncode == 2 and (tmp_path / "f" / "checkpoints" / "crash.pt").exists()
    # a check from outside the lock deletes nothing (such a run may be starting): only the run that holds it
    checked = _xt(*run, "f", "--dry-run", cwd=tmp_path)
    assert checked.returncode == 0 and "never completed a step" not in checked.stdout, checked.stderr
    assert (tmp_path / "f" / "checkpoints" / "crash.pt").exists()
    fixed = _xt(*run, "f", cwd=tmp_path)
    assert fixed.returncode == 0, fixed.stderr
    assert fixed.stdout.splitlines()[0] == (
        "'f' held a run that never completed a step; its files (run.json, config.json, checkpoints, notes.txt) "
        "are replaced by this run's"
    )
    assert not (
        tmp_path / "f" / "checkpoints" / "crash.pt"
    ).exists()  # the failed run's crash is not this run's
    assert json.loads((tmp_path / "f" / "config.json").read_text())["loss"]["name"] == "cross-entropy"
    # nor is it a run to resume: --resume with the corrected loss starts afresh (it was refused: "differs")
    assert _xt(*run, "g", "--loss", "bce-with-logits", cwd=tmp_path).returncode == 2
    resumed = _xt("run", "--resume", "g", "--loss", "cross-entropy", "-q", cwd=tmp_path)
    assert resumed.returncode == 0 and "'g' held a run that never completed a step" in resumed.stdout
    assert json.loads((tmp_path / "g" / "config.json").read_text())["loss"]["name"] == "cross-entropy"
    assert len(json.loads((tmp_path / "g" / "history.json").read_text())) == 1


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o644), (0o077, 0o600)], ids=["022", "077"])
def test_every_file_of_an_xt_run_follows_the_umask(tmp_path, umask, mode):
    # atomic writes go through mkstemp, whose files are 0600 whatever the umask: a team could not read them
    run = ["run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=200",
           "--epochs", "1", "-q", "--logger", "csv", "--logger", "jsonl", "--checkpoint-every", "1"]  # fmt: skip
    old = os.umask(umask)
    try:
        assert _xt(*run, "--save-dir", "r", cwd=tmp_path).returncode == 0
        assert _xt("test", "r", "-q", cwd=tmp_path).returncode == 0
        assert _xt(*run, "--save-dir", "crashed", "--loss", "bce-with-logits", cwd=tmp_path).returncode == 2
    finally:
        os.umask(old)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert {"config.json", "history.json", "last.pt", "metrics.csv", "test_results.json", "crash.pt"} <= {
        p.name for p in files
    }
    assert {p.relative_to(tmp_path).as_posix(): oct(p.stat().st_mode & 0o777) for p in files} == {
        p.relative_to(tmp_path).as_posix(): oct(mode) for p in files
    }
