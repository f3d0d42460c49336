"""Each name of the plugin through the real ``xt``, in a subprocess, as a user runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path


def xt(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """The real ``xt`` of this environment (``python -m xt_training`` is ``xt``), in a subprocess."""
    proc = subprocess.run(
        [sys.executable, "-m", "xt_training", *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc


def test_the_plugin_is_listed(tmp_path):
    out = xt("plugins", cwd=tmp_path).stdout
    assert "xt-example" in out
    names = {"models": "example-mlp", "data": "example-blobs", "metrics": "example-overconfident",
             "loggers": "example-text", "callbacks": "example-stop-at"}  # fmt: skip
    for kind, name in names.items():
        assert name in xt("list", kind, cwd=tmp_path).stdout


def test_a_run_with_every_name(tmp_path):
    args = ["--model", "example-mlp", "--data", "example-blobs", "--metric", "accuracy",
            "--metric", "example-overconfident", "--metric-opt", "example-overconfident.threshold=0.6",
            "--logger", "example-text", "--callback", "example-stop-at",
            "--callback-opt", "example-stop-at.value=0.5", "--epochs", "30", "--save-dir", "run"]  # fmt: skip
    proc = xt("run", *args, cwd=tmp_path)
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    # the blobs are easy: the validation loss (the run's monitor) falls to the target and the callback stops
    # the run there; a confident mistake is at most a mistake
    assert "example-stop-at: val/loss" in proc.stdout
    assert len(history) < 30 and history[-1]["val/loss"] <= 0.5 < history[-2]["val/loss"]
    assert all(row["val/example-overconfident"] <= 1 - row["val/accuracy"] + 1e-6 for row in history)
    lines = (tmp_path / "run" / "example.log").read_text().splitlines()
    assert len(lines) == len(history) + 1 and lines[-1] == "run stopped"  # stopped by the callback
    assert lines[0].startswith("epoch 1 step ") and "val/example-overconfident=" in lines[0]
    best = min(history, key=lambda row: row["val/loss"])
    out = xt("example-best", "run", cwd=tmp_path).stdout
    assert out.strip() == f"best epoch {best['epoch']}: val/loss = {best['val/loss']:.4f}"


def test_the_metric_counts_confident_mistakes_over_all_updates():
    import torch

    from xt_example.metrics import Overconfident

    y = torch.tensor([0, 1, 2, 0])
    y_pred = torch.log(torch.tensor([[0.1, 0.8, 0.1], [0.1, 0.8, 0.1], [0.5, 0.4, 0.1], [0.3, 0.3, 0.4]]))
    metric = Overconfident(threshold=0.5)  # wrong and >= 0.5 sure: the first (0.8) and the third (0.5)
    metric.update(y_pred[:1], y[:1])
    metric.update(y_pred[1:], y[1:])
    assert metric.compute().item() == 2 / 4
    metric.reset()
    assert metric.total == 0
