"""The Runner: one pass over one loader, training or evaluating -- the loop, top to bottom."""

from __future__ import annotations

import contextlib
import inspect
import itertools
import math
import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch
from torch.utils.data import DistributedSampler
from torch.utils.data.dataloader import _SingleProcessDataLoaderIter

from . import distributed
from .batch import (
    ModelLoss,
    batch_size,
    checked_forward,
    concat,
    default_forward,
    describe,
    forward_output,
    leading_size,
    logits,
    map_tensors,
    prefetch_to_device,
    smaller_batch,
    to_device,
)
from .devices import default_device, device_count, streams
from .errors import BatchError, ConfigError, LossError, MetricError, NonFiniteLossError, XtError, first_line
from .fastpath import FastIterator, check_data_on_device, fast_batches
from .loggers import LoggerGroup, default_loggers
from .metric_contract import as_metric, get_state, set_state, set_sync
from .rng import capture_rng, loader_generators, restore_rng
from .stepping import Optimizers, Schedulers, StepValues, as_one, check_step_options

# Metric inputs are buffered and handed to the metrics concatenated, at a logging step: the pass's
# first, then once they hold _UPDATE_ELEMENTS prediction elements or _UPDATE_EVERY_LOGS logging steps
# have passed since the last update (deterministic, so reruns and resumed runs update in the same
# chunks). Each update costs a few torch calls whose cost hardly depends on the size: a small model's
# outputs (640 elements a step) would pay it every 50 steps, ~5 us a step per metric. Between updates
# the metrics give no running value. Past _MAX_BUFFERED_ELEMENTS they are handed over at once
# (any step), which bounds the buffer's memory.
_UPDATE_ELEMENTS = 1 << 18
_UPDATE_EVERY_LOGS = 10
_MAX_BUFFERED_ELEMENTS = 1 << 22
# A metric whose compute() takes less than this gives a running value at every update (see above).
_CHEAP_COMPUTE_S = 0.5e-3


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``device`` as a torch.device; ``None`` means the accelerator (CUDA, XPU, MPS...) when there is one, else
    the CPU."""
    if device is None:
        return default_device()
    try:
        resolved = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ConfigError(f"invalid device {device!r}: {e}; use e.g. 'cpu', 'cuda' or 'cuda:1'") from None
    if resolved.type != "cpu":  # else the first .to(device) fails with a driver error deep in torch
        count = device_count(resolved.type)
        if (resolved.index or 0) >= count:
            found = f"{count or 'no'} {resolved.type} device{'s' if count > 1 else ''}"
            raise ConfigError(
                f"device {str(resolved)!r} is not available: torch {torch.__version__} finds {found} here; "
                f"use device 'cpu', or leave the device out (here: {default_device()})"
            )
    return resolved


def prepare_metrics(metrics: Mapping[str, Any] | None) -> dict[str, Any]:
    if metrics is None:
        return {}
    if not isinstance(metrics, Mapping):
        raise ConfigError(f"metrics must be a dict of name -> metric, not {type(metrics).__name__}")
    if "loss" in metrics:  # it would replace the pass's loss in the values (and the default monitor)
        raise ConfigError(
            "the metric name 'loss' is the pass's loss; give the metric another name, e.g. 'acc'"
        )
    return {name: as_metric(m, name) for name, m in metrics.items()}


def check_instance(name: str, obj: Any) -> None:
    """A class where an instance belongs (``loss_fn=nn.CrossEntropyLoss``) fails only later, obscurely."""
    if isinstance(obj, type):
        raise ConfigError(f"{name} is the class {obj.__name__}; pass an instance, e.g. {obj.__name__}(...)")


def check_model(model: Any, optimizer: Any = None, loss_fn: Any = None) -> None:
    """A model that is none (None, a name), one without values (on the meta device, or lazy and not yet run),
    or an optimizer that updates none of its parameters: the first two fail deep in torch, the last trains
    nothing without a word."""
    check_instance("model", model)
    if not isinstance(model, torch.nn.Module):
        hint = f"; build it first, e.g. xt_training.create_model({model!r})" if isinstance(model, str) else ""
        raise ConfigError(f"model must be a torch.nn.Module, not {describe(model)}{hint}")
    if any(t.is_meta for t in itertools.chain(model.parameters(), model.buffers())):
        raise ConfigError(
            "the model's weights are on the meta device (shapes without values); give them values before "
            "training: model.to_empty(device='cpu') and initialize them, or load a checkpoint into it"
        )
    if any(isinstance(p, torch.nn.parameter.UninitializedParameter) for p in model.parameters()):
        raise ConfigError(
            "the model has uninitialized parameters (a lazy module, e.g. LazyLinear, takes its shape from its first "
            "input); run one batch through it first, e.g. model(x[:1]), then build the optimizer over its parameters"
        )
    theirs = _parameters(optimizer)
    ours = {id(p) for m in (model, loss_fn) if isinstance(m, torch.nn.Module) for p in m.parameters()}
    if theirs and not theirs & ours:  # a subset is fine-tuning; none at all is another model's optimizer
        raise ConfigError(
            f"the optimizer updates none of the model's parameters (it was built over another model's), so "
            f"training would change nothing; build it over this model: {type(optimizer).__name__}(model.parameters(), ...)"
        )


def _parameters(optimizer: Any) -> set[int]:
    """The ids of the tensors an optimizer updates (none for a duck-typed one without param_groups)."""
    groups = getattr(optimizer, "param_groups", None) or []
    return {id(p) for group in groups if isinstance(group, Mapping) for p in group.get("params", [])}


def _groups(optimizer: Any) -> set[int]:
    """The ids of an optimizer's param group dicts (none for a duck-typed one without param_groups)."""
    return {id(group) for group in getattr(optimizer, "param_groups", None) or []}


def check_list(name: str, value: Any) -> None:
    """``loggers='csv'`` would be taken letter by letter; a single object is not a list."""
    if value is not None and (isinstance(value, (str, Mapping)) or not isinstance(value, Iterable)):
        example = f"[{value!r}]" if isinstance(value, str) else "[...]"
        raise ConfigError(f"{name} must be a list, e.g. {name}={example}, not {describe(value)}")


def batch_limit(option: str, value: int | float | None, loader: Any) -> int | None:
    """How many batches of ``loader`` a pass limited by ``value`` takes: a count (an int, at least 1) or a
    fraction of the loader's batches (a float in (0, 1], at least one batch); None: all."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0:
        raise ConfigError(
            f"{option} must be a number of batches (e.g. 10) or a fraction of them (e.g. 0.25), not {value!r}"
        )
    if isinstance(value, int):
        return value
    if value > 1:
        raise ConfigError(
            f"{option}={value} is a fraction above 1; give a fraction in (0, 1] or a count, e.g. 10"
        )
    length = _length(loader)
    if length is None:
        raise ConfigError(
            f"{option}={value} is a fraction, but the loader has no length (an IterableDataset); give a count"
        )
    return max(1, int(length * value))


def check_strategy(strategy: Any, shard: Any, cpu_offload: Any, distributed: bool) -> bool:
    """Whether ``strategy`` asks for FSDP; a ConfigError for a strategy, or options of it, that cannot apply."""
    if strategy not in ("ddp", "fsdp"):
        raise ConfigError(f"strategy must be 'ddp' or 'fsdp', not {strategy!r}")
    if not isinstance(cpu_offload, bool):
        raise ConfigError(f"cpu_offload must be True or False, not {cpu_offload!r}")
    if strategy == "ddp" and (shard is not None or cpu_offload):
        raise ConfigError("shard and cpu_offload are options of strategy='fsdp'; pass it, or leave them out")
    if strategy == "fsdp" and not distributed:
        raise ConfigError(
            "strategy='fsdp' shards the model over the processes torchrun starts, and this is one process; "
            "start it with torchrun --nproc-per-node N (xt run --nproc N), or leave out strategy"
        )
    return strategy == "fsdp"


def check_scheduler(scheduler: Any, scheduler_step: str | None, optimizer: Any = None) -> None:
    """A scheduler that cannot be stepped as asked would fail after a pass of training; an optimizer in its
    place, or one of another optimizer, would step or schedule something else without a word."""
    if scheduler is None:
        return
    if isinstance(scheduler, Schedulers):  # step_fn's dict of schedulers: each one as one would be
        for one in scheduler.values():
            check_scheduler(one, scheduler_step)
        return
    check_instance("scheduler", scheduler)
    # an optimizer has step() too: each "scheduler step" would be a second optimizer step
    if isinstance(scheduler, torch.optim.Optimizer):
        raise ConfigError(
            f"scheduler is an optimizer ({type(scheduler).__name__}), not an LR scheduler; pass a scheduler built "
            "over the optimizer, e.g. scheduler=torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)"
        )
    # a scheduler sets the "lr" of its optimizer's param groups: the optimizer must read those very dicts
    scheduled, trained = _groups(getattr(scheduler, "optimizer", None)), _groups(optimizer)
    if scheduled and trained and not scheduled & trained:
        raise ConfigError(
            f"the scheduler ({type(scheduler).__name__}) changes the learning rate of another optimizer than the "
            "one passed; build it over the optimizer that trains the model"
        )
    if not callable(getattr(scheduler, "step", None)):
        raise ConfigError(
            f"scheduler must be a torch LR scheduler (with step()), not {describe(scheduler)}; "
            "e.g. torch.optim.lr_scheduler.StepLR(optimizer, step_size=10)"
        )
    if scheduler_step == "batch" and isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
        raise ConfigError(
            "ReduceLROnPlateau steps on a monitored value once per epoch; use scheduler_step='epoch'"
        )


_PRECISIONS = {"32": None, "bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}


class Runner:
    """Runs one pass over a loader: ``runner(loader)`` trains when ``model.training`` is true, else evaluates.

    Args:
        model: any ``nn.Module``; moved to ``device`` once, here.
        loss_fn: called as ``loss_fn(y_pred, y)``; must return a scalar tensor. None: the loss the model's
            output carries (a Hugging Face model's ``.loss``, with its ``.logits`` as ``y_pred``), if any;
            evaluation then may report no loss, training needs one. The pass's ``loss`` is its mean per
            example: batch means weighted by batch size, or, for a loss whose ``reduction`` is ``'sum'``,
            the batch sums added and divided by the examples.
        optimizer: required to train. One whose ``step()`` requires a closure (``torch.optim.LBFGS``) gets one
            that recomputes the batch's forward, loss and backward (as Lightning passes); the loop's own
            forward and backward of the batch still give the values it reports.
        scheduler: a torch LR scheduler, stepped as ``scheduler_step`` says.
        batch_metrics: ``{name: metric}`` computed on every pass (see :mod:`xt_training.metrics`);
            a call can override them with ``metrics=``.
        device: default: the accelerator when there is one (CUDA, XPU, MPS...), else the CPU.
        forward_fn: ``forward_fn(model, batch) -> (y_pred, y)``, how a batch (already on the device)
            is fed to the model; default: ``x, y = batch; return model(x), y``, and dict batches by their
            keys (see :func:`xt_training.batch.forward_output`).
        scheduler_step: ``'epoch'`` (step after each training pass; ``ReduceLROnPlateau`` gets the
            pass's loss), ``'batch'`` (after every optimizer step, not every batch: with
            ``accumulate_grad_batches=N`` every N batches, and after a pass's last, partial group) or
            ``None`` (the caller steps it).
        log_every_n_steps: how often running values are read from the device and reported; in training,
            with the learning rate of every param group as it is then (``lr``, ``lr/1``, ...; see
            :func:`learning_rates`).
        loggers: objects following the :class:`~xt_training.loggers.Logger` contract. Default: the
            console logger, unless ``quiet``.
        precision: ``'32'``, ``'bf16-mixed'`` or ``'16-mixed'`` (autocast; fp16 adds a GradScaler).
        nonfinite_loss: ``'raise'`` (default: a NaN/inf loss stops training with an error naming the
            epoch, step and loader; checked at logging steps, no extra host read) or ``'skip'`` (such
            batches get no backward/optimizer step; costs one host read per step; counted as ``skipped``).
        accumulate_grad_batches: optimizer step every N batches (the loss is divided by N). A pass of B
            batches takes ceil(B / N) optimizer steps: the last B % N batches step too, their gradients
            summed over fewer batches (each loss still divided by N).
        clip_grad_norm, clip_grad_value: gradient clipping before each optimizer step.
        checkpoint_every_n_steps, on_checkpoint: call ``on_checkpoint()`` every N optimizer steps (F.train
            writes a resumable mid-epoch checkpoint there, or validates); a true result ends the pass there,
            as a stop request does.
        fast_path: take batches of a TensorDataset loader straight from its tensors (one gather or slice
            per tensor instead of per-sample indexing and stacking), and fetch those of other map-style
            datasets in a single-process DataLoader without the DataLoader iterator's per-batch
            bookkeeping; exactly the DataLoader's batches and random draws either way. Other loaders are
            iterated as usual. See :mod:`xt_training.fastpath`.
        data_on_device: with the fast path on CUDA (or XPU), copy the dataset's tensors to the GPU once and gather
            batches there: ``True``, ``False`` or ``'auto'`` (when they take at most a quarter of its
            free memory).
        compile: ``torch.compile`` the model for training (under DDP: the DDP-wrapped model).
        channels_last: NHWC memory format for the model and 4-D input batches.
        strategy: under torchrun, how the ranks share the training: ``'ddp'`` (default:
            ``DistributedDataParallel``, a whole model per rank) or ``'fsdp'`` (FSDP2's ``fully_shard``: each
            rank keeps a shard of the parameters, gradients and optimizer state; see :mod:`xt_training.fsdp`).
            Evaluation passes under ``'fsdp'`` run the sharded model too.
        shard: with ``strategy='fsdp'``, the module classes (or class names) whose instances are sharded
            as units before the root, e.g. ``[nn.TransformerEncoderLayer]``; default: every module with
            more than 1 M parameters of its own (:func:`xt_training.fsdp.default_units`).
        cpu_offload: with ``strategy='fsdp'``, keep the sharded parameters, gradients and optimizer step on
            the CPU (FSDP's ``CPUOffloadPolicy``): less GPU memory, slower steps.
        callbacks: objects with some of the per-pass and per-step hooks of :mod:`xt_training.callbacks`
            (``on_pass_start``, ``on_train_batch_end``, ...), called with ``runner.run`` (F.train's
            :class:`~xt_training.callbacks.Run`; by default the Runner itself). Which callbacks implement
            which hook is read once per pass: hooks no callback implements cost nothing per step.
        step_fn: your own training step, ``step_fn(model, batch, optimizers) -> loss or {name: value}``, called
            for each training batch (on the device, under ``precision``'s autocast) in place of the loop's
            forward, loss, backward and optimizer step: it does them itself (``zero_grad`` included).
            ``optimizer`` (``scheduler``) may then be a dict ``{name: optimizer}``; ``optimizers`` is what
            ``optimizer`` is. The loop counts one optimizer step per call (for ``scheduler_step='batch'``,
            which steps every scheduler, and ``checkpoint_every_n_steps``), and reports a returned tensor as the
            pass's ``loss``, a dict's values each under its name (``'loss'`` as the pass's loss), each the mean
            per example over the pass. Evaluation passes use ``forward_fn`` and ``loss_fn`` as without it.
            Gradient accumulation, clipping, ``precision='16-mixed'``, ``nonfinite_loss='skip'`` and DDP
            act on the loop's own step, and are refused with it (see :mod:`xt_training.stepping`).

    A pass, as pseudocode (``cb`` stands for every callback that implements the hook)::

        cb.on_pass_start(run, name)
        on_resume()                                                    # a resumed pass: F.train's states back
        for step, batch in enumerate(loader, 1):
            cb.on_train_batch_start(run, batch, step)                  # training only
            training with step_fn: loss, y_pred = step_fn(model, batch, optimizers), y = batch;
                                   per-batch scheduler steps; on to cb.on_train_batch_end
            y_pred, y = forward_fn(model, batch); loss = loss_fn(y_pred, y)
            if training:
                loss.backward()
                every accumulate_grad_batches batches:
                    cb.on_before_optimizer_step(run, optimizer)         # gradients visible (unscaled)
                    clip gradients; optimizer.step(); optimizer.zero_grad(); per-batch scheduler step
                    after_step()                                        # F.train's EMA of the weights
            cb.on_train_batch_end(run, batch, step, y_pred, loss)      # evaluation: on_validation_batch_end
            at logging steps: metrics, loggers; every checkpoint_every_n_steps: on_checkpoint()
        cb.on_pass_end(run, name, values)                              # not when a signal stopped the pass

    On CUDA, batches are copied to the GPU on a side stream one step ahead (``pin_memory=True`` in
    the DataLoader makes those copies asynchronous).
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
        precision: str = "32",
        nonfinite_loss: str = "raise",
        accumulate_grad_batches: int = 1,
        clip_grad_norm: float | None = None,
        clip_grad_value: float | None = None,
        checkpoint_every_n_steps: int | None = None,
        on_checkpoint: Callable[[], Any] | None = None,
        fast_path: bool = True,
        data_on_device: bool | str = "auto",
        compile: bool = False,
        channels_last: bool = False,
        strategy: str = "ddp",
        shard: Iterable[type | str] | None = None,
        cpu_offload: bool = False,
        callbacks: Iterable[Any] | None = None,
        step_fn: Callable[[torch.nn.Module, Any, Any], Any] | None = None,
    ):
        optimizer, scheduler = as_one(step_fn, optimizer, scheduler)
        if scheduler_step not in ("epoch", "batch", None):
            raise ConfigError(f"scheduler_step must be 'epoch', 'batch' or None, not {scheduler_step!r}")
        for option, value in (
            ("log_every_n_steps", log_every_n_steps),
            ("accumulate_grad_batches", accumulate_grad_batches),
            ("checkpoint_every_n_steps", checkpoint_every_n_steps or 1),
        ):
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ConfigError(f"{option} must be a positive integer, not {value!r}")
        for option, value in (("clip_grad_norm", clip_grad_norm), ("clip_grad_value", clip_grad_value)):
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < math.inf
            ):
                raise ConfigError(f"{option} must be a positive number or None (no clipping), not {value!r}")
        check_instance("loss_fn", loss_fn)
        check_instance("optimizer", optimizer)
        check_scheduler(scheduler, scheduler_step, optimizer)
        check_model(model, optimizer, loss_fn)
        # LBFGS re-evaluates the loss several times a step: its step() takes a closure that recomputes it
        # (step_fn calls step() itself, with its own closure)
        self.needs_closure = optimizer is not None and step_fn is None and _needs_closure(optimizer)
        if self.needs_closure and (
            accumulate_grad_batches > 1 or clip_grad_norm or clip_grad_value or precision == "16-mixed"
        ):
            raise ConfigError(
                f"{type(optimizer).__name__}.step() takes a closure that recomputes the loss, which works without "
                "gradient accumulation, clipping and precision='16-mixed'; leave those out, or use another optimizer"
            )
        if nonfinite_loss not in ("raise", "skip"):
            raise ConfigError(f"nonfinite_loss must be 'raise' or 'skip', not {nonfinite_loss!r}")
        if precision not in _PRECISIONS:
            raise ConfigError(
                f"precision must be one of {', '.join(map(repr, _PRECISIONS))}, not {precision!r}"
            )
        self.distributed = distributed.init_from_env()  # under torchrun: one rank of a process group
        self.fsdp = check_strategy(strategy, shard, cpu_offload, self.distributed) and optimizer is not None
        if step_fn is not None:
            options = (accumulate_grad_batches, clip_grad_norm, clip_grad_value, precision, nonfinite_loss)
            check_step_options(*options, self.distributed)
        self.step_fn = step_fn
        self.step_expects: str | None = None  # a value step_fn must return (F.train: the monitored one)
        if self.distributed and device is None:
            self.device = distributed.local_device()
        else:
            self.device = resolve_device(device)
        if _PRECISIONS[precision] is not None and not torch.amp.is_autocast_available(self.device.type):
            raise ConfigError(
                f"precision={precision!r} needs autocast, which torch {torch.__version__} does not have for "
                f"{self.device.type} devices; use precision='32', or another device"
            )
        if (
            self.distributed
            and self.device.type != "cpu"
            and distributed.backend_for(self.device.type) == "gloo"
        ):
            raise ConfigError(
                f"device {str(self.device)!r} under torchrun: torch.distributed has no backend for {self.device.type} "
                "tensors (gloo takes CPU ones); leave the device out (the CPU then), or train in one process"
            )
        # the plain model: evaluation passes use it directly (under FSDP, fully_shard moves it to the device)
        self.module = model if self.fsdp else model.to(self.device)
        if channels_last:  # NHWC: faster convolutions on tensor cores and many CPUs
            self.module = self.module.to(memory_format=torch.channels_last)
        if self.fsdp:  # sharded in place: the module is the sharded model, for evaluation passes too
            from . import fsdp  # lazy: torch.distributed.fsdp and .checkpoint take ~1 s to import

            self.model = fsdp.shard_model(
                self.module,
                self.device,
                fsdp.check_shard(shard),
                _PRECISIONS[precision],
                cpu_offload,
                optimizer,
            )
        else:  # training passes go through DistributedDataParallel, which all-reduces the gradients
            self.model = (
                distributed.wrap_model(self.module, self.device)
                if self.distributed and optimizer
                else self.module
            )
        if compile:
            self.model = torch.compile(self.model)
        self.loss_fn = loss_fn.to(self.device) if isinstance(loss_fn, torch.nn.Module) else loss_fn
        # a loss of reduction='sum' is a batch's sum already: the pass's loss is the sum over its examples
        self.summed_loss = getattr(loss_fn, "reduction", None) == "sum"
        self.forward_fn = default_forward if forward_fn is None else checked_forward(forward_fn)
        # the model gets the x of (x, y) batches: an error in its forward can say what in x does not fit
        self.feeds_x = forward_fn is None
        if loss_fn is None:  # the model's own loss, where its output carries one
            model_loss = ModelLoss(forward_output if forward_fn is None else self.forward_fn)
            self.forward_fn, self.loss_fn = model_loss.forward, model_loss
        self.optimizer = optimizer
        self.scheduler = scheduler
        self.scheduler_step = scheduler_step
        self.metrics = prepare_metrics(batch_metrics)
        self.log_every_n_steps = log_every_n_steps
        check_list("loggers", loggers)
        if loggers is None:
            loggers = default_loggers([], quiet)
        if not distributed.is_main():
            loggers = []  # only rank 0 prints and writes
        self.loggers = loggers if isinstance(loggers, LoggerGroup) else LoggerGroup(loggers)
        self.precision = precision
        self.channels_last = channels_last
        self.nonfinite_loss = nonfinite_loss
        # (under FSDP its MixedPrecisionPolicy casts the parameters instead of autocast)
        self.amp_dtype = None if self.fsdp else _PRECISIONS[precision]
        # fp16 gradients underflow without loss scaling; bf16 has fp32's range and needs none
        self.scaler = None
        if precision == "16-mixed":
            self.scaler = (
                fsdp.grad_scaler(self.device) if self.fsdp else torch.amp.GradScaler(self.device.type)
            )
        self.accumulate = accumulate_grad_batches
        self.clip_grad_norm = clip_grad_norm
        self.clip_grad_value = clip_grad_value
        self.checkpoint_every_n_steps = checkpoint_every_n_steps
        self.on_checkpoint = on_checkpoint
        if not isinstance(fast_path, bool):
            raise ConfigError(f"fast_path must be True or False, not {fast_path!r}")
        self.fast_path = fast_path
        self.data_on_device = check_data_on_device(data_on_device)
        self._fast_path_noticed = False
        self._noted: set[tuple[str, str]] = set()  # the metrics' notes already shown
        self.epoch = 0  # shown by loggers; F.train sets it
        self.global_step = 0  # optimizer steps taken, across passes
        self.latest: dict[str, Any] = {}  # the values of the last pass
        # set (e.g. by a signal handler) to end the pass after the current step (or accumulation group)
        self.stop_requested = False
        self.stopped = False  # whether the last pass ended early because of stop_requested
        self._pass: dict[str, Any] = {}  # the running training pass, for position()
        self._sharded: dict[tuple[int, bool], Any] = {}
        check_list("callbacks", callbacks)
        self.callbacks = list(callbacks or [])
        self.run: Any = self  # what the callbacks' hooks get first (F.train: its Run)
        self._before_step: list[Callable[..., Any]] = []  # the pass's on_before_optimizer_step hooks
        self._within = False  # whether the pass runs inside a training pass (see evaluate_within)
        self.after_step: Callable[[], Any] | None = None  # called after every optimizer step (F.train's EMA)
        # called in a resumed training pass after the on_pass_start hooks: F.train puts back the states of
        # the checkpoint, which the hooks may have reset (a carried hidden state)
        self.on_resume: Callable[[], Any] | None = None

    def __call__(
        self,
        loader: Iterable[Any],
        name: str | None = None,
        *,
        metrics: Mapping[str, Any] | None = None,
        return_preds: bool = False,
        resume: Mapping[str, Any] | None = None,
        limit_batches: int | float | None = None,
    ) -> dict[str, Any] | tuple[Any, Any]:
        """One pass over ``loader``; returns ``{'loss': float, metric: value, ...}``.

        With ``return_preds=True`` it returns ``(y_pred, y)`` instead: the outputs and targets of the
        whole loader, concatenated in loader order, on the CPU (the values are in ``runner.latest``).
        ``resume`` continues a training pass from a :meth:`position` saved in a checkpoint.
        ``limit_batches`` ends the pass after that many batches, or that fraction of the loader's (see
        :func:`batch_limit`).
        """
        training = self.module.training
        # DDP is for training: evaluation shards differ in size, so ranks evaluate the plain module
        model = self.model if training or not self.distributed else self.module
        name = name or ("train" if training else "eval")
        if training and self.optimizer is None:
            raise ConfigError("the model is in training mode, so the Runner needs an optimizer")
        pass_metrics = self.metrics if metrics is None else prepare_metrics(metrics)
        # step_fn's training pass: its values instead of the forward's outputs and the metrics
        own_values = StepValues(self.step_expects, self.device) if training and self.step_fn else None
        if own_values is not None and pass_metrics:
            raise ConfigError(
                f"metrics ({', '.join(pass_metrics)}) take a forward's outputs, which a step_fn's training pass "
                "has none of; return the values from step_fn instead ({name: value}), and give metrics to "
                "evaluation only"
            )
        if self.distributed:
            loader = self._shard(loader, training)
        if isinstance(getattr(loader, "sampler", None), DistributedSampler):
            loader.sampler.set_epoch(self.epoch)  # a new shuffle each epoch, the same on every rank
        buffers = _Buffers(
            pass_metrics,
            self.device,
            keep_all=return_preds,
            distributed=self.distributed,
            summed=self.summed_loss,
        )
        prefetch = streams(self.device) is not None  # CUDA, XPU: batches copied on a side stream
        non_blocking = prefetch  # copies overlap with compute where memory is pinned
        # a CPU run uses the batches as the loader yields them
        move = self.device.type != "cpu" or self.channels_last
        # (a disabled torch.autocast still costs ~2.5 us a step)
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else _NO_OP
        self.stopped = False
        length = _length(loader)
        limit = batch_limit("limit_batches", limit_batches, loader)
        tick = self.loggers.start_pass(
            name, self.epoch, length if limit is None else min(limit, length or limit)
        )
        forwards = 0  # under FSDP: the forward passes of the rank with the most evaluation batches
        if self.fsdp and not training:
            from . import fsdp  # lazy: imported by __init__ already

            forwards = fsdp.evaluation_forwards(length, limit, self.device)

        # Creating the iterator draws from the RNG (the loader's base seed; shuffling); a resumed
        # pass recreates it from the RNG state of the interrupted pass and skips the batches done.
        generators = loader_generators(loader) if training else []
        if resume is not None:
            restore_rng(resume["rng_start"], generators)
        rng_start = capture_rng(generators) if training else None
        fast = fast_batches(loader, self.device, self.data_on_device) if self.fast_path else None
        # said once per run, of its training: evaluating a run (xt test, predict) says nothing about it
        if training and fast is not None and fast.description is not None and not self._fast_path_noticed:
            self._fast_path_noticed = True
            self.loggers.notice(fast.description)
        batches = iter(loader if fast is None else fast)
        done = 0  # steps of this pass already done (by an interrupted run)
        if resume is not None:
            done = skip_batches(batches, resume["step"])
            ranks = resume.get("ranks")  # (saved by another number of ranks: rank 0's, not exact)
            buffers.restore(
                ranks[distributed.rank()] if ranks and len(ranks) == distributed.world_size() else resume,
                done,
            )
            if own_values is not None and "step_values" in resume:  # (saved by a run without step_fn: none)
                own_values.restore(resume["step_values"])
            restore_rng(resume["rng"], generators)
        if limit is not None:  # (a debugging run: the loop itself is as without a limit)
            batches = itertools.islice(batches, max(limit - done, 0))
        if prefetch:
            batches = prefetch_to_device(batches, self.device, self.channels_last)
            move = False  # done by the prefetcher
        self._pass = {
            "buffers": buffers, "rng_start": rng_start, "generators": generators, "name": name,
            "step_values": own_values,
        }  # fmt: skip
        # The callbacks' hooks, looked up once per pass; where none implements one, the loop is as without it.
        run = self.run
        for hook in self._hooks("on_pass_start"):
            hook(run, name)
        if resume is not None and self.on_resume is not None:
            self.on_resume()
        batch_end = self._hooks("on_train_batch_end" if training else "on_validation_batch_end")
        self._before_step = self._hooks("on_before_optimizer_step") if training else []
        if own_values is not None and self._before_step:  # it would silently never be called
            raise ConfigError(
                "a callback has on_before_optimizer_step, which step_fn leaves out (it steps the optimizers "
                "itself); do that work in step_fn before optimizer.step()"
            )
        batch_start = self._hooks("on_train_batch_start") if training else []
        if batch_start:  # called as each batch is taken: the loop's own path is unchanged
            batches = _calling_before(batches, batch_start, run, done)

        # Read once per pass: the loop body below runs every step, where each lookup counts.
        accumulate = self.accumulate
        # (FSDP accumulates the sharded gradients: a no_sync would hold whole, unsharded ones)
        ddp_accumulation = self.distributed and not self.fsdp and training and accumulate > 1
        skip_nonfinite = training and self.nonfinite_loss == "skip"
        log_every = self.log_every_n_steps
        checkpoint_every = (self.checkpoint_every_n_steps or 0) if training and self.on_checkpoint else 0
        forward_fn, loss_fn, scaler, optimizer = self.forward_fn, self.loss_fn, self.scaler, self.optimizer
        # step_fn's training step in place of the forward, loss, backward and optimizer step below
        own_step = self._own_step if own_values is not None else None
        backward = training and own_step is None
        # Entering a context manager, even a no-op one, costs two Python calls: the forward pass enters
        # one only for autocast (mixed precision) or DDP's no_sync (on gradient accumulation steps).
        bare_forward = autocast is _NO_OP and not ddp_accumulation and own_step is None
        # The optimizer step inline, where it is just step and zero_grad: a method call and its checks
        # cost about as much as the rest of the loop's bookkeeping.
        plain_step = training and self._plain_optimizer_step() and not self._before_step
        losses, sizes, keep_loss = buffers.losses, buffers.sizes, buffers.keep_loss  # appended to in place
        keep_outputs = buffers.keep_outputs
        # Under DDP the ranks must agree to stop, which takes a collective: only at the training pass's
        # logging steps, where every rank is at the same step (evaluation shards may differ by a batch).
        # A pass inside a training pass (evaluate_within) runs to its end: the training pass stops after it.
        alone, agree_to_stop = not self.distributed and not self._within, self.distributed and training
        # A stop inside an accumulation group goes on to the group's optimizer step: its partial gradients are
        # in no checkpoint (under DDP each rank's own), so a resume from inside the group would not be exact.
        stop_every, stopping = accumulate if training else 1, False

        if backward:
            optimizer.zero_grad()
        step = done
        # the logging steps: the pass's first, then every log_every-th (a counter: cheaper than a modulo)
        next_log = 1 if done == 0 else (done // log_every + 1) * log_every
        skipped = resume.get("skipped", 0) if resume else 0  # batches left out (nonfinite_loss='skip')
        first_size = None  # the examples in the pass's first logged batch
        with torch.set_grad_enabled(training):
            for step, batch in enumerate(batches, done + 1):  # noqa: B007 - `step` is used after the loop
                if move:
                    batch = to_device(batch, self.device, non_blocking, self.channels_last)
                try:  # (free when nothing is raised)
                    if bare_forward:
                        y_pred, y = forward_fn(model, batch)
                        loss = loss_fn(y_pred, y)
                    elif own_step is not None:  # y_pred: step_fn's values; y: the batch, for its size
                        loss, y_pred = own_step(model, batch, autocast, own_values)
                        y = batch
                    else:  # DDP: an accumulation step's forward pass must not prepare a gradient all-reduce
                        with (
                            _no_sync(model, autocast) if ddp_accumulation and step % accumulate else autocast
                        ):
                            y_pred, y = forward_fn(model, batch)
                            loss = loss_fn(y_pred, y)
                except (RuntimeError, ValueError, TypeError, IndexError, AttributeError) as e:
                    where = f"{_epoch(self.epoch)}batch {step} of loader '{name}'"
                    if _failed_in(e, loss_fn):
                        # a label beyond the model's outputs, in any batch; else a loss that fails on the pass's
                        # first batch does not fit the outputs (later failures, data-dependent bugs, stay as they are)
                        label = _label_out_of_range(y_pred, y, loss_fn)
                        if label is not None:
                            raise LossError(f"{where}: {label}") from e
                        if step == done + 1:
                            raise _loss_mismatch(e, y_pred, y) from e
                    elif self.feeds_x and (unfit := _unfit_inputs(self.module, batch)) is not None:
                        raise BatchError(f"{where}: the model failed ({first_line(e)}): {unfit}") from e
                    # a batch smaller than the first: the loader's last, for a model that assumes the size
                    changed = None if isinstance(e, XtError) else smaller_batch(batch, first_size)
                    if changed is not None:
                        raise BatchError(
                            f"{_epoch(self.epoch)}batch {step} of loader '{name}' failed ({first_line(e)}): "
                            f"{changed}, or leave that batch out with DataLoader(..., drop_last=True)"
                        ) from e
                    raise
                if loss is not None and (not isinstance(loss, torch.Tensor) or loss.ndim != 0):
                    raise LossError(
                        f"loss_fn must return a scalar tensor, but returned {describe(loss)}; "
                        "reduce it (e.g. reduction='mean') or return loss.mean()"
                    )

                if skip_nonfinite and not torch.isfinite(loss).item():
                    # A host read every step: the price of this option (the default, raising, needs none).
                    skipped += 1
                    tick()
                    continue
                if backward:
                    try:
                        scaled = loss / accumulate if accumulate > 1 else loss
                        (scaler.scale(scaled) if scaler is not None else scaled).backward()
                    except (AttributeError, TypeError, RuntimeError) as e:
                        _raise_if_the_loss_is_at_fault(loss, e, loss_fn, y_pred)
                        raise
                    if step % accumulate == 0:
                        if plain_step:
                            optimizer.step()
                            optimizer.zero_grad()
                            self.global_step += 1
                        else:  # loss scaling, clipping, a per-batch scheduler, hooks or a closure
                            self._optimizer_step(batch)

                if batch_end:
                    for hook in batch_end:
                        hook(run, batch, step, y_pred, loss)
                # Per step only a float (CPU) or detached references are kept: no value leaves a GPU here.
                if loss is not None:
                    losses.append(keep_loss(loss))
                sizes.append(batch_size(y))
                if keep_outputs:
                    buffers.add_outputs(y_pred, y)
                else:  # freed now, not at the next forward: its memory is reused while it is in the caches
                    y_pred = None
                tick()
                log_step = step == next_log
                if log_step:
                    next_log = (step // log_every + 1) * log_every
                    if first_size is None:  # read here, not every step, for the error of a smaller batch
                        first_size = leading_size(batch)
                    # Logging step: metrics update on the buffered batches and values are read to the
                    # host -- on CUDA this is the pass's only synchronisation point between batches.
                    values = buffers.flush()
                    if own_values is not None:
                        values.update(own_values.compute())
                    if training:
                        self._check_finite(values, buffers, name)
                        rates = learning_rates(optimizer)  # read here only: schedules change them every step
                        self.loggers.log_metrics(
                            {**{f"{name}/{k}": v for k, v in values.items()}, **rates}, self.global_step
                        )
                        values.update(rates)  # beside the running values (the console's progress bar)
                    self.loggers.update_pass(name, values)
                elif keep_outputs and buffers.elements > _MAX_BUFFERED_ELEMENTS:
                    buffers.flush_outputs()  # bounds the memory of the buffered outputs
                if checkpoint_every and step % accumulate == 0 and self.global_step % checkpoint_every == 0:
                    self._pass.update(step=step, skipped=skipped)  # for position()
                    if self.on_checkpoint():  # F.train: a validation stopped the run (early stopping)
                        self.stop_requested = stopping = True
                if (alone and self.stop_requested) or (
                    agree_to_stop and (stopping or log_step and self._any_stop())
                ):
                    stopping = True
                    if step % stop_every == 0:
                        self._pass.update(step=step, skipped=skipped)
                        self.stopped = True
                        break

        if self.stopped:  # buffers stay unflushed: position() saves them as they are
            return {}
        if step and forwards > step:  # FSDP gathers parameters in each forward, with every rank
            with torch.no_grad():
                for _ in range(forwards - step):
                    forward_fn(model, batch)  # the outputs are dropped: every example counts once
        if step == 0:
            raise ConfigError(f"loader '{name}' yielded no batches; check the dataset size and drop_last")
        if skip_nonfinite and skipped == step:
            raise NonFiniteLossError(
                f"the loss was non-finite in all {step} batches of loader '{name}' ({_epoch(self.epoch)}"
                "nothing was trained); lower the learning rate, clip gradients or check the data for NaN/inf"
            )
        if training and step % self.accumulate:
            self._optimizer_step()  # the gradients of a last, incomplete accumulation group
        values = buffers.flush(final=True)
        if own_values is not None:
            values.update(own_values.compute())
        if training and self.nonfinite_loss == "skip":
            values["skipped"] = skipped
            if skipped:
                self.loggers.notice(f"{name}: skipped {skipped} batches with a non-finite loss")
        if training:
            self._check_finite(values, buffers, name)
            if self.scheduler is not None and self.scheduler_step == "epoch":
                step_scheduler(self.scheduler, values.get("loss"))
        if self.summed_loss:
            self._notice_once(
                "loss", "loss_fn has reduction='sum': the loss is the pass's sum divided by its examples"
            )
        for key, metric in pass_metrics.items():  # e.g. what an F1 averaged, where not its default
            self._notice_once(key, getattr(metric, "note", None))
        self.loggers.end_pass(name, values)
        self.latest = values
        for hook in self._hooks("on_pass_end"):
            hook(run, name, values)
        return buffers.predictions() if return_preds else values

    def evaluate_within(
        self,
        loader: Iterable[Any],
        name: str,
        *,
        metrics: Mapping[str, Any],
        limit_batches: int | float | None,
    ) -> dict[str, Any]:
        """An evaluation pass from inside a training pass (F.train's ``val_every_n_steps``); its values.

        The training pass goes on afterwards as it was (its position, its hooks, the model in training
        mode). The loggers see no pass (the caller logs the values); a stop requested meanwhile ends the
        training pass once this one has finished.
        """
        kept = self._pass, self._before_step, self.latest, self.loggers
        self.module.eval()
        self.loggers, self._within = LoggerGroup(), True
        try:
            return self(loader, name, metrics=metrics, limit_batches=limit_batches)
        finally:
            self.module.train()
            self._pass, self._before_step, self.latest, self.loggers = kept
            self._within = False

    def pass_batches(self, loader: Iterable[Any], limit_batches: int | float | None = None) -> int | None:
        """The batches of a training pass over ``loader`` (under DDP, of this rank's shard), at most
        ``limit_batches`` (see :func:`batch_limit`); None when unknown (a loader without a length)."""
        loader = self._shard(loader, True) if self.distributed else loader
        known = [
            n for n in (_length(loader), batch_limit("limit_batches", limit_batches, loader)) if n is not None
        ]
        return min(known) if known else None

    def _notice_once(self, key: str, note: str | None) -> None:
        """Show ``key: note`` in the console and ``notes.txt``, once a run."""
        if note and (key, note) not in self._noted:
            self._noted.add((key, note))
            self.loggers.notice(f"{key}: {note}")

    def optimizer_steps(self, loader: Iterable[Any]) -> int | None:
        """The optimizer steps a training pass over ``loader`` takes: ceil(batches / accumulate_grad_batches)
        (under DDP, of this rank's shard); None for a loader without a length."""
        batches = _length(self._shard(loader, True) if self.distributed else loader)
        return None if batches is None else -(-batches // self.accumulate)

    def _any_stop(self) -> bool:
        """Whether any DDP rank was asked to stop (a collective: every rank calls it at the same step)."""
        return distributed.any_rank(self.stop_requested, self.device)

    def _shard(self, loader: Any, training: bool) -> Any:
        """The loader with a distributed sampler, made once per loader."""
        key = (id(loader), training)
        if key not in self._sharded:
            self._sharded[key] = (loader, distributed.shard_loader(loader, training))  # keeps `loader` alive
        return self._sharded[key][1]

    def _plain_optimizer_step(self) -> bool:
        """Whether :meth:`_optimizer_step` is just ``optimizer.step()`` and ``zero_grad()`` (the loop inlines it)."""
        clipping = self.clip_grad_norm or self.clip_grad_value
        return (
            not clipping
            and self.scaler is None
            and (self.scheduler is None or self.scheduler_step != "batch")
            and not self.needs_closure
            and self.after_step is None
        )

    def _own_step(
        self, model: Any, batch: Any, autocast: Any, values: StepValues
    ) -> tuple[torch.Tensor | None, dict[str, torch.Tensor]]:
        """step_fn's step of one batch, counted as one optimizer step; its loss and its values."""
        with autocast:
            returned = self.step_fn(model, batch, self.optimizer)
        loss, step_values = values.add(returned, batch)
        if self.scheduler is not None and self.scheduler_step == "batch":
            step_scheduler(self.scheduler, None)
        self.global_step += 1
        return loss, step_values

    def _hooks(self, name: str) -> list[Callable[..., Any]]:
        """The callbacks' methods ``name``, for those that implement it."""
        return [getattr(cb, name) for cb in self.callbacks if callable(getattr(cb, name, None))]

    def _optimizer_step(self, batch: Any = None) -> None:
        clipping = self.clip_grad_norm or self.clip_grad_value
        if self.scaler is not None and (clipping or self._before_step):
            self.scaler.unscale_(self.optimizer)  # hooks and clipping see the true gradients, not the scaled
        for hook in self._before_step:
            hook(self.run, self.optimizer)
        if clipping:
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            if self.clip_grad_norm:
                torch.nn.utils.clip_grad_norm_(params, self.clip_grad_norm)
            if self.clip_grad_value:
                torch.nn.utils.clip_grad_value_(params, self.clip_grad_value)
        if self.needs_closure:
            self.optimizer.step(self._closure(batch))
        elif self.scaler is None:
            self.optimizer.step()
        else:
            self.scaler.step(self.optimizer)
            self.scaler.update()
        self.optimizer.zero_grad()
        if self.scheduler is not None and self.scheduler_step == "batch":
            self.scheduler.step()
        self.global_step += 1
        if self.after_step is not None:
            self.after_step()

    def _closure(self, batch: Any) -> Callable[[], torch.Tensor]:
        """For an optimizer that evaluates the loss itself: the batch's forward, loss and backward."""
        model, forward_fn, loss_fn, optimizer = self.model, self.forward_fn, self.loss_fn, self.optimizer
        autocast = torch.autocast(self.device.type, dtype=self.amp_dtype) if self.amp_dtype else _NO_OP

        def closure() -> torch.Tensor:
            optimizer.zero_grad()
            with autocast:
                y_pred, y = forward_fn(model, batch)
                loss = loss_fn(y_pred, y)
            loss.backward()
            return loss

        return closure

    @property
    def pass_step(self) -> int:
        """Batches done in the running training pass, skipped ones included: set at each checkpoint step
        (``on_checkpoint``) and at a stop, for :meth:`position`."""
        return self._pass["step"]

    def position(self) -> dict[str, Any]:
        """Where the running training pass is: enough to resume it exactly (see ``resume``).

        The buffers are saved as they are, not flushed, so the resumed pass sums its losses and
        updates its metrics in the same chunks as an uninterrupted one: the same floats come out.
        """
        buffers, own_values = self._pass["buffers"], self._pass["step_values"]
        state = buffers.state()
        if self.distributed and not self.fsdp:  # (FSDP saves each rank's position in its own file)
            # rank 0 writes the checkpoint: it holds every rank's running sums and metric states, for each
            # rank to go on with its own (from the CPU: a rank reads no other rank's device)
            state["ranks"] = distributed.gathered(to_device(state, torch.device("cpu")))
        return {
            "step": self.pass_step,
            "skipped": self._pass["skipped"],
            **state,
            **({"step_values": own_values.state()} if own_values is not None else {}),
            "rng_start": self._pass["rng_start"],
            "rng": capture_rng(self._pass["generators"]),
        }

    def _check_finite(self, values: dict[str, Any], buffers: _Buffers, name: str) -> None:
        # The running loss is non-finite exactly when some loss in the pass was: no extra host read.
        if not math.isfinite(values.get("loss", 0.0)):
            step, loss = buffers.non_finite_loss()
            raise NonFiniteLossError(
                f"the loss is {loss} at {_epoch(self.epoch)}step {step} of loader '{name}'; "
                "lower the learning rate, clip gradients or check the data for NaN/inf"
            )


def skip_batches(batches: Any, n: int) -> int:
    """Advance a fresh loader iterator by ``n`` batches; returns ``n``.

    A single-process DataLoader iterator advances its sampler only, without loading the data;
    anything else fetches and drops the batches.
    """
    if isinstance(batches, _SingleProcessDataLoaderIter):
        for _ in range(n):
            batches._next_index()
        batches._num_yielded += n
        return n
    if isinstance(batches, FastIterator):  # the same: the samplers draw, no data is read
        skipped = batches.skip(n)
        if skipped < n:
            raise ConfigError(f"cannot resume at step {n}: the loader has only {skipped} batches now")
        return n
    for i in range(n):
        if next(batches, _END) is _END:
            raise ConfigError(f"cannot resume at step {n}: the loader has only {i} batches now")
    return n


def _calling_before(batches: Iterable[Any], hooks: list[Callable[..., Any]], run: Any, done: int) -> Any:
    """``batches``, calling ``hook(run, batch, step)`` before each one is handed on."""
    for step, batch in enumerate(batches, done + 1):
        for hook in hooks:
            hook(run, batch, step)
        yield batch


_END = object()
_NO_OP = contextlib.nullcontext()


@contextlib.contextmanager
def _no_sync(model: Any, autocast: Any) -> Any:
    """DDP's ``no_sync`` and ``autocast`` as one context: the loop enters one context per step."""
    with model.no_sync(), autocast:
        yield


def learning_rates(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """The learning rate of every param group now: ``lr`` for the first, ``lr/1``, ``lr/2``, ... for the others
    (step_fn's named optimizers: ``lr/NAME``, ``lr/NAME/1``, ...)."""
    if isinstance(optimizer, Optimizers):
        return optimizer.learning_rates()
    return {("lr" if i == 0 else f"lr/{i}"): float(g["lr"]) for i, g in enumerate(optimizer.param_groups)}


def step_scheduler(scheduler: Any, value: float | None) -> None:
    """Step a scheduler once; ``ReduceLROnPlateau`` gets the monitored ``value``."""
    if isinstance(scheduler, (torch.optim.lr_scheduler.ReduceLROnPlateau, Schedulers)):
        scheduler.step(value)
    else:
        scheduler.step()


def _needs_closure(optimizer: Any) -> bool:
    """Whether ``optimizer.step`` requires a closure (LBFGS), not merely accepts one (SGD, Adam)."""
    try:
        closure = inspect.signature(optimizer.step).parameters.get("closure")
    except (TypeError, ValueError):  # a builtin or a C extension without a signature
        return False
    return closure is not None and closure.default is inspect.Parameter.empty


def _failed_in(error: Exception, fn: Any) -> bool:
    """Whether ``error`` came out of a call of ``fn`` (a function or a module) made in the catching frame."""
    below = error.__traceback__.tb_next if error.__traceback__ is not None else None
    if below is None or fn is None or isinstance(error, (XtError, torch.OutOfMemoryError)):
        return False
    # the frame the catching one called: fn's own, or nn.Module's __call__ (self is fn) for a module
    frame = below.tb_frame
    return frame.f_code is getattr(fn, "__code__", None) or frame.f_locals.get("self") is fn


def _loss_mismatch(error: Exception, y_pred: Any, y: Any) -> LossError:
    if logits(y_pred) is not y_pred:  # (x, y) batches: the default forward leaves the model's output as it is
        return LossError(
            f"loss_fn failed on the model's output {type(y_pred).__name__} ({first_line(error)}); it holds "
            "the outputs in .logits: pass forward_fn=lambda model, batch: (model(batch[0]).logits, batch[1]), "
            "or loss_fn=None to train on its .loss"
        )
    return LossError(
        f"loss_fn failed on y_pred {describe(y_pred)} and y {describe(y)} ({first_line(error)}); "
        "give a loss that fits the model's outputs and the targets"
    )


def _raise_if_the_loss_is_at_fault(loss: Any, error: Exception, loss_fn: Any, y_pred: Any) -> None:
    """A failed backward() in words, where the loss (not the model) is the cause."""
    if loss is None and isinstance(loss_fn, ModelLoss):
        raise LossError(
            f"no loss_fn was given and the model's output ({describe(y_pred)}) carries no .loss to train on; "
            "pass a loss_fn, e.g. torch.nn.CrossEntropyLoss()"
        ) from error
    if loss is None:
        raise LossError(
            "loss_fn returned None in training; it must return a scalar tensor computed from y_pred"
        ) from error
    if isinstance(loss, torch.Tensor) and not loss.requires_grad:  # torch: "element 0 of tensors does not..."
        raise LossError(
            "the loss does not require grad, so there is nothing to train: loss_fn must compute it from "
            "y_pred with torch operations (not .item() or a new tensor), and the model needs parameters "
            "with requires_grad=True"
        ) from error


def _label_out_of_range(y_pred: Any, y: Any, loss_fn: Any) -> str | None:
    """A class label the model has no output for, in words (None where the labels are not class indices)."""
    if not (isinstance(y_pred, torch.Tensor) and isinstance(y, torch.Tensor)) or y_pred.ndim < 2:
        return None
    if y.is_floating_point() or y.dtype == torch.bool or y.ndim != y_pred.ndim - 1:
        return None
    classes = y_pred.shape[1]
    try:  # (after a CUDA device-side assert every CUDA call fails: then torch's own error stands)
        outside = y[((y < 0) | (y >= classes)) & (y != getattr(loss_fn, "ignore_index", -100))]
        if not outside.numel():
            return None
        label, top = int(outside[0]), int(y.max())
    except RuntimeError:
        return None
    more = f"{top + 1} or more" if top >= classes else "as many as there are classes"
    return (
        f"label {label} is out of range for the model's {classes} outputs (classes 0 to {classes - 1}); "
        f"check the data's labels, or build the model with {more} outputs"
    )


def _unfit_inputs(model: torch.nn.Module, batch: Any) -> str | None:
    """What in the ``x`` of an ``(x, y)`` batch does not fit the model, in words: its dtype beside the
    weights', or its size beside what the first layer takes; None where neither shows."""
    x = batch[0] if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
    if not isinstance(x, torch.Tensor):
        return None
    weight = next((p for p in model.parameters() if p.is_floating_point()), None)
    if weight is not None and x.is_floating_point() and x.dtype != weight.dtype:
        ours, theirs = (str(t).removeprefix("torch.") for t in (x.dtype, weight.dtype))
        return (
            f"the inputs are {ours} and the model's weights {theirs}; convert the inputs to {theirs} "
            f"(x.to(torch.{theirs}), e.g. in the Dataset), or the model with model.to(torch.{ours})"
        )
    layers = (torch.nn.Linear, torch.nn.modules.conv._ConvNd, torch.nn.RNNBase)
    first = next((m for m in model.modules() if isinstance(m, layers)), None)
    if isinstance(first, torch.nn.modules.conv._ConvNd):
        what, size, io = "channels", x.shape[1] if x.ndim > 1 else 0, (first.in_channels, first.out_channels)
    elif isinstance(first, torch.nn.Linear):
        what, size, io = "features", x.shape[-1] if x.ndim else 1, (first.in_features, first.out_features)
    elif isinstance(first, torch.nn.RNNBase):
        what, size, io = "features", x.shape[-1] if x.ndim else 1, (first.input_size, first.hidden_size)
    else:
        return None
    takes = io[0]
    if size == takes:
        return None
    return (
        f"the inputs {describe(x)} have {size} {what}, but the model's first layer {type(first).__name__}{io} "
        f"takes {takes}; give it inputs of {takes} {what}, or build the model for {size}"
    )


def _epoch(epoch: int) -> str:
    """``'epoch 3, '`` in messages; nothing for a Runner called outside F.train (no epochs there)."""
    return f"epoch {epoch}, " if epoch else ""


def _length(loader: Any) -> int | None:
    try:
        return len(loader)
    except TypeError:  # an IterableDataset without __len__
        return None


def _detach(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):  # the common case (every step), without the walker's recursion
        return obj.detach() if obj.requires_grad else obj
    return map_tensors(_detach_tensor, obj)


def _detach_tensor(t: torch.Tensor) -> torch.Tensor:
    return t.detach() if t.requires_grad else t  # labels and evaluation outputs: kept as they are


def _concat_outputs(outputs: list[tuple[Any, Any]]) -> tuple[Any, Any] | None:
    """Buffered ``(y_pred, y)`` pairs as one concatenated pair; None where shapes differ between batches."""
    try:
        return concat([p for p, _ in outputs]), concat([t for _, t in outputs])
    except (BatchError, RuntimeError):
        return None


def _numel(obj: Any) -> int:
    return obj.numel() if isinstance(obj, torch.Tensor) else 0


def _to_python(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return float(value) if isinstance(value, (int, float)) else value


class _Buffers:
    """What a pass keeps between logging steps, and the pass totals built from it."""

    def __init__(
        self,
        metrics: dict[str, Any],
        device: torch.device,
        keep_all: bool,
        distributed: bool = False,
        summed: bool = False,
    ):
        self.metrics = metrics
        # size-only metrics (EPS) get the example counts at each flush; the others the buffered outputs
        self.size_metrics = {n: m for n, m in metrics.items() if callable(getattr(m, "update_size", None))}
        self.output_metrics = {n: m for n, m in metrics.items() if n not in self.size_metrics}
        # metrics that take one batch per update (a function's mean): the outputs keep their batches apart
        self.batch_metrics = {n for n, m in self.output_metrics.items() if getattr(m, "per_batch", False)}
        self.summed = summed  # whether each loss is its batch's sum (reduction='sum'), not its mean
        self.device = device
        self.distributed = distributed
        self.next_compute: dict[str, float] = {}  # per metric: when its running value may be computed next
        self.keep_all = keep_all
        self.keep_outputs = bool(self.output_metrics) or keep_all
        # The losses since the last logging step. On the CPU each is read at once (.item()) and summed in
        # Python: there is no device to wait for, and a float costs ~3 us a step less than keeping a
        # detached tensor. On a GPU they stay tensors, summed on the device at the logging step, so
        # that a step never waits for the GPU.
        self.read_at_once = device.type == "cpu"
        self.keep_loss = torch.Tensor.item if self.read_at_once else torch.Tensor.detach
        self.losses: list[torch.Tensor | float] = []
        self.sizes: list[int] = []
        self.outputs: list[tuple[Any, Any]] = []
        self.elements = 0
        self.compacted = 0  # self.outputs[:compacted] are concatenated chunks (see compact_outputs)
        self.all_outputs: list[tuple[Any, Any]] = []  # with keep_all: the whole pass
        self.loss_sum: torch.Tensor | float | None = None  # a float on the CPU, else on the device
        self.count = 0
        self.folded = 0  # steps whose losses are in loss_sum
        self.logs = 0  # logging steps so far
        self.updated_at = 0  # the logging step at which the metrics were last updated
        for m in metrics.values():
            if isinstance(m, torch.nn.Module):
                m.to(device)
            m.reset()

    def add_outputs(self, y_pred: Any, y: Any) -> None:
        """Keep a batch's outputs for the metrics; the loop appends the loss and size itself."""
        self.outputs.append((_detach(y_pred), _detach(y)))
        self.elements += _numel(y_pred)

    def state(self) -> dict[str, Any]:
        return {
            "loss_sum": self.loss_sum,
            "count": self.count,
            "losses": list(self.losses),
            "sizes": list(self.sizes),
            "outputs": self.outputs,
            "logs": (self.logs, self.updated_at),
            "metrics": {name: get_state(m) for name, m in self.metrics.items()},
        }

    def restore(self, position: Mapping[str, Any], step: int) -> None:
        """Continue the totals and buffers of an interrupted pass (see ``Runner.position``)."""
        state = to_device({k: position[k] for k in ("loss_sum", "losses", "outputs", "metrics")}, self.device)
        self.count = position["count"]
        self.sizes[:] = position["sizes"]  # in place: the loop holds these lists
        self.folded = step - len(self.sizes)
        self.logs, self.updated_at = position.get("logs", (0, 0))  # saved by an older version: count anew
        self.outputs = list(state["outputs"])
        # saved on another kind of device (floats from a CPU run, tensors from a GPU run): as this one keeps them
        convert = float if self.read_at_once else lambda loss: torch.as_tensor(loss, device=self.device)
        self.losses[:] = [convert(loss) for loss in state["losses"]]
        self.loss_sum = None if state["loss_sum"] is None else convert(state["loss_sum"])
        self.elements = sum(_numel(p) for p, _ in self.outputs)
        for name, metric_state in state["metrics"].items():
            if (
                name in self.metrics and metric_state is not None
            ):  # metrics without a known state restart here
                set_state(self.metrics[name], metric_state)

    def flush_outputs(self) -> None:
        """Hand the buffered outputs to the metrics (no host read)."""
        if not self.outputs:
            return
        # several batches in one update: much cheaper than one each (but per-batch metrics get one each)
        joined = _concat_outputs(self.outputs) if len(self.batch_metrics) < len(self.output_metrics) else None
        groups = [joined] if joined is not None else self.outputs
        for name, metric in self.output_metrics.items():
            for y_pred, y in self.outputs if name in self.batch_metrics else groups:
                try:
                    metric.update(y_pred, y)
                except XtError:
                    raise
                except Exception as e:
                    raise MetricError(
                        f"metric {name!r} ({type(metric).__name__}) failed on y_pred {describe(y_pred)} "
                        f"and y {describe(y)}: {first_line(e)}"
                    ) from e
        if self.keep_all:
            self.all_outputs.extend(self.outputs)
        self.outputs, self.elements, self.compacted = [], 0, 0

    def compact_outputs(self) -> None:
        """Concatenate the outputs buffered since the last logging step into one pair (no host read).

        The batches' own tensors are freed while their memory is still in the CPU's caches, for the
        next steps to reuse: holding hundreds of batches' outputs until the metrics' update made each
        step write its outputs to memory outside the caches (~3 us a step for a small model's logits).
        """
        if self.batch_metrics:  # they take the batches one by one: kept apart
            return
        new = self.outputs[self.compacted :]
        joined = _concat_outputs(new) if len(new) > 1 else None
        if joined is not None:  # else shapes that differ between batches: kept as they are
            self.outputs[self.compacted :] = [joined]
        self.compacted = len(self.outputs)

    def flush(self, final: bool = False) -> dict[str, Any]:
        """Fold the buffers into the pass totals and read the values so far to the host.

        Under DDP the ``final`` values are synchronised over all ranks; running values are this rank's.
        """
        if self.losses:
            if self.summed:  # batch sums: weighted by the batch size already
                chunk_sum = sum(self.losses) if self.read_at_once else torch.stack(self.losses).float().sum()
            elif self.read_at_once:  # floats: summed here, without a torch call
                chunk_sum = sum([loss * n for loss, n in zip(self.losses, self.sizes)])
            else:
                sizes = torch.tensor(self.sizes, dtype=torch.float32).to(self.device, non_blocking=True)
                chunk_sum = (torch.stack(self.losses).float() * sizes).sum()
            self.loss_sum = chunk_sum if self.loss_sum is None else self.loss_sum + chunk_sum
        self.chunk_losses, self.chunk_start = list(self.losses), self.folded + 1
        self.folded += len(self.sizes)
        examples = sum(self.sizes)
        self.count += examples
        for name, metric in self.size_metrics.items() if examples else ():
            try:
                metric.update_size(examples)
            except Exception as e:
                raise MetricError(
                    f"metric {name!r} ({type(metric).__name__}) failed in update_size({examples}): {e}"
                ) from e
        self.losses.clear()  # in place: the loop holds these lists
        self.sizes.clear()
        self.logs += 1
        update = (
            final
            or self.logs == 1
            or self.elements >= _UPDATE_ELEMENTS
            or self.logs - self.updated_at >= _UPDATE_EVERY_LOGS
        )
        if update:
            self.flush_outputs()
            self.updated_at = self.logs
        else:
            self.compact_outputs()

        sync = final and self.distributed
        values: dict[str, Any] = {}
        if self.loss_sum is not None:
            if sync:  # one all-reduce for the sum and the count
                loss_sum = torch.as_tensor(self.loss_sum, dtype=torch.float64, device=self.device)
                total = torch.stack(
                    [loss_sum, torch.tensor(float(self.count), dtype=torch.float64, device=self.device)]
                )
                total = distributed.all_reduce_sum(total)
                values["loss"] = total[0] / total[1]
            else:
                values["loss"] = self.loss_sum / self.count
        values = {k: _to_python(v) for k, v in values.items()}
        for name, metric in self.metrics.items():
            start = time.perf_counter()
            if not update or (not final and start < self.next_compute.get(name, 0.0)):
                continue  # left out of this logging step's running values: see above and below
            if self.distributed:
                set_sync(metric, sync)
            try:
                value = metric.compute()
            except Exception as e:
                raise MetricError(f"metric {name!r} ({type(metric).__name__}) failed to compute: {e}") from e
            if isinstance(value, Mapping):  # several values, a column each: F1(average=None)'s f1/0, f1/1
                values.update({f"{name}/{key}": _to_python(v) for key, v in value.items()})
            else:
                values[name] = _to_python(value)
            # A running value may cost at most ~5% of the pass: a metric whose compute() is slow (an
            # AUC sorts every example so far) is computed again only after 20x its cost has passed.
            cost = time.perf_counter() - start
            self.next_compute[name] = start + 20 * cost if cost > _CHEAP_COMPUTE_S else 0.0
        return values

    def non_finite_loss(self) -> tuple[int, float]:
        """The first step of the last flushed chunk whose loss was NaN/inf, and that loss."""
        losses = torch.tensor(self.chunk_losses) if self.read_at_once else torch.stack(self.chunk_losses)
        bad = (~torch.isfinite(losses)).nonzero()
        index = int(bad[0]) if len(bad) else 0
        return self.chunk_start + index, losses[index].item()

    def predictions(self) -> tuple[Any, Any]:
        # tensors padded per batch (different widths) come back as per-example lists
        y_pred = concat([p for p, _ in self.all_outputs], ragged_to_list=True)
        y = concat([t for _, t in self.all_outputs], ragged_to_list=True)
        return to_device(y_pred, torch.device("cpu")), to_device(y, torch.device("cpu"))
