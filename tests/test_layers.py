"""The package's import layers, read from the source with ``ast`` (nothing is imported).

Every module sits in one layer; imports point down or sideways, never up, and never round in a cycle.
An import inside a function is allowed only to put off a heavy module (one that imports torch & co. at
import time), and says so with a ``# lazy: <why>`` comment on its line or the line above.
"""

from __future__ import annotations

import ast
import re
import shutil
from collections.abc import Callable
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "xt_training"

# Lowest first: a module may import from its own layer and the ones above it in this dict, never below.
# A name ending in ".*" stands for every submodule; an exact name wins over a ".*".
LAYERS: dict[str, list[str]] = {
    # the ground: version, error types, file and run-directory helpers, plugin hook specs; no torch at import
    "foundations": ["_version", "errors", "files", "rundir", "hookspecs", "slurm"],
    # the training loop on plain objects: batches, metrics, loggers, callbacks, checkpoints, the Runner
    "engine": [
        "stepping",
        *(
            "devices",
            "batch",
            "rng",
            "fastpath",
            "distributed",
            "metric_contract",
            "torchmetrics_parts",
            "metrics",
            "loggers",
            "loggers.*",
        ),
        *(
            "callbacks",
            "checkpoint",
            "averaging",
            "runner",
            "training",
            "testing",
            "predict",
            "exporting",
            "text",
            "fsdp",
        ),
        *("preprocessing", "lr_find", "utils", "utils.functional"),
    ],
    # runs by name: the registry, config files, building a run from names, reports, the built-in components
    "runs by name": [
        "registry",
        "config",
        "building",
        "runs",
        "report",
        "environment",
        "scaffold",
        "builtins",
        "builtins.*",
    ],
    # the user interface: the `xt` command line, its options and the commands the built-ins add to it
    "interface": ["cli", "options", "__main__", "builtins.predict_command", "builtins.export_command"],
}
FACADE = "xt_training"  # __init__.py: imports only xt_training._version at run time, the rest lazily by name
# third-party packages that make a module heavy when it imports them at import time
HEAVY = {"torch", "torchvision", "torchmetrics", "numpy", "onnx", "onnxruntime", "onnxscript", "matplotlib"}
HEAVY |= {"tensorboard", "optuna", "transformers", "pandas", "scipy", "sklearn", "gymnasium", "pycocotools"}
LAZY_COMMENT = re.compile(r"#.*\blazy:")


def layer_of(module: str) -> str | None:
    """The layer of a module named in LAYERS (by its exact name, else by a ".*" of a package above it)."""
    name = module.removeprefix(FACADE + ".")
    exact = [layer for layer, names in LAYERS.items() if name in names]
    wild = [layer for p in _parents(name) for layer, names in LAYERS.items() if p + ".*" in names]
    return (exact + wild + [None])[0]


def _parents(name: str) -> list[str]:
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(len(parts) - 1, 0, -1)]


def _import_nodes(nodes, in_function: bool = False):
    """(node, in_function) for every import statement, skipping the bodies of ``if TYPE_CHECKING:``."""
    for node in nodes:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
        elif isinstance(node, ast.If) and ast.unparse(node.test) in {"TYPE_CHECKING", "typing.TYPE_CHECKING"}:
            yield from _import_nodes(node.orelse, in_function)
        else:
            inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
            yield from _import_nodes(ast.iter_child_nodes(node), inner)


def _targets(node: ast.Import | ast.ImportFrom, module: str, is_package: bool, modules: set[str]) -> set[str]:
    """The modules an import statement names: dotted third-party names, or package modules resolved."""
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    else:
        base = node.module or ""
        if node.level:  # relative: level 1 is the module's own package (the module itself for an __init__)
            package = module.split(".") if is_package else module.split(".")[:-1]
            base = ".".join(package[: len(package) - node.level + 1] + ([base] if base else []))
        names = [
            f"{base}.{alias.name}" if f"{base}.{alias.name}" in modules else base for alias in node.names
        ]
    # cut back to the longest prefix that is a module (from .x import attr -> .x); a package's
    # `from . import sub, attr` of its own attribute is no import of itself
    return {next((p for p in [n, *_parents(n)] if p in modules), n) for n in names} - {module}


def check(root: Path) -> list[str]:
    """The offences against the layers of the package in directory ``root``, one line each."""
    files = {}  # module name -> path
    for path in sorted(root.rglob("*.py")):
        if "templates" in path.relative_to(root).parts:
            continue  # package data, not modules: the files `xt new plugin` copies into a plugin of its own
        parts = [root.name, *path.relative_to(root).with_suffix("").parts]
        files[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    modules, where = set(files), {m: path.relative_to(root.parent).as_posix() for m, path in files.items()}
    imports = {}  # module -> [(line, target, in a function, has a lazy comment)]; targets include third-party
    for module, path in files.items():
        text = path.read_text()
        lines = ["", *text.splitlines()]
        imports[module] = [
            (
                node.lineno,
                target,
                in_function,
                any(LAZY_COMMENT.search(x) for x in lines[node.lineno - 1 :][:2]),
            )
            for node, in_function in _import_nodes(ast.parse(text).body)
            for target in sorted(_targets(node, module, path.name == "__init__.py", modules))
        ]
    # heavy: imports a heavy library or a heavy package module at import time, or its own package is heavy
    heavy: dict[str, tuple[int, str]] = {}  # module -> (line, what it imports that makes it heavy)
    while True:
        new = {}
        for m in sorted(modules - set(heavy)):
            why = [
                (n, t)
                for n, t, inner, _ in imports[m]
                if not inner and (t in heavy or t.split(".")[0] in HEAVY)
            ]
            why += [(1, p) for p in _parents(m)[:1] if p in heavy]
            if why:
                new[m] = why[0]
        if not new:
            break
        heavy |= new
    offences = []
    for module in sorted(modules):
        layer = layer_of(module)
        if layer is None and module != FACADE:
            offences.append(
                f"{where[module]}: {module} is in no layer (place it in LAYERS of tests/test_layers.py)"
            )
        if layer == "foundations" and module in heavy:
            line, target = heavy[module]
            offences.append(
                f"{where[module]}:{line} imports {target} at import time (heavy, in 'foundations')"
            )
        for line, target, in_function, lazy in imports[module]:
            if target not in modules:
                continue
            at, up = f"{where[module]}:{line} imports {target}", layer_of(target)
            if module == FACADE and target != f"{FACADE}._version":
                offences.append(f"{at} (the facade imports only {FACADE}._version, the rest lazily by name)")
            elif target == FACADE and module != FACADE:
                offences.append(f"{at} (the facade: import from the module that defines the name)")
            elif layer and up and list(LAYERS).index(up) > list(LAYERS).index(layer):
                offences.append(f"{at} (layer '{up}' above '{layer}')")
            if in_function and target not in heavy:
                offences.append(f"{at} inside a function, but it is not heavy: import it at module level")
            elif in_function and not lazy:
                offences.append(f"{at} inside a function without a '# lazy: <why>' comment")
    graph = {m: {t: line for line, t, _, _ in reversed(imports[m]) if t in modules} for m in modules}
    return offences + _cycles(graph, where)


def _cycles(graph: dict[str, dict[str, int]], where: dict[str, str]) -> list[str]:
    """One line per import cycle: a shortest way round from each module back to itself, each cycle once."""
    cycles: dict[frozenset, list[str]] = {}
    for start in sorted(graph):
        paths, seen = [[start]], {start}  # breadth-first, so the first way back is a shortest one
        while paths:
            path = paths.pop(0)
            if start in graph[path[-1]]:
                cycles.setdefault(frozenset(path), path)  # the same cycle is met again from its other modules
                break
            for target in sorted(set(graph[path[-1]]) - seen):
                seen.add(target)
                paths.append([*path, target])
    return [
        "import cycle: "
        + ", ".join(f"{where[m]}:{graph[m][n]} imports {n}" for m, n in zip(path, path[1:] + path[:1]))
        for path in cycles.values()
    ]


def test_package_imports_point_down():
    offences = check(PACKAGE)
    assert offences == [], f"{len(offences)} offences against the layers:\n" + "\n".join(offences)


def test_check_finds_a_planted_upward_import(tmp_path):
    skip = shutil.ignore_patterns("__pycache__")
    base = set(check(shutil.copytree(PACKAGE, tmp_path / "base" / PACKAGE.name, ignore=skip)))

    def plant(**code: str) -> tuple[list[str], Callable[[str], str]]:
        """Append code to modules of a copy (errors="..." for errors.py): the offences it adds, and where
        a planted line is: at("errors.py", "from .cli") -> "xt_training/errors.py:LINE imports"."""
        root = shutil.copytree(PACKAGE, tmp_path / "_".join(code) / PACKAGE.name, ignore=skip)
        for name, text in code.items():
            with open(root / f"{name}.py", "a") as file:
                file.write(f"\n\n{text}  # planted\n")
        new = [line for line in check(root) if line not in base]
        assert all(any(f"/{name}.py" in line for name in code) for line in new), "\n".join(new)

        def at(file: str, start: str) -> str:
            lines = [x.strip() for x in (root / file).read_text().splitlines()]
            return f"{PACKAGE.name}/{file}:{max(i for i, x in enumerate(lines) if x.startswith(start)) + 1} imports"

        return new, at

    new, at = plant(errors="from .cli import main")  # cli imports errors: a cycle too
    assert [x for x in new if not x.startswith("import cycle: ")] == [
        f"{at('errors.py', 'from .cli')} xt_training.cli (layer 'interface' above 'foundations')"
    ]
    assert any(
        f"{at('errors.py', 'from .cli')} xt_training.cli" in x for x in new if x.startswith("import cycle: ")
    )

    lazy = "    from . import metrics\n    # lazy: imports torch\n    from . import checkpoint"
    new, at = plant(errors="def planted():\n    from . import _version", rng=f"def planted():\n{lazy}")
    assert new == [
        f"{at('errors.py', 'from . import _version')} xt_training._version inside a function, but it is not "
        "heavy: import it at module level",
        f"{at('rng.py', 'from . import metrics')} xt_training.metrics inside a function without a '# lazy: <why>' "
        "comment",
    ]

    new, at = plant(_version="from . import errors", errors="from . import _version")
    cycle = f"{at('_version.py', 'from . import')} xt_training.errors, {at('errors.py', 'from . import')} "
    assert new == [f"import cycle: {cycle}xt_training._version"]

    new, _ = plant(planted="import os")
    assert new == [
        "xt_training/planted.py: xt_training.planted is in no layer (place it in LAYERS of tests/test_layers.py)"
    ]
