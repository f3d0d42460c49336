"""Loop options of the performance issue that run on the CPU: channels_last, torch.compile."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from conftest import mlp
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.batch import to_device
from xt_training.utils import functional as F


def images(n=96):
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (n,), generator=g)
    return torch.randn(n, 3, 12, 12, generator=g) + y.view(-1, 1, 1, 1).float(), y


def cnn():
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 3)
    )


def test_channels_last_trains_the_same_model_in_nhwc(tmp_path):
    x, y = images()
    results = {}
    for channels_last in (False, True):
        model = cnn()
        seen = []
        model[0].register_forward_pre_hook(
            lambda m, args, seen=seen: seen.append(args[0].is_contiguous(memory_format=torch.channels_last))
        )
        loader = DataLoader(TensorDataset(x, y), batch_size=32)
        history = F.train(tmp_path / str(channels_last), loader, model, torch.optim.SGD(model.parameters(), lr=0.1), 2,
                          TF.cross_entropy, eval_metrics={"acc": metrics.Accuracy()}, channels_last=channels_last,
                          quiet=True)  # fmt: skip
        results[channels_last] = history[-1]["train/loss"]
        assert all(seen) == channels_last and seen
        assert model[0].weight.is_contiguous(memory_format=torch.channels_last) == channels_last
    assert results[True] == pytest.approx(results[False], rel=1e-4)


def test_to_device_channels_last_only_touches_image_batches():
    batch = [
        torch.randn(2, 3, 4, 4),
        torch.tensor([0, 1]),
        {
            "mask": torch.ones(2, 1, 4, 4, dtype=torch.bool),
            "bytes": torch.zeros(2, 3, 4, 4, dtype=torch.uint8),
        },
    ]
    moved = to_device(batch, torch.device("cpu"), channels_last=True)
    assert moved[0].is_contiguous(memory_format=torch.channels_last) and not moved[0].is_contiguous()
    assert moved[1] is batch[1] and moved[2]["mask"].is_contiguous()
    assert moved[2]["bytes"].is_contiguous(memory_format=torch.channels_last)  # uint8 images: converted too
    assert moved[2]["bytes"].float().is_contiguous(memory_format=torch.channels_last)


@pytest.mark.slow
def test_compile_trains_and_saves_plain_weights(tmp_path):
    x = torch.randn(128, 16)
    y = (x[:, 0] > 0).long()
    model = mlp(16, 2)
    history = F.train(tmp_path, DataLoader(TensorDataset(x, y), batch_size=32), model,
                      torch.optim.Adam(model.parameters(), 1e-2), 2, TF.cross_entropy, compile=True, quiet=True)  # fmt: skip
    assert history[-1]["train/loss"] < history[0]["train/loss"]
    state = torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)
    assert set(state["model"]) == set(mlp(16, 2).state_dict())
