"""Devices through ``torch.accelerator``: the accelerator torch finds here -- CUDA (ROCm too, which torch calls
``cuda``), XPU, MPS or another it knows -- else the CPU; and what differs between them, in one place.
"""

from __future__ import annotations

from types import ModuleType

import torch


def accelerator() -> torch.device | None:
    """The accelerator torch finds on this machine (``cuda``, ``xpu``, ``mps``...), None without one."""
    if not hasattr(torch, "accelerator"):  # torch < 2.6 knows only CUDA here
        return torch.device("cuda") if torch.cuda.is_available() else None
    return torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None


def default_device() -> torch.device:
    """The device of a run that names none: the accelerator, else the CPU."""
    return accelerator() or torch.device("cpu")


def device_count(device_type: str) -> int:
    """How many devices of ``device_type`` torch finds here (0 where it is not this machine's accelerator)."""
    found = accelerator()
    return torch.get_device_module(device_type).device_count() if found and found.type == device_type else 0


def streams(device: torch.device) -> ModuleType | None:
    """The device module (``torch.cuda``, ``torch.xpu``...) where ``device`` has streams and pinned host memory:
    copies to it from pinned memory are asynchronous, and can run on a side stream. None for the CPU and for
    MPS, whose memory the CPU shares."""
    if device.type == "cpu":
        return None
    try:
        module = torch.get_device_module(device.type)
    except RuntimeError:  # a device type without a module (meta)
        return None
    return module if hasattr(module, "Stream") else None
