"""An exported model carries the data's preprocessing: the ONNX file alone, given raw inputs, reproduces the model.

For every built-in data kind whose inputs are tensors: the first training batch ``x`` (preprocessed), a small
model of the kind the CLI would pick, and the data's normalization (its ``info`` or its transforms).
``with_preprocessing(model, n)(raw_inputs(x, n))`` must equal ``model(x)``, and so must the exported ONNX file
run on the raw inputs in a fresh Python that imports only onnxruntime and numpy.
"""

from __future__ import annotations

import csv
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

from xt_training import registry
from xt_training.errors import ConfigError
from xt_training.preprocessing import (
    Normalize,
    WithPreprocessing,
    normalization_in,
    normalization_of,
    raw_inputs,
    with_preprocessing,
)

IMAGENET = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


def same(a: dict | None, b: dict) -> bool:
    """Two normalizations are equal up to float32 rounding."""
    return a is not None and set(a) == set(b) and all(a[k] == pytest.approx(b[k]) for k in b)


# --- data -------------------------------------------------------------------------------------------------------
def _csv_file(tmp_path: Path) -> Path:
    """Features of very different scales (thousands, thousandths, around -50), labels from all of them."""
    g = torch.Generator().manual_seed(1)
    n = 48
    big = 1000 + 300 * torch.randn(n, generator=g)
    small = 0.001 + 0.0005 * torch.randn(n, generator=g)
    offset = -50 + 2 * torch.randn(n, generator=g)
    score = (big - 1000) / 300 + (small - 0.001) / 0.0005 - (offset + 50) / 2
    path = tmp_path / "table.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["big", "small", "offset", "label"])
        for row in zip(big.tolist(), small.tolist(), offset.tolist(), score.tolist()):
            writer.writerow([repr(v) for v in row[:3]] + ["high" if row[3] > 0 else "low"])
    return path


def _image_root(tmp_path: Path) -> Path:
    """Tiny random PNGs in two class folders."""
    from PIL import Image

    g = torch.Generator().manual_seed(2)
    root = tmp_path / "images"
    for label in ("cat", "dog"):
        (root / label).mkdir(parents=True)
        for i in range(4):
            pixels = torch.randint(0, 256, (12, 12, 3), generator=g, dtype=torch.uint8).numpy()
            Image.fromarray(pixels).save(root / label / f"{i}.png")
    return root


#: data name -> (data options, given tmp_path; model name; model options beyond what the data's info gives)
CASES: dict[str, tuple[Any, str, dict[str, Any]]] = {
    "synthetic-classification": (
        lambda tmp: {"n_samples": 30, "n_features": 5, "batch_size": 6},
        "mlp",
        {"hidden": [8]},
    ),
    "synthetic-regression": (
        lambda tmp: {"n_samples": 30, "n_features": 5, "n_targets": 2, "batch_size": 6},
        "mlp",
        {"hidden": [8]},
    ),
    "synthetic-multilabel": (
        lambda tmp: {"n_samples": 30, "n_features": 5, "num_labels": 3, "batch_size": 6},
        "mlp",
        {"hidden": [8]},
    ),
    "synthetic-images": (
        lambda tmp: {"n_samples": 20, "image_size": 12, "num_classes": 3, "batch_size": 4},
        "cnn",
        {"channels": [4], "kernel_size": 3, "hidden": [8]},
    ),
    "synthetic-sequences": (
        lambda tmp: {"n_samples": 20, "seq_len": 6, "input_size": 4, "batch_size": 4},
        "rnn",
        {"hidden_size": 8, "num_layers": 1},
    ),
    "synthetic-segmentation": (
        lambda tmp: {"n_samples": 10, "image_size": 16, "batch_size": 2},
        "unet",
        {"channels": [4, 8]},
    ),
    "synthetic-tagging": (
        lambda tmp: {"n_samples": 20, "vocab_size": 12, "max_len": 6, "batch_size": 4},
        "rnn-tagger",
        {"embed_dim": 4, "hidden_size": 8},
    ),
    "csv": (
        lambda tmp: {"path": str(_csv_file(tmp)), "batch_size": 8},
        "mlp",
        {"hidden": [8]},
    ),
    "image-folder": (
        lambda tmp: {"root": str(_image_root(tmp)), "image_size": 12, "batch_size": 4, "num_workers": 0},
        "cnn",
        {"channels": [4], "kernel_size": 3, "hidden": [8]},
    ),
}


def test_cases_cover_every_builtin_data_kind() -> None:
    """A new built-in data kind must be added here (or to NOT_TENSOR_INPUTS, saying why)."""
    builtin = {
        name
        for name in registry.list_data()
        if registry.info("data", name)["plugin"].startswith("xt_training.")
    }
    assert builtin == set(CASES) | set(NOT_TENSOR_INPUTS)


def _setup(name: str, tmp_path: Path) -> tuple[Any, torch.nn.Module, torch.Tensor, dict | None]:
    options, model_name, model_options = CASES[name]
    data = registry.create_data(name, **options(tmp_path))
    x = next(iter(data.loaders["train"]))[0]
    assert isinstance(x, torch.Tensor)
    torch.manual_seed(0)
    model = registry.create_model(
        model_name, **{**registry.accepts("model", model_name, data.info), **model_options}
    )
    model.eval()
    normalization = data.info.get("normalization") or normalization_of(data.loaders.values())
    return data, model, x, normalization


@pytest.mark.parametrize("name", sorted(CASES))
def test_raw_inputs_through_the_preprocessing_give_the_model_outputs(name: str, tmp_path: Path) -> None:
    data, model, x, normalization = _setup(name, tmp_path)
    wrapped = with_preprocessing(model, normalization)
    raw = raw_inputs(x, normalization)
    if normalization is None:
        assert wrapped is model and raw is x
    else:
        assert isinstance(wrapped, WithPreprocessing)
        assert not torch.allclose(raw, x)  # the raw inputs are not the preprocessed ones
    with torch.no_grad():
        torch.testing.assert_close(wrapped(raw), model(x), atol=1e-5, rtol=1e-5)


def test_csv_records_its_standardization_and_the_raw_inputs_are_the_files_rows(tmp_path: Path) -> None:
    data, _, x, normalization = _setup("csv", tmp_path)
    recorded = data.info.get("normalization")
    assert recorded is not None, "csv with standardize=True must record info['normalization']"
    assert normalization == recorded
    assert set(recorded) == {"mean", "std"}
    assert all(type(v) is float for v in recorded["mean"] + recorded["std"])
    assert len(recorded["mean"]) == len(recorded["std"]) == x.shape[1] == 3
    assert recorded["mean"] != [0.0] * 3 and recorded["std"] != [1.0] * 3
    mean, std = torch.tensor(recorded["mean"]), torch.tensor(recorded["std"])
    assert 500 < mean[0] < 1500 and abs(mean[1]) < 0.01 and -60 < mean[2] < -40  # the training split's own
    assert std[0] > 100 and std[1] < 0.01
    # raw_inputs undoes the standardization: every raw row is a row of the file
    with (tmp_path / "table.csv").open() as f:
        rows = torch.tensor([[float(v) for v in row[:3]] for row in list(csv.reader(f))[1:]])
    for raw in raw_inputs(x, recorded):
        assert torch.isclose(rows, raw, rtol=1e-5, atol=1e-6).all(1).any(), (
            f"{raw.tolist()} is no row of the file"
        )
    # unstandardized, there is nothing to record
    assert (
        "normalization"
        not in registry.create_data("csv", path=str(tmp_path / "table.csv"), standardize=False).info
    )


def test_image_folder_records_its_normalize_and_the_raw_inputs_are_pixels(tmp_path: Path) -> None:
    data, _, x, normalization = _setup("image-folder", tmp_path)
    assert same(data.info["normalization"], IMAGENET)
    assert same(normalization_of(data.loaders.values()), IMAGENET)
    assert same(normalization_of(data.loaders), IMAGENET)  # a dict of loaders by split
    raw = raw_inputs(x, normalization)
    assert raw.min() >= -1e-5 and raw.max() <= 1 + 1e-5  # ToTensor's [0, 1] pixels
    torch.testing.assert_close(raw * 255, (raw * 255).round(), atol=1e-3, rtol=0)
    root = tmp_path / "images"
    plain = registry.create_data(
        "image-folder", root=str(root), image_size=12, normalize=False, num_workers=0
    )
    assert "normalization" not in plain.info and normalization_of(plain.loaders.values()) is None


# --- the ONNX file alone ------------------------------------------------------------------------------------------
_RUN_ONNX = textwrap.dedent(
    """
    import sys

    import numpy as np
    import onnxruntime as ort

    model, inputs, outputs = sys.argv[1:]
    session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
    assert len(session.get_inputs()) == 1, [i.name for i in session.get_inputs()]
    (result,) = session.run(None, {session.get_inputs()[0].name: np.load(inputs)})
    np.save(outputs, result)
    assert "torch" not in sys.modules and "xt_training" not in sys.modules, "the ONNX file must run alone"
    """
)


def run_onnx_alone(model: Path, raw: torch.Tensor, tmp_path: Path) -> torch.Tensor:
    """The ONNX model's output on ``raw`` in a fresh Python with onnxruntime and numpy only."""
    import numpy as np

    script, inputs, outputs = tmp_path / "run_onnx.py", tmp_path / "raw.npy", tmp_path / "out.npy"
    script.write_text(_RUN_ONNX)
    np.save(inputs, raw.numpy())
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(model), str(inputs), str(outputs)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return torch.from_numpy(np.load(outputs))


@pytest.mark.parametrize("name", sorted(CASES))
def test_the_exported_onnx_file_alone_takes_raw_inputs(name: str, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from xt_training.exporting import export

    _, model, x, normalization = _setup(name, tmp_path)
    raw = raw_inputs(x, normalization)
    path = tmp_path / "m.onnx"
    export(with_preprocessing(model, normalization), raw, path)
    with torch.no_grad():
        expected = model(x)
    got = run_onnx_alone(path, raw, tmp_path)
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-4)
    if (
        normalization is not None
    ):  # the graph applies the normalization: the preprocessed x gives other outputs
        assert not torch.allclose(run_onnx_alone(path, x, tmp_path), expected, atol=1e-3, rtol=1e-3)


# --- data whose inputs are not one tensor ----------------------------------------------------------------------
#: data kinds whose model input is not a single tensor to normalise, so nothing of theirs goes into the graph
NOT_TENSOR_INPUTS = {
    # dicts of token ids and attention masks: the ids are the raw inputs; the tokenizer stays outside the graph
    "synthetic-text": {"n_samples": 20, "batch_size": 4},
    # lists of images with targets (torchvision's detection format); the model normalises inside itself
    "synthetic-detection": {"n_samples": 4, "image_size": 32, "batch_size": 2},
}


@pytest.mark.parametrize("name", sorted(NOT_TENSOR_INPUTS))
def test_data_of_other_inputs_records_no_normalization(name: str) -> None:
    data = registry.create_data(name, **NOT_TENSOR_INPUTS[name])
    assert data.info.get("normalization") is None
    assert normalization_of(data.loaders.values()) is None
    x = next(iter(data.loaders["train"]))[0]
    assert not isinstance(x, torch.Tensor)
    assert raw_inputs(x, None) is x
    with pytest.raises(ConfigError, match="input tensor"):
        raw_inputs(x, {"mean": [0.0], "std": [1.0]})


# --- the API directly ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("shape", [(4, 3), (4, 3, 7), (4, 3, 5, 6), (2, 3, 2, 4, 4)])
def test_normalize_works_along_dim_1_at_any_rank(shape: tuple[int, ...]) -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(*shape, generator=g)
    mean, std = [1.0, -0.002, 300.0], [0.5, 0.001, 20.0]
    view = (1, 3) + (1,) * (len(shape) - 2)
    expected = (x - torch.tensor(mean).view(view)) / torch.tensor(std).view(view)
    torch.testing.assert_close(Normalize(mean, std)(x), expected)
    torch.testing.assert_close(Normalize(mean, std)(raw_inputs(x, {"mean": mean, "std": std})), x)


def test_normalize_dtypes_devices_and_state() -> None:
    n = Normalize([0.5], [0.25])  # one value for every channel
    x = torch.rand(2, 3, 4, 4, dtype=torch.float64)
    assert n(x).dtype == torch.float64
    torch.testing.assert_close(n(x), (x - 0.5) / 0.25)
    pixels = torch.randint(0, 256, (2, 3, 4, 4), dtype=torch.uint8)
    assert n(pixels).dtype == torch.float32  # integer raw inputs become floating
    assert set(n.state_dict()) == {"mean", "std"}
    assert "mean=[0.5]" in repr(n)


def test_with_preprocessing_is_for_export_not_for_checkpoints() -> None:
    model = torch.nn.Sequential(torch.nn.Linear(3, 2))
    assert with_preprocessing(model, None) is model
    wrapped = with_preprocessing(model.eval(), {"mean": [1.0, 2.0, 3.0], "std": [1.0, 2.0, 4.0]})
    assert not wrapped.training and wrapped.model is model
    keys = set(wrapped.state_dict())
    assert keys.isdisjoint(model.state_dict()) and {"normalize.mean", "normalize.std"} <= keys
    with pytest.raises(RuntimeError):  # the wrapper's state is no checkpoint of the model
        model.load_state_dict(wrapped.state_dict())
    # the wrapper shares the model's parameters: training the model later changes the wrapper too
    assert list(wrapped.model.parameters())[0] is list(model.parameters())[0]


@pytest.mark.parametrize(
    ("normalization", "match"),
    [
        ({"mean": [0.0, 0.0]}, "'mean' and 'std'"),
        ({"mean": [0.0, 0.0], "std": [1.0, 1.0, 1.0]}, "2 values"),
        ({"mean": [0.0], "std": [0.0]}, "zero"),
        ({"mean": ["a"], "std": [1.0]}, "list of numbers"),
        ({"mean": [], "std": []}, "empty"),
    ],
)
def test_bad_normalizations_are_one_line_errors(normalization: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        with_preprocessing(torch.nn.Linear(2, 2), normalization)


def test_a_normalization_that_does_not_fit_the_input_is_an_error() -> None:
    n = {"mean": [0.0, 0.0], "std": [1.0, 1.0]}
    with pytest.raises(ConfigError, match="dimension 1 of the input has 3"):
        raw_inputs(torch.zeros(4, 3), n)
    with pytest.raises(ConfigError, match="dimension 1 of the input has 3"):
        with_preprocessing(torch.nn.Linear(3, 1), n)(torch.zeros(4, 3))


def test_normalization_in_follows_compose_and_normalization_of_follows_subsets() -> None:
    from torch.utils.data import DataLoader, Subset, TensorDataset
    from torchvision import transforms

    compose = transforms.Compose(
        [transforms.Compose([transforms.ToTensor(), transforms.Normalize([0.1, 0.2], [0.3, 0.4])])]
    )
    wanted = {"mean": [0.1, 0.2], "std": [0.3, 0.4]}
    assert same(normalization_in(compose), wanted)
    assert normalization_in(transforms.ToTensor()) is None and normalization_in(None) is None

    dataset = TensorDataset(torch.zeros(4, 2))
    dataset.transform = compose  # as a torchvision dataset holds it
    plain = DataLoader(TensorDataset(torch.zeros(4, 2)))
    assert same(normalization_of([plain, DataLoader(Subset(Subset(dataset, [0, 1]), [0]))]), wanted)
    assert normalization_of([plain]) is None and normalization_of([]) is None


# --- text and detection runs: `xt export RUN`, then the file alone against `xt predict RUN` ----------------------
_ALONE = """
import json, sys, tempfile
from pathlib import Path
import numpy as np, onnxruntime as ort
model, texts, out = sys.argv[1:]
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
meta = session.get_modelmeta().custom_metadata_map
if "tokenizer" in meta:  # rebuild the tokenizer from the files the model carries
    from xt_training.runs import load_tokenizer
    folder = Path(tempfile.mkdtemp())
    for name, text in json.loads(meta["tokenizer"]).items():
        (folder / name).write_text(text)
    tokens = load_tokenizer(folder)(Path(texts).read_text().splitlines(), padding=True, return_tensors="pt")
    feed = {k: v.numpy() for k, v in tokens.items()}
    np.save(out, session.run(None, feed)[0])
else:  # detection: one image at a time; every output of every image
    images = np.load(texts)
    outputs = [session.run(None, {"input": image[None]}) for image in images]
    np.save(out, np.array([np.concatenate([o.ravel().astype("float64") for o in per]) for per in outputs], dtype=object), allow_pickle=True)
"""


def _alone(model: Path, inputs: Path, tmp_path: Path) -> object:
    """Run ``_ALONE`` in a fresh isolated Python (no PYTHONPATH, no xt-training but for rebuilding a tokenizer)."""
    import numpy as np

    script, out = tmp_path / "alone.py", tmp_path / "alone.npy"
    script.write_text(_ALONE)
    done = subprocess.run(
        [sys.executable, "-I", str(script), str(model), str(inputs), str(out)],
        capture_output=True, text=True, timeout=120, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-2000:]
    return np.load(out, allow_pickle=True)


def test_a_text_run_exports_with_its_tokenizer_and_any_text_length(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from conftest import xt

    xt("run", "--model", "text-gru", "--data", "synthetic-text", "--data-opt", "n_samples=120", "--epochs", "2",
       "-q", "--save-dir", "run", cwd=tmp_path)  # fmt: skip
    out = xt("export", "run", cwd=tmp_path).stdout
    assert "input  input_ids: int64 [batch, length]" in out and "padded by 3 zeros" in out, out
    # texts longer and shorter than any training batch, with words the tokenizer never saw
    texts = ["goal", "the oven and the flour and the sauce simmer " * 6, "zebra quasar goal match team", ""]
    (tmp_path / "texts.txt").write_text("\n".join(texts) + "\n")
    xt("predict", "run", "--input", "texts.txt", "-o", "pred.npy", cwd=tmp_path)
    expected = __import__("numpy").load(tmp_path / "pred.npy")
    alone = tmp_path / "elsewhere"
    alone.mkdir()
    (tmp_path / "run" / "model.onnx").rename(alone / "model.onnx")
    for name in ("tokenizer_config.json", "vocab.json"):  # the file alone: not the run's tokenizer files
        (tmp_path / "run" / name).unlink()
    got = _alone(alone / "model.onnx", tmp_path / "texts.txt", alone)
    assert got.shape == expected.shape == (len(texts), 2)
    torch.testing.assert_close(torch.from_numpy(got), torch.from_numpy(expected), atol=1e-5, rtol=1e-5)


@pytest.mark.slow
def test_a_detection_run_exports_one_image_at_a_time(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    import numpy as np
    from conftest import ENV, xt

    env = {**ENV, "PYTHONPATH": str(Path(__file__).parents[1] / "plugins" / "xt-vision")}
    # 64-pixel images, box_score_thresh=0 and a small step: every image keeps detections to compare
    xt("-p", "xt_vision.plugin", "run", "--model", "fasterrcnn-mobilenet", "--model-opt", "box_score_thresh=0",
       "--data", "synthetic-detection", "--data-opt", "n_samples=10", "--data-opt", "image_size=64",
       "--batch-size", "4", "--optimizer", "sgd", "--lr", "1e-4", "--epochs", "1", "-q", "--save-dir", "run",
       cwd=tmp_path, env=env)  # fmt: skip
    out = xt("-p", "xt_vision.plugin", "export", "run", cwd=tmp_path, env=env).stdout
    assert "input  input: float32 [1, 3, 64, 64]" in out and "TorchScript-based exporter" in out, out
    xt("-p", "xt_vision.plugin", "predict", "run", "-o", "boxes.pt", cwd=tmp_path, env=env)
    expected = torch.load(tmp_path / "boxes.pt", weights_only=True)
    data = registry.create_data("synthetic-detection", n_samples=10, image_size=64, batch_size=4)
    images = torch.stack([image for batch in data.loaders["test"] for image in batch[0]])
    np.save(tmp_path / "images.npy", images.numpy())
    got = _alone(tmp_path / "run" / "model.onnx", tmp_path / "images.npy", tmp_path)
    assert len(got) == len(expected) == len(images) > 0
    for per_image, boxes in zip(got, expected):
        assert len(boxes["scores"]) > 0
        want = torch.cat([boxes[k].double().ravel() for k in ("boxes", "labels", "scores")])
        torch.testing.assert_close(torch.from_numpy(per_image.astype("float64")), want, atol=1e-4, rtol=1e-4)
