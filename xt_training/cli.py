"""The ``xt`` command line (also ``python -m xt_training``).

Every command resolves names through :mod:`xt_training.registry` and calls the same Python API a user
calls (:mod:`xt_training.config`, ``F.train``, ``F.test``). A fresh plugin manager is built per
invocation. torch is imported only by the commands that train or evaluate: ``xt --help``, ``xt list``,
``xt info`` (for string-registered factories: only ``xt info`` imports the factory) and ``xt plugins``
start fast.

Errors are one line ``xt: error: ...``: bad input (usage errors, xt-training's own errors) exits with
status 2; an exception raised in user or plugin code names the plugin, file and line and exits with 1
(``xt --debug`` or ``XT_DEBUG=1`` prints its traceback too); Ctrl-C exits with 130.
"""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
import textwrap
import traceback
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import click
from click.core import ParameterSource
from click.shell_completion import CompletionItem, get_completion_class

from . import config, errors, registry, report, scaffold
from ._version import __version__
from .config import COMPONENTS, SCALARS, default_config, read_config
from .environment import environment, format_environment
from .errors import XtError
from .files import json_text
from .rundir import CONFIG_FILE

__all__ = ["cli", "main", "run_options", "run_config", "parse_value", "parse_options"]


class XtGroup(click.Group):
    """The ``xt`` group: loads the plugins once per invocation, adds their commands, prints one-line errors."""

    def loaded(self, ctx: click.Context) -> registry.Registry:
        """The registry of this invocation, loaded with the ``-p`` values on first use."""
        root = ctx.find_root()
        if "xt.registry" not in root.meta:
            # from the command line itself: `--help` is answered before the -p values are parsed
            reg = registry.load(root.params.get("plugins") or _plugin_args(getattr(self, "raw_args", ())))
            collector = click.Group()  # plugin commands live per invocation, never on the module-level group
            owners = reg.add_commands(collector)
            commands = {}
            for name, command in collector.commands.items():
                if name in self.commands:
                    reg.problems.append(
                        f"plugin {owners.get(name)!r} adds a command {name!r}, which clashes with the built-in "
                        "command; ignored"
                    )
                else:
                    commands[name] = command
            if not root.resilient_parsing:  # a completion request: warnings would garble the command line
                for line in [*reg.problems, *_slow_plugins(reg, getattr(self, "raw_args", []))]:
                    click.echo(f"xt: warning: {line}", err=True)
                if os.environ.get(TRACE_ENV, "").strip().lower() not in ("", "0", "false", "no"):
                    for p in reg.plugins.values():
                        if p.seconds is not None:
                            click.echo(f"xt: plugin {p.source} loaded in {p.seconds:.3f} s", err=True)
            root.meta["xt.registry"], root.meta["xt.commands"] = reg, commands
            self.last_registry = reg  # for naming the plugin that raised an error, after the context is gone
            root.meta["xt.command_owners"] = {name: owners.get(name) for name in commands}
        return root.meta["xt.registry"]

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in self.commands:  # built-in commands need no plugin loading to be found
            return self.commands[cmd_name]
        self.loaded(ctx)
        return ctx.find_root().meta["xt.commands"].get(cmd_name)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self.loaded(ctx)
        return sorted({*self.commands, *ctx.find_root().meta["xt.commands"]})

    def main(self, args: Any = None, prog_name: str | None = None, *a: Any, **kw: Any) -> Any:
        self.raw_args = list(args) if args is not None else sys.argv[1:]  # for `xt run --nproc N`
        self.last_registry: registry.Registry | None = None
        if kw.get("standalone_mode", True) is False:
            return super().main(args, prog_name, *a, **kw)
        kw["standalone_mode"] = False
        try:
            code = super().main(args, prog_name or "xt", *a, **kw)
        except click.exceptions.NoArgsIsHelpError as e:
            click.echo(e.ctx.get_help())
            code = 0
        except click.UsageError as e:
            hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx is not None else ""
            click.echo(f"xt: error: {_one_line(e.format_message())}{hint}", err=True)
            code = 2
        except click.ClickException as e:
            click.echo(f"xt: error: {_one_line(e.format_message())}", err=True)
            code = 2
        except click.Abort:
            click.echo("xt: interrupted", err=True)
            code = 130
        except Exception as e:
            code = self.report(e)
        sys.exit(code if isinstance(code, int) else 0)

    def report(self, error: Exception) -> int:
        """Print ``error`` as one line; return the exit status: 2 for bad input, 1 for a failure in code.

        Bad input is xt-training's own error. An exception raised in user or plugin code (itself, or as
        the cause of xt-training's error) is named with the plugin, file and line, and ``--debug`` /
        ``XT_DEBUG=1`` prints the whole traceback before it; it is a failure in code unless that code
        refused its input (a ValueError or TypeError behind xt-training's error).
        """
        cause = error.__cause__ if isinstance(error, XtError) else error
        where = None
        if cause is not None and not isinstance(cause, XtError):
            where = errors.raised_in(cause, _plugin_owners(self.last_registry))
        if isinstance(error, XtError):
            message = _one_line(errors.own_message(error))
        else:
            where = where or errors.deepest(error)
            message = f"{type(error).__name__}: {errors.first_line(error)}"
        debug = _debug(self.raw_args)
        if debug:
            traceback.print_exception(error)
        refused = isinstance(cause, (ValueError, TypeError))
        failed_in_code = not isinstance(error, XtError) or (where is not None and not refused)
        hint = " (the full traceback: `xt --debug ...` or XT_DEBUG=1)" if failed_in_code and not debug else ""
        click.echo(f"xt: error: {f'{where}: ' if where else ''}{message}{hint}", err=True)
        return 1 if failed_in_code else 2


#: a plugin whose import takes longer slows every `xt` command down: `xt --help` says so
SLOW_PLUGIN_SECONDS = 0.5
TRACE_ENV = "XT_TRACE_PLUGINS"
DEBUG_ENV = "XT_DEBUG"


def _slow_plugins(reg: registry.Registry, args: list[str]) -> list[str]:
    """For ``--help``, a warning naming the plugins slower to load than ``SLOW_PLUGIN_SECONDS``."""
    slow = [p for p in reg.plugins.values() if not p.builtin and (p.seconds or 0) > SLOW_PLUGIN_SECONDS]
    if not slow or not {"-h", "--help"} & set(args):
        return []
    named = ", ".join(f"{p.source} {p.seconds:.1f} s" for p in slow)
    return [
        f"plugins slow to load, which every xt command waits for: {named}; see `xt plugins --timings`, "
        "block one with `xt -p no:NAME` (a plugin should import its heavy dependencies where they are used)"
    ]


def _plugin_args(args: Iterable[str]) -> list[str]:
    """The values of ``-p`` (``-p NAME``, ``-pNAME``) among the group's options, before the command's name."""
    values, args = [], iter(args)
    for arg in args:
        if arg == "-p":
            values.append(next(args, ""))
        elif arg.startswith("-p"):
            values.append(arg[2:].removeprefix("="))
        elif arg == "--" or not arg.startswith("-"):  # the command: what follows is its own
            break
    return values


def _debug(args: list[str]) -> bool:
    """``xt --debug`` or ``XT_DEBUG=1``: errors print their whole traceback."""
    group_args = args[: next((i for i, a in enumerate(args) if not a.startswith("-")), len(args))]
    return "--debug" in group_args or os.environ.get(DEBUG_ENV, "").strip().lower() not in (
        "",
        "0",
        "false",
        "no",
    )


def _plugin_owners(reg: registry.Registry | None) -> dict[str, str]:
    """The top-level module of each installed plugin -> the plugin, as messages name it."""
    owners: dict[str, str] = {}
    for status in reg.plugins.values() if reg is not None else ():
        plugin = reg.pm.get_plugin(status.name)
        if plugin is not None and not status.builtin:
            owners[str(getattr(plugin, "__name__", type(plugin).__module__)).split(".")[0]] = status.source
    return owners


def _one_line(message: str) -> str:
    return "; ".join(line.strip() for line in message.strip().splitlines() if line.strip())


@click.group(
    cls=XtGroup,
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 110},
)
@click.option(
    "-p",
    "plugins",
    multiple=True,
    metavar="NAME",
    help="Load plugin NAME (entry-point, distribution or module name); `-p no:NAME` blocks it.",
)
@click.option(
    "--debug",
    is_flag=True,
    help="On an error, print the whole traceback before its one-line message (also XT_DEBUG=1).",
)
@click.version_option(__version__, "-V", "--version", prog_name="xt-training")
@click.pass_context
def cli(ctx: click.Context, plugins: tuple[str, ...], debug: bool) -> None:
    """Train and test PyTorch models; pick models, data, metrics and loggers by name.

    \b
    Examples:
      xt run --model cnn --data synthetic-images --epochs 3
      xt list models
      xt train config.py          (a Python config file; `xt template DIR` writes one)
      xt test runs/RUN_DIR

    \b
    Plugins are installed packages with entry points in the group `xt_training` (`xt plugins`).
    XT_DISABLE_PLUGIN_AUTOLOAD=1 loads no installed plugin (the built-ins always load), XT_PLUGINS=a,b
    loads only those, -p no:NAME blocks one.
    """
    cli.loaded(ctx)


def main(argv: list[str] | None = None) -> None:
    """The console script ``xt``."""
    cli.main(args=argv, prog_name="xt")


# --- shell completion -----------------------------------------------------------------------------------------
#: click's completion protocol: the shell calls `_XT_COMPLETE=bash_complete xt ...` for its completions
COMPLETE_VAR = "_XT_COMPLETE"


def complete_names(kind: str) -> Callable[[click.Context, click.Parameter, str], list[CompletionItem]]:
    """A ``shell_complete`` callback offering the registered names of ``kind`` (``--model res<TAB>``).

    ``KEY=NAME`` values (``--metric top2=top<TAB>``) complete their NAME. Listing imports no torch.
    """

    def complete(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
        key, sep, prefix = incomplete.rpartition("=")
        reg = cli.loaded(ctx)
        return [
            CompletionItem(f"{key}{sep}{name}", help=getattr(reg.find(kind, name), "description", None))
            for name in reg.names(kind)
            if name.startswith(prefix)
        ]

    return complete


def _complete_kinds(kinds: Iterable[str]) -> Callable[[click.Context, click.Parameter, str], list[str]]:
    return lambda ctx, param, incomplete: [kind for kind in kinds if kind.startswith(incomplete)]


def _complete_kind_names(ctx: click.Context, param: click.Parameter, incomplete: str) -> list[CompletionItem]:
    """The names of the KIND given before (``xt info model <TAB>``)."""
    try:
        kind = registry.canonical_kind(ctx.params.get("kind") or "")
    except XtError:  # no kind, or a wrong one: nothing to offer
        return []
    return complete_names(kind)(ctx, param, incomplete)


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_command(shell: str) -> None:
    """Print the shell completion script for SHELL.

    It completes commands, options and registered names (`xt run --model <TAB>`), those of installed
    plugins included. Activate it once:

    \b
      bash: echo 'eval "$(xt completion bash)"' >> ~/.bashrc
      zsh:  echo 'eval "$(xt completion zsh)"' >> ~/.zshrc
      fish: xt completion fish > ~/.config/fish/completions/xt.fish
    """
    click.echo(get_completion_class(shell)(cli, {}, "xt", COMPLETE_VAR).source())


# --- option values -------------------------------------------------------------------------------------
def parse_value(raw: str) -> Any:
    """A command-line value as a Python literal (``128``, ``0.1``, ``(8, 16)``, ``True``, ``None``), else the string."""
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError, TypeError, MemoryError, RecursionError):
        return raw


def parse_options(pairs: tuple[str, ...] | list[str], flag: str) -> dict[str, Any]:
    """``('hidden=128', 'cell=lstm')`` -> ``{'hidden': 128, 'cell': 'lstm'}``."""
    options = {}
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key.strip().isidentifier():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE, e.g. hidden=128", param_hint=flag)
        options[key.strip()] = parse_value(raw)
    return options


def _item_options(pairs: tuple[str, ...], flag: str) -> dict[str, dict[str, Any]]:
    """``('top-k.k=3',)`` -> ``{'top-k': {'k': 3}}``: options of one of several metrics/loggers/callbacks."""
    grouped: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        target, sep, _ = pair.partition("=")[0].rpartition(".")
        if not sep or not target:
            raise click.BadParameter(
                f"{pair!r} is not NAME.KEY=VALUE, e.g. top-k-accuracy.k=3", param_hint=flag
            )
        grouped.setdefault(target, {}).update(parse_options([pair[len(target) + 1 :]], flag))
    return grouped


#: ``--trust``, for every command that reads a run directory (`xt run --config/--resume`, test, predict, export)
trust_option = click.option(
    "--trust",
    is_flag=True,
    help="The run directory may run or import code its files name (config.py, a model or tokenizer class, "
    "an option's module:attr) and write outside itself: only for runs from a source you trust.",
)


# --- xt run -----------------------------------------------------------------------------------------------
_DEFAULTS = default_config()


class _BatchLimit(click.ParamType):
    """A number of batches (``10``) or a fraction of them (``0.25``), as F.train's ``limit_*_batches``."""

    name = "N|FRACTION"

    def convert(self, value: Any, param: Any, ctx: Any) -> int | float:
        if isinstance(value, (int, float)):  # a default, or a value from a saved configuration
            return value
        if value.isdigit() and int(value) > 0:
            return int(value)
        try:
            number = float(value)
        except ValueError:
            number = 0.0
        if 0 < number <= 1:
            return number
        self.fail(f"{value!r} is neither a number of batches (e.g. 10) nor a fraction in (0, 1] (e.g. 0.25)")


_RUN_OPTIONS: list[Callable[[Any], Any]] = [
    click.option(
        "--config",
        "config_path",
        type=click.Path(exists=True),
        help="Start from a saved run configuration (RUN_DIR or RUN_DIR/config.json); other options override it.",
    ),
    trust_option,
    click.option("--model", help="Model name (`xt list models`).", shell_complete=complete_names("model")),
    click.option("--model-opt", multiple=True, metavar="KEY=VALUE", help="Model option; VALUE is a Python literal."),
    click.option("--data", help="Data set name (`xt list data`).", shell_complete=complete_names("data")),
    click.option("--data-opt", multiple=True, metavar="KEY=VALUE", help="Data option, e.g. n_samples=5000."),
    click.option("--loss", help="Loss name (`xt list losses`); default: the data's suggestion.", shell_complete=complete_names("loss")),
    click.option("--loss-opt", multiple=True, metavar="KEY=VALUE", help="Loss option."),
    click.option("--optimizer", default=_DEFAULTS["optimizer"]["name"], show_default=True, help="Optimizer name (`xt list optimizers`).", shell_complete=complete_names("optimizer")),
    click.option("--optimizer-opt", multiple=True, metavar="KEY=VALUE", help="Optimizer option, e.g. momentum=0.9."),
    click.option("--lr", type=float, help="Learning rate (the optimizer option lr)."),
    click.option("--scheduler", help="Learning-rate scheduler name (`xt list schedulers`).", shell_complete=complete_names("scheduler")),
    click.option("--scheduler-opt", multiple=True, metavar="KEY=VALUE", help="Scheduler option."),
    click.option(
        "--metric",
        "metrics",
        multiple=True,
        metavar="[KEY=]NAME",
        help="Metric (repeatable), reported as KEY (default NAME); default: the data's suggestion.",
        shell_complete=complete_names("metric"),
    ),
    click.option("--metric-opt", multiple=True, metavar="KEY.OPT=VALUE", help="Option of metric KEY, e.g. top-k-accuracy.k=3."),
    click.option("--logger", "loggers", multiple=True, metavar="NAME", help="Logger besides the console (repeatable).", shell_complete=complete_names("logger")),
    click.option("--logger-opt", multiple=True, metavar="NAME.OPT=VALUE", help="Option of logger NAME."),
    click.option("--callback", "callbacks", multiple=True, metavar="NAME", help="Callback (repeatable).", shell_complete=complete_names("callback")),
    click.option("--callback-opt", multiple=True, metavar="NAME.OPT=VALUE", help="Option of callback NAME."),
    click.option("--epochs", type=click.IntRange(min=1), default=_DEFAULTS["epochs"], show_default=True),
    click.option("--batch-size", type=click.IntRange(min=1), help="Batch size (the data option batch_size)."),
    click.option("--device", help="cpu, cuda, cuda:1, mps, ...; default: the accelerator, if any (CUDA, XPU, MPS...)."),
    click.option("--seed", type=int, default=_DEFAULTS["seed"], show_default=True, help="Seeds Python, NumPy and torch."),
    click.option("--monitor", help="Value deciding the best checkpoint, e.g. val/accuracy; default val/loss."),
    click.option("--mode", type=click.Choice(["min", "max"]), help="Whether --monitor improves downwards or upwards; default: its metric's direction."),
    click.option(
        "--log-every", "log_every_n_steps", type=click.IntRange(min=1), default=_DEFAULTS["log_every_n_steps"], show_default=True,
        help="Read values from the device and log them every N steps.",
    ),
    click.option(
        "--precision", type=click.Choice(["32", "bf16-mixed", "16-mixed"]), default=_DEFAULTS["precision"], show_default=True,
        help="Floating-point precision (mixed: autocast; 16-mixed also a gradient scaler).",
    ),
    click.option(
        "--accumulate-grad-batches", type=click.IntRange(min=1), default=_DEFAULTS["accumulate_grad_batches"], show_default=True,
        help="Step the optimizer every N batches.",
    ),
    click.option("--clip-grad-norm", type=float, help="Clip the gradients' total norm to this value."),
    click.option("--clip-grad-value", type=float, help="Clip every gradient element to [-value, value]."),
    click.option(
        "--checkpoint-every", "checkpoint_every_n_steps", type=click.IntRange(min=1),
        help="Also write checkpoints/last.pt every N optimizer steps (for exact mid-epoch resume).",
    ),
    click.option(
        "--val-every", "val_every_n_steps", type=click.IntRange(min=1),
        help="Also validate every N optimizer steps (besides each epoch's end); best.pt, --save-top-k and "
        "early stopping count these validations.",
    ),
    click.option(
        "--save-top-k", type=click.IntRange(min=0), default=_DEFAULTS["save_top_k"], show_default=True,
        help="Keep the K best checkpoints by --monitor: checkpoints/epoch=E-step=S-MONITOR=VALUE.pt.",
    ),
    click.option(
        "--save-every-epochs", "save_every_n_epochs", type=click.IntRange(min=1),
        help="Keep a checkpoint every N epochs: checkpoints/epoch=E-step=S.pt.",
    ),
    click.option(
        "--save-every", "save_every_n_steps", type=click.IntRange(min=1),
        help="Keep a checkpoint every N optimizer steps: checkpoints/epoch=E-step=S.pt.",
    ),
    click.option(
        "--nonfinite-loss", type=click.Choice(["raise", "skip"]), default=_DEFAULTS["nonfinite_loss"], show_default=True,
        help="A NaN/inf loss stops the run (raise), or its batch is left out (skip: a host read per step).",
    ),
    click.option(
        "--fast-path/--no-fast-path", default=_DEFAULTS["fast_path"], show_default=True,
        help="Gather batches of in-memory tensor data directly, fetch other single-process DataLoaders' "
        "batches without the DataLoader's per-batch bookkeeping (the same batches, faster).",
    ),
    click.option("--compile", is_flag=True, default=_DEFAULTS["compile"], help="torch.compile the model."),
    click.option(
        "--channels-last", is_flag=True, default=_DEFAULTS["channels_last"],
        help="NHWC memory format for the model and image batches.",
    ),
    click.option(
        "--num-threads", type=click.IntRange(min=1),
        help="CPU threads of torch's operators (torch.set_num_threads); default: torch's, one per core.",
    ),
    click.option(
        "--strategy", type=click.Choice(["ddp", "fsdp"]), default=_DEFAULTS["strategy"], show_default=True,
        help="With --nproc N (or under torchrun): a whole model per process (ddp), or each process keeps a shard "
        "of the parameters, gradients and optimizer state (fsdp: FSDP2's fully_shard).",
    ),
    click.option(
        "--shard", multiple=True, metavar="CLASS",
        help="With --strategy fsdp: shard the model's modules of this class (e.g. TransformerEncoderLayer; "
        "repeatable) as units; default: every module with more than 1 M parameters.",
    ),
    click.option(
        "--cpu-offload", is_flag=True, default=_DEFAULTS["cpu_offload"],
        help="With --strategy fsdp: keep the sharded parameters, gradients and optimizer step on the CPU.",
    ),
    click.option(
        "--export", type=click.Choice(["onnx", "pt2", "torchscript"]),
        help="Export the best model once training ends (verified against the eager model).",
    ),
    click.option(
        "--limit-train-batches", type=_BatchLimit(),
        help="Debugging: end each training pass after N batches (an integer) or that fraction of them (0.25).",
    ),
    click.option("--limit-val-batches", type=_BatchLimit(), help="Debugging: the same for validation passes."),
    click.option(
        "--overfit-batches", type=click.IntRange(min=0), default=_DEFAULTS["overfit_batches"],
        help="Debugging: train on the same first N training batches every epoch (can the model learn them?).",
    ),
    click.option(
        "--ema-decay", type=click.FloatRange(0, 1, min_open=True, max_open=True),
        help="Keep an exponential moving average of the weights (e.g. 0.999), updated after every optimizer "
        "step; evaluation, the checkpoints and --export use it.",
    ),
    click.option(
        "--swa-start", type=click.IntRange(min=1), metavar="EPOCH",
        help="Stochastic weight averaging from this epoch on (needs --swa-lr); evaluation, the checkpoints and "
        "--export use the average.",
    ),
    click.option("--swa-lr", type=click.FloatRange(0, min_open=True), help="The learning rate of SWA (SWALR's)."),
]  # fmt: skip


def run_options(command: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a click command with every option that describes a run (``xt run``; reusable by plugins)."""
    for option in reversed(_RUN_OPTIONS):
        command = option(command)
    return command


def run_config(ctx: click.Context, base: str | None = None) -> dict[str, Any]:
    """The run configuration the :func:`run_options` of ``ctx`` describe.

    It starts from the saved configuration ``base`` (default: ``--config``), if any: options given on the
    command line override it, and a new ``--model``/``--data``... name drops the saved options of the old one.
    """
    p = ctx.params
    base = base or p["config_path"]

    def given(name: str) -> bool:
        return ctx.get_parameter_source(name) not in (None, ParameterSource.DEFAULT)

    config = read_config(base, trust=p["trust"]) if base else default_config()
    for kind in COMPONENTS:
        if given(kind):
            old = config[kind]
            config[kind] = {
                "name": p[kind],
                "options": old["options"] if old and old["name"] == p[kind] else {},
            }
        options = parse_options(p[f"{kind}_opt"], f"--{kind}-opt")
        if options and config[kind] is None:
            raise click.UsageError(f"--{kind}-opt needs --{kind} NAME")
        if options:
            config[kind]["options"].update(options)
    if p["lr"] is not None:
        config["optimizer"]["options"]["lr"] = p["lr"]
    if p["batch_size"] is not None:
        if config["data"] is None:
            raise click.UsageError("--batch-size needs --data NAME")
        config["data"]["options"]["batch_size"] = p["batch_size"]

    if p["metrics"]:
        config["metrics"] = {}
        for spec in p["metrics"]:
            key, _, name = spec.rpartition("=")
            key = key or name.rpartition(":")[2]  # `--metric xt-mine:accuracy` is reported as accuracy
            if key in config["metrics"]:
                raise click.UsageError(f"--metric {spec}: {key!r} is chosen twice; name one KEY=NAME")
            config["metrics"][key] = {"name": name, "options": {}}
    for key, options in _item_options(p["metric_opt"], "--metric-opt").items():
        if key not in (config["metrics"] or {}):
            chosen = ", ".join(config["metrics"] or {}) or "none"
            raise click.UsageError(
                f"--metric-opt names metric {key!r}, which is not chosen (chosen: {chosen})"
            )
        config["metrics"][key]["options"].update(options)
    for kind in ("logger", "callback"):
        key = f"{kind}s"
        if p[key]:
            config[key] = [{"name": name, "options": {}} for name in p[key]]
        for name, options in _item_options(p[f"{kind}_opt"], f"--{kind}-opt").items():
            matching = [c for c in config[key] if c["name"] == name]
            if not matching:
                raise click.UsageError(
                    f"--{kind}-opt names {kind} {name!r}, which is not chosen: add --{kind} {name}"
                )
            for component in matching:
                component["options"].update(options)
    for key in SCALARS:
        if given(key) or not base:
            config[key] = p[key]
    if isinstance(config["shard"], tuple):  # --shard given or not (multiple: a tuple)
        config["shard"] = list(config["shard"]) or None
    return config


@cli.command("run")
@run_options
@click.option(
    "--save-dir", type=click.Path(file_okay=False), help="Run directory; default runs/MODEL-DATA-TIME."
)
@click.option(
    "--resume",
    type=click.Path(exists=True, file_okay=False),
    help="Continue the run in this directory where it stopped; --epochs, --device, --num-threads, --logger, "
    "--checkpoint-every, --save-top-k, --save-every(-epochs) and --export may change, other options must be "
    "the run's.",
)
@click.option("--overwrite", is_flag=True, help="Delete the run that --save-dir holds before training.")
@click.option("-q", "--quiet", is_flag=True, help="No console output.")
@click.option(
    "--nproc", type=click.IntRange(min=1), default=1, show_default=True,
    help="Train with N local processes (DDP through torch.distributed.run; gloo on CPU, NCCL on GPUs).",
)  # fmt: skip
@click.option(
    "--nnodes", type=click.IntRange(min=1), default=1, show_default=True,
    help="Machines of the job, each starting --nproc processes: run the same command on every machine, "
    "with --rdzv-endpoint.",
)  # fmt: skip
@click.option(
    "--rdzv-endpoint", metavar="HOST:PORT",
    help="With --nnodes: where the machines meet (torchrun's c10d rendezvous): a host all of them reach, a free port.",
)  # fmt: skip
@click.option(
    "--node-rank", type=click.IntRange(min=0),
    help="With --nnodes: this machine's number, 0 to nnodes-1 (torchrun's static rendezvous at --rdzv-endpoint): "
    "machine 0 holds rank 0, which writes the run directory. Default: ranks as the machines join.",
)  # fmt: skip
@click.option(
    "--print-config", is_flag=True,
    help="Print the configuration as config.json would hold it (every part built, every default filled in); "
    "train nothing, write nothing.",
)  # fmt: skip
@click.option(
    "--dry-run", is_flag=True,
    help="Build everything and train one batch of each pass (train, val, test) in a temporary directory; "
    "write nothing.",
)  # fmt: skip
@click.option(
    "--fast-dev-run", type=click.IntRange(min=1), metavar="N",
    help="As --dry-run, with N batches of each pass.",
)  # fmt: skip
@click.pass_context
def run_command(
    ctx: click.Context,
    save_dir: str | None,
    resume: str | None,
    overwrite: bool,
    quiet: bool,
    nproc: int,
    nnodes: int,
    rdzv_endpoint: str | None,
    node_rank: int | None,
    print_config: bool,
    dry_run: bool,
    fast_dev_run: int | None,
    **_: Any,
) -> None:
    """Train a model on a data set, both picked by name.

    \b
    Example: xt run --model cnn --data synthetic-images --epochs 3 --metric accuracy

    The run directory gets config.json (the fully resolved configuration), history.json and
    checkpoints/{last,best}.pt; `xt run --config RUN_DIR` reproduces the run, `xt run --resume RUN_DIR`
    continues it.
    """
    from . import runs  # lazy: imports torch

    if resume and (save_dir or ctx.params["config_path"]):
        raise click.UsageError("--resume RUN_DIR continues that run in place: drop --save-dir and --config")
    run = run_config(ctx, resume)  # bad options are refused here, before any process starts
    if print_config:
        click.echo(json_text(runs.resolved_config(run)))
        return
    if dry_run or fast_dev_run:
        flag = "--dry-run" if dry_run else "--fast-dev-run"
        if resume or nproc > 1 or nnodes > 1:
            raise click.UsageError(
                f"{flag} checks a new run in one process: drop --resume, --nproc and --nnodes"
            )
        batches = fast_dev_run or 1
        runs.dry_run(run, save_dir, quiet=quiet, batches=batches)
        if not quiet:
            what = "one batch" if batches == 1 else f"{batches} batches"
            click.echo(f"dry run: every part built, {what} of each pass trained; nothing written")
        return
    launch = _torchrun(nproc, nnodes, rdzv_endpoint, node_rank)
    if launch and "RANK" not in os.environ:
        # checked once here, rather than by every process torchrun starts (on every machine: no rank
        # trains before all machines have joined)
        config.checked_run(run)
        if save_dir is not None and not overwrite:
            runs.refuse_held_run(Path(save_dir), False, runs.HELD_RUN_FIX)
        # torchrun's own entry point starts the processes; each runs this command without the launch
        # options. The "--" ends torchrun's options: its parser would otherwise take xt's --monitor for
        # an abbreviation of its --monitor-interval
        args = cli.raw_args
        for option in ("--nproc", "--nnodes", "--rdzv-endpoint", "--node-rank"):
            args = _without_option(args, option)
        sys.exit(subprocess.call([*launch, "-m", "--", "xt_training", *args]))
    run_dir, _history = runs.train(
        run, resume or save_dir, resume=bool(resume), overwrite=overwrite, quiet=quiet
    )
    if not quiet and _is_main():
        click.echo(f"run saved to {run_dir}")
    _finish_distributed()


def _finish_distributed() -> None:
    """A rank whose run succeeded leaves at once, after every rank got here.

    Exiting through the interpreter's teardown lets gloo's threads abort the process now and then
    ("terminate called without an active exception") although the work is done and saved.
    """
    from . import distributed  # lazy: imports torch

    if distributed.active():
        distributed.shutdown()  # flushes stdout/stderr
        os._exit(0)


TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _torchrun(nproc: int, nnodes: int, endpoint: str | None, node_rank: int | None) -> list[str]:
    """The torchrun command line that starts ``xt run --nproc ... --nnodes ...`` (none for one process)."""
    if nnodes == 1:
        if endpoint is not None or node_rank is not None:
            raise click.UsageError("--rdzv-endpoint and --node-rank join machines: add --nnodes N (N > 1)")
        return [] if nproc == 1 else [*TORCHRUN, "--standalone", f"--nproc-per-node={nproc}"]
    if endpoint is None:
        raise click.UsageError(f"--nnodes {nnodes} needs --rdzv-endpoint HOST:PORT, where the machines meet")
    host, _, port = endpoint.rpartition(":")
    if not host or not port.isdigit():
        raise click.UsageError(f"--rdzv-endpoint {endpoint!r} must be HOST:PORT, e.g. 10.0.0.1:29500")
    launch = [*TORCHRUN, f"--nnodes={nnodes}", f"--nproc-per-node={nproc}"]
    if node_rank is None:  # ranks follow the order of joining; any machine may hold rank 0
        return [*launch, "--rdzv-backend=c10d", f"--rdzv-endpoint={endpoint}"]
    if node_rank >= nnodes:
        raise click.UsageError(f"--node-rank {node_rank} must be below --nnodes {nnodes}")
    return [*launch, f"--node-rank={node_rank}", f"--master-addr={host}", f"--master-port={port}"]


def _without_option(args: list[str], option: str) -> list[str]:
    """``args`` without ``option VALUE`` / ``option=VALUE``."""
    out, skip = [], False
    for arg in args:
        if skip:
            skip = False
        elif arg == option:
            skip = True
        elif not arg.startswith(option + "="):
            out.append(arg)
    return out


def _is_main() -> bool:
    """Not a non-zero rank of a torchrun job (those print nothing)."""
    from . import distributed  # lazy: imports torch

    return distributed.is_main()


# --- xt lr-find --------------------------------------------------------------------------------------------
@cli.command("lr-find")
@run_options
@click.option(
    "--save-dir", type=click.Path(file_okay=False),
    help="Directory for lr_find.json (the curve) and lr_find.png (its plot); default runs/lr-find-MODEL-DATA-TIME.",
)  # fmt: skip
@click.option("--min-lr", type=float, default=1e-7, show_default=True, help="The test's first learning rate.")
@click.option("--max-lr", type=float, default=10.0, show_default=True, help="The test's last learning rate.")
@click.option(
    "--num-steps", type=int, default=100, show_default=True,
    help="Training steps of the test, one batch each (the loader is gone through again as often as needed).",
)  # fmt: skip
@click.option("-q", "--quiet", is_flag=True, help="No console output (the files are written).")
@click.pass_context
def lr_find_command(
    ctx: click.Context,
    save_dir: str | None,
    min_lr: float,
    max_lr: float,
    num_steps: int,
    quiet: bool,
    **_: Any,
) -> None:
    """Suggest a learning rate: the range test of Smith 2017, as Lightning's lr_find.

    \b
    Example: xt lr-find --model mlp --data synthetic-classification --optimizer sgd --save-dir runs/lr

    The model, data, loss and optimizer are built as `xt run` builds them (the same options); the model
    trains NUM_STEPS batches while the learning rate grows exponentially from MIN_LR to MAX_LR, stopping
    early once the smoothed loss diverges. It prints the suggestion (where the smoothed loss falls fastest)
    and writes the curve and its plot (the plot needs matplotlib). Nothing is trained for good.
    """
    from . import runs  # lazy: imports torch

    run = run_config(ctx)
    runs.lr_find(run, save_dir, min_lr=min_lr, max_lr=max_lr, num_steps=num_steps, quiet=quiet)


# --- xt train / xt test / xt template ------------------------------------------------------------------------
@cli.command("train")
@click.argument("config_file", type=click.Path(exists=True, dir_okay=False))
@click.option("--save-dir", type=click.Path(file_okay=False), help="Run directory; default runs/CONFIG-TIME.")
@click.option("--seed", type=int, help="Seed Python, NumPy and torch before the config file runs.")
@click.option("--overwrite", is_flag=True, help="Delete the run that --save-dir holds before training.")
@click.option("-q", "--quiet", is_flag=True, help="No console output.")
def train_command(
    config_file: str, save_dir: str | None, seed: int | None, overwrite: bool, quiet: bool
) -> None:
    """Train what a Python config file defines.

    The original xt-training format: CONFIG_FILE defines model, train_loader, optimizer, loss_fn and
    epochs, and optionally any other argument of F.train (val_loader, test_loaders, eval_metrics,
    scheduler, ...). The file is run as Python code: only use config files you trust. `xt template DIR`
    writes an example.
    """
    from . import runs  # lazy: imports torch

    run_dir, _history = runs.train_config_file(
        config_file, save_dir, seed=seed, overwrite=overwrite, quiet=quiet
    )
    if not quiet and _is_main():
        click.echo(f"run saved to {run_dir}")


@cli.command("test")
@click.argument("source", type=click.Path(exists=True))
@click.option(
    "--checkpoint",
    metavar="best|last|FILE",
    help="Which checkpoint of RUN_DIR: best (default), last, or a checkpoint file.",
)
@click.option(
    "--data",
    help="Test on this data set (`xt list data`); a run of F.train records none.",
    shell_complete=complete_names("data"),
)
@click.option("--data-opt", multiple=True, metavar="KEY=VALUE", help="An option of --data (repeatable).")
@click.option(
    "--split",
    "splits",
    multiple=True,
    help="Data split to evaluate (RUN_DIR only); default: the test splits.",
)
@click.option(
    "--save-dir", type=click.Path(file_okay=False), help="Write test_results.json and results.pt here."
)
@click.option("--device", help="cpu, cuda, ...")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON (and no progress).")
@click.option("-q", "--quiet", is_flag=True, help="No console output.")
@trust_option
def test_command(
    source: str,
    checkpoint: str | None,
    data: str | None,
    data_opt: tuple[str, ...],
    splits: tuple[str, ...],
    save_dir: str | None,
    device: str | None,
    as_json: bool,
    quiet: bool,
    trust: bool,
) -> None:
    """Evaluate a saved model on test data.

    SOURCE is a run directory of any kind (`xt run`, `xt train`, F.train) or a Python config file. A
    run's model is rebuilt and loaded from its best checkpoint (or --checkpoint), and the results are
    written into it. A run of `xt run` is tested on its data's test splits, one of `xt train` on its
    config file's test_loaders (that file is run as Python code: with --trust only), one of F.train on
    --data. A config file must define model and test_loaders; it is run as Python code: only use config
    files you trust.
    """
    from . import runs  # lazy: imports torch

    path = Path(source)
    if path.name == CONFIG_FILE:
        path = path.parent
    quiet = quiet or as_json
    if path.is_dir():
        results = runs.test(
            path, checkpoint=checkpoint or "best", splits=list(splits), data=data,
            data_options=parse_options(data_opt, "--data-opt"), save_dir=save_dir, device=device, quiet=quiet,
            trust=trust,
        )  # fmt: skip
    elif path.suffix == ".py":
        if splits:
            raise click.UsageError("--split applies to run directories; a config file names its test_loaders")
        if checkpoint in ("best", "last"):
            raise click.UsageError(
                f"--checkpoint {checkpoint} picks a checkpoint of a run directory; with a config file, pass "
                "the checkpoint file, e.g. --checkpoint RUN_DIR/checkpoints/best.pt"
            )
        results = runs.test_config_file(
            path, checkpoint=checkpoint, save_dir=save_dir, device=device, quiet=quiet
        )
        if checkpoint is None:  # not refused: the file may load trained weights itself. Last, to be seen
            click.echo(
                f"xt: warning: no --checkpoint: these are the results of the model as {path} makes it, with "
                "no checkpoint loaded; pass --checkpoint RUN_DIR/checkpoints/best.pt to test a trained one",
                err=True,
            )
    else:
        raise click.UsageError(f"{source!r} is neither a run directory nor a Python config file (.py)")
    if as_json:
        click.echo(json_text(results))


TEMPLATE = '''"""An xt-training config: `xt train {name}` trains it, `xt test {name} --checkpoint RUN/checkpoints/best.pt`
evaluates it. It is plain Python and PyTorch, executed as code: replace the data and model with your own.

Required: model, train_loader, optimizer, loss_fn, epochs. Optional: any other argument of
xt_training.utils.functional.train (val_loader, test_loaders, eval_metrics, scheduler, monitor, ...).
"""

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics

# Data: any DataLoaders yielding (x, y) batches. Here: 1200 rows of 20 features in 3 classes.
g = torch.Generator().manual_seed(0)
x = torch.randn(1200, 20, generator=g)
y = (x @ torch.randn(20, 3, generator=g)).argmax(1)
train_loader = DataLoader(TensorDataset(x[:800], y[:800]), batch_size=64, shuffle=True)
val_loader = DataLoader(TensorDataset(x[800:1000], y[800:1000]), batch_size=64)
test_loaders = {{"test": DataLoader(TensorDataset(x[1000:], y[1000:]), batch_size=64)}}

# Model, loss and optimizer: plain PyTorch.
torch.manual_seed(0)
model = nn.Sequential(nn.Linear(20, 64), nn.ReLU(), nn.Linear(64, 3))
loss_fn = nn.CrossEntropyLoss()
optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=5)
epochs = 5

eval_metrics = {{"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC()}}
monitor = "val/acc"
'''


@cli.command("template")
@click.argument("directory", type=click.Path(file_okay=False))
@click.option("--force", is_flag=True, help="Overwrite an existing config.py.")
def template_command(directory: str, force: bool) -> None:
    """Write a starter config file.

    It goes to DIRECTORY/config.py (DIRECTORY is made if needed), ready for `xt train DIRECTORY/config.py`.
    """
    if directory.endswith(".py"):
        raise click.UsageError(
            f"{directory!r} names a file; xt template takes a directory and writes DIRECTORY/config.py: "
            f"`xt template {directory.removesuffix('.py')}`"
        )
    target = Path(directory) / "config.py"
    if target.exists() and not force:
        raise click.UsageError(f"'{target}' exists; pass --force to overwrite it")
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(TEMPLATE.format(name=target))
    click.echo(f"wrote {target}; train it with: xt train {target}")


@cli.group("new")
def new_group() -> None:
    """Write a new project part from a template."""


@new_group.command("plugin")
@click.argument("name")
@click.option("--dir", "parent", default=".", show_default=True, type=click.Path(file_okay=False),
              help="Where the plugin's directory xt-NAME is made.")  # fmt: skip
def new_plugin_command(name: str, parent: str) -> None:
    """Write a working plugin package, xt-NAME, with one of each kind and its tests.

    It registers a model, a data set, a metric (with its direction), a logger, a callback and a command,
    all named NAME-..., and its tests run each through the real `xt`.
    """
    target = scaffold.new_plugin(name, parent)
    click.echo(
        f"wrote {target}/: a model, data, a metric, a logger, a callback and a command ({target}/README.md)"
    )
    click.echo(f"install and test it: pip install -e '{target}[test]' && pytest {target}")


# --- xt list / xt info / xt plugins ---------------------------------------------------------------------------
@cli.command("list")
@click.argument("kind", required=False, shell_complete=_complete_kinds(registry.KINDS.values()))
@click.argument("pattern", required=False, default="*")
@click.option(
    "--json", "as_json", is_flag=True, help="Print name, kind, plugin, distribution and description as JSON."
)
def list_command(kind: str | None, pattern: str, as_json: bool) -> None:
    """List registered names by kind.

    All kinds, or one KIND (models, data, metrics, loggers, losses, optimizers, schedulers, callbacks)
    with names matching PATTERN (e.g. 'res*').
    """
    kinds = [registry.canonical_kind(kind)] if kind else list(registry.KINDS)
    rows = [entry for k in kinds for entry in registry.entries(k, pattern)]
    if as_json:
        keys = ("kind", "name", "plugin", "distribution", "version", "description")
        click.echo(json_text([{k: getattr(e, k) for k in keys} for e in rows]))
        return
    if not rows and kind:
        click.echo(
            f"no {registry.KINDS[kinds[0]]} match {pattern!r}; `xt list {registry.KINDS[kinds[0]]}` shows all",
            err=True,
        )
        return
    reg = registry.current()
    shown = {id(e): registry.qualified(e) if e.name in reg.clashes[e.kind] else e.name for e in rows}
    width = max(map(len, shown.values()), default=0)
    for k in kinds:
        entries = [e for e in rows if e.kind == k]
        if len(kinds) > 1:
            click.echo(f"{registry.KINDS[k]}:" + ("" if entries else " (none)"))
        for e in entries:
            origin = "" if e.distribution == "xt-training" else f"  [{e.distribution or e.plugin}]"
            click.echo(f"  {shown[id(e)]:<{width}}  {e.description}{origin}")
    for line in reg.conflicts():
        if line.split(" ", 1)[0] in kinds:
            click.echo(f"xt: warning: {line}", err=True)


@cli.command("info")
@click.argument("kind", shell_complete=_complete_kinds(registry.KINDS))
@click.argument("name", shell_complete=_complete_kind_names)
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
def info_command(kind: str, name: str, as_json: bool) -> None:
    """Show a name's plugin and options.

    Where NAME of KIND comes from and the options its factory takes: each with its type, default and
    description (from the factory's docstring). This imports the factory.
    """
    info = registry.info(kind, name)
    if as_json:
        click.echo(json.dumps(info, indent=2, default=repr))
        return
    dist = f" ({info['distribution']} {info['version']})" if info["distribution"] else ""
    click.echo(f"{info['kind']} {info['name']}: {info['description']}")
    click.echo(f"  plugin:  {info['plugin']}{dist}")
    click.echo(f"  factory: {info['factory']}")
    for key, value in info["metadata"].items():
        click.echo(f"  {key}: {value}")
    click.echo("  options:" + ("" if info["options"] else " none"))
    width = max((len(n) for n in info["options"]), default=0)
    indent = " " * (width + 6)  # the description under the type, wrapped to the help's width
    for option, spec in info["options"].items():
        default = "required" if spec["required"] else f"default {spec['default']!r}"
        click.echo(f"    {option:<{width}}  {spec['type']}, {default}")
        if spec["description"]:
            click.echo(
                textwrap.fill(spec["description"], 110, initial_indent=indent, subsequent_indent=indent)
            )
    if info["any_option"]:
        click.echo("    (and any other keyword option, passed through)")


@cli.command("plugins")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.option("--timings", is_flag=True, help="Show how long each plugin took to load (import and register).")
@click.pass_context
def plugins_command(ctx: click.Context, as_json: bool, timings: bool) -> None:
    """List plugins and what they registered.

    Each plugin's distribution, version, status, hooks and names; broken ones with their error. Every
    xt command loads the plugins: --timings (or XT_TRACE_PLUGINS=1 for any command) shows which are slow.
    """
    reg = cli.loaded(ctx)
    plugins = list(reg.plugins.values())
    conflicts = reg.conflicts()
    owners = ctx.find_root().meta["xt.command_owners"]
    commands = {p.name: sorted(n for n, owner in owners.items() if owner == p.name) for p in plugins}
    if as_json:
        keys = (
            "name",
            "distribution",
            "version",
            "status",
            "builtin",
            "hooks",
            "registered",
            "error",
            "seconds",
        )
        payload = {
            "plugins": [{**{k: getattr(p, k) for k in keys}, "commands": commands[p.name]} for p in plugins],
            "conflicts": conflicts,
        }
        click.echo(json_text(payload))
        return
    for p in plugins:
        dist = f"{p.distribution} {p.version or ''}".strip() if p.distribution else "(module)"
        took = f"  {p.seconds:.3f} s" if timings and p.seconds is not None else ""
        click.echo(f"{p.name}  {dist}  {p.status}{took}" + (f": {p.error}" if p.error else ""))
        if p.hooks:
            click.echo(f"  hooks: {', '.join(p.hooks)}")
        for kind, names in p.registered.items():
            click.echo(f"  {registry.KINDS[kind]}: {', '.join(names)}")
        if commands[p.name]:
            click.echo(f"  commands: {', '.join(commands[p.name])}")
    for line in conflicts:
        click.echo(f"conflict: {line}")


@cli.command("env")
@click.option("--json", "as_json", is_flag=True, help="Print as JSON.")
@click.pass_context
def env_command(ctx: click.Context, as_json: bool) -> None:
    """Print what a bug report needs to know about this machine.

    Versions (Python, torch with its CUDA and cuDNN, xt-training, the libraries it uses), the devices
    torch sees, the installed plugins and the environment variables that change what a run does
    (CUDA_VISIBLE_DEVICES, XT_*, TORCH_HOME, HF_HOME, WORLD_SIZE, RANK, ...; none whose name says it
    holds a secret). Paste it into the report.
    """
    env = environment(cli.loaded(ctx))
    click.echo(json_text(env) if as_json else format_environment(env))


# --- xt show / xt plot ----------------------------------------------------------------------------------------
@cli.command("show")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option(
    "--json", "as_json", is_flag=True,
    help="Print the run's summary, history and configuration as JSON (run directories only).",
)  # fmt: skip
@click.pass_context
def show_command(ctx: click.Context, run_dir: str, as_json: bool) -> None:
    """Print how a run went, its per-epoch metrics and its configuration.

    First the result: status, epochs, the best epoch and its monitored value, the checkpoints; then the
    history table; then the configuration. Plugins show their own kinds of directories (`xt tune`
    studies) through the hook show_directory.
    """
    text = cli.loaded(ctx).pm.hook.show_directory(path=Path(run_dir))
    if as_json:
        if text is not None:
            raise click.UsageError(f"'{run_dir}' is a plugin's directory, shown as text: drop --json")
        report.show(run_dir)  # the checks of a run directory that the text applies
        click.echo(json_text(report.summary(run_dir)))
        return
    click.echo(report.show(run_dir) if text is None else text)


@cli.command("runs")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, file_okay=False))
@click.option(
    "--sort", type=click.Choice(report.RUNS_COLUMNS), default="best", show_default=True,
    help="Column to sort by: best puts each run's best monitored value first; started, the latest.",
)  # fmt: skip
@click.option(
    "--compare", is_flag=True, help="Put the runs side by side: results, values, differing options."
)
@click.option("--json", "as_json", is_flag=True, help="Print each run's summary as JSON.")
def runs_command(paths: tuple[str, ...], sort: str, compare: bool, as_json: bool) -> None:
    """List the runs under directories as a table, or compare them.

    PATHS are run directories or directories that hold runs (searched below; default: runs). One line
    per run: its directory, status, epochs done (of planned), monitored value, best value and its
    epoch, start time and duration.

    \b
    Examples:
      xt runs                           the runs under runs/, the best first
      xt runs runs/sweep --sort started the latest first
      xt runs runs/a runs/b --compare   side by side: results, values at the best epoch, differing options
    """
    if not paths and not Path("runs").is_dir():
        raise click.UsageError("there is no runs/ directory here; pass the directories that hold your runs")
    summaries = report.runs(list(paths or ["runs"]), sort=sort)
    if as_json:
        click.echo(json_text(summaries))
    elif not summaries:
        click.echo(f"no run directories under {', '.join(paths or ['runs'])}", err=True)
    elif compare:
        if len(summaries) < 2:
            raise click.UsageError(f"--compare needs two runs or more; found one: {summaries[0]['run']}")
        click.echo(report.compare(summaries))
    else:
        click.echo(report.runs_table(summaries))


@cli.command("plot")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("-o", "--out", type=click.Path(dir_okay=False), help="PNG file; default RUN_DIR/curves.png.")
@click.pass_context
def plot_command(ctx: click.Context, run_dir: str, out: str | None) -> None:
    """Draw a run's curves into a PNG.

    Loss and metric curves per loader (needs matplotlib: pip install matplotlib). Plugins draw
    directories of their own kinds through the hook plot_directory.
    """
    written = cli.loaded(ctx).pm.hook.plot_directory(
        path=Path(run_dir), out=None if out is None else Path(out)
    )
    for path in [report.plot(run_dir, out)] if written is None else written:
        click.echo(f"wrote {path}")
