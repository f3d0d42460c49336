"""CSV tables as they come: missing values, an id column, text columns, a number to predict.

The encoding is checked against scikit-learn's (``SimpleImputer``, ``OneHotEncoder``); the user's way through
it against the real ``xt`` command: the one-line errors that name the options, then a regression run,
``xt predict`` on rows whose columns come in another order (with more of them) carrying the ids, and the
exported ONNX file, fed raw rows in a fresh Python as its metadata says, giving what ``xt predict`` gives.
"""

from __future__ import annotations

import csv
import json
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import xt

from xt_training import registry
from xt_training.errors import ConfigError
from xt_training.preprocessing import Normalize

CITIES = {"Paris": 10.0, "Rome": 5.0, "Oslo": 0.0}


def write_houses(path: Path, rows: int = 80) -> Path:
    """An id, an age with ``NA`` cells, a city (text), an income with empty cells, and a price with decimals."""
    rng = random.Random(0)
    lines = ["house,age,city,income,price"]
    for i in range(rows):
        age, city, income = rng.randint(20, 70), rng.choice(sorted(CITIES)), round(rng.uniform(20, 90), 1)
        price = 0.05 * age + CITIES[city] / 10 + 0.02 * income + rng.gauss(0, 0.05)
        lines.append(f"h{i},{'NA' if i % 9 == 4 else age},{city},{'' if i % 11 == 3 else income},{price:.3f}")
    path.write_text("\n".join(lines) + "\n")
    return path


def houses(tmp_path: Path, **options) -> registry.Data:
    path = write_houses(tmp_path / "houses.csv")
    return registry.create_data("csv", path=str(path), label="price", batch_size=8, **options)


# --- the data set in Python -----------------------------------------------------------------------------------------
def test_missing_values_text_and_ids_are_errors_that_name_the_options(tmp_path):
    with pytest.raises(ConfigError) as e:
        houses(tmp_path)
    message = str(e.value)
    assert "line 2, column 'house': 'h0' is not a number (and 1 more column of text)" in message
    assert "--data-opt id=house" in message and "--data-opt one_hot=city" in message
    assert "--data-opt ignore=city" in message and len(message.splitlines()) == 1
    with pytest.raises(
        ConfigError, match=r"line 5, column 'income': a missing value \(''\); .*na=drop\|mean\|median"
    ):
        houses(tmp_path, id="house", one_hot="city")
    with pytest.raises(ConfigError, match=r"line 3: the label 'price' is missing \(''\); .*na=drop"):
        (tmp_path / "no-label.csv").write_text("a,price\n1,2.5\n2,\n3,1.5\n")
        registry.create_data("csv", path=str(tmp_path / "no-label.csv"), label="price", na="mean")
    with pytest.raises(ConfigError, match="na must be one of error, drop, mean, median, not 'zero'"):
        houses(tmp_path, id="house", one_hot="city", na="zero")
    with pytest.raises(ConfigError, match=r"has no column 'town'; columns: house, age, city, income, price"):
        houses(tmp_path, id="house", one_hot="town")
    with pytest.raises(ConfigError, match="column 'house' is the id; it cannot be a feature too"):
        houses(tmp_path, id="house", features="house,age")


def test_a_float_label_is_a_regression_and_the_inference_is_said(tmp_path):
    data = houses(tmp_path, id="house", one_hot="city", na="mean")
    assert data.loss == "mse" and data.metrics == ["mse", "mae", "r2"]
    assert data.info["num_classes"] == 1 and "classes" not in data.info
    assert data.info["table"]["task"] == "regression"
    (note,) = data.notes
    assert "label 'price' holds numbers with decimals" in note and "task=classification" in note
    x, y = next(iter(data.loaders["train"]))
    assert y.dtype == torch.float32 and y.shape == (8, 1) and x.shape == (8, 5)
    assert houses(tmp_path, id="house", one_hot="city", na="mean", task="regression").notes == []


def test_integer_and_text_labels_are_classes_and_task_regression_overrides(tmp_path):
    lines = ["x,score,kind"] + [f"{i * 0.1:.1f},{i % 263},{'ab'[i % 2]}" for i in range(300)]
    (tmp_path / "t.csv").write_text("\n".join(lines) + "\n")
    scores = registry.create_data("csv", path=str(tmp_path / "t.csv"), label="score", ignore="kind")
    assert scores.info["num_classes"] == 263 and scores.loss == "cross-entropy"
    assert scores.notes == [
        "csv: label 'score' holds 263 distinct integers: classification into 263 classes; "
        "--data-opt task=regression to predict the number"
    ]
    number = registry.create_data(
        "csv", path=str(tmp_path / "t.csv"), label="score", ignore="kind", task="regression"
    )
    assert number.loss == "mse" and number.info["num_classes"] == 1 and number.notes == []
    kinds = registry.create_data("csv", path=str(tmp_path / "t.csv"), label="kind")
    assert kinds.info["classes"] == ["a", "b"] and "2 distinct values" in kinds.notes[0]
    with pytest.raises(
        ConfigError, match=r"label 'kind' is 'a', not a number; task=regression needs numbers"
    ):
        registry.create_data("csv", path=str(tmp_path / "t.csv"), label="kind", task="regression")


@pytest.mark.parametrize("na", ["mean", "median"])
def test_the_encoding_equals_scikit_learns_imputer_and_one_hot_encoder(tmp_path, na):
    from sklearn.impute import SimpleImputer
    from sklearn.preprocessing import OneHotEncoder

    data = houses(tmp_path, id="house", one_hot="city", na=na, standardize=False)
    table = data.info["table"]
    assert table["columns"] == ["age", "city", "income"]
    assert table["inputs"] == ["age", "city=Oslo", "city=Paris", "city=Rome", "income"]
    assert table["one_hot"] == {"city": ["Oslo", "Paris", "Rome"]} and table["id"] == "house"
    # the training split's rows, by their ids, read again from the file
    with (tmp_path / "houses.csv").open(newline="") as f:
        rows = {r["house"]: r for r in csv.DictReader(f)}
    splits = {s: list(loader.dataset.ids) for s, loader in data.loaders.items() if s != "train"}
    train = [r for h, r in rows.items() if h not in splits["val"]]
    numbers = [
        [float("nan") if r[c] in ("", "NA") else float(r[c]) for c in ("age", "income")] for r in train
    ]
    imputer = SimpleImputer(strategy=na).fit(np.array(numbers))
    assert table["fill"] == pytest.approx(dict(zip(("age", "income"), imputer.statistics_)))
    encoder = OneHotEncoder(categories=[table["one_hot"]["city"]]).fit([[r["city"]] for r in train])

    def expected(r: dict) -> list[float]:
        age, income = imputer.transform(
            np.array([[float("nan") if r[c] in ("", "NA") else float(r[c]) for c in ("age", "income")]])
        )[0]
        return [age, *encoder.transform([[r["city"]]]).toarray()[0], income]

    x = data.loaders["val"].dataset.tensors[0]
    torch.testing.assert_close(
        x, torch.tensor([expected(rows[h]) for h in splits["val"]], dtype=torch.float32)
    )
    assert data.info["normalization"]["fill"] == pytest.approx(
        [table["fill"]["age"], None, None, None, table["fill"]["income"]]
    )


def test_na_drop_leaves_out_rows_and_features_ignore_choose_the_columns(tmp_path):
    data = houses(tmp_path, id="house", one_hot="city", na="drop")
    kept = sum(len(loader.dataset) for loader in data.loaders.values())
    assert kept == 80 - len([i for i in range(80) if i % 9 == 4 or i % 11 == 3])
    only = houses(tmp_path, id="house", features="income,age", na="median")
    assert only.info["features"] == ["income", "age"]
    rest = houses(tmp_path, id="house", ignore=["city", "income"], na="median")
    assert rest.info["features"] == ["age"]


def test_rows_to_predict_are_matched_by_column_name(tmp_path):
    write_houses(tmp_path / "houses.csv")
    options = {
        "path": str(tmp_path / "houses.csv"),
        "label": "price",
        "id": "house",
        "one_hot": "city",
        "na": "mean",
    }
    (tmp_path / "same.csv").write_text(
        "house,age,city,income\nn1,30,Rome,55.0\nn2,NA,Paris,\nn3,61,Oslo,40\n"
    )
    (tmp_path / "other.csv").write_text(
        "income,note,city,house,age,price\n55.0,x,Rome,n1,30,\n,y,Paris,n2,,\n40,z,Oslo,n3,61,\n"
    )
    same, other = (
        registry.create_data("csv", **options, predict_path=str(tmp_path / name))
        for name in ("same.csv", "other.csv")
    )
    assert torch.equal(
        same.loaders["predict"].dataset.tensors[0], other.loaders["predict"].dataset.tensors[0]
    )
    assert other.loaders["predict"].dataset.ids == ["n1", "n2", "n3"]
    (tmp_path / "lacking.csv").write_text("city,age\nRome,30\n")
    with pytest.raises(
        ConfigError,
        match=r"^predict file '.*lacking.csv' has no column 'income', 'house'; columns: city, age",
    ):
        registry.create_data("csv", **options, predict_path=str(tmp_path / "lacking.csv"))
    (tmp_path / "unseen.csv").write_text("house,age,city,income\nn1,30,Berlin,55.0\n")
    with pytest.raises(
        ConfigError, match=r"line 2, column 'city': 'Berlin' is none of the values the model was trained on"
    ):
        registry.create_data("csv", **options, predict_path=str(tmp_path / "unseen.csv"))
    dropping = {**options, "na": "drop", "predict_path": str(tmp_path / "same.csv")}
    with pytest.raises(
        ConfigError, match=r"line 3, column 'age': a missing value \('NA'\); the run left out rows .*na=drop"
    ):
        registry.create_data("csv", **dropping)


def test_normalize_fills_a_missing_input_before_scaling():
    n = Normalize([1.0, 2.0], [2.0, 4.0], fill=[5.0, None])
    x = torch.tensor([[float("nan"), 6.0], [3.0, 2.0]])
    torch.testing.assert_close(n(x), torch.tensor([[2.0, 1.0], [1.0, 0.0]]))
    assert n(torch.tensor([[0.0, float("nan")]]))[
        0, 1
    ].isnan()  # no fill for that feature: it is never missing
    with pytest.raises(ConfigError, match="'fill' must be a list of 2 numbers or nulls"):
        Normalize([1.0, 2.0], [2.0, 4.0], fill=[5.0])


# --- as a user: the xt command ---------------------------------------------------------------------------------------
def _one_line_error(*args: str, cwd: Path) -> str:
    err = xt(*args, cwd=cwd, code=2).stderr
    assert err.startswith("xt: error: ") and len(err.strip().splitlines()) == 1, err
    return err


@pytest.mark.slow
def test_xt_run_predict_and_export_a_regression_on_a_raw_csv(tmp_path):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    write_houses(tmp_path / "houses.csv")
    run = [
        "run",
        "--model",
        "mlp",
        "--data",
        "csv",
        "--data-opt",
        "path=houses.csv",
        "--data-opt",
        "label=price",
    ]
    assert "--data-opt id=house, one-hot encode text with --data-opt one_hot=city" in _one_line_error(
        *run, cwd=tmp_path
    )
    run += ["--data-opt", "id=house", "--data-opt", "one_hot=city"]
    assert "--data-opt na=drop|mean|median" in _one_line_error(*run, cwd=tmp_path)
    run += ["--data-opt", "na=mean", "--epochs", "2", "--save-dir", "run"]
    out = xt(*run, cwd=tmp_path).stdout
    assert out.count("holds numbers with decimals") == 1, out  # the inference, said once
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["loss"]["name"] == "mse" and sorted(config["metrics"]) == ["mae", "mse", "r2"]
    assert config["info"]["table"]["task"] == "regression" and config["info"]["num_classes"] == 1
    history = json.loads((tmp_path / "run" / "history.json").read_text())
    assert {"val/mse", "val/r2"} <= set(history[-1])

    # the columns in another order, with more of them: matched by name, the ids carried
    (tmp_path / "new.csv").write_text(
        "income,note,city,house,age\n55.0,x,Rome,n1,30\n,y,Paris,n2,NA\n40,z,Oslo,n3,61\n"
    )
    (tmp_path / "plain.csv").write_text(
        "house,age,city,income\nn1,30,Rome,55.0\nn2,NA,Paris,\nn3,61,Oslo,40\n"
    )
    for name in ("new", "plain"):
        xt("predict", "run", "--input", f"{name}.csv", "-o", f"{name}-predicted.csv", cwd=tmp_path)
    with (tmp_path / "new-predicted.csv").open(newline="") as f:
        predicted = list(csv.DictReader(f))
    assert [r["house"] for r in predicted] == ["n1", "n2", "n3"] and list(predicted[0]) == [
        "house",
        "output_0",
    ]
    assert (tmp_path / "new-predicted.csv").read_text() == (tmp_path / "plain-predicted.csv").read_text()
    (tmp_path / "lacking.csv").write_text("house,city,age\nn1,Rome,30\n")
    err = _one_line_error("predict", "run", "--input", "lacking.csv", "-o", "p.csv", cwd=tmp_path)
    assert "has no column 'income'" in err

    # the exported file alone, fed the raw rows as its metadata says: what xt predict gives
    xt("export", "run", "-o", "model.onnx", cwd=tmp_path)
    script = (
        "import csv, json, sys, numpy as np, onnxruntime as ort\n"
        "s = ort.InferenceSession('model.onnx')\n"
        "table = json.loads(s.get_modelmeta().custom_metadata_map['table'])\n"
        "rows = list(csv.DictReader(open('new.csv', newline='')))\n"
        "def number(v): return float('nan') if v in ('', 'NA') else float(v)\n"
        "def value(r, name):  # NAME=VALUE of a one-hot column, else a number column\n"
        "    column, _, category = name.partition('=')\n"
        "    return float(r[column] == category) if column in table['one_hot'] else number(r[name])\n"
        "x = [[value(r, name) for name in table['inputs']] for r in rows]\n"
        "out = s.run(None, {s.get_inputs()[0].name: np.array(x, dtype=np.float32)})[0]\n"
        "np.save('onnx.npy', out)\n"
        "assert 'torch' not in sys.modules and 'xt_training' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-I", "-c", script], cwd=tmp_path, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    expected = np.array([[float(r["output_0"])] for r in predicted])
    np.testing.assert_allclose(np.load(tmp_path / "onnx.npy"), expected, rtol=1e-4, atol=1e-5)
