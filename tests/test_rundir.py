"""One run-directory format: every entry point's run works with every tool, from any directory, after a move."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
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
