"""Predictions: F.predict (in memory and streamed to .npy/.csv/.pt), runner(return_preds=True), F.test's
results.pt, load_model, and the ``xt predict`` command on real run directories, labelled and unlabelled inputs."""

from __future__ import annotations

import csv
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import make_classification, mlp, xt
from test_registry import write_csv, write_image_folder
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from xt_training import Runner, load_checkpoint, metrics, registry
from xt_training.errors import BatchError, ConfigError
from xt_training.runs import load_model
from xt_training.utils import functional as F


@pytest.fixture
def data():
    x, y = make_classification(n=100)
    return x, y


class Rows(Dataset):
    """A map-style dataset that is not a TensorDataset: the DataLoader's own batching (no fast path)."""

    def __init__(self, x: torch.Tensor):
        self.x = x

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.x[i]


# --- F.predict ---------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "make_loader",
    [
        lambda x, y: DataLoader(TensorDataset(x), batch_size=16),  # [x] batches
        lambda x, y: DataLoader(TensorDataset(x, y), batch_size=16),  # (x, y): y ignored
        lambda x, y: DataLoader(Rows(x), batch_size=16),  # bare x batches, no fast path
    ],
    ids=["inputs-only", "pairs", "plain-dataset"],
)
@pytest.mark.parametrize("fast_path", [True, False])
def test_predictions_equal_a_hand_written_loop_in_loader_order(data, make_loader, fast_path):
    x, y = data
    model = mlp()
    model.train()
    with torch.no_grad():
        expected = torch.cat([model.eval()(x[i : i + 16]) for i in range(0, len(x), 16)])
    model.train()
    predictions = F.predict(model, make_loader(x, y), fast_path=fast_path)
    assert torch.equal(predictions, expected)
    assert model.training  # the mode is restored
    predictions[0] = 0  # an ordinary tensor, not an inference tensor


def test_predict_keeps_eval_mode_runs_without_grad_and_loads_a_checkpoint(data, tmp_path):
    x, y = data
    trained = mlp()
    F.train(tmp_path, DataLoader(TensorDataset(x, y), batch_size=32), trained,
            torch.optim.SGD(trained.parameters(), lr=0.5), 2, nn.CrossEntropyLoss(), quiet=True)  # fmt: skip
    fresh = mlp().eval()
    seen = []
    fresh.register_forward_hook(lambda m, i, o: seen.append((torch.is_inference_mode_enabled(), m.training)))
    predictions = F.predict(fresh, DataLoader(x, batch_size=50), tmp_path / "checkpoints" / "last.pt")
    assert seen == [(True, False), (True, False)] and not fresh.training
    assert torch.equal(predictions, trained.eval()(x).detach())


class TwoHeads(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = mlp()

    def forward(self, x):
        logits = self.body(x)
        return {"logits": logits, "rank": (logits.argsort(1), [f"row{len(x)}"] * len(x))}


def test_nested_outputs_are_joined_per_field_and_ragged_tensors_become_per_example_lists(data):
    x, _ = data
    model = TwoHeads()
    out = F.predict(model, DataLoader(x, batch_size=40))
    assert torch.equal(out["logits"], model.body(x).detach())
    assert out["rank"][0].shape == (100, 3) and out["rank"][1] == ["row40"] * 80 + ["row20"] * 20
    padded = [torch.ones(2, 3), torch.ones(3, 5)]  # per-batch padding: widths differ
    ragged = F.predict(nn.Identity(), padded)
    assert [tuple(t.shape) for t in ragged] == [(3,), (3,), (5,), (5,), (5,)]


def test_runner_return_preds_keeps_nested_outputs_in_loader_order(data):
    x, y = data
    model = TwoHeads().eval()
    runner = Runner(model, quiet=True, forward_fn=lambda m, b: (m(b[0]), b[1]))
    y_pred, labels = runner(DataLoader(TensorDataset(x, y), batch_size=30), return_preds=True)
    # the model on the same batches of 30: a batch of another size may differ in the last bit (AVX-512)
    expected = torch.cat([model.body(x[i : i + 30]) for i in range(0, len(x), 30)]).detach()
    assert torch.equal(y_pred["logits"], expected) and torch.equal(labels, y)
    detections = Runner(
        nn.Identity().eval(), quiet=True, forward_fn=lambda m, b: ([{"n": t} for t in b[0]], b[1])
    )
    boxes, _ = detections(DataLoader(TensorDataset(x[:10], y[:10]), batch_size=4), return_preds=True)
    assert [float(d["n"][0]) for d in boxes] == x[:10, 0].tolist()  # a list of per-example dicts


def test_results_pt_round_trips_with_weights_only(data, tmp_path):
    x, y = data
    model = mlp()
    loaders = {"test": DataLoader(TensorDataset(x[:60], y[:60]), batch_size=16),
               "other": DataLoader(TensorDataset(x[60:], y[60:]), batch_size=16)}  # fmt: skip
    results = F.test(
        loaders, model, nn.CrossEntropyLoss(), {"acc": metrics.Accuracy()}, save_dir=tmp_path, quiet=True
    )
    saved = torch.load(tmp_path / "results.pt", weights_only=True)
    assert set(saved) == {"test", "other"}
    for name, loader in loaders.items():
        assert torch.equal(saved[name]["preds"], F.predict(model, loader))
        assert torch.equal(saved[name]["labels"], loader.dataset.tensors[1])
        assert (
            results[name]["acc"]
            == (saved[name]["preds"].argmax(1) == saved[name]["labels"]).float().mean().item()
        )


def temporaries(out: Path) -> list[Path]:
    """The temporary files F.predict streams ``out`` into before renaming one of them to ``out``."""
    return sorted(out.parent.glob(f".{out.name}.*.tmp"))


class Watched:
    """Batches of x; before each batch after the first, records the size of the file being streamed."""

    def __init__(self, x: torch.Tensor, out: Path):
        self.x, self.out, self.sizes = x, out, []

    def __iter__(self):
        for i in range(0, len(self.x), 10):
            if i:
                (tmp,) = temporaries(self.out)
                self.sizes.append(tmp.stat().st_size)
            yield self.x[i : i + 10]


@pytest.mark.parametrize("suffix", [".npy", ".csv"])
def test_out_streams_npy_and_csv_batch_by_batch(data, tmp_path, suffix):
    x, _ = data
    model = mlp()
    expected = F.predict(model, DataLoader(x, batch_size=10))
    out = tmp_path / f"predictions{suffix}"
    watched = Watched(x, out)
    assert F.predict(model, watched, out=out) == out
    assert watched.sizes == sorted(set(watched.sizes)) and len(watched.sizes) == 9  # grew with every batch
    assert not temporaries(out)
    if suffix == ".npy":
        assert np.array_equal(np.load(out), expected.numpy())
        assert np.load(out, mmap_mode="r").shape == (100, 3)
    else:
        with out.open(newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["output_0", "output_1", "output_2"] and len(rows) == 101
        assert torch.equal(torch.tensor([[float(v) for v in r] for r in rows[1:]]), expected)


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".pt"])
def test_two_predictions_into_one_file_at_once_both_succeed_and_leave_a_whole_file(data, tmp_path, suffix):
    """Each F.predict streams into a temporary file of its own: the one that renames last wins, whole."""
    x, _ = data
    models = [mlp(), mlp()]
    expected = [F.predict(m, DataLoader(x, batch_size=10)) for m in models]
    out = tmp_path / f"p{suffix}"
    both_writing = threading.Barrier(2, timeout=30)

    def batches():  # both calls have written their first batch before either goes on
        yield x[:10]
        both_writing.wait()
        for i in range(10, len(x), 10):
            yield x[i : i + 10]

    with ThreadPoolExecutor(2) as pool:
        done = [pool.submit(F.predict, m, batches(), out=out) for m in models]
        assert [d.result() for d in done] == [out, out]
    if suffix == ".npy":
        written = torch.from_numpy(np.load(out))
    elif suffix == ".csv":
        with out.open(newline="") as f:
            written = torch.tensor([[float(v) for v in row] for row in list(csv.reader(f))[1:]])
    else:
        written = torch.load(out, weights_only=True)
    assert any(torch.equal(written, e) for e in expected), "the file is one call's whole output"
    assert not temporaries(out)


def test_out_pt_holds_any_nesting_and_a_failed_run_leaves_no_file(data, tmp_path):
    x, _ = data
    model = TwoHeads()
    F.predict(model, DataLoader(x, batch_size=40), out=tmp_path / "p.pt")
    saved = torch.load(tmp_path / "p.pt", weights_only=True)
    assert torch.equal(saved["logits"], model.body(x).detach())

    def broken():
        yield x[:10]
        raise RuntimeError("disk gone")

    for name in ("q.npy", "q.csv", "q.pt"):
        with pytest.raises(RuntimeError, match="disk gone"):
            F.predict(mlp(), broken(), out=tmp_path / name)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.pt"]
    with pytest.raises(ConfigError, match=r"must end in \.npy, \.csv, \.pt"):
        F.predict(mlp(), [x], out=tmp_path / "p.parquet")
    with pytest.raises(ConfigError, match=r"'\.npy' holds one array, but the model returned \{'logits'"):
        F.predict(model, [x], out=tmp_path / "n.npy")
    with pytest.raises(ConfigError, match="a CSV row holds up to one value per column"):
        F.predict(nn.Identity(), [torch.zeros(2, 3, 4)], out=tmp_path / "n.csv")


def test_inputs_of_another_shape_name_both_shapes():
    model = registry.create_model("mlp", in_features=20, num_classes=3)
    with pytest.raises(BatchError) as e:
        F.predict(model, DataLoader(torch.randn(10, 5), batch_size=4))
    assert "inputs Tensor(4, 5) float32" in str(
        e.value
    ) and "the model expects 20 features per example" in str(e.value)
    cnn = registry.create_model("cnn", in_channels=3)
    with pytest.raises(
        BatchError, match=r"inputs Tensor\(2, 1, 32, 32\).*expects \(N, 3, H, W\) inputs with 3 channels"
    ):
        F.predict(cnn, [torch.randn(2, 1, 32, 32)])
    with pytest.raises(
        BatchError, match=r"Tensor\(2, 3, 28, 28\).*have the 3 channels .* so their size, 28x28,"
    ):
        F.predict(cnn, [torch.randn(2, 3, 28, 28)])
    with pytest.raises(BatchError, match=r"F.predict takes x, \[x\] or \(x, y\) batches"):
        F.predict(model, [(torch.randn(2, 20), 1, 2)])


# --- runs of the CLI: load_model and xt predict --------------------------------------------------------------------
@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """An `xt run` of an MLP on synthetic-classification with val and test splits."""
    root = tmp_path_factory.mktemp("runs")
    xt("run", "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=600",
       "--metric", "accuracy", "--epochs", "3", "--lr", "0.01", "-q", "--save-dir", "run", cwd=root)  # fmt: skip
    return root / "run"


def test_load_model_reproduces_the_runs_test_metric_exactly(run):
    history = json.loads((run / "history.json").read_text())
    best = min(history, key=lambda row: row["val/loss"])
    data = registry.create_data("synthetic-classification", n_samples=600)
    for checkpoint, row in (("best", best), ("last", history[-1])):
        model = load_model(run, checkpoint)
        assert not model.training
        results = F.test(
            {"test": data.loaders["test"]}, model, eval_metrics={"accuracy": metrics.Accuracy()}, quiet=True
        )
        assert results["test"]["accuracy"] == row["test/accuracy"]
        assert results["test"]["accuracy"] > 0.6  # 3 classes
    model = load_model(run, run / "checkpoints" / "last.pt")
    reference = registry.create_model("mlp", in_features=20, num_classes=3)
    load_checkpoint(run / "checkpoints" / "last.pt", reference)
    assert all(
        torch.equal(a, b) for a, b in zip(model.state_dict().values(), reference.state_dict().values())
    )


def test_xt_predict_writes_classes_and_probabilities_of_the_test_split(run):
    xt("predict", str(run), "-o", str(run / "p.csv"), cwd=run)
    with (run / "p.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    data = registry.create_data("synthetic-classification", n_samples=600)
    logits = F.predict(load_model(run), data.loaders["test"])
    assert list(rows[0]) == ["prediction", "p_0", "p_1", "p_2"] and len(rows) == len(logits) == 120
    assert [int(r["prediction"]) for r in rows] == logits.argmax(1).tolist()
    probabilities = torch.tensor([[float(r[f"p_{c}"]) for c in range(3)] for r in rows])
    assert torch.allclose(probabilities, logits.softmax(1), atol=1e-6)
    xt("predict", str(run), "--split", "val", "--checkpoint", "last", "-o", "v.npy", cwd=run)
    assert np.load(run / "v.npy").shape == (120, 3)
    xt(
        "predict",
        str(run),
        "--data-opt",
        "n_samples=50",
        "--data-opt",
        "test_fraction=0.5",
        "-o",
        "t.pt",
        cwd=run,
    )
    assert torch.load(run / "t.pt", weights_only=True).shape == (25, 3)


def test_xt_predict_errors(run, tmp_path):
    (tmp_path / "untrained").mkdir()
    (tmp_path / "untrained" / "config.json").write_text((run / "config.json").read_text())
    cases = [
        (["predict", "untrained", "-o", "p.csv"], "run directory 'untrained' has no checkpoints; train it first"),
        (["predict", str(run), "--split", "nope", "-o", "p.csv"],
         "data 'synthetic-classification' has no split 'nope'; splits: train, val, test"),
        (["predict", str(run), "--data-opt", "n_features=5", "-o", "p.csv"],
         "gives inputs with in_features=5, but the model of '" + str(run) + "' was trained on in_features=20"),
        (["predict", str(run), "--input", "untrained", "-o", "p.csv"],
         "data 'synthetic-classification' cannot read unlabelled inputs (it has no predict_path option)"),
        (["predict", str(run), "-o", "p.txt"], "the file must end in .npy, .csv, .pt"),
    ]  # fmt: skip
    for args, message in cases:
        err = xt(*args, cwd=tmp_path, code=2).stderr
        assert err.startswith("xt: error: ") and message in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "p.csv").exists()


def test_xt_predict_and_xt_test_errors_of_output_paths_and_checkpoints(run, tmp_path):
    (tmp_path / "file").write_text("")
    (tmp_path / "settings.py").write_text("epochs = 3\n")
    (tmp_path / "empty.pt").write_bytes(b"")
    not_a_checkpoint = "is not a PyTorch checkpoint (it starts with b'epochs = 3\\n', not the zip archive"
    cases = [
        (["predict", str(run), "-o", "file/p.csv"], f"cannot write '{Path('file', 'p.csv')}' ("),  # a file's folder
        (["predict", str(run), "-o", "p.csv", "--checkpoint", "lats"],
         "checkpoint 'lats' does not exist; did you mean 'last'? (best, last, or a checkpoint file)"),
        (["predict", str(run), "-o", "p.csv", "--checkpoint", "settings.py"], "'settings.py' " + not_a_checkpoint),
        (["predict", str(run), "-o", "p.csv", "--checkpoint", "empty.pt"],
         "'empty.pt' is not a PyTorch checkpoint (it is empty"),
        (["test", str(run), "--checkpoint", "settings.py"], "'settings.py' " + not_a_checkpoint),
    ]  # fmt: skip
    for args, message in cases:
        err = xt(*args, cwd=tmp_path, code=2).stderr
        assert err.startswith("xt: error: ") and message in err and len(err.strip().splitlines()) == 1, err


def test_xt_predict_on_a_text_file_gives_one_row_per_line_blank_lines_included(tmp_path):
    xt("run", "--model", "text-gru", "--data", "synthetic-text", "--data-opt", "n_samples=200", "--epochs", "1",
       "-q", "--save-dir", "run", cwd=tmp_path)  # fmt: skip
    (tmp_path / "texts.txt").write_text("the coach and the referee\n\nflour and spice for the dessert\n")
    (tmp_path / "no-blank.txt").write_text("the coach and the referee\nflour and spice for the dessert\n")
    for name in ("texts", "no-blank"):
        xt("predict", "run", "--input", f"{name}.txt", "-o", f"{name}.csv", cwd=tmp_path)
    rows = (tmp_path / "texts.csv").read_text().splitlines()[1:]
    assert len(rows) == 3  # row i is line i: the CSV has no input column to match them by
    assert [rows[0], rows[2]] == (tmp_path / "no-blank.csv").read_text().splitlines()[1:]


def test_xt_predict_on_unlabelled_csv_rows_uses_the_training_standardization(tmp_path):
    write_csv(tmp_path / "table.csv", rows=200)
    xt("run", "--model", "mlp", "--data", "csv", "--data-opt", "path=table.csv", "--epochs", "3", "--lr", "0.01",
       "-q", "--save-dir", "run", cwd=tmp_path)  # fmt: skip
    # the label is "yes" when a + b > 0; rows without the label column, in the training file's column order
    (tmp_path / "new.csv").write_text("a,b,c\n3,2,0.1\n-2,-3,0.5\n2.5,1,-1\n")
    xt("predict", "run", "--input", "new.csv", "-o", "p.csv", cwd=tmp_path)
    with (tmp_path / "p.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["prediction", "p_no", "p_yes"]
    assert [r["prediction"] for r in rows] == ["yes", "no", "yes"]


def test_xt_predict_on_a_folder_of_images_without_class_folders(tmp_path):
    write_image_folder(tmp_path / "images", per_class=6, size=(12, 12))
    xt("run", "--model", "mlp", "--data", "image-folder", "--data-opt", "root=images", "--data-opt", "image_size=8",
       "--epochs", "1", "-q", "--save-dir", "run", cwd=tmp_path)  # fmt: skip
    (tmp_path / "new").mkdir()
    for name in ("b.png", "a.png", "c.png"):
        (tmp_path / "new" / name).write_bytes((tmp_path / "images" / "cat" / "0.png").read_bytes())
    (tmp_path / "new" / "notes.txt").write_text("not an image")
    xt("predict", "run", "--input", "new", "-o", "p.csv", cwd=tmp_path)
    with (tmp_path / "p.csv").open(newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["path", "prediction", "p_cat", "p_dog"] and len(rows) == 4
    # each image's path beside its prediction, in the order of the file names
    assert [r[0] for r in rows[1:]] == [str(Path("new", name)) for name in ("a.png", "b.png", "c.png")]
    assert len({tuple(r[1:]) for r in rows[1:]}) == 1  # the same image three times: the same prediction
