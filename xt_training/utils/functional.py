"""``F.train`` and ``F.test``: epochs, validation, checkpoints and history around the :class:`Runner`.

Usage::

    from xt_training import metrics
    from xt_training.utils import functional as F

    history = F.train('runs/exp1', train_loader, model, optimizer, epochs=10, loss_fn=loss_fn,
                      val_loader=val_loader, eval_metrics={'acc': metrics.Accuracy()})
    results = F.test({'test': test_loader}, model, loss_fn, eval_metrics={'acc': metrics.Accuracy()})
"""

from __future__ import annotations

import contextlib
import math
import os
import signal
import tempfile
import threading
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import torch
import torch.utils.serialization  # noqa: F401 - torch.save imports it at its first call (~3 ms): paid here, not in the run

from .. import distributed
from ..batch import describe
from ..callbacks import Run
from ..checkpoint import (
    BackgroundWriter,
    atomic_link,
    atomic_write,
    load_checkpoint,
    read_checkpoint,
    save_checkpoint,
    write_json,
)
from ..errors import ConfigError
from ..loggers.console import ConsoleLogger
from ..predict import predict
from ..rng import capture_rng, loader_generators, restore_rng
from ..runner import Runner, check_instance, check_list, prepare_metrics, step_scheduler

__all__ = ["train", "test", "predict"]

HISTORY_FILE = "history.json"


def train(
    save_dir: str | os.PathLike[str],
    train_loader: Iterable[Any],
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    epochs: int,
    loss_fn: Callable[[Any, Any], torch.Tensor],
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
    log_every_n_steps: int = 50,
    loggers: Iterable[Any] | None = None,
    callbacks: Iterable[Any] | None = None,
    quiet: bool = False,
    resume: bool | str | os.PathLike[str] = False,
    checkpoint_every_n_steps: int | None = None,
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
    export: str | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` epochs; validate and test after each; save checkpoints and history.

    The loop, as pseudocode::

        for epoch in 1..epochs:
            model.train(); runner(train_loader, 'train')    # optimizer steps; per-batch scheduler steps;
                                                            # checkpoints/last.pt every checkpoint_every_n_steps
            model.eval();  runner(val_loader, 'val')        # no grad; then each of test_loaders
            scheduler.step()                                # per epoch (ReduceLROnPlateau: monitored value)
            history.append(row); callbacks.on_epoch_end(run, row)
            save checkpoints/last.pt; checkpoints/best.pt if the monitored value improved; history.json
            stop if a callback set run.should_stop (e.g. EarlyStopping)

    Args:
        save_dir: the run directory: ``history.json`` and ``checkpoints/{last,best}.pt`` go here.
        eval_metrics: ``{name: metric}`` for validation and test passes.
        train_metrics: metrics of the training passes; default: the same as ``eval_metrics`` (the
            original xt-training's behaviour). Pass ``{}`` to train with the loss only.
        monitor: the value that decides ``best.pt`` (and ``ReduceLROnPlateau``), as named in the
            history: ``'val/loss'`` (default with a ``val_loader``, else ``'train/loss'``), ``'val/acc'``...
        mode: ``'min'`` or ``'max'``; default ``'min'`` for loss/error-like names, else ``'max'``.
        scheduler_step: ``'epoch'`` or ``'batch'``.
        loggers: logger instances or registered names (``'tensorboard'``, ``'csv'``...); the console
            logger is added unless ``quiet`` or one is given.
        callbacks: objects with ``on_epoch_end(run, row)`` etc., see :mod:`xt_training.callbacks`.
        resume: ``True`` continues the run in ``save_dir`` from ``checkpoints/last.pt`` exactly where it
            stopped (mid-epoch included), or a checkpoint path. A fresh ``save_dir`` starts from scratch;
            a run that has trained all ``epochs`` returns its history (nothing to do); fewer ``epochs``
            than it has trained are a ``ConfigError``.
        checkpoint_every_n_steps: also write ``last.pt`` every N optimizer steps (mid-epoch).
        handle_signals: on SIGTERM or Ctrl-C, finish the current step, write ``last.pt`` and stop:
            SIGTERM raises ``SystemExit(0)`` (preemption), Ctrl-C re-raises ``KeyboardInterrupt``.
        export: ``'onnx'``, ``'pt2'`` or ``'torchscript'``: once training ends, export the best model to
            ``save_dir/model.onnx`` (``.pt2``, ``.torchscript.pt``), verified against the eager model, with
            the first batch of ``val_loader`` (else ``train_loader``) as the example input; see
            :func:`xt_training.exporting.export_trained`. Checked before training starts.

    The loop options ``forward_fn``, ``log_every_n_steps``, ``precision``, ``nonfinite_loss``,
    ``accumulate_grad_batches``, ``clip_grad_norm``, ``clip_grad_value``, ``fast_path``, ``data_on_device``,
    ``compile`` and ``channels_last`` are the :class:`~xt_training.Runner`'s.

    Returns:
        The history: one dict per epoch, e.g. ``{'epoch': 1, 'train/loss': ..., 'val/acc': ..., 'lr': ...}``.
        Test loader ``'test'`` reports as ``test/...``, any other name ``n`` as ``test.n/...``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if scheduler_step not in ("epoch", "batch"):
        raise ConfigError(f"scheduler_step must be 'epoch' or 'batch', not {scheduler_step!r}")
    if not isinstance(save_dir, (str, os.PathLike)):
        raise ConfigError(f"save_dir must be a directory path (str or Path), not {describe(save_dir)}")
    for name, loader in (("train_loader", train_loader), ("val_loader", val_loader)):
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
    check_list("loggers", loggers)
    check_list("callbacks", callbacks)
    for name, obj, methods in (
        ("optimizer", optimizer, ("step", "zero_grad")),
        ("loss_fn", loss_fn, ("__call__",)),
    ):
        check_instance(name, obj)
        if not all(hasattr(obj, m) for m in methods):
            raise ConfigError(f"{name} must have {' and '.join(methods)}; got {type(obj).__name__}")
    if export is not None:
        from ..exporting import check_format

        check_format(export)  # an unknown format or a missing onnx extra fails now, not after training
        if forward_fn is not None:
            raise ConfigError(
                "export= takes its example input from (x, y) batches, which forward_fn replaces; call "
                "xt_training.exporting.export(model, example_input, path) after training instead"
            )
    test_loaders = _check_loaders(test_loaders)
    eval_metrics = prepare_metrics(eval_metrics)
    train_metrics = eval_metrics if train_metrics is None else prepare_metrics(train_metrics)
    passes = [("train", train_loader, train_metrics)]
    if val_loader is not None:
        passes.append(("val", val_loader, eval_metrics))
    passes += [(_test_prefix(n), loader, eval_metrics) for n, loader in test_loaders.items()]
    monitor, mode = _check_monitor(monitor, mode, passes)
    plateau = isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau)
    if plateau and scheduler_step == "epoch" and scheduler.mode != mode:  # it would cut the lr on improvement
        raise ConfigError(
            f"ReduceLROnPlateau(mode={scheduler.mode!r}) steps on {monitor!r}, which is a '{mode}' value here; "
            f"make them agree: ReduceLROnPlateau(optimizer, mode={mode!r}), or mode={scheduler.mode!r} in F.train"
        )
    main = not distributed.init_from_env() or distributed.is_main()  # under DDP only rank 0 writes
    save_dir = prepare_save_dir(save_dir) if main else Path(save_dir)
    ckpt_dir = save_dir / "checkpoints"
    if main:
        ckpt_dir.mkdir(exist_ok=True)
    callbacks = list(callbacks or [])
    generators = [g for _, loader, _ in passes for g in loader_generators(loader)]
    config = _run_config(train_loader, model, optimizer, loss_fn, scheduler, monitor)

    runner = Runner(
        model,
        loss_fn,
        optimizer,
        scheduler,
        device=device,
        forward_fn=forward_fn,
        scheduler_step="batch" if scheduler_step == "batch" else None,  # per-epoch steps happen here
        log_every_n_steps=log_every_n_steps,
        loggers=_resolve_loggers(loggers, save_dir, quiet) if main else [],
        precision=precision,
        nonfinite_loss=nonfinite_loss,
        accumulate_grad_batches=accumulate_grad_batches,
        clip_grad_norm=clip_grad_norm,
        clip_grad_value=clip_grad_value,
        checkpoint_every_n_steps=checkpoint_every_n_steps,
        fast_path=fast_path,
        data_on_device=data_on_device,
        compile=compile,
        channels_last=channels_last,
    )
    run = Run(model=model, optimizer=optimizer, save_dir=save_dir, monitor=monitor, mode=mode)
    # checkpoints and history.json are written on a background thread: the loop does not wait for the disk
    background = BackgroundWriter() if main else None

    def save(path: Path, position: dict[str, Any] | None = None) -> None:
        if not main:
            return
        runner.loggers.flush()  # what was logged up to the checkpoint survives a kill after it
        save_checkpoint(
            path, model, optimizer, scheduler, background=background,
            scaler=runner.scaler.state_dict() if runner.scaler is not None else None,
            epoch=run.epoch if position is None else run.epoch - 1,  # the last completed epoch
            global_step=runner.global_step, history=run.history, monitor=monitor, mode=mode, best=run.best,
            callbacks=[getattr(cb, "state_dict", dict)() for cb in callbacks],
            config=config, position=position, rng=capture_rng(generators),
        )  # fmt: skip

    position = None
    if resume and (resume is not True or (ckpt_dir / "last.pt").exists()):
        position = _restore(
            Path(resume) if resume is not True else ckpt_dir / "last.pt",
            run,
            runner,
            callbacks,
            scheduler,
            config,
            generators,
        )
    start_epoch = run.epoch + 1
    # resumed with no more epochs than it has: a finished run is complete (a no-op: retried jobs stay
    # idempotent), fewer epochs than it trained are a mistake
    complete = position is None and epochs == run.epoch > 0
    if complete or epochs < start_epoch - (position is None):
        if complete:
            runner.loggers.notice(
                f"the run in {save_dir} has trained all {epochs} epochs; pass more to train on"
            )
        runner.loggers.close()
        if background is not None:
            background.close()
        if complete:
            return run.history
        done = f"trained {run.epoch} epoch{'s' if run.epoch != 1 else ''}" + (
            f" and part of epoch {start_epoch}" if position else ""
        )
        raise ConfigError(
            f"cannot resume the run in {save_dir} with epochs={epochs}: it has {done}; "
            f"pass epochs={start_epoch} or more"
        )
    if position is not None:
        where = (
            f"step {position['step']} of epoch {start_epoch}"
            if position["phase"] == "train"
            else f"the evaluation of epoch {start_epoch}"
        )
        runner.loggers.notice(f"resuming the run in {save_dir} at {where}")
    elif run.epoch:
        runner.loggers.notice(f"resuming the run in {save_dir} after epoch {run.epoch}")
    runner.loggers.start_run(
        {
            **config,
            "epochs": epochs,
            "save_dir": str(save_dir),
            "resumed": start_epoch > 1 or position is not None,
        }
    )
    for cb in callbacks:
        getattr(cb, "on_train_start", _noop)(run)

    status = "failed"
    with _stop_on_signals(runner, enabled=handle_signals) as received:

        def stop(position: dict[str, Any] | None) -> None:
            """A signal asked to stop: keep the exact position, then leave as the signal wants."""
            if position is not None:  # else the epoch's checkpoint is the position
                save(ckpt_dir / "last.pt", position)
            if background is not None:
                background.wait()  # saved, as the message below says
            sig = received[0] if received else "SIGTERM"  # under DDP another rank may have got the signal
            print(f"stopped by {sig}: state saved to {ckpt_dir / 'last.pt'}; resume with "
                  f"F.train(..., resume=True) or `xt run --resume {save_dir}`", flush=True)  # fmt: skip
            if sig == "SIGINT":
                raise KeyboardInterrupt
            raise SystemExit(0)

        runner.on_checkpoint = lambda: save(
            ckpt_dir / "last.pt", {"phase": "train", "row": row, **runner.position()}
        )
        try:
            for epoch in range(start_epoch, epochs + 1):
                run.epoch = runner.epoch = epoch
                resumed = position if position is not None and position["row"]["epoch"] == epoch else None
                if resumed is not None and resumed["phase"] == "eval":  # the training pass was done
                    row = dict(resumed["row"])
                    restore_rng(resumed["rng"], generators)
                else:
                    row = (
                        dict(resumed["row"])
                        if resumed
                        else {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
                    )
                    model.train()
                    values = runner(train_loader, "train", metrics=train_metrics, resume=resumed)
                    if runner.stopped:
                        stop({"phase": "train", "row": row, **runner.position()})
                    row.update({f"train/{k}": v for k, v in values.items()})
                if len(passes) > 1:  # evaluation passes; a stop during them resumes from after_train
                    after_train = {"phase": "eval", "row": dict(row), "rng": capture_rng(generators)}
                    model.eval()
                    for prefix, loader, metrics in passes[1:]:
                        values = runner(loader, prefix, metrics=metrics)
                        if runner.stopped:
                            stop(after_train)
                        row.update({f"{prefix}/{k}": v for k, v in values.items()})
                    model.train()

                if monitor not in row:
                    raise ConfigError(
                        f"monitor {monitor!r} was not reported in epoch {epoch}: a loss_fn that returns None in "
                        "evaluation (a detection model) reports no loss; monitor a metric, e.g. monitor='val/map'"
                    )
                if scheduler is not None and scheduler_step == "epoch":
                    step_scheduler(scheduler, row[monitor])
                run.history.append(row)
                improved = _improves(row[monitor], run.best, mode)
                run.best = row[monitor] if improved else run.best
                run.global_step = runner.global_step
                for cb in callbacks:
                    getattr(cb, "on_epoch_end", _noop)(run, row)
                # one rank's callback (a time budget, a file it reads) stops every rank: one that trained on
                # alone would wait for the others in its next collective for ever
                run.should_stop = distributed.any_rank(run.should_stop, runner.device)
                save(ckpt_dir / "last.pt")
                if main:
                    if improved:  # the same state as last.pt: a second name, not a second write
                        background.submit(atomic_link, ckpt_dir / "last.pt", ckpt_dir / "best.pt")
                    write_json(save_dir / HISTORY_FILE, run.history, background)
                runner.loggers.end_epoch(epoch, row, runner.global_step)
                if run.should_stop:
                    break
                if distributed.any_rank(runner.stop_requested, runner.device):  # came between passes (or DDP)
                    stop(None)
            if background is not None:
                background.wait()  # a run is complete once its files are
            status = "stopped" if run.should_stop else "completed"
        except (KeyboardInterrupt, SystemExit):  # Ctrl-C, or SIGTERM's exit after saving the position
            status = "interrupted"
            raise
        except Exception:
            if main:
                _save_crash(ckpt_dir / "crash.pt", model, run)
            raise
        finally:  # never `return` here: that would swallow the exception
            if background is not None:
                background.close()
            for cb in callbacks:
                getattr(cb, "on_train_end", _noop)(run, status)
            runner.loggers.end_run(status)
            runner.loggers.close()
    if export is not None and main:
        from ..exporting import export_trained

        export_trained(
            save_dir, model, val_loader if val_loader is not None else train_loader, export, quiet=quiet
        )
    return run.history


def test(
    test_loaders: Mapping[str, Iterable[Any]],
    model: torch.nn.Module,
    loss_fn: Callable[[Any, Any], torch.Tensor] | None = None,
    eval_metrics: Mapping[str, Any] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    checkpoint_path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    *,
    forward_fn: Callable[[torch.nn.Module, Any], tuple[Any, Any]] | None = None,
    loggers: Iterable[Any] | None = None,
    quiet: bool = False,
    fast_path: bool = True,
    data_on_device: bool | str = "auto",
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` on every loader in ``test_loaders``; return ``{loader_name: {'loss': ..., metric: ...}}``.

    Runs under ``model.eval()`` and no-grad and restores the model's mode afterwards. With
    ``checkpoint_path`` the weights are loaded first. With ``save_dir`` the values go to
    ``save_dir/test_results.json`` and the predictions and labels to ``save_dir/results.pt``
    (``{loader_name: {'preds': tensor, 'labels': tensor}}``, loadable with ``weights_only=True``;
    nested outputs are kept as lists/tuples/dicts of tensors).
    ``fast_path`` and ``data_on_device``: see :class:`~xt_training.Runner`.
    """
    test_loaders = _check_loaders(test_loaders)
    if not test_loaders:
        raise ConfigError("test_loaders is empty; pass e.g. test_loaders={'test': loader}")
    out_dir = prepare_save_dir(save_dir) if save_dir is not None else None
    if checkpoint_path is not None:
        load_checkpoint(checkpoint_path, model)
    runner = Runner(
        model,
        loss_fn,
        batch_metrics=eval_metrics,
        device=device,
        forward_fn=forward_fn,
        loggers=loggers,
        quiet=quiet,
        fast_path=fast_path,
        data_on_device=data_on_device,
    )
    was_training = model.training
    model.eval()
    results: dict[str, dict[str, Any]] = {}
    predictions: dict[str, dict[str, Any]] = {}
    try:
        for name, loader in test_loaders.items():
            if out_dir is None:
                results[name] = runner(loader, name)
            else:
                preds, labels = runner(loader, name, return_preds=True)
                results[name] = runner.latest
                if _plain(preds) and _plain(labels):
                    predictions[name] = {"preds": preds, "labels": labels}
                else:
                    runner.loggers.notice(
                        f"results.pt: the outputs of '{name}' are not tensors/lists/dicts; left out"
                    )
    finally:
        model.train(was_training)
        runner.loggers.close()
    if out_dir is not None:
        write_json(out_dir / "test_results.json", results)
        if predictions:
            atomic_write(out_dir / "results.pt", lambda f: torch.save(predictions, f))
    return results


def _plain(obj: Any) -> bool:
    """Whether ``obj`` loads back with ``torch.load(weights_only=True)``: tensors in lists/tuples/dicts."""
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):  # a namedtuple is a class: refused
        return all(_plain(o) for o in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    return isinstance(obj, (int, float, str, bool)) or obj is None


def prepare_save_dir(save_dir: str | os.PathLike[str]) -> Path:
    """Create ``save_dir`` and prove that it is writable, before any work is done."""
    path = Path(save_dir)
    try:
        path.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path):
            pass
    except OSError as e:
        raise ConfigError(
            f"save_dir '{path}' is not writable ({e.strerror or e}); choose another directory"
        ) from None
    return path


def _check_loaders(loaders: Mapping[str, Iterable[Any]] | None) -> dict[str, Iterable[Any]]:
    if loaders is None:
        return {}
    if not isinstance(loaders, Mapping):
        raise ConfigError(
            f"test_loaders must be a dict of name -> loader, e.g. {{'test': loader}}, not {type(loaders).__name__}"
        )
    return dict(loaders)


def _test_prefix(name: str) -> str:
    return "test" if name == "test" else f"test.{name}"


def _check_monitor(
    monitor: str | None, mode: str | None, passes: list[tuple[str, Any, dict[str, Any]]]
) -> tuple[str, str]:
    names = [f"{prefix}/{m}" for prefix, _, metrics in passes for m in ("loss", *metrics)]
    if monitor is None:
        monitor = "val/loss" if "val/loss" in names else "train/loss"
    if monitor not in names:
        import difflib

        close = difflib.get_close_matches(monitor, names, n=3)
        hint = f"did you mean {' or '.join(map(repr, close))}? " if close else ""
        raise ConfigError(
            f"monitor {monitor!r} is not a value of this run; {hint}choose one of: {', '.join(names)}"
        )
    mode = default_mode(monitor) if mode is None else mode
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', not {mode!r}")
    return monitor, mode


def default_mode(monitor: str) -> str:
    """``'min'`` for a loss or error (``'val/loss'``, ``'val/mae'``...), else ``'max'`` (accuracy, AUC...)."""
    metric = monitor.rsplit("/", 1)[-1].lower()
    return "min" if any(w in metric for w in ("loss", "err", "mse", "mae", "rmse")) else "max"


def _improves(value: Any, best: float | None, mode: str) -> bool:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _run_config(
    loader: Any, model: Any, optimizer: Any, loss_fn: Any, scheduler: Any, monitor: str
) -> dict[str, Any]:
    """What identifies a run, for loggers' hyper-parameters and the resume check (epochs may change)."""
    return {
        "model": type(model).__name__,
        "parameters": sum(p.numel() for p in model.parameters()),
        "optimizer": type(optimizer).__name__,
        "lr": optimizer.param_groups[0].get("lr"),
        "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__),
        "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        "batch_size": getattr(loader, "batch_size", None),
        "monitor": monitor,
    }


def _restore(
    path: Path,
    run: Run,
    runner: Runner,
    callbacks: list[Any],
    scheduler: Any,
    config: dict[str, Any],
    generators: list[Any],
) -> dict[str, Any] | None:
    """Load a checkpoint for ``resume``; return the position inside an interrupted epoch, if any."""
    state = read_checkpoint(path)
    saved = state.get("config") or {}
    differ = [
        f"{k}: {saved.get(k)!r} then, {v!r} now" for k, v in config.items() if k in saved and saved[k] != v
    ]
    if differ:
        raise ConfigError(
            f"cannot resume from '{path}': the run differs from the one that wrote it ({'; '.join(differ)}); "
            "use the same configuration or a new save_dir"
        )
    load_checkpoint(path, run.model, run.optimizer, scheduler)
    if runner.scaler is not None and state.get("scaler"):
        runner.scaler.load_state_dict(state["scaler"])
    for cb, cb_state in zip(callbacks, state.get("callbacks") or []):
        if cb_state and hasattr(cb, "load_state_dict"):
            cb.load_state_dict(cb_state)
    run.history = list(state.get("history") or [])
    run.epoch = state.get("epoch", 0)
    run.best = state.get("best")
    run.global_step = runner.global_step = state.get("global_step", 0)
    if state.get("rng"):
        restore_rng(state["rng"], generators)
    return state.get("position")


def _save_crash(path: Path, model: torch.nn.Module, run: Run) -> None:
    """On an exception, keep the weights for inspection (never over last.pt/best.pt); the caller re-raises."""
    try:
        save_checkpoint(path, model, run.optimizer, epoch=run.epoch, history=run.history)
        print(f"training failed in epoch {run.epoch}; the weights at the failure are in {path}", flush=True)
    except Exception as e:  # the original error matters more than this one
        print(f"training failed, and saving {path} failed too: {e}", flush=True)


@contextlib.contextmanager
def _stop_on_signals(runner: Runner, enabled: bool) -> Iterator[list[str]]:
    """SIGTERM/SIGINT ask the runner to stop after the current step; a second Ctrl-C stops at once."""
    received: list[str] = []
    if not enabled or threading.current_thread() is not threading.main_thread():
        yield received
        return

    def handler(signum: int, frame: Any) -> None:
        received.append(signal.Signals(signum).name)
        runner.stop_requested = True
        signal.signal(signal.SIGINT, signal.default_int_handler)  # a second Ctrl-C interrupts at once

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        yield received
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _resolve_loggers(loggers: Iterable[Any] | None, save_dir: Path, quiet: bool) -> list[Any]:
    """Logger instances from instances or registered names; the console logger unless quiet."""
    resolved = []
    for lg in loggers or []:
        if isinstance(lg, str):
            from .. import registry

            lg = registry.create("logger", lg, save_dir=save_dir)
        resolved.append(lg)
    resolved.append(_Notes(save_dir))
    if quiet:
        return [lg for lg in resolved if not isinstance(lg, ConsoleLogger)]
    if not any(isinstance(lg, ConsoleLogger) for lg in resolved):
        resolved.insert(0, ConsoleLogger())
    return resolved


class _Notes:
    """Keeps the loop's one-line notices (e.g. that the fast path is used) in ``save_dir/notes.txt``."""

    def __init__(self, save_dir: Path):
        self.path = save_dir / "notes.txt"

    def notice(self, message: str) -> None:
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(message + "\n")


def _noop(*args: Any) -> None:
    return None
