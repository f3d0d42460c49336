"""Capture and restore every random number generator a training run draws from.

Used for exact resume: the states are plain tensors, lists and numbers, so a checkpoint that holds
them still loads with ``torch.load(..., weights_only=True)``.
"""

from __future__ import annotations

import random
from typing import Any

import torch

from .devices import accelerator


def loader_generators(loader: Any) -> list[torch.Generator]:
    """The torch.Generators a DataLoader draws from (its own, its sampler's, its batch sampler's)."""
    found: list[torch.Generator] = []
    candidates = [
        getattr(loader, "generator", None),
        getattr(getattr(loader, "sampler", None), "generator", None),
        getattr(getattr(getattr(loader, "batch_sampler", None), "sampler", None), "generator", None),
    ]
    for g in candidates:
        if isinstance(g, torch.Generator) and all(g is not f for f in found):
            found.append(g)
    return found


def capture_rng(generators: list[torch.Generator] = ()) -> dict[str, Any]:
    """The states of Python's, NumPy's and torch's global RNGs (the CPU's and the accelerator's: CUDA, XPU,
    MPS) and of ``generators``."""
    state: dict[str, Any] = {
        "python": _python_state(),
        "torch": torch.get_rng_state(),
        "generators": [g.get_state() for g in generators],
    }
    found = accelerator()
    module = None if found is None else torch.get_device_module(found.type)
    # an accelerator that has not started has drawn nothing (and asking for its state would start it)
    if module is not None and getattr(module, "is_initialized", lambda: True)():
        # every device's state (MPS has one device)
        get_all = getattr(module, "get_rng_state_all", None)
        state[found.type] = get_all() if get_all else [module.get_rng_state()]
    try:
        import numpy as np
    except ImportError:
        return state
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    state["numpy"] = [kind, torch.from_numpy(keys.astype("int64")), int(pos), int(has_gauss), float(cached)]
    return state


def restore_rng(state: dict[str, Any], generators: list[torch.Generator] = ()) -> None:
    """Put every RNG back into the state :func:`capture_rng` returned."""
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal.tolist() if torch.is_tensor(internal) else internal), gauss))
    torch.set_rng_state(state["torch"])
    for g, s in zip(generators, state.get("generators", [])):
        g.set_state(s)
    found = accelerator()
    if found is not None and found.type in state:
        module = torch.get_device_module(found.type)
        if hasattr(module, "set_rng_state_all"):
            module.set_rng_state_all(state[found.type])
        else:
            module.set_rng_state(state[found.type][0])
    if "numpy" in state:
        import numpy as np

        kind, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((kind, keys.numpy().astype("uint32"), pos, has_gauss, cached))


def _python_state() -> list[Any]:
    version, internal, gauss = random.getstate()
    # one tensor, not 625 ints: pickling the ints one by one made every checkpoint ~1 ms slower
    return [version, torch.tensor(internal, dtype=torch.int64), gauss]
