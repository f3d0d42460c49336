"""The installable plugins in plugins/: their code, and each one pip-installed for real into a venv.

The install test (marked ``slow``, ~1 minute) creates a venv that sees this environment's packages through a
``.pth`` file (torch is not reinstalled), ``pip install``s copies of plugins/xt-vision and
plugins/xt-calibration into it, drives ``python -m xt_training`` (the ``xt`` CLI) there, and uninstalls them.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import ENV, overlay_venv, xt

from xt_training import registry
from xt_training.errors import ConfigError

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"


@pytest.fixture
def calibration(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS / "xt-calibration"))
    from xt_calibration import metrics

    return metrics


@pytest.fixture
def vision(monkeypatch):
    monkeypatch.syspath_prepend(str(PLUGINS / "xt-vision"))
    import xt_vision.data
    import xt_vision.models
    import xt_vision.plugin

    return xt_vision


# --- xt-calibration: values on hand-made cases and against torchmetrics' independent implementation --------------
def test_ece_on_a_hand_made_case(calibration):
    probs = torch.tensor([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4], [0.3, 0.7]])
    labels = torch.tensor([0, 0, 0, 1])
    # confidences 0.9, 0.8, 0.6, 0.7 fall in four bins; hits 1, 0, 1, 1
    ece = calibration.ExpectedCalibrationError(n_bins=10)
    ece.update(probs, labels)
    assert float(ece.compute()) == pytest.approx((0.1 + 0.8 + 0.4 + 0.3) / 4)
    mce = calibration.ExpectedCalibrationError(n_bins=10, norm="max")
    mce.update(probs, labels)
    assert float(mce.compute()) == pytest.approx(0.8)
    one_bin = calibration.ExpectedCalibrationError(n_bins=1)
    one_bin.update(probs, labels)  # accuracy 3/4, mean confidence 0.75
    assert float(one_bin.compute()) == pytest.approx(0.0, abs=1e-6)


@pytest.mark.parametrize("norm", ["l1", "max"])
def test_ece_equals_torchmetrics_over_several_updates(calibration, norm):
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(0)
    logits, labels = 2 * torch.randn(600, 5, generator=g), torch.randint(0, 5, (600,), generator=g)
    ece = calibration.ExpectedCalibrationError(norm=norm)
    for part in (slice(0, 100), slice(100, 350), slice(350, 600)):
        ece.update(logits[part], labels[part])
    reference = MulticlassCalibrationError(num_classes=5, n_bins=15, norm=norm)
    reference.update(logits, labels)
    assert float(ece.compute()) == pytest.approx(float(reference.compute()), abs=1e-6)

    probabilities = calibration.ExpectedCalibrationError(norm=norm)  # probabilities give the same value
    probabilities.update(logits.softmax(1), labels)
    assert float(probabilities.compute()) == pytest.approx(float(ece.compute()), abs=1e-6)


def test_binary_ece_is_the_two_class_top_label_ece(calibration):
    from torchmetrics.classification import MulticlassCalibrationError

    g = torch.Generator().manual_seed(1)
    logits, labels = torch.randn(300, generator=g), torch.randint(0, 2, (300,), generator=g)
    ece = calibration.ExpectedCalibrationError()
    ece.update(logits[:, None], labels)
    p = logits.sigmoid()
    reference = MulticlassCalibrationError(num_classes=2, n_bins=15)
    reference.update(torch.stack([1 - p, p], 1), labels)
    assert float(ece.compute()) == pytest.approx(float(reference.compute()), abs=1e-6)


def test_brier_score_on_hand_made_cases(calibration):
    brier = calibration.BrierScore()
    brier.update(torch.tensor([[0.9, 0.1], [0.2, 0.8]]), torch.tensor([0, 0]))
    assert float(brier.compute()) == pytest.approx(((0.01 + 0.01) + (0.64 + 0.64)) / 2)
    brier.update(torch.tensor([[1.0, 0.0]]), torch.tensor([0]))  # a perfect prediction adds 0
    assert float(brier.compute()) == pytest.approx(1.30 / 3)
    brier.reset()
    assert math.isnan(float(brier.compute()))
    binary = calibration.BrierScore()
    binary.update(torch.tensor([0.9, 0.2, 0.5]), torch.tensor([1, 1, 0]))
    assert float(binary.compute()) == pytest.approx((0.01 + 0.64 + 0.25) / 3)
    logits = calibration.BrierScore(from_logits=True)
    logits.update(torch.tensor([[2.0, 0.0]]), torch.tensor([1]))
    p = torch.tensor([2.0, 0.0]).softmax(0)
    assert float(logits.compute()) == pytest.approx(float(p[0] ** 2 + (p[1] - 1) ** 2))


def test_calibration_metrics_reject_bad_input(calibration):
    with pytest.raises(ValueError, match="n_bins must be a positive integer"):
        calibration.ExpectedCalibrationError(n_bins=0)
    with pytest.raises(ValueError, match=r"labels must be class indices in \[0, 2\]"):
        calibration.BrierScore().update(torch.randn(4, 3), torch.tensor([0, 1, 2, 3]))
    with pytest.raises(ValueError, match="4 predictions but 3 labels"):
        calibration.ExpectedCalibrationError().update(torch.randn(4, 3), torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match=r"predictions must be \(N,\), \(N, 1\) or \(N, C\)"):
        calibration.BrierScore().update(torch.randn(2, 3, 4), torch.tensor([0, 1]))


# --- xt-vision -------------------------------------------------------------------------------------------------
def test_vision_model_names_are_torchvisions_without_importing_it(vision):
    import torchvision.models

    assert vision.plugin.model_names() == sorted(torchvision.models.list_models(module=torchvision.models))
    code = (
        "import sys; from xt_vision.plugin import model_names; model_names(); print('torch' in sys.modules)"
    )
    env = {**os.environ, "PYTHONPATH": str(PLUGINS / "xt-vision")}
    assert (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout
        == "False\n"
    )


@pytest.mark.parametrize("name", ["resnet18", "mobilenet_v3_small", "squeezenet1_1", "googlenet"])
def test_vision_models_train_with_random_weights(vision, name):
    model = vision.models.torchvision_model(name, num_classes=3)
    logits = model.train()(torch.randn(2, 3, 64, 64))
    assert logits.shape == (2, 3)
    logits.sum().backward()


def test_vision_model_errors(vision):
    with pytest.raises(ConfigError, match=r"torchvision model 'resnet18' rejected the options \['colour'\]"):
        vision.models.torchvision_model("resnet18", colour="red")


def test_fake_images_are_repeatable(vision):
    data = vision.data.fake_images(n_samples=20, image_size=16, batch_size=4, test_fraction=0.2)
    assert sorted(data.loaders) == ["test", "train", "val"] and data.info["in_features"] == 3 * 16 * 16
    first = next(iter(data.loaders["val"]))[0]
    assert first.shape == (4, 3, 16, 16) and torch.equal(first, next(iter(data.loaders["val"]))[0])


@pytest.mark.parametrize(
    "preset", ["flip", "crop-flip", "autoaugment", "randaugment", "trivialaugment", "augmix"]
)
def test_augmented_image_folder_presets(vision, preset, tmp_path):
    from test_registry import write_image_folder

    root = write_image_folder(tmp_path / "images", per_class=3, size=(24, 30))
    data = vision.data.augmented_image_folder(root=str(root), preset=preset, image_size=16, batch_size=6)
    x, y = next(iter(data.loaders["train"]))
    assert x.shape[1:] == (3, 16, 16) and data.info["classes"] == ["cat", "dog"]
    assert next(iter(data.loaders["val"]))[0].shape[1:] == (3, 16, 16)


# --- metric directions: the monitored value's mode comes from the metric, never from its name --------------------
def importing_from(path: Path) -> dict[str, str]:
    """The environment of an ``xt`` subprocess that imports modules from ``path`` too (a plugin not installed)."""
    return {**ENV, "PYTHONPATH": os.pathsep.join([str(path), os.environ.get("PYTHONPATH", "")])}


def test_a_lower_is_better_plugin_metric_keeps_its_lowest_epoch_in_best_pt(tmp_path):
    # Brier falls from epoch to epoch: guessed from the name ('max'), best.pt would hold the worst epoch
    env = importing_from(PLUGINS / "xt-calibration")
    xt("-p", "xt_calibration.plugin", "run", "--model", "mlp", "--data", "synthetic-classification",
       "--metric", "brier", "--metric", "ece", "--monitor", "val/brier", "--epochs", "4", "-q",
       "--save-dir", "r", cwd=tmp_path, env=env)  # fmt: skip
    history = json.loads((tmp_path / "r" / "history.json").read_text())
    best = torch.load(tmp_path / "r" / "checkpoints" / "best.pt", weights_only=True)
    assert best["epoch"] == min(history, key=lambda row: row["val/brier"])["epoch"] != 1
    record = json.loads((tmp_path / "r" / "run.json").read_text())
    assert record["mode"] == best["mode"] == "min"
    values = [f"{split}/{m}" for split in ("train", "val", "test") for m in ("loss", "brier", "ece")]
    assert record["directions"] == dict.fromkeys(values, "min")


PEAK_PLUGIN = """
from xt_training.hookspecs import hookimpl


class Peak:  # nothing in a name like this says which way it improves (a PSNR improves upwards)
    def __init__(self):
        self.reset()

    def update(self, y_pred, y):
        self.n += len(y)

    def compute(self):
        return float(self.n)

    def reset(self):
        self.n = 0


@hookimpl
def register_metrics(register):
    register("peak", "peak_plugin:Peak", description="declares no direction")
    register("peak-up", "peak_plugin:Peak", description="declared where it registers", higher_is_better=True)
    register("peak-odd", "peak_plugin:Peak", description="a bad declaration", higher_is_better="up")
"""


def test_a_plugin_metric_without_a_direction_makes_the_run_ask_for_mode(tmp_path, monkeypatch):
    (tmp_path / "peak_plugin.py").write_text(PEAK_PLUGIN)
    env = importing_from(tmp_path)
    out = xt("-p", "peak_plugin", "run", "--model", "mlp", "--data", "synthetic-classification", "--metric", "peak",
             "--monitor", "val/peak", "--save-dir", "r", cwd=tmp_path, env=env, code=2)  # fmt: skip
    assert out.stderr.strip().splitlines() == [
        "xt: error: which way 'val/peak' improves is unknown: metric 'peak' (Peak) declares no higher_is_better; "
        "pass mode='min' or mode='max' (xt run --mode min|max)"
    ]
    assert not (tmp_path / "r" / "checkpoints").exists()  # refused before training

    # declared as registration metadata, the metric carries it; a declaration that is not a bool is refused
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = registry.load(["peak_plugin"], environ={"XT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert plugins.create("metric", "peak-up").higher_is_better is True
    assert getattr(plugins.create("metric", "peak"), "higher_is_better", None) is None
    with pytest.raises(ConfigError, match="'peak-odd' of plugin .* higher_is_better='up'; the plugin must"):
        plugins.create("metric", "peak-odd")


ZOO_PLUGIN = """
from torch import nn

from xt_training.hookspecs import hookimpl


def zoo(name: str, num_classes: int = 2):
    return nn.Linear({"small": 4, "large": 8}[name], num_classes)


@hookimpl
def register_models(register):
    register("zoo", zoo, description="a model by name", argument="name")
    register("plain", zoo, description="no short form")
"""


def test_name_colon_value_sets_the_option_the_name_registered_as_its_argument(tmp_path, monkeypatch):
    (tmp_path / "zoo_plugin.py").write_text(ZOO_PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = registry.load(["zoo_plugin"], environ={"XT_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert plugins.split("model", "zoo:large", {"num_classes": 3}) == (
        "zoo",
        {"num_classes": 3, "name": "large"},
    )
    assert plugins.create("model", "zoo:large", num_classes=3).weight.shape == (3, 8)
    assert plugins.accepts("model", "zoo:large", {"num_classes": 3, "image_size": 32}) == {"num_classes": 3}
    assert plugins.split("model", "zoo_plugin:zoo") == ("zoo_plugin:zoo", {})  # PLUGIN:NAME keeps its meaning
    assert plugins.split("model", "plain:small") == ("plain:small", {})  # registered without an argument
    with pytest.raises(ConfigError, match="unknown model 'small'"):  # read as PLUGIN:NAME, plugin 'plain'
        plugins.create("model", "plain:small")
    with pytest.raises(ConfigError, match=r"'zoo:large' sets its option name='large', and the options set "):
        plugins.create("model", "zoo:large", name="small")

    # from the command line the run records the long form, so it is rebuilt as it was named
    env = importing_from(tmp_path)
    xt("-p", "zoo_plugin", "run", "--model", "zoo:small", "--data", "synthetic-classification", "--data-opt",
       "n_features=4", "--data-opt", "n_samples=200", "--epochs", "1", "-q", "--save-dir", "r", cwd=tmp_path,
       env=env)  # fmt: skip
    config = json.loads((tmp_path / "r" / "config.json").read_text())
    assert config["model"]["name"] == "zoo" and config["model"]["options"] == {"name": "small"}


# --- pip install for real ---------------------------------------------------------------------------------------
@pytest.mark.slow
def test_pip_install_list_run_and_uninstall_the_plugins(tmp_path):
    python, _ = overlay_venv(tmp_path / "venv")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    env.pop("PYTHONPATH", None)

    def pip(*args: str) -> None:
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "--python",
            str(python),
            "--disable-pip-version-check",
            "-q",
            *args,
        ]
        subprocess.run(cmd, check=True, env=env, cwd=tmp_path, timeout=300)

    def xt(*args: str) -> subprocess.CompletedProcess:
        out = subprocess.run(
            [python, "-m", "xt_training", *args],
            capture_output=True,
            text=True,
            env=env,
            cwd=tmp_path,
            timeout=300,
        )
        assert out.returncode == 0, out.stderr
        assert "warning" not in out.stderr, out.stderr
        return out

    sources = [
        shutil.copytree(PLUGINS / name, tmp_path / "src" / name) for name in ("xt-vision", "xt-calibration")
    ]
    pip("install", "--no-deps", "--no-build-isolation", *map(str, sources))

    assert "resnet18" in xt("list", "models", "resnet1*").stdout
    plugins = {p["name"]: p for p in json.loads(xt("plugins", "--json").stdout)["plugins"]}
    assert (plugins["vision"]["distribution"], plugins["vision"]["version"]) == ("xt-vision", "0.1.0")
    assert plugins["calibration"]["registered"] == {"metric": ["brier", "ece"]}
    assert "fake-images" in plugins["vision"]["registered"]["data"]
    metrics = json.loads(xt("list", "metrics", "--json").stdout)
    assert {m["name"]: m["distribution"] for m in metrics}["ece"] == "xt-calibration"

    xt(
        "run", "--model", "resnet18", "--data", "fake-images", "--data-opt", "n_samples=24",
        "--data-opt", "image_size=32", "--batch-size", "8", "--epochs", "1", "-q", "--save-dir", "vision-run",
    )  # fmt: skip
    config = json.loads((tmp_path / "vision-run" / "config.json").read_text())
    assert config["model"]["source"] == "xt-vision 0.1.0" and config["model"]["resolved"]["num_classes"] == 10
    xt(
        "run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=300",
        "--metric", "accuracy", "--metric", "ece", "--metric", "brier", "--epochs", "2", "-q", "--save-dir", "cal-run",
    )  # fmt: skip
    history = json.loads((tmp_path / "cal-run" / "history.json").read_text())
    assert 0 <= history[-1]["val/ece"] <= 1 and 0 <= history[-1]["val/brier"] <= 2
    assert "resnet18" not in xt("-p", "no:vision", "list", "models").stdout

    pip("uninstall", "-y", "xt-vision", "xt-calibration")
    assert "resnet18" not in xt("list", "models").stdout
    assert "ece" not in xt("list", "metrics").stdout.split()
    assert all(p["builtin"] for p in json.loads(xt("plugins", "--json").stdout)["plugins"])
