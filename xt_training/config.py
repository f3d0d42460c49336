"""Runs described by configuration: ``xt run``'s JSON run configuration, and Python config files.

**Run configuration** (what ``xt run`` builds from names, saved as ``RUN_DIR/config.json``)::

    {"format": 1,
     "model":     {"name": "cnn", "options": {...}},          # options as the user gave them
     "data":      {"name": "synthetic-images", "options": {"batch_size": 64}},
     "loss":      {"name": "cross-entropy", "options": {}},
     "optimizer": {"name": "adam", "options": {"lr": 0.001}},
     "scheduler": null | {"name": ..., "options": {...}},
     "metrics":   {"accuracy": {"name": "accuracy", "options": {}}},   # history key -> metric
     "loggers":   [{"name": "csv", "options": {}}],
     "callbacks": [{"name": "early-stopping", "options": {"patience": 3}}],
     "epochs": 10, "seed": 0, "device": null, "monitor": null, "mode": null, "log_every_n_steps": 50,
     "precision": "32", "accumulate_grad_batches": 1, "clip_grad_norm": null, "clip_grad_value": null,
     "checkpoint_every_n_steps": null, "nonfinite_loss": "raise", "fast_path": true, "compile": false,
     "channels_last": false, "export": null,              # the arguments of F.train of the same names
     "num_threads": null}                                 # torch.set_num_threads before the run; null: torch's

The saved file also records, per component, ``resolved`` (every option the factory was called with,
defaults and the values taken from the data included) and ``source`` (the plugin distribution that
provided the name), plus the data's ``info``. :func:`train` builds everything through the registry and
calls :func:`xt_training.utils.functional.train`, the same function Python users call; running a saved
``config.json`` again reproduces the run (same seed, same data, same options).

**Python config files** (``xt train CONFIG.py``) are executed as code: they define ``model``,
``train_loader``, ``optimizer``, ``loss_fn`` and ``epochs``, and optionally any other argument of
``F.train`` (``val_loader``, ``test_loaders``, ``eval_metrics``, ``scheduler``, ...).
"""

from __future__ import annotations

import copy
import json
import os
import random
import shutil
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import registry
from ._version import __version__
from .errors import CheckpointError, ConfigError, XtError

__all__ = [
    "CONFIG_FILE",
    "default_config",
    "read_config",
    "check_config",
    "seed_everything",
    "default_save_dir",
    "Built",
    "build",
    "train",
    "test",
    "exec_config",
    "train_config_file",
    "test_config_file",
]

CONFIG_FILE = "config.json"
FORMAT = 1
COMPONENTS = ("model", "data", "loss", "optimizer", "scheduler")
LISTS = ("loggers", "callbacks")
SCALARS = {
    "epochs": int,
    "seed": int,
    "device": (str, type(None)),
    "monitor": (str, type(None)),
    "mode": (str, type(None)),
    "log_every_n_steps": int,
    "precision": str,
    "accumulate_grad_batches": int,
    "clip_grad_norm": (int, float, type(None)),
    "clip_grad_value": (int, float, type(None)),
    "checkpoint_every_n_steps": (int, type(None)),
    "nonfinite_loss": str,
    "fast_path": bool,
    "compile": bool,
    "channels_last": bool,
    "export": (str, type(None)),
    "num_threads": (int, type(None)),
}
#: the SCALARS passed to F.train under the same name
TRAIN_ARGS = tuple(key for key in SCALARS if key not in ("epochs", "seed", "num_threads"))
#: facts a data set's ``info`` may give that model factories take by these names
DATA_INFO_KEYS = ("num_classes", "in_features", "in_channels", "image_size", "input_size", "seq_len")
REQUIRED_IN_CONFIG_FILE = ("model", "train_loader", "optimizer", "loss_fn", "epochs")


def default_config() -> dict[str, Any]:
    """A run configuration with every default filled in and no model or data chosen yet."""
    return {
        "format": FORMAT,
        "model": None,
        "data": None,
        "loss": None,  # None: the data's suggested loss
        "optimizer": {"name": "adam", "options": {}},
        "scheduler": None,
        "metrics": None,  # None: the data's suggested metrics
        "loggers": [],  # the console logger is added unless quiet
        "callbacks": [],
        "epochs": 10,
        "seed": 0,
        "device": None,
        "monitor": None,
        "mode": None,
        "log_every_n_steps": 50,
        "precision": "32",
        "accumulate_grad_batches": 1,
        "clip_grad_norm": None,
        "clip_grad_value": None,
        "checkpoint_every_n_steps": None,
        "nonfinite_loss": "raise",
        "fast_path": True,
        "compile": False,
        "channels_last": False,
        "export": None,
        "num_threads": None,
    }


def read_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a run configuration from ``RUN_DIR/config.json`` (or the run directory itself) and check it."""
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILE
    if not file.is_file():
        if (file.parent / "config.py").is_file():  # a run of `xt train`, which keeps its config file
            raise ConfigError(
                f"'{file.parent}' is a run of `xt train` (its config.py, no {CONFIG_FILE}); use the config "
                f"file, e.g. `xt test {file.parent / 'config.py'} --checkpoint "
                f"{file.parent / 'checkpoints' / 'best.pt'}`"
            )
        raise ConfigError(
            f"'{file}' does not exist; pass a run directory written by `xt run`, or its {CONFIG_FILE}"
        )
    try:
        config = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(
            f"'{file}' is not valid JSON ({e}); it may be truncated: rerun or fix the file"
        ) from None
    return check_config(config, str(file))


def check_config(config: Any, where: str = "the run configuration") -> dict[str, Any]:
    """Check the shape of a run configuration; fill in defaults for missing keys. Returns a copy."""
    if not isinstance(config, dict):
        raise ConfigError(f"{where}: a run configuration is a JSON object, not {type(config).__name__}")
    if config.get("format", FORMAT) != FORMAT:
        raise ConfigError(
            f"{where}: format {config.get('format')!r} is not supported by xt-training {__version__}; "
            f"this version reads format {FORMAT}"
        )
    unknown = sorted(set(config) - set(default_config()) - {"xt_training_version", "created", "info"})
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r}; keys: {', '.join(default_config())}")
    checked = {**default_config(), **copy.deepcopy(config)}
    for kind in COMPONENTS:
        checked[kind] = _component(checked[kind], f"{where}: {kind!r}")
    if checked["metrics"] is not None:
        if not isinstance(checked["metrics"], dict):
            raise ConfigError(
                f"{where}: 'metrics' must map history names to {{'name': ..., 'options': {{}}}}"
            )
        checked["metrics"] = {
            k: _component(v, f"{where}: metric {k!r}") for k, v in checked["metrics"].items()
        }
    for key in LISTS:
        if not isinstance(checked[key], list):
            raise ConfigError(f"{where}: {key!r} must be a list of {{'name': ..., 'options': {{}}}}")
        checked[key] = [_component(v, f"{where}: {key}") for v in checked[key]]
    for key, types in SCALARS.items():
        wants_bool = bool in (types if isinstance(types, tuple) else (types,))
        if not isinstance(checked[key], types) or (isinstance(checked[key], bool) and not wants_bool):
            raise ConfigError(f"{where}: {key!r} must be {_names(types)}, not {checked[key]!r}")
    return checked


def _names(types: Any) -> str:
    types = types if isinstance(types, tuple) else (types,)
    return " or ".join("null" if t is type(None) else t.__name__ for t in types)


def _component(value: Any, where: str) -> dict[str, Any] | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"name": value}
    if not isinstance(value, dict) or not isinstance(value.get("name"), str):
        raise ConfigError(f"{where} must be {{'name': NAME, 'options': {{...}}}} or null, not {value!r}")
    options = value.get("options") or {}
    if not isinstance(options, dict):
        raise ConfigError(f"{where}: 'options' must be an object of option -> value, not {options!r}")
    return {**value, "options": options}


def set_num_threads(n: int | None) -> None:
    """``torch.set_num_threads(n)``: the CPU threads of torch's operators (None keeps torch's, one per core).

    Fewer threads than cores helps where other processes share the machine (several runs, DataLoader
    workers); small models often run fastest on one.
    """
    if n is None:
        return
    if n < 1:  # its type was checked with the configuration's other scalars (check_config)
        raise ConfigError(f"num_threads must be a positive integer or null, not {n!r}")
    import torch

    torch.set_num_threads(n)


def seed_everything(seed: int) -> None:
    """Seed Python's, NumPy's (when installed) and torch's random number generators."""
    import torch

    if not -(2**63) <= seed < 2**64:  # what torch.manual_seed takes
        raise ConfigError(f"seed {seed} is out of range; use a seed from 0 to 2**64-1")
    random.seed(seed)
    torch.manual_seed(seed)
    try:
        import numpy as np
    except ImportError:
        return
    np.random.seed(seed % 2**32)


def default_save_dir(*parts: str, root: str | os.PathLike[str] = "runs") -> Path:
    """``runs/<parts>-<YYYYmmdd-HHMMSS>``, with a counter appended if that directory already exists."""
    stem = "-".join([*parts, time.strftime("%Y%m%d-%H%M%S")])
    path, n = Path(root) / stem, 1
    while path.exists():
        n += 1
        path = Path(root) / f"{stem}-{n}"
    return path


def checked_run(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run configuration whose structure is valid, with a model and data, and every name registered.

    Cheap (nothing is built): ``xt run --nproc N`` checks here once, before it starts N processes.
    """
    config = check_config(dict(config))
    for kind, plural in (("model", "models"), ("data", "data")):
        if config[kind] is None:
            raise ConfigError(f"no {kind} is chosen; pick one with --{kind} NAME (`xt list {plural}`)")
    named = [(kind, config[kind]) for kind in COMPONENTS]
    named += [("metric", c) for c in (config["metrics"] or {}).values()]
    named += [(kind, c) for kind in ("logger", "callback") for c in config[f"{kind}s"]]
    for kind, component in named:
        if component is not None:
            registry.current().entry(kind, component["name"])  # an unknown name: "did you mean ...?"
    return config


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


def _jsonable(value: Any) -> bool:
    if value is None or isinstance(value, (bool, int, float, str)):
        return True
    if isinstance(value, (list, tuple)):
        return all(map(_jsonable, value))
    if isinstance(value, dict):
        return all(isinstance(k, str) and _jsonable(v) for k, v in value.items())
    return False


def _make(
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
    entry = registry.current().entry(kind, name)
    defaults = {n: p.default for n, p in entry.parameters().items() if p.default is not p.empty}
    resolved = {k: v for k, v in {**defaults, **given}.items() if _jsonable(v)}
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
    seed_everything(config["seed"])
    set_num_threads(config["num_threads"])
    saved: dict[str, Any] = {"format": FORMAT, "xt_training_version": __version__}
    data, saved["data"] = _make("data", config["data"])
    if not isinstance(data, registry.Data):
        raise ConfigError(
            f"data '{config['data']['name']}' returned {type(data).__name__}; a data factory must return "
            "xt_training.registry.Data"
        )
    saved["info"] = {k: v for k, v in data.info.items() if _jsonable(v)}
    _check_fit(config, data)
    model, saved["model"] = _make("model", config["model"], data.info)
    loss = config["loss"] or {"name": data.loss or "cross-entropy", "options": {}}
    loss_fn, saved["loss"] = _make("loss", loss)
    metrics_config = config["metrics"]
    if metrics_config is None:
        metrics_config = {name: {"name": name, "options": {}} for name in data.metrics}
    if "loss" in metrics_config:
        raise ConfigError("'loss' is the name of the training loss in the history; name the metric otherwise")
    metrics: dict[str, Any] = {}
    saved["metrics"] = {}
    for key, component in metrics_config.items():
        metrics[key], saved["metrics"][key] = _make("metric", component)
    built = Built(saved, data, model, loss_fn, metrics)
    if not train:
        return built

    if "train" not in data.loaders:
        raise ConfigError(
            f"data '{config['data']['name']}' has no 'train' split (it has: {', '.join(data.loaders)})"
        )
    built.optimizer, saved["optimizer"] = _make(
        "optimizer", config["optimizer"], {"params": model.parameters()}
    )
    saved["scheduler"] = None
    if config["scheduler"] is not None:
        context = _scheduler_context(config, data, built.optimizer)
        built.scheduler, saved["scheduler"] = _make("scheduler", config["scheduler"], context)
        interval = registry.current().entry("scheduler", config["scheduler"]["name"]).metadata.get("interval")
        built.scheduler_step = interval or "epoch"
    context = {"save_dir": save_dir} if save_dir is not None else {}
    built.loggers, saved["loggers"] = [], []
    for component in config["loggers"]:
        logger, record = _make("logger", component, context)
        built.loggers.append(logger)
        saved["loggers"].append(record)
    built.callbacks, saved["callbacks"] = [], []
    for component in config["callbacks"]:
        callback, record = _make("callback", component)
        built.callbacks.append(callback)
        saved["callbacks"].append(record)
    saved.update({key: config[key] for key in SCALARS})
    return built


def _scheduler_context(config: Mapping[str, Any], data: registry.Data, optimizer: Any) -> dict[str, Any]:
    """What the run tells a scheduler's factory (each value only if the factory has a parameter of its name)."""
    from .utils.functional import default_mode

    context = {"optimizer": optimizer, "epochs": config["epochs"]}
    monitor = config["monitor"] or data.monitor  # None: F.train's default, a loss
    if config["mode"] is not None or monitor is not None:  # ReduceLROnPlateau's mode follows the monitor's
        context["mode"] = config["mode"] or default_mode(monitor)
    if hasattr(data.loaders["train"], "__len__"):
        context["steps_per_epoch"] = len(data.loaders["train"])
    return context


#: What ``xt run --resume`` may change: nothing that changes what the training computes. Callbacks may not
#: change: they can stop or steer the training, and their checkpointed states are restored in order.
RESUME_MAY_CHANGE = (
    "epochs",  # train further; refused where the scheduler spreads its schedule over the epochs
    "device",  # a checkpoint loads onto any device: a preempted run may go on on another machine
    "num_threads",  # speed only
    "loggers",  # they only record; one added records from the resumed point on
    "checkpoint_every_n_steps",  # how often last.pt is written
    "export",  # what is done with the best model once training ends
)


def _check_resume(run_dir: Path, config: Mapping[str, Any], built: Built) -> None:
    """Refuse to continue the run saved in ``run_dir`` with a configuration that makes it another run."""
    if not (run_dir / CONFIG_FILE).is_file():  # nothing was saved: the resume starts from scratch
        return
    then = read_config(run_dir)
    differ = _differences(_identity(then), _identity(built.config))
    if differ:
        raise ConfigError(
            f"cannot resume from '{run_dir}': the configuration differs from the run's ({'; '.join(differ)}); "
            f"a resumed run may change only {', '.join(RESUME_MAY_CHANGE)}: drop the other changes, or start "
            f"a new run from it with `xt run --config {run_dir} ... --save-dir NEW_DIR`"
        )
    scheduler = config["scheduler"]
    if scheduler is not None and then["epochs"] != config["epochs"]:
        context = _scheduler_context(config, built.data, None)
        if _spread_over_epochs(scheduler, context, then["epochs"]):
            raise ConfigError(
                f"cannot resume from '{run_dir}' with {config['epochs']} epochs: scheduler "
                f"'{scheduler['name']}' spreads its schedule over the run's {then['epochs']} epochs; resume "
                f"with --epochs {then['epochs']}, or start a new run with `xt run --config {run_dir} --epochs "
                f"{config['epochs']} --save-dir NEW_DIR`"
            )


def _identity(saved: Mapping[str, Any]) -> dict[str, Any]:
    """What makes a saved configuration this run (not the versions of the code that provided its parts).

    Its components' names and resolved options, defaults included, and the scalars that may not change.
    """

    def component(c: Mapping[str, Any] | None) -> dict[str, Any] | None:
        return None if c is None else {"name": c["name"], "options": c.get("resolved", c["options"])}

    view: dict[str, Any] = {kind: component(saved[kind]) for kind in COMPONENTS}
    if view["scheduler"] is not None:  # the run's epochs: compared by themselves (_check_resume)
        view["scheduler"]["options"] = {
            k: v for k, v in view["scheduler"]["options"].items() if k != "epochs"
        }
    view["metrics"] = {key: component(c) for key, c in (saved["metrics"] or {}).items()}
    view["callbacks"] = {str(i): component(c) for i, c in enumerate(saved["callbacks"])}
    view.update({key: saved[key] for key in SCALARS if key not in RESUME_MAY_CHANGE})
    return json.loads(json.dumps(view))  # tuples become lists, as in the saved file


def _differences(then: Any, now: Any, path: str = "") -> list[str]:
    """``['seed: 0 then, 3 now', 'data.options.n_samples: 300 then, 900 now']``."""
    if isinstance(then, dict) and isinstance(now, dict):
        keys = [*then, *(k for k in now if k not in then)]
        return [d for k in keys for d in _differences(then.get(k), now.get(k), f"{path}.{k}".lstrip("."))]
    return [] if then == now else [f"{path}: {_named(then)!r} then, {_named(now)!r} now"]


def _named(value: Any) -> Any:
    """A whole component by its name."""
    return value["name"] if isinstance(value, dict) and "name" in value else value


def _spread_over_epochs(component: Mapping[str, Any], context: Mapping[str, Any], epochs_then: int) -> bool:
    """Whether a scheduler's schedule is fixed by the run's length (cosine's T_max, one-cycle's total steps).

    Only a factory that takes ``epochs`` or ``steps_per_epoch`` can be; whether it is (cosine given its own
    T_max is not) shows in the states of fresh ones built for either number of epochs.
    """
    if not registry.accepts("scheduler", component["name"], {"epochs": 0, "steps_per_epoch": 0}):
        return False
    import torch

    def fresh_state(epochs: int) -> dict[str, Any]:
        # a throwaway optimizer: building a scheduler changes its optimizer's learning rates
        optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0, momentum=0.9)
        scheduler, _ = _make("scheduler", component, {**context, "optimizer": optimizer, "epochs": epochs})
        return scheduler.state_dict()

    try:
        return fresh_state(epochs_then) != fresh_state(context["epochs"])
    except XtError:  # a factory that cannot build on the throwaway optimizer: assume the worst
        return True


def _test_loaders(data: registry.Data, splits: list[str] | None = None) -> dict[str, Any]:
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


def train(
    config: Mapping[str, Any],
    save_dir: str | os.PathLike[str] | None = None,
    *,
    resume: bool = False,
    quiet: bool = False,
) -> tuple[Path, list[dict[str, Any]]]:
    """Build the run ``config`` describes, save its configuration and train it; return the run directory and history.

    The default ``save_dir`` is ``runs/<model>-<data>-<time>``; one that already holds a run is refused.
    With ``resume``, ``save_dir`` is a run directory to continue from its ``checkpoints/last.pt``
    (``F.train(..., resume=True)``); a configuration that differs from its ``config.json`` in more than
    :data:`RESUME_MAY_CHANGE` is refused.
    """
    from . import distributed
    from .utils import functional as F

    config = checked_run(config)
    distributed.init_from_env()  # under torchrun: every rank runs this; rank 0 writes
    main = distributed.is_main()
    if save_dir is None:  # rank 0's clock names the directory of all ranks
        save_dir = _from_rank_0(
            default_save_dir(config["model"]["name"], config["data"]["name"]) if main else None
        )
    save_dir = Path(save_dir)
    if not resume:
        refuse_run_dir(save_dir)
    built = build(config, save_dir)  # before the directory is made: a bad configuration leaves none behind
    if resume:
        _check_resume(save_dir, config, built)
    if main:
        F.prepare_save_dir(save_dir)
    created = config.get("created") if resume else None
    saved = {**built.config, "created": created or time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    if not resume and main:  # written first, so that a crashed run still says what it was
        _write_json(save_dir / CONFIG_FILE, saved)
        if built.data.tokenizer is not None:  # xt predict reads raw text with it
            built.data.tokenizer.save_pretrained(str(save_dir))
    loaders = built.data.loaders
    train_args = {key: config[key] for key in TRAIN_ARGS}
    train_args["monitor"] = train_args["monitor"] or built.data.monitor
    history = F.train(
        save_dir,
        loaders["train"],
        built.model,
        built.optimizer,
        config["epochs"],
        built.loss_fn,
        val_loader=loaders.get("val"),
        test_loaders=_test_loaders(built.data),
        scheduler=built.scheduler,
        eval_metrics=built.metrics,
        scheduler_step=built.scheduler_step,
        loggers=built.loggers,
        callbacks=built.callbacks,
        forward_fn=built.data.forward_fn,
        resume=resume,
        quiet=quiet,
        **train_args,
    )
    if resume and main:  # only once F.train accepted the configuration as the same run, possibly extended
        _write_json(save_dir / CONFIG_FILE, saved)
    return save_dir, history


def refuse_run_dir(
    save_dir: Path, fix: str = "continue it with `xt run --resume {dir}`, or choose another --save-dir"
) -> None:
    """A new run never goes into a directory that holds one: files of two runs would mix."""
    held = any((save_dir / name).exists() for name in (CONFIG_FILE, "history.json", "checkpoints"))
    # rank 0's view: every rank decides alike, though rank 0 may write before the others look
    if _from_rank_0(held):
        raise ConfigError(f"'{save_dir}' already holds a run; {fix.format(dir=save_dir)}")


def _from_rank_0(value: Any) -> Any:
    """``value`` as rank 0 has it, on every rank (itself in a single process)."""
    from . import distributed

    if not distributed.active():
        return value
    import torch.distributed as dist

    holder = [value]
    dist.broadcast_object_list(holder, src=0)
    return holder[0]


def _checkpoint_of(run_dir: Path) -> Path:
    for name in ("best.pt", "last.pt"):
        if (run_dir / "checkpoints" / name).is_file():
            return run_dir / "checkpoints" / name
    raise CheckpointError(f"run directory '{run_dir}' has no checkpoints/best.pt or last.pt; train it first")


def test(
    run_dir: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    splits: list[str] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate the model of an ``xt run`` directory on its data's test splits (or ``splits``).

    Loads ``checkpoint``: ``'best'``, ``'last'`` or a checkpoint file (default: the run's ``best.pt``,
    else ``last.pt``); writes ``test_results.json`` and ``results.pt`` into ``save_dir`` (default: the
    run directory).
    """
    from .predict import checkpoint_of
    from .utils import functional as F

    run_dir = Path(run_dir)
    config = read_config(run_dir)
    built = build(config, train=False)
    loaders = _test_loaders(built.data, splits)
    if not loaders:
        raise ConfigError(
            f"the data of '{run_dir}' has no test split; pick one with --split ({', '.join(built.data.loaders)})"
        )
    return F.test(
        loaders,
        built.model,
        built.loss_fn,
        eval_metrics=built.metrics,
        forward_fn=built.data.forward_fn,
        save_dir=run_dir if save_dir is None else save_dir,
        checkpoint_path=_checkpoint_of(run_dir) if checkpoint is None else checkpoint_of(run_dir, checkpoint),
        device=device if device is not None else config["device"],
        quiet=quiet,
    )


def _write_json(path: Path, obj: Any) -> None:
    from .checkpoint import write_json

    write_json(path, obj)


def exec_config(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Execute a Python config file and return its global names. The file is trusted code."""
    import runpy

    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"config file '{file}' does not exist")
    if file.suffix == ".json":  # JSON's null and true are not Python
        raise ConfigError(
            f"'{file}' is JSON, not a Python config file; for a run's {CONFIG_FILE} use "
            "`xt run --config RUN_DIR`"
        )
    try:
        return runpy.run_path(str(file), run_name="__xt_config__")
    except SyntaxError as e:
        raise ConfigError(f"{e.filename}, line {e.lineno}: {e.msg}; fix the config file") from None


def _require(namespace: Mapping[str, Any], names: tuple[str, ...], path: Any) -> None:
    missing = [n for n in names if n not in namespace]
    if missing:
        raise ConfigError(
            f"config file '{path}' does not define {', '.join(map(repr, missing))}; a config defines "
            f"{', '.join(names)} (`xt template DIR` writes an example)"
        )


def train_config_file(
    path: str | os.PathLike[str],
    save_dir: str | os.PathLike[str] | None = None,
    *,
    seed: int | None = None,
    quiet: bool = False,
) -> tuple[Path, list[dict[str, Any]]]:
    """Train what a Python config file defines; a copy of the file is kept in the run directory as ``config.py``.

    Every global name of the file that is an argument of ``F.train`` is passed to it; ``save_dir``
    here wins over a ``save_dir`` in the file, whose default is ``runs/<file name>-<time>``.
    """
    import inspect

    from . import distributed
    from .utils import functional as F

    if seed is not None:
        seed_everything(seed)
    namespace = exec_config(path)
    _require(namespace, REQUIRED_IN_CONFIG_FILE, path)
    params = inspect.signature(F.train).parameters
    kwargs = {k: namespace[k] for k in params if k in namespace and k != "save_dir"}
    if quiet:
        kwargs["quiet"] = True
    distributed.init_from_env()  # under torchrun: every rank runs this; rank 0 writes
    save_dir = save_dir or namespace.get("save_dir")
    if save_dir is None:  # rank 0's clock names the directory of all ranks
        save_dir = _from_rank_0(default_save_dir(Path(path).stem) if distributed.is_main() else None)
    if not kwargs.get("resume"):  # a config file with resume = True continues its run
        refuse_run_dir(Path(save_dir), "choose another --save-dir, or set resume = True in the config file")
    if distributed.is_main():
        save_dir = F.prepare_save_dir(save_dir)
        shutil.copyfile(path, save_dir / "config.py")
    return Path(save_dir), F.train(save_dir, **kwargs)


def test_config_file(
    path: str | os.PathLike[str],
    *,
    checkpoint: str | os.PathLike[str] | None = None,
    save_dir: str | os.PathLike[str] | None = None,
    device: str | None = None,
    quiet: bool = False,
) -> dict[str, dict[str, Any]]:
    """Evaluate the ``model`` of a Python config file on its ``test_loaders`` with ``F.test``."""
    import inspect

    from .utils import functional as F

    namespace = exec_config(path)
    _require(namespace, ("model", "test_loaders"), path)
    params = inspect.signature(F.test).parameters
    kwargs = {k: namespace[k] for k in params if k in namespace and k not in ("save_dir", "checkpoint_path")}
    kwargs.update(save_dir=save_dir, checkpoint_path=checkpoint, quiet=quiet or kwargs.get("quiet", False))
    if device is not None:
        kwargs["device"] = device
    return F.test(**kwargs)
