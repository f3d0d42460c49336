"""docs/tutorial.md as a newcomer follows it: its commands in order, in a fresh directory, on generated data.

The page's folders and files are made here: ``photos/`` (two classes of small PNGs told apart by colour),
``new_photos/``, ``customers.csv`` and ``new_customers.csv``. ResNet-18's "ImageNet weights" are a file of
random weights put where torch's cache holds the download (``$TORCH_HOME/hub/checkpoints/``), so the
Python step loads exactly that file and downloads nothing.
"""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "tutorial.md"
XT = Path(sys.executable).with_name("xt")


def blocks(kind: str) -> list[str]:
    return re.findall(rf"```{kind}\n(.*?)```", PAGE.read_text(), re.S)


def commands() -> list[str]:
    """Each ``xt`` command of the page's bash blocks, in order, continuation lines joined, comments dropped."""
    lines = []
    for block in blocks("bash"):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip():
                lines.append(line.split(" #")[0].strip())
    return lines


def make_data(where: Path) -> None:
    from PIL import Image

    g = torch.Generator().manual_seed(0)

    def image(path: Path, red: bool) -> None:
        pixels = torch.rand(40, 40, 3, generator=g) * 0.5
        pixels[..., 0 if red else 2] += 0.5
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((pixels * 255).byte().numpy()).save(path)

    for i in range(24):
        image(where / "photos" / "cat" / f"{i:04d}.png", red=True)
        image(where / "photos" / "dog" / f"{i:04d}.png", red=False)
    for i in range(4):
        image(where / "new_photos" / f"new{i}.png", red=i % 2 == 0)
    x = torch.randn(300, 4, generator=g)
    churned = (x[:, 0] + x[:, 1] > 0).long()
    for name, rows, label in (("customers.csv", 240, True), ("new_customers.csv", 60, False)):
        start = 0 if label else 240
        with open(where / name, "w", newline="") as f:
            out = csv.writer(f)
            out.writerow(["tenure", "spend", "visits", "age", *(["churned"] if label else [])])
            for i in range(start, start + rows):
                out.writerow([f"{v:.4f}" for v in x[i].tolist()] + ([int(churned[i])] if label else []))


@pytest.mark.slow
def test_the_tutorial_runs_as_written(tmp_path: Path) -> None:
    make_data(tmp_path)
    torch_home = tmp_path / "torch-cache"
    (torch_home / "hub" / "checkpoints").mkdir(parents=True)
    from torchvision import models

    weights_file = torch_home / "hub" / "checkpoints" / Path(models.ResNet18_Weights.IMAGENET1K_V1.url).name
    torch.manual_seed(1)
    torch.save(models.resnet18().state_dict(), weights_file)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCH_HOME": str(torch_home), "HF_HUB_OFFLINE": "1"}

    def run(args: list[str]) -> str:
        out = subprocess.run(args, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, f"{' '.join(map(str, args))}\n{out.stdout}\n{out.stderr}"
        return out.stdout

    for command in commands():
        assert command.startswith("xt "), command
        run([str(XT), *command.split()[1:]])
    assert json.loads((tmp_path / "runs" / "photos" / "test_results.json").read_text())
    with open(tmp_path / "predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 4  # one row per new image
    assert (tmp_path / "runs" / "photos" / "model.onnx").is_file()
    with open(tmp_path / "churn_predictions.csv") as f:
        assert len(list(csv.DictReader(f))) == 60

    (python,) = blocks("python")
    script = tmp_path / "tutorial.py"
    # ResNet at the page's 224x224 takes minutes on two CPU cores: the same transforms at 64x64
    python = python.replace("weights.transforms()", "weights.transforms(crop_size=64, resize_size=64)")
    script.write_text("import torch\ntorch.set_num_threads(1)\n" + python)
    printed = run([sys.executable, str(script)])
    assert re.fullmatch(r"validation accuracy: [01]\.\d\d\n", printed.splitlines(keepends=True)[-1]), printed
    # the run loaded the cached file: its first convolution holds that file's weights before training moved them
    # (the head was replaced, the rest fine-tuned at lr 1e-4 for two epochs: close, not equal)
    trained = torch.load(tmp_path / "runs" / "photos-resnet" / "checkpoints" / "last.pt", weights_only=True)
    conv = trained["model"]["conv1.weight"]
    assert (conv - torch.load(weights_file)["conv1.weight"]).abs().max() < 0.05
    # what the page says works on that run
    run([str(XT), "show", "runs/photos-resnet"])
    load = (
        "import xt_training; from torchvision import models; xt_training.load_model('runs/photos-resnet'{})"
    )
    refused = subprocess.run(
        [sys.executable, "-c", load.format("")], cwd=tmp_path, env=env, capture_output=True, text=True
    )
    assert "does not keep block, layers" in refused.stderr and "model=ResNet(...)" in refused.stderr
    run([sys.executable, "-c", load.format(", model=models.resnet18(num_classes=2)")])
