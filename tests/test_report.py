"""Run summaries: ``report.show`` and ``report.plot`` on the files a real run leaves behind."""

from __future__ import annotations

import json
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics, report
from xt_training.cli import cli
from xt_training.errors import ConfigError
from xt_training.utils import functional as F

CONFIG = {
    "model": {"name": "mlp", "hidden": 16},
    "optimizer": {"name": "sgd", "lr": 0.2},
    "epochs": 3,
    "tags": ["a"],
}


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A real 3-epoch run (validation, a named test loader, a confusion matrix) plus a CLI-style config.json."""
    save_dir = tmp_path_factory.mktemp("run")
    g = torch.Generator().manual_seed(0)
    x = torch.randn(160, 6, generator=g)
    y = (x[:, 0] + x[:, 1] > 0).long()
    train = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=16, shuffle=True, generator=g)
    held_out = DataLoader(TensorDataset(x[128:], y[128:]), batch_size=32)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.ReLU(), nn.Linear(16, 2))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.2)
    F.train(save_dir, train, model, optimizer, 3, nn.CrossEntropyLoss(), val_loader=held_out,
            test_loaders={"shifted": held_out}, scheduler=torch.optim.lr_scheduler.StepLR(optimizer, 1, 0.5),
            eval_metrics={"acc": metrics.Accuracy(), "cm": metrics.ConfusionMatrix()}, quiet=True)  # fmt: skip
    (save_dir / "config.json").write_text(json.dumps(CONFIG))
    return save_dir


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


def test_show_prints_the_configuration_and_every_metric_per_epoch(run_dir):
    text = report.show(run_dir)
    assert "  model:\n    name: mlp\n    hidden: 16" in text
    assert "  optimizer:\n    name: sgd\n    lr: 0.2" in text and '  tags: ["a"]' in text
    rows = history(run_dir)
    lines = text.splitlines()
    header_at = next(i for i, line in enumerate(lines) if line.split()[:2] == ["epoch", "lr"])
    header = lines[header_at].split()
    scalar_keys = [k for k in rows[0] if not isinstance(rows[0][k], list)]
    assert header == scalar_keys  # every metric of every loader, in history order
    assert "test.shifted/acc" in header and "val/loss" in header
    for line, row in zip(lines[header_at + 1 : header_at + 4], rows, strict=True):
        cells = line.split()
        assert int(cells[0]) == row["epoch"]
        for key, cell in zip(header[1:], cells[1:]):
            assert float(cell) == pytest.approx(row[key], abs=5e-5), key
    assert "not shown (not numbers; see history.json): train/cm, val/cm, test.shifted/cm" in text


def test_show_without_a_config_shows_the_history(run_dir, tmp_path):
    (tmp_path / "history.json").write_text((run_dir / "history.json").read_text())
    text = report.show(tmp_path)
    assert "configuration" not in text and "history (history.json, 3 epochs):" in text


def test_show_handles_nan_missing_values_and_an_empty_history(tmp_path):
    rows = [
        {"epoch": 1, "lr": 1e-5, "train/loss": 0.5, "val/auc": float("nan")},
        {"epoch": 2, "lr": 1e-5, "train/loss": 1234.5},
    ]
    (tmp_path / "history.json").write_text(json.dumps(rows))
    lines = report.show(tmp_path).splitlines()
    assert lines[-3].split() == ["epoch", "lr", "train/loss", "val/auc"]
    assert lines[-2].split() == ["1", "1.00e-05", "0.5000", "nan"]
    assert lines[-1].split() == ["2", "1.00e-05", "1234", "-"]
    assert len({len(line) for line in lines[-3:]}) == 1  # aligned columns
    (tmp_path / "history.json").write_text("[]")
    assert report.show(tmp_path).endswith("history (history.json, 0 epochs):\n  no completed epoch yet")


def test_nan_in_validation_is_null_in_standard_json_and_read_back(tmp_path):
    """A NaN in the validation data only: training goes on, the monitored value cannot improve (no best.pt),
    which the run says; history.json and metrics.jsonl stay standard JSON (null), which every reader takes."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(64, 6, generator=g), torch.randint(0, 2, (64,), generator=g)
    x_val = x.clone()
    x_val[3, 2] = float("nan")
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 2))
    run = tmp_path / "run"
    returned = F.train(run, DataLoader(TensorDataset(x, y), batch_size=32), model,
                       torch.optim.SGD(model.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(),
                       val_loader=DataLoader(TensorDataset(x_val, y), batch_size=32),
                       eval_metrics={"acc": metrics.Accuracy()}, loggers=["jsonl"], quiet=True)  # fmt: skip

    def strict(text):  # Python's json takes NaN tokens; jq and JavaScript's JSON.parse refuse them
        return json.loads(text, parse_constant=lambda token: pytest.fail(f"non-standard JSON token {token}"))

    rows = strict((run / "history.json").read_text())
    assert [row["val/loss"] for row in rows] == [None, None] and all(0 <= row["val/acc"] <= 1 for row in rows)
    assert torch.isnan(torch.tensor(returned[0]["val/loss"]))  # the history F.train returns keeps the float
    epochs = [strict(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [row["val/loss"] for row in epochs if row["kind"] == "epoch"] == [None, None]
    assert not (run / "checkpoints" / "best.pt").exists()
    notes = (run / "notes.txt").read_text()
    assert "val/loss: NaN or infinite, so it cannot improve: best.pt is not updated in such epochs" in notes
    assert "history.json writes it as null" in notes

    pandas = pytest.importorskip("pandas")
    assert pandas.read_json(run / "history.json")["val/loss"].isna().all()
    for args in (["show", str(run)], ["runs", str(tmp_path)], ["plot", str(run)]):
        result = CliRunner().invoke(cli, args, prog_name="xt")
        assert result.exit_code == 0, result.output
    assert "best: none (val/loss has no value yet)" in report.show(run)
    assert report.summary(run)["best"] is None


def test_show_does_not_import_torch(run_dir):
    """``xt show`` must start fast: the report module reads JSON only."""
    code = f"import sys; from xt_training import report; report.show({str(run_dir)!r}); print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_writes_a_png_of_the_curves(run_dir):
    pytest.importorskip("matplotlib")
    path = report.plot(run_dir)
    assert path == run_dir / "curves.png"
    width, height = png_size(path)
    assert width >= 1000 and height >= 250  # three panels side by side: loss, acc, lr (it changed)
    assert path.stat().st_size > 20_000


def test_plot_to_a_chosen_path(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "figures" / "run.png"
    assert report.plot(run_dir, out=out) == out
    assert png_size(out)[0] > 0


def test_xt_plot_to_an_unwritable_or_unknown_file_is_one_line(run_dir, tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "file").write_text("")
    blocked = tmp_path / "file" / "c.png"  # its folder is a file
    for out, message in [
        (blocked, f"cannot write '{blocked}' ("),
        (tmp_path / "c.txt", "Format 'txt' is not supported"),
    ]:
        result = CliRunner().invoke(cli, ["plot", str(run_dir), "-o", str(out)])
        assert result.exit_code == 2 and result.output.startswith("xt: error: cannot "), result.output
        assert message in result.output and result.output.count("\n") == 1, result.output
    # the same from Python: no CLI option (-o FILE) in the message
    with pytest.raises(ConfigError, match=r"^cannot write '.*c.png' \(.*\); choose another output path$"):
        report.plot(run_dir, out=blocked)
    with pytest.raises(ConfigError, match=r"; give an output path ending in .png, .svg or .pdf$"):
        report.plot(run_dir, out=tmp_path / "c.txt")
    result = CliRunner().invoke(cli, ["plot", str(run_dir), "-o", str(tmp_path / "curves")])
    assert result.output == f"wrote {tmp_path / 'curves.png'}\n"  # the file matplotlib writes
    assert png_size(tmp_path / "curves.png")[0] > 0


def test_plot_without_matplotlib_names_the_extra(run_dir):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # how Python reports a package that is not installed
        "from xt_training import report\n"
        f"report.plot({str(run_dir)!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "xt_training.errors.ConfigError: plotting needs matplotlib, which is not installed: "
        "pip install matplotlib"
    )


@pytest.mark.parametrize(
    "files, message",
    [
        (None, "does not exist; pass the save_dir of a run"),
        ({}, "has no history.json: not a run directory"),
        ({"history.json": "{not json"}, r"cannot read .*history.json"),
        ({"history.json": '{"epoch": 1}'}, "is not a list of epoch rows"),
        ({"history.json": "[]", "config.json": "[1,"}, r"cannot read .*config.json"),
    ],
)
def test_bad_run_directories_are_one_line_errors(tmp_path, files, message):
    run = tmp_path / "run"
    if files is not None:
        run.mkdir()
        for name, text in files.items():
            (run / name).write_text(text)
    for action in (report.show, report.plot):
        if action is report.plot and files and "config.json" in files:
            continue  # plot reads no configuration
        with pytest.raises(ConfigError, match=message) as info:
            action(run)
        assert "\n" not in str(info.value)


def test_plot_needs_a_completed_epoch(tmp_path):
    pytest.importorskip("matplotlib")
    (tmp_path / "history.json").write_text("[]")
    with pytest.raises(ConfigError, match="no completed epoch yet"):
        report.plot(tmp_path)


def test_the_best_epoch_follows_the_runs_recorded_direction_never_a_guess(tmp_path):
    # a run.json without 'mode' (written before it was recorded) but with the metrics' directions
    (tmp_path / "history.json").write_text(
        json.dumps([{"epoch": 1, "val/brier": 0.6}, {"epoch": 2, "val/brier": 0.5}])
    )
    (tmp_path / "run.json").write_text(
        json.dumps({"format": 1, "monitor": "val/brier", "directions": {"val/brier": "min"}})
    )
    assert report.summary(tmp_path)["best"] == {"epoch": 2, "value": 0.5}
    # no direction recorded for a value that is not a loss: no best epoch rather than a guess
    (tmp_path / "run.json").write_text(json.dumps({"format": 1, "monitor": "val/brier"}))
    assert report.summary(tmp_path)["best"] is None
    assert "val/brier" in report.show(tmp_path)
