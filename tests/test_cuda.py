"""CUDA paths: sync-free steps, AMP, the side-stream prefetch, data on the device. Skipped without a GPU."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as TF
from torch import nn
from torch.utils.data import DataLoader, Sampler, TensorDataset

from xt_training import metrics
from xt_training.batch import prefetch_to_device
from xt_training.utils import functional as F

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def data(n=2048):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 32, generator=g)
    return x, (x[:, :4].sum(1) > 0).long()


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Dropout(0.1), nn.Linear(64, 2))


class SyncGuard(Sampler):
    """Shuffles like RandomSampler, with sync debug mode 'error' on from the third batch it is asked for
    until it is exhausted.

    The loop fetches batch i+1 before it runs step i (the side-stream prefetch), so the mode goes on
    after step 1 (a logging step: it reads values to the host) and off before the pass's last read;
    every step in between must queue its work without waiting for the GPU.
    """

    def __init__(self, n, batch_size):
        self.n, self.batch_size = n, batch_size

    def __len__(self):
        return self.n

    def __iter__(self):
        for i, index in enumerate(torch.randperm(self.n).tolist()):
            if i == 2 * self.batch_size:
                torch.cuda.set_sync_debug_mode("error")
            yield index
        torch.cuda.set_sync_debug_mode("default")


@pytest.mark.parametrize("precision", ["32", "bf16-mixed"])
@pytest.mark.parametrize(
    "pin_memory",
    # False: the default fast path, batches gathered from a copy of the data on the GPU;
    # True: the DataLoader's own pinned batches, copied on the side stream
    [False, True],
    ids=["data-on-gpu", "pinned-batches"],
)
def test_no_host_device_sync_between_logging_steps(tmp_path, precision, pin_memory):
    x, y = data()
    sampler = SyncGuard(len(x), 64)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, sampler=sampler, pin_memory=pin_memory)
    m = model()
    try:
        history = F.train(tmp_path, loader, m, torch.optim.Adam(m.parameters(), 1e-3), 1, TF.cross_entropy,
                          train_metrics={"acc": metrics.Accuracy()}, log_every_n_steps=1000, precision=precision,
                          device="cuda", quiet=True)  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert history[0]["train/acc"] > 0.5


@pytest.mark.parametrize("pin_memory", [False, True], ids=["data-on-gpu", "pinned-batches"])
def test_no_host_device_sync_between_logging_steps_in_evaluation(pin_memory):
    x, y = data()
    loader = DataLoader(
        TensorDataset(x, y), batch_size=64, sampler=SyncGuard(len(x), 64), pin_memory=pin_memory
    )
    m = model()
    try:
        results = F.test(test_loaders={"test": loader}, model=m, loss_fn=TF.cross_entropy, device="cuda",
                         eval_metrics={"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "eps": metrics.EPS()})  # fmt: skip
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert 0 <= results["test"]["auc"] <= 1


@pytest.mark.parametrize("pin_memory", [False, True], ids=["data-on-gpu", "pinned-batches"])
def test_predict_moves_outputs_to_the_cpu_in_groups_without_a_sync_per_batch(pin_memory):
    # 32 batches: one group, moved to the CPU after the last batch (when the guard is off again)
    x, y = data()
    m = model()
    loader = DataLoader(
        TensorDataset(x, y), batch_size=64, sampler=SyncGuard(len(x), 64), pin_memory=pin_memory
    )
    try:
        out = F.predict(m, loader, device="cuda")
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert out.shape == (len(x), 2) and out.device.type == "cpu"


def test_the_guard_catches_a_sync():
    sampler = SyncGuard(256, 64)
    with pytest.raises(RuntimeError, match="synchroniz"):
        for i, _ in enumerate(sampler):
            if i == 200:
                torch.ones(1, device="cuda").item()
    torch.cuda.set_sync_debug_mode("default")


def test_prefetch_gives_the_batches_in_order_on_the_gpu():
    x, y = data(300)
    loader = DataLoader(TensorDataset(x, y), batch_size=64, pin_memory=True)
    got = list(prefetch_to_device(iter(loader), torch.device("cuda")))
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
