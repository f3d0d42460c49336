"""``F.test``: evaluate a model on named loaders, and keep the values, predictions and labels."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any

import torch

from .checkpoint import load_checkpoint
from .errors import ConfigError
from .files import atomic_write, prepare_dir, write_json
from .rundir import checkpoint_file
from .runner import Runner

__all__ = ["test", "check_loaders"]


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
    ``checkpoint_path`` the weights are loaded first: a checkpoint file, or a run directory (its ``best.pt``). With ``save_dir`` the values go to
    ``save_dir/test_results.json`` and the predictions and labels to ``save_dir/results.pt``
    (``{loader_name: {'preds': tensor, 'labels': tensor}}``, loadable with ``weights_only=True``;
    nested outputs are kept as lists/tuples/dicts of tensors).
    ``fast_path`` and ``data_on_device``: see :class:`~xt_training.Runner`. A loader that gives no value (no
    loss and no ``eval_metrics``) without a ``save_dir`` to keep its predictions is a ``ConfigError``.
    """
    test_loaders = check_loaders(test_loaders)
    if not test_loaders:
        raise ConfigError("test_loaders is empty; pass e.g. test_loaders={'test': loader}")
    out_dir = prepare_dir(save_dir) if save_dir is not None else None
    if checkpoint_path is not None:
        load_checkpoint(checkpoint_file(checkpoint_path), model)
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
                if not results[name]:  # an empty dict would read as a test that passed
                    raise ConfigError(_nothing_to_report(name, loss_fn))
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


def _nothing_to_report(name: str, loss_fn: Any) -> str:
    loss = (
        "no loss (loss_fn=None, and the model's output carries no .loss)"
        if loss_fn is None
        else "no loss (loss_fn returned None)"
    )
    return (
        f"F.test has nothing to report on loader '{name}': {loss} and no eval_metrics; pass a loss_fn, "
        "eval_metrics={'acc': ...}, or save_dir=... to keep the predictions"
    )


def _plain(obj: Any) -> bool:
    """Whether ``obj`` loads back with ``torch.load(weights_only=True)``: tensors in lists/tuples/dicts."""
    if isinstance(obj, torch.Tensor):
        return True
    if isinstance(obj, (list, tuple)) and not hasattr(obj, "_fields"):  # a namedtuple is a class: refused
        return all(_plain(o) for o in obj)
    if isinstance(obj, dict):
        return all(isinstance(k, (str, int)) and _plain(v) for k, v in obj.items())
    return isinstance(obj, (int, float, str, bool)) or obj is None


def check_loaders(loaders: Mapping[str, Iterable[Any]] | None) -> dict[str, Iterable[Any]]:
    if loaders is None:
        return {}
    if not isinstance(loaders, Mapping):
        raise ConfigError(
            f"test_loaders must be a dict of name -> loader, e.g. {{'test': loader}}, not {type(loaders).__name__}"
        )
    return dict(loaders)
