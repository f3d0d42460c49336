"""Building a run from its configuration: every named part created through the registry, in a fixed order.

:func:`build` seeds, then creates the data, model, loss and metrics (and for training the optimizer,
scheduler, loggers and callbacks), and records each part as ``config.json`` saves it: the options as
given, every option the factory was called with (``resolved``), and the plugin that provided it.
Torch is imported only where a part is made, so ``xt --help`` and ``xt list`` stay fast.
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from . import registry
from ._version import __version__
from .config import DATA_INFO_KEYS, FORMAT, SCALARS, checked_run
from .errors import ConfigError, XtError, first_line
from .files import jsonable
from .rundir import absolute_paths, direction

__all__ = ["Built", "build", "data_context", "seed_everything", "set_num_threads", "test_loaders"]


def set_num_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)``: the CPU threads of torch's operators (None keeps torch's, one per core).

    Fewer threads than cores helps where other processes share the machine (several runs, DataLoader
    workers); small models often run fastest on one.
    """
    if n is None:
        return
    if n < 1:  # its type was checked with the configuration's other scalars (check_config)
        raise ConfigError(f"num_threads must be a positive integer or null, not {n!r}")
    import torch  # lazy: building a configuration's parts imports torch only when they are made

    torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (when installed) and torch's random number generators."""
    import torch  # lazy: see set_num_threads

    if not -(2**63) <= seed < 2**64:  # what torch.manual_seed takes
        raise ConfigError(f"seed {seed} is out of range; use a seed from 0 to 2**64-1")
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def _check_fit(config: Mapping[str, Any], data: registry.Data) -> None:
    """A model that needs facts the data does not give (an RNN on images) is an error before anything runs."""
    params = registry.current().entry("model", config["model"]["name"]).parameters()
    missing = [
        k
        for k in DATA_INFO_KEYS
        if k in params and k not in data.info and k not in config["model"]["options"]
    ]
    if missing:
        raise ConfigError(
            f"model '{config['model']['name']}' takes {', '.join(missing)} from the data, but data "
            f"'{config['data']['name']}' does not give {'it' if len(missing) == 1 else 'them'} (it gives: "
            f"{', '.join(data.info) or 'nothing'}); pick a model that fits the data, or set them with --model-opt"
        )


def data_context(config: Mapping[str, Any]) -> dict[str, Any]:
    """What a run tells its data's factory (each value only if the factory has a parameter of its name).

    ``preprocessing``: how the run's model wants its inputs prepared, from the callable its plugin
    registered with the name as metadata ``preprocessing`` (``register(name, factory, preprocessing=fn)``,
    ``fn`` or ``"module:attr"``), called with the model's options; a pretrained model's resize, crop, mean
    and std, which an image folder applies. Nothing when the model declares none or returns None.
    """
    model = config.get("model")
    if not model:  # a run of F.train: no model by name
        return {}
    declared = registry.current().entry("model", model["name"]).metadata.get("preprocessing")
    if declared is None:
        return {}
    preprocessing = (registry.load_object(declared) if isinstance(declared, str) else declared)(
        **model["options"]
    )
    return {} if preprocessing is None else {"preprocessing": preprocessing}


def make(
    kind: str, component: Mapping[str, Any], context: Mapping[str, Any] | None = None
) -> tuple[Any, dict]:
    """Create a component through the registry; return it and its record for ``config.json``.

    ``context`` holds values the run knows (the data's ``num_classes``, the optimizer for a scheduler);
    each goes to the factory only if it has a parameter of that name, and user options win.
    """
    name, options = component["name"], dict(component["options"])
    given = {**registry.accepts(kind, name, context or {}), **options}
    try:
        obj = registry.create(kind, name, **given)
    except XtError:
        raise
    except (ValueError, TypeError) as e:  # a factory refusing a value, e.g. torch's "Invalid learning rate"
        raise ConfigError(
            f"{kind} '{name}': {e}; change its options (`xt info {kind} {name}` lists them)"
        ) from e
    except (MemoryError, RuntimeError) as e:
        if not isinstance(e, MemoryError) and "allocate" not in str(e):
            raise
        # an absurd size (n_samples=10000000000): one line, not torch's allocator traceback
        raise ConfigError(
            f"{kind} '{name}' does not fit in memory with options {options} ({first_line(e)}); use smaller values"
        ) from None
    entry = registry.current().entry(kind, name)
    defaults = {n: p.default for n, p in entry.parameters().items() if p.default is not p.empty}
    resolved = {k: v for k, v in {**defaults, **given}.items() if jsonable(v)}
    source = f"{entry.distribution} {entry.version}" if entry.distribution else entry.plugin
    return obj, {"name": name, "options": options, "resolved": resolved, "source": source}


@dataclass
class Built:
    """Everything a run configuration names, built; ``config`` is the configuration as saved."""

    config: dict[str, Any]
    data: registry.Data
    model: Any
    loss_fn: Any
    metrics: dict[str, Any]
    optimizer: Any = None
    scheduler: Any = None
    scheduler_step: str = "epoch"
    loggers: list[Any] | None = None
    callbacks: list[Any] | None = None


def build(
    config: Mapping[str, Any], save_dir: str | os.PathLike[str] | None = None, *, train: bool = True
) -> Built:
    """Seed, then build data, model, loss and metrics (and with ``train``: optimizer, scheduler, loggers, callbacks).

    The order is fixed so that the same configuration draws the same random numbers: the model's
    initial weights depend only on ``seed``.
    """
    config = checked_run(config)
    # the data's files by absolute path: the run's tools work from any directory and after the run moves
    config["data"] = {**config["data"], "options": absolute_paths(config["data"]["options"])}
    seed_everything(config["seed"])
    set_num_threads(config["num_threads"])
    saved: dict[str, Any] = {"format": FORMAT, "xt_training_version": __version__}
    data, saved["data"] = make("data", config["data"], data_context(config))
    if not isinstance(data, registry.Data):
        raise ConfigError(
            f"data '{config['data']['name']}' returned {type(data).__name__}; a data factory must return "
            "xt_training.registry.Data"
        )
    saved["info"] = {k: v for k, v in data.info.items() if jsonable(v)}
    _check_fit(config, data)
    # to be tested, the model gets the run's checkpoint: a factory may skip loading pretrained weights
    model, saved["model"] = make("model", config["model"], {**data.info, "from_checkpoint": not train})
    loss = config["loss"] or {"name": data.loss or "cross-entropy", "options": {}}
    loss_fn, saved["loss"] = make("loss", loss)
    metrics_config = config["metrics"]
    if metrics_config is None:
        metrics_config = {name: {"name": name, "options": {}} for name in data.metrics}
    if "loss" in metrics_config:
        raise ConfigError("'loss' is the name of the training loss in the history; name the metric otherwise")
    metrics: dict[str, Any] = {}
    saved["metrics"] = {}
    for key, component in metrics_config.items():
        metrics[key], saved["metrics"][key] = make("metric", component)
    built = Built(saved, data, model, loss_fn, metrics)
    if not train:
        return built

    if "train" not in data.loaders:
        raise ConfigError(
            f"data '{config['data']['name']}' has no 'train' split (it has: {', '.join(data.loaders)})"
        )
    built.optimizer, saved["optimizer"] = make(
        "optimizer", config["optimizer"], {"params": model.parameters()}
    )
    saved["scheduler"] = None
    if config["scheduler"] is not None:
        context = scheduler_context(config, data, built.optimizer, metrics)
        built.scheduler, saved["scheduler"] = make("scheduler", config["scheduler"], context)
        interval = registry.current().entry("scheduler", config["scheduler"]["name"]).metadata.get("interval")
        built.scheduler_step = interval or "epoch"
    context = {"save_dir": save_dir} if save_dir is not None else {}
    built.loggers, saved["loggers"] = [], []
    for component in config["loggers"]:
        logger, record = make("logger", component, context)
        built.loggers.append(logger)
        saved["loggers"].append(record)
    built.callbacks, saved["callbacks"] = [], []
    for component in config["callbacks"]:
        callback, record = make("callback", component)
        built.callbacks.append(callback)
        saved["callbacks"].append(record)
    saved.update({key: config[key] for key in SCALARS})
    return built


def scheduler_context(
    config: Mapping[str, Any], data: registry.Data, optimizer: Any, metrics: Mapping[str, Any]
) -> dict[str, Any]:
    """What the run tells a scheduler's factory (each value only if the factory has a parameter of its name)."""
    context = {"optimizer": optimizer, "epochs": config["epochs"]}
    monitor = config["monitor"] or data.monitor  # None: F.train's default, a loss
    # ReduceLROnPlateau's mode follows the monitor's (unknown: F.train asks for --mode before training)
    mode = config["mode"] or (direction(monitor, metrics) if monitor is not None else None)
    if mode is not None:
        context["mode"] = mode
    if hasattr(data.loaders["train"], "__len__"):
        # in optimizer steps, which a schedule counts: a last, partial accumulation group steps too
        context["steps_per_epoch"] = -(-len(data.loaders["train"]) // config["accumulate_grad_batches"])
    return context


def monitor_direction(config: Mapping[str, Any]) -> str | None:
    """Which way the monitored value of a run of ``config`` improves, before the run is built (a study's
    direction): ``'min'`` for a loss, else what its metric declares (made here), ``None`` where it declares none.
    """
    monitor = config["monitor"]
    key = monitor.split("/")[1] if "/" in monitor else monitor
    if key == "loss":
        return "min"
    component = (config["metrics"] or {}).get(key) or {"name": key, "options": {}}  # else one of the data's
    if component["name"] not in registry.names("metric"):
        return None
    metric, _ = make("metric", component)
    return direction(monitor, {key: metric})


def spread_over_epochs(component: Mapping[str, Any], context: Mapping[str, Any], epochs_then: int) -> bool:
    """Whether a scheduler's schedule is fixed by the run's length (cosine's T_max, one-cycle's total steps).

    Only a factory that takes ``epochs`` or ``steps_per_epoch`` can be; whether it is (cosine given its own
    T_max is not) shows in the states of fresh ones built for either number of epochs.
    """
    if not registry.accepts("scheduler", component["name"], {"epochs": 0, "steps_per_epoch": 0}):
        return False
    import torch  # lazy: see set_num_threads

    def fresh_state(epochs: int) -> dict[str, Any]:
        # a throwaway optimizer: building a scheduler changes its optimizer's learning rates
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
        scheduler, _ = make("scheduler", component, {**context, "optimizer": optimizer, "epochs": epochs})
        return scheduler.state_dict()

    try:
        return fresh_state(epochs_then) != fresh_state(context["epochs"])
    except XtError:  # a factory that cannot build on the throwaway optimizer: assume the worst
        return True


def test_loaders(data: registry.Data, splits: list[str] | None = None) -> dict[str, Any]:
    """The loaders of ``splits``, by default of the test splits, named as F.train/F.test name test loaders.

    Split ``'test'`` keeps its name and ``'test.NAME'`` becomes ``'NAME'`` (F.train reports it as ``test.NAME/...``).
    """
    if splits:
        unknown = [s for s in splits if s not in data.loaders]
        if unknown:
            import difflib

            close = difflib.get_close_matches(unknown[0], list(data.loaders), n=1)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"the data has no split {unknown[0]!r}; {hint}splits: {', '.join(data.loaders)}"
            )
        return {s: data.loaders[s] for s in splits}
    return {
        ("test" if s == "test" else s.removeprefix("test.")): loader
        for s, loader in data.loaders.items()
        if s == "test" or s.startswith("test.")
    }
