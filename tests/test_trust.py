"""A run directory is data: what its files name is not imported or run, nor written to outside it, unless the
user trusts the run (``--trust``, ``trust=True``).

The runs here are "received": trained, then edited as someone could before sending them. The module they name
is planted on PYTHONPATH and leaves a marker file when imported, so the tests see whether it was.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from conftest import ENV, XT, make_classification
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training.cli import cli
from xt_training.errors import ConfigError
from xt_training.runs import load_model
from xt_training.utils import functional as F

pytestmark = pytest.mark.usefixtures("fresh_registry")  # conftest

PLANTED = textwrap.dedent(
    """
    from pathlib import Path

    import torch
    from torch import nn

    from xt_training.builtins.text import WordTokenizer

    Path(__file__).with_name("imported").write_text("planted_module ran")


    class Tokenizer(WordTokenizer):
        pass


    def agreement(y_pred, y):
        return (y_pred.argmax(1) == y).float().mean()


    class Net(nn.Module):
        def __init__(self, in_features=16, num_classes=3):
            super().__init__()
            self.in_features, self.num_classes = in_features, num_classes
            self.fc = nn.Linear(in_features, num_classes)

        def forward(self, x):
            return self.fc(x)
    """
)


@pytest.fixture
def planted(tmp_path):
    """The folder of ``planted_module`` (to put on PYTHONPATH) and the marker its import writes."""
    folder = tmp_path / "site"
    folder.mkdir()
    (folder / "planted_module.py").write_text(PLANTED)
    yield folder, folder / "imported"
    sys.modules.pop("planted_module", None)


def invoke(*args, code):
    result = CliRunner().invoke(cli, [str(a) for a in args])
    assert result.exit_code == code, (result.exit_code, result.output, result.exception)
    return result.output


def edit_json(path: Path, change) -> None:
    data = json.loads(path.read_text())
    change(data)
    path.write_text(json.dumps(data))


def one_line(text: str) -> str:
    lines = text.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xt: error: "), text
    return lines[0]


@pytest.mark.slow
def test_a_received_run_imports_nothing_it_names_without_trust(tmp_path, planted):
    """The real `xt` in subprocesses, the planted module on PYTHONPATH: refused in one line naming the name
    and --trust, and not imported; with --trust, it is used."""
    folder, marker = planted
    invoke("run", "--model", "text-gru", "--data", "synthetic-text", "--data-opt", "n_samples=120", "--epochs", "1",
           "-q", "--save-dir", tmp_path / "text", code=0)  # fmt: skip
    edit_json(
        tmp_path / "text" / "tokenizer_config.json",
        lambda c: c.update(tokenizer_class="planted_module:Tokenizer"),
    )
    (tmp_path / "texts.txt").write_text("the coach and the referee\nflour and spice for the dessert\n")
    invoke("run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=120",
           "--metric", "accuracy", "--epochs", "1", "-q", "--save-dir", tmp_path / "metric", code=0)  # fmt: skip
    shutil.copytree(tmp_path / "metric", tmp_path / "logger")
    mean = {"name": "mean", "options": {"fn": "planted_module:agreement"}}
    edit_json(tmp_path / "metric" / "config.json", lambda c: c["metrics"].update(agree=mean))
    outside = tmp_path / "outside"
    logger = {"name": "csv", "options": {"save_dir": str(outside)}}
    edit_json(tmp_path / "logger" / "config.json", lambda c: c["loggers"].append(logger))

    env = {**ENV, "PYTHONPATH": os.pathsep.join([str(folder), *filter(None, [ENV.get("PYTHONPATH")])])}

    def xt(*args):
        return subprocess.Popen([XT, *map(str, args)], cwd=tmp_path, env=env, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip

    refused = {
        "tokenizer_class 'planted_module:Tokenizer'": xt(
            "predict", "text", "--input", "texts.txt", "-o", "p.csv"
        ),
        "metric 'mean' option fn='planted_module:agreement' would import its module": xt("test", "metric"),
        f"logger 'csv' would write outside the run directory (save_dir='{outside}')": xt(
            "run", "--resume", "logger", "--epochs", "2", "-q"
        ),
    }
    for says, job in refused.items():
        _, stderr = job.communicate(timeout=120)
        assert job.returncode == 2, stderr
        line = one_line(stderr)
        assert says in line and line.endswith("pass --trust (Python: trust=True)"), line
    assert not marker.exists(), "the planted module was imported"
    assert not outside.exists()

    trusted = [
        xt("predict", "text", "--input", "texts.txt", "-o", "p.csv", "--trust"),
        xt("test", "metric", "--json", "--trust"),
    ]
    outputs = [job.communicate(timeout=120) for job in trusted]
    assert [job.returncode for job in trusted] == [0, 0], outputs
    assert marker.exists()
    assert len((tmp_path / "p.csv").read_text().splitlines()) == 3
    assert 0 <= json.loads(outputs[1][0])["test"]["agree"] <= 1


def _f_train_run(save_dir: Path, model: nn.Module) -> None:
    x, y = make_classification(64)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    F.train(save_dir, loader, model, torch.optim.SGD(model.parameters(), lr=0.1), 1, nn.CrossEntropyLoss(),
            quiet=True)  # fmt: skip


def test_load_model_imports_the_class_run_json_names_only_when_trusted(tmp_path, planted, monkeypatch):
    folder, marker = planted
    _f_train_run(tmp_path / "run", nn.Linear(16, 3))
    record = {"class": "planted_module:Net", "init": {"in_features": 16, "num_classes": 3}, "missing": []}
    edit_json(tmp_path / "run" / "run.json", lambda r: r.update(model=record))
    state = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    state["model"] = {f"fc.{k}": v for k, v in state["model"].items()}
    torch.save(state, tmp_path / "run" / "checkpoints" / "best.pt")
    monkeypatch.syspath_prepend(str(folder))

    with pytest.raises(
        ConfigError, match=r"names the model class planted_module:Net, of a module not imported; "
    ):
        load_model(tmp_path / "run")
    assert "planted_module" not in sys.modules and not marker.exists()
    assert type(load_model(tmp_path / "run", trust=True)).__name__ == "Net" and marker.exists()
    assert type(load_model(tmp_path / "run")).__name__ == "Net"  # imported now: nothing new to import

    # a class of a module imported already is called with the recorded arguments only if it is a model
    record = {"class": "subprocess:Popen", "init": {"args": ["touch", str(tmp_path / "ran")]}, "missing": []}
    edit_json(tmp_path / "run" / "run.json", lambda r: r.update(model=record))
    with pytest.raises(
        ConfigError, match=r"names subprocess:Popen, which is not a model class; pass the model"
    ):
        load_model(tmp_path / "run", trust=True)
    assert not (tmp_path / "ran").exists()


def test_xt_test_runs_a_run_directorys_config_py_only_when_trusted(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / "best.pt").write_bytes(b"")
    (run / "config.py").write_text(f"open({str(tmp_path / 'ran')!r}, 'w').write('config.py ran')\n")
    line = one_line(invoke("test", run, code=2))
    assert f"testing '{run}' runs its config.py, which is Python code; a run directory is data" in line
    assert line.endswith("pass --trust (Python: trust=True)") and not (tmp_path / "ran").exists()
    assert "does not define 'model'" in invoke("test", run, "--trust", code=2)  # it ran
    assert (tmp_path / "ran").exists()


def test_a_received_configuration_with_an_absurd_size_is_one_line(tmp_path):
    invoke("run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=64",
           "--epochs", "1", "-q", "--save-dir", tmp_path / "run", code=0)  # fmt: skip
    # 10**13 examples of 20 floats: more than any address space holds, so no machine starts to allocate it
    edit_json(tmp_path / "run" / "config.json", lambda c: c["data"]["options"].update(n_samples=10**13))
    line = one_line(invoke("run", "--config", tmp_path / "run", "--save-dir", tmp_path / "again", code=2))
    assert (
        "data 'synthetic-classification' does not fit in memory with options {'n_samples': 10000000000000"
        in line
    )
    assert line.endswith("use smaller values")
