"""The API reference as plain markdown, from the docstrings: what a reader of ``docs/reference/api/*.md`` on
GitHub sees, where the site shows mkdocstrings' rendering of the same ``::: path`` directives.

Each directive (``::: xt_training.checkpoint`` and its ``options:``, as mkdocstrings reads them) becomes the
object's heading, signature and docstring, and those of its public documented members, read by griffe
(mkdocstrings' own reader) without importing the package. The options honoured are the ones the pages use:
``members``, ``heading_level``, ``show_root_heading`` and ``heading``. Every object gets an anchor with
mkdocstrings' id (``#xt_training.runner.Runner``), so links into the site's pages work on GitHub too.
"""

from __future__ import annotations

import logging
import re
from typing import Any

import yaml
from reference import ROOT, rst_to_markdown

_DIRECTIVE = re.compile(r"^::: ([\w.]+)\n((?:[ \t]+.*\n?|\n)*)", re.M)


def directives(text: str) -> list[tuple[str, dict[str, Any]]]:
    """``[(path, options)]`` of the ``::: path`` directives in ``text``."""
    found = []
    for match in _DIRECTIVE.finditer(text):
        block = yaml.safe_load(match.group(2)) if match.group(2).strip() else None
        found.append((match.group(1), (block or {}).get("options") or {}))
    return found


def api_reference(text: str) -> str:
    """Markdown of every ``::: path`` directive in ``text``."""
    import griffe

    logging.getLogger("griffe").setLevel(logging.ERROR)  # its notes on the "a, b: ..." parameter lines
    package = griffe.load("xt_training", search_paths=[str(ROOT)], docstring_parser="google")
    parts = []
    for path, options in directives(text):
        obj = package[path.removeprefix("xt_training.")]
        level = options.get("heading_level", 2)
        if options.get("show_root_heading", True):
            parts.append(_object(obj, level, options.get("heading"), options.get("members")))
        else:
            parts += [_docstring(obj)] + [_object(m, level) for m in _members(obj, options.get("members"))]
    return "\n\n".join(p for p in parts if p)


def _members(obj: Any, names: list[str] | None = None) -> list[Any]:
    """The members mkdocstrings shows: those named, else the public documented ones defined here, in order."""
    if names is not None:
        return [obj.members[name] for name in names]
    members = [
        m
        for name, m in obj.members.items()
        if not name.startswith("_") and not m.is_alias and m.docstring and m.kind.value != "module"
    ]
    return sorted(members, key=lambda m: m.lineno or 0)


def _object(obj: Any, level: int, heading: str | None = None, names: list[str] | None = None) -> str:
    """An object's anchor, heading, signature and docstring, and its members one level down."""
    kind = obj.kind.value
    parts = [
        f'<a id="{obj.path}"></a>\n\n{"#" * level} `{heading or obj.name}`',
        _signature(obj),
        _docstring(obj),
    ]
    if kind in ("class", "module"):
        parts += [_object(m, min(level + 1, 6)) for m in _members(obj, names)]
    return "\n\n".join(p for p in parts if p)


def _signature(obj: Any) -> str:
    kind = obj.kind.value
    if kind == "attribute":
        value = f" = {obj.value}" if obj.value is not None else ""
        annotation = f": {obj.annotation}" if obj.annotation is not None else ""
        return f"```python\n{obj.name}{annotation}{value}\n```" if value or annotation else ""
    if kind == "class":
        init = obj.members.get("__init__")
        params = list(init.parameters)[1:] if init is not None and not init.is_alias else []
        bases = f"({', '.join(str(b) for b in obj.bases)})" if obj.bases and not params else ""
        return f"```python\nclass {obj.name}{bases}{_parameters(params) if params else ''}\n```"
    if kind == "function":
        params = list(obj.parameters)
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        returns = f" -> {obj.returns}" if obj.returns is not None else ""
        return f"```python\n{obj.name}{_parameters(params)}{returns}\n```"
    return ""


def _parameters(params: list[Any]) -> str:
    """``(a: int, b: str = 'x', *, c=None)``, one parameter a line when it does not fit 90 columns."""
    items = []
    for i, p in enumerate(params):
        kind = p.kind.value
        if kind == "keyword-only" and all(
            q.kind.value not in (kind, "variadic positional") for q in params[:i]
        ):
            items.append("*")
        prefix = {"variadic positional": "*", "variadic keyword": "**"}.get(kind, "")
        annotation = f": {p.annotation}" if p.annotation is not None else ""
        default = f" = {p.default}" if p.default is not None and not prefix else ""
        items.append(f"{prefix}{p.name}{annotation}{default}")
        if kind == "positional-only" and (i + 1 == len(params) or params[i + 1].kind != p.kind):
            items.append("/")
    one_line = f"({', '.join(items)})"
    return one_line if len(one_line) <= 90 else "(\n" + "".join(f"    {item},\n" for item in items) + ")"


def _docstring(obj: Any) -> str:
    """The docstring's sections as markdown: text, then parameters, returns, raises... as lists."""
    if obj.docstring is None:
        return ""
    out = []
    for section in obj.docstring.parsed:
        kind = section.kind.value
        if kind == "text":
            out.append(rst_to_markdown(section.value))
        elif kind == "admonition":
            out.append(f"**{section.title}:** {rst_to_markdown(section.value.contents)}")
        elif kind == "examples":
            out.append(
                "**Examples:**\n\n"
                + "\n\n".join(
                    rst_to_markdown(v) if k.value == "text" else f"```pycon\n{v}\n```"
                    for k, v in section.value
                )
            )
        elif kind in ("returns", "yields", "receives"):  # their types are the signature's
            text = "\n".join(item.description for item in section.value)
            out.append(f"**{kind.capitalize()}:** {rst_to_markdown(text)}")
        else:  # parameters, raises, attributes...: a list, each item's own lines kept (nested lists)
            items = [
                f"- `{item.name}`: {_item(item.description)}"
                if getattr(item, "name", None)
                else f"- `{item.annotation}`: {_item(item.description)}"
                for item in section.value
            ]
            out.append(f"**{(section.title or kind).capitalize()}:**\n\n" + "\n".join(items))
    return "\n\n".join(out)


def _item(text: str) -> str:
    """A list item's text: its later lines indented under the first."""
    return "\n".join(
        ("  " + line if line and i else line) for i, line in enumerate(rst_to_markdown(text).splitlines())
    )
