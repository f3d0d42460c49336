"""The search space: ``KEY=SPEC`` pairs as Optuna distributions, and a trial's values applied to a run configuration.

``KEY`` is an ``xt run`` option spelled as on its command line without the dashes (``lr``, ``batch-size``,
``optimizer``, ``epochs``, ...) or ``KIND.OPTION`` for an option of the model, data, loss, optimizer or
scheduler (``model.hidden``, ``data.n_samples``, ``optimizer.weight_decay``). ``SPEC`` is one of::

    float:LOW:HIGH      uniform in [LOW, HIGH]
    logfloat:LOW:HIGH   log-uniform in [LOW, HIGH], LOW > 0
    int:LOW:HIGH        an integer in [LOW, HIGH]
    choice:A,B,C        one of the values: Python literals, else strings (choice:64,128  choice:adam,sgd)

A define-by-run ``search_space(trial)`` function returns the same keys with the values it suggested; both
forms end in :func:`apply`, which writes the values into the run configuration exactly where the matching
``xt run`` option would.
"""

from __future__ import annotations

import copy
import difflib
import inspect
import os
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click

from xt_training.cli import parse_value, run_options
from xt_training.config import COMPONENTS, SCALARS
from xt_training.errors import ConfigError

__all__ = [
    "Param",
    "parse_pairs",
    "parse_space",
    "check_space",
    "apply",
    "grid",
    "SpaceFunction",
    "RUN_PARAMS",
]

FORMS = ("float", "logfloat", "int", "choice")
SPEC_FORMS = "float:LOW:HIGH, logfloat:LOW:HIGH, int:LOW:HIGH or choice:A,B,..."
#: run options that stay fixed: the study compares its trials by them (monitor, mode) or runs them there (device)
FIXED = ("device", "monitor", "mode")
#: the names of every ``xt run`` option's parameter, e.g. ``'lr'``, ``'batch_size'``, ``'config_path'``
RUN_PARAMS: tuple[str, ...] = tuple(p.name for p in run_options(click.Command("probe")).params if p.name)


def _searchable() -> dict[str, click.Parameter]:
    """Searchable ``xt run`` options by their command-line name without dashes (``'batch-size'``)."""
    keys = {}
    for param in run_options(click.Command("probe")).params:
        name = param.name or ""
        if name in COMPONENTS or name in ("lr", "batch_size") or (name in SCALARS and name not in FIXED):
            keys[param.opts[0].removeprefix("--")] = param
    return keys


OPTIONS = _searchable()
#: option name -> where its value goes in the run configuration: (kind,) a component's name, (key,) a
#: scalar, (kind, "options", option) a component's option
_PATHS: dict[str, tuple[str, ...]] = {
    key: {"lr": ("optimizer", "options", "lr"), "batch_size": ("data", "options", "batch_size")}.get(
        param.name or "", (param.name or "",)
    )
    for key, param in OPTIONS.items()
}


def target(key: str) -> tuple[str, ...]:
    """Where ``key``'s value goes in a run configuration; an unknown key is a one-line error."""
    if key in _PATHS:
        return _PATHS[key]
    kind, dot, option = key.partition(".")
    if dot and kind in COMPONENTS and option.isidentifier():
        return (kind, "options", option)
    choices = [*OPTIONS, *(f"{kind}.OPTION" for kind in COMPONENTS)]
    close = difflib.get_close_matches(key, [*OPTIONS, *(f"{k}.{option}" for k in COMPONENTS if option)], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(
        f"search key {key!r} is neither an `xt run` option nor KIND.OPTION; {hint}keys: {', '.join(choices)}"
    )


@dataclass(frozen=True)
class Param:
    """One ``KEY=SPEC`` of the search space."""

    key: str
    form: str
    low: float | None = None
    high: float | None = None
    choices: tuple[Any, ...] = ()

    def __str__(self) -> str:
        """The canonical SPEC (``logfloat:0.0001:0.1``): equal spaces print equally."""
        if self.form == "choice":
            return "choice:" + ",".join(map(str, self.choices))
        return f"{self.form}:{self.low!r}:{self.high!r}"

    def suggest(self, trial: Any) -> Any:
        """Ask the Optuna ``trial`` for a value of this parameter."""
        if self.form == "choice":
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.form == "int":
            return trial.suggest_int(self.key, int(self.low), int(self.high))
        return trial.suggest_float(self.key, self.low, self.high, log=self.form == "logfloat")


def parse_pairs(pairs: Iterable[str]) -> dict[str, str]:
    """``('lr=logfloat:1e-4:1e-1',)`` -> ``{'lr': 'logfloat:1e-4:1e-1'}``; a missing ``=`` or a repeated key is an error."""
    specs: dict[str, str] = {}
    for pair in pairs:
        key, sep, spec = pair.partition("=")
        key = key.strip().removeprefix("--")
        if not sep or not key:
            raise click.BadParameter(
                f"{pair!r} is not KEY=SPEC, e.g. lr=logfloat:1e-5:1e-1 (SPEC: {SPEC_FORMS})",
                param_hint="--search",
            )
        if key in specs:
            raise click.BadParameter(f"{key!r} is searched twice; give each KEY once", param_hint="--search")
        specs[key] = spec.strip()
    return specs


def parse_space(specs: Mapping[str, str]) -> dict[str, Param]:
    """Parse ``{KEY: SPEC}``; a malformed SPEC, an unknown KEY or a value the option rejects is a one-line error."""
    if not specs:
        raise ConfigError(f"the search space is empty; give KEY=SPEC pairs, SPEC being {SPEC_FORMS}")
    space = {key: _parse_spec(key, spec) for key, spec in specs.items()}
    seen: dict[tuple[str, ...], str] = {}
    for key in space:
        path = target(key)
        if path in seen:
            raise ConfigError(f"search keys {seen[path]!r} and {key!r} set the same value; keep one")
        seen[path] = key
    return space


def _parse_spec(key: str, spec: str) -> Param:
    where = f"search {key}={spec}"
    if not isinstance(spec, str):
        raise ConfigError(f"{where}: SPEC must be a string, one of {SPEC_FORMS}")
    path = target(key)
    option = OPTIONS.get(key)
    form, _, rest = spec.partition(":")
    if form not in FORMS:
        close = difflib.get_close_matches(form, FORMS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(f"{where}: unknown form {form!r}; {hint}SPEC is {SPEC_FORMS}")
    kind = _value_kind(option)
    if form == "choice":
        raws = [raw.strip() for raw in rest.split(",")]
        if not all(raws):
            raise ConfigError(
                f"{where}: choice needs values separated by commas, e.g. choice:32,64 or choice:adam,sgd"
            )
        values = tuple(_choice_value(where, raw, option) for raw in raws)
        if len({repr(v) for v in values}) < len(values):
            raise ConfigError(f"{where}: a value is listed twice; list each once")
        return Param(key, form, choices=values)
    if kind == "name" or (option is not None and kind == "text"):
        raise ConfigError(
            f"{where}: {key} takes {'names' if kind == 'name' else 'text'}, not numbers; use choice:A,B"
        )
    if kind == "int" and form != "int":
        raise ConfigError(f"{where}: {key} takes integers; use int:LOW:HIGH or choice:A,B")
    parts = rest.split(":")
    example = {"float": "float:0.0:0.5", "logfloat": "logfloat:1e-5:1e-1", "int": "int:16:256"}[form]
    if len(parts) != 2:
        raise ConfigError(f"{where}: {form} needs LOW:HIGH, e.g. {example}")
    number = int if form == "int" else float
    try:
        low, high = (number(p) for p in parts)
    except ValueError:
        what = "integers" if form == "int" else "numbers"
        raise ConfigError(f"{where}: LOW and HIGH must be {what}, e.g. {example}") from None
    if not -float("inf") < low < high < float("inf"):
        raise ConfigError(f"{where}: LOW must be below HIGH (and both finite), e.g. {example}")
    if form == "logfloat" and low <= 0:
        raise ConfigError(
            f"{where}: logfloat needs LOW > 0 (a log scale); use float:LOW:HIGH to include {low}"
        )
    if path[-1] == "batch_size" and low < 1:
        raise ConfigError(f"{where}: batch sizes start at 1")
    return Param(key, form, low, high)


def _value_kind(option: click.Parameter | None) -> str:
    """``'name'`` (a component), ``'int'``, ``'float'`` or ``'text'`` for a run option; ``'any'`` for KIND.OPTION."""
    if option is None:
        return "any"
    if option.name in COMPONENTS:
        return "name"
    if isinstance(option.type, click.types.IntParamType):  # IntRange included
        return "int"
    if isinstance(option.type, click.types.FloatParamType):
        return "float"
    return "text"


def _choice_value(where: str, raw: str, option: click.Parameter | None) -> Any:
    """A choice as the ``xt run`` option would take it (its click type), or as a Python literal for KIND.OPTION."""
    if option is not None:
        try:
            return option.type.convert(raw, option, None)
        except click.BadParameter as e:
            raise ConfigError(f"{where}: {e.format_message()}") from None
    value = parse_value(raw)
    if value is not None and not isinstance(value, (bool, int, float, str)):
        raise ConfigError(
            f"{where}: {raw!r} is a {type(value).__name__}; choices are numbers, strings, True, False or None"
        )
    return value


def check_space(space: Mapping[str, Param], config: Mapping[str, Any]) -> None:
    """Check every ``KIND.OPTION`` against the factory of the chosen KIND, before any trial runs."""
    from xt_training import registry

    varying = {param.key for param in space.values() if param.key in COMPONENTS}
    for param in space.values():
        path = target(param.key)
        if len(path) == 1:
            continue
        kind, _, option = path
        if kind in varying:  # the name itself is searched: each trial's build checks its options
            continue
        if config.get(kind) is None:
            raise ConfigError(f"search {param.key}: no {kind} is chosen; name it with --{kind} NAME")
        name = config[kind]["name"]
        entry = registry.current().entry(kind, name)
        params = entry.parameters()
        if option not in params and not entry.takes_any_option():
            close = difflib.get_close_matches(option, list(params), n=1)
            hint = f"did you mean '{kind}.{close[0]}'? " if close else ""
            raise ConfigError(
                f"search {param.key}: {kind} '{name}' has no option {option!r}; {hint}"
                f"options: {', '.join(params) or 'none'} (`xt info {kind} {name}`)"
            )


def apply(config: Mapping[str, Any], values: Mapping[str, Any]) -> dict[str, Any]:
    """The run configuration with a trial's ``{KEY: value}`` written where the ``xt run`` options put them.

    A searched component name (``optimizer``) keeps the options given for the base one (``--optimizer-opt``,
    ``--lr``): they were given for every trial. Names are set before options, so ``optimizer`` and
    ``optimizer.momentum`` combine.
    """
    config = copy.deepcopy(dict(config))
    paths = {key: target(key) for key in values}
    for key in sorted(values, key=lambda k: len(paths[k])):
        path, value = paths[key], values[key]
        if len(path) == 3:
            kind, _, option = path
            if config.get(kind) is None:
                raise ConfigError(f"search {key}: no {kind} is chosen; name it with --{kind} NAME")
            config[kind]["options"][option] = value
        elif path[0] in COMPONENTS:
            if not isinstance(value, str):
                raise ConfigError(f"search {key}: a {path[0]} is a name, not {value!r}")
            old = config.get(path[0])
            config[path[0]] = {"name": value, "options": dict(old["options"]) if old else {}}
        else:
            config[path[0]] = value
    return config


def grid(space: Mapping[str, Param]) -> dict[str, list[Any]]:
    """Every value of every parameter, for Optuna's grid sampler: only int and choice parameters have a grid."""
    values = {}
    for param in space.values():
        if param.form == "choice":
            values[param.key] = list(param.choices)
        elif param.form == "int":
            values[param.key] = list(range(int(param.low), int(param.high) + 1))
        else:
            raise ConfigError(
                f"--sampler grid needs int or choice specs, but {param.key} is {param}; "
                "use choice:A,B,... or another sampler"
            )
    return values


@dataclass
class SpaceFunction:
    """A define-by-run ``search_space(trial) -> {KEY: value}`` and where it came from.

    ``record`` says how another process loads it again (``{'file': PATH}`` or ``{'object': 'module:name'}``)
    and holds its ``source`` text, which a continued study compares.
    """

    function: Callable[[Any], Mapping[str, Any]]
    record: dict[str, str]

    @classmethod
    def load(cls, source: str | os.PathLike[str] | Callable[[Any], Mapping[str, Any]]) -> SpaceFunction:
        """From a Python file that defines ``search_space``, or from the function itself."""
        if callable(source):
            name = f"{source.__module__}:{source.__qualname__}"
            try:
                text = inspect.getsource(source)
            except (OSError, TypeError):
                text = name
            return cls(source, {"object": name, "source": text})
        from xt_training.runs import exec_config

        path = Path(source).resolve()
        if path.suffix != ".py":
            raise ConfigError(f"'{source}' is not a Python file (.py) defining search_space(trial)")
        function = exec_config(path).get("search_space")
        if not callable(function):
            raise ConfigError(
                f"'{source}' does not define search_space(trial); define it to return {{KEY: trial.suggest_...}}"
            )
        return cls(function, {"file": str(path), "source": path.read_text(encoding="utf-8")})

    @classmethod
    def from_record(cls, record: Mapping[str, str]) -> SpaceFunction:
        """Load it again in a worker process, as :meth:`load` recorded it."""
        if "file" in record:
            return cls.load(record["file"])
        from xt_training.registry import load_object

        return cls(load_object(record["object"]), dict(record))

    def check_importable(self) -> None:
        """Worker processes import the function by name: one defined in ``__main__`` or locally cannot be."""
        if "object" not in self.record:
            return
        from xt_training.registry import load_object

        name = self.record["object"]
        try:
            importable = (
                "<" not in name and not name.startswith("__main__:") and load_object(name) is self.function
            )
        except ConfigError:
            importable = False
        if not importable:
            raise ConfigError(
                f"jobs > 1 runs search_space in other processes, which cannot import {name}; define it in an "
                "importable module, or pass the path of a .py file that defines it"
            )

    def __call__(self, trial: Any) -> dict[str, Any]:
        values = self.function(trial)
        if not isinstance(values, Mapping):
            raise ConfigError(
                f"search_space(trial) returned {type(values).__name__}; return a dict {{KEY: value}}"
            )
        return dict(values)
