"""The catalogue of metrics that accumulate over a whole epoch, built on torchmetrics.

What makes an object a metric (the contract) and the generic :class:`Mean`, :class:`Loss` and :class:`EPS`
are in :mod:`xt_training.metric_contract`; they are importable from here too.

**Classification tasks.** :class:`Accuracy`, :class:`ROC_AUC`, :class:`F1`, ... infer the task from
the first batch they see, unless ``task=`` is given:

- predictions of shape ``(N,)`` or ``(N, 1)``: binary;
- targets of the same shape ``(N, L, ...)`` as the predictions, of any dtype: multi-label with L labels;
- otherwise predictions ``(N, C, ...)`` and integer targets ``(N, ...)``: multiclass with C classes.

A 2-column head with ``task='binary'`` is binary too: the softmax of its second column is the probability
of class 1. :class:`F1`, :class:`Precision` and :class:`Recall` give the positive class's value for two
classes whatever the head's shape (scikit-learn's convention), the macro average for more.

Binary and multi-label targets must be 0 or 1: soft or smoothed labels are a ``ValueError`` (an
integer conversion would silently make 0.9 a 0).

**Logits or probabilities** are decided once per pass, not per update as in torchmetrics (whose
answer would depend on how the loop groups batches): ``logits=None`` (the default) takes the first
update since ``reset()`` (in the loop: the pass's first batch) as logits if any value is outside
[0, 1]; ``logits=True``/``False`` skips the guess. Logits go through a sigmoid (binary, multi-label)
or a softmax over dim 1 (multiclass, for :class:`ROC_AUC`: the top-class metrics and
:class:`TopKAccuracy` read only the order of the scores) in every update. Taken as probabilities,
later values outside [0, 1] are clipped to [0, 1], with a warning once per pass when it was a guess.
The decision is part of ``get_state()``: a pass resumed midway keeps it.

:class:`ROC_AUC` averages over the classes or labels that have both positives and negatives in the
pass's targets (the others have no AUC); a binary AUC with one class only is NaN.

**Other problem shapes.** :class:`IoU` and :class:`Dice` score segmentation masks per pixel, over every
pixel of the epoch, with the same task inference (logits ``(N, C, H, W)`` and class masks ``(N, H, W)``:
multiclass). :class:`MSE`, :class:`MAE` and :class:`R2` score regression outputs;
:class:`MeanAveragePrecision` scores detected boxes (torchvision's detection format).

torchmetrics is imported when a metric is made, so ``import xt_training`` stays fast, and only the parts of it
that the metrics use (:mod:`xt_training.torchmetrics_parts`: ~0.5 s instead of ~4.5 s of CPU where torchvision,
transformers and scipy are installed).

"""

from __future__ import annotations

import functools
import warnings
import weakref
from collections.abc import Callable, Mapping
from typing import Any

import torch

from .batch import describe
from .errors import ConfigError
from .metric_contract import EPS, Loss, Mean, Metric, _all_reduce, as_metric, get_state, set_state, set_sync
from .torchmetrics_parts import import_part

__all__ = [
    "Metric",
    "as_metric",
    "Mean",
    "Loss",
    "EPS",
    "Accuracy",
    "TopKAccuracy",
    "ROC_AUC",
    "F1",
    "Precision",
    "Recall",
    "Kappa",
    "ConfusionMatrix",
    "IoU",
    "Dice",
    "MSE",
    "MAE",
    "R2",
    "MeanAveragePrecision",
]


def _not_tensors(y_pred: Any, y: Any) -> str:
    """Why a metric that scores one tensor of outputs cannot take these (the loop names their shapes)."""
    if isinstance(y_pred, (tuple, list, Mapping)) and isinstance(y, torch.Tensor):
        first = "[0]" if isinstance(y_pred, (tuple, list)) else f"[{next(iter(y_pred), 'key')!r}]"
        return (
            "it scores one tensor of outputs and the model returns several; pick one with "
            f"forward_fn=lambda model, batch: (model(batch[0]){first}, batch[1])"
        )
    return f"it takes tensors, got y_pred {describe(y_pred)} and y {describe(y)}"


def infer_task(y_pred: torch.Tensor, y: torch.Tensor) -> tuple[str, int]:
    """Return ``(task, n)``: ``('binary', 1)``, ``('multilabel', labels)`` or ``('multiclass', classes)``."""
    if y_pred.ndim <= 1 or y_pred.shape[1] == 1:
        return "binary", 1
    if y.shape == y_pred.shape:  # integer 0/1 targets too: multiclass targets have no class dimension
        return "multilabel", y_pred.shape[1]
    return "multiclass", y_pred.shape[1]


def _per_tensor(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn(t, ...)`` computed once per tensor ``t``: repeated calls with the last tensor (and the same
    other arguments) return the last result, so the metrics updated with the same tensors share it.
    Recomputed for another tensor, or for the same one changed in place (its ``_version`` counter).
    """
    last: list[Any] = [None, -1, None, None]  # weak reference to t, its version, the other arguments, result

    @functools.wraps(fn)
    def cached(t: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        ref, version, others, result = last
        if ref is None or ref() is not t or version != t._version or others != (args, kwargs):
            result = fn(t, *args, **kwargs)
            last[:] = weakref.ref(t), t._version, (args, kwargs), result
        return result

    return cached


@_per_tensor
def predicted_labels(y_pred: torch.Tensor) -> torch.Tensor:
    """The predicted classes ``y_pred.argmax(1)`` of multiclass scores ``(N, C, ...)``.

    Computed once per tensor: the metrics that the loop updates with the same ``y_pred`` (Accuracy, F1,
    ...) share them instead of each taking its own argmax inside torchmetrics, the largest part of
    their update. ``max(1).indices`` picks the same (first) index as ``argmax(1)``, ties and NaN
    included, in a third of its time on the CPU.
    """
    return y_pred.max(1).indices


@_per_tensor
def label_range(y: torch.Tensor, ignore_index: int | None = None) -> tuple[int, int]:
    """The smallest and largest label in ``y`` (leaving out ``ignore_index``); ``(0, 0)`` for none.

    A host read, computed once per tensor like :func:`predicted_labels`: the metrics updated with the
    same ``y`` share it.
    """
    labels = y if ignore_index is None else y[y != ignore_index]
    if not labels.numel():
        return 0, 0
    low, high = torch.aminmax(labels)
    return int(low), int(high)


@_per_tensor
def check_binary_targets(y: torch.Tensor, ignore_index: int | None = None) -> None:
    """Raise ``ValueError`` unless every binary/multi-label target is 0 or 1 (or ``ignore_index``).

    One host read, once per tensor like :func:`label_range`. Soft targets would otherwise be truncated
    by the integer conversion torchmetrics needs (0.9 counted as 0).
    """
    valid = (y == 0) | (y == 1)
    if ignore_index is not None:
        valid |= y == ignore_index
    if not bool(valid.all()):
        bad = y[~valid][0].item()
        raise ValueError(
            f"binary/multi-label targets must be 0 or 1, got {bad:g}; "
            "threshold soft or smoothed labels first (e.g. (y > 0.5).float())"
        )


@_per_tensor
def outside_unit_interval(y_pred: torch.Tensor) -> torch.Tensor:
    """Whether any value of ``y_pred`` is outside [0, 1], as a tensor on its device (no host read)."""
    return ((y_pred < 0) | (y_pred > 1)).any()


@_per_tensor
def looks_like_logits(y_pred: torch.Tensor) -> bool:
    """:func:`outside_unit_interval` read to the host, once per tensor for all the metrics."""
    return bool(outside_unit_interval(y_pred))


@_per_tensor
def probabilities(y_pred: torch.Tensor, how: str) -> torch.Tensor:
    """``y_pred`` through a ``'sigmoid'``, a ``'softmax'`` over dim 1, or ``'clip'``-ped to [0, 1].

    Once per tensor: Accuracy, F1, ... updated with the same logits share one sigmoid.
    """
    if how == "sigmoid":
        return y_pred.sigmoid()
    if how == "softmax":
        return y_pred.softmax(1)
    return y_pred.clamp(0, 1)


@functools.cache
def _warm_torchmetrics() -> None:
    """Import torchmetrics.classification and build one metric, once per process, when a metric is made.

    The torchmetrics metric itself is built at the first update (it needs the task), and the first one
    built in a process checks package versions (~5 ms through importlib.metadata): paid here, with the
    import, rather than inside the first training pass, where it would slow its first steps.
    """
    import_part("torchmetrics.classification").BinaryAccuracy()


class _Classification:
    """Base of the classification metrics: builds the torchmetrics metric once the task is known.

    Multiclass scores are turned into labels here (:func:`predicted_labels`) for the metrics that only
    use the top class. torchmetrics validates the first update's inputs; later updates skip its checks
    (they sort the labels each time) unless ``validate_args=True`` is given; the label-range and 0/1
    target checks below run on every update.

    ``logits``: whether the predictions are logits (``None``: decided by the first update of each pass,
    see the module's docstring). Probabilities are computed here, so torchmetrics, which decides per
    update call, always gets values in [0, 1] and never transforms them itself.
    """

    #: which way the value improves (torchmetrics' attribute; ``monitor`` takes its mode from it)
    higher_is_better: bool | None = True
    #: the tasks a subclass supports
    tasks: tuple[str, ...] = ("binary", "multiclass", "multilabel")
    #: the torchmetrics.classification classes of the binary, multiclass and multi-label tasks
    _names: tuple[str | None, str | None, str | None] = (None, None, None)
    #: whether the multiclass metric reads the top class only (not the scores)
    uses_labels = True
    #: whether the multiclass metric reads the scores' values, not only their order (then softmaxed)
    uses_probabilities = False

    def __init__(
        self,
        task: str | None = None,
        num_classes: int | None = None,
        logits: bool | None = None,
        **kwargs: Any,
    ):
        if task is not None and task not in self.tasks:
            raise ValueError(
                f"{type(self).__name__}: task must be one of {', '.join(self.tasks)}, not {task!r}"
            )
        _warm_torchmetrics()
        self._check_options(kwargs)
        self.task = task
        self.num_classes = num_classes
        self.logits = logits
        self.kwargs = kwargs
        self.sync = True
        self._metric: Any = None
        self._is_logits = logits  # this pass's decision
        self._clipped: torch.Tensor | None = None  # whether probabilities were clipped this pass
        self._warned = False

    def _build(self, task: str, n: int) -> Any:
        raise NotImplementedError

    def _class(self, task: str) -> Any:
        """The torchmetrics class of ``task``."""
        return getattr(
            import_part("torchmetrics.classification"),
            self._names[("binary", "multiclass", "multilabel").index(task)],
        )

    def _check_options(self, options: Mapping[str, Any]) -> None:
        """Options go to torchmetrics when the task is known (the first update): a misspelt one is named now."""
        import inspect

        def parameters(fn: Any) -> set[str]:
            return set(inspect.signature(fn).parameters) - {"self", "args", "kwargs"}

        known = set(_TORCHMETRICS_OPTIONS).union(*(parameters(self._class(t)) for t in self.tasks))
        unknown = [k for k in options if k not in known]
        if unknown:
            import difflib

            own = set().union(*(parameters(c.__init__) for c in type(self).__mro__ if "__init__" in vars(c)))
            every = sorted((known | own) - {"num_classes", "num_labels", "task"})
            close = difflib.get_close_matches(unknown[0], every, n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ValueError(
                f"{type(self).__name__} has no option {unknown[0]!r}; {hint}options: {', '.join(every)}"
            )

    def _probabilities(self, y_pred: torch.Tensor, how: str) -> torch.Tensor:
        """``y_pred`` as probabilities in [0, 1], the same way for every update of the pass."""
        if not y_pred.is_floating_point():  # predicted labels: torchmetrics takes them as they are
            return y_pred
        if self._is_logits is None:  # the pass's first update decides (a host read, once a pass)
            self._is_logits = looks_like_logits(y_pred)
        if self._is_logits:
            return probabilities(y_pred, how)
        if self.logits is None:  # a guess, maybe wrong: compute() warns if it clipped anything
            outside = outside_unit_interval(y_pred)  # kept on the device: no host read per update
            self._clipped = outside if self._clipped is None else self._clipped | outside
        return probabilities(y_pred, "clip")  # whether needed or not: knowing would cost a host read

    def _binary(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The probabilities of class 1, ``(N, ...)``, of a 1-logit or a 2-column head, and the 0/1 targets."""
        check_binary_targets(y, self.kwargs.get("ignore_index"))
        if y_pred.ndim >= 2 and y_pred.shape[1] == 2:  # two columns (task='binary'): the second one's
            preds = self._probabilities(y_pred, "softmax")[:, 1]
        else:
            preds = self._probabilities(y_pred, "sigmoid")  # before the reshape: shared per tensor
            preds = preds.reshape(preds.shape[0], *preds.shape[2:]) if preds.ndim >= 2 else preds
        return preds, y.reshape(preds.shape).long()

    def _prepare(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self.task == "binary":
            return self._binary(y_pred, y)
        if self.task == "multilabel":
            check_binary_targets(y, self.kwargs.get("ignore_index"))
            return self._probabilities(y_pred, "sigmoid"), y.long()
        # torchmetrics counts an out-of-range label silently as wrong; name it instead
        # (a host read, but metrics update only at logging steps)
        low, high = label_range(y, self.kwargs.get("ignore_index"))
        if low < 0 or high >= self.num_classes:
            raise ValueError(
                f"labels must be in 0..{self.num_classes - 1} for {self.num_classes} classes, got {low}..{high}"
            )
        if self.uses_labels and y_pred.ndim == y.ndim + 1 and self.kwargs.get("top_k", 1) == 1:
            return predicted_labels(y_pred), y.long()
        if self.uses_probabilities:
            return self._probabilities(y_pred, "softmax"), y.long()
        return y_pred, y.long()

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(_not_tensors(y_pred, y))
        if self._metric is None:
            task, n = infer_task(y_pred, y)
            self.task = self.task or task
            if self.task not in self.tasks:
                raise ValueError(f"{type(self).__name__} does not support the {self.task} task")
            self.num_classes = self.num_classes or n
            self._metric = self._build(self.task, self.num_classes).to(y_pred.device)
            set_sync(self._metric, self.sync)
        preds, target = self._prepare(y_pred, y)
        self._metric.update(preds, target)
        if "validate_args" not in self.kwargs:
            self._metric.validate_args = False  # the first update was checked

    def compute(self) -> torch.Tensor:
        if self._metric is None:
            return torch.tensor(float("nan"))
        if self._clipped is not None and not self._warned and bool(self._clipped):
            self._warned = True
            warnings.warn(
                f"{type(self).__name__}: the pass's first batch had all predictions in [0, 1], so they are "
                "taken as probabilities; later values outside [0, 1] were clipped: pass logits=True if the "
                "model outputs logits",
                stacklevel=2,
            )
        return self._metric.compute()

    def reset(self) -> None:
        if self._metric is not None:
            self._metric.reset()
        self._is_logits, self._clipped, self._warned = self.logits, None, False

    def set_sync(self, enabled: bool) -> None:
        self.sync = enabled
        if self._metric is not None:
            set_sync(self._metric, enabled)

    def get_state(self) -> dict[str, Any] | None:
        if self._metric is None:
            return None
        return {
            "task": self.task,
            "n": self.num_classes,
            "inner": get_state(self._metric),
            "logits": self._is_logits,  # a pass resumed midway goes on with its first batch's decision
            "clipped": self._clipped,
            **self._extra_state(),
        }

    def set_state(self, state: dict[str, Any] | None) -> None:
        if state is None:
            return
        self.task, self.num_classes = state["task"], state["n"]
        if self._metric is None:
            self._metric = self._build(self.task, self.num_classes)
        set_state(self._metric, state["inner"])
        self._is_logits, self._clipped = state.get("logits", self.logits), state.get("clipped")
        self._load_extra_state(state)

    def _extra_state(self) -> dict[str, Any]:
        return {}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        pass

    def __repr__(self) -> str:
        args = [f"task={self.task!r}"] if self.task else []
        args += [f"logits={self.logits!r}"] if self.logits is not None else []
        args += [f"{k}={v!r}" for k, v in self.kwargs.items()]
        return f"{type(self).__name__}({', '.join(args)})"


#: what every torchmetrics metric takes besides its own options (torchmetrics.Metric.__init__'s keywords)
_TORCHMETRICS_OPTIONS = (
    "compute_on_cpu", "dist_sync_on_step", "process_group", "dist_sync_fn", "distributed_available_fn",
    "sync_on_compute", "compute_with_cache",
)  # fmt: skip


def _task_kwargs(task: str, n: int) -> dict[str, int]:
    return {"num_classes": n} if task == "multiclass" else {"num_labels": n} if task == "multilabel" else {}


class Accuracy(_Classification):
    """Fraction of correct predictions (micro average: every example counts once)."""

    _names = ("BinaryAccuracy", "MulticlassAccuracy", "MultilabelAccuracy")

    def _build(self, task: str, n: int) -> Any:
        kw = {} if task == "binary" else {"average": "micro"}
        return self._class(task)(**_task_kwargs(task, n), **{**kw, **self.kwargs})


class TopKAccuracy(_Classification):
    """Fraction of examples whose label is among the ``k`` highest-scored classes (multiclass)."""

    tasks = ("multiclass",)
    uses_labels = False
    _names = (None, "MulticlassAccuracy", None)

    def __init__(self, k: int = 5, **kwargs: Any):
        super().__init__(**kwargs)
        self.k = k

    def _build(self, task: str, n: int) -> Any:
        if self.k > n:
            raise ValueError(
                f"TopKAccuracy(k={self.k}) needs at least {self.k} classes, the predictions have {n}"
            )
        return self._class(task)(num_classes=n, top_k=self.k, **{"average": "micro", **self.kwargs})


class ROC_AUC(_Classification):  # noqa: N801 - the seed's name
    """Area under the ROC curve over the whole epoch.

    Multiclass (one-vs-rest AUC per class) and multi-label (per label): averaged over the classes or
    labels that have both positives and negatives in the epoch's targets (the AUC of the others is
    undefined; torchmetrics would count it as 0). Binary: NaN when the targets hold one class only.
    An ``average`` other than ``'macro'`` is left to torchmetrics.
    """

    uses_labels = False
    uses_probabilities = True
    _names = ("BinaryAUROC", "MulticlassAUROC", "MultilabelAUROC")
    _counts: torch.Tensor | None = None  # (2, classes or labels): the positives and negatives so far

    @property
    def _own_average(self) -> bool:
        """Whether compute() averages the per-class AUCs itself, over the classes with an AUC."""
        return self.task == "binary" or self.kwargs.get("average", "macro") == "macro"

    def _build(self, task: str, n: int) -> Any:
        average = {"average": None} if self._own_average and task != "binary" else {}
        return self._class(task)(**_task_kwargs(task, n), **{**self.kwargs, **average})

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        super().update(y_pred, y)
        if not self._own_average:
            return
        if self.task == "multiclass":
            positives = torch.bincount(
                y.reshape(-1).long().clamp(0, self.num_classes - 1), minlength=self.num_classes
            )
            counts = torch.stack([positives, positives.sum() - positives])
        else:  # 0/1 targets (checked), one row per label
            per_label = (
                y.reshape(1, -1) if self.task == "binary" else y.movedim(1, 0).reshape(self.num_classes, -1)
            )
            counts = torch.stack([(per_label == 1).sum(1), (per_label == 0).sum(1)])
        self._counts = counts if self._counts is None else self._counts + counts

    def compute(self) -> torch.Tensor:
        with warnings.catch_warnings():  # classes without both are left out below, not counted as 0
            if self._own_average:
                warnings.filterwarnings("ignore", message="No (positive|negative) samples in targets")
            value = super().compute()
        if not self._own_average or self._counts is None:
            return value
        present = (_all_reduce(self._counts, self.sync) > 0).all(0)  # both positives and negatives seen
        return value.reshape(-1)[present].mean() if bool(present.any()) else torch.tensor(float("nan"))

    def reset(self) -> None:
        super().reset()
        self._counts = None

    def _extra_state(self) -> dict[str, Any]:
        return {"counts": self._counts}

    def _load_extra_state(self, state: dict[str, Any]) -> None:
        counts = state["counts"]
        if counts is not None and counts.ndim == 1:  # saved by an older version: multiclass positives only
            counts = torch.stack([counts, counts.sum() - counts])
        self._counts = counts


class _Averaged(_Classification):
    """Dice: ``average='macro'`` over classes by default (multiclass/multi-label)."""

    def __init__(self, average: str = "macro", **kwargs: Any):
        super().__init__(**kwargs)
        self.average = average

    def _build(self, task: str, n: int) -> Any:
        kw = {} if task == "binary" else {"average": self.average}
        return self._class(task)(**_task_kwargs(task, n), **{**kw, **self.kwargs})


#: the values of ``average`` that F1, precision and recall take ('auto': see :class:`_PositiveClass`)
_AVERAGES = ("auto", "binary", "macro", "micro", "weighted", None)


class _PositiveClass(_Classification):
    """F1, precision and recall, with scikit-learn's conventions whatever the head's shape.

    Two classes -- a 1-logit head, a 2-column head, or ``task='binary'`` -- give the value of class
    ``pos_label`` (1 by default; scikit-learn's ``average='binary'``). An example is predicted as class 1
    where the probability of class 1 is above ``threshold`` (a 2-column head at the default 0.5: where its
    second column is the larger). More classes, or multi-label: the macro average. The default,
    ``average='auto'``, means just this; ``'macro'``, ``'micro'`` and ``'weighted'`` average over the
    classes (labels) instead, and ``None`` (or ``'none'``, as in torchmetrics and on the command line:
    ``--metric-opt f1.average=none``) reports one value per class, as the columns ``f1/0``,
    ``f1/1``, ... of the history. What was averaged, when it is not the default, is in the run's notices
    (the console and ``notes.txt``): ``note``.
    """

    _two = False  # whether the problem has two classes (known at the first update)

    def __init__(
        self, average: str | None = "auto", pos_label: int = 1, threshold: float = 0.5, **kwargs: Any
    ):
        name = type(self).__name__
        if average == "none":  # torchmetrics' spelling of None, and what a command line can write
            average = None
        if average not in _AVERAGES:
            raise ValueError(
                f"{name}: average must be one of {', '.join(map(repr, _AVERAGES))}, not {average!r}"
            )
        if isinstance(pos_label, bool) or pos_label not in (0, 1):
            raise ValueError(f"{name}: pos_label must be 0 or 1 (the class of two whose value is reported)")
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0 <= threshold <= 1:
            raise ValueError(f"{name}: threshold must be a probability in [0, 1], not {threshold!r}")
        super().__init__(**kwargs)
        self.average, self.pos_label, self.threshold = average, pos_label, float(threshold)
        self.note: str | None = None  # what was averaged, when it is not the default

    def _build(self, task: str, n: int) -> Any:
        self._two = task == "binary" or (task == "multiclass" and n == 2)
        if self._two:  # per class (compute() picks pos_label's) or averaged over the two
            average = None if self.average in ("auto", "binary") else self.average
            if average is not None:
                self.note = f"{average} average of the 2 classes (the default: class 1's value)"
            elif self.average is not None and self.pos_label != 1:
                self.note = "class 0's value (pos_label=0; the default: class 1's)"
            return self._class("multiclass")(num_classes=2, average=average, **self.kwargs)
        what = "labels" if task == "multilabel" else "classes"
        if self.average == "binary" or self.pos_label != 1:
            option = "average='binary'" if self.average == "binary" else "pos_label"
            raise ValueError(
                f"{type(self).__name__}: {option} is for two classes and the predictions have {n} {what}; "
                "use average='macro', 'micro', 'weighted' or None (one value per class)"
            )
        average = "macro" if self.average == "auto" else self.average
        if average not in ("macro", None):
            self.note = f"{average} average of the {n} {what} (the default: the macro average)"
        options = {"threshold": self.threshold} if task == "multilabel" else {}
        return self._class(task)(**_task_kwargs(task, n), average=average, **options, **self.kwargs)

    def _prepare(self, y_pred: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        if self._two and (self.task == "binary" or self.threshold != 0.5):
            preds, target = self._binary(y_pred, y)
            return (preds > self.threshold).long(), target  # the predicted classes, as torchmetrics' binary
        return super()._prepare(y_pred, y)  # a 2-column head's top class (argmax); more classes; multi-label

    def compute(self) -> Any:
        value = super().compute()
        if self._metric is None:
            return value
        if self.average is None:  # one history column per class: f1/0, f1/1, ...
            return {str(i): v for i, v in enumerate(value)}
        return value[self.pos_label] if self._two and self.average in ("auto", "binary") else value


class F1(_PositiveClass):
    """F1 score (harmonic mean of precision and recall)."""

    _names = ("BinaryF1Score", "MulticlassF1Score", "MultilabelF1Score")


class Precision(_PositiveClass):
    """Precision: the fraction of positive predictions that are correct."""

    _names = ("BinaryPrecision", "MulticlassPrecision", "MultilabelPrecision")


class Recall(_PositiveClass):
    """Recall: the fraction of positive examples that are found."""

    _names = ("BinaryRecall", "MulticlassRecall", "MultilabelRecall")


class Kappa(_Classification):
    """Cohen's kappa: agreement between predictions and labels beyond chance."""

    tasks = ("binary", "multiclass")
    _names = ("BinaryCohenKappa", "MulticlassCohenKappa", None)

    def _build(self, task: str, n: int) -> Any:
        return self._class(task)(**_task_kwargs(task, n), **self.kwargs)


class ConfusionMatrix(_Classification):
    """Confusion matrix (rows: true class, columns: predicted class); reported as a nested list."""

    higher_is_better = None  # a matrix: not a value to monitor

    _names = ("BinaryConfusionMatrix", "MulticlassConfusionMatrix", "MultilabelConfusionMatrix")

    def _build(self, task: str, n: int) -> Any:
        return self._class(task)(**_task_kwargs(task, n), **self.kwargs)


class IoU(_Classification):
    """Intersection over union (Jaccard index), e.g. the mean IoU of segmentation masks.

    Per class, over every pixel (or example) of the epoch: the intersection and union are summed over the
    epoch before dividing, then averaged over the classes that occur in the predictions or targets
    (``average='macro'``). Binary (``(N, 1, H, W)`` logits): the IoU of the positive class.
    ``ignore_index`` leaves out pixels of that target value (e.g. unlabelled borders).
    """

    _names = ("BinaryJaccardIndex", "MulticlassJaccardIndex", "MultilabelJaccardIndex")

    def __init__(self, average: str = "macro", **kwargs: Any):
        super().__init__(**kwargs)
        self.average = average

    def _build(self, task: str, n: int) -> Any:
        kw = {} if task == "binary" else {"average": self.average}
        return self._class(task)(**_task_kwargs(task, n), **{**kw, **self.kwargs})


class Dice(_Averaged):
    """Dice coefficient ``2|A & B| / (|A| + |B|)`` per class, over every pixel of the epoch, macro-averaged.

    Per class it equals the F1 score of the pixels (which is how it is computed); see :class:`IoU` for
    the tasks and options.
    """

    _names = ("BinaryF1Score", "MulticlassF1Score", "MultilabelF1Score")


class _Regression:
    """Base of the regression metrics: a torchmetrics regression metric that accepts ``(N, 1)`` vs ``(N,)``."""

    _name = ""  # the class in torchmetrics.regression
    higher_is_better = False  # an error; R2 says otherwise

    def __init__(self, **kwargs: Any):
        self.kwargs = kwargs
        self.sync = True
        self._metric = getattr(import_part("torchmetrics.regression"), self._name)(**kwargs)

    def update(self, y_pred: torch.Tensor, y: torch.Tensor) -> None:
        if not isinstance(y_pred, torch.Tensor) or not isinstance(y, torch.Tensor):
            raise TypeError(_not_tensors(y_pred, y))
        if y_pred.shape != y.shape:
            if y_pred.numel() != y.numel():
                raise ValueError(
                    f"predictions {tuple(y_pred.shape)} and targets {tuple(y.shape)} differ in shape; "
                    "the model needs one output per target value"
                )
            y_pred = y_pred.reshape(y.shape)  # (N, 1) outputs for (N,) targets
        if self._metric.device != y_pred.device:
            self._metric = self._metric.to(y_pred.device)
        self._metric.update(y_pred.float(), y.float())

    def compute(self) -> torch.Tensor:
        if self._metric.update_count == 0:
            return torch.tensor(float("nan"))
        return self._metric.compute()

    def reset(self) -> None:
        self._metric.reset()

    def set_sync(self, enabled: bool) -> None:
        self.sync = enabled
        set_sync(self._metric, enabled)

    def get_state(self) -> dict[str, Any] | None:
        return get_state(self._metric)

    def set_state(self, state: dict[str, Any]) -> None:
        set_state(self._metric, state)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.kwargs.items())})"


class MSE(_Regression):
    """Mean squared error over the epoch (``squared=False``: its root, RMSE)."""

    _name = "MeanSquaredError"


class MAE(_Regression):
    """Mean absolute error over the epoch."""

    _name = "MeanAbsoluteError"


class R2(_Regression):
    """Coefficient of determination R² over the epoch (several outputs: averaged uniformly)."""

    _name = "R2Score"
    higher_is_better = True


class MeanAveragePrecision:
    """COCO mean average precision of detected boxes over the epoch (torchmetrics ``MeanAveragePrecision``).

    ``y_pred`` is a list of ``{'boxes', 'scores', 'labels'}`` per image and ``y`` a list of
    ``{'boxes', 'labels'}``: torchvision's detection format, boxes as ``(x1, y1, x2, y2)`` unless
    ``box_format`` says otherwise. ``key`` picks the value reported: ``'map'`` (IoU 0.5:0.95),
    ``'map_50'``, ``'map_75'``, ``'mar_100'``, ... A detection model in training mode returns its
    losses instead of boxes: those batches are skipped, so a training pass reports NaN.

    Needs pycocotools or faster-coco-eval (``pip install pycocotools``).
    """

    higher_is_better = True  # every key: precisions and recalls

    def __init__(self, key: str = "map", box_format: str = "xyxy", **kwargs: Any):
        import importlib.util

        TorchmetricsMAP = import_part("torchmetrics.detection").MeanAveragePrecision  # noqa: N806

        backend = kwargs.pop("backend", None)
        if backend is None:
            found = [b for b in ("pycocotools", "faster_coco_eval") if importlib.util.find_spec(b)]
            if not found:
                raise ConfigError(
                    "metric MeanAveragePrecision needs pycocotools or faster-coco-eval; "
                    "pip install pycocotools"
                )
            backend = found[0]
        self.key = key
        self.kwargs = {"box_format": box_format, **kwargs}
        self.sync = True
        self._metric = TorchmetricsMAP(box_format=box_format, backend=backend, **kwargs)
        self._images = 0

    def update(self, y_pred: Any, y: Any) -> None:
        if isinstance(y_pred, Mapping):  # a detection model's losses (training mode): no boxes to score
            return
        if not isinstance(y_pred, (list, tuple)) or not isinstance(y, (list, tuple)) or len(y_pred) != len(y):
            raise TypeError(
                f"expects a list of per-image dicts of predictions and one of targets, of the same length; "
                f"got y_pred {describe(y_pred)} and y {describe(y)}"
            )
        if y_pred and self._metric.device != y_pred[0]["boxes"].device:
            self._metric = self._metric.to(y_pred[0]["boxes"].device)
        self._metric.update(list(y_pred), list(y))
        self._images += len(y)

    def compute(self) -> torch.Tensor:
        if not self._images:
            return torch.tensor(float("nan"))
        values = self._metric.compute()
        if self.key not in values:
            raise KeyError(f"no value {self.key!r}; the values are {', '.join(sorted(values))}")
        return values[self.key]

    def reset(self) -> None:
        self._metric.reset()
        self._images = 0

    def set_sync(self, enabled: bool) -> None:
        self.sync = enabled
        set_sync(self._metric, enabled)

    def get_state(self) -> dict[str, Any]:
        return {"inner": get_state(self._metric), "images": self._images}

    def set_state(self, state: dict[str, Any]) -> None:
        set_state(self._metric, state["inner"])
        self._images = state["images"]

    def __repr__(self) -> str:
        return f"MeanAveragePrecision(key={self.key!r})"
