"""Devices through torch.accelerator: what can be checked without one (the CPU default, the backend choice)."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from xt_training import Runner, devices, distributed
from xt_training.errors import ConfigError
from xt_training.rng import capture_rng
from xt_training.runner import resolve_device

no_accelerator = pytest.mark.skipif(devices.accelerator() is not None, reason="checks a machine without one")


@no_accelerator
def test_without_an_accelerator_everything_is_on_the_cpu(monkeypatch):
    assert devices.default_device() == resolve_device(None) == torch.device("cpu")
    assert Runner(nn.Linear(2, 2), nn.MSELoss(), quiet=True).device == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "1")
    assert distributed.local_device() == torch.device("cpu")
    monkeypatch.setenv("LOCAL_RANK", "x")  # checked on the CPU too, as before
    with pytest.raises(ConfigError, match="environment variable LOCAL_RANK='x' must be a whole number >= 0"):
        distributed.local_device()
    assert set(capture_rng()) == {"python", "torch", "generators", "numpy"}, "no accelerator's RNG to keep"


@pytest.mark.parametrize(
    "device_type, backend",
    [("cuda", "nccl"), ("xpu", "xccl"), ("cpu", "gloo"), ("mps", "gloo")],
)
def test_the_process_group_backend_follows_the_device_type(device_type, backend):
    assert distributed.backend_for(device_type) == backend


def test_streams_and_pinned_memory_where_the_backend_has_them():
    assert devices.streams(torch.device("cuda")) is torch.cuda
    assert devices.streams(torch.device("xpu", 1)) is torch.xpu
    assert devices.streams(torch.device("mps")) is None, "MPS shares its memory with the CPU: nothing to pin"
    assert devices.streams(torch.device("cpu")) is None
    assert devices.streams(torch.device("meta")) is None
