"""The Runner: one pass over one loader, training or evaluating -- the loop, top to bottom."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .batch import batch_size, default_forward, describe, to_device
from .errors import ConfigError, LossError, MetricError, NonFiniteLossError, XtError
from .loggers import LoggerGroup
from .metrics import as_metric

# Metric inputs are buffered between logging steps and handed to the metrics concatenated; past this
# many buffered prediction elements they are handed over early, which bounds the buffer's memory.
_MAX_BUFFERED_ELEMENTS = 1 << 22


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device; ``None`` means CUDA when available, else the CPU."""
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: {e}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None


def prepare_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ConfigError(f"metrics must be a dict of name -> metric, not {type(metrics).__name__}")
    return {name: as_metric(m, name) for name, m in metrics.items()}


class Runner:
    """Runs one pass over a loader: ``runner(loader)`` trains when ``model.training`` is true, else evaluates.

    Args:
        model: any ``nn.Module``; moved to ``device`` once, here.
        loss_fn: called as ``loss_fn(y_pred, y)``; must return a scalar tensor. Optional when evaluating.
        optimizer: required to train.
        scheduler: a torch LR scheduler, stepped as ``scheduler_step`` says.
        batch_metrics: ``{name: metric}`` computed on every pass (see :mod:`xt_training.metrics`);
            a call can override them with ``metrics=``.
        device: default CUDA when available, else CPU.
        forward_fn: ``forward_fn(model, batch) -> (y_pred, y)``, how a batch (already on the device)
            is fed to the model; default: ``x, y = batch; return model(x), y``.
        scheduler_step: ``'epoch'`` (step after each training pass; ``ReduceLROnPlateau`` gets the
            pass's loss), ``'batch'`` (after every optimizer step) or ``None`` (the caller steps it).
        log_every_n_steps: how often running values are read from the device and reported.
        loggers: objects following the :class:`~xt_training.loggers.Logger` contract. Default: the
            console logger, unless ``quiet``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
        optimizer: torch.optim.Optimizer | None = None,
        scheduler: Any = None,
        batch_metrics: Mapping[str, Any] | None = None,
        device: str | torch.device | None = None,
        *,
        forward_fn: Callable[[torch.nn.Module, Any], tuple[Any, Any]] | None = None,
        scheduler_step: str | None = "epoch",
        log_every_n_steps: int = 50,
        loggers: Iterable[Any] | None = None,
        quiet: bool = False,
    ):
        if scheduler_step not in ("epoch", "batch", None):
            raise ConfigError(f"scheduler_step must be 'epoch', 'batch' or None, not {scheduler_step!r}")
        if not isinstance(log_every_n_steps, int) or log_every_n_steps < 1:
            raise ConfigError(f"log_every_n_steps must be a positive integer, not {log_every_n_steps!r}")
        self.device = resolve_device(device)
        self.model = model.to(self.device)
        self.loss_fn = loss_fn.to(self.device) if isinstance(loss_fn, torch.nn.Module) else loss_fn
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_step = scheduler_step
        self.metrics = prepare_metrics(batch_metrics)
        self.forward_fn = forward_fn or default_forward
        self.log_every_n_steps = log_every_n_steps
        if loggers is None:
            from .loggers.console import ConsoleLogger

            loggers = [] if quiet else [ConsoleLogger()]
        self.loggers = loggers if isinstance(loggers, LoggerGroup) else LoggerGroup(loggers)
        self.epoch = 0  # shown by loggers; F.train sets it
        self.global_step = 0  # optimizer steps taken, across passes
        self.latest: dict[str, Any] = {}  # the values of the last pass

    def __call__(
        self,
        loader: Iterable[Any],
        name: str | None = None,
        *,
        metrics: Mapping[str, Any] | None = None,
        return_preds: bool = False,
    ) -> dict[str, Any] | tuple[Any, Any]:
        """One pass over ``loader``; returns ``{'loss': float, metric: value, ...}``.

        With ``return_preds=True`` it returns ``(y_pred, y)`` instead: the outputs and targets of the
        whole loader, concatenated in loader order, on the CPU (the values are in ``runner.latest``).
        """
        training = self.model.training
        name = name or ("train" if training else "eval")
        if training and (self.optimizer is None or self.loss_fn is None):
            raise ConfigError("the model is in training mode, so the Runner needs an optimizer and a loss_fn")
        pass_metrics = self.metrics if metrics is None else prepare_metrics(metrics)
        buffers = _Buffers(pass_metrics, self.device, keep_all=return_preds)
        non_blocking = self.device.type == "cuda"  # copies overlap with compute where memory is pinned
        tick = self.loggers.start_pass(name, self.epoch, _length(loader))

        step = 0
        with torch.set_grad_enabled(training):
            for step, batch in enumerate(loader, 1):
                batch = to_device(batch, self.device, non_blocking)
                y_pred, y = self.forward_fn(self.model, batch)
                loss = None
                if self.loss_fn is not None:
                    loss = self.loss_fn(y_pred, y)
                    if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
                        raise LossError(
                            f"loss_fn must return a scalar tensor, but returned {describe(loss)}; "
                            "reduce it (e.g. reduction='mean') or return loss.mean()"
                        )

                if training:
                    self.optimizer.zero_grad()
                    loss.backward()
                    self.optimizer.step()
                    if self.scheduler is not None and self.scheduler_step == "batch":
                        self.scheduler.step()
                    self.global_step += 1

                # Per step only detached references are kept; no value leaves the device here.
                buffers.add(loss, y_pred, y)
                tick()
                if step == 1 or step % self.log_every_n_steps == 0:
                    # Logging step: metrics update on the buffered batches and values are read to the
                    # host -- on CUDA this is the pass's only synchronisation point between batches.
                    values = buffers.flush()
                    if training:
                        self._check_finite(values, buffers, name)
                        self.loggers.log_metrics(
                            {f"{name}/{k}": v for k, v in values.items()}, self.global_step
                        )
                    self.loggers.update_pass(name, values)
                elif buffers.full():
                    buffers.flush_outputs()

        if step == 0:
            raise ConfigError(f"loader '{name}' yielded no batches; check the dataset size and drop_last")
        values = buffers.flush()
        if training:
            self._check_finite(values, buffers, name)
            if self.scheduler is not None and self.scheduler_step == "epoch":
                step_scheduler(self.scheduler, values.get("loss"))
        self.loggers.end_pass(name, values)
        self.latest = values
        return buffers.predictions() if return_preds else values

    def _check_finite(self, values: dict[str, Any], buffers: _Buffers, name: str) -> None:
        # The running loss is non-finite exactly when some loss in the pass was: no extra host read.
        if not math.isfinite(values.get("loss", 0.0)):
            step, loss = buffers.non_finite_loss()
            raise NonFiniteLossError(
                f"the loss is {loss} at epoch {self.epoch}, step {step} of loader '{name}'; "
                "lower the learning rate, clip gradients or check the data for NaN/inf"
            )


def step_scheduler(scheduler: Any, value: float | None) -> None:
    """Step a scheduler once; ``ReduceLROnPlateau`` gets the monitored ``value``."""
    if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        scheduler.step(value)
    else:
        scheduler.step()


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an IterableDataset without __len__
        return None


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach()
    if isinstance(obj, (tuple, list)):
        return (
            type(obj)(_detach(o) for o in obj)
            if not hasattr(obj, "_fields")
            else type(obj)(*map(_detach, obj))
        )
    if isinstance(obj, Mapping):
        return {k: _detach(v) for k, v in obj.items()}
    return obj


def _concat(chunks: list[Any]) -> Any:
    """Concatenate per-batch outputs along the batch: tensors with torch.cat, nesting kept, lists joined."""
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        return torch.cat([c.reshape(1) if c.ndim == 0 else c for c in chunks])
    if isinstance(first, list):
        return [item for c in chunks for item in c]
    if isinstance(first, tuple):
        return tuple(_concat(list(parts)) for parts in zip(*chunks))
    if isinstance(first, Mapping):
        return {k: _concat([c[k] for c in chunks]) for k in first}
    raise TypeError(f"cannot concatenate outputs of type {type(first).__name__}")


def _numel(obj: Any) -> int:
    return obj.numel() if isinstance(obj, torch.Tensor) else 0


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return float(value) if isinstance(value, (int, float)) else value


class _Buffers:
    """What a pass keeps between logging steps, and the pass totals built from it."""

    def __init__(self, metrics: dict[str, Any], device: torch.device, keep_all: bool):
        self.metrics = metrics
        self.device = device
        self.keep_all = keep_all
        self.keep_outputs = bool(metrics) or keep_all
        self.losses: list[torch.Tensor] = []  # since the last logging step
        self.sizes: list[int] = []
        self.outputs: list[tuple[Any, Any]] = []
        self.elements = 0
        self.all_outputs: list[tuple[Any, Any]] = []  # with keep_all: the whole pass
        self.loss_sum: torch.Tensor | None = None  # on the device
        self.count = 0
        self.step = 0  # steps added so far
        for m in metrics.values():
            if isinstance(m, torch.nn.Module):
                m.to(device)
            m.reset()

    def add(self, loss: torch.Tensor | None, y_pred: Any, y: Any) -> None:
        self.step += 1
        if loss is not None:
            self.losses.append(loss.detach())
        self.sizes.append(batch_size(y))
        if self.keep_outputs:
            self.outputs.append((_detach(y_pred), _detach(y)))
            self.elements += _numel(y_pred)

    def full(self) -> bool:
        return self.elements > _MAX_BUFFERED_ELEMENTS

    def flush_outputs(self) -> None:
        """Hand the buffered outputs to the metrics (no host read)."""
        if not self.outputs:
            return
        try:  # several batches in one update: much cheaper than one update per batch
            groups = [(_concat([p for p, _ in self.outputs]), _concat([t for _, t in self.outputs]))]
        except (TypeError, RuntimeError):  # outputs whose shapes differ between batches
            groups = self.outputs
        for y_pred, y in groups:
            for name, metric in self.metrics.items():
                try:
                    metric.update(y_pred, y)
                except XtError:
                    raise
                except Exception as e:
                    reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
                    raise MetricError(
                        f"metric {name!r} ({type(metric).__name__}) failed on y_pred {describe(y_pred)} "
                        f"and y {describe(y)}: {reason}"
                    ) from e
        if self.keep_all:
            self.all_outputs.extend(self.outputs)
        self.outputs, self.elements = [], 0

    def flush(self) -> dict[str, Any]:
        """Fold the buffers into the pass totals and read the values so far to the host."""
        self.chunk_losses = torch.stack(self.losses).float() if self.losses else None
        if self.chunk_losses is not None:
            sizes = torch.tensor(self.sizes, dtype=torch.float32).to(self.device, non_blocking=True)
            chunk_sum = (self.chunk_losses * sizes).sum()
            self.loss_sum = chunk_sum if self.loss_sum is None else self.loss_sum + chunk_sum
        self.chunk_start = self.step - len(self.sizes) + 1
        self.count += sum(self.sizes)
        self.losses, self.sizes = [], []
        self.flush_outputs()

        values: dict[str, Any] = {}
        if self.loss_sum is not None:
            values["loss"] = self.loss_sum / self.count
        for name, metric in self.metrics.items():
            try:
                values[name] = metric.compute()
            except Exception as e:
                raise MetricError(f"metric {name!r} ({type(metric).__name__}) failed to compute: {e}") from e
        return {k: _to_python(v) for k, v in values.items()}

    def non_finite_loss(self) -> tuple[int, float]:
        """The first step of the last flushed chunk whose loss was NaN/inf, and that loss."""
        bad = (~torch.isfinite(self.chunk_losses)).nonzero()
        index = int(bad[0]) if len(bad) else 0
        return self.chunk_start + index, self.chunk_losses[index].item()

    def predictions(self) -> tuple[Any, Any]:
        y_pred = _concat([p for p, _ in self.all_outputs])
        y = _concat([t for _, t in self.all_outputs])
        return to_device(y_pred, torch.device("cpu")), to_device(y, torch.device("cpu"))
