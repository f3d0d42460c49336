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
     "checkpoint_every_n_steps": null, "val_every_n_steps": null, "save_top_k": 0, "save_every_n_epochs": null,
     "save_every_n_steps": null, "nonfinite_loss": "raise", "fast_path": true, "compile": false,
     "channels_last": false, "strategy": "ddp", "shard": null, "cpu_offload": false, "export": null,
     "limit_train_batches": null, "limit_val_batches": null,
     "overfit_batches": 0, "ema_decay": null, "swa_start": null, "swa_lr": null,  # the arguments of F.train
     "num_threads": null}                                 # torch.set_num_threads before the run; null: torch's

The saved file also records, per component, ``resolved`` (every option the factory was called with,
defaults and the values taken from the data included) and ``source`` (the plugin distribution that
provided the name), plus the data's ``info``. Data paths are saved absolute. This module is the format
and its checks (torch-free); :mod:`xt_training.building` builds a configuration and
:func:`xt_training.runs.train` trains it with ``F.train``, the same function Python users call; running
a saved ``config.json`` again reproduces the run (same seed, same data, same options).
"""

from __future__ import annotations

import copy
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import registry
from ._version import __version__
from .errors import ConfigError
from .rundir import CONFIG_FILE, CONFIG_PY, RUN_FILE, read_json, untrusted

__all__ = ["CONFIG_FILE", "default_config", "read_config", "check_config", "checked_run", "RESUME_MAY_CHANGE"]

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
    "val_every_n_steps": (int, type(None)),
    "save_top_k": int,
    "save_every_n_epochs": (int, type(None)),
    "save_every_n_steps": (int, type(None)),
    "nonfinite_loss": str,
    "fast_path": bool,
    "compile": bool,
    "channels_last": bool,
    "strategy": str,
    "shard": (list, type(None)),
    "cpu_offload": bool,
    "export": (str, type(None)),
    "limit_train_batches": (int, float, type(None)),
    "limit_val_batches": (int, float, type(None)),
    "overfit_batches": int,
    "ema_decay": (int, float, type(None)),
    "swa_start": (int, type(None)),
    "swa_lr": (int, float, type(None)),
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
        "val_every_n_steps": None,
        "save_top_k": 0,
        "save_every_n_epochs": None,
        "save_every_n_steps": None,
        "nonfinite_loss": "raise",
        "fast_path": True,
        "compile": False,
        "channels_last": False,
        "strategy": "ddp",
        "shard": None,  # strategy='fsdp': the module class names sharded as units; None: the default units
        "cpu_offload": False,
        "export": None,
        "limit_train_batches": None,
        "limit_val_batches": None,
        "overfit_batches": 0,
        "ema_decay": None,
        "swa_start": None,
        "swa_lr": None,
        "num_threads": None,
    }


def read_config(path: str | os.PathLike[str], *, trust: bool = False) -> dict[str, Any]:
    """Read a run configuration from ``RUN_DIR/config.json`` (or the run directory itself) and check it.

    Untrusted, the configuration may not name a module to import (an option that a name's registration
    declares ``imports``, e.g. the ``fn`` of metric ``mean``) other than :func:`registry.known_code`, nor a
    logger ``save_dir`` outside the run directory: both are refused in one line naming ``--trust``.
    """
    file = Path(path)
    if file.is_dir():
        file = file / CONFIG_FILE
    if not file.is_file():
        if (file.parent / CONFIG_PY).is_file():  # a run of `xt train`, which keeps its config file
            raise ConfigError(
                f"'{file.parent}' is a run of `xt train CONFIG.py` (its {CONFIG_PY}, no {CONFIG_FILE}), not "
                f"built by names; start a new run from names with `xt run --model NAME --data NAME`"
            )
        if (file.parent / RUN_FILE).is_file():  # a run of F.train: built from objects, not names
            raise ConfigError(
                f"'{file.parent}' is a run of F.train (its {RUN_FILE}, no {CONFIG_FILE}), not built by names; "
                "resume it with F.train(..., resume=True); xt test/predict/export take it with --data NAME"
            )
        raise ConfigError(
            f"'{file}' does not exist; pass a run directory written by `xt run`, or its {CONFIG_FILE}"
        )
    config = check_config(read_json(file, "rerun, or fix the file"), str(file))
    if not trust:
        _check_received(config, file)
    return config


def _check_received(config: Mapping[str, Any], file: Path) -> None:
    for kind, component in _components(config):
        name, options = component["name"], component["options"]
        entry = registry.current().find(kind, name)  # an unknown name is refused where it is built
        for option in entry.metadata.get("imports", ()) if entry else ():
            value = options.get(option)
            if isinstance(value, str) and not registry.known_code(value):
                raise untrusted(
                    f"'{file}': {kind} '{name}' option {option}={value!r} would import its module"
                )
        saved_to = options.get("save_dir") if kind == "logger" else None
        if saved_to is not None and not Path(saved_to).resolve().is_relative_to(file.parent.resolve()):
            raise untrusted(
                f"'{file}': logger '{name}' would write outside the run directory (save_dir={saved_to!r})"
            )


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


def checked_run(config: Mapping[str, Any]) -> dict[str, Any]:
    """A run configuration whose structure is valid, with a model and data, and every name registered.

    Cheap (nothing is built): ``xt run --nproc N`` checks here once, before it starts N processes.
    """
    config = check_config(dict(config))
    for kind, plural in (("model", "models"), ("data", "data")):
        if config[kind] is None:
            raise ConfigError(f"no {kind} is chosen; pick one with --{kind} NAME (`xt list {plural}`)")
    for kind, component in _components(config):
        # `--model hf:NAME` is recorded as the model hf with its option name=NAME: the run rebuilds it as named
        component["name"], component["options"] = registry.current().split(
            kind, component["name"], component["options"]
        )
        registry.current().entry(kind, component["name"])  # an unknown name: "did you mean ...?"
    return config


def _components(config: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]]:
    """``(kind, component)`` of every part a checked configuration names."""
    named = [(kind, config[kind]) for kind in COMPONENTS]
    named += [("metric", c) for c in (config["metrics"] or {}).values()]
    named += [(kind, c) for kind in ("logger", "callback") for c in config[f"{kind}s"]]
    return [(kind, c) for kind, c in named if c is not None]


#: What ``xt run --resume`` may change: nothing that changes what the training computes. Callbacks may not
#: change: they can stop or steer the training, and their checkpointed states are restored in order.
RESUME_MAY_CHANGE = (
    "epochs",  # train further; refused where the scheduler spreads its schedule over the epochs
    "device",  # a checkpoint loads onto any device: a preempted run may go on on another machine
    "num_threads",  # speed only
    "loggers",  # they only record; one added records from the resumed point on
    "checkpoint_every_n_steps",  # how often last.pt is written
    "save_top_k",  # which checkpoints are kept: a smaller k drops the worst at the next evaluation
    "save_every_n_epochs",
    "save_every_n_steps",
    "export",  # what is done with the best model once training ends
)


def identity(saved: Mapping[str, Any]) -> dict[str, Any]:
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


def differences(then: Any, now: Any, path: str = "") -> list[str]:
    """``['seed: 0 then, 3 now', 'data.options.n_samples: 300 then, 900 now']``."""
    if isinstance(then, dict) and isinstance(now, dict):
        keys = [*then, *(k for k in now if k not in then)]
        return [d for k in keys for d in differences(then.get(k), now.get(k), f"{path}.{k}".lstrip("."))]
    return [] if then == now else [f"{path}: {_named(then)!r} then, {_named(now)!r} now"]


def _named(value: Any) -> Any:
    """A whole component by its name."""
    return value["name"] if isinstance(value, dict) and "name" in value else value
