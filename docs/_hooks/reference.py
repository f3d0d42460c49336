"""Reference pages generated from the code: the ``xt`` commands, the plugin hooks and the registered names.

Each function returns markdown. They read the live objects -- the click commands of ``xt_training.cli.cli``,
the hook specifications of ``xt_training.hookspecs``, the registry -- so the reference is whatever the code
is at build time. The plugins in this repository's ``plugins/`` directory are loaded from their source
(with autoload off, so an installed copy is not loaded twice) and their commands and names are listed
with the distribution that adds them.
"""

from __future__ import annotations

import contextlib
import inspect
import re
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
PLUGINS_DIR = ROOT / "plugins"
#: the terminal width the CLI help is rendered for
HELP_WIDTH = 100


# --- the repository's plugins, loaded from source --------------------------------------------------------
def repo_plugins() -> dict[str, str]:
    """``{plugin module: distribution}`` of every plugin under ``plugins/``, from its pyproject's entry point."""
    found = {}
    for pyproject in sorted(PLUGINS_DIR.glob("*/pyproject.toml")):
        text = pyproject.read_text()
        name = re.search(r'^name\s*=\s*"([^"]+)"', text, re.M)
        section = re.search(r"^\[project\.entry-points\.xt_training\]\n((?:[^\[\n].*\n?)*)", text, re.M)
        if not (name and section):
            continue
        for module in re.findall(r'^\s*[\w.-]+\s*=\s*"([\w.]+)"', section.group(1), re.M):
            found[module] = name.group(1)
    return found


@contextlib.contextmanager
def repo_registry() -> Iterator[Any]:
    """The registry of the built-in plugins and the repository's plugins (autoload off), made current."""
    from xt_training import registry

    paths = [str(p.parent) for p in sorted(PLUGINS_DIR.glob("*/pyproject.toml"))]
    saved_path = list(sys.path)
    sys.path[:0] = paths
    try:
        reg = registry.load(list(repo_plugins()), environ={registry.DISABLE_AUTOLOAD_ENV: "1"})
        broken = [p for p in reg.plugins.values() if p.status == "broken"]
        if broken or reg.problems:
            raise RuntimeError(f"the docs load every plugin of this repository; {'; '.join(reg.problems)}")
        yield reg
    finally:
        sys.path[:] = saved_path
        registry.reset()


def _origin(plugin: str, reg: Any) -> str:
    status = reg.plugins[plugin]
    if status.builtin:
        return "built in"
    return f"plugin `{repo_plugins().get(plugin, status.distribution or plugin)}` (`plugins/`)"


# --- xt commands ----------------------------------------------------------------------------------------
def cli_commands() -> dict[str, tuple[Any, str]]:
    """``{command name: (click command, where it comes from)}`` of ``xt`` with the repository's plugins."""
    import click

    from xt_training.cli import cli

    with repo_registry() as reg:
        collector = click.Group()  # what the plugins add, as `xt` collects it per invocation
        owners = reg.add_commands(collector)
        ctx = click.Context(cli, info_name="xt")
        ctx.params = {"plugins": ()}
        ctx.meta["xt.registry"], ctx.meta["xt.commands"] = reg, collector.commands
        return {
            name: (cli.get_command(ctx, name), _origin(owners[name], reg) if name in owners else "built in")
            for name in cli.list_commands(ctx)
        }


def _help(command: Any, path: list[str]) -> str:
    """The command's ``--help`` text, as a terminal of :data:`HELP_WIDTH` columns shows it."""
    import click

    ctx = click.Context(command, info_name=path[-1], parent=_top_context(), **_WIDTH)
    return command.get_help(ctx)


_WIDTH = {"terminal_width": HELP_WIDTH, "max_content_width": HELP_WIDTH}


def _top_context() -> Any:
    """The context of ``xt`` itself, with its settings (``-h``/``--help``), for a terminal of HELP_WIDTH."""
    import click

    from xt_training.cli import cli

    return click.Context(cli, info_name="xt", **{**cli.context_settings, **_WIDTH})


def cli_reference() -> str:
    """Markdown: ``xt --help``, then one section per command with its ``--help`` text."""

    commands = cli_commands()
    top = _top_context()
    listing = "\n".join(
        f"| [`xt {name}`](#xt-{name}) | {command.get_short_help_str(80)} | {origin} |"
        for name, (command, origin) in commands.items()
    )
    parts = [
        "| command | what it does | from |\n|---|---|---|\n" + listing,
        "## `xt`\n\n```text\n" + _global_help(top) + "\n```",
    ]
    for name, (command, origin) in commands.items():
        parts.append(f"## `xt {name}`\n\n*{origin}*\n\n```text\n{_help(command, ['xt', name])}\n```")
    return "\n\n".join(parts)


def _global_help(ctx: Any) -> str:
    """``xt --help`` without the command list (the table above lists the commands with the plugins')."""
    import click

    command = ctx.command
    formatter = ctx.make_formatter()
    command.format_usage(ctx, formatter)
    command.format_help_text(ctx, formatter)
    click.Command.format_options(command, ctx, formatter)
    return formatter.getvalue().rstrip()


# --- plugin hooks -----------------------------------------------------------------------------------------
def hookspecs() -> dict[str, Any]:
    """``{hook name: specification function}`` in the order of ``xt_training/hookspecs.py``."""
    from xt_training import hookspecs as module

    specs = [
        (name, fn)
        for name, fn in vars(module).items()
        if inspect.isfunction(fn) and hasattr(fn, "xt_training_spec")
    ]
    return dict(sorted(specs, key=lambda item: item[1].__code__.co_firstlineno))


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):`~?([^`]+)`")


def rst_to_markdown(text: str) -> str:
    """The reStructuredText of the hook docstrings as markdown: roles and ````code````, ``::`` blocks."""
    text = _ROLE.sub(lambda m: f"`{m.group(1)}`", text)
    text = re.sub(r"``([^`]+)``", r"`\1`", text)
    out: list[str] = []
    lines = text.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.rstrip().endswith("::") and not line.lstrip().startswith(":"):
            out.append(line.rstrip()[:-1])
            block = []
            i += 1
            while i < len(lines) and (not lines[i].strip() or lines[i].startswith("    ")):
                block.append(lines[i])
                i += 1
            code = textwrap.dedent("\n".join(block)).strip("\n")
            language = "toml" if code.lstrip().startswith("[") else "python" if _parses(code) else "text"
            out += ["", f"```{language}", code, "```", ""]
            continue
        out.append(line)
        i += 1
    return "\n".join(out)


def _parses(code: str) -> bool:
    try:
        compile(code, "<docstring>", "exec")
    except SyntaxError:
        return False
    return True


def parse_hook_doc(doc: str) -> tuple[str, dict[str, str], str | None, str]:
    """A hook docstring as ``(summary, {parameter: description}, return description, body)``."""
    lines = inspect.cleandoc(doc).splitlines()
    summary = lines[0]
    params: dict[str, str] = {}
    returns = None
    body: list[str] = []
    field: list[str] | None = None
    for line in lines[1:]:
        match = re.match(r":param (\w+):\s*(.*)", line)
        if match:
            field = [match.group(2)]
            params[match.group(1)] = field  # type: ignore[assignment]
            continue
        match = re.match(r":returns?:\s*(.*)", line)
        if match:
            field = [match.group(1)]
            returns = field  # type: ignore[assignment]
            continue
        if field is not None and line.startswith("    "):
            field.append(line.strip())
            continue
        field = None
        body.append(line)
    join = " ".join
    return (
        summary,
        {k: join(v) for k, v in params.items()},  # type: ignore[arg-type]
        join(returns) if returns is not None else None,  # type: ignore[arg-type]
        "\n".join(body).strip(),
    )


def hook_reference() -> str:
    """Markdown: the contract of ``xt_training/hookspecs.py`` and one section per hook."""
    from xt_training import hookspecs as module

    names = hookspecs()
    listing = "\n".join(
        f"| [`{name}`](#{name}) | {rst_to_markdown(parse_hook_doc(fn.__doc__ or '-')[0])} |"
        for name, fn in names.items()
    )
    parts = [
        rst_to_markdown(inspect.cleandoc(module.__doc__ or "").split("\n", 1)[1].strip()),
        "## The hooks\n\n| hook | what it is for |\n|---|---|\n" + listing,
    ]
    for name, fn in names.items():
        summary, params, returns, body = parse_hook_doc(fn.__doc__ or "")
        signature = inspect.signature(fn)
        args = ", ".join(signature.parameters)
        spec = fn.xt_training_spec
        section = [f"### `{name}`", "", f"`{name}({args})`: {rst_to_markdown(summary)}", ""]
        if spec.get("firstresult"):
            section += ["*firstresult: the first plugin that returns something other than `None` wins.*", ""]
        section += ["| parameter | description |", "|---|---|"]
        section += [f"| `{p}` | {rst_to_markdown(params.get(p, ''))} |" for p in signature.parameters]
        if returns is not None:
            section += ["", f"**Returns:** {rst_to_markdown(returns)}"]
        if body:
            section += ["", rst_to_markdown(body)]
        parts.append("\n".join(section))
    return "\n\n".join(parts)


# --- registered names -------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    return str(value).replace("|", "\\|").replace("\n", " ")


def names_reference() -> str:
    """Markdown: every registered name of every kind with its description, options and plugin.

    The built-in names come first. Names of one plugin that differ only by name (xt-vision's torchvision
    models: same options, the same description but for the name) share one row.
    """
    from xt_training import registry

    parts = []
    with repo_registry() as reg:
        for kind, plural in registry.KINDS.items():
            groups: dict[tuple[bool, str, str, str], list[str]] = {}
            for name in reg.names(kind):
                info = reg.info(kind, name)
                options = ", ".join(
                    f"`{opt}`" if spec["required"] else f"`{opt}={spec['default']!r}`"
                    for opt, spec in info["options"].items()
                )
                if info["any_option"]:
                    options += (", " if options else "") + "any other keyword option"
                plugin = reg.table(kind)[name].plugin
                pattern = (
                    info["description"].replace(name, "NAME") if not reg.plugins[plugin].builtin else name
                )
                key = (not reg.plugins[plugin].builtin, _origin(plugin, reg), pattern, options)
                groups.setdefault(key, []).append((name, info["description"]))
            rows = ["| name | description | options | from |", "|---|---|---|---|"]
            for (_, origin, pattern, options), members in sorted(groups.items(), key=lambda g: g[0][:2]):
                if len(members) > 3:  # one row: the names, and the description with NAME for each
                    names, description = ", ".join(f"`{n}`" for n, _ in members), pattern
                else:
                    rows += [
                        f"| `{n}` | {_cell(d)} | {_cell(options) or '-'} | {origin} |" for n, d in members
                    ]
                    continue
                rows.append(f"| {names} | {_cell(description)} | {_cell(options) or '-'} | {origin} |")
            parts.append(f"## {plural.capitalize()}\n\n" + "\n".join(rows))
    return "\n\n".join(parts)
