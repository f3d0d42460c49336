"""The runnable blocks of the docs pages: how tests/test_docs.py finds them, runs them and checks their output.

A page marks a fenced block as runnable with an HTML comment on the line before it, which neither GitHub nor
the site shows::

    <!-- run -->
    ```python                      (or ```bash)
    ...
    ```

A setup the reader need not see is a runnable block inside the comment: ``<!-- run``, the fenced block, then
``-->``. ``<!-- output -->`` before a block makes it what the runnable block before it must print, among
other lines before and after (a page shows the lines that matter): numbers may differ, runs of spaces may
be longer or shorter, a ``...`` line stands for any lines and ``...`` inside a line for any text.

The runnable blocks of a page run in order in one fresh directory: the Python ones in one interpreter, so
that a block uses what an earlier one defined, the bash ones with ``bash -e``. A ``...`` argument of a Python
call stands for the arguments the page leaves out: the call gets each required parameter that it does not
give from the page's variable of that name (``F.train(..., callbacks=[...])`` takes ``save_dir``,
``train_loader``, ``model``... from the page's setup).

Run as a script, this file is that interpreter: ``python doc_blocks.py BLOCKS.json`` runs the blocks the
file lists, printing the separator ``SEPARATOR`` and the block's number before each block's output.
"""

from __future__ import annotations

import ast
import inspect
import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

SEPARATOR = "\x1eblock"
BLOCK = re.compile(
    r"^<!-- (?P<kind>run|output)(?: -->\n|\n)```(?P<lang>\w*)[^\n]*\n(?P<code>.*?)^```$(?P<hidden>\n-->)?",
    re.M | re.S,
)
LANGUAGES = ("python", "bash")


def blocks(page: Path) -> list[dict[str, Any]]:
    """The marked blocks of a page, in order: kind (run, output), language, code, line of the code's start."""
    text = page.read_text()
    found = []
    for match in BLOCK.finditer(text):
        line = text.count("\n", 0, match.start("code")) + 1
        found.append({"kind": match["kind"], "lang": match["lang"], "code": match["code"], "line": line})
        if match["kind"] == "run" and match["lang"] not in LANGUAGES:
            raise ValueError(f"{page.name}:{line}: a runnable block is python or bash, not {match['lang']!r}")
        if match["kind"] == "output" and (len(found) < 2 or found[-2]["kind"] != "run"):
            raise ValueError(f"{page.name}:{line}: <!-- output --> follows no runnable block")
    if len(re.findall(r"^<!-- (?:run|output)\b", text, re.M)) != len(found):
        raise ValueError(
            f"{page.name}: a <!-- run --> or <!-- output --> marker is not right before a fenced block"
        )
    return found


def shows(expected: str, actual: str) -> bool:
    """Whether ``actual`` has the lines ``expected`` shows, up to numbers, spacing and ``...`` (see above)."""
    number = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"
    pattern = []
    for line in expected.rstrip("\n").splitlines():
        if line.strip() == "...":
            pattern.append(r"(?:.*\n)*?")
            continue
        parts = re.split(rf"({number}|\.\.\.|\s+)", line.rstrip())
        regex = "".join(
            number
            if re.fullmatch(number, p)
            else ".*?"
            if p == "..."
            else r"\s+"
            if p.isspace()
            else re.escape(p)
            for p in parts
            if p
        )
        pattern.append(regex + r"[ \t]*\n")
    text = "".join(line.rstrip() + "\n" for line in actual.rstrip("\n").splitlines())
    return re.search("(?m)^" + "".join(pattern), text) is not None


# --- the interpreter ------------------------------------------------------------------------------------------
class _Elided(ast.NodeTransformer):
    """``f(a, ..., k=v)`` -> ``__elided__(f)(a, k=v)``."""

    def visit_Call(self, node: ast.Call) -> ast.AST:
        self.generic_visit(node)
        dots = [a for a in node.args if isinstance(a, ast.Constant) and a.value is Ellipsis]
        if dots:
            node.args = [a for a in node.args if a not in dots]
            node.func = ast.Call(ast.Name("__elided__", ast.Load()), [node.func], [])
        return node


def _elided(namespace: dict[str, Any]) -> Any:
    """``fill(fn)``: ``fn`` with the parameters a call does not give taken from ``namespace`` by name."""

    def fill(fn: Any) -> Any:
        def call(*args: Any, **kwargs: Any) -> Any:
            signature = inspect.signature(fn)
            given = signature.bind_partial(*args, **kwargs).arguments
            for name, param in signature.parameters.items():
                if name in given or param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
                    continue
                if name in namespace:
                    kwargs[name] = namespace[name]
                elif param.default is param.empty:
                    raise NameError(
                        f"`...` in a call of {fn.__name__} stands for {name!r}, which no block defines"
                    )
            return fn(*args, **kwargs)

        return call

    return fill


def main(path: str) -> None:
    spec = json.loads(Path(path).read_text())
    namespace: dict[str, Any] = {"__name__": "__main__"}
    namespace["__elided__"] = _elided(namespace)
    for i, block in enumerate(spec["blocks"]):
        print(f"{SEPARATOR} {i}", flush=True)
        if block["lang"] == "python":  # tracebacks name the page and its line
            tree = ast.parse("\n" * (block["line"] - 1) + block["code"], spec["page"])
            exec(compile(ast.fix_missing_locations(_Elided().visit(tree)), spec["page"], "exec"), namespace)
            sys.stdout.flush()
        else:
            done = subprocess.run(
                ["bash", "-e", "-o", "pipefail", "-c", block["code"]], stderr=subprocess.STDOUT
            )
            if done.returncode:
                sys.exit(
                    f"{spec['page']}:{block['line']}: the bash block exited with status {done.returncode}"
                )


if __name__ == "__main__":
    main(sys.argv[1])
