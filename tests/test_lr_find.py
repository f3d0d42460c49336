"""The learning-rate finder: F.lr_find and xt lr-find, as a user runs them."""

from __future__ import annotations

import copy
import json
import math
import random
import re
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ENV, xt
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from xt_training.errors import ConfigError
from xt_training.utils import functional as F


def regression(n: int = 1024, features: int = 10, seed: int = 0):
    """y = x @ w + noise (std 0.1): with MSE, a quadratic whose curvature (about 2 in every direction) is known."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    return x, x @ torch.randn(features, 1, generator=g) + 0.1 * torch.randn(n, 1, generator=g)


def one_epoch_loss(x, y, lr: float, seed: int) -> float:
    """The loss on all the data after one epoch of plain SGD at ``lr``, by hand."""
    torch.manual_seed(seed)
    model = nn.Linear(x.shape[1], 1)
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    for xb, yb in DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True):
        loss = nn.functional.mse_loss(model(xb), yb)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        return nn.functional.mse_loss(model(x), y).item()


def test_the_suggestion_is_within_3x_of_the_best_rate_of_a_grid_search():
    x, y = regression()
    # the good rate, established: the best of a grid (10 a decade) by the loss after one epoch of SGD, 3 seeds
    grid = [10 ** (k / 10) for k in range(-30, 2)]  # 1e-3 .. 1.26; 2/curvature ~ 1 diverges
    mean_log_loss = {
        lr: sum(min(math.log(one_epoch_loss(x, y, lr, s)), 50.0) for s in range(3)) for lr in grid
    }
    best = min(grid, key=mean_log_loss.get)
    assert 0.05 < best < 0.8  # a sanity check of the problem: about 1/curvature, below 2/curvature
    for seed in range(3):
        torch.manual_seed(seed)
        model = nn.Linear(10, 1)
        loader = DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)
        result = F.lr_find(
            loader, model, torch.optim.SGD(model.parameters(), lr=0.01), nn.MSELoss(), quiet=True
        )
        assert best / 3 <= result.suggestion <= best * 3, (seed, result.suggestion, best)
        assert result.lrs[result.suggestion_index] == result.suggestion
        # the curve: exponential steps from min_lr, the smoothed loss bias-corrected (its first point is the
        # first batch's loss), ending where it diverged (SGD at lr > 1 here)
        assert result.lrs[0] == 1e-7 and result.lrs[1] / result.lrs[0] == pytest.approx(1e8 ** (1 / 99))
        assert result.losses[0] == pytest.approx(result.raw_losses[0])
        assert result.stopped_early and result.lrs[-1] > 1
        assert result.losses[-1] > 4 * min(result.losses)


def _state(model, optimizer, generator):
    return {
        "weights": {k: v.clone() for k, v in model.state_dict().items()},
        "optimizer": copy.deepcopy(optimizer.state_dict()),  # state_dict() holds the live tensors
        "modes": [m.training for m in model.modules()],
        "device": {p.device for p in model.parameters()},
        "torch_rng": torch.get_rng_state(),
        "python_rng": random.getstate(),
        "numpy_rng": np.random.get_state()[1].copy(),
        "loader_rng": generator.get_state(),
    }


def _assert_same(before, after):
    assert before["weights"].keys() == after["weights"].keys()
    for key, value in before["weights"].items():  # bit for bit, BatchNorm's running statistics included
        assert torch.equal(value, after["weights"][key]), key
    assert _flat(before["optimizer"]) == _flat(after["optimizer"])
    for key in ("modes", "device", "python_rng"):
        assert before[key] == after[key], key
    for key in ("torch_rng", "loader_rng"):
        assert torch.equal(before[key], after[key]), key
    assert (before["numpy_rng"] == after["numpy_rng"]).all()


def _flat(obj):
    """A state_dict as nested plain values, tensors as (dtype, shape, bytes): equal exactly when bit-equal."""
    if isinstance(obj, torch.Tensor):
        return (obj.dtype, tuple(obj.shape), obj.cpu().numpy().tobytes())
    if isinstance(obj, dict):
        return {k: _flat(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_flat(v) for v in obj]
    return obj


class _Net(nn.Module):
    """BatchNorm (buffers), dropout (draws from the RNG) and a submodule left in eval mode."""

    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Linear(16, 32), nn.BatchNorm1d(32), nn.ReLU(), nn.Dropout(0.2))
        self.head = nn.Linear(32, 3)

    def forward(self, x):
        return self.head(self.body(x))


@pytest.mark.parametrize("how", ["completed", "diverged to inf", "failed"])
def test_weights_optimizer_modes_and_rngs_are_restored_bit_for_bit(how):
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 16, generator=g), torch.randint(0, 3, (96,), generator=g)
    generator = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=generator)
    torch.manual_seed(0)
    model = _Net()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    for xb, yb in loader:  # a trained model: Adam has moments and a step count to keep
        nn.functional.cross_entropy(model(xb), yb).backward()
        optimizer.step()
        optimizer.zero_grad()
    model.body[1].eval()  # a mode of the user's own, kept
    random.seed(3)
    np.random.seed(3)
    before = _state(model, optimizer, generator)
    loss_fn = nn.CrossEntropyLoss()
    options = {"num_steps": 20, "quiet": True}
    if how == "diverged to inf":
        # one batch a pass, so the inf comes in a pass's first batch (which the Runner checks itself); MSE on
        # the logits (no bound, unlike cross-entropy) and rates up to 1e30 without the early stop: inf stops it
        one_hot = nn.functional.one_hot(y, 3).float()
        loader = DataLoader(TensorDataset(x, one_hot), batch_size=96, shuffle=True, generator=generator)
        loss_fn = nn.MSELoss()
        options.update(max_lr=1e30, num_steps=60, early_stop_threshold=None)
    if how == "failed":

        def loss_fn(y_pred, y, calls=[]):  # noqa: B006 - counts its calls
            calls.append(1)
            if len(calls) == 8:  # in a pass's second batch
                raise RuntimeError("boom")
            return nn.functional.cross_entropy(y_pred, y)

        with pytest.raises(RuntimeError, match="boom"):
            F.lr_find(loader, model, optimizer, loss_fn, **options)
    else:
        result = F.lr_find(loader, model, optimizer, loss_fn, **options)
        if how == "diverged to inf":
            assert result.stopped_early and not math.isfinite(result.losses[-1]), result.losses
            assert len(result.lrs) < 60 and "diverged" in result.note
        else:
            assert len(result.lrs) == 20 and not result.stopped_early  # 3 batches a pass: 7 passes
    _assert_same(before, _state(model, optimizer, generator))


def test_dict_batches_forward_fn_and_mixed_precision_take_the_loops_path():
    x, y = regression(256)
    batches = [{"features": x[i : i + 32], "target": y[i : i + 32]} for i in range(0, 256, 32)]
    model = nn.Linear(10, 1)
    result = F.lr_find(
        batches, model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(),
        forward_fn=lambda m, b: (m(b["features"]).float(), b["target"]),
        precision="bf16-mixed", num_steps=30, max_lr=0.1, quiet=True,
    )  # fmt: skip
    assert len(result.lrs) == len(result.losses) == 30 and result.lrs[-1] == pytest.approx(0.1)
    assert result.suggestion is not None


def test_too_few_points_give_no_suggestion_and_say_why():
    x, y = regression(64)
    model = nn.Linear(10, 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    result = F.lr_find(
        loader, model, torch.optim.SGD(model.parameters(), lr=0.1), nn.MSELoss(), num_steps=5, quiet=True
    )
    assert result.suggestion is None and result.suggestion_index is None
    assert "run more steps (num_steps)" in result.note
    assert result.summary().startswith("no suggested learning rate (5 steps")


@pytest.mark.parametrize(
    "options, message",
    [
        ({"min_lr": 1.0, "max_lr": 0.1}, "min_lr (1) must be below max_lr (0.1)"),
        ({"min_lr": 0.1, "max_lr": 0.1}, "min_lr (0.1) must be below max_lr (0.1)"),
        ({"num_steps": 1}, "num_steps must be an integer of at least 2 (e.g. 100), not 1"),
        ({"num_steps": 50.0}, "num_steps must be an integer of at least 2"),
        ({"min_lr": 0}, "min_lr must be a positive number, e.g. 1e-7, not 0"),
        ({"early_stop_threshold": 0.5}, "early_stop_threshold must be a number above 1"),
        ({"beta": 1.0}, "beta must be in [0, 1)"),
        ({"optimizer": torch.optim.SGD}, "optimizer is the class SGD; pass an instance"),
    ],
)
def test_bad_input_is_one_line(options, message):
    model = nn.Linear(10, 1)
    args = {"optimizer": torch.optim.SGD(model.parameters(), lr=0.1), **options}
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ConfigError) as error:
        F.lr_find([(torch.zeros(4, 10), torch.zeros(4, 1))], model, loss_fn=nn.MSELoss(), quiet=True, **args)
    assert message in str(error.value) and "\n" not in str(error.value)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())


def test_without_matplotlib_a_save_dir_is_refused_before_the_test(tmp_path):
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"  # how Python reports a package that is not installed
        "import torch\nfrom xt_training.utils import functional as F\n"
        "model = torch.nn.Linear(2, 1)\n"
        "F.lr_find([(torch.zeros(4, 2), torch.zeros(4, 1))], model, torch.optim.SGD(model.parameters()),"
        f" torch.nn.MSELoss(), save_dir={str(tmp_path / 'lr')!r})\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=ENV)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "xt_training.errors.ConfigError: the plot lr_find.png needs matplotlib, which is not installed: "
        "pip install matplotlib (or xt-training[plot])"
    )
    assert not (tmp_path / "lr").exists()


def test_xt_lr_find_writes_the_plot_and_the_curve_and_prints_the_suggestion(tmp_path):
    pytest.importorskip("matplotlib")
    args = ["--model", "mlp", "--data", "synthetic-regression", "--data-opt", "n_samples=500"]
    out = xt("lr-find", *args, "--optimizer", "sgd", "--num-steps", "40", "--save-dir", "lr", cwd=tmp_path)
    assert (tmp_path / "lr" / "lr_find.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    curve = json.loads((tmp_path / "lr" / "lr_find.json").read_text())
    assert len(curve["lrs"]) == len(curve["losses"]) == len(curve["raw_losses"]) <= 40
    assert curve["rule"] == "steepest descent of the smoothed loss against log(lr) (Lightning's rule)"
    first = out.stdout.splitlines()[0]
    assert re.match(r"suggested learning rate: \S+ \(steepest descent of the smoothed loss", first), (
        out.stdout
    )
    assert float(first.split()[3]) == pytest.approx(curve["suggestion"], rel=1e-2)
    assert out.stdout.splitlines()[1] == "wrote lr/lr_find.json and lr/lr_find.png"
    assert sorted(p.name for p in (tmp_path / "lr").iterdir()) == ["lr_find.json", "lr_find.png"]


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--min-lr", "1", "--max-lr", "0.1"], "min_lr (1) must be below max_lr (0.1)"),
        (["--num-steps", "1"], "num_steps must be an integer of at least 2 (e.g. 100), not 1"),
        (["--accumulate-grad-batches", "2"], "drop --accumulate-grad-batches"),
    ],
)
def test_xt_lr_find_bad_input_is_one_line(tmp_path, flags, message):
    out = xt("lr-find", "--model", "mlp", "--data", "synthetic-regression", *flags, cwd=tmp_path, code=2)
    assert out.stderr.startswith("xt: error: ") and message in out.stderr and out.stderr.count("\n") == 1
    assert list(tmp_path.iterdir()) == []  # refused before anything was built or written


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_a_model_on_the_cpu_tested_on_cuda_comes_back_to_the_cpu_unchanged():
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(96, 16, generator=g), torch.randint(0, 3, (96,), generator=g)
    generator = torch.Generator().manual_seed(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True, generator=generator)
    torch.manual_seed(0)
    model = _Net()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    torch.cuda.init()  # its RNG is saved and restored too (dropout draws from it on the GPU)
    before, cuda_rng = _state(model, optimizer, generator), torch.cuda.get_rng_state()
    result = F.lr_find(
        loader, model, optimizer, nn.CrossEntropyLoss(), device="cuda", num_steps=20, quiet=True
    )
    assert len(result.lrs) == 20
    _assert_same(before, _state(model, optimizer, generator))  # on the CPU again, bit for bit
    assert torch.equal(cuda_rng, torch.cuda.get_rng_state())
