"""Import the parts of torchmetrics that xt-training uses without torchmetrics' own ``__init__``.

``import torchmetrics`` imports every metric it has, and with them each optional package that happens to be
installed: torchvision (and through it ``torch._dynamo``), transformers, scipy.signal. With those installed,
as beside xt-training they usually are, that is ~4.5 s of CPU at the start of every ``xt run``, twice the
import of torch itself, for image-quality and text metrics a run does not use (Lightning-AI/torchmetrics#3457,
open). :func:`import_part` imports ``torchmetrics.classification``, ``.regression`` or ``.detection`` with
the package's ``__init__`` left for later, in about 0.5 s.

Nothing of torchmetrics changes: its modules run as they are, and the first ``import torchmetrics`` by anyone
else (the user's code, a plugin) runs the package's ``__init__`` as usual, which takes the modules already
imported as they are, so every class is the same object either way. While the parts are imported, two
stand-ins hold the packages' places (``torchmetrics`` and ``torchmetrics.functional``: their modules need a
parent, and the logger that the real ``__init__`` makes); afterwards they leave ``sys.modules``, and a finder
completes each real package when it is imported: its ``__init__`` runs, then it gets the attributes of the
submodules imported before it. Should torchmetrics change so that a part does not import this way, it is
imported the usual way instead.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import types
from typing import Any

_PACKAGES = ("torchmetrics", "torchmetrics.functional")


def import_part(name: str) -> types.ModuleType:
    """``importlib.import_module(name)`` for a module of torchmetrics, without its package's ``__init__``
    where that has not run yet."""
    global _completing
    if "torchmetrics" in sys.modules or name in sys.modules:  # imported already, the usual way or as a part
        return importlib.import_module(name)
    first = _completing is None
    if first:
        handler = logging.StreamHandler()  # what torchmetrics' __init__ does with its logger
        logging.getLogger("torchmetrics").addHandler(handler)
        logging.getLogger("torchmetrics").setLevel(logging.INFO)
        _completing = _Completing(handler)
    stand_ins = [_stand_in(package) for package in _PACKAGES]
    stand_ins[0]._logger = logging.getLogger("torchmetrics")
    try:
        # utilities first, in the package's own order: torchmetrics.utilities and .metric import each other
        importlib.import_module("torchmetrics.utilities")
        module = importlib.import_module(name)
    except Exception:  # a torchmetrics that does not import this way: the usual import, from the start
        for key in [k for k in sys.modules if k == "torchmetrics" or k.startswith("torchmetrics.")]:
            del sys.modules[key]
        logging.getLogger("torchmetrics").removeHandler(_completing.handler)
        if _completing in sys.meta_path:  # (put there by an earlier part)
            sys.meta_path.remove(_completing)
        _completing = None
        return importlib.import_module(name)
    for package in _PACKAGES:
        del sys.modules[package]
    if first:
        sys.meta_path.insert(0, _completing)
    return module


#: the finder that completes the real packages, from the first part imported until they are imported
_completing: _Completing | None = None


def _stand_in(package: str) -> types.ModuleType:
    """An empty package module at ``package``'s place in ``sys.modules``, with its real search path."""
    parent, _, child = package.rpartition(".")
    path = sys.modules[parent].__path__ if parent else None
    spec = importlib.machinery.PathFinder.find_spec(package, path)
    if spec is None:
        raise ModuleNotFoundError(f"No module named {package!r}", name=package)
    module = importlib.util.module_from_spec(spec)
    sys.modules[package] = module
    if parent:
        setattr(sys.modules[parent], child, module)
    return module


class _Completing(importlib.abc.MetaPathFinder):
    """Finds the real torchmetrics packages once the parts have been imported, and completes them."""

    def __init__(self, handler: logging.Handler):
        self.handler = handler
        self.left = set(_PACKAGES)

    def find_spec(self, fullname: str, path: Any = None, target: Any = None) -> Any:
        if fullname not in self.left:
            return None
        global _completing
        self.left.discard(fullname)
        if not self.left:
            sys.meta_path.remove(self)
            _completing = None
        spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        if spec is not None:
            spec.loader = _CompletingLoader(spec.loader, self.handler)
        return spec


class _CompletingLoader(importlib.abc.Loader):
    """Runs a torchmetrics package's ``__init__``, then sets the attributes of the submodules imported
    before it (the import system sets a submodule's attribute only when it imports that submodule)."""

    def __init__(self, loader: Any, handler: logging.Handler):
        self.loader = loader
        self.handler = handler

    def create_module(self, spec: Any) -> Any:
        return None

    def exec_module(self, module: types.ModuleType) -> None:
        logging.getLogger("torchmetrics").removeHandler(self.handler)  # the __init__ adds its own
        prefix = module.__name__ + "."
        for key, child in list(sys.modules.items()):
            if key.startswith(prefix) and "." not in key[len(prefix) :]:
                setattr(module, key[len(prefix) :], child)
        self.loader.exec_module(module)
