"""Find models, data sets, metrics, loggers, ... by name: the plugin registry.

Usage::

    from xt_training import registry

    registry.names("model")                      # ['cnn', 'mlp', 'rnn', ...]; names("model", "res*")
    model = registry.create("model", "cnn", num_classes=10)
    registry.info("model", "cnn")                # plugin, distribution, description, options

Names come from plugins through the hooks of :mod:`xt_training.hookspecs`; the built-ins are plugins
too (:mod:`xt_training.builtins`). The registry is loaded on first use and kept for the process;
:func:`load` builds a fresh one (a new plugin manager: the CLI does this once per invocation) and
:func:`reset` forgets it, e.g. after ``pip install``-ing a plugin in a running notebook.

Listing needs only names and descriptions: factories given as ``"module:attr"`` strings are imported
when created, so listing does not import torch.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import importlib.util
import inspect
import os
import re
import sys
import time
import types
import typing
import warnings
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import pluggy

from . import hookspecs
from ._version import __version__
from .errors import ConfigError, first_line, line_in

__all__ = [
    "KINDS",
    "Data",
    "Entry",
    "Registry",
    "PluginWarning",
    "load",
    "current",
    "reset",
    "names",
    "entries",
    "create",
    "info",
    "accepts",
    "canonical_kind",
    "option_docs",
    "create_model",
    "list_models",
    "create_data",
    "list_data",
    "create_metric",
    "list_metrics",
    "create_logger",
    "list_loggers",
]

#: kind -> its plural, as used in hook names (``register_models``) and ``xt list models``
KINDS: dict[str, str] = {
    "model": "models",
    "data": "data",
    "metric": "metrics",
    "logger": "loggers",
    "loss": "losses",
    "optimizer": "optimizers",
    "scheduler": "schedulers",
    "callback": "callbacks",
}
ENTRY_POINT_GROUP = "xt_training"
#: the built-in plugins, loaded by module name before the installed ones, like pytest's default plugins:
#: ordinary plugin modules (:mod:`xt_training.builtins`), blocked like any plugin (``-p no:MODULE``)
BUILTIN_PLUGINS = (
    "xt_training.builtins.models",
    "xt_training.builtins.data",
    "xt_training.builtins.metrics",
    "xt_training.builtins.losses",
    "xt_training.builtins.optimizers",
    "xt_training.builtins.schedulers",
    "xt_training.builtins.loggers",
    "xt_training.builtins.callbacks",
    "xt_training.builtins.export_command",
    "xt_training.builtins.shapes",
    "xt_training.builtins.predict_command",
)
DISABLE_AUTOLOAD_ENV = "XT_DISABLE_PLUGIN_AUTOLOAD"
ALLOW_ENV = "XT_PLUGINS"
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


class PluginWarning(UserWarning):
    """A plugin failed to load or to register; the other plugins are loaded."""


@dataclass
class Data:
    """What a data factory returns.

    Attributes:
        loaders: the loaders by split name: ``'train'``, and ``'val'``, ``'test'`` (or ``'test.NAME'``
            for several test sets) when the data has them.
        info: what a model factory may need to fit the data, e.g. ``num_classes``, ``in_features``,
            ``in_channels``, ``image_size``, ``input_size``, ``classes``; the CLI passes each key to
            the model factory if it has a parameter of that name.
        loss: the loss name to use when the user names none (e.g. ``'cross-entropy'``).
        metrics: metric names to use when the user names none (e.g. ``['accuracy']``).
        forward_fn: how a batch of these loaders is fed to a model, ``forward_fn(model, batch) -> (y_pred, y)``
            (see :mod:`xt_training.batch`), for batches that are not ``(x, y)`` pairs of a plain model;
            the CLI hands it to ``F.train``, ``F.test`` and ``F.predict``.
        monitor: the value that decides the best checkpoint when the user names none, e.g. ``'val/map'``
            for a detection model, whose evaluation passes report no loss.
        tokenizer: a tokenizer built for this data, with ``save_pretrained(directory)`` (a Hugging Face
            tokenizer qualifies); ``xt run`` saves it into the run directory and ``xt predict`` reads raw
            text with it.
        notes: one-line facts the data inferred that the user should know, e.g. that a CSV label of
            numbers with decimals makes a regression; ``xt run`` prints them once, when a run starts.

    A data set of a split may name its examples for ``xt predict``: ``ids`` (one per example, in the
    loader's order) and ``id_column`` (the name of that column in the predictions), as the CSV data's
    ``id`` column and the image folder's paths do.
    """

    loaders: dict[str, Iterable[Any]]
    info: dict[str, Any] = field(default_factory=dict)
    loss: str | None = None
    metrics: list[str] = field(default_factory=list)
    forward_fn: Callable[[Any, Any], tuple[Any, Any]] | None = None
    monitor: str | None = None
    tokenizer: Any = None
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Entry:
    """One registered name: where it came from and how to build it."""

    kind: str
    name: str
    factory: Callable[..., Any] | str
    description: str
    plugin: str
    distribution: str | None = None
    version: str | None = None
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def source(self) -> str:
        """``'plugin' (distribution version)``, for messages."""
        return _source(self.plugin, self.distribution, self.version)

    def load(self) -> Callable[..., Any]:
        """The factory itself; imports its module when it was registered as ``"module:attr"``."""
        if callable(self.factory):
            return self.factory
        try:
            return load_object(self.factory)
        except ConfigError as e:
            raise ConfigError(
                f"{self.kind} '{self.name}' of plugin {self.source}: {e}; reinstall or update the plugin"
            ) from None

    def parameters(self) -> dict[str, inspect.Parameter]:
        """The factory's keyword options by name (``*args``/``**kwargs`` excluded)."""
        return {
            n: p
            for n, p in _signature(self.load()).parameters.items()
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD, p.POSITIONAL_ONLY)
        }

    def takes_any_option(self) -> bool:
        """Whether the factory has ``**kwargs``: then option names cannot be checked here."""
        params = _signature(self.load()).parameters.values()
        return any(p.kind is p.VAR_KEYWORD for p in params)


@dataclass
class PluginStatus:
    """A plugin as ``xt plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    status: str  # 'loaded', 'broken', 'blocked' or 'not loaded'
    builtin: bool = False
    hooks: list[str] = field(default_factory=list)
    registered: dict[str, list[str]] = field(default_factory=dict)
    error: str | None = None
    seconds: float | None = None  # how long importing it and running its register hooks took

    @property
    def source(self) -> str:
        """``'plugin' (distribution version)``, for messages."""
        return _source(self.name, self.distribution, self.version)


def _source(plugin: str, distribution: str | None, version: str | None) -> str:
    if distribution is None:
        return repr(plugin)
    return f"{plugin!r} ({distribution} {version})" if version else f"{plugin!r} ({distribution})"


class Registry:
    """A plugin manager with its plugins loaded and every name they registered.

    Args:
        plugins: the ``xt -p`` values: ``'no:NAME'`` blocks the plugin NAME (entry-point, distribution
            or module name), ``'NAME'`` loads it even with autoload off or outside ``XT_PLUGINS``.
        environ: where to read ``XT_DISABLE_PLUGIN_AUTOLOAD`` and ``XT_PLUGINS``; default ``os.environ``.
    """

    def __init__(self, plugins: Iterable[str] = (), environ: Mapping[str, str] | None = None):
        environ = os.environ if environ is None else environ
        self.pm = pluggy.PluginManager(ENTRY_POINT_GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.plugins: dict[str, PluginStatus] = {}
        self.problems: list[str] = []  # one line per broken plugin or bad setting
        self._tables: dict[str, dict[str, Entry]] = {kind: {} for kind in KINDS}
        #: kind -> name -> the entries of every plugin that registered it, for names registered more than
        #: once: such a name is an error only where it is used, and ``PLUGIN:NAME`` picks one
        self.clashes: dict[str, dict[str, list[Entry]]] = {kind: {} for kind in KINDS}
        self._packages: set[str] | None = None

        plugins = list(plugins)
        blocked = {p[3:] for p in plugins if p.startswith("no:")}
        wanted = [p for p in plugins if not p.startswith("no:")]
        autoload = environ.get(DISABLE_AUTOLOAD_ENV, "").strip().lower() in ("", "0", "false", "no")
        allow_env = environ.get(ALLOW_ENV)
        allowed = None if allow_env is None else {n.strip() for n in allow_env.split(",") if n.strip()}

        for module in BUILTIN_PLUGINS:
            status = PluginStatus(module, "xt-training", __version__, "not loaded", builtin=True)
            if module in blocked:
                self._add(status, "blocked")
            else:
                self._load(status, lambda m=module: importlib.import_module(m), module)

        found: set[str] = set()  # -p and XT_PLUGINS names that matched an entry point
        known = set(BUILTIN_PLUGINS)  # every name -p no: can block
        for ep in _entry_points():
            dist = getattr(ep, "dist", None)
            dist_name = dist.metadata["Name"] if dist is not None else None
            status = PluginStatus(
                ep.name, dist_name, dist.version if dist is not None else None, "not loaded"
            )
            aliases = {ep.name, dist_name}
            known |= aliases
            found |= aliases & {*wanted, *(allowed or ())}
            if aliases & blocked:
                self._add(status, "blocked")
            elif aliases & set(wanted) or (autoload and (allowed is None or aliases & allowed)):
                self._load(status, ep.load, ep.module)
                if status.status == "broken" and aliases & set(wanted):  # asked for by name: must work
                    raise ConfigError(f"-p {ep.name}: plugin {status.source} is broken: {status.error}")
            else:
                self._add(status, "not loaded")

        for name in wanted:
            if name in found:
                continue
            # not an installed entry point: a module on sys.path, registered under its own name
            if not _importable(name):
                raise ConfigError(
                    f"-p {name}: no installed plugin or importable module of that name; "
                    "see `xt plugins` for the installed ones"
                )
            status = PluginStatus(name, None, None, "not loaded")
            self._load(status, lambda m=name: importlib.import_module(m), name)
            if status.status == "broken":
                raise ConfigError(f"-p {name}: plugin {status.source} is broken: {status.error}")
        for name in sorted(blocked - known):
            close = difflib.get_close_matches(name, sorted(n for n in known if n), n=1)
            hint = f"did you mean 'no:{close[0]}'? " if close else ""
            self.problems.append(f"-p no:{name}: no plugin of that name is installed; {hint}see `xt plugins`")
        for name in sorted((allowed or set()) - found):
            self.problems.append(
                f"{ALLOW_ENV} names {name!r}, which is not an installed plugin; see `xt plugins`"
            )

    # --- loading ---------------------------------------------------------------------------------
    def _add(self, status: PluginStatus, state: str) -> None:
        status.status = state
        self.plugins[status.name] = status

    def _broken(self, status: PluginStatus, error: str) -> None:
        status.error = error
        self._add(status, "broken")
        self.problems.append(f"plugin {status.source} failed to load: {error}")

    def _load(self, status: PluginStatus, importer: Callable[[], Any], module: str) -> None:
        """Import and register one plugin, then run its register hooks; a failure marks it broken."""
        start = time.perf_counter()
        try:
            self._import_and_register(status, importer, module)
        finally:
            status.seconds = time.perf_counter() - start

    def _import_and_register(self, status: PluginStatus, importer: Callable[[], Any], module: str) -> None:
        try:
            plugin = importer()
        except KeyboardInterrupt:
            raise
        except BaseException as e:  # sys.exit() in a plugin is a broken plugin too, not the end of xt
            line = line_in(e, module.split(".")[0])
            return self._broken(status, _one_line(e) + (f" ({line})" if line else ""))
        try:
            self.pm.register(plugin, name=status.name)
        except (ValueError, pluggy.PluginValidationError) as e:  # pluggy's reason is on its later lines
            return self._broken(status, f"{type(e).__name__}: " + "; ".join(_lines(e)))
        try:  # a hook name that is not in hookspecs (a misspelling) fails this plugin, loudly
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            unknown = [c.name for c in self.pm.get_hookcallers(plugin) or [] if not c.has_spec()]
            self.pm.unregister(plugin)
            close = difflib.get_close_matches(unknown[0], _hook_names(), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            return self._broken(
                status,
                f"{', '.join(map(repr, unknown))} is not an xt_training hook{hint} "
                "(the hooks are documented in xt_training.hookspecs)",
            )
        status.hooks = sorted(c.name for c in self.pm.get_hookcallers(plugin) or [])
        self._check_unmarked(status, plugin)
        try:
            staged = self._run_register_hooks(status, plugin)
        except KeyboardInterrupt:
            raise
        except BaseException as e:
            self.pm.unregister(plugin)
            return self._broken(status, _one_line(e))
        self._add(status, "loaded")
        for kind, entries in staged.items():
            status.registered[kind] = sorted(entries, key=natural_key)
            table, clashes = self._tables[kind], self.clashes[kind]
            for name, entry in entries.items():
                if name in clashes:
                    clashes[name].append(entry)
                elif name in table:
                    clashes[name] = [table.pop(name), entry]
                else:
                    table[name] = entry

    def _check_unmarked(self, status: PluginStatus, plugin: Any) -> None:
        """Warn about a function of the plugin module named like a hook but not marked: pluggy ignores it."""
        for name in _hook_names():
            function = getattr(plugin, name, None)
            if (
                inspect.isfunction(function)
                and function.__module__ == getattr(plugin, "__name__", None)
                and not hasattr(function, f"{ENTRY_POINT_GROUP}_impl")
            ):
                code = function.__code__
                self.problems.append(
                    f"plugin {status.source}: {name} ({code.co_filename}:{code.co_firstlineno}) is named "
                    "like a hook but not marked @hookimpl, so it is never called; decorate it with "
                    "`@hookimpl` (from xt_training import hookimpl)"
                )

    def _run_register_hooks(self, status: PluginStatus, plugin: Any) -> dict[str, dict[str, Entry]]:
        staged: dict[str, dict[str, Entry]] = {}
        for kind, plural in KINDS.items():
            caller = getattr(self.pm.hook, f"register_{plural}")
            for impl in caller.get_hookimpls():
                if impl.plugin is plugin:
                    entries = staged.setdefault(kind, {})
                    register = _make_register(kind, status, entries)
                    impl.function(**{arg: register for arg in impl.argnames})
        return staged

    def export_formats(self) -> dict[str, str]:
        """The formats plugins add to ``xt export`` (:func:`~xt_training.hookspecs.export_formats`): name ->
        ``"module:function"``. Two plugins adding one name is an error naming both."""
        formats: dict[str, str] = {}
        owners: dict[str, str] = {}
        for impl in self.pm.hook.export_formats.get_hookimpls():
            for name, function in (impl.function() or {}).items():
                if name in formats:
                    raise ConfigError(
                        f"export format {name!r} is added by plugins {owners[name]} and {impl.plugin_name}; "
                        f"block one with -p no:NAME"
                    )
                formats[name], owners[name] = function, impl.plugin_name
        return formats

    def add_commands(self, cli: Any) -> dict[str, str]:
        """Call every plugin's ``register_commands(cli)``; return command name -> the plugin that added it.

        A plugin whose hook raises is marked broken.
        """
        owners: dict[str, str] = {}
        for impl in self.pm.hook.register_commands.get_hookimpls():
            before = dict(getattr(cli, "commands", {}))
            try:
                impl.function(**{arg: cli for arg in impl.argnames})
            except KeyboardInterrupt:
                raise
            except BaseException as e:
                self._broken(self.plugins[impl.plugin_name], _one_line(e))
            for name, command in getattr(cli, "commands", {}).items():
                if before.get(name) is not command:
                    owners[name] = impl.plugin_name
        return owners

    # --- names -----------------------------------------------------------------------------------
    def table(self, kind: str) -> dict[str, Entry]:
        """The entries of a kind by name, but for the names that several plugins registered (:attr:`clashes`)."""
        return self._tables[canonical_kind(kind)]

    def names(self, kind: str, pattern: str = "*") -> list[str]:
        """Registered names of ``kind`` matching the fnmatch ``pattern``, in natural order (clashing ones too)."""
        kind = canonical_kind(kind)
        found = [*self._tables[kind], *self.clashes[kind]]
        return sorted((n for n in found if fnmatch.fnmatchcase(n, pattern)), key=natural_key)

    def conflicts(self) -> list[str]:
        """One line per name that several plugins registered: which ones, and how to pick one."""
        return [
            self._clash(kind, name) for kind in KINDS for name in sorted(self.clashes[kind], key=natural_key)
        ]

    def _clash(self, kind: str, name: str) -> str:
        entries = self.clashes[kind][name]
        flag = "--data" if kind == "data" else f"--{kind}"
        return (
            f"{kind} '{name}' is registered by {len(entries)} plugins, "
            f"{', '.join(e.source for e in entries[:-1])} and {entries[-1].source}; pick one by its plugin "
            f"({' or '.join(f'`{flag} {qualified(e)}`' for e in entries)}), or block one with "
            f"`xt -p no:{entries[-1].plugin}`"
        )

    def find(self, kind: str, name: str) -> Entry | None:
        """The entry of ``name`` or ``PLUGIN:NAME``; None for an unknown or clashing name."""
        kind = canonical_kind(kind)
        if not isinstance(name, str):
            return None
        owner, sep, bare = name.rpartition(":")
        if not sep:
            return self._tables[kind].get(name)
        candidates = self.clashes[kind].get(bare) or [self._tables[kind].get(bare)]
        return next((e for e in candidates if e and owner in (e.plugin, e.distribution)), None)

    def entry(self, kind: str, name: str) -> Entry:
        """The entry of ``name``, or ``PLUGIN:NAME`` (a plugin's entry-point or distribution name) where
        several plugins registered ``name``; an unknown name is an error suggesting close matches."""
        kind = canonical_kind(kind)
        found = self.find(kind, name)
        if found is not None:
            return found
        if isinstance(name, str) and name in self.clashes[kind]:
            raise ConfigError(self._clash(kind, name))
        if isinstance(name, str) and ":" in name:
            owner, _, bare = name.rpartition(":")
            if bare in self.names(kind):
                raise ConfigError(
                    f"{kind} {name!r}: no plugin {owner!r} registers {kind} '{bare}'; see `xt list {KINDS[kind]}`"
                )
            name = bare
        plural = KINDS[kind]
        known = self.names(kind)
        if not known:
            raise ConfigError(f"unknown {kind} {name!r}: no {plural} are registered; see `xt plugins`")
        close = difflib.get_close_matches(str(name), known, n=1, cutoff=0.6)
        if close:
            hint = f"did you mean {close[0]!r}?"
        elif len(known) <= 12:
            hint = f"choose one of: {', '.join(known)};"
        else:
            hint = f"there are {len(known)} {plural};"
        raise ConfigError(f"unknown {kind} {name!r}; {hint} see `xt list {plural}`")

    def split(
        self, kind: str, name: str, options: Mapping[str, Any] | None = None
    ) -> tuple[str, dict[str, Any]]:
        """``NAME:VALUE``, where NAME was registered with ``argument=OPTION``, is NAME with its option
        ``OPTION=VALUE`` (xt-hf's ``hf:bert-base-uncased`` is ``hf`` with ``name='bert-base-uncased'``);
        returns the name and ``options`` with that option added. Any other name comes back as it is."""
        head, sep, value = name.partition(":") if isinstance(name, str) else ("", "", "")
        entry = self.find(kind, head) if sep and value and self.find(kind, name) is None else None
        option = entry.metadata.get("argument") if entry is not None else None
        options = dict(options or {})
        if option is None:
            return name, options
        if option in options and options[option] != value:
            raise ConfigError(
                f"{kind} {name!r} sets its option {option}={value!r}, and the options set {option}="
                f"{options[option]!r}: give it once"
            )
        return head, {**options, option: value}

    def packages(self) -> set[str]:
        """The top-level packages of the registered names' factories (``xt_training``, ``torch``, plugins')."""
        if self._packages is None:
            factories = [entry.factory for table in self._tables.values() for entry in table.values()]
            modules = [f if isinstance(f, str) else getattr(f, "__module__", None) or "" for f in factories]
            self._packages = {m.split(".")[0] for m in modules if m}
        return self._packages

    def create(self, kind: str, name: str, /, **options: Any) -> Any:
        """Build ``name`` (or ``NAME:VALUE``, see :meth:`split`) with its factory; wrong option names or
        types are a one-line error."""
        name, options = self.split(kind, name, options)
        entry = self.entry(kind, name)
        factory = entry.load()
        options = _paths_as_annotated(options, _type_hints(factory))
        _check_options(entry, factory, options)
        obj = factory(**options)
        if entry.kind == "metric":
            _declare_direction(obj, entry)
        return obj

    def accepts(self, kind: str, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
        """The items of ``values`` that the factory of ``name`` has a parameter for (``**kwargs`` aside).

        The CLI uses it to hand context (the data's ``num_classes``, a scheduler's ``optimizer``) only to
        factories that ask for it.
        """
        params = self.entry(kind, self.split(kind, name)[0]).parameters()
        return {k: v for k, v in values.items() if k in params}

    def info(self, kind: str, name: str) -> dict[str, Any]:
        """Where ``name`` came from and what it accepts (imports the factory).

        Returns ``{'kind', 'name', 'plugin', 'distribution', 'version', 'description', 'factory',
        'options': {option: {'default', 'type', 'required', 'description'}}, 'any_option', 'metadata'}``;
        each option's description comes from the factory's docstring (:func:`option_docs`).
        """
        entry = self.entry(kind, self.split(kind, name)[0])
        factory = entry.load()
        hints = _type_hints(factory)
        docs = option_docs(factory)
        options = {
            n: {
                "required": p.default is p.empty,
                "default": None if p.default is p.empty else p.default,
                "type": _type_name(hints.get(n, p.annotation)),
                "description": docs.get(n, ""),
            }
            for n, p in entry.parameters().items()
        }
        target = entry.factory if isinstance(entry.factory, str) else _qualname(factory)
        return {
            "kind": entry.kind,
            "name": entry.name,
            "plugin": entry.plugin,
            "distribution": entry.distribution,
            "version": entry.version,
            "description": entry.description or _doc_line(factory),
            "factory": target,
            "options": options,
            "any_option": entry.takes_any_option(),
            "metadata": dict(entry.metadata),
        }


def _declare_direction(metric: Any, entry: Entry) -> None:
    """Give ``metric`` the ``higher_is_better`` its plugin declared when it registered the name, if any."""
    declared = entry.metadata.get("higher_is_better")
    if declared is None:
        return
    own = getattr(metric, "higher_is_better", None)
    if not isinstance(declared, bool) or (isinstance(own, bool) and own != declared):
        said = f" but its {type(metric).__name__} says {own}" if isinstance(own, bool) else ""
        raise ConfigError(
            f"metric '{entry.name}' of plugin {entry.source} is registered with higher_is_better={declared!r}"
            f"{said}; the plugin must register True or False, as the metric computes it"
        )
    metric.higher_is_better = declared


def _entry_points() -> list[Any]:
    from importlib.metadata import entry_points

    return sorted(entry_points(group=ENTRY_POINT_GROUP), key=lambda ep: ep.name)


def load_object(path: str) -> Any:
    """The object named by ``"package.module:attr.sub"``."""
    module, _, attr = path.partition(":")
    if not module or not attr:
        raise ConfigError(f"{path!r} is not a 'module:attr' path")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as e:
        raise ConfigError(f"cannot load {path!r}: {type(e).__name__}: {e}") from None
    return obj


def known_code(path: str) -> bool:
    """Whether ``"module:attr"`` names code that is here without anyone's say-so: its module is imported
    already, or belongs to the package of an installed plugin or of a registered name's factory.

    What a run directory's file names is resolved untrusted only then (:func:`xt_training.rundir.untrusted`):
    a file someone sent must not make this process import a module of their choosing.
    """
    module = path.partition(":")[0]
    return module in sys.modules or module.split(".")[0] in current().packages()


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except ImportError:  # a parent package is missing
        return False


def qualified(entry: Entry) -> str:
    """``DISTRIBUTION:NAME`` (``PLUGIN:NAME`` for a module without one): the name that picks this entry
    where several plugins registered its name."""
    return f"{entry.distribution or entry.plugin}:{entry.name}"


def _hook_names() -> list[str]:
    return [n for n in dir(hookspecs) if hasattr(getattr(hookspecs, n), f"{ENTRY_POINT_GROUP}_spec")]


def _lines(e: BaseException) -> list[str]:
    return [" ".join(line.split()) for line in str(e).splitlines() if line.strip()] or [type(e).__name__]


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {first_line(e)}" if str(e).strip() else type(e).__name__


def _make_register(kind: str, status: PluginStatus, entries: dict[str, Entry]) -> Callable[..., None]:
    def register(
        name: str, factory: Callable[..., Any] | str, *, description: str | None = None, **metadata: Any
    ) -> None:
        if not isinstance(name, str) or not _NAME.match(name):
            raise ConfigError(
                f"register_{KINDS[kind]}: invalid {kind} name {name!r}; use letters, digits, '-', '_' or '.'"
            )
        if not (callable(factory) or (isinstance(factory, str) and ":" in factory)):
            raise ConfigError(
                f"register_{KINDS[kind]}: the factory of {kind} '{name}' must be a callable or a "
                f"'module:attr' string, not {factory!r}"
            )
        if name in entries:
            raise ConfigError(f"{kind} '{name}' is registered twice by plugin {status.source}")
        if description is None:
            description = _doc_line(factory) if callable(factory) else ""
        entries[name] = Entry(
            kind, name, factory, description, status.name, status.distribution, status.version, metadata
        )

    return register


def natural_key(name: str) -> list[Any]:
    """Sort key that orders ``resnet18`` before ``resnet101``."""
    return [int(part) if part.isdigit() else part.lower() for part in re.split(r"(\d+)", name)]


def canonical_kind(kind: str) -> str:
    """``'models'`` -> ``'model'``; an unknown kind is an error listing the kinds."""
    if kind in KINDS:
        return kind
    for singular, plural in KINDS.items():
        if kind == plural:
            return singular
    close = difflib.get_close_matches(str(kind), [*KINDS, *KINDS.values()], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise ConfigError(f"unknown kind {kind!r}; {hint}kinds: {', '.join(KINDS.values())}")


# --- option checks ---------------------------------------------------------------------------------
def _signature(factory: Callable[..., Any]) -> inspect.Signature:
    try:
        return inspect.signature(factory)
    except (TypeError, ValueError):  # some builtins have no signature
        return inspect.Signature([inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD)])


def _type_hints(factory: Callable[..., Any]) -> dict[str, Any]:
    target = factory.__init__ if isinstance(factory, type) else factory
    target = getattr(target, "func", target)  # functools.partial
    try:
        return typing.get_type_hints(target)
    except Exception:  # annotations naming types that are not importable here: no type checks
        return {}


def _check_options(entry: Entry, factory: Callable[..., Any], options: Mapping[str, Any]) -> None:
    params = entry.parameters()
    label = f"{entry.kind} '{entry.name}'"

    def accepted() -> str:
        shown = [f"{n}={p.default!r}" if p.default is not p.empty else n for n, p in params.items()]
        return f"options: {', '.join(shown)}" if shown else "it takes no options"

    if not entry.takes_any_option():
        for key in options:
            if key not in params:
                close = difflib.get_close_matches(key, list(params), n=1)
                hint = f"did you mean {close[0]!r}? " if close else ""
                raise ConfigError(f"{label} has no option {key!r}; {hint}{accepted()}")
    hints = _type_hints(factory)
    for key, value in options.items():
        expected = hints.get(key)
        if expected is not None and not _fits(value, expected):
            raise ConfigError(
                f"{label}: option {key}={value!r} must be {_type_name(expected)}, not "
                f"{type(value).__name__}; {accepted()}"
            )
    missing = [n for n, p in params.items() if p.default is p.empty and n not in options]
    if missing:
        raise ConfigError(f"{label} needs option {missing[0]!r}; {accepted()}")


def _paths_as_annotated(options: Mapping[str, Any], hints: Mapping[str, Any]) -> dict[str, Any]:
    """``options`` with a path given as ``str`` where the factory annotates ``Path`` made a ``Path``, and the
    reverse: the run directory xt passes (a logger's ``save_dir``) fits either annotation a user writes."""
    converted = dict(options)
    for key, value in options.items():
        expected = hints.get(key)
        if expected is None or _fits(value, expected):
            continue
        accepted = typing.get_args(expected) or (expected,)
        if isinstance(value, os.PathLike) and str in accepted:
            converted[key] = os.fspath(value)
        elif isinstance(value, str):
            path_type = next(
                (t for t in accepted if isinstance(t, type) and issubclass(t, os.PathLike)), None
            )
            converted[key] = value if path_type is None else path_type(value)
    return converted


def _fits(value: Any, expected: Any) -> bool:
    """Whether ``value`` fits the annotation ``expected``; constructs it does not know are accepted."""
    if expected is Any or expected is inspect.Parameter.empty:
        return True
    if expected is type(None) or expected is None:
        return value is None
    origin, args = typing.get_origin(expected), typing.get_args(expected)
    if origin in (typing.Union, types.UnionType):
        return any(_fits(value, a) for a in args)
    if origin is typing.Literal:
        return value in args
    if expected is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if expected is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin in (tuple, list) or (origin is not None and origin.__module__ == "collections.abc"):
        if origin in (tuple, list) or origin.__name__ in ("Sequence", "MutableSequence"):
            if not isinstance(value, (tuple, list)):
                return False
            if origin is tuple and args and args[-1] is not Ellipsis:
                return len(value) == len(args) and all(map(_fits, value, args))
            return not args or all(_fits(v, args[0]) for v in value)
        return isinstance(value, origin)
    if origin in (dict,):
        return isinstance(value, dict)
    if isinstance(expected, type):
        return isinstance(value, expected)
    return True


def _type_name(tp: Any) -> str:
    if tp is inspect.Parameter.empty:
        return "any"
    if isinstance(tp, type) and typing.get_origin(tp) is None:
        return tp.__name__
    if typing.get_origin(tp) is typing.Literal:
        return " | ".join(repr(a) for a in typing.get_args(tp))
    return str(tp).replace("typing.", "").replace("collections.abc.", "")


_ARGS_SECTION = re.compile(r"(Args|Arguments|Parameters|Keyword [Aa]rg(ument)?s|Other [Pp]arameters):")
_ARG = re.compile(r"(\*{0,2}\w+(?:\s*,\s*\*{0,2}\w+)*)\s*(?:\([^)]*\))?\s*:(?:\s+(.*))?")
_SPHINX_PARAM = re.compile(r":param\s+(?:[^:]*\s)?(\w+):\s*(.*)")
_RST_ROLE = re.compile(r":\w+:`~?([^`]*)`")


def option_docs(factory: Any) -> dict[str, str]:
    """Each parameter's description, from the factory's docstring (a class's and its ``__init__``'s).

    Google style, as this package and torch write them (``Args:`` then ``name (type): text``, several
    names at once as ``a, b: text``, continuation lines indented), and Sphinx's ``:param name: text``.
    A description is one line: continuations joined, reST markup (````x````, ``:class:`X```) removed.
    """
    docs: dict[str, str] = {}
    sources = [factory, getattr(factory, "__init__", None)] if isinstance(factory, type) else [factory]
    for source in sources:
        for names, text in _documented(inspect.getdoc(source) or ""):
            text = _RST_ROLE.sub(r"\1", " ".join(text)).replace("``", "").strip()
            for name in names:
                docs.setdefault(name.lstrip("*"), text)
    return docs


def _documented(doc: str) -> list[tuple[list[str], list[str]]]:
    """``([names], [text lines])`` of each parameter a docstring describes."""
    found: list[tuple[list[str], list[str]]] = []
    section: int | None = None  # the indentation of the Args: line, while inside that section
    item: int | None = None  # the indentation of the open item: its continuation lines are deeper
    for line in doc.splitlines():
        indent, text = len(line) - len(line.lstrip()), line.strip()
        if not text:
            continue
        if item is not None and indent > item:
            found[-1][1].append(text)
            continue
        item = None
        sphinx = _SPHINX_PARAM.fullmatch(text)
        arg = _ARG.fullmatch(text) if section is not None and indent > section else None
        if sphinx or arg:
            names = [sphinx[1]] if sphinx else [n.strip() for n in arg[1].split(",")]
            found.append((names, [(sphinx or arg)[2] or ""]))
            item = indent
        elif _ARGS_SECTION.fullmatch(text):
            section = indent
        elif section is not None and indent <= section:
            section = None  # the next section, or the text after the parameters
    return found


def _doc_line(obj: Any) -> str:
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


def _qualname(obj: Any) -> str:
    obj = getattr(obj, "func", obj)
    return f"{getattr(obj, '__module__', '?')}:{getattr(obj, '__qualname__', type(obj).__name__)}"


# --- the process-wide registry -----------------------------------------------------------------------
_current: Registry | None = None


def load(plugins: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> Registry:
    """Build a fresh registry (new plugin manager, plugins imported again) and make it the current one."""
    global _current
    _current = Registry(plugins, environ)
    return _current


def current() -> Registry:
    """The current registry, loaded on first use; broken plugins are reported as :class:`PluginWarning`."""
    if _current is None:
        for problem in load().problems:
            warnings.warn(problem, PluginWarning, stacklevel=2)
    assert _current is not None
    return _current


def reset() -> None:
    """Forget the current registry: the next use loads the plugins again."""
    global _current
    _current = None


def names(kind: str, pattern: str = "*") -> list[str]:
    """Registered names of ``kind`` (``'model'``, ``'models'``, ...) matching ``pattern`` (fnmatch)."""
    return current().names(kind, pattern)


def entries(kind: str, pattern: str = "*") -> list[Entry]:
    """The entries of :func:`names`: name, plugin, distribution and description of each."""
    reg = current()
    kind = canonical_kind(kind)
    table, clashes = reg.table(kind), reg.clashes[kind]
    return [e for n in reg.names(kind, pattern) for e in (clashes[n] if n in clashes else [table[n]])]


def create(kind: str, name: str, /, **options: Any) -> Any:
    """Build the ``kind`` registered as ``name`` with keyword ``options``."""
    return current().create(kind, name, **options)


def info(kind: str, name: str) -> dict[str, Any]:
    """Which plugin registered ``name``, its description and options; see :meth:`Registry.info`."""
    return current().info(kind, name)


def accepts(kind: str, name: str, values: Mapping[str, Any]) -> dict[str, Any]:
    """The items of ``values`` that the factory of ``name`` takes; see :meth:`Registry.accepts`."""
    return current().accepts(kind, name, values)


def create_model(name: str, /, **options: Any) -> Any:
    """A model by name, e.g. ``create_model('cnn', num_classes=10)``; see ``xt list models``."""
    return create("model", name, **options)


def list_models(pattern: str = "*") -> list[str]:
    """Model names matching ``pattern`` (fnmatch)."""
    return names("model", pattern)


def create_data(name: str, /, **options: Any) -> Data:
    """A data set's loaders and facts by name, e.g. ``create_data('synthetic-images', batch_size=32)``."""
    return create("data", name, **options)


def list_data(pattern: str = "*") -> list[str]:
    """Data set names matching ``pattern`` (fnmatch)."""
    return names("data", pattern)


def create_metric(name: str, /, **options: Any) -> Any:
    """A metric by name, e.g. ``create_metric('top-k-accuracy', k=3)``."""
    return create("metric", name, **options)


def list_metrics(pattern: str = "*") -> list[str]:
    """Metric names matching ``pattern`` (fnmatch)."""
    return names("metric", pattern)


def create_logger(name: str, /, **options: Any) -> Any:
    """A logger by name, e.g. ``create_logger('csv', save_dir='runs/x')``."""
    return create("logger", name, **options)


def list_loggers(pattern: str = "*") -> list[str]:
    """Logger names matching ``pattern`` (fnmatch)."""
    return names("logger", pattern)
