"""Model export: every built-in model and xt-vision's resnet18 to ONNX, pt2 and TorchScript, each file read back
here with its own runtime; ``xt export`` on a real run, whose ONNX file alone (a fresh process with onnxruntime
and numpy only) predicts what the run's model predicts; the errors: data-dependent control flow, a batch size
fixed by the model's code, outputs that differ, an unwritable path, the missing ``onnx`` extra."""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from conftest import ENV, mlp, xt
from torch import nn

from xt_training import registry
from xt_training.cli import cli
from xt_training.errors import ConfigError
from xt_training.exporting import METADATA_FILE, ExportError, export, export_trained
from xt_training.preprocessing import raw_inputs
from xt_training.utils import functional as F

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
BATCH = 8


pytestmark = pytest.mark.usefixtures("fresh_registry")  # conftest


def resnet18() -> nn.Module:
    """The vision plugin's resnet18 (its code, imported from plugins/ as tests/test_plugins.py does)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.syspath_prepend(str(PLUGINS / "xt-vision"))
        from xt_vision.models import torchvision_model

        return torchvision_model("resnet18", num_classes=5)


MODELS = {  # name -> (model factory, example input shape without the batch)
    "mlp": (lambda: registry.create_model("mlp", in_features=20, num_classes=3), (20,)),
    "cnn": (lambda: registry.create_model("cnn"), (3, 32, 32)),
    "rnn": (lambda: registry.create_model("rnn", input_size=8, hidden_size=16), (12, 8)),
    "resnet18": (resnet18, (3, 32, 32)),
}


def json_or_str(value: str):
    """An ONNX metadata value: strings are stored as they are, other values as JSON."""
    try:
        return json.loads(value)
    except json.JSONDecodeError:
        return value


def read_back(path: Path, format: str):
    """The exported file as a function of a tensor, and its metadata, read with the format's own runtime."""
    if format == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name

        def run(x):
            return torch.from_numpy(session.run(None, {name: x.numpy()})[0])

        return run, {k: json_or_str(v) for k, v in session.get_modelmeta().custom_metadata_map.items()}
    extra = {METADATA_FILE: ""}
    if format == "pt2":
        module = torch.export.load(str(path), extra_files=extra).module()
    else:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)  # torch.jit is deprecated, yet C++ servers load it
            module = torch.jit.load(str(path), _extra_files=extra)
    return module, json.loads(extra[METADATA_FILE])


@pytest.mark.parametrize("format", ["onnx", "pt2", "torchscript"])
@pytest.mark.parametrize("name", list(MODELS))
def test_every_builtin_model_exports_and_verifies_at_two_batch_sizes(name, format, tmp_path):
    factory, shape = MODELS[name]
    torch.manual_seed(0)
    model = factory().eval()
    x = torch.randn(BATCH, *shape)
    path = tmp_path / f"{name}.{format}"
    result = export(model, x, path, format, metadata={"model": name, "classes": ["a", "b"]})

    assert result.path == path and result.size == path.stat().st_size > 0
    assert result.batch_sizes == [BATCH, 1] and 0 <= result.max_abs_diff <= 1e-4
    assert [s.shape for s in result.inputs] == [["batch", *shape]]
    assert len(result.outputs) == 1 and result.outputs[0].shape[0] == "batch"
    assert f"max abs difference {result.max_abs_diff:.3g}" in str(result) and str(path) in str(result)
    assert model.training is False

    # read back independently, at a batch size the export did not verify
    run, meta = read_back(path, format)
    other = torch.randn(3, *shape)
    with torch.no_grad():
        torch.testing.assert_close(run(other), model(other), atol=1e-4, rtol=1e-4)
    assert meta["model"] == name and meta["classes"] == ["a", "b"] and meta["xt_training_version"]


def test_static_batch_opset_and_dict_inputs_and_outputs(tmp_path):
    class TwoInputs(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(4, 3), nn.Linear(6, 3)

        def forward(self, x):
            return {"logits": self.a(x["features"]) + self.b(x["extra"]), "score": x["features"].sum(1)}

    torch.manual_seed(0)
    x = {"features": torch.randn(5, 4), "extra": torch.randn(5, 6)}
    result = export(TwoInputs(), x, tmp_path / "two.onnx", dynamic_batch=False, opset=18)
    assert result.opset == 18 and result.batch_sizes == [5]
    assert [(s.name, s.shape) for s in result.inputs] == [("features", [5, 4]), ("extra", [5, 6])]
    assert [(s.name, s.shape) for s in result.outputs] == [("logits", [5, 3]), ("score", [5])]

    dynamic = export(TwoInputs(), x, tmp_path / "two.pt2", "pt2")
    assert [s.shape for s in dynamic.inputs] == [["batch", 4], ["batch", 6]] and dynamic.batch_sizes == [5, 1]


def test_a_batch_of_one_is_doubled_for_capture(tmp_path):
    model = registry.create_model("mlp", in_features=20, num_classes=3)
    result = export(model, torch.randn(1, 20), tmp_path / "one.pt2", "pt2")
    assert result.batch_sizes == [2, 1] and result.inputs[0].shape == ["batch", 20]


# --- xt export on a real run -------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    """A one-epoch `xt run` of the CNN on synthetic images, and `xt export RUN_DIR` (ONNX, the default)."""
    root = tmp_path_factory.mktemp("export-run")
    xt(
        "run", "--model", "cnn", "--data", "synthetic-images", "--data-opt", "n_samples=120",
        "--batch-size", "16", "--epochs", "1", "-q", "--save-dir", "run", cwd=root,
    )  # fmt: skip
    out = xt("export", "run", cwd=root)
    (root / "export.txt").write_text(out.stdout + out.stderr)
    return root / "run"


def run_model_and_inputs(run_dir: Path, checkpoint: str = "best"):
    """``load_model(RUN_DIR)`` and the run's test inputs."""
    from xt_training.config import read_config
    from xt_training.runs import load_model

    data = read_config(run_dir)["data"]
    loader = registry.create_data(data["name"], **data["options"]).loaders["test"]
    return load_model(run_dir, checkpoint), torch.cat([xb for xb, _ in loader])


def test_xt_export_prints_the_file_its_shapes_and_the_difference(run_dir):
    report = (run_dir.parent / "export.txt").read_text()
    lines = report.splitlines()
    assert lines[0].startswith(f"exported onnx to run{os.sep}model.onnx (") and "opset" in lines[0]
    assert "  input  input: float32 [batch, 3, 32, 32]" in lines
    assert "  output output: float32 [batch, 10]" in lines
    assert "verified with ONNX Runtime at batch sizes 16 and 1: max abs difference" in report
    assert "Traceback" not in report and "warn" not in report.lower()


def test_the_onnx_file_alone_predicts_what_the_run_model_predicts(run_dir, tmp_path):
    model, x = run_model_and_inputs(run_dir)
    np.save(tmp_path / "x.npy", x.numpy())
    code = textwrap.dedent(
        """
        import json, sys
        import numpy as np
        import onnxruntime as ort

        session = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
        x = np.load(sys.argv[2])
        np.save(sys.argv[3], session.run(None, {session.get_inputs()[0].name: x})[0])
        print(json.dumps({
            "meta": session.get_modelmeta().custom_metadata_map,
            "imported": sorted(m for m in ("torch", "xt_training") if m in sys.modules),
        }))
        """
    )
    out = subprocess.run(
        [sys.executable, "-I", "-c", code, str(run_dir / "model.onnx"), str(tmp_path / "x.npy"), str(tmp_path / "y.npy")],
        capture_output=True, text=True, env=ENV, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    assert report["imported"] == []
    meta = report["meta"]
    assert (meta["model"], meta["data"], meta["checkpoint"], json.loads(meta["num_classes"])) == (
        "cnn", "synthetic-images", "best.pt", 10,
    )  # fmt: skip
    assert json.loads(meta["model_options"])["channels"] == [6, 16]

    onnx_logits = torch.from_numpy(np.load(tmp_path / "y.npy"))
    with torch.no_grad():
        logits = model(x)
    assert len(x) == 24
    torch.testing.assert_close(onnx_logits, logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(onnx_logits.argmax(1), logits.argmax(1))


def test_xt_export_pt2_and_torchscript_of_the_last_checkpoint(run_dir, tmp_path):
    out = CliRunner().invoke(
        cli, ["export", str(run_dir), "-o", str(tmp_path / "m.pt2"), "--checkpoint", "last"]
    )
    assert out.exit_code == 0, out.output
    assert out.output.startswith(f"exported pt2 to {tmp_path / 'm.pt2'}")  # the format follows -o
    module, meta = read_back(tmp_path / "m.pt2", "pt2")
    assert meta["checkpoint"] == "last.pt" and meta["model_options"]["num_classes"] == 10

    out = CliRunner().invoke(cli, ["export", str(run_dir), "--format", "torchscript", "--static-batch"])
    assert out.exit_code == 0, out.output
    assert (run_dir / "model.torchscript.pt").is_file() and "static batch" in out.output
    model, x = run_model_and_inputs(run_dir)
    scripted, _ = read_back(run_dir / "model.torchscript.pt", "torchscript")
    with torch.no_grad():
        torch.testing.assert_close(scripted(x[:16]), model(x[:16]))


def test_xt_export_bad_input_is_one_line(run_dir, tmp_path):
    def error(*args: str) -> str:
        out = CliRunner().invoke(cli, ["export", *args])
        assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
        return out.output

    blocker = tmp_path / "file"
    blocker.write_text("")
    assert "cannot write" in error(str(run_dir), "-o", str(blocker / "model.onnx"))
    assert "ends in .pt2, but --format is onnx" in error(str(run_dir), "-o", "x.pt2", "--format", "onnx")
    assert "opset applies to the onnx format" in error(str(run_dir), "--format", "pt2", "--opset", "17")
    assert "is not a run directory (no run.json, config.json or checkpoints/)" in error(str(tmp_path))
    ckpt = run_dir / "checkpoints" / "best.pt"
    assert "is a checkpoint itself" in error(str(ckpt), "--checkpoint", "last")
    outside = tmp_path / "weights.pt"
    outside.write_bytes(ckpt.read_bytes())
    assert "--model NAME [--model-opt KEY=VALUE] --input-shape" in error(str(outside))
    assert "not a shape of positive integers" in error(str(outside), "--input-shape", "1,x")


def test_a_checkpoint_outside_a_run_with_model_and_input_shape(run_dir, tmp_path):
    outside = tmp_path / "weights.pt"
    outside.write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    out = CliRunner().invoke(
        cli, ["export", str(outside), "--model", "cnn", "--model-opt", "num_classes=10", "--input-shape", "2,3,32,32",
              "--format", "pt2"],
    )  # fmt: skip
    assert out.exit_code == 0, out.output
    assert f"exported pt2 to {tmp_path / 'weights.pt2'}" in out.output and "batch sizes 2 and 1" in out.output


def export_error(*args: str) -> str:
    """The output of a failing `xt export`: one line, exit code 2."""
    out = CliRunner().invoke(cli, ["export", *args])
    assert out.exit_code == 2 and out.output.count("\n") == 1, out.output
    return out.output


def test_an_input_shape_the_model_does_not_take_names_both_shapes(run_dir, tmp_path):
    # a run records the shape it was trained on: the error names it
    message = export_error(str(run_dir), "--input-shape", "1,3,28,28", "-o", str(tmp_path / "m.pt2"))
    assert message == (
        "xt: error: --input-shape 1,3,28,28 is not the shape the run was trained on (N, 3, 32, 32); "
        "give --input-shape 1,3,32,32 or leave it out\n"
    )
    # a checkpoint alone: the model's first layer says what it takes, or that the size is what differs
    outside = tmp_path / "weights.pt"
    outside.write_bytes((run_dir / "checkpoints" / "best.pt").read_bytes())
    args = (
        "--model",
        "cnn",
        "--model-opt",
        "num_classes=10",
        "--format",
        "pt2",
        "-o",
        str(tmp_path / "m.pt2"),
    )
    message = export_error(str(outside), *args, "--input-shape", "1,20")
    assert "the model fails on the example input Tensor(1, 20) float32 (" in message
    assert "the model expects (N, 3, H, W) inputs with 3 channels (its first layer is Conv2d)" in message
    message = export_error(str(outside), *args, "--input-shape", "1,3,28,28")
    assert (
        "the inputs have the 3 channels its first layer (Conv2d) takes, so their size, 28x28, is what"
        in message
    )
    assert not (tmp_path / "m.pt2").exists()


def test_a_checkpoint_inside_a_run_with_the_runs_own_model_name(run_dir, tmp_path):
    ckpt = str(run_dir / "checkpoints" / "best.pt")
    out = CliRunner().invoke(
        cli, ["export", ckpt, "--model", "cnn", "--format", "pt2", "-o", str(tmp_path / "m.pt2")]
    )
    assert out.exit_code == 0, out.output  # the run's config.json has the options: no --model-opt needed
    assert read_back(tmp_path / "m.pt2", "pt2")[1]["model_options"]["num_classes"] == 10
    for other in (["--model", "mlp"], ["--model", "cnn", "--model-opt", "num_classes=3"]):
        message = export_error(ckpt, *other)
        assert f"'{run_dir}' is a run directory: it records its model (cnn)" in message


def test_checkpoint_takes_best_last_or_a_file(run_dir, tmp_path):
    last = run_dir / "checkpoints" / "last.pt"
    out = CliRunner().invoke(
        cli,
        ["export", str(run_dir), "--checkpoint", str(last), "--format", "pt2", "-o", str(tmp_path / "m.pt2")],
    )
    assert out.exit_code == 0, out.output
    assert read_back(tmp_path / "m.pt2", "pt2")[1]["checkpoint"] == "last.pt"
    assert (
        "checkpoint 'lats' does not exist; did you mean 'last'? (best, last, or a checkpoint file)"
        in export_error(str(run_dir), "--checkpoint", "lats")
    )


# --- errors --------------------------------------------------------------------------------------------------
BRANCHY = '''
import torch
from torch import nn
from xt_training import hookimpl


class Branchy(nn.Module):
    """Data-dependent control flow: which branch runs depends on the values."""

    def __init__(self, *, in_features: int = 4):
        super().__init__()
        self.linear = nn.Linear(in_features, 2)

    def forward(self, x):
        y = self.linear(x)
        if y.sum() > 0:
            return y * 2
        return y


@hookimpl
def register_models(register):
    register("branchy", Branchy)
'''


def test_data_dependent_control_flow_is_a_one_line_error_through_the_cli(tmp_path):
    (tmp_path / "branchy.py").write_text(BRANCHY)
    sys.path.insert(0, str(tmp_path))
    try:
        from branchy import Branchy
    finally:
        sys.path.remove(str(tmp_path))
    torch.save(Branchy().state_dict(), tmp_path / "branchy.pt")
    env = {**ENV, "PYTHONPATH": str(tmp_path)}
    args = ("-p", "branchy", "export", "branchy.pt", "--model", "branchy", "--input-shape", "4,4")
    out = xt(*args, cwd=tmp_path, env=env, code=2)
    assert out.stdout == "" and out.stderr.count("\n") == 1, out.stderr
    assert out.stderr.startswith(
        "xt: error: cannot export the model to onnx: its control flow depends on tensor values; "
        "GuardOnDataDependentSymNode: Could not guard on data-dependent expression"
    )
    assert "(at branchy.py:16 in forward: `if y.sum() > 0:`); try --format torchscript" in out.stderr
    assert not (tmp_path / "branchy.onnx").exists()

    # the suggestion works: torch.jit.script keeps the branch (checked on rows that take each branch)
    model = Branchy()
    result = export(model, torch.randn(4, 4), tmp_path / "branchy.torchscript.pt", "torchscript")
    assert result.method == "torch.jit.script"
    scripted, _ = read_back(tmp_path / "branchy.torchscript.pt", "torchscript")
    branches = set()
    with torch.no_grad():
        for row in 3 * torch.randn(20, 1, 4, generator=torch.Generator().manual_seed(0)):
            branches.add(bool(model.linear(row).sum() > 0))
            torch.testing.assert_close(scripted(row), model(row))
    assert branches == {True, False}


class FixedBatch(nn.Module):
    def __init__(self):
        super().__init__()
        self.linear = nn.Linear(4, 2)

    def forward(self, x):
        return self.linear(x).reshape(4, 2)


@pytest.mark.parametrize(
    "format, message",
    [
        ("pt2", "cannot export the model to pt2: its code fixes the batch size to 4; UserError: Constraints"),
        (
            "onnx",
            "cannot export the model to onnx with a dynamic batch: its code fixes the batch size of input",
        ),
        ("torchscript", r"the model itself fails on a batch of 1 \(RuntimeError: shape '\[4, 2\]'"),
    ],
)
def test_a_batch_size_fixed_by_the_model_suggests_static_batch(format, message, tmp_path):
    path = tmp_path / f"fixed.{format}"
    with pytest.raises(ExportError, match=message) as caught:
        export(FixedBatch(), torch.randn(4, 4), path, format)
    assert "--static-batch (dynamic_batch=False)" in str(caught.value) and not path.exists()
    assert export(FixedBatch(), torch.randn(4, 4), path, format, dynamic_batch=False).batch_sizes == [4]


def test_an_output_that_differs_is_named_and_the_file_removed(tmp_path):
    class Counting(nn.Module):
        """Python state the exporter freezes at capture: each eager call scales by the number of calls."""

        def __init__(self):
            super().__init__()
            self.linear, self.calls = nn.Linear(4, 2), 0

        def forward(self, x):
            self.calls += 1
            return {"logits": self.linear(x) * self.calls, "constant": x[:, :1] * 0}

    path = tmp_path / "counting.pt2"
    with pytest.raises(
        ExportError, match=r"output 'logits' of the exported model differs from the eager model's by up to"
    ) as caught:
        export(Counting(), torch.randn(4, 4), path, "pt2")
    assert f"'{path}' was removed" in str(caught.value) and not path.exists()
    unverified = export(Counting(), torch.randn(4, 4), path, "pt2", verify=False)
    assert unverified.max_abs_diff is None and "not verified" in str(unverified) and path.exists()


def test_bad_arguments(tmp_path):
    model, x = registry.create_model("mlp", in_features=20), torch.randn(2, 20)
    (tmp_path / "file").write_text("")
    # the Python API's message names no CLI option (-o FILE)
    with pytest.raises(ConfigError, match=r"cannot write '.*model.onnx' \(.*\); choose another output path$"):
        export(model, x, tmp_path / "file" / "model.onnx")
    with pytest.raises(ConfigError, match="is a directory; give a file name"):
        export(model, x, tmp_path)
    with pytest.raises(
        ConfigError, match="unknown export format 'tflite'; choose one of: onnx, pt2, torchscript"
    ):
        export(model, x, tmp_path / "m.tflite", "tflite")
    with pytest.raises(ConfigError, match="example input is str; export needs a tensor"):
        export(model, "pixels", tmp_path / "m.pt2", "pt2")
    with pytest.raises(ConfigError, match="metadata 'fn' is a function; metadata values must be JSON data"):
        export(model, x, tmp_path / "m.pt2", "pt2", metadata={"fn": lambda: 0})


def test_without_the_onnx_extra_the_error_names_it_and_other_formats_work(run_dir, tmp_path):
    code = textwrap.dedent(
        """
        import sys
        sys.modules["onnxruntime"] = None  # as if not installed: importing it raises ImportError
        from xt_training.cli import main
        for args in (["export", sys.argv[1]], ["export", sys.argv[1], "--format", "pt2", "-o", sys.argv[2]]):
            try:
                main(args)
            except SystemExit as e:
                print("exit", e.code)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", code, str(run_dir), str(tmp_path / "m.pt2")],
        capture_output=True, text=True, env=ENV, timeout=300,
    )  # fmt: skip
    assert out.stderr == (
        "xt: error: ONNX export needs onnxruntime, which is not installed: pip install onnxruntime\n"
    )
    assert out.stdout.startswith("exit 2\nexported pt2 to") and out.stdout.endswith("exit 0\n")


# --- after training ----------------------------------------------------------------------------------------------
def test_export_trained_takes_the_best_weights_classes_and_normalisation(tmp_path):
    from test_registry import write_image_folder

    from xt_training.checkpoint import save_checkpoint

    data = registry.create_data(
        "image-folder", root=str(write_image_folder(tmp_path / "images")), image_size=16, batch_size=4
    )
    model = registry.create_model("cnn", image_size=16, num_classes=2, channels=(4,), hidden=(8,))
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    save_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", model, epoch=3)
    final = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        model.classifier[-1].bias.add_(5.0)  # "training" went on after the best epoch
    normalization = data.info["normalization"]
    result = export_trained(
        tmp_path / "run", model, data.loaders["val"], "pt2", quiet=True, normalization=normalization
    )

    assert (
        result.path == tmp_path / "run" / "model.pt2" and model.classifier[-1].bias[0] > 4
    )  # caller's model kept
    exported, meta = read_back(result.path, "pt2")
    best = registry.create_model("cnn", image_size=16, num_classes=2, channels=(4,), hidden=(8,))
    best.load_state_dict(final)
    x = next(iter(data.loaders["val"]))[0]
    # the exported model normalises itself: it takes the raw pixels the data normalised
    torch.testing.assert_close(exported(raw_inputs(x, normalization)), best.eval()(x), atol=1e-5, rtol=1e-4)
    assert meta["checkpoint"] == "best.pt" and meta["epoch"] == 3 and meta["model"] == "CNN"
    assert meta["normalization"] == {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


@pytest.mark.skipif(
    "export" not in inspect.signature(F.train).parameters, reason="F.train has no export argument yet"
)
def test_train_with_export_leaves_a_verified_onnx_file(tabular, tmp_path, capsys):
    train_loader, val_loader, _, _ = tabular
    with pytest.raises(ConfigError, match="unknown export format 'tflite'"):
        F.train(tmp_path / "bad", train_loader, mlp(), torch.optim.SGD(mlp().parameters(), 0.1), 1,
                nn.CrossEntropyLoss(), export="tflite", quiet=True)  # fmt: skip
    assert not (tmp_path / "bad" / "checkpoints").exists()  # refused before training

    model = mlp()
    F.train(tmp_path / "run", train_loader, model, torch.optim.Adam(model.parameters(), 0.01), 2,
            nn.CrossEntropyLoss(), val_loader=val_loader, export="onnx")  # fmt: skip
    assert "verified with ONNX Runtime at batch sizes 32 and 1" in capsys.readouterr().out
    run, meta = read_back(tmp_path / "run" / "model.onnx", "onnx")
    best = mlp()
    from xt_training.checkpoint import load_checkpoint

    load_checkpoint(tmp_path / "run" / "checkpoints" / "best.pt", best)
    x = next(iter(val_loader))[0]
    with torch.no_grad():
        torch.testing.assert_close(run(x), best(x), atol=1e-4, rtol=1e-4)
    assert meta["checkpoint"] == "best.pt"
