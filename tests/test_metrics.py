"""Metric values against independent computations on small hand-made cases."""

from __future__ import annotations

import copy
import itertools
import math
import sys
import warnings
import weakref

import pytest
import torch
import torchmetrics
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import Runner, metrics
from xt_training.errors import ConfigError, MetricError


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
    # class 1's values (scikit-learn's default for two classes): precision = recall = 2/3
    assert feed(metrics.Precision(), [(logits, y)]).item() == pytest.approx(2 / 3)
    assert feed(metrics.Recall(), [(logits, y)]).item() == pytest.approx(2 / 3)
    assert feed(metrics.F1(), [(logits, y)]).item() == pytest.approx(2 / 3)
    po = (tp + tn) / 6
    pe = ((tp + fp) * (tp + fn) + (tn + fn) * (tn + fp)) / 36
    assert feed(metrics.Kappa(), [(logits, y)]).item() == pytest.approx((po - pe) / (1 - pe))
    # binary task from one column: probability 0.9 -> 1
    probs = torch.tensor([0.1, 0.9, 0.8, 0.7, 0.2, 0.3]).unsqueeze(1)
    assert feed(metrics.Precision(), [(probs, y)]).item() == pytest.approx(2 / 3)


class Notices:
    """A logger that keeps the run's notices."""

    def __init__(self):
        self.lines = []

    def notice(self, message):
        self.lines.append(message)


def test_f1_precision_recall_follow_scikit_learn_whatever_the_heads_shape():
    from sklearn.metrics import f1_score, precision_score, recall_score

    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (203,), generator=g)
    # a 1-logit head, and a 2-column one with the same odds
    logit = torch.randn(203, generator=g) + y - 0.3
    heads = {"1 logit": logit.unsqueeze(1), "2 columns": torch.stack([torch.zeros(203), logit], 1)}
    scores = {"f1": (metrics.F1, f1_score), "precision": (metrics.Precision, precision_score)}
    scores["recall"] = (metrics.Recall, recall_score)
    options = {"": {}, "-macro": {"average": "macro"}, "-weighted": {"average": "weighted"}}
    options.update({"-neg": {"pos_label": 0}, "-each": {"average": None}})
    y_hat = (logit > 0).long().numpy()
    for head, y_pred in heads.items():
        named = {n + o: make(**kw) for n, (make, _) in scores.items() for o, kw in options.items()}
        named["f1-0.7"] = metrics.F1(threshold=0.7)  # on the probability of class 1, whatever the head
        named["f1-task"] = metrics.F1(task="binary")  # a 2-column head too
        named["f1-none"] = metrics.F1(average="none")  # torchmetrics' spelling, the command line's
        notices = Notices()
        loader = DataLoader(TensorDataset(y_pred, y), batch_size=20)
        runner = Runner(nn.Identity().eval(), batch_metrics=named, device="cpu", loggers=[notices])
        values = runner(loader)
        for n, (_, sklearn_score) in scores.items():
            for o, kw in options.items():
                got = [values[f"{n}{o}/0"], values[f"{n}{o}/1"]] if o == "-each" else values[n + o]
                assert got == pytest.approx(sklearn_score(y.numpy(), y_hat, **kw), abs=1e-6), (head, n, kw)
        assert values["f1-0.7"] == pytest.approx(f1_score(y.numpy(), logit.sigmoid().numpy() > 0.7), abs=1e-6)
        assert values["f1-task"] == values["f1"]
        assert [values["f1-none/0"], values["f1-none/1"]] == [values["f1-each/0"], values["f1-each/1"]]
        # what was averaged, where it is not the default, is said once
        assert "f1-macro: macro average of the 2 classes (the default: class 1's value)" in notices.lines
        assert "f1-neg: class 0's value (pos_label=0; the default: class 1's)" in notices.lines
        assert not [line for line in notices.lines if line.startswith(("f1:", "f1-each:"))]


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


@pytest.mark.parametrize("log_every", [1, 3, 50])
def test_a_function_metric_is_the_mean_of_its_per_batch_values_however_the_loop_groups_batches(log_every):
    def psnr(y_pred, y):  # as pytorch/examples' super_resolution computes it, once per test batch
        return 10 * torch.log10(1 / nn.functional.mse_loss(y_pred, y))

    g = torch.Generator().manual_seed(0)
    clean = torch.rand(43, 1, 4, 4, generator=g)
    noisy = clean + 0.1 * torch.randn(43, 1, 4, 4, generator=g) * torch.rand(43, 1, 1, 1, generator=g)
    # five equal batches: the hand loop's plain mean of per-batch values
    batches = DataLoader(TensorDataset(noisy[:40], clean[:40]), batch_size=8)
    hand = sum(psnr(y_pred, y).item() for y_pred, y in batches) / len(batches)
    assert runner_values(noisy[:40], clean[:40], 8, log_every, psnr) == pytest.approx(hand, rel=1e-6)
    # a smaller last batch counts for its examples: the mean weighted by batch size
    batches = DataLoader(TensorDataset(noisy, clean), batch_size=8)
    weighted = sum(psnr(y_pred, y).item() * len(y) for y_pred, y in batches) / 43
    assert runner_values(noisy, clean, 8, log_every, psnr) == pytest.approx(weighted, rel=1e-6)


@pytest.mark.parametrize("log_every", [1, 50])
def test_a_summed_loss_is_reported_as_the_hand_loop_reports_it(log_every):
    # pytorch/examples' vae: loss_function sums over the batch; `train_loss += loss.item()` per batch, and
    # the epoch's "Average loss" is train_loss / len(train_loader.dataset)
    def loss_function(recon, x):
        return nn.functional.binary_cross_entropy_with_logits(recon, x, reduction="sum")

    loss_function.reduction = "sum"  # what nn losses say with reduction='sum'
    g = torch.Generator().manual_seed(0)
    x = torch.rand(70, 6, generator=g)
    loader = DataLoader(TensorDataset(x, x), batch_size=16)  # a last batch of 6
    for loss_fn in (loss_function, nn.BCEWithLogitsLoss(reduction="sum")):
        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(6, 2), nn.Tanh(), nn.Linear(2, 6))
        hand_model = copy.deepcopy(model)
        optimizer = torch.optim.SGD(hand_model.parameters(), lr=0.01)
        train_loss = 0.0
        for data, target in loader:
            optimizer.zero_grad()
            loss = loss_fn(hand_model(data), target)
            loss.backward()
            train_loss += loss.item()
            optimizer.step()
        notices = Notices()
        runner = Runner(
            model, loss_fn, torch.optim.SGD(model.parameters(), lr=0.01), device="cpu", loggers=[notices],
            batch_metrics={"bce": metrics.Loss(nn.BCEWithLogitsLoss(reduction="sum"))}, log_every_n_steps=log_every,
        )  # fmt: skip
        values = runner(loader)
        assert values["loss"] == pytest.approx(train_loss / len(loader.dataset), rel=1e-6)
        assert "loss: loss_fn has reduction='sum': the loss is the pass's sum divided by its examples" in (
            notices.lines
        )
        # evaluation, and the same loss as a metric: the test loop's sum over the examples, divided by them
        model.eval()
        with torch.no_grad():
            test_loss = sum(loss_fn(model(data), target).item() for data, target in loader) / len(
                loader.dataset
            )
        values = runner(loader)
        assert values["loss"] == pytest.approx(test_loss, rel=1e-6)
        assert values["bce"] == pytest.approx(test_loss, rel=1e-6)


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
    # one line naming the fix; a ConfigError (the CLI's bad input, exit 2) that `except TypeError` still catches
    with pytest.raises(
        ConfigError, match=r"^metric 'x' is the int 3, not a metric; pass an object with update"
    ) as e:
        metrics.as_metric(3, "x")
    assert isinstance(e.value, TypeError)
    with pytest.raises(
        ConfigError, match=r"^metric 'acc' is the name 'accuracy', not a metric; pass the metric itself, e\.g\. "
        r"\{'acc': xt_training\.create_metric\('accuracy'\)\}"
    ):  # fmt: skip
        metrics.as_metric("accuracy", "acc")


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
    # only where the metric was updated; a running value may be skipped there when its compute() took
    # long against the pass (the throttle is by time: a loaded machine may trigger it), never the first
    updated = [1, 11, 21] if width == 10 else list(range(1, 26))
    assert with_m[0] == 1 and set(with_m) <= set(updated)


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


def run_metrics(y_pred, y, named, log_every=1, batch_size=16):
    """The pass values of ``{name: metric}`` on outputs ``y_pred`` (an identity model)."""
    loader = DataLoader(TensorDataset(y_pred, y), batch_size=batch_size)
    runner = Runner(nn.Identity().eval(), batch_metrics=named, device="cpu", log_every_n_steps=log_every,
                    quiet=True)  # fmt: skip
    return runner(loader)


def binary_references(scores, y):
    """torchmetrics over the whole epoch's scores (all in [0, 1], so taken as they are)."""
    tmc = torchmetrics.classification
    refs = {"acc": tmc.BinaryAccuracy(), "f1": tmc.BinaryF1Score(), "auc": tmc.BinaryAUROC()}
    return {k: ref(scores, y.long()).item() for k, ref in refs.items()}


def probabilities_then_logits(n=400, first=16, seed=0):
    """Binary outputs whose first ``first`` examples (the first batch) are probabilities, the rest logits."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g).float()
    out = ((y - 0.5) * 0.3 + 0.5 + 0.1 * torch.randn(n, generator=g)).clamp(0.01, 0.99)
    out[first:] = (y[first:] - 0.5) * 6 + 3 * torch.randn(n - first, generator=g)
    return out, y


def logits_then_probabilities(n=400, first=16, seed=1):
    """The other way round: a first batch of logits, then logits that all happen to lie in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g).float()
    out = (y - 0.5) * 6 + 3 * torch.randn(n, generator=g)
    out[first:] = torch.rand(n - first, generator=g) * 0.6 + 0.4 * y[first:] - 0.2 * (1 - y[first:])
    out[first:] = out[first:].clamp(0, 1)
    return out, y


@pytest.mark.parametrize(
    "data, logits, expected",
    [
        (probabilities_then_logits, None, "clip"),  # the first batch decides: probabilities
        (logits_then_probabilities, None, "sigmoid"),  # the first batch decides: logits
        (logits_then_probabilities, False, "clip"),  # told: no guess
        (probabilities_then_logits, True, "sigmoid"),
    ],
)
def test_logits_or_probabilities_decided_once_per_pass_whatever_the_chunking(data, logits, expected):
    # torchmetrics decides per update call, and the loop's chunks depend on log_every_n_steps: a chunk
    # of logits among probabilities (or the reverse) made the epoch value depend on the chunking
    y_pred, y = data()
    scores = y_pred.sigmoid() if expected == "sigmoid" else y_pred.clamp(0, 1)
    reference = binary_references(scores, y)
    other = binary_references(y_pred.clamp(0, 1) if expected == "sigmoid" else y_pred.sigmoid(), y)
    assert reference != pytest.approx(other, abs=1e-3)  # the data tells them apart
    kw = {} if logits is None else {"logits": logits}
    for log_every in (1, 3, 1000):
        named = {"acc": metrics.Accuracy(**kw), "f1": metrics.F1(**kw), "auc": metrics.ROC_AUC(**kw)}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the clipping warning: see the test below
            values = run_metrics(y_pred, y, named, log_every)
        assert values == pytest.approx(reference, abs=1e-6), log_every
    if logits is None and expected == "sigmoid":  # the whole epoch is well-defined for torchmetrics
        assert binary_references(y_pred, y) == pytest.approx(reference, abs=1e-6)


def test_multiclass_auc_softmax_is_decided_by_the_first_batch():
    g = torch.Generator().manual_seed(4)
    y = torch.randint(0, 4, (200,), generator=g)
    logits = torch.randn(200, 4, generator=g) * 3 + 2 * nn.functional.one_hot(y, 4)
    probs_first = torch.cat([logits[:16].softmax(1), logits[16:]])
    for y_pred, scores in ((logits, logits.softmax(1)), (probs_first, probs_first.clamp(0, 1))):
        reference = torchmetrics.classification.MulticlassAUROC(4)(scores, y).item()
        for log_every in (1, 3, 1000):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                value = run_metrics(y_pred, y, {"auc": metrics.ROC_AUC()}, log_every)["auc"]
            assert value == pytest.approx(reference, abs=1e-6)


def test_clipping_probabilities_warns_once_per_pass_naming_the_fix():
    y_pred, y = probabilities_then_logits()
    loader = DataLoader(TensorDataset(y_pred, y), batch_size=16)
    runner = Runner(nn.Identity().eval(), batch_metrics={"acc": metrics.Accuracy()}, device="cpu",
                    log_every_n_steps=1, quiet=True)  # fmt: skip
    for _ in range(2):  # two passes: a warning each
        with pytest.warns(UserWarning) as record:
            runner(loader)
        assert [str(w.message) for w in record] == [
            "Accuracy: the pass's first batch had all predictions in [0, 1], so they are taken as "
            "probabilities; later values outside [0, 1] were clipped: pass logits=True if the model outputs "
            "logits"
        ]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # told: no warning
        run_metrics(y_pred, y, {"acc": metrics.Accuracy(logits=False)})
        run_metrics(*logits_then_probabilities(), {"acc": metrics.Accuracy()})  # logits: nothing clipped


def test_a_resumed_pass_keeps_the_first_batchs_decision():
    y_pred, y = probabilities_then_logits()
    first, rest = (y_pred[:16], y[:16]), (y_pred[16:], y[16:])
    references = binary_references(y_pred.clamp(0, 1), y)
    for make, key in ((metrics.Accuracy, "acc"), (metrics.ROC_AUC, "auc")):
        whole, saved, resumed = make(), make(), make()
        with pytest.warns(UserWarning, match="were clipped"):
            assert feed(whole, [first, rest]).item() == pytest.approx(references[key])
        feed(saved, [first])
        resumed.reset()
        resumed.set_state(saved.get_state())  # decided by the first batch: probabilities
        resumed.update(*rest)
        with pytest.warns(UserWarning, match="were clipped"):
            assert resumed.compute().item() == pytest.approx(references[key])
        resumed.reset()  # a new pass decides anew
        resumed.update(*rest)
        assert resumed.get_state()["logits"] is True


def test_metrics_updated_with_the_same_logits_share_one_sigmoid(monkeypatch):
    calls = []
    sigmoid = torch.Tensor.sigmoid
    monkeypatch.setattr(torch.Tensor, "sigmoid", lambda t: calls.append(1) or sigmoid(t))
    y_pred, y = torch.randn(32, 3), torch.randint(0, 2, (32, 3))
    named = [metrics.Accuracy(), metrics.F1(), metrics.ROC_AUC(), metrics.Precision()]
    for m in named:
        m.update(y_pred, y)
    assert len(calls) == 1  # ours; torchmetrics gets probabilities and leaves them alone


def test_host_reads_per_update_in_logits_mode(monkeypatch):
    # the pass's first update: the logits guess and the 0/1 target check, each once for all the metrics;
    # later updates: the target check only (predictions are never read)
    reads = []
    for name in ("__bool__", "item", "__int__", "tolist"):
        original = getattr(torch.Tensor, name)

        def read(t, *args, _original=original):
            if sys._getframe(1).f_code.co_filename == metrics.__file__:
                reads[-1] += 1
            return _original(t, *args)

        monkeypatch.setattr(torch.Tensor, name, read)
    named = [metrics.Accuracy(), metrics.F1(), metrics.ROC_AUC(), metrics.Kappa()]
    for _ in range(3):
        reads.append(0)
        y_pred, y = torch.randn(32) * 3, torch.randint(0, 2, (32,)).float()
        for m in named:
            m.update(y_pred, y)
    assert reads == [2, 1, 1]


@pytest.mark.parametrize("make", [metrics.Accuracy, metrics.F1, metrics.ROC_AUC])
def test_soft_binary_and_multilabel_targets_are_an_error_not_truncated(make):
    message = (
        r"binary/multi-label targets must be 0 or 1, got 0\.1; threshold soft or smoothed labels first "
        r"\(e\.g\. \(y > 0\.5\)\.float\(\)\)$"
    )
    smoothed = torch.tensor([0.1, 0.9, 0.9, 0.1])  # label smoothing: 0.9 became 0 through .long()
    with pytest.raises(ValueError, match=message):
        make().update(torch.randn(4), smoothed)
    with pytest.raises(MetricError, match=rf"metric 'm' \({make.__name__}\) failed on .*: {message}"):
        run_metrics(torch.randn(8, 3), torch.tensor([[0.0, 1.0, 0.1]] * 8), {"m": make()})
    # 0/1 in any dtype is fine, and so is ignore_index
    make(ignore_index=-1).update(torch.randn(4), torch.tensor([0, 1, -1, 1]))


def test_integer_multilabel_targets_give_the_float_result():
    g = torch.Generator().manual_seed(5)
    y = torch.randint(0, 2, (64, 3), generator=g)
    y_pred = (y * 2 - 1) * 2.0 + torch.randn(64, 3, generator=g) * 2
    tmc = torchmetrics.classification
    refs = {
        metrics.Accuracy: tmc.MultilabelAccuracy(3, average="micro"),
        metrics.F1: tmc.MultilabelF1Score(3),
        metrics.ROC_AUC: tmc.MultilabelAUROC(3),
    }
    for make, ref in refs.items():
        expected = ref(y_pred, y).item()
        assert feed(make(), [(y_pred, y.float())]).item() == pytest.approx(expected), make
        assert feed(make(), [(y_pred[:30], y[:30]), (y_pred[30:], y[30:])]).item() == pytest.approx(expected)
        assert run_metrics(y_pred, y, {"m": make()})["m"] == pytest.approx(expected)
    assert metrics.infer_task(y_pred, y) == ("multilabel", 3)


def test_auc_leaves_out_labels_without_positives_or_negatives():
    from torchmetrics.functional.classification import binary_auroc

    g = torch.Generator().manual_seed(6)
    y = torch.randint(0, 2, (64, 4), generator=g).float()
    y[:, 2], y[:, 3] = 0, 1  # no AUC for labels 2 and 3
    y_pred = torch.randn(64, 4, generator=g) + y
    expected = sum(binary_auroc(y_pred[:, j], y[:, j].long()).item() for j in (0, 1)) / 2
    for log_every in (1, 3):
        assert run_metrics(y_pred, y, {"auc": metrics.ROC_AUC()}, log_every)["auc"] == pytest.approx(expected)
    # resumed midway: the counts are part of the state
    saved, resumed = metrics.ROC_AUC(), metrics.ROC_AUC()
    feed(saved, [(y_pred[:20], y[:20])])
    resumed.reset()
    resumed.set_state(saved.get_state())
    resumed.update(y_pred[20:], y[20:])
    assert resumed.compute().item() == pytest.approx(expected)
    # another average is torchmetrics' own
    with pytest.warns(UserWarning, match="No (positive|negative) samples in targets"):
        weighted = torchmetrics.classification.MultilabelAUROC(4, average="weighted")(y_pred, y.long())
    with pytest.warns(UserWarning, match="No (positive|negative) samples in targets"):
        assert feed(metrics.ROC_AUC(average="weighted"), [(y_pred, y)]).item() == pytest.approx(
            weighted.item()
        )
    # binary: undefined with one class in the pass's targets, however the batches held them
    only_negatives = [(y_pred[:32, 2], y[:32, 2]), (y_pred[32:, 2], y[32:, 2])]
    assert torch.isnan(feed(metrics.ROC_AUC(), only_negatives))
    assert math.isnan(run_metrics(y_pred[:, 3], y[:, 3], {"auc": metrics.ROC_AUC()})["auc"])


def test_a_model_with_several_outputs_is_told_to_pick_one():
    class TwoHeads(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Linear(4, 2)

        def forward(self, x):
            return self.body(x), self.body(x)[:, :1]

    loader = DataLoader(TensorDataset(torch.randn(32, 4), torch.randint(0, 2, (32,))), batch_size=16)
    for metric in (metrics.Accuracy(), metrics.MSE()):
        runner = Runner(TwoHeads().eval(), None, batch_metrics={"m": metric}, quiet=True)
        with pytest.raises(
            MetricError,
            match=r"failed on y_pred \(Tensor\(16, 2\) float32, Tensor\(16, 1\) float32\) and y Tensor\(16,\) "
            r"int64: it scores one tensor of outputs and the model returns several; pick one with "
            r"forward_fn=lambda model, batch: \(model\(batch\[0\]\)\[0\], batch\[1\]\)$",
        ):
            runner(loader)


def test_a_misspelt_option_is_named_when_the_metric_is_made():
    # the options reach torchmetrics only at the first update: a typo would surface there, or not at all
    with pytest.raises(ValueError, match=r"^TopKAccuracy has no option 'kk'; did you mean 'k'\? options: "):
        metrics.TopKAccuracy(kk=2)
    with pytest.raises(
        ValueError, match=r"Accuracy has no option 'ignore_idx'; did you mean 'ignore_index'\?"
    ):
        metrics.Accuracy(ignore_idx=-1)
    # torchmetrics' own options and those of every torchmetrics metric are taken
    metrics.ROC_AUC(max_fpr=0.5), metrics.F1(zero_division=1.0), metrics.Accuracy(sync_on_compute=False)
