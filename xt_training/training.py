"""``F.train``: epochs, validation, checkpoints and history around the :class:`~xt_training.Runner`.

:func:`train` is a short driver over the named steps of a :class:`_Training`: restore, train an epoch,
evaluate, end the epoch (scheduler, callbacks, checkpoints, history), stop. The loop inside a pass is
the Runner's.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import itertools
import math
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils.serialization  # noqa: F401 - torch.save imports it at its first call (~3 ms): paid here, not in the run

from . import distributed, slurm
from ._version import __version__
from .averaging import Averaging, check_averaging
from .batch import describe
from .callbacks import Run
from .checkpoint import (
    load_checkpoint,
    model_class,
    nonfinite,
    read_checkpoint,
    save_checkpoint,
    unwrap_model,
    write_checkpoint,
)
from .errors import CheckpointError, ConfigError, NonFiniteLossError, UnreadableCheckpointError
from .exporting import check_format, export_trained
from .files import BackgroundWriter, atomic_link, jsonable, prepare_dir, write_json
from .loggers import create as create_logger
from .loggers import default_loggers
from .loggers.console import format_value, format_values
from .preprocessing import normalization_of
from .rng import capture_rng, loader_generators, restore_rng
from .rundir import (
    BEST,
    CHECKPOINTS,
    CONFIG_FILE,
    CRASH,
    HISTORY_FILE,
    KEPT_CHECKPOINT,
    LAST,
    LAST_SHARDED,
    NOTES_FILE,
    RUN_FILE,
    checkpoints_dir,
    direction,
    hold,
    holding,
    holds_run,
    remove_run,
)
from .runner import (
    Runner,
    batch_limit,
    check_instance,
    check_list,
    check_strategy,
    prepare_metrics,
    step_scheduler,
)
from .stepping import Schedulers, as_one, check_step_options, kind
from .testing import check_loaders

__all__ = ["train", "refuse_held_run"]


def train(
    save_dir: str | os.PathLike[str],
    train_loader: Iterable[Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None,
    val_loader: Iterable[Any] | None = None,
    test_loaders: Mapping[str, Iterable[Any]] | None = None,
    scheduler: Any = None,
    eval_metrics: Mapping[str, Any] | None = None,
    train_metrics: Mapping[str, Any] | None = None,
    device: str | torch.device | None = None,
    *,
    monitor: str | None = None,
    mode: str | None = None,
    scheduler_step: str = "epoch",
    forward_fn: Callable[[torch.nn.Module, Any], tuple[Any, Any]] | None = None,
    step_fn: Callable[[torch.nn.Module, Any, Any], Any] | None = None,
    log_every_n_steps: int = 50,
    loggers: Iterable[Any] | None = None,
    callbacks: Iterable[Any] | None = None,
    quiet: bool = False,
    resume: bool | str | os.PathLike[str] = False,
    checkpoint_every_n_steps: int | None = None,
    val_every_n_steps: int | None = None,
    save_top_k: int = 0,
    save_every_n_epochs: int | None = None,
    save_every_n_steps: int | None = None,
    precision: str = "32",
    nonfinite_loss: str = "raise",
    accumulate_grad_batches: int = 1,
    clip_grad_norm: float | None = None,
    clip_grad_value: float | None = None,
    handle_signals: bool = True,
    fast_path: bool = True,
    data_on_device: bool | str = "auto",
    compile: bool = False,
    channels_last: bool = False,
    strategy: str = "ddp",
    shard: Iterable[type | str] | None = None,
    cpu_offload: bool = False,
    export: str | None = None,
    overwrite: bool = False,
    limit_train_batches: int | float | None = None,
    limit_val_batches: int | float | None = None,
    fast_dev_run: int | bool = False,
    overfit_batches: int = 0,
    ema_decay: float | None = None,
    swa_start: int | None = None,
    swa_lr: float | None = None,
    state: Mapping[str, Any] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` epochs; validate and test after each; save checkpoints and history.

    The loop, as pseudocode::

        callbacks.on_train_start(run)
        at the first forward: print the model summary (parameters, size, the first batch's input and
                              output shapes; quiet hides it) and record it in run.json's "summary"
        for epoch in 1..epochs:
            model.train(); runner(train_loader, 'train')    # optimizer steps; per-batch scheduler steps;
                                                            # checkpoints/last.pt every checkpoint_every_n_steps;
                                                            # the per-pass and per-step hooks (see Runner);
                every val_every_n_steps optimizer steps:    # (but at the pass's last batch: the epoch's own)
                    model.eval(); runner(val_loader, 'val'); model.train()
                    history.append(row with its step); loggers.log_metrics(values, step)
                    callbacks.on_mid_epoch_validation(run, row)
                    save checkpoints/last.pt, best.pt, the top k; stop here if a callback set run.should_stop
                                                            # ema_decay: the EMA after every optimizer step
            if epoch >= swa_start: average the weights; in the last epoch, update_bn for the average
            model.eval();  runner(val_loader, 'val')        # no grad; then each of test_loaders; on the
                                                            # averaged weights where there are any
            scheduler.step()                                # per epoch (ReduceLROnPlateau: monitored value);
                                                            # from epoch swa_start: SWALR's step instead
            history.append(row); loggers.end_epoch(row); callbacks.on_epoch_end(run, row)
            save checkpoints/last.pt; checkpoints/best.pt if the monitored value improved; the kept
                 checkpoints (save_top_k, save_every_n_epochs, save_every_n_steps); history.json
            stop if a callback set run.should_stop (e.g. EarlyStopping)
        ema_decay or swa_start: the model gets the averaged weights
        on an exception: callbacks.on_exception(run, error); save checkpoints/crash.pt; re-raise
        callbacks.on_train_end(run, status)

    Args:
        save_dir: the run directory (:mod:`xt_training.rundir`): ``run.json``, ``history.json`` and
            ``checkpoints/{last,best}.pt`` go here. One that holds a run is refused unless ``resume``
            continues it or ``overwrite`` deletes it first.
        loss_fn: ``loss_fn(y_pred, y) -> scalar tensor``; None trains on the loss the model's output
            carries (a Hugging Face model's ``.loss``, see :class:`~xt_training.Runner`).
        eval_metrics: ``{name: metric}`` for validation and test passes.
        train_metrics: metrics of the training passes; default: the same as ``eval_metrics`` (the
            original xt-training's behaviour). Pass ``{}`` to train with the loss only.
        monitor: the value that decides ``best.pt`` (and ``ReduceLROnPlateau``), as named in the
            history: ``'val/loss'`` (default with a ``val_loader``, else ``'train/loss'``), ``'val/acc'``...
        mode: ``'min'`` or ``'max'``; default: ``'min'`` for a loss, else the monitored metric's
            ``higher_is_better`` (xt-training's and torchmetrics' metrics declare it); required for a
            metric that declares none (a plain function, unless ``metrics.Mean(fn, higher_is_better=...)``).
        scheduler_step: ``'epoch'`` or ``'batch'``: per optimizer step (see :class:`~xt_training.Runner`). A
            schedule of a fixed length (OneCycleLR's ``total_steps``) shorter than the run is refused
            before training, with the number of steps it needs.
        loggers: logger instances or registered names (``'tensorboard'``, ``'csv'``...); the console
            logger is added unless ``quiet`` or one is given.
        callbacks: objects with ``on_epoch_end(run, row)``, ``on_train_batch_end(run, batch, step, y_pred,
            loss)`` etc., see :mod:`xt_training.callbacks`.
        resume: ``True`` continues the run in ``save_dir`` from ``checkpoints/last.pt`` exactly where it
            stopped (mid-epoch included), or a checkpoint path. A fresh ``save_dir`` starts from scratch;
            a run that has trained all ``epochs`` returns its history (nothing to do); fewer ``epochs``
            than it has trained are a ``ConfigError``.
        checkpoint_every_n_steps: also write ``last.pt`` every N optimizer steps (mid-epoch).
        val_every_n_steps: also validate every N optimizer steps, counted over the whole run (N may exceed an
            epoch), besides the validation at each epoch's end (unlike Lightning's ``val_check_interval=N``,
            which replaces it): one due at a training pass's last batch is the epoch's own. Each such
            validation is a row of the history, ``{'epoch': 2, 'step': 140, 'val/loss': ...}`` (in the epoch
            it happened in, before that epoch's row), logged with ``log_metrics(values, step)``; it writes
            ``last.pt``, competes for ``best.pt`` and the top k, and callbacks' ``on_mid_epoch_validation(run,
            row)`` may stop the run there (:class:`~xt_training.callbacks.EarlyStopping` counts these
            validations). Needs a ``val_loader`` and a monitored ``val/`` value; validation pass metrics
            that are also training metrics are copied for it, so the epoch's training values stay whole.
        save_top_k: keep the k best checkpoints by the monitored value, besides ``best.pt``:
            ``checkpoints/epoch=3-step=120-val_loss=0.1234.pt`` (epoch, optimizer steps, monitored value);
            a better one replaces the worst. 0: none.
        save_every_n_epochs, save_every_n_steps: keep a checkpoint every N epochs (at the epoch's end), or
            every N optimizer steps: ``checkpoints/epoch=3-step=120.pt``. Unlike ``last.pt``
            (``checkpoint_every_n_steps``), which the next save replaces, kept checkpoints stay; each is
            a whole resumable state, a second name of the ``last.pt`` of its moment.
        handle_signals: on SIGTERM or Ctrl-C, finish the current step (with ``accumulate_grad_batches``: the
            current accumulation group), write ``last.pt`` and stop:
            SIGTERM raises ``SystemExit(0)`` (preemption), Ctrl-C re-raises ``KeyboardInterrupt``. In a
            SLURM batch job SIGUSR1 (``sbatch --signal=USR1@90``) does what SIGTERM does after rank 0 has
            requeued the job (``scontrol requeue``); when SLURM starts it again (``SLURM_RESTART_COUNT``
            1 or more) the run resumes from ``save_dir`` whatever ``resume`` says: see
            :mod:`xt_training.slurm`.
        export: ``'onnx'``, ``'pt2'`` or ``'torchscript'``: once training ends, export the best model to
            ``save_dir/model.onnx`` (``.pt2``, ``.torchscript.pt``), verified against the eager model, with
            the first batch of ``val_loader`` (else ``train_loader``) as the example input; see
            :func:`xt_training.exporting.export_trained`. Checked before training starts.
        overwrite: delete the run that ``save_dir`` holds before training (else such a directory is refused).
        limit_train_batches, limit_val_batches: debugging: end each training (validation) pass after that
            many batches (an int), or that fraction of the loader's batches (a float in (0, 1]).
        fast_dev_run: debugging: ``N`` (``True``: 1) runs one epoch of N batches of each pass (training,
            validation, tests) and writes nothing: no checkpoints, history, run.json or logs (the
            console only); ``save_dir`` is not created. Not resumable.
        overfit_batches: debugging: train on the same first N batches of ``train_loader`` every epoch
            (taken once, before training), to check that the model can learn them.
        ema_decay: keep an exponential moving average of the weights, ``d`` in (0, 1), e.g. 0.999
            (:class:`torch.optim.swa_utils.AveragedModel` with ``get_ema_multi_avg_fn(d)`` and
            ``use_buffers=True``: BatchNorm's statistics are averaged too), updated after every optimizer step.
        swa_start, swa_lr: stochastic weight averaging: from epoch ``swa_start`` (counted from 1) on, the weights
            after each epoch's training pass are averaged (equally) and ``SWALR(optimizer, swa_lr)`` sets the
            learning rate instead of ``scheduler``; after the last epoch's training pass, ``update_bn``
            computes BatchNorm's statistics for the averaged weights over ``train_loader``.
            With either averaging, the validation and test passes evaluate the averaged weights (once there
            are any), checkpoints save them as ``model`` (so ``best.pt``, ``xt test`` and ``export`` use them)
            and the trained weights as ``averaging['raw']`` for resume, and the model holds the averaged
            weights when training ends. See :mod:`xt_training.averaging`.
        state: ``{name: object}``: your own objects with ``state_dict()`` and ``load_state_dict(state)`` (a
            holder of a carried hidden state, a data sampler's position...), saved in every checkpoint and
            restored on resume, as the callbacks' states are: in a pass resumed from its middle, after the
            callbacks' ``on_pass_start`` (which may reset them). Their states must hold tensors and plain data
            (checkpoints are loaded with ``weights_only=True``); under DDP, checkpoints hold rank 0's.
        step_fn: your own training step, ``step_fn(model, batch, optimizers) -> loss or {name: value}``, where
            one forward, loss and backward does not fit (a GAN's two optimizers, a VAE's extra terms): it does
            the forward, backward and optimizer steps (``zero_grad`` included) of each training batch, which
            the loop then leaves out. ``optimizer`` and ``scheduler`` may then be dicts,
            ``{'g': opt_g, 'd': opt_d}``; ``optimizers`` is what ``optimizer`` is. The loop still moves the
            batch to the device, enters ``precision``'s autocast around the call, logs a returned tensor as
            ``train/loss`` and a dict's values as ``train/NAME`` (each the mean per example over the pass;
            ``'loss'`` is the pass's loss), steps every scheduler (per epoch, or per call with
            ``scheduler_step='batch'``), saves every optimizer's and scheduler's state (``{name: state_dict}``
            in a checkpoint) and resumes exactly. Validation and test passes use the model's forward
            (``forward_fn``) and ``loss_fn``/``eval_metrics`` as without it; ``train_metrics`` do not apply
            (return the values instead). ``monitor`` may name a value it returns (``'train/loss_g'``, with
            ``mode``); the default ``'train/loss'`` (without a ``val_loader``) needs a ``'loss'``: said at
            the first step. Refused with it: ``accumulate_grad_batches``, ``clip_grad_*`` (clip in the
            step), ``precision='16-mixed'`` (use ``'bf16-mixed'``), ``nonfinite_loss='skip'`` and DDP.

    The loop options ``forward_fn``, ``log_every_n_steps``, ``precision``, ``nonfinite_loss``,
    ``accumulate_grad_batches``, ``clip_grad_norm``, ``clip_grad_value``, ``fast_path``, ``data_on_device``,
    ``compile``, ``channels_last``, ``strategy``, ``shard`` and ``cpu_offload`` are the
    :class:`~xt_training.Runner`'s. Under ``strategy='fsdp'`` every rank writes its shard of the state to ``checkpoints/last.dcp``
    (resume reads it, also on another number of ranks), and rank 0 the whole model's weights to
    ``checkpoints/last.pt`` (and ``best.pt``) for the tools that load a run in one process.

    Returns:
        The history: one dict per epoch, e.g. ``{'epoch': 1, 'train/loss': ..., 'val/acc': ..., 'lr': ...}``.
        Test loader ``'test'`` reports as ``test/...``, any other name ``n`` as ``test.n/...``; ``lr`` is
        the first param group's learning rate at the start of the epoch (the loggers get every group's at
        each logging step). With ``val_every_n_steps``, the validations inside an epoch are rows too, before
        the epoch's: ``{'epoch': 1, 'step': 7, 'val/loss': ...}`` (the rows with a ``step``).
    """
    optimizer, scheduler = as_one(step_fn, optimizer, scheduler)  # dicts of them (step_fn) as one object
    passes, monitor, mode = _check_arguments(locals())
    callbacks = list(callbacks or [])  # the Runner and _Training share them (a generator would run out)
    dry = _dry_run_batches(fast_dev_run, resume)
    limits = {"train": limit_train_batches, "val": limit_val_batches}
    if dry:  # one epoch of `dry` batches of every pass
        epochs, handle_signals, limits = 1, False, dict.fromkeys(passes, dry)
    if overfit_batches:
        passes["train"] = (_first_batches(train_loader, overfit_batches), passes["train"][1])
    # under DDP only rank 0 writes; a dry run writes nothing
    main = (not distributed.init_from_env() or distributed.is_main()) and not dry
    if not dry and slurm.restarted() and distributed.from_rank_0(holds_run(save_dir)):
        resume = True  # a requeued SLURM job goes on from its last.pt, exactly where it stopped
    with hold(save_dir, lock=main) as outermost:  # let go however the run ends
        if outermost and not dry:  # else its holder (xt run) has checked the directory and written into it
            fix = "continue it with resume=True, or pass overwrite=True"
            refuse_held_run(save_dir, overwrite, fix, resume=bool(resume))
        save_dir = prepare_dir(save_dir) if main else Path(save_dir)
        if main:
            checkpoints_dir(save_dir).mkdir(exist_ok=True)
        runner = Runner(
            model, loss_fn, optimizer, scheduler, device=device, forward_fn=forward_fn,
            scheduler_step="batch" if scheduler_step == "batch" else None,  # per-epoch steps happen in _Training
            log_every_n_steps=log_every_n_steps, loggers=_resolve_loggers(loggers, save_dir, quiet, main, dry),
            precision=precision, nonfinite_loss=nonfinite_loss, accumulate_grad_batches=accumulate_grad_batches,
            clip_grad_norm=clip_grad_norm, clip_grad_value=clip_grad_value,
            checkpoint_every_n_steps=checkpoint_every_n_steps, fast_path=fast_path, data_on_device=data_on_device,
            compile=compile, channels_last=channels_last, strategy=strategy, shard=shard, cpu_offload=cpu_offload,
            callbacks=callbacks, step_fn=step_fn,
        )  # fmt: skip
        if step_fn is not None and monitor.startswith("train/"):
            runner.step_expects = monitor.removeprefix("train/")  # checked at the first step
        run = Run(model=model, optimizer=optimizer, save_dir=save_dir, monitor=monitor, mode=mode)
        runner.run = run
        kept = _Kept(
            checkpoints_dir(save_dir), monitor, mode, save_top_k, save_every_n_epochs, save_every_n_steps
        )
        averaging = (
            Averaging(model, optimizer, ema_decay, swa_start, swa_lr)
            if ema_decay is not None or swa_start is not None
            else None
        )
        if averaging is not None and step_fn is not None:
            raise ConfigError(
                "weight averaging (ema_decay, swa_start) does not work with step_fn yet: your step steps the "
                "optimizers, which the averaging follows; average in your step_fn, or leave out step_fn"
            )
        if averaging is not None and runner.fsdp:
            raise ConfigError(
                "weight averaging (ema_decay, swa_start) does not work with strategy='fsdp' yet: its averaged "
                "copy would be whole on every rank; train without it, or with strategy='ddp'"
            )
        training = _Training(
            run, runner, passes, scheduler, scheduler_step, callbacks, main, limits, kept,
            checkpoint_every=checkpoint_every_n_steps, val_every=val_every_n_steps, sharded=runner.fsdp and not dry,
            averaging=averaging, state=state,
        )  # fmt: skip
        if dry:
            runner.loggers.notice(
                f"fast_dev_run: one epoch of {dry} batch{'es' if dry > 1 else ''} of each pass; nothing is written"
            )
        if not training.restore(resume, epochs):
            return run.history  # a finished run resumed with the same epochs: nothing to do
        if main:
            training.record(train_loader, loss_fn, epochs)
        training.summarize(compiled=compile)
        status = "failed"
        with _stop_on_signals(runner, enabled=handle_signals) as training.received:
            try:
                for epoch in range(run.epoch + 1, epochs + 1):
                    row = training.train_epoch(epoch)
                    if not run.should_stop:  # else a validation inside the epoch stopped the run
                        training.evaluate(row)
                        training.end_epoch(row)
                    if run.should_stop:
                        break
                    # a stop that came between passes (or under DDP)
                    if distributed.any_rank(runner.stop_requested, runner.device):
                        training.stop(None)
                training.wait()  # a run is complete once its files are
                status = "stopped" if run.should_stop else "completed"
            except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM's exit after saving the position
                status = "interrupted"
                raise
            except Exception as error:
                for cb in training.callbacks:
                    getattr(cb, "on_exception", _noop)(run, error)
                if main and not training.sharded:  # (sharded, the weights are whole on no rank)
                    _save_crash(training.ckpt_dir / CRASH, model, run)
                raise
            finally:  # never `return` here: that would swallow the exception
                training.close(status)
        if export is not None and main:
            example = val_loader if val_loader is not None else train_loader
            export_trained(
                save_dir, model, example, export, quiet=quiet, normalization=training.normalization
            )
        return run.history


def refuse_held_run(
    save_dir: str | os.PathLike[str], overwrite: bool, fix: str, resume: bool = False
) -> None:
    """A new run never goes into a directory that holds one (files of two runs would mix): one rule for all.

    Called by the holder of the directory (:func:`~xt_training.rundir.hold`) before it writes there. With
    ``overwrite`` the run's files are deleted first (:func:`~xt_training.rundir.remove_run`: never other
    files the directory holds); with ``resume`` the run goes on. A run that never completed a step (it
    failed in its first batch, or was killed before) is no run to protect or resume: the holder deletes
    its files, saying so (a check from outside -- a dry run, the launcher of ``xt run --nproc`` -- deletes
    nothing: such a run may be starting now). Rank 0's view decides on every rank, though rank 0 may
    write before the others look.
    """
    save_dir = Path(save_dir)
    held = distributed.from_rank_0(holds_run(save_dir))
    if held and (resume or slurm.restarted()):  # a requeued SLURM job goes on: F.train resumes it
        return
    if held and not overwrite:
        raise ConfigError(f"'{save_dir}' already holds a run; {fix.format(dir=save_dir)}")
    if not distributed.is_main():
        return
    if held:
        remove_run(save_dir)
    elif (save_dir / RUN_FILE).is_file() and holding(save_dir):  # F.train writes it before its first step
        removed = remove_run(save_dir)
        print(
            f"'{save_dir}' held a run that never completed a step; its files ({', '.join(removed)}) are "
            "replaced by this run's",
            flush=True,
        )


def _check_arguments(
    args: dict[str, Any],
) -> tuple[dict[str, tuple[Iterable[Any], dict[str, Any]]], str, str]:
    """Check F.train's arguments before anything runs; return its passes ``{prefix: (loader, metrics)}``,
    the monitored value and its direction."""
    epochs, scheduler, forward_fn = args["epochs"], args["scheduler"], args["forward_fn"]
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if args["scheduler_step"] not in ("epoch", "batch"):
        raise ConfigError(f"scheduler_step must be 'epoch' or 'batch', not {args['scheduler_step']!r}")
    if not isinstance(args["save_dir"], (str, os.PathLike)):
        raise ConfigError(
            f"save_dir must be a directory path (str or Path), not {describe(args['save_dir'])}"
        )
    for name in ("train_loader", "val_loader"):
        loader = args[name]
        if name == "val_loader" and loader is None:
            continue
        if isinstance(loader, Mapping):
            raise ConfigError(
                f"{name} is one loader, not a dict; evaluate on more loaders with test_loaders={{'name': loader}}"
            )
        if not isinstance(loader, Iterable):
            raise ConfigError(
                f"{name} must be a loader that yields batches (a DataLoader), not {describe(loader)}"
            )
    check_strategy(args["strategy"], args["shard"], args["cpu_offload"], distributed.init_from_env())
    check_list("loggers", args["loggers"])
    check_list("callbacks", args["callbacks"])
    check_averaging(args["ema_decay"], args["swa_start"], args["swa_lr"], epochs)
    _check_state(args["state"])
    batch_limit("limit_train_batches", args["limit_train_batches"], args["train_loader"])
    if args["val_loader"] is not None:
        batch_limit("limit_val_batches", args["limit_val_batches"], args["val_loader"])
    for option in ("val_every_n_steps", "save_every_n_epochs", "save_every_n_steps"):
        value = args[option]
        if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < 1):
            raise ConfigError(f"{option} must be a positive integer (or None: never), not {value!r}")
    top_k = args["save_top_k"]
    if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 0:
        raise ConfigError(f"save_top_k must be a number of checkpoints (e.g. 3; 0: none), not {top_k!r}")
    if args["val_every_n_steps"] and args["val_loader"] is None:
        raise ConfigError(
            "val_every_n_steps validates on val_loader, which is not given; pass val_loader=..."
        )
    overfit = args["overfit_batches"]
    if isinstance(overfit, bool) or not isinstance(overfit, int) or overfit < 0:
        raise ConfigError(f"overfit_batches must be a number of batches (e.g. 2; 0: off), not {overfit!r}")
    # a duck-typed optimizer without state_dict would fail at the first checkpoint, after a whole epoch
    optimizer_methods = ("step", "zero_grad", "state_dict", "load_state_dict")
    for name, methods in (("optimizer", optimizer_methods), ("loss_fn", ("__call__",))):
        if name == "loss_fn" and args[name] is None:  # the model's own loss (see Runner)
            continue
        check_instance(name, args[name])
        missing = [m for m in methods if not hasattr(args[name], m)]
        if missing:
            why = " (checkpoints save its state, resume restores it)" if name == "optimizer" else ""
            raise ConfigError(
                f"{name} must have {', '.join(methods)}{why}; {type(args[name]).__name__} has no {', '.join(missing)}"
            )
    if args["export"] is not None:
        # an unknown format or a missing onnx extra fails now, not after training
        check_format(args["export"])
        if args["strategy"] == "fsdp":
            raise ConfigError(
                "export= exports the trained model in rank 0 alone, which strategy='fsdp' shards over every "
                "rank; export the run after training, in one process: xt export RUN_DIR"
            )
        if forward_fn is not None:
            raise ConfigError(
                "export= takes its example input from (x, y) batches, which forward_fn replaces; call "
                "xt_training.exporting.export(model, example_input, path) after training instead"
            )
    eval_metrics = prepare_metrics(args["eval_metrics"])
    train_metrics = eval_metrics if args["train_metrics"] is None else prepare_metrics(args["train_metrics"])
    if args["step_fn"] is not None:  # its training pass has no (y_pred, y): it returns its values itself
        # before anything is written (the Runner checks them again, and DDP)
        check_step_options(*(args[k] for k in ("accumulate_grad_batches", "clip_grad_norm", "clip_grad_value")),
                           args["precision"], args["nonfinite_loss"], distributed=False)  # fmt: skip
        if args["train_metrics"]:
            raise ConfigError(
                "train_metrics take a forward's outputs, which a step_fn's training pass has none of; "
                "return those values from step_fn ({name: value}) and leave train_metrics out"
            )
        train_metrics = {}
    passes = {"train": (args["train_loader"], train_metrics)}
    if args["val_loader"] is not None:
        passes["val"] = (args["val_loader"], eval_metrics)
    passes.update(
        {_test_prefix(n): (loader, eval_metrics) for n, loader in check_loaders(args["test_loaders"]).items()}
    )
    own_monitor = args["step_fn"] is not None and str(args["monitor"]).startswith("train/")
    if own_monitor and args["monitor"] != "train/loss":
        # a value step_fn returns: known at its first step, which checks it (see Runner.step_expects)
        monitor, mode = args["monitor"], args["mode"]
        if mode not in ("min", "max"):
            raise ConfigError(
                f"which way {monitor!r}, a value of step_fn, improves is unknown; pass mode='min' or mode='max'"
            )
    else:
        monitor, mode = _check_monitor(args["monitor"], args["mode"], passes)
    schedulers = scheduler.values() if isinstance(scheduler, Schedulers) else [scheduler]
    plateau = next((s for s in schedulers if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau)), None)
    if args["val_every_n_steps"] and not monitor.startswith("val/"):
        raise ConfigError(
            f"val_every_n_steps validates on val_loader, but the monitored value {monitor!r} is not one of its "
            "values, so these validations could not decide best.pt; monitor one, e.g. monitor='val/loss'"
        )
    # a plateau scheduler of the other mode would cut the learning rate at every improvement
    if plateau and args["scheduler_step"] == "epoch" and plateau.mode != mode:
        raise ConfigError(
            f"ReduceLROnPlateau(mode={plateau.mode!r}) steps on {monitor!r}, which is a '{mode}' value here; "
            f"make them agree: ReduceLROnPlateau(optimizer, mode={mode!r}), or mode={plateau.mode!r} in F.train"
        )
    return passes, monitor, mode


class _Training:
    """The state of one F.train call and its steps, in the order the driver calls them."""

    def __init__(
        self,
        run: Run,
        runner: Runner,
        passes: dict[str, tuple[Iterable[Any], dict[str, Any]]],
        scheduler: Any,
        scheduler_step: str,
        callbacks: list[Any],
        main: bool,
        limits: dict[str, int | float | None],
        kept: _Kept,
        checkpoint_every: int | None,
        val_every: int | None,
        sharded: bool,
        averaging: Averaging | None = None,
        state: Mapping[str, Any] | None = None,
    ):
        self.run, self.runner, self.passes, self.callbacks, self.main = run, runner, passes, callbacks, main
        # strategy='fsdp': every rank writes its shard of the state to last.dcp, rank 0 the whole weights to last.pt
        self.sharded = sharded
        self.limits = limits  # per pass: its batches (debugging runs), None: all
        self.scheduler, self.scheduler_step = scheduler, scheduler_step
        self.averaging = averaging
        # F.train's state=: your objects, checkpointed as the callbacks' states are
        self.state = dict(state or {})
        self.epochs = 0  # the run's last epoch (restore sets it)
        self.ckpt_dir = checkpoints_dir(run.save_dir)
        self.last = self.ckpt_dir / (LAST_SHARDED if sharded else LAST)  # what resume reads
        self.generators = [g for loader, _ in passes.values() for g in loader_generators(loader)]
        self.config = _run_config(passes["train"][0], run, runner.loss_fn, scheduler, val_every)
        if averaging is not None:
            self.config.update(averaging.config)
            if averaging.swa_start is None:  # EMA: after every optimizer step
                runner.after_step = averaging.update
        # checkpoints and history.json are written on a background thread: the loop does not wait for the disk
        self.background = BackgroundWriter() if main else None
        self.position: dict[str, Any] | None = None  # where a resumed epoch goes on
        self.received: list[str] = []  # the signals that asked to stop
        self.normalization: dict[str, list[float]] | None = None
        self.recorded: dict[str, Any] | None = None  # run.json as written, its status updated at the end
        self.row: dict[str, Any] = {}
        self.summary_hook: Any = None  # removes the model summary's forward hook (see summarize)
        # what the model holds as NaN/inf by design (an attention mask of -inf): the checks before a save allow it
        self.nonfinite_at_start = set(nonfinite(unwrap_model(run.model).state_dict()))
        self.kept, self.checkpoint_every, self.val_every = kept, checkpoint_every, val_every
        self.pass_end: int | None = None  # the batches of the running training pass, where known
        # the Runner calls at_step every that many optimizer steps, and at_step sees what is due
        steps = [n for n in (checkpoint_every, val_every, kept.every_n_steps) if n]
        runner.checkpoint_every_n_steps = math.gcd(*steps) if steps else None
        runner.on_checkpoint = self.at_step
        if val_every:  # metric objects that a training pass holds too: the validation inside it gets copies
            trained = [id(m) for m in passes["train"][1].values()]
            self.val_metrics = {
                k: copy.deepcopy(m) if id(m) in trained else m for k, m in passes["val"][1].items()
            }

    def save(
        self,
        position: dict[str, Any] | None = None,
        keep: list[str] | None = None,
        states: dict[str, Any] | None = None,
    ) -> None:
        """Write ``last.pt``: the whole state, and ``position`` inside an epoch (None: at its end).

        ``keep`` names files of ``checkpoints/`` that keep this state too (:class:`_Kept`): it is written to
        the first, and ``last.pt`` is made a second name of it after the others, so that a kill in between
        leaves kept files the ``last.pt`` resumed from does not list (a resume removes them), never a
        listed one that is missing.

        ``states``: the callbacks' and ``state=``'s states to save, if not those of now (see :meth:`evaluate`).
        With weight averaging, ``model`` is the averaged weights (what evaluation uses), and the trained ones
        are in ``averaging``.
        """
        self.check_finite(position)
        if not self.main and not self.sharded:
            return
        run, runner, averaging = self.run, self.runner, self.averaging
        runner.loggers.flush()  # what was logged up to the checkpoint survives a kill after it
        keep = keep or []
        state = dict(
            scaler=runner.scaler.state_dict() if runner.scaler is not None else None,
            epoch=run.epoch if position is None else run.epoch - 1,  # the last completed epoch
            global_step=runner.global_step, history=run.history, monitor=run.monitor, mode=run.mode,
            best=run.best, **(states or self.states()), config=self.config, position=position,
            rng=capture_rng(self.generators), top_k=self.kept.best,
            **({} if averaging is None else {"averaging": averaging.state_dict()}),
        )  # fmt: skip
        target = self.ckpt_dir / (keep[0] if keep else LAST)
        if not self.sharded:
            model = run.model if averaging is None else averaging.weights()
            save_checkpoint(target, model, run.optimizer, self.scheduler, background=self.background, **state)
        else:
            from . import fsdp  # lazy: the Runner imported it to shard the model

            scheduler = self.scheduler.state_dict() if self.scheduler is not None else None
            fsdp.save_sharded(
                self.last, unwrap_model(run.model), run.optimizer, {**state, "scheduler": scheduler}
            )
            weights = fsdp.full_model_state(unwrap_model(run.model))  # every rank gathers, rank 0 keeps them
            if not self.main:
                return
            # the plain weights for the tools, which load a run in one process (kept files hold them too)
            fields = ("epoch", "global_step", "history", "monitor", "mode", "best", "config")
            plain = {"model": weights, **{k: state[k] for k in fields}, "sharded": LAST_SHARDED}
            write_checkpoint(target, plain, self.background)
        for name in [*keep[1:], LAST] if keep else []:
            self.background.submit(atomic_link, target, self.ckpt_dir / name)

    def states(self) -> dict[str, Any]:
        """The callbacks' states and those of ``state=``'s objects, as checkpoints hold them."""
        return {
            "callbacks": [getattr(cb, "state_dict", dict)() for cb in self.callbacks],
            "state": {name: obj.state_dict() for name, obj in self.state.items()},
        }

    def check_finite(self, position: dict[str, Any] | None) -> None:
        """Refuse to save NaN/inf losses or state over the last good ``last.pt``: no resume could go on from it.

        Between logging steps nothing looks at them; a save is a synchronisation point anyway. Every rank
        checks, so that all stop together.
        """
        run = self.run
        problem = None
        losses = (position or {}).get("losses")
        if losses:  # the steps since the last logging step, whose losses nothing has checked yet
            values = torch.stack([torch.as_tensor(v) for v in losses]).float().cpu()
            bad = (~torch.isfinite(values)).nonzero()
            if len(bad):
                step = position["step"] - len(losses) + 1 + int(bad[0])
                problem = f"the loss is {values[int(bad[0])].item()} at epoch {run.epoch}, step {step}"
        if problem is None:
            state = {"model": unwrap_model(run.model).state_dict(), "optimizer": run.optimizer.state_dict()}
            bad = [n for n in nonfinite(state) if n.removeprefix("model.") not in self.nonfinite_at_start]
            if bad:
                where = f", step {position['step']}" if position and "step" in position else ""
                problem = f"the state became NaN/inf at epoch {run.epoch}{where} ({', '.join(bad[:3])})"
        if distributed.any_rank(problem is not None, self.runner.device):
            self.wait()  # for the last checkpoint's write
            kept = (
                f"{CHECKPOINTS}/{self.last.name} keeps the last finite state"
                if self.last.exists()
                else "nothing was saved"
            )
            raise NonFiniteLossError(
                f"{problem or 'another rank holds NaN/inf'}; lower the learning rate, clip gradients or check "
                f"the data for NaN/inf ({kept})"
            )

    def restore(self, resume: bool | str | os.PathLike[str], epochs: int) -> bool:
        """Continue from a checkpoint when ``resume`` asks; False when there is nothing left to train."""
        run, runner, last = self.run, self.runner, self.last
        if resume is True and self.sharded and not last.exists() and (self.ckpt_dir / LAST).exists():
            raise ConfigError(
                f"the run in {run.save_dir} has no sharded checkpoint ({CHECKPOINTS}/{LAST_SHARDED}) to resume "
                "with strategy='fsdp'; resume it with the strategy it was trained with"
            )
        if resume and (resume is not True or last.exists()):
            path = Path(resume) if resume is not True else last
            try:
                checkpoint = _restore(path, self)
            except UnreadableCheckpointError as error:
                if resume is not True:
                    raise
                raise UnreadableCheckpointError(error.problem, _resume_from_best(run.save_dir)) from None
            self.position = checkpoint.get("position")
            self.kept.best = list(checkpoint.get("top_k") or [])
            if self.main:
                self.kept.tidy(run.global_step)
            # a pass resumed from its middle: the states again, over what its on_pass_start hooks did
            states = copy.deepcopy({key: checkpoint.get(key) for key in ("callbacks", "state")})
            runner.on_resume = lambda: _load_states(self, states)
        self.epochs = epochs
        start = run.epoch + 1
        # resumed with no more epochs than it has: a finished run is complete (a no-op: retried jobs stay
        # idempotent), fewer epochs than it trained are a mistake
        complete = self.position is None and epochs == run.epoch > 0
        if complete or epochs < start - (self.position is None):
            if complete:
                runner.loggers.notice(
                    f"the run in {run.save_dir} has trained all {epochs} epochs; pass more to train on"
                )
            self.close(None)
            if complete:
                return False
            done = f"trained {run.epoch} epoch{'s' if run.epoch != 1 else ''}" + (
                f" and part of epoch {start}" if self.position else ""
            )
            raise ConfigError(
                f"cannot resume the run in {run.save_dir} with epochs={epochs}: it has {done}; "
                f"pass epochs={start} or more"
            )
        short = _short_schedule(self.scheduler, self.scheduler_step, runner, self.passes["train"][0], epochs)
        if short is not None:
            self.close(None)
            raise ConfigError(short)
        if self.position is not None:
            where = (
                f"step {self.position['step']} of epoch {start}"
                if self.position["phase"] == "train"
                else f"the evaluation of epoch {start}"
            )
            runner.loggers.notice(f"resuming the run in {run.save_dir} at {where}")
        elif run.epoch:
            runner.loggers.notice(f"resuming the run in {run.save_dir} after epoch {run.epoch}")
        resumed = start > 1 or self.position is not None
        runner.loggers.start_run(
            {**self.config, "epochs": epochs, "save_dir": str(run.save_dir), "resumed": resumed}
        )
        for cb in self.callbacks:
            getattr(cb, "on_train_start", _noop)(run)
        return True

    def record(self, loader: Any, loss_fn: Any, epochs: int) -> None:
        """Write ``run.json``: what a tool needs to use the run without the script that trained it."""
        run = self.run
        self.normalization = normalization_of([loader])
        names = [f"{prefix}/{m}" for prefix, (_, ms) in self.passes.items() for m in ("loss", *ms)]
        record = {
            "format": 1,
            "xt_training_version": __version__,
            "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "model": model_record(unwrap_model(run.model)),
            "loss": _qualname(type(loss_fn)) if loss_fn is not None else None,
            "input": _input_record(loader),
            "normalization": self.normalization,
            "monitor": run.monitor,
            "mode": run.mode,
            # None where the metric declares none; the monitored value's is the run's mode
            "directions": {n: run.mode if n == run.monitor else _direction(n, self.passes) for n in names},
            "epochs": epochs,
            "checkpoints": {"last": f"{CHECKPOINTS}/{LAST}", "best": f"{CHECKPOINTS}/{BEST}"},
            "status": "running",  # how it ended, once it has: `xt runs` and `xt show` say it
        }
        write_json(run.save_dir / RUN_FILE, record)
        self.recorded = record

    def summarize(self, compiled: bool) -> None:
        """The model summary: its parameters and size, and the input and output shapes of its first forward.

        Those are read by a forward hook that removes itself at that first call (a compiled model gets no
        hook: removing it would make torch.compile compile again), so the run's batches and random draws
        are the same as without it.
        """
        model = unwrap_model(self.run.model)
        summary = model_summary(model)
        if self.recorded is not None:
            self.recorded["summary"] = summary
        if compiled:
            self.tell_summary(summary)
            return

        def first_forward(module: Any, args: tuple[Any, ...], kwargs: dict[str, Any], output: Any) -> None:
            self.summary_hook.remove()
            inputs = args[0] if len(args) == 1 and not kwargs else (*args, kwargs) if kwargs else args
            summary.update(input=describe(inputs), output=describe(output))
            self.tell_summary(summary)

        self.summary_hook = model.register_forward_hook(first_forward, with_kwargs=True)

    def tell_summary(self, summary: dict[str, Any]) -> None:
        """Show the summary (the console and notes.txt) and write it into run.json."""
        line = (
            f"model: {summary['class']}, {summary['parameters']:,} parameters ({summary['trainable']:,} "
            f"trainable), {summary['size_mb']:.2f} MB"
        )
        if "input" in summary:
            line += f"; first batch: input {summary['input']} -> output {summary['output']}"
        self.runner.loggers.notice(line)
        if self.recorded is not None:
            write_json(self.run.save_dir / RUN_FILE, self.recorded, self.background)

    def train_epoch(self, epoch: int) -> dict[str, Any]:
        """The training pass of ``epoch`` (or the rest of it, resumed); its row of the history so far."""
        run, runner, optimizer = self.run, self.runner, self.run.optimizer
        run.epoch = runner.epoch = epoch
        position = self.position if self.position and self.position["row"]["epoch"] == epoch else None
        self.position = None
        if position is not None and position["phase"] == "eval":  # the training pass was done
            self.row = dict(position["row"])
            restore_rng(position["rng"], self.generators)
            return self.row
        self.row = (
            dict(position["row"]) if position else {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
        )
        swa = self.averaging is not None and self.averaging.swa(epoch)
        if swa:  # SWALR sets the learning rate from now on: a per-step schedule stops
            runner.scheduler_step = None
        run.model.train()
        loader, metrics = self.passes["train"]
        self.pass_end = runner.pass_batches(loader, self.limits.get("train"))
        values = runner(
            loader, "train", metrics=metrics, resume=position, limit_batches=self.limits.get("train")
        )
        if runner.stopped:
            if run.should_stop:  # a validation inside the pass stopped the run, and saved its position
                return self.row
            self.stop({"phase": "train", "row": self.row, **runner.position()})
        self.row.update({f"train/{k}": v for k, v in values.items()})
        if swa:
            self.averaging.update()
            # in the last epoch: BatchNorm's statistics for the final averaged weights, before they are evaluated
            if epoch == self.epochs:
                limit = batch_limit("limit_train_batches", self.limits.get("train"), loader)
                batches = loader if limit is None else itertools.islice(loader, limit)
                self.averaging.update_bn(batches, runner.forward_fn, runner.device)
        return self.row

    def evaluate(self, row: dict[str, Any]) -> None:
        """The validation and test passes; a stop during them resumes from after the training pass."""
        if len(self.passes) == 1:
            return
        after_train = {"phase": "eval", "row": dict(row), "rng": capture_rng(self.generators)}
        # a resumed run evaluates again from the start: a stop saves the states of now, not the evaluation's
        states = copy.deepcopy(self.states())
        self.run.model.eval()
        with self.averaging.evaluating() if self.averaging is not None else contextlib.nullcontext():
            for prefix, (loader, metrics) in list(self.passes.items())[1:]:
                values = self.runner(loader, prefix, metrics=metrics, limit_batches=self.limits.get(prefix))
                if self.runner.stopped:
                    break
                row.update({f"{prefix}/{k}": v for k, v in values.items()})
        if self.runner.stopped:  # saved with the trained weights back in the model
            self.stop(after_train, states)
        self.run.model.train()

    def end_epoch(self, row: dict[str, Any]) -> None:
        """Scheduler, history, loggers, callbacks, then last.pt (best.pt when the monitored value improved)."""
        run, runner = self.run, self.runner
        self.check_reported(row)
        if self.averaging is not None and self.averaging.swa(run.epoch):
            self.averaging.swa_scheduler.step()  # instead of the run's scheduler
        elif self.scheduler is not None and self.scheduler_step == "epoch":
            step_scheduler(self.scheduler, row[run.monitor])
        run.history.append(row)
        improved = _improves(row[run.monitor], run.best, run.mode)
        run.best = row[run.monitor] if improved else run.best
        run.global_step = runner.global_step
        # the epoch's table before the callbacks: what one prints (early stopping) follows the epoch it is about
        runner.loggers.end_epoch(run.epoch, row, runner.global_step)
        if isinstance(row[run.monitor], float) and not math.isfinite(row[run.monitor]):  # said, not silent
            runner._notice_once(run.monitor, _NONFINITE_MONITOR)
        for cb in self.callbacks:
            getattr(cb, "on_epoch_end", _noop)(run, row)
        # one rank's callback (a time budget, a file it reads) stops every rank: one that trained on
        # alone would wait for the others in its next collective for ever
        run.should_stop = distributed.any_rank(run.should_stop, runner.device)
        self.checkpoint(row, None, self.kept.every(run.epoch, run.global_step, epoch_end=True), improved)

    def check_reported(self, row: dict[str, Any]) -> None:
        """The monitored value must be in an evaluation's row: it decides best.pt."""
        run = self.run
        if run.monitor not in row:
            where = f"epoch {run.epoch}" + (f", step {row['step']}" if "step" in row else "")
            if run.monitor.endswith("/loss"):
                raise ConfigError(
                    f"monitor {run.monitor!r} was not reported in {where}: a loss_fn that returns None in "
                    "evaluation (a detection model) reports no loss; monitor a metric, e.g. monitor='val/map'"
                )
            reported = [k for k in row if k.startswith(run.monitor.split("/")[0] + "/")]
            raise ConfigError(
                f"monitor {run.monitor!r} was not reported in {where}, which reported {', '.join(reported)}; "
                "monitor one of them (a metric with several values, as F1(average=None), reports one each)"
            )

    def at_step(self) -> bool:
        """What is due at this optimizer step of a training pass (the Runner calls it every few steps): a
        validation (``val_every_n_steps``), a kept checkpoint (``save_every_n_steps``), ``last.pt``
        (``checkpoint_every_n_steps``). True ends the pass: a callback stopped the run at the validation.

        A validation or kept checkpoint due at the pass's last batch is left to the epoch's end, which
        validates and saves the same weights anyway.
        """
        run, runner, step = self.run, self.runner, self.runner.global_step
        validate, keep = _due(self.val_every, step), self.kept.every(run.epoch, step, epoch_end=False)
        if not (validate or keep or _due(self.checkpoint_every, step)):  # (the steps' intervals differ)
            return False
        if runner.pass_step == self.pass_end:
            validate, keep = False, []
        if validate:  # (its checkpoint holds the position after it)
            return self.validate_within(keep)
        if keep or _due(self.checkpoint_every, step):
            self.save({"phase": "train", "row": self.row, **runner.position()}, keep)
        return False

    def validate_within(self, keep: list[str]) -> bool:
        """A validation between two optimizer steps: its history row, loggers, callbacks and checkpoints;
        whether a callback stopped the run."""
        run, runner = self.run, self.runner
        loader = self.passes["val"][0]
        values = runner.evaluate_within(
            loader, "val", metrics=self.val_metrics, limit_batches=self.limits.get("val")
        )
        step = run.global_step = runner.global_step
        values = {f"val/{k}": v for k, v in values.items()}
        row = {"epoch": run.epoch, "step": step, **values}
        self.check_reported(row)
        run.history.append(row)
        improved = _improves(row[run.monitor], run.best, run.mode)
        run.best = row[run.monitor] if improved else run.best
        runner.loggers.log_metrics(values, step)
        runner.loggers.notice(f"epoch {run.epoch}, step {step}: {format_values(values)}")
        for cb in self.callbacks:
            getattr(cb, "on_mid_epoch_validation", _noop)(run, row)
        run.should_stop = distributed.any_rank(run.should_stop, runner.device)
        # the position after the validation, which drew from the random number generators (its loader's iterator)
        self.checkpoint(row, {"phase": "train", "row": self.row, **runner.position()}, keep, improved)
        return run.should_stop

    def checkpoint(
        self, row: dict[str, Any], position: dict[str, Any] | None, keep: list[str], improved: bool
    ) -> None:
        """After an evaluation: ``last.pt`` (as the top k's and ``keep``'s file where due), ``best.pt``
        where the monitored value improved, and ``history.json``."""
        run = self.run
        top, pushed_out = self.kept.rank(row[run.monitor], run.epoch, run.global_step)
        self.save(position, [*top, *keep])
        if self.main:
            if improved:  # the same state as last.pt: a second name, not a second write
                self.background.submit(atomic_link, self.ckpt_dir / LAST, self.ckpt_dir / BEST)
            for name in pushed_out:
                self.background.submit(_remove, self.ckpt_dir / name)
            write_json(run.save_dir / HISTORY_FILE, run.history, self.background)

    def stop(self, position: dict[str, Any] | None, states: dict[str, Any] | None = None) -> None:
        """A signal asked to stop: keep the exact position, then leave as the signal wants."""
        if position is not None:  # else the epoch's checkpoint is the position
            self.save(position, states=states)
        self.wait()  # saved, as the message below says
        # under DDP another rank may have got the signal
        sig = self.received[0] if self.received else "SIGTERM"
        run_dir = self.run.save_dir
        how = "resume with " + (
            f"`xt run --resume {run_dir}`"
            if (run_dir / CONFIG_FILE).is_file()
            else "F.train(..., resume=True)"
        )
        # SLURM's warning before the time limit, to any rank: every rank takes part in deciding
        requeue = slurm.job_id() is not None and distributed.any_rank(
            slurm.REQUEUE_SIGNAL.name in self.received, self.runner.device
        )
        if requeue:
            sig = slurm.REQUEUE_SIGNAL.name
            how = slurm.requeue() if self.main else ""
        if how:
            print(f"stopped by {sig}: state saved to {self.last}; {how}", flush=True)
        if sig == "SIGINT":
            raise KeyboardInterrupt
        raise SystemExit(0)

    def wait(self) -> None:
        if self.background is not None:
            self.background.wait()

    def close(self, status: str | None) -> None:
        """Finish the writes; tell callbacks, loggers and run.json how the run ended (``None``: it never started)."""
        if (
            self.summary_hook is not None
        ):  # a run that ended before its first forward leaves the model as it was
            self.summary_hook.remove()
        if self.averaging is not None and status in (None, "completed", "stopped"):
            self.averaging.finish()  # the model holds the weights it was evaluated with
        if status is not None and self.recorded is not None:
            ended = time.strftime("%Y-%m-%dT%H:%M:%S%z")
            write_json(
                self.run.save_dir / RUN_FILE,
                {**self.recorded, "status": status, "ended": ended},
                self.background,
            )
        if self.background is not None:
            self.background.close()
        if status is not None:
            for cb in self.callbacks:
                getattr(cb, "on_train_end", _noop)(self.run, status)
            self.runner.loggers.end_run(status)
        self.runner.loggers.close()


#: the notice of a monitored value that is NaN or infinite (a NaN in the validation data: training goes on)
_NONFINITE_MONITOR = (
    "NaN or infinite, so it cannot improve: best.pt is not updated in such epochs (none is written until a "
    "finite value), and history.json writes it as null; check the data and the model's outputs for NaN/inf"
)


def model_summary(model: torch.nn.Module) -> dict[str, Any]:
    """The model's class, its parameters (all and trainable) and the megabytes of its parameters and buffers."""
    params = list(model.parameters())
    size = sum(t.numel() * t.element_size() for t in (*params, *model.buffers()))
    return {
        "class": model_class(model).__name__,
        "parameters": sum(p.numel() for p in params),
        "trainable": sum(p.numel() for p in params if p.requires_grad),
        "size_mb": round(size / 2**20, 3),
    }


def model_record(model: torch.nn.Module) -> dict[str, Any]:
    """``{'class': 'module:qualname', 'init': {...} | None, 'missing': [...]}``: how
    :func:`~xt_training.load_model` rebuilds the model.

    The constructor's arguments are captured only when the model keeps every one of them as an
    attribute of the same name with a JSON value (``self.hidden = hidden``): an argument left at its
    default in the rebuilt model could silently be another model (``act='gelu'`` trained, ``'relu'``
    rebuilt, the same weights). Else ``init`` is None, ``missing`` names the arguments not kept, and the
    model must be passed to ``load_model``.
    """
    cls = model_class(model)
    init: dict[str, Any] = {}
    missing: list[str] = []
    try:
        params = list(inspect.signature(cls.__init__).parameters.values())[1:]
    except (TypeError, ValueError):
        params = []
    for p in params:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):  # what was passed through them is unknown
            missing.append(("*" if p.kind is p.VAR_POSITIONAL else "**") + p.name)
            continue
        value = getattr(model, p.name, inspect.Parameter.empty)
        if value is not inspect.Parameter.empty and jsonable(value):
            init[p.name] = value
        else:
            missing.append(p.name)
    return {"class": _qualname(cls), "init": None if missing else init, "missing": missing}


def _qualname(cls: type) -> str:
    return f"{cls.__module__}:{cls.__qualname__}"


def _input_record(loader: Any) -> dict[str, Any] | None:
    """The shape (without the batch) and dtype of one input, where the data holds its inputs as a tensor.

    Read from ``TensorDataset.tensors`` (through ``Subset``-like wrappers), never by indexing the data
    set: that would run its transforms and draw from the random number generators a plain loop uses.
    """
    dataset = getattr(loader, "dataset", None)
    while dataset is not None and not hasattr(dataset, "tensors"):
        dataset = getattr(dataset, "dataset", None)
    tensors = getattr(dataset, "tensors", None)
    if not tensors or not isinstance(tensors[0], torch.Tensor):
        return None
    x = tensors[0]
    return {"shape": list(x.shape[1:]), "dtype": str(x.dtype).removeprefix("torch.")}


def _direction(name: str, passes: dict[str, tuple[Iterable[Any], dict[str, Any]]]) -> str | None:
    """``'max'``, ``'min'``, or ``None`` where the metric declares no direction (:func:`direction`)."""
    return direction(name, passes.get(name.split("/")[0], (None, {}))[1])


def _run_config(loader: Any, run: Run, loss_fn: Any, scheduler: Any, val_every: int | None) -> dict[str, Any]:
    """What identifies a run, for loggers' hyper-parameters and the resume check (epochs may change).

    ``val_every_n_steps`` is part of it: each validation draws from the random number generators (its
    loader's iterator), so the training after it depends on where the validations came.
    """
    return {
        "model": model_class(run.model).__name__,
        "parameters": sum(p.numel() for p in run.model.parameters()),
        "optimizer": kind(run.optimizer),
        "lr": run.optimizer.param_groups[0].get("lr"),
        "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__),
        "scheduler": kind(scheduler),
        "batch_size": getattr(loader, "batch_size", None),
        "monitor": run.monitor,
        "val_every_n_steps": val_every,
    }


def _short_schedule(
    scheduler: Any, scheduler_step: str, runner: Runner, loader: Any, epochs: int
) -> str | None:
    """Why a schedule of a fixed length (OneCycleLR's ``total_steps``) is too short for the run, or None.

    Stepped past its end, it fails with torch's error in the middle of training: refused before it starts,
    with the number of steps it needs (that of the whole run: a resumed scheduler has counted the steps done).
    """
    total = getattr(scheduler, "total_steps", None)
    per_epoch = runner.optimizer_steps(loader) if scheduler_step == "batch" else 1
    if not isinstance(total, int) or per_epoch is None or total >= epochs * per_epoch:
        return None
    name, needed = type(scheduler).__name__, epochs * per_epoch
    if scheduler_step == "epoch":
        return (
            f"{name} has total_steps={total}, but scheduler_step='epoch' steps it once per epoch, {epochs} times; "
            f"pass scheduler_step='batch' to step it per optimizer step, or size it for total_steps={epochs}"
        )
    accumulate = runner.accumulate
    steps = f"{per_epoch} optimizer steps" + (
        f" (accumulate_grad_batches={accumulate})" if accumulate > 1 else ""
    )
    return (
        f"{name} has total_steps={total}, but the run takes {needed} optimizer steps ({epochs} epochs of {steps}); "
        f"size it for them: total_steps={needed}, or epochs={epochs}, steps_per_epoch={per_epoch}"
    )


def _test_prefix(name: str) -> str:
    return "test" if name == "test" else f"test.{name}"


def _check_monitor(
    monitor: str | None, mode: str | None, passes: dict[str, tuple[Iterable[Any], dict[str, Any]]]
) -> tuple[str, str]:
    names = [f"{prefix}/{m}" for prefix, (_, metrics) in passes.items() for m in ("loss", *metrics)]
    if monitor is None:
        monitor = "val/loss" if "val/loss" in names else "train/loss"
    # a column of a metric with several values (F1(average=None): val/f1/0, val/f1/1, ...), whose keys its
    # first evaluation tells (check_reported)
    column = monitor.count("/") >= 2 and monitor.rsplit("/", 1)[0] in names
    if monitor not in names and not column:
        import difflib

        close = difflib.get_close_matches(monitor, names, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigError(
            f"monitor {monitor!r} is not a value of this run; {hint}choose one of: {', '.join(names)}"
        )
    if mode is None:
        mode = _direction(monitor, passes)
        if mode is None:  # guessed from the name, best.pt could be the worst epoch
            prefix, _, key = monitor.partition("/")
            raise ConfigError(
                f"which way {monitor!r} improves is unknown: metric {key!r} "
                f"({type(passes[prefix][1][key]).__name__}) declares no higher_is_better; "
                "pass mode='min' or mode='max' (xt run --mode min|max)"
            )
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', not {mode!r}")
    return monitor, mode


class _Kept:
    """The checkpoints kept besides ``last.pt`` and ``best.pt``, each a second name of a ``last.pt``.

    The ``top_k`` best evaluations by the monitored value, ``epoch=3-step=120-val_loss=0.1234.pt``, and
    one every ``every_n_epochs`` epochs or ``every_n_steps`` optimizer steps, ``epoch=3-step=120.pt``
    (``epoch``: the epoch the state is in, or at the end of). The top k and their values are part of the
    state: a resume goes on ranking where the checkpoint it resumes from left off.
    """

    def __init__(
        self,
        folder: Path,
        monitor: str,
        mode: str,
        top_k: int,
        every_n_epochs: int | None,
        every_n_steps: int | None,
    ):
        self.folder, self.monitor, self.mode = folder, monitor, mode
        self.top_k, self.every_n_epochs, self.every_n_steps = top_k, every_n_epochs, every_n_steps
        self.best: list[dict[str, Any]] = []  # the top k, best first: {'file': name, 'value': float}

    def every(self, epoch: int, step: int, epoch_end: bool) -> list[str]:
        """The file that keeps the state at ``epoch``/``step`` if one is due ([] if not)."""
        due = _due(self.every_n_steps, step) or (epoch_end and _due(self.every_n_epochs, epoch))
        return [f"epoch={epoch}-step={step}.pt"] if due else []

    def rank(self, value: Any, epoch: int, step: int) -> tuple[list[str], list[str]]:
        """Rank an evaluation's monitored ``value`` among the top k: the file that keeps its state ([] if it
        is not among them), and the files it pushes out of them."""
        if not self.top_k or not _improves(value, None, self.mode):  # not a number, or NaN
            return [], []
        name = f"epoch={epoch}-step={step}-{self.monitor.replace('/', '_')}={format_value(value)}.pt"
        # a stable sort: of equal values, the earlier evaluation stays
        ranked = sorted(
            [*self.best, {"file": name, "value": value}], key=lambda e: e["value"], reverse=self.mode == "max"
        )
        self.best = ranked[: self.top_k]
        kept = [name] if any(e["file"] == name for e in self.best) else []
        return kept, [e["file"] for e in ranked[self.top_k :] if e["file"] != name]

    def tidy(self, step: int) -> None:
        """On a resume at optimizer step ``step``: remove the kept files its checkpoint does not know of --
        of later steps (the resumed run writes them again) and pushed out of the top k -- which a kill
        between a save and its bookkeeping leaves."""
        top = {e["file"] for e in self.best}
        for path in self.folder.glob("epoch=*.pt"):
            match = KEPT_CHECKPOINT.fullmatch(path.name)
            if match and (int(match["step"]) > step or (match["value"] and path.name not in top)):
                path.unlink(missing_ok=True)


def _due(every: int | None, count: int) -> bool:
    return bool(every) and count % every == 0


def _remove(path: Path) -> None:
    path.unlink(missing_ok=True)


def _improves(value: Any, best: float | None, mode: str) -> bool:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _restore(path: Path, training: _Training) -> dict[str, Any]:
    """Load a checkpoint for ``resume``; return it (its ``position``: inside an interrupted epoch, if any)."""
    run, runner, averaging, config = training.run, training.runner, training.averaging, training.config
    if training.sharded:
        from . import fsdp  # lazy: the Runner imported it to shard the model

        state, ranks = fsdp.read_rank_state(path)
    else:
        state = read_checkpoint(path)
        if state.get(
            "sharded"
        ):  # the whole weights of a sharded run, without its optimizer state and position
            raise ConfigError(
                f"'{path}' holds the weights of a run of strategy='fsdp', whose state is in "
                f"{path.with_name(state['sharded'])}; resume it with strategy='fsdp'"
            )
    saved = state.get("config") or {}
    # averaging's keys are in the configuration only when it is on: on then and off now differs too
    keys = [k for k in config if k in saved]
    keys += [k for k in ("ema_decay", "swa_start", "swa_lr") if (k in config) != (k in saved)]
    differ = [
        f"{k}: {saved.get(k)!r} then, {config.get(k)!r} now" for k in keys if saved.get(k) != config.get(k)
    ]
    if differ:
        raise ConfigError(
            f"cannot resume from '{path}': the run differs from the one that wrote it ({'; '.join(differ)}); "
            "use the same configuration or a new save_dir"
        )
    own, then = set(training.state), set(state.get("state") or {})
    if own != then:
        raise ConfigError(
            f"cannot resume from '{path}': it holds state= {sorted(then)}, this run {sorted(own)}; "
            "pass the same state= names as the run that wrote it"
        )
    if training.sharded:
        fsdp.load_sharded(path, unwrap_model(run.model), run.optimizer)
        if training.scheduler is not None and state.get("scheduler") is not None:
            training.scheduler.load_state_dict(state["scheduler"])
        if ranks != distributed.world_size():  # rank 0's state: its position and RNG are of its shard only
            epoch = state.get("epoch", 0) + 1
            runner.loggers.notice(
                f"'{path}' was written by {ranks} ranks and this run has {distributed.world_size()}: the weights, "
                "optimizer, scheduler and history go on; the data's shards and the random state start afresh"
                + (f", and epoch {epoch} from its start" if state.get("position") else "")
            )
            state = {k: v for k, v in state.items() if k not in ("position", "rng")}
    else:
        load_checkpoint(path, run.model, run.optimizer, training.scheduler)
    if averaging is not None:  # the model got the averaged weights: the trained ones now
        averaging.load_state_dict(state["averaging"], state["model"])
    if runner.scaler is not None and state.get("scaler"):
        runner.scaler.load_state_dict(state["scaler"])
    _load_states(training, state)
    run.history = list(state.get("history") or [])
    run.epoch = state.get("epoch", 0)
    run.best = state.get("best")
    run.global_step = runner.global_step = state.get("global_step", 0)
    if state.get("rng"):
        restore_rng(state["rng"], training.generators)
    return state


def _check_state(state: Any) -> None:
    """``state=`` holds objects a checkpoint can save and a resume restore."""
    if state is None:
        return
    if not isinstance(state, Mapping):
        raise ConfigError(
            f"state must be a dict of name -> object with state_dict() and load_state_dict(), e.g. "
            f"state={{'hidden': holder}}, not {describe(state)}"
        )
    for name, obj in state.items():
        if not isinstance(name, str):
            raise ConfigError(f"state's names must be strings (the checkpoint's keys), not {name!r}")
        missing = [m for m in ("state_dict", "load_state_dict") if not callable(getattr(obj, m, None))]
        if missing:
            raise ConfigError(
                f"state[{name!r}] must have state_dict() and load_state_dict() (checkpoints save the one, resume "
                f"calls the other), but {describe(obj)} has no {' or '.join(missing)}; give it both"
            )


def _load_states(training: _Training, checkpoint: dict[str, Any]) -> None:
    """Restore the callbacks' and ``state=``'s objects' states from ``checkpoint`` (its keys of :meth:`states`)."""
    for cb, cb_state in zip(training.callbacks, checkpoint.get("callbacks") or []):
        if cb_state and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(cb_state)
    for name, obj in training.state.items():
        obj.load_state_dict(checkpoint["state"][name])


def _resume_from_best(save_dir: Path) -> str:
    """How to resume from the run's ``best.pt`` when its ``last.pt`` cannot be read, or to retrain."""
    best, last = checkpoints_dir(save_dir) / BEST, checkpoints_dir(save_dir) / LAST
    try:  # a hard link of the same file is as unreadable
        epoch = None if best.samefile(last) else read_checkpoint(best).get("epoch")
    except (OSError, CheckpointError):
        epoch = None
    if epoch is None:
        return "no other checkpoint of the run is intact: retrain"
    how = (
        f"`cp {best} {last}`, then `xt run --resume {save_dir}`"
        if (save_dir / CONFIG_FILE).is_file()
        else f"F.train(..., resume='{best}')"
    )
    return f"its best.pt (epoch {epoch}) is intact: resume from there with {how}, or retrain"


def _dry_run_batches(fast_dev_run: int | bool, resume: Any) -> int:
    """The batches of each pass of a ``fast_dev_run`` (``True``: 1); 0 for a real run."""
    if isinstance(fast_dev_run, bool):
        fast_dev_run = int(fast_dev_run)
    if not isinstance(fast_dev_run, int) or fast_dev_run < 0:
        raise ConfigError(
            f"fast_dev_run must be True, False or a number of batches (e.g. 2), not {fast_dev_run!r}"
        )
    if fast_dev_run and resume:
        raise ConfigError(
            "fast_dev_run writes no checkpoints, so there is nothing to resume; leave out resume"
        )
    return fast_dev_run


def _first_batches(loader: Iterable[Any], n: int) -> list[Any]:
    """The first ``n`` batches of ``loader``, kept: ``overfit_batches`` trains on them every epoch."""
    batches = list(itertools.islice(loader, n))
    if len(batches) < n:
        raise ConfigError(
            f"overfit_batches={n}, but train_loader has only {len(batches)} batches; give at most that"
        )
    return batches


def _save_crash(path: Path, model: torch.nn.Module, run: Run) -> None:
    """On an exception, keep the weights for inspection (never over last.pt/best.pt); the caller re-raises."""
    try:
        save_checkpoint(path, model, run.optimizer, epoch=run.epoch, history=run.history)
        print(f"training failed in epoch {run.epoch}; the weights at the failure are in {path}", flush=True)
    except Exception as e:  # the original error matters more than this one
        print(f"training failed, and saving {path} failed too: {e}", flush=True)


@contextlib.contextmanager
def _stop_on_signals(runner: Runner, enabled: bool) -> Iterator[list[str]]:
    """SIGTERM/SIGINT (and SLURM's SIGUSR1) ask the runner to stop after the current step; a second Ctrl-C
    stops at once."""
    received: list[str] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        runner.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    signals = [signal.SIGTERM, signal.SIGINT]
    # SLURM's warning before the time limit (sbatch --signal=USR1@90), unless the program handles it itself
    if slurm.job_id() is not None and signal.getsignal(slurm.REQUEUE_SIGNAL) in (signal.SIG_DFL, None):
        signals.append(slurm.REQUEUE_SIGNAL)
    previous = {sig: signal.signal(sig, handler) for sig in signals}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _resolve_loggers(
    loggers: Iterable[Any] | None, save_dir: Path, quiet: bool, main: bool, dry: int
) -> list[Any]:
    """Logger instances from instances or built-in names, the notes file, and the default console logger.

    Under DDP the ranks other than 0 log nothing; a dry run (``fast_dev_run``) the console only.
    """
    if dry:
        return default_loggers([], quiet)
    if not main:
        return []
    resolved = [create_logger(lg, save_dir) if isinstance(lg, str) else lg for lg in loggers or []]
    return default_loggers([*resolved, _Notes(save_dir)], quiet)


class _Notes:
    """Keeps the loop's one-line notices (e.g. that the fast path is used) in ``save_dir/notes.txt``."""

    def __init__(self, save_dir: Path):
        self.path = save_dir / NOTES_FILE

    def notice(self, message: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


def _noop(*args: Any) -> None:
    return None
