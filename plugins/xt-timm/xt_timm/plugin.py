"""The plugin module named by the entry point: registers timm's names without importing timm or torch.

timm's model names come from :func:`model_names`, which reads them from timm's source files (the
functions decorated with ``@register_model``) and keeps them in a cache file: importing timm to ask
``timm.list_models()`` would cost ``xt list`` and ``xt --help`` several seconds, reading its ~150 model
files some 30 ms, and the cache file under a millisecond.
"""

from __future__ import annotations

import functools
import importlib.util
import os
import re
import zlib
from pathlib import Path
from typing import Any

from xt_training.errors import ConfigError
from xt_training.hookspecs import hookimpl

#: the prefix of timm's models and schedulers: their names would clash with xt-vision's and the built-ins'
PREFIX = "timm."
_REGISTERED = re.compile(r"@register_model\s*\n(?:\s*@.*\n)*\s*def (\w+)\(")

#: timm's optimizers that torch.optim lacks: name -> description
OPTIMIZERS = {
    "lamb": "LAMB, layer-wise adaptive Adam for large batches",
    "lars": "LARS, layer-wise adaptive SGD for large batches",
    "lion": "Lion, the sign of an interpolated momentum",
    "adan": "Adan, adaptive Nesterov momentum",
    "adabelief": "AdaBelief, Adam scaled by the belief in the gradient",
    "adamp": "AdamP, Adam with projected scale-invariant updates",
    "sgdp": "SGDP, SGD with projected scale-invariant updates",
    "madgrad": "MADGRAD, momentumized dual averaged gradients",
    "novograd": "NovoGrad, layer-wise normalised gradients",
    "adopt": "ADOPT, Adam that converges for any beta2",
    "laprop": "LaProp, momentum of normalised gradients",
    "mars": "MARS, variance-reduced preconditioned updates",
}
#: timm's schedulers, stepped once per epoch, all with a linear warmup (warmup_epochs): name -> description
SCHEDULERS = {
    "cosine": "cosine decay with warmup and restarts (cycle_limit)",
    "tanh": "tanh decay with warmup",
    "poly": "polynomial decay with warmup",
    "step": "decay by decay_rate every decay_epochs, with warmup",
    "multistep": "decay by decay_rate at decay_milestones, with warmup",
}


def _cache_dir() -> Path:
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xt-training"


@functools.cache
def model_names() -> list[str]:
    """timm's model names, as ``timm.list_models()`` gives them, read from timm's source files or their cache.

    The cache file is named after the model files' names, sizes and modification times, so another timm
    (an upgrade, an edited checkout) is read afresh.
    """
    spec = importlib.util.find_spec("timm")
    if spec is None or not spec.submodule_search_locations:
        raise ConfigError("xt-timm needs timm, which is not installed: pip install timm")
    files = sorted((Path(next(iter(spec.submodule_search_locations))) / "models").glob("*.py"))
    stamp = repr([(str(f), f.stat().st_size, f.stat().st_mtime_ns) for f in files])
    cache = _cache_dir() / f"timm-models-{zlib.crc32(stamp.encode()):08x}.txt"
    try:
        return cache.read_text(encoding="utf-8").split()
    except OSError:  # not cached yet
        pass
    names = sorted({n for f in files for n in _REGISTERED.findall(f.read_text(encoding="utf-8"))})
    if not names:  # an unusual install (zipped, compiled): ask timm itself
        import timm

        names = timm.list_models()
    try:  # written whole under another name first: a reader never sees half of it
        cache.parent.mkdir(parents=True, exist_ok=True)
        partial = cache.with_name(f".{cache.name}.{os.getpid()}.tmp")
        partial.write_text("\n".join(names) + "\n", encoding="utf-8")
        partial.replace(cache)
    except OSError:  # a read-only home: no cache, the names are read again next time
        pass
    return names


@hookimpl
def register_models(register: Any) -> None:
    from .models import timm_model, timm_preprocessing

    for name in model_names():
        register(
            PREFIX + name,
            functools.partial(timm_model, name),
            description=f"timm {name}; pretrained=True: timm's pretrained weights (default: random)",
            # a pretrained model's images are prepared as timm's data configuration says
            preprocessing=functools.partial(timm_preprocessing, name),
        )


@hookimpl
def register_optimizers(register: Any) -> None:
    from .training import timm_optimizer

    for name, description in OPTIMIZERS.items():
        register(name, functools.partial(timm_optimizer, name), description=f"{description} (timm)")


@hookimpl
def register_schedulers(register: Any) -> None:
    from .training import timm_scheduler

    for name, description in SCHEDULERS.items():
        register(PREFIX + name, functools.partial(timm_scheduler, name), description=f"{description} (timm)")
