"""mkdocs hooks: the parts of the docs that are generated from the code at build time, so they cannot drift.

A page asks for generated content with a marker line; the build replaces it:

- ``<!-- xt:cli -->``: the ``xt`` command reference, from the click commands (:mod:`reference`);
- ``<!-- xt:hooks -->``: the plugin hook reference, from ``xt_training/hookspecs.py``;
- ``<!-- xt:names -->``: every registered name with its options, from the registry;
- ``<!-- xt:errors -->``: the bad-input table, each message produced by triggering it (:mod:`bad_input`);
- ``<!-- xt:benchmarks -->``: ``benchmarks/RESULTS.md`` (and ``RESULTS-GPU.md``), as the harness last wrote them;
- ``<!-- xt:source PATH -->``: a file of the repository (an example) as a code block.

An unknown marker fails the build. After rendering, the Sphinx roles that the package's docstrings use
(``:class:`~xt_training.Runner```) and reStructuredText's ``Usage::`` become plain code and a colon.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).parent))

import bad_input  # noqa: E402
import reference  # noqa: E402

ROOT = reference.ROOT
MARKER = re.compile(r"^( *)<!-- xt:([\w-]+)(?: ([^ ]+))? -->$", re.M)
_cache: dict[str, str] = {}


def _benchmarks() -> str:
    """RESULTS.md, then RESULTS-GPU.md where a GPU run wrote it, with headings one level down and their
    titles dropped (the page has its own)."""
    parts = []
    for name in ("RESULTS.md", "RESULTS-GPU.md"):
        file = ROOT / "benchmarks" / name
        if file.is_file():
            text = re.sub(r"\A# .*\n", "", file.read_text())
            parts.append(re.sub(r"^(#+) ", r"\1# ", text, flags=re.M))
    return "\n".join(parts)


def _source(path: str) -> str:
    file = (ROOT / path).resolve()
    if ROOT not in file.parents or not file.is_file():
        raise ValueError(f"<!-- xt:source {path} -->: no such file in the repository")
    language = {".py": "python", ".toml": "toml", ".md": "markdown", ".sh": "bash"}.get(file.suffix, "text")
    return f'```{language} title="{path}"\n{file.read_text().rstrip()}\n```'


GENERATORS = {
    "cli": reference.cli_reference,
    "hooks": reference.hook_reference,
    "names": reference.names_reference,
    "errors": bad_input.errors_table,
    "benchmarks": _benchmarks,
}


def _generate(match: re.Match[str]) -> str:
    """The content a marker asks for, indented like the marker (e.g. inside a collapsible block)."""
    indent, kind, argument = match.groups()
    if kind == "source" and argument:
        text = _source(argument)
    elif kind in GENERATORS and not argument:
        if kind not in _cache:  # one build runs each generator once
            _cache[kind] = GENERATORS[kind]()
        text = _cache[kind]
    else:
        raise ValueError(
            f"unknown docs marker {match.group(0).strip()!r}; markers: {', '.join(GENERATORS)}, source PATH"
        )
    return "\n".join(indent + line if line else line for line in text.splitlines())


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    return MARKER.sub(_generate, markdown)


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _role(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub(_role, html).replace("::</p>", ":</p>")


def on_pre_build(config: Any) -> None:
    _cache.clear()  # `mkdocs serve` regenerates on every rebuild
