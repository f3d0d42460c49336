"""The parts of the docs generated from the code, written into the pages so that they read as plain markdown.

A page holds each generated part between a begin and an end marker, and the text between them is committed:

    <!-- xt:KIND ARGUMENT -->
    ...generated text...
    <!-- /xt:KIND -->

``python docs/_hooks/xt_docs.py`` regenerates every part in place (``nox -s docs`` runs it before the build);
``--check`` only says which pages differ from what the code generates, as ``tests/test_docs.py`` does. Kinds:

- ``cli``: the ``xt`` command reference, from the click commands (:mod:`reference`);
- ``hooks``: the plugin hook reference, from ``xt_training/hookspecs.py``;
- ``names``: every registered name with its options, from the registry;
- ``errors``: the bad-input table, each message produced by triggering it (:mod:`bad_input`);
- ``benchmarks``: ``benchmarks/RESULTS.md`` (and ``RESULTS-GPU.md``), as the harness last wrote them;
- ``source PATH``: a file of the repository (an example) as a code block;
- ``api`` followed by mkdocstrings' ``::: path`` directives: the API reference as plain markdown (:mod:`api`).
  The site shows mkdocstrings' rendering instead: this file is also the mkdocs hook, which puts the
  directives in the part's place.

The hook fails the build on an unknown kind or a begin marker without its end. After rendering, the Sphinx
roles that the docstrings use (``:class:`~xt_training.Runner```) and reStructuredText's ``Usage::`` become
plain code and a colon.
"""

from __future__ import annotations

import argparse
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

# the hooks beside this file, and the checkout before any installed xt-training
sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[2])]

import api  # noqa: E402
import bad_input  # noqa: E402
import reference  # noqa: E402

ROOT = reference.ROOT
DOCS = ROOT / "docs"
COMMAND = "python docs/_hooks/xt_docs.py"
REGION = re.compile(
    r"^<!-- xt:(?P<kind>[\w-]+)(?P<argument>(?:(?!-->).)*?)-->\n(?P<body>.*?)^<!-- /xt:(?P=kind) -->$",
    re.M | re.S,
)
BEGIN = re.compile(r"^<!-- xt:[\w-]+", re.M)


def _benchmarks(_: str) -> str:
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


GENERATORS: dict[str, Callable[[str], str]] = {
    "cli": lambda _: reference.cli_reference(),
    "hooks": lambda _: reference.hook_reference(),
    "names": lambda _: reference.names_reference(),
    "errors": lambda _: bad_input.errors_table(),
    "benchmarks": _benchmarks,
    "source": _source,
    "api": api.api_reference,
}
_cache: dict[tuple[str, str], str] = {}


def _check_markers(text: str, where: str) -> list[re.Match[str]]:
    """The page's generated parts; an unknown kind or a begin marker without its end is an error."""
    regions = list(REGION.finditer(text))
    for region in regions:
        if region["kind"] not in GENERATORS:
            raise ValueError(
                f"{where}: unknown docs marker <!-- xt:{region['kind']} -->; kinds: {', '.join(GENERATORS)}"
            )
    if len(BEGIN.findall(text)) != len(regions):
        raise ValueError(f"{where}: a <!-- xt:KIND --> marker has no <!-- /xt:KIND --> after it")
    return regions


def regenerate(text: str, where: str = "page") -> str:
    """``text`` with every generated part made anew."""

    def generate(region: re.Match[str]) -> str:
        key = (region["kind"], region["argument"].strip())
        if key not in _cache:  # one run generates each part once (the names are on several pages)
            _cache[key] = GENERATORS[key[0]](key[1]).strip("\n")
        begin = text[region.start() : region.start("body")]  # the marker line(s), kept as written
        return f"{begin}\n{_cache[key]}\n\n<!-- /xt:{region['kind']} -->"

    _check_markers(text, where)
    return REGION.sub(generate, text)


def pages() -> list[Path]:
    return sorted(p for p in DOCS.rglob("*.md") if "_hooks" not in p.parts)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--check", action="store_true", help="write nothing; exit 1 if a page is not current")
    args = parser.parse_args(argv)
    stale = []
    for page in pages():
        text = page.read_text()
        new = regenerate(text, str(page.relative_to(ROOT)))
        if new != text:
            stale.append(str(page.relative_to(ROOT)))
            if not args.check:
                page.write_text(new)
    if args.check and stale:
        print(f"generated parts not current in {', '.join(stale)}: run `{COMMAND}` and commit the pages")
        return 1
    print(f"{'not current' if stale else 'current'}: {', '.join(stale) or 'every page'}" if args.check
          else f"regenerated: {', '.join(stale) or 'nothing changed'}")  # fmt: skip
    return 0


# --- the mkdocs hook ------------------------------------------------------------------------------------------
def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """The page as committed, but for the API parts: mkdocstrings renders their directives on the site."""
    regions = _check_markers(markdown, page.file.src_uri)
    for region in reversed(regions):
        if region["kind"] == "api":
            markdown = (
                markdown[: region.start()] + region["argument"].strip() + "\n" + markdown[region.end() :]
            )
    return markdown


_ROLE = re.compile(r":(?:class|func|meth|mod|attr|data|exc|obj):<code>(~?)([^<]*)</code>")


def _role(match: re.Match[str]) -> str:
    name = match.group(2)
    return f"<code>{name.rsplit('.', 1)[-1] if match.group(1) else name}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    return _ROLE.sub(_role, html).replace("::</p>", ":</p>")


if __name__ == "__main__":
    sys.exit(main())
