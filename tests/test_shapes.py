"""Problem shapes beyond classification: regression, multi-label, segmentation, detection, text, tagging.

Each shape trains above chance (or below a loss bound) through ``F.train`` in its example (examples/*.py, run
here at a small size) and through the real ``xt`` CLI; metric values are checked against scikit-learn or
hand-made cases. The registry's names of each shape (metadata ``task``) get smoke tests here, as the
classification names do in test_registry.py.
"""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F_
from sklearn import metrics as sk

from xt_training import metrics, registry
from xt_training.builtins.text import WordTokenizer
from xt_training.errors import ConfigError
from xt_training.utils import functional as F

ROOT = Path(__file__).resolve().parents[1]
XT = str(Path(sys.executable).with_name("xt"))
VISION = str(ROOT / "plugins" / "xt-vision")

#: small options of the built-in data sets of each shape
SMALL = {
    "synthetic-regression": {"n_samples": 200},
    "synthetic-multilabel": {"n_samples": 200},
    "synthetic-segmentation": {"n_samples": 40, "image_size": 16, "batch_size": 8},
    "synthetic-detection": {"n_samples": 12, "image_size": 32, "batch_size": 4},
    "synthetic-text": {"n_samples": 100},
    "synthetic-tagging": {"n_samples": 100},
}
#: the data set each model of a shape is smoke-tested on
DATA_OF_TASK = {
    "regression": "synthetic-regression",
    "multilabel": "synthetic-multilabel",
    "segmentation": "synthetic-segmentation",
    "detection": "synthetic-detection",
    "text": "synthetic-text",
    "tagging": "synthetic-tagging",
}


def shaped(kind: str) -> list[str]:
    """The names of ``kind`` registered with a problem shape other than classification."""
    table = registry.current().table(kind)
    return [
        n for n in registry.names(kind) if table[n].metadata.get("task", "classification") != "classification"
    ]


def task_of(kind: str, name: str) -> str:
    return registry.current().entry(kind, name).metadata["task"]


def load_example(name: str):
    spec = importlib.util.spec_from_file_location(f"example_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def xt(*args: str, cwd: Path, env: dict | None = None, code: int = 0) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [XT, *args], cwd=cwd, capture_output=True, text=True, env={**os.environ, **(env or {})}, timeout=300
    )
    assert proc.returncode == code, proc.stdout + proc.stderr
    return proc


def history(run_dir: Path) -> list[dict]:
    return json.loads((run_dir / "history.json").read_text())


# --- smoke tests over every name of a shape --------------------------------------------------------------------
@pytest.mark.parametrize("name", shaped("data"))
def test_every_shaped_data_set_builds_small_and_names_registered_loss_and_metrics(name):
    data = registry.create_data(name, **SMALL.get(name, {}))
    assert {"train", "val", "test"} <= set(data.loaders)
    assert next(iter(data.loaders["train"])) is not None
    registry.create("loss", data.loss)
    for metric in data.metrics:
        registry.create_metric(metric)


@pytest.mark.parametrize("name", shaped("model"))
def test_every_shaped_model_takes_a_training_step_on_its_data(name):
    data = registry.create_data(
        DATA_OF_TASK[task_of("model", name)], **SMALL[DATA_OF_TASK[task_of("model", name)]]
    )
    torch.manual_seed(0)
    model = registry.create_model(name, **registry.accepts("model", name, data.info))
    forward = data.forward_fn or (lambda m, b: (m(b[0]), b[1]))
    loss_fn = registry.create("loss", data.loss)
    y_pred, y = forward(model.train(), next(iter(data.loaders["train"])))
    loss_fn(y_pred, y).backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def metric_inputs(task: str):
    g = torch.Generator().manual_seed(0)
    if task == "regression":
        return torch.randn(30, 1, generator=g), torch.randn(30, generator=g)
    if task == "segmentation":
        return torch.randn(6, 3, 8, 8, generator=g), torch.randint(0, 3, (6, 8, 8), generator=g)
    boxes = torch.tensor([[0.0, 0, 10, 10], [20, 20, 30, 35]])
    target = [{"boxes": boxes, "labels": torch.tensor([1, 2])}]
    return [{"boxes": boxes + 1, "scores": torch.tensor([0.9, 0.8]), "labels": torch.tensor([1, 2])}], target


@pytest.mark.parametrize("name", shaped("metric"))
def test_every_shaped_metric_computes_a_finite_value_over_several_updates(name):
    metric = registry.create_metric(name)
    y_pred, y = metric_inputs(task_of("metric", name))
    for _ in range(2):
        metric.update(y_pred, y)
    assert torch.isfinite(torch.as_tensor(metric.compute())).all()
    metric.reset()


def test_detection_loss_sums_the_loss_dict_and_reports_none_for_detections():
    loss = registry.create("loss", "detection", weights={"b": 2.0})
    assert float(loss({"a": torch.tensor(1.0), "b": torch.tensor(0.5)}, None)) == 2.0
    assert loss([{"boxes": torch.zeros(0, 4)}], None) is None


# --- metrics against independent computations --------------------------------------------------------------------
def test_regression_metrics_match_scikit_learn_over_several_updates():
    g = torch.Generator().manual_seed(3)
    y = torch.randn(100, generator=g)
    y_pred = (y + 0.5 * torch.randn(100, generator=g)).reshape(-1, 1)  # (N, 1) outputs for (N,) targets
    values = {}
    for name in ("mse", "mae", "r2"):
        metric = registry.create_metric(name)
        for part in (slice(0, 37), slice(37, 100)):
            metric.update(y_pred[part], y[part])
        values[name] = float(metric.compute())
    yt, yp = y.double().numpy(), y_pred.flatten().double().numpy()
    assert values["mse"] == pytest.approx(sk.mean_squared_error(yt, yp), rel=1e-5)
    assert values["mae"] == pytest.approx(sk.mean_absolute_error(yt, yp), rel=1e-5)
    assert values["r2"] == pytest.approx(sk.r2_score(yt, yp), rel=1e-5)
    with pytest.raises(ValueError, match=r"predictions \(100, 2\) and targets \(100,\) differ in shape"):
        metrics.MSE().update(torch.zeros(100, 2), y)


def test_segmentation_iou_and_dice_are_per_pixel_over_the_epoch_like_scikit_learn():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(5, 4, 6, 7, generator=g)
    masks = torch.randint(0, 3, (5, 6, 7), generator=g)  # class 3 never occurs in the targets
    iou, dice = metrics.IoU(), metrics.Dice()
    for part in (slice(0, 2), slice(2, 5)):
        iou.update(logits[part], masks[part])
        dice.update(logits[part], masks[part])
    truth, predicted = masks.flatten().numpy(), logits.argmax(1).flatten().numpy()
    assert float(iou.compute()) == pytest.approx(
        sk.jaccard_score(truth, predicted, average="macro"), rel=1e-5
    )
    assert float(dice.compute()) == pytest.approx(sk.f1_score(truth, predicted, average="macro"), rel=1e-5)
    binary = metrics.IoU()  # (N, 1, H, W) logits: the IoU of the positive class
    binary.update(logits[:, :1], (masks > 0).long())
    positive = (logits[:, 0] > 0).flatten().numpy()
    assert float(binary.compute()) == pytest.approx(sk.jaccard_score((masks > 0).flatten().numpy(), positive))


def test_multilabel_metrics_infer_the_task_from_float_targets_like_scikit_learn():
    g = torch.Generator().manual_seed(5)
    logits = torch.randn(80, 4, generator=g)
    y = (logits + torch.randn(80, 4, generator=g) > 0).float()
    f1, accuracy, auc = metrics.F1(), metrics.Accuracy(), metrics.ROC_AUC()
    for m in (f1, accuracy, auc):
        m.update(logits[:30], y[:30])
        m.update(logits[30:], y[30:])
    assert f1.task == accuracy.task == auc.task == "multilabel"
    on = (logits > 0).numpy()
    assert float(f1.compute()) == pytest.approx(sk.f1_score(y.numpy(), on, average="macro"), rel=1e-5)
    assert float(accuracy.compute()) == pytest.approx((on == y.numpy().astype(bool)).mean(), rel=1e-5)
    assert float(auc.compute()) == pytest.approx(sk.roc_auc_score(y.numpy(), logits.numpy()), rel=1e-4)
    explicit = metrics.F1(task="multilabel", num_classes=4)  # or set explicitly
    explicit.update(logits, y)
    assert float(explicit.compute()) == pytest.approx(float(f1.compute()))


def coco_average_precision(detections, truths) -> float:
    """COCO AP of one class, written from the definition: greedy matching by score, 101-point precision,
    averaged over the IoU thresholds 0.5, 0.55, ..., 0.95."""

    def iou(a, b):
        w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
        h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
        inter = w * h
        return inter / ((a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter)

    n_truths = sum(len(t) for t in truths)
    order = sorted(((s, i, box) for i, d in enumerate(detections) for box, s in d), key=lambda d: -d[0])
    aps = []
    for threshold in np.linspace(0.5, 0.95, 10):
        used = [set() for _ in truths]
        hits = []
        for _, image, box in order:
            best, best_j = threshold, None
            for j, truth in enumerate(truths[image]):
                if j not in used[image] and iou(box, truth) >= best:
                    best, best_j = iou(box, truth), j
            if best_j is not None:
                used[image].add(best_j)
            hits.append(best_j is not None)
        tp = np.cumsum(hits)
        recall, precision = tp / n_truths, tp / np.arange(1, len(hits) + 1)
        envelope = np.maximum.accumulate(precision[::-1])[::-1]
        sampled = [
            envelope[np.searchsorted(recall, r, side="left")] if r <= recall[-1] else 0
            for r in np.linspace(0, 1, 101)
        ]
        aps.append(np.mean(sampled))
    return float(np.mean(aps))


def test_mean_average_precision_matches_a_computation_from_the_definition():
    truths = [[(10, 10, 50, 50), (60, 60, 90, 100)], [(5, 5, 40, 30)]]
    detections = [  # (box, score): a good box, a shifted one, a false one; one image's box slightly off
        [((12, 10, 50, 52), 0.9), ((64, 58, 90, 96), 0.7), ((0, 0, 8, 8), 0.8)],
        [((5, 8, 44, 30), 0.6)],
    ]
    metric = registry.create_metric("map")
    for dets, boxes in zip(detections, truths):
        metric.update(
            [{"boxes": torch.tensor([b for b, _ in dets], dtype=torch.float), "scores": torch.tensor([s for _, s in dets]),
              "labels": torch.ones(len(dets), dtype=torch.long)}],
            [{"boxes": torch.tensor(boxes, dtype=torch.float), "labels": torch.ones(len(boxes), dtype=torch.long)}],
        )  # fmt: skip
    expected = coco_average_precision(detections, truths)
    assert 0.2 < expected < 0.95  # a case that is neither perfect nor empty
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-4)
    metric.update({"loss_classifier": torch.tensor(1.0)}, None)  # a training pass's loss dict: skipped
    assert float(metric.compute()) == pytest.approx(expected, abs=1e-4)
    assert torch.isnan(registry.create_metric("map").compute())


# --- each shape through F.train (its example) and the CLI ---------------------------------------------------------
def test_regression_example_and_predictions_agree_with_scikit_learn(tmp_path):
    history_, model, data, predictions = load_example("regression").main(
        tmp_path, n_samples=600, epochs=4, quiet=True
    )
    assert history_[-1]["val/r2"] > 0.8 and history_[-1]["val/mse"] < 0.25
    results = F.test(
        {"test": data.loaders["test"]},
        model,
        eval_metrics={"r2": metrics.R2(), "mae": metrics.MAE()},
        quiet=True,
    )
    y = torch.cat([y for _, y in data.loaders["test"]]).numpy()
    assert results["test"]["r2"] == pytest.approx(sk.r2_score(y, predictions.numpy()), rel=1e-5)
    assert results["test"]["mae"] == pytest.approx(sk.mean_absolute_error(y, predictions.numpy()), rel=1e-5)


def test_multilabel_example_learns_every_label(tmp_path):
    history_, _, data, probabilities = load_example("multilabel").main(
        tmp_path, n_samples=600, epochs=5, quiet=True
    )
    assert history_[-1]["val/f1"] > 0.7 and history_[-1]["val/auc"] > 0.85
    y = torch.cat([y for _, y in data.loaders["test"]])
    assert sk.roc_auc_score(y.numpy(), probabilities.numpy(), average=None).min() > 0.75


def test_segmentation_example_beats_predicting_background(tmp_path):
    history_, _, data, masks = load_example("segmentation").main(
        tmp_path, n_samples=120, epochs=3, quiet=True
    )
    truth = torch.cat([y for _, y in data.loaders["test"]])
    background_only = sk.jaccard_score(truth.flatten().numpy(), np.zeros(truth.numel()), average="macro")
    assert history_[-1]["val/iou"] > max(0.5, 2 * background_only)
    assert masks.shape == truth.shape


def test_tagging_example_ignores_padding_in_loss_and_accuracy(tmp_path):
    history_, model, data = load_example("sequence_tagging").main(
        tmp_path, n_samples=400, epochs=4, quiet=True
    )
    assert history_[-1]["val/accuracy"] > 0.6  # 4 tags: chance is about 0.25
    x, y = data.loaders["val"].dataset.tensors
    real = y.reshape(-1) != -100
    assert 0 < real.float().mean() < 1  # there is padding to ignore
    with torch.no_grad():
        predicted = model.eval()(x).argmax(1)
        accuracy = (predicted[real] == y.reshape(-1)[real]).float().mean().item()
        # the pass's loss: per-batch means (over real tokens), weighted by the batch's flattened steps
        losses = [
            (F_.cross_entropy(model(xb), yb.reshape(-1), ignore_index=-100), yb.numel())
            for xb, yb in data.loaders["val"]
        ]
    expected = sum(loss.item() * n for loss, n in losses) / sum(n for _, n in losses)
    assert history_[-1]["val/accuracy"] == pytest.approx(accuracy, abs=1e-6)
    assert history_[-1]["val/loss"] == pytest.approx(expected, rel=1e-5)


def test_text_example_tokenizer_and_topics(tmp_path):
    history_, _, data, topics = load_example("text_classification").main(
        tmp_path, n_samples=600, epochs=4, quiet=True
    )
    assert history_[-1]["val/accuracy"] > 0.8  # 3 topics: chance is 1/3
    assert topics == ["sports", "cooking", "music"]
    tokenizer = WordTokenizer.from_pretrained(tmp_path)
    assert tokenizer.vocab == data.tokenizer.vocab
    batch = tokenizer(["Goal!", "an unheard-of word"])  # "!" and "unheard" are not in the training texts
    unk = tokenizer.unk_token_id
    assert batch["input_ids"].tolist() == [
        [tokenizer.ids["goal"], unk, 0, 0, 0],
        [tokenizer.ids["an"], unk, unk, tokenizer.ids["of"], unk],
    ]
    assert batch["attention_mask"].tolist() == [[1, 1, 0, 0, 0], [1, 1, 1, 1, 1]]


@pytest.mark.parametrize(
    ("model", "data", "options", "check"),
    [
        ("mlp", "synthetic-regression", [], lambda row: row["val/r2"] > 0.5),
        ("mlp", "synthetic-multilabel", [], lambda row: row["val/roc-auc"] > 0.8),
        (
            "unet",
            "synthetic-segmentation",
            ["--model-opt", "channels=(8, 16)"],
            lambda row: row["val/iou"] > 0.5,
        ),
        ("rnn-tagger", "synthetic-tagging", [], lambda row: row["val/accuracy"] > 0.5),
    ],
)
def test_each_shape_trains_through_xt_run(tmp_path, model, data, options, check):
    small = [f"{k}={v}" for k, v in {**SMALL[data], "n_samples": 4 * SMALL[data]["n_samples"]}.items()]
    args = ["--data-opt", *"\0--data-opt\0".join(small).split("\0")] if small else []
    xt(
        "run",
        "--model",
        model,
        "--data",
        data,
        *args,
        *options,
        "--lr",
        "0.01",
        "--epochs",
        "3",
        "-q",
        "--save-dir",
        "run",
        cwd=tmp_path,
    )
    assert check(history(tmp_path / "run")[-1]), history(tmp_path / "run")[-1]
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert (
        config["data"]["name"] == data
        and config["loss"]["name"] == registry.create_data(data, n_samples=8).loss
    )


def test_text_through_xt_run_saves_the_tokenizer_and_xt_predict_reads_raw_text(tmp_path):
    xt("run", "--model", "text-gru", "--data", "synthetic-text", "--data-opt", "n_samples=600", "--data-opt", "num_classes=3",
       "--lr", "0.01", "--epochs", "4", "-q", "--save-dir", "run", cwd=tmp_path)  # fmt: skip
    assert history(tmp_path / "run")[-1]["val/accuracy"] > 0.8
    assert json.loads((tmp_path / "run" / "tokenizer_config.json").read_text())["tokenizer_class"].endswith(
        ":WordTokenizer"
    )
    (tmp_path / "texts.txt").write_text(
        "the coach and the referee left the stadium\n\nflour and spice for the dessert\nThe band played a melody!\n"
    )
    xt("predict", "run", "--input", "texts.txt", "-o", "topics.csv", cwd=tmp_path)
    rows = (tmp_path / "topics.csv").read_text().splitlines()
    assert rows[0] == "prediction,p_sports,p_cooking,p_music"
    preds = [r.split(",")[0] for r in rows[1:]]  # one row per line: row 2 is the blank line's
    assert len(preds) == 4 and preds[0] == "sports" and preds[2:] == ["cooking", "music"]
    assert all(sum(map(float, r.split(",")[1:])) == pytest.approx(1.0, abs=1e-5) for r in rows[1:])


# --- detection ------------------------------------------------------------------------------------------------------
@pytest.fixture
def vision(monkeypatch):
    monkeypatch.syspath_prepend(VISION)
    registry.load(["xt_vision.plugin"])
    yield
    registry.reset()


def test_detection_example_loss_falls_on_a_few_images(tmp_path):
    history_, model, _, detections = load_example("detection").main(
        tmp_path, n_samples=10, epochs=3, quiet=True
    )
    losses = [row["train/loss"] for row in history_]
    assert losses[-1] < 0.75 * losses[0], losses
    assert "val/loss" not in history_[-1] and 0 <= history_[-1]["val/map"] <= 1
    assert len(detections) == 2 and set(detections[0]) == {"boxes", "scores", "labels"}
    assert model.training  # F.predict restored the mode


def test_detection_by_name_data_forward_fn_loss_and_vision_model(vision, tmp_path):
    data = registry.create_data(
        "synthetic-detection", n_samples=10, image_size=32, batch_size=4, val_fraction=0.2, test_fraction=0.0
    )
    torch.manual_seed(0)
    model = registry.create_model(
        "fasterrcnn-mobilenet", **registry.accepts("model", "fasterrcnn-mobilenet", data.info)
    )
    assert model.transform.min_size == (32,) and model.roi_heads.box_predictor.cls_score.out_features == 3
    runs = F.train(
        tmp_path, data.loaders["train"], model, torch.optim.SGD(model.parameters(), lr=0.01), 1,
        registry.create("loss", "detection"), val_loader=data.loaders["val"], eval_metrics={"map": registry.create_metric("map")},
        forward_fn=data.forward_fn, monitor=data.monitor, quiet=True,
    )  # fmt: skip
    assert runs[0]["train/loss"] > 0 and math.isnan(runs[0]["train/map"]) and 0 <= runs[0]["val/map"] <= 1
    assert (tmp_path / "checkpoints" / "best.pt").is_file()
    with pytest.raises(
        ConfigError,
        match="xt-vision builds the detection model fasterrcnn_mobilenet_v3_large_320_fpn with random weights",
    ):
        registry.create_model("fasterrcnn-mobilenet", weights_backbone="DEFAULT")


@pytest.mark.slow
def test_detection_through_xt_run_with_the_vision_plugin(tmp_path):
    env = {"PYTHONPATH": VISION}
    xt("-p", "xt_vision.plugin", "run", "--model", "fasterrcnn-mobilenet", "--data", "synthetic-detection",
       "--data-opt", "n_samples=10", "--data-opt", "image_size=32", "--batch-size", "4", "--optimizer", "sgd",
       "--lr", "0.01", "--epochs", "1", "-q", "--save-dir", "run", cwd=tmp_path, env=env)  # fmt: skip
    row = history(tmp_path / "run")[-1]
    assert row["train/loss"] > 0 and 0 <= row["val/map"] <= 1 and "val/loss" not in row
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["resolved"]["image_size"] == 32 and config["model"]["resolved"]["num_classes"] == 3
    xt("-p", "xt_vision.plugin", "predict", "run", "-o", "boxes.pt", cwd=tmp_path, env=env)
    boxes = torch.load(tmp_path / "boxes.pt", weights_only=True)
    assert len(boxes) == 2 and set(boxes[0]) == {"boxes", "scores", "labels"}
