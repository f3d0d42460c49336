"""``F.train`` and ``F.test``: epochs, validation, checkpoints and history around the :class:`Runner`.

Usage::

    from xt_training import metrics
    from xt_training.utils import functional as F

    history = F.train('runs/exp1', train_loader, model, optimizer, epochs=10, loss_fn=loss_fn,
                      val_loader=val_loader, eval_metrics={'acc': metrics.Accuracy()})
    results = F.test({'test': test_loader}, model, loss_fn, eval_metrics={'acc': metrics.Accuracy()})
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from ..checkpoint import load_checkpoint, save_checkpoint, write_json
from ..errors import ConfigError
from ..runner import Runner, prepare_metrics, step_scheduler

__all__ = ["train", "test"]

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
    quiet: bool = False,
) -> list[dict[str, Any]]:
    """Train ``model`` for ``epochs`` epochs; validate and test after each; save checkpoints and history.

    The loop, as pseudocode::

        for epoch in 1..epochs:
            model.train(); runner(train_loader, 'train')    # optimizer steps; per-batch scheduler steps
            model.eval();  runner(val_loader, 'val')        # no grad; then each of test_loaders
            scheduler.step()                                # per epoch (ReduceLROnPlateau: monitored value)
            history.append(row); write history.json
            save checkpoints/last.pt; checkpoints/best.pt if the monitored value improved

    Args:
        save_dir: the run directory: ``history.json`` and ``checkpoints/{last,best}.pt`` go here.
        eval_metrics: ``{name: metric}`` for validation and test passes.
        train_metrics: metrics of the training passes; default: the same as ``eval_metrics`` (the
            original xt-training's behaviour). Pass ``{}`` to train with the loss only.
        monitor: the value that decides ``best.pt`` (and ``ReduceLROnPlateau``), as named in the
            history: ``'val/loss'`` (default with a ``val_loader``, else ``'train/loss'``), ``'val/acc'``...
        mode: ``'min'`` or ``'max'``; default ``'min'`` for loss/error-like names, else ``'max'``.
        scheduler_step: ``'epoch'`` or ``'batch'``.
        forward_fn, log_every_n_steps, loggers, quiet: see :class:`~xt_training.Runner`.

    Returns:
        The history: one dict per epoch, e.g. ``{'epoch': 1, 'train/loss': ..., 'val/acc': ..., 'lr': ...}``.
        Test loader ``'test'`` reports as ``test/...``, any other name ``n`` as ``test.n/...``.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ConfigError(f"epochs must be a positive integer, got {epochs!r}")
    if scheduler_step not in ("epoch", "batch"):
        raise ConfigError(f"scheduler_step must be 'epoch' or 'batch', not {scheduler_step!r}")
    for name, obj, methods in (
        ("optimizer", optimizer, ("step", "zero_grad")),
        ("loss_fn", loss_fn, ("__call__",)),
    ):
        if not all(hasattr(obj, m) for m in methods):
            raise ConfigError(f"{name} must have {' and '.join(methods)}; got {type(obj).__name__}")
    test_loaders = _check_loaders(test_loaders)
    eval_metrics = prepare_metrics(eval_metrics)
    train_metrics = eval_metrics if train_metrics is None else prepare_metrics(train_metrics)
    passes = [("train", train_loader, train_metrics)]
    if val_loader is not None:
        passes.append(("val", val_loader, eval_metrics))
    passes += [(_test_prefix(n), loader, eval_metrics) for n, loader in test_loaders.items()]
    monitor, mode = _check_monitor(monitor, mode, passes)
    save_dir = prepare_save_dir(save_dir)
    ckpt_dir = save_dir / "checkpoints"
    ckpt_dir.mkdir(exist_ok=True)

    runner = Runner(
        model,
        loss_fn,
        optimizer,
        scheduler,
        device=device,
        forward_fn=forward_fn,
        scheduler_step="batch" if scheduler_step == "batch" else None,  # per-epoch steps happen here
        log_every_n_steps=log_every_n_steps,
        loggers=loggers,
        quiet=quiet,
    )
    runner.loggers.start_run(_run_config(train_loader, model, optimizer, loss_fn, epochs, scheduler, monitor))
    history: list[dict[str, Any]] = []
    best: float | None = None
    status = "failed"
    try:
        for epoch in range(1, epochs + 1):
            runner.epoch = epoch
            row: dict[str, Any] = {"epoch": epoch, "lr": optimizer.param_groups[0]["lr"]}
            for prefix, loader, metrics in passes:
                model.train(prefix == "train")
                values = runner(loader, prefix, metrics=metrics)
                row.update({f"{prefix}/{k}": v for k, v in values.items()})
            model.train()
            value = row[monitor]
            if scheduler is not None and scheduler_step == "epoch":
                step_scheduler(scheduler, value)
            history.append(row)
            improved = _improves(value, best, mode)
            best = value if improved else best
            extra = dict(
                epoch=epoch,
                global_step=runner.global_step,
                history=history,
                monitor=monitor,
                mode=mode,
                best=best,
            )
            save_checkpoint(ckpt_dir / "last.pt", model, optimizer, scheduler, **extra)
            if improved:
                save_checkpoint(ckpt_dir / "best.pt", model, optimizer, scheduler, **extra)
            write_json(save_dir / HISTORY_FILE, history)
            runner.loggers.end_epoch(epoch, row, runner.global_step)
        status = "completed"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    finally:  # never `return` here: that would swallow the exception
        runner.loggers.end_run(status)
        runner.loggers.close()
    return history


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
) -> dict[str, dict[str, Any]]:
    """Evaluate ``model`` on every loader in ``test_loaders``; return ``{loader_name: {'loss': ..., metric: ...}}``.

    Runs under ``model.eval()`` and no-grad and restores the model's mode afterwards. With
    ``checkpoint_path`` the weights are loaded first. With ``save_dir`` the values go to
    ``save_dir/test_results.json`` and the predictions and labels to ``save_dir/results.pt``
    (``{loader_name: {'preds': tensor, 'labels': tensor}}``, loadable with ``weights_only=True``).
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
                if isinstance(preds, torch.Tensor) and isinstance(labels, torch.Tensor):
                    predictions[name] = {"preds": preds, "labels": labels}
    finally:
        model.train(was_training)
        runner.loggers.close()
    if out_dir is not None:
        write_json(out_dir / "test_results.json", results)
        if predictions:
            from ..checkpoint import atomic_write

            atomic_write(out_dir / "results.pt", lambda f: torch.save(predictions, f))
    return results


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
    if mode is None:
        metric = monitor.rsplit("/", 1)[1].lower()
        mode = "min" if any(w in metric for w in ("loss", "err", "mse", "mae", "rmse")) else "max"
    if mode not in ("min", "max"):
        raise ConfigError(f"mode must be 'min' or 'max', not {mode!r}")
    return monitor, mode


def _improves(value: Any, best: float | None, mode: str) -> bool:
    if not isinstance(value, (int, float)) or math.isnan(value):
        return False
    return best is None or (value < best if mode == "min" else value > best)


def _run_config(
    loader: Any, model: Any, optimizer: Any, loss_fn: Any, epochs: int, scheduler: Any, monitor: str
) -> dict[str, Any]:
    return {
        "model": type(model).__name__,
        "optimizer": type(optimizer).__name__,
        "lr": optimizer.param_groups[0].get("lr"),
        "loss_fn": getattr(loss_fn, "__name__", type(loss_fn).__name__),
        "scheduler": type(scheduler).__name__ if scheduler is not None else None,
        "epochs": epochs,
        "batch_size": getattr(loader, "batch_size", None),
        "monitor": monitor,
    }
