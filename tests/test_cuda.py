"""CUDA paths: sync-free steps, AMP, the side-stream prefetch, data on the device. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training import metrics
from xt_training.batch import prefetch_to_cuda
from xt_training.utils import functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def data(n=2048):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    return x, (x[:, :4].sum(1) > 0).long()


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 2))


class Guarded:
    """A dataset wrapper loader: sync debug mode 'error' from the 2nd batch until the loop asks past the last."""

    def __init__(self, loader):
        self.loader = loader

    def __len__(self):
        return len(self.loader)

    def __iter__(self):
        for i, batch in enumerate(self.loader):
            if i == 1:
                torch.cuda.set_sync_debug_mode("error")
            yield batch
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
def test_no_host_device_sync_between_logging_steps(tmp_path, precision):
    x, y = data()
    loader = Guarded(DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True, pin_memory=True))
    m = model()
    try:
        history = F.train(tmp_path, loader, m, torch.optim.Adam(m.parameters(), 1e-3), 1, TF.cross_entropy,
                          train_metrics={"acc": metrics.Accuracy()}, log_every_n_steps=1000, precision=precision,
                          device="cuda", quiet=True)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert history[0]["train/acc"] > 0.5


def test_prefetch_gives_the_batches_in_order_on_the_gpu():
    x, y = data(300)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, pin_memory=True)
    got = list(prefetch_to_cuda(iter(loader), torch.device("cuda")))
    assert len(got) == len(loader)
    for (gx, gy), (cx, cy) in zip(got, loader):
        assert gx.is_cuda and torch.equal(gx.cpu(), cx) and torch.equal(gy.cpu(), cy)


@pytest.mark.parametrize("data_on_device", [True, False])
def test_fast_path_with_data_on_the_gpu_matches_the_dataloader(tmp_path, data_on_device):
    x, y = data()
    results = []
    for fast_path in (True, False):
        torch.manual_seed(1)
        m = model()
        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
        F.train(tmp_path / str(fast_path), loader, m, torch.optim.SGD(m.parameters(), lr=0.1), 2, TF.cross_entropy,
                device="cuda", fast_path=fast_path, data_on_device=data_on_device, quiet=True)  # fmt: skip
        results.append([p.detach().cpu() for p in m.parameters()])
    for a, b in zip(*results):
        assert torch.equal(a, b)


def test_16_mixed_uses_a_grad_scaler_and_learns(tmp_path):
    x, y = data()
    m = model()
    history = F.train(tmp_path, DataLoader(TensorDataset(x, y), batch_size=64), m, torch.optim.Adam(m.parameters(), 1e-3),
                      3, TF.cross_entropy, eval_metrics={"acc": metrics.Accuracy()}, precision="16-mixed",
                      device="cuda", quiet=True)  # fmt: skip
    assert history[-1]["train/acc"] > 0.8
    assert torch.load(tmp_path / "checkpoints" / "last.pt", weights_only=True)["scaler"]["scale"] > 0
