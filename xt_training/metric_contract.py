"""The metric contract the loop relies on, and the generic metrics: :class:`Mean`, :class:`Loss`, :class:`EPS`.

**The metric contract.** Anything with ``update(y_pred, y)``, ``compute()`` and ``reset()`` is a
metric, so every ``torchmetrics.Metric`` works as it is. A plain callable ``fn(y_pred, y) -> tensor``
is wrapped in :class:`Mean`: the epoch value is the mean of its per-batch values, weighted by batch
size, as a hand-written loop computes it.

The loop calls ``update`` with *several batches concatenated* (at some logging steps, not at every
step: that keeps the per-step cost of metrics near zero), so ``update`` must accumulate, not average
per call. A metric whose value over several batches is not what it accumulates from each (a PSNR, a
median) sets ``per_batch = True`` and gets one ``update`` per batch (still at logging steps), so that
its value does not depend on how the loop groups batches (:class:`Mean` does).
``compute()`` returns the value over everything since the last ``reset()``: the epoch AUC is the
AUC of all the epoch's examples, not a mean of per-batch AUCs.

**Direction.** ``higher_is_better`` (torchmetrics' attribute), True or False, says which way the value
improves: ``monitor`` takes its mode from it, and a metric without one can be monitored only with an
explicit ``mode``. A plugin may declare it when it registers the metric instead
(``register(..., higher_is_better=False)``).

**Several values, notes.** A ``compute()`` that returns a dict is reported as one value per key
(``f1/0``, ``f1/1``, ...). A ``note`` attribute (a line, e.g. what was averaged) is shown once per run.

A metric need not read its arguments: a value recorded elsewhere during the pass (e.g. the mean
episode return an RL data set keeps, see docs/rl.md) is a metric whose ``update()`` does nothing,
whose ``reset()`` marks the start of the pass and whose ``compute()`` reads the value.

**Size-only metrics.** A metric that also has ``update_size(n)`` gets only the number of examples
since its last update (at each logging step), never the outputs (:class:`EPS`): when every metric of a
pass is size-only, the loop keeps no outputs at all. Holding each batch's outputs until the metrics'
update costs a few microseconds a step (allocations, copies) on a small model.

The catalogue of metrics (accuracy, AUC, F1, ...) is :mod:`xt_training.metrics`.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from .batch import batch_size
from .errors import ConfigTypeError

__all__ = ["Metric", "as_metric", "Mean", "Loss", "EPS", "get_state", "set_state", "set_sync"]


@runtime_checkable
class Metric(Protocol):
    """What the loop needs of a metric (``torchmetrics.Metric`` satisfies it)."""

    def update(self, y_pred: Any, y: Any) -> None: ...

    def compute(self) -> Any: ...

    def reset(self) -> None: ...


def as_metric(obj: Any, name: str = "metric") -> Metric:
    """Return ``obj`` if it follows the metric contract, wrap a plain callable in :class:`Mean`."""
    if all(callable(getattr(obj, m, None)) for m in ("update", "compute", "reset")):
        return obj
    if callable(obj):
        return Mean(obj)
    if isinstance(obj, str):  # a registered name: the registry builds it (F.train takes objects)
        raise ConfigTypeError(
            f"metric {name!r} is the name {obj!r}, not a metric; pass the metric itself, e.g. "
            f"{{{name!r}: xt_training.create_metric({obj!r})}} (`xt list metrics`)"
        )
    raise ConfigTypeError(
        f"metric {name!r} is {_shown(obj)}, not a metric; pass an object with update(y_pred, y), compute() and "
        "reset() (any torchmetrics.Metric, or one of xt_training.metrics), or a function fn(y_pred, y) -> tensor"
    )


def _shown(obj: Any) -> str:
    """``the int 3`` for a number or None, else ``a list``: no long values in a one-line message."""
    if isinstance(obj, (int, float)):
        return f"the {type(obj).__name__} {obj!r}"
    return "None" if obj is None else f"a {type(obj).__name__}"


class Mean:
    """The epoch mean of ``fn(y_pred, y)``'s per-batch values, weighted by batch size (a hand loop's value).

    The loop calls it once per batch (``per_batch``): ``fn`` of several batches at once would give another
    value wherever it is not a mean over examples (a PSNR of the batches' joint error). A ``fn`` with
    ``reduction='sum'`` (a loss, or a function given that attribute) returns a batch's sum: the value is
    then the epoch's sum divided by its examples, as for the training loss.
    ``higher_is_better``: which way the value improves, for ``monitor`` (``None``: not known).
    """

    higher_is_better: bool | None = None
    per_batch = True

    def __init__(self, fn: Callable[[Any, Any], Any], higher_is_better: bool | None = None):
        self.fn = fn
        self.summed = getattr(fn, "reduction", None) == "sum"
        if higher_is_better is not None:  # else the class's (a Loss: lower)
            self.higher_is_better = higher_is_better
        self.sync = True
        self.reset()

    def update(self, y_pred: Any, y: Any) -> None:
        n = batch_size(y)
        value = torch.as_tensor(self.fn(y_pred, y)).detach().float()
        if value.numel() != 1:
            raise ValueError(f"{_name(self.fn)} returned shape {tuple(value.shape)}; it must return a scalar")
        # stays a device tensor: no host-device synchronisation until compute()
        self._sum = self._sum + (value.reshape(()) if self.summed else value.reshape(()) * n)
        self._n += n

    def compute(self) -> torch.Tensor:
        total = _all_reduce(
            torch.stack([torch.as_tensor(self._sum, dtype=torch.float32), torch.tensor(float(self._n))]),
            self.sync,
        )
        return total[0] / total[1] if total[1] else torch.tensor(float("nan"))

    def set_sync(self, enabled: bool) -> None:
        self.sync = enabled

    def reset(self) -> None:
        self._sum: Any = 0.0
        self._n = 0

    def get_state(self) -> dict[str, Any]:
        return {"sum": torch.as_tensor(self._sum), "n": self._n}

    def set_state(self, state: dict[str, Any]) -> None:
        self._sum, self._n = state["sum"], state["n"]


class Loss(Mean):
    """The epoch mean of a loss function per example, e.g. ``metrics.Loss(nn.L1Loss())`` beside a training loss."""

    higher_is_better = False


class EPS:
    """Examples per second, from ``reset()`` to ``compute()`` (under DDP: of all ranks together).

    Size-only: the loop passes it batch sizes (``update_size``), not outputs.
    """

    higher_is_better = True

    def __init__(self) -> None:
        self.sync = True
        self.reset()

    def update(self, y_pred: Any, y: Any) -> None:
        self._n += batch_size(y)

    def update_size(self, n: int) -> None:
        self._n += n

    def compute(self) -> float:
        elapsed = time.perf_counter() - self._start
        n = _all_reduce(torch.tensor(float(self._n)), self.sync).item()
        return n / elapsed if elapsed > 0 else float("nan")

    def set_sync(self, enabled: bool) -> None:
        self.sync = enabled

    def reset(self) -> None:
        self._n = 0
        self._start = time.perf_counter()

    def get_state(self) -> dict[str, Any]:
        return {"n": self._n}

    def set_state(self, state: dict[str, Any]) -> None:
        self._n = state["n"]  # the clock restarts: a resumed epoch's rate counts from the resume


def get_state(metric: Any) -> dict[str, Any] | None:
    """The accumulated state of a metric as tensors/lists/numbers (for exact mid-epoch resume), or None.

    Knows the metrics of this module and any torchmetrics ``Metric``; other objects may define
    ``get_state()``/``set_state(state)`` themselves.
    """
    if hasattr(metric, "get_state"):
        return metric.get_state()
    if hasattr(metric, "metric_state") and hasattr(metric, "_update_count"):  # a torchmetrics Metric
        return {"state": dict(metric.metric_state), "updates": metric._update_count}
    return None


def set_state(metric: Any, state: dict[str, Any]) -> None:
    """Restore what :func:`get_state` returned."""
    if hasattr(metric, "set_state"):
        metric.set_state(state)
        return
    for key, value in state["state"].items():
        setattr(metric, key, value)
    metric._update_count = state["updates"]
    metric._computed = None


def set_sync(metric: Any, enabled: bool) -> None:
    """Whether ``metric.compute()`` combines the states of all DDP ranks (torchmetrics and ours)."""
    if hasattr(metric, "set_sync"):
        metric.set_sync(enabled)
    elif hasattr(metric, "_to_sync"):  # a torchmetrics Metric
        metric._to_sync = enabled
        metric._computed = None  # a cached (unsynchronised) value must not be returned


def _all_reduce(tensor: torch.Tensor, enabled: bool) -> torch.Tensor:
    import torch.distributed as dist

    if enabled and dist.is_available() and dist.is_initialized():
        tensor = tensor.clone()
        dist.all_reduce(tensor)
    return tensor


def _name(fn: Any) -> str:
    return getattr(fn, "__name__", type(fn).__name__)
