"""The TensorBoard logger: scalars, learning rate, hyper-parameters and optional histograms.

Everything goes into one event directory, ``save_dir/tensorboard`` (``tensorboard --logdir runs``
shows each run directory as one run). Every step is the global (optimizer) step, so all charts
share one x-axis and TensorBoard can hide what an interrupted run logged past its resumed point. Tags:

- ``train/loss``, ``train/METRIC``: running values of the training pass so far, at logging steps (metrics where updated).
- ``epoch/LOADER/loss``, ``epoch/LOADER/METRIC``: the epoch's exact values of every loader
  (``train``, ``val``, ``test``, ``test.NAME``), at the epoch's last step.
- ``lr``, ``lr/1``, ``lr/2``, ...: the learning rate of each param group after the optimizer steps so far, at
  the training pass's logging steps (a per-step schedule shows as it runs).
- ``epoch/lr``: the history's ``lr``, param group 0's learning rate at the start of the epoch, at the epoch's
  last step.
- ``weights/PARAM``, ``grads/PARAM`` (with ``histogram_every_n_steps``): histograms of each parameter
  and of the gradient computed at those weights. The loop frees gradients right after each optimizer
  step, so the gradients are caught in the next backward pass by one-shot hooks: with gradient
  accumulation they are the first micro-batch's, and under ``16-mixed`` precision they are
  multiplied by the loss scale.

The epoch values live under ``epoch/`` so that they never share a tag (and a chart) with the
running values of the same name. Non-scalar metrics (confusion matrices) are skipped.

At the end of the run the configuration given to ``start_run`` (numbers, strings and booleans;
nested dicts flattened to ``a.b``) is written for the HPARAMS dashboard, with the ``epoch/...``
scalars as its metrics, whose last values are the final metrics, and the run's status (success for a
completed or early-stopped run, failure for a failed one, unknown for an interrupted, resumable one). They are written into the same
event directory -- ``SummaryWriter.add_hparams`` would create a second, timestamped run for them.
"""

from __future__ import annotations

import functools
import itertools
import os
import socket
import time
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .console import is_scalar

__all__ = ["TensorBoardLogger"]


class TensorBoardLogger:
    """Writes TensorBoard event files into ``save_dir/tensorboard``; see the module docstring for the tags.

    Args:
        save_dir: the run directory (required).
        histogram_every_n_steps: write histograms of every parameter and gradient about this often
            (checked at logging steps, so the interval is rounded up to ``log_every_n_steps``);
            needs ``model``. Default: no histograms.
        model: the model whose parameters the histograms show.
        flush_secs: how often the scalars of logging steps reach the event file; everything is also
            flushed at the end of each epoch and at close.
    """

    def __init__(
        self,
        *,
        save_dir: str | os.PathLike[str] | None = None,
        histogram_every_n_steps: int | None = None,
        model: Any = None,
        flush_secs: int = 30,
    ):
        if save_dir is None:
            raise ConfigError(
                "TensorBoardLogger needs save_dir, the run directory: TensorBoardLogger(save_dir='runs/exp1')"
            )
        every = histogram_every_n_steps
        if every is not None and (isinstance(every, bool) or not isinstance(every, int) or every < 1):
            raise ConfigError(
                f"histogram_every_n_steps must be a positive integer or None, not {histogram_every_n_steps!r}"
            )
        if every is not None and model is None:
            raise ConfigError(
                "TensorBoardLogger(histogram_every_n_steps=...) needs the model: pass model=model as well"
            )
        # Imported now (tensorboard and protobuf: ~0.3 s, once per process), not inside the first training
        # pass, where it would stall the first steps; the event file itself is created at the first write.
        # The record writer is the event file's; the summary module makes the histograms and hparams.
        import tensorboard.plugins.hparams.plugin_data_pb2  # noqa: F401
        import tensorboard.summary.writer.record_writer  # noqa: F401
        import torch.utils.tensorboard.summary  # noqa: F401
        from tensorboard.compat.proto.summary_pb2 import Summary

        self._summary = Summary
        self.log_dir = Path(save_dir) / "tensorboard"
        self.histogram_every_n_steps = every
        self.model = model
        self.flush_secs = flush_secs
        self._events: _EventFile | None = None
        self._hparams: dict[str, Any] = {}
        self._final: dict[str, float] = {}
        self._resumed = False
        self._step = 0  # the last step logged
        # Summaries wait here, each with its step and the time it was logged at, and are written together
        # every `flush_secs`, at the end of each epoch, before each checkpoint and at the end. Each logging
        # step becomes one event holding all its scalars: a third of the cost of an add_scalar per value.
        self._pending: list[tuple[Any, int, float]] = []
        self._next_write = 0.0
        self._next_histogram = 0
        self._grad_hooks: list[Any] = []

    def _open(self, purge_step: int) -> None:
        """Create the event file at the first write.

        TensorBoard hides the events of earlier event files in the directory from ``purge_step`` on: a
        new run hides everything an earlier run in the same directory logged (step 0), a resumed run
        what the interrupted run logged from the first step it logs again.
        """
        if self._events is None:
            self._events = _EventFile(self.log_dir, purge_step if self._resumed else 0)

    def start_run(self, config: dict[str, Any]) -> None:
        self._hparams = flatten_hparams(config)
        self._resumed = bool(config.get("resumed"))

    def log_metrics(self, values: dict[str, Any], step: int) -> None:
        self._open(step)
        self._add_scalars(values, step)
        self._step = step
        if self.histogram_every_n_steps and step >= self._next_histogram:
            self._add_histograms(step)
            self._next_histogram = (step // self.histogram_every_n_steps + 1) * self.histogram_every_n_steps
        if time.monotonic() >= self._next_write:
            self.flush()

    def _add_scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """Queue one event holding the scalar ``values`` (tags ``prefix + name``), stamped with the time now."""
        scalars = [
            self._summary.Value(tag=prefix + k, simple_value=v) for k, v in values.items() if is_scalar(v)
        ]
        if scalars:
            self._pending.append((self._summary(value=scalars), step, time.time()))

    def _add_histogram(self, tag: str, values: Any, step: int) -> None:
        from torch.utils.tensorboard.summary import histogram

        self._pending.append((histogram(tag, values, _histogram_bins()), step, time.time()))

    def _add_histograms(self, step: int) -> None:
        # The loop frees the gradients right after each optimizer step, so at a logging step there
        # are none to read: one-shot hooks catch each gradient in the next backward pass instead,
        # which costs nothing at the steps in between.
        self._remove_grad_hooks()
        for name, param in self.model.named_parameters():
            self._add_histogram(f"weights/{name}", param.detach(), step)
            if param.requires_grad:
                hook = functools.partial(self._add_grad, f"grads/{name}", step, len(self._grad_hooks))
                self._grad_hooks.append(param.register_post_accumulate_grad_hook(hook))

    def _add_grad(self, tag: str, step: int, index: int, param: Any) -> None:
        self._add_histogram(tag, param.grad.detach(), step)
        self._grad_hooks[index].remove()

    def _remove_grad_hooks(self) -> None:
        for handle in self._grad_hooks:
            handle.remove()
        self._grad_hooks = []

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        # A resumed run that starts with an epoch row logged the epoch's training steps before: keep them.
        self._open(step + 1)
        self._add_scalars({k: v for k, v in values.items() if k != "epoch"}, step, prefix="epoch/")
        self._step = step
        self._final = {f"epoch/{k}": v for k, v in values.items() if "/" in k and is_scalar(v)}
        self.flush()

    def end_run(self, status: str) -> None:
        if self._events is None:  # nothing was logged
            return
        from tensorboard.plugins.hparams import api_pb2, plugin_data_pb2
        from torch.utils.tensorboard.summary import hparams

        experiment, start, end = hparams(self._hparams, self._final)
        # torch always records a success: record the run's own ending instead (an interrupted run,
        # resumable, is neither a success nor a failure)
        outcome = {"completed": "STATUS_SUCCESS", "stopped": "STATUS_SUCCESS", "failed": "STATUS_FAILURE"}
        plugin = end.value[0].metadata.plugin_data
        data = plugin_data_pb2.HParamsPluginData.FromString(plugin.content)
        data.session_end_info.status = api_pb2.Status.Value(outcome.get(status, "STATUS_UNKNOWN"))
        plugin.content = data.SerializeToString()
        self._pending += [(summary, self._step, time.time()) for summary in (experiment, start, end)]
        self.flush()

    def flush(self) -> None:
        if self._events is not None:
            for summary, step, walltime in self._pending:
                self._events.write(summary, step, walltime)
            self._events.flush()
        self._pending = []
        self._next_write = time.monotonic() + self.flush_secs

    def close(self) -> None:
        self._remove_grad_hooks()
        self.flush()
        if self._events is not None:
            self._events.close()
            self._events = None


_file_ids = itertools.count()  # tells apart the event files one process opens within a second


class _EventFile:
    """One TensorBoard event file, written in the caller's thread.

    ``SummaryWriter`` hands every event to a writer thread: during training, its wake-ups compete with
    the loop for the GIL, and each flush waits for the thread (~1 ms at every epoch end and checkpoint
    in the benchmark, 2-3 us a training step there). The logger writes rarely and in bulk, so it writes
    the records itself, with TensorBoard's record format and protos.
    """

    def __init__(self, log_dir: Path, purge_step: int):
        from tensorboard.compat.proto.event_pb2 import Event, SessionLog
        from tensorboard.summary.writer.record_writer import RecordWriter

        log_dir.mkdir(parents=True, exist_ok=True)
        name = f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.{next(_file_ids)}"
        self._event = Event
        self._records = RecordWriter(open(log_dir / name, "wb"))  # noqa: SIM115 - closed in close()
        self._add(Event(wall_time=time.time(), file_version="brain.Event:2"))
        # what SummaryWriter(purge_step=...) writes: TensorBoard hides the earlier files' events from here on
        self._add(
            Event(wall_time=time.time(), step=purge_step, session_log=SessionLog(status=SessionLog.START))
        )
        self.flush()

    def _add(self, event: Any) -> None:
        self._records.write(event.SerializeToString())

    def write(self, summary: Any, step: int, walltime: float) -> None:
        self._add(self._event(wall_time=walltime, step=step, summary=summary))

    def flush(self) -> None:
        self._records.flush()

    def close(self) -> None:
        self._records.close()


@functools.cache
def _histogram_bins() -> list[float]:
    """SummaryWriter's default histogram buckets (TensorFlow's): exponential, 10% apart, from 1e-12 to 1e20."""
    edges, v = [], 1e-12
    while v < 1e20:
        edges.append(v)
        v *= 1.1
    return [-e for e in reversed(edges)] + [0.0] + edges


def flatten_hparams(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The numbers, strings and booleans of ``config``, nested dicts flattened to ``a.b`` keys."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_hparams(value, f"{name}."))
        elif isinstance(value, (int, float, str, bool)):
            flat[name] = value
    return flat
