"""The TensorBoard logger: scalars, learning rate, hyper-parameters and optional histograms.

Everything goes into one event directory, ``save_dir/tensorboard`` (``tensorboard --logdir runs``
shows each run directory as one run). Every step is the global (optimizer) step, so all charts
share one x-axis and TensorBoard can hide what an interrupted run logged past its resumed point. Tags:

- ``train/loss``, ``train/METRIC``: running values of the training pass so far, at logging steps (metrics where updated).
- ``epoch/LOADER/loss``, ``epoch/LOADER/METRIC``: the epoch's exact values of every loader
  (``train``, ``val``, ``test``, ``test.NAME``), at the epoch's last step.
- ``epoch/lr``: the learning rate of the epoch, at the epoch's last step.
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
import os
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
        # pass, where it would stall the first steps; the writer itself is created at the first write.
        # The hparams modules are end_run's.
        import tensorboard.plugins.hparams.plugin_data_pb2  # noqa: F401
        from tensorboard.compat.proto.summary_pb2 import Summary
        from torch.utils.tensorboard import SummaryWriter

        self._writer_class = SummaryWriter
        self._summary = Summary
        self.log_dir = Path(save_dir) / "tensorboard"
        self.histogram_every_n_steps = every
        self.model = model
        self.flush_secs = flush_secs
        self._writer: Any = None
        self._hparams: dict[str, Any] = {}
        self._final: dict[str, float] = {}
        self._resumed = False
        self._step = 0  # the last step logged
        # The scalars of logging steps wait here and go to the writer together every `flush_secs` (when
        # the writer would write them to the file anyway): handing each one over at once wakes the
        # writer's thread, whose fight for the GIL slowed the training loop by ~9 us a step. Each logging
        # step becomes one event holding all its scalars, with the time it was logged at: a third of the
        # cost of an add_scalar per value (~34 us each, with the writer thread's work).
        self._pending: list[tuple[Any, int, float]] = []
        self._next_write = 0.0
        self._next_histogram = 0
        self._grad_hooks: list[Any] = []

    def _open(self, purge_step: int) -> Any:
        """The ``SummaryWriter``, created at the first write.

        TensorBoard hides the events of earlier event files in the directory from ``purge_step`` on: a
        new run hides everything an earlier run in the same directory logged (step 0), a resumed run
        what the interrupted run logged from the first step it logs again.
        """
        if self._writer is None:
            self._writer = self._writer_class(
                log_dir=str(self.log_dir),
                purge_step=purge_step if self._resumed else 0,
                flush_secs=self.flush_secs,
            )
        return self._writer

    def start_run(self, config: dict[str, Any]) -> None:
        self._hparams = flatten_hparams(config)
        self._resumed = bool(config.get("resumed"))

    def log_metrics(self, values: dict[str, Any], step: int) -> None:
        writer = self._open(step)
        self._add_scalars(values, step)
        if time.monotonic() >= self._next_write:
            self._write_pending()
        self._step = step
        if self.histogram_every_n_steps and step >= self._next_histogram:
            self._write_histograms(writer, step)
            self._next_histogram = (step // self.histogram_every_n_steps + 1) * self.histogram_every_n_steps

    def _add_scalars(self, values: dict[str, Any], step: int, prefix: str = "") -> None:
        """Queue one event holding the scalar ``values`` (tags ``prefix + name``), stamped with the time now."""
        scalars = [
            self._summary.Value(tag=prefix + k, simple_value=v) for k, v in values.items() if is_scalar(v)
        ]
        if scalars:
            self._pending.append((self._summary(value=scalars), step, time.time()))

    def _write_pending(self) -> None:
        events = self._writer._get_file_writer()  # what add_scalar writes through, one summary at a time
        for summary, step, walltime in self._pending:
            events.add_summary(summary, step, walltime)
        self._pending = []
        self._next_write = time.monotonic() + self.flush_secs

    def _write_histograms(self, writer: Any, step: int) -> None:
        # The loop frees the gradients right after each optimizer step, so at a logging step there
        # are none to read: one-shot hooks catch each gradient in the next backward pass instead,
        # which costs nothing at the steps in between.
        self._remove_grad_hooks()
        for name, param in self.model.named_parameters():
            writer.add_histogram(f"weights/{name}", param.detach(), step)
            if param.requires_grad:
                hook = functools.partial(self._write_grad, f"grads/{name}", step, len(self._grad_hooks))
                self._grad_hooks.append(param.register_post_accumulate_grad_hook(hook))

    def _write_grad(self, tag: str, step: int, index: int, param: Any) -> None:
        self._writer.add_histogram(tag, param.grad.detach(), step)
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
        if self._writer is None:  # nothing was logged
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
        if self._writer is not None:
            self._write_pending()
            self._writer.flush()

    def close(self) -> None:
        self._remove_grad_hooks()
        if self._writer is not None:
            self._write_pending()
            self._writer.close()


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
