"""Metric values against independent computations on small hand-made cases."""

from __future__ import annotations

import itertools
import weakref

import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import Runner, metrics
from xt_training.errors import MetricError


def pairwise_auc(scores: list[float], labels: list[int]) -> float:
    """AUC as the probability that a positive outranks a negative (ties count half)."""
    pos = [s for s, y in zip(scores, labels) if y == 1]
    neg = [s for s, y in zip(scores, labels) if y == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


def feed(metric, batches):
    metric.reset()
    for y_pred, y in batches:
        metric.update(y_pred, y)
    return metric.compute()


def test_accuracy_multiclass_binary_and_topk():
    y_pred = torch.tensor([[2.0, 1.0, 0.0], [0.0, 3.0, 1.0], [0.0, 1.0, 2.0], [5.0, 0.0, 4.0]])
    y = torch.tensor([0, 1, 1, 2])
    assert feed(metrics.Accuracy(), [(y_pred, y)]).item() == pytest.approx(2 / 4)
    # top-2: rows 0, 1, 2 (1 is second), 3 (2 is second) -> all correct
    assert feed(metrics.TopKAccuracy(2), [(y_pred, y)]).item() == pytest.approx(1.0)
    # binary from a single logit column: logits > 0 mean class 1
    logits = torch.tensor([[-1.0], [2.0], [0.5], [-3.0]])
    assert feed(metrics.Accuracy(), [(logits, torch.tensor([0, 1, 0, 0]))]).item() == pytest.approx(3 / 4)
    # micro average: every example counts once, even with unbalanced classes
    many = torch.eye(3)[torch.tensor([0, 0, 0, 1])]
    assert feed(metrics.Accuracy(), [(many, torch.tensor([0, 0, 0, 2]))]).item() == pytest.approx(3 / 4)


def test_epoch_auc_equals_auc_of_concatenated_data_not_mean_of_batches():
    g = torch.Generator().manual_seed(1)
    scores = torch.randn(60, generator=g)
    labels = (scores + torch.randn(60, generator=g) > 0).long()
    batches = [(scores[i : i + 10], labels[i : i + 10]) for i in range(0, 60, 10)]
    expected = pairwise_auc(scores.tolist(), labels.tolist())
    assert feed(metrics.ROC_AUC(), batches).item() == pytest.approx(expected, abs=1e-6)
    per_batch = [pairwise_auc(s.tolist(), y.tolist()) for s, y in batches if 0 < y.sum() < len(y)]
    assert abs(sum(per_batch) / len(per_batch) - expected) > 1e-3  # the wrong way gives another number


def test_multiclass_auc_is_one_vs_rest_mean_over_present_classes():
    g = torch.Generator().manual_seed(2)
    y_pred = torch.randn(40, 5, generator=g)
    y = torch.randint(0, 3, (40,), generator=g)  # classes 3 and 4 never occur
    probs = y_pred.softmax(1)
    expected = sum(pairwise_auc(probs[:, c].tolist(), (y == c).long().tolist()) for c in range(3)) / 3
    assert feed(metrics.ROC_AUC(), [(y_pred[:20], y[:20]), (y_pred[20:], y[20:])]).item() == pytest.approx(
        expected, abs=1e-5
    )


def test_f1_precision_recall_kappa_confusion_by_hand():
    y = torch.tensor([0, 0, 1, 1, 1, 0])
    pred = torch.tensor([0, 1, 1, 1, 0, 0])
    logits = torch.nn.functional.one_hot(pred, 2).float()
    tp, fp, fn, tn = 2, 1, 1, 2
    assert feed(metrics.ConfusionMatrix(), [(logits, y)]).tolist() == [[tn, fp], [fn, tp]]
    # macro over the two classes: each class has precision = recall = 2/3
    assert feed(metrics.Precision(), [(logits, y)]).item() == pytest.approx(2 / 3)
    assert feed(metrics.Recall(), [(logits, y)]).item() == pytest.approx(2 / 3)
    assert feed(metrics.F1(), [(logits, y)]).item() == pytest.approx(2 / 3)
    po = (tp + tn) / 6
    pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / 36
    assert feed(metrics.Kappa(), [(logits, y)]).item() == pytest.approx((po - pe) / (1 - pe))
    # binary task from one column: probability 0.9 -> 1
    probs = torch.tensor([0.1, 0.9, 0.8, 0.7, 0.2, 0.3]).unsqueeze(1)
    assert feed(metrics.Precision(), [(probs, y)]).item() == pytest.approx(2 / 3)


def test_kappa_accumulates_over_the_epoch():
    y = torch.tensor([0, 1, 2, 2, 1, 0, 1, 2])
    pred = torch.tensor([0, 1, 1, 2, 1, 2, 0, 2])
    logits = torch.nn.functional.one_hot(pred, 3).float()
    whole = feed(metrics.Kappa(), [(logits, y)]).item()
    split = feed(metrics.Kappa(), [(logits[:3], y[:3]), (logits[3:], y[3:])]).item()
    assert split == pytest.approx(whole)


def test_callable_metric_is_weighted_by_batch_size():
    def mae(y_pred, y):
        return (y_pred - y).abs().mean()

    m = metrics.as_metric(mae)
    batches = [(torch.zeros(3), torch.ones(3)), (torch.zeros(1), torch.full((1,), 5.0))]
    assert feed(m, batches).item() == pytest.approx((3 * 1 + 5) / 4)
    assert feed(metrics.Loss(nn.L1Loss()), batches).item() == pytest.approx(2.0)


def test_eps_counts_examples_per_second():
    m = metrics.EPS()
    m.update(torch.zeros(100, 2), torch.zeros(100))
    assert m.compute() > 0


class SizeOnly:
    """A size-only metric: records the example counts it is given."""

    def __init__(self):
        self.counts = []

    def update(self, y_pred, y):
        raise AssertionError("a size-only metric gets no outputs in the loop")

    def update_size(self, n):
        self.counts.append(n)

    def compute(self):
        return float(sum(self.counts))

    def reset(self):
        self.counts = []


class OutputsFreed(nn.Module):
    """Identity that checks, at each forward, whether its previous output is still alive."""

    def __init__(self):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(()))
        self.last, self.alive = None, []

    def forward(self, x):
        if self.last is not None:
            self.alive.append(self.last() is not None)
        out = x * self.scale
        self.last = weakref.ref(out)
        return out


@pytest.mark.parametrize("extra", [{}, {"acc": metrics.Accuracy}])
def test_size_only_metrics_get_counts_and_no_outputs_are_kept_for_them(extra):
    x, y = torch.randn(23, 3), torch.randint(0, 3, (23,))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)  # 5 batches of 4 and one of 3
    model = OutputsFreed()
    size_only, eps = SizeOnly(), metrics.EPS()
    runner = Runner(
        model,
        nn.CrossEntropyLoss(),
        torch.optim.SGD(model.parameters(), lr=0.1),
        batch_metrics={"n": size_only, "eps": eps, **{k: m() for k, m in extra.items()}},
        log_every_n_steps=2,
        quiet=True,
    )
    values = runner(loader)
    # the examples since the last logging step (steps 1, 2, 4, 6; none left for the pass's end)
    assert size_only.counts == [4, 4, 8, 7] and values["n"] == 23.0
    assert eps._n == 23 and values["eps"] > 0
    # outputs are held only for the metrics that read them
    assert model.alive == [bool(extra)] * 5


def test_size_only_metric_failure_names_the_metric():
    class Broken(SizeOnly):
        def update_size(self, n):
            raise ValueError("no counts here")

    runner = Runner(nn.Linear(3, 3).eval(), batch_metrics={"b": Broken()}, quiet=True)
    loader = DataLoader(TensorDataset(torch.randn(4, 3), torch.randint(0, 3, (4,))), batch_size=2)
    with pytest.raises(
        MetricError, match=r"metric 'b' \(Broken\) failed in update_size\(2\): no counts here"
    ):
        runner(loader)


def test_not_a_metric():
    with pytest.raises(TypeError, match="metric 'x' is a int"):
        metrics.as_metric(3, "x")


def runner_values(y_pred_all, y_all, batch, log_every, metric):
    model = nn.Identity()
    model.eval()
    loader = DataLoader(TensorDataset(y_pred_all, y_all), batch_size=batch)
    runner = Runner(model, batch_metrics={"m": metric}, device="cpu", log_every_n_steps=log_every, quiet=True)
    return runner(loader)["m"]


@pytest.mark.parametrize("log_every", [1, 3, 50])
def test_runner_epoch_metrics_equal_whole_data_metrics(log_every):
    g = torch.Generator().manual_seed(3)
    y_pred = torch.randn(103, 4, generator=g)
    y = torch.randint(0, 4, (103,), generator=g)
    ref = torchmetrics.classification.MulticlassAUROC(4)
    ref.update(y_pred, y)
    assert runner_values(y_pred, y, 10, log_every, metrics.ROC_AUC()) == pytest.approx(
        ref.compute().item(), abs=1e-6
    )
    acc = (y_pred.argmax(1) == y).float().mean().item()
    assert runner_values(y_pred, y, 10, log_every, metrics.Accuracy()) == pytest.approx(acc)
    # any torchmetrics Metric works directly
    tm = torchmetrics.classification.MulticlassAccuracy(4, average="micro")
    assert runner_values(y_pred, y, 10, log_every, tm) == pytest.approx(acc)


def test_metric_failure_names_metric_and_shapes():
    y_pred = torch.randn(8, 3)
    y = torch.randint(0, 3, (8, 2))  # wrong label shape
    with pytest.raises(
        MetricError,
        match=r"metric 'm' \(Accuracy\) failed on y_pred Tensor\(4, 3\) float32 and y Tensor\(4, 2\) int64",
    ):
        runner_values(y_pred, y, 4, 50, metrics.Accuracy())


class Recording:
    """A metric that records the number of rows of each update."""

    def __init__(self):
        self.rows = []

    def update(self, y_pred, y):
        self.rows.append(len(y))

    def compute(self):
        return float(sum(self.rows))

    def reset(self):
        self.rows = []


class RunningValues:
    def __init__(self):
        self.seen = []

    def update_pass(self, name, values):
        self.seen.append(sorted(values))


@pytest.mark.parametrize("width, rows", [(10, [4, 40, 40, 16]), (1 << 16, [4] * 25)])
def test_metrics_update_in_chunks_fixed_by_steps_and_sizes(width, rows):
    # log_every=1: small outputs are handed over at the first logging step, then every 10 logging steps
    # (and at the end); outputs of 2**18 elements a step at every logging step. Never by time, so that
    # reruns and resumed runs sum in the same chunks. Running values come with the updates only.
    metric, logger = Recording(), RunningValues()
    loader = DataLoader(TensorDataset(torch.zeros(100, width), torch.zeros(100)), batch_size=4)
    runner = Runner(nn.Identity().eval(), batch_metrics={"m": metric}, device="cpu", log_every_n_steps=1,
                    loggers=[logger])  # fmt: skip
    assert runner(loader)["m"] == 100
    assert metric.rows == rows
    with_m = [i + 1 for i, names in enumerate(logger.seen) if "m" in names]
    assert with_m == ([1, 11, 21] if width == 10 else list(range(1, 26)))


def test_outputs_between_updates_are_concatenated_at_each_logging_step():
    # between two metric updates, the batches of each logging step are held as one concatenated chunk
    # (their own tensors are freed); batches whose shapes differ stay as they are
    from xt_training.runner import _Buffers

    metric = Recording()
    buffers = _Buffers({"m": metric}, torch.device("cpu"), keep_all=True)
    batches = [torch.full((4, 3), float(i)) for i in range(12)] + [torch.zeros(4, 5), torch.zeros(4, 6)]

    def add(indices):
        for i in indices:
            buffers.add_outputs(batches[i], torch.zeros(4))

    add(range(3))
    buffers.flush()  # the pass's first logging step updates the metrics
    add(range(3, 7))
    buffers.flush()
    add(range(7, 12))
    buffers.flush()
    assert [len(p) for p, _ in buffers.outputs] == [16, 20] and metric.rows == [12]
    add([12, 13])  # widths 5 and 6: cannot be concatenated
    buffers.flush()
    assert [len(p) for p, _ in buffers.outputs] == [16, 20, 4, 4]
    buffers.flush(final=True)
    assert metric.rows == [12, 16, 20, 4, 4]  # no longer one concatenation: chunk by chunk
    y_pred, _ = buffers.predictions()
    assert [row[0] for row in y_pred[:48]] == [float(i) for i in range(12) for _ in range(4)]


def test_label_range_is_shared_and_follows_in_place_changes():
    y = torch.tensor([2, 0, 1])
    acc, f1 = metrics.Accuracy(num_classes=3), metrics.F1(num_classes=3)
    acc.update(torch.randn(3, 3), y)
    f1.update(torch.randn(3, 3), y)
    assert metrics.label_range(y) == (0, 2) and metrics.label_range(y, ignore_index=0) == (1, 2)
    y[0] = 3  # changed in place: checked again
    with pytest.raises(ValueError, match=r"labels must be in 0..2 for 3 classes, got 0..3"):
        acc.update(torch.randn(3, 3), y)


def test_top_class_metrics_share_labels_and_agree_with_torchmetrics():
    g = torch.Generator().manual_seed(0)
    a = torch.randint(0, 3, (200, 5), generator=g).float()  # many ties: the first top class counts
    b = torch.randn(200, 5, generator=g)
    y = torch.randint(0, 5, (200,), generator=g)
    tmc = torchmetrics.classification
    refs = {
        "acc": (metrics.Accuracy, tmc.MulticlassAccuracy(5, average="micro")),
        "f1": (metrics.F1, tmc.MulticlassF1Score(5)),
        "kappa": (metrics.Kappa, tmc.MulticlassCohenKappa(5)),
        "iou": (metrics.IoU, tmc.MulticlassJaccardIndex(5)),
        "cm": (metrics.ConfusionMatrix, tmc.MulticlassConfusionMatrix(5)),
    }
    ours = {k: cls() for k, (cls, _) in refs.items()}
    for y_pred in (a, b, b, a.clone()):  # labels are reused for the same, unchanged tensor only
        for m in ours.values():
            m.update(y_pred, y)
        for _, ref in refs.values():
            ref.update(y_pred, y)
        b.mul_(-1)  # a buffer reused in place (the last update's labels must not be reused)
    for k, (_, ref) in refs.items():
        assert torch.equal(ours[k].compute(), ref.compute()), k
