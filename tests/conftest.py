"""Shared fixtures: small learnable data sets generated on the spot (nothing is downloaded)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

# Tests run on 2 CPU cores next to each other; one thread per process keeps them predictable.
torch.set_num_threads(1)

XT = str(Path(sys.executable).with_name("xt"))  # the console script of this environment
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


def xt(*args: str, cwd: Path, env: dict | None = None, code: int = 0) -> subprocess.CompletedProcess:
    """Run the real ``xt`` command; assert its exit code (the output is in the message when it differs)."""
    out = subprocess.run([XT, *args], cwd=cwd, env=env or ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == code, f"xt {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def xt_reporting_imports(*args: str, env: dict, cwd: Path) -> tuple[str, list[str]]:
    """The real ``xt`` (its ``main``, in a fresh interpreter): its stdout, and which heavy modules it imported."""
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('imported:', sorted(m for m in ('torch', 'torchmetrics', 'torchvision')"
        " if m in sys.modules), file=sys.stderr))\n"
        "from xt_training.cli import main\nmain(sys.argv[1:])\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, env=env, cwd=cwd
    )
    assert out.returncode == 0, out.stderr
    return out.stdout, out.stderr.strip().splitlines()[-1].removeprefix("imported: ")


@pytest.fixture
def fresh_registry():
    """The registry built anew for the test and after it (tests that install or block plugins)."""
    from xt_training import registry

    registry.reset()
    yield
    registry.reset()


def make_classification(n: int = 512, features: int = 16, classes: int = 3, seed: int = 0):
    """Linearly separable-ish data: the label is the argmax of a fixed random projection."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, features, generator=g)
    w = torch.randn(features, classes, generator=g)
    return x, (x @ w).argmax(1)


@pytest.fixture
def tabular():
    """(train_loader, val_loader, n_features, n_classes)."""
    x, y = make_classification()
    train = DataLoader(TensorDataset(x[:384], y[:384]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[384:], y[384:]), batch_size=32)
    return train, val, 16, 3


def mlp(features: int = 16, classes: int = 3) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(features, 32), nn.ReLU(), nn.Linear(32, classes))


class SignalAtFetch(Dataset):
    """A data set that sends ``sig`` to its own process when its ``n``-th item is fetched (None: never):
    SIGTERM stops a run the way a scheduler's preemption does, SIGKILL ends it with nothing saved."""

    def __init__(self, x, y, n, sig=signal.SIGTERM):
        self.x, self.y, self.n, self.sig, self.fetched = x, y, n, sig, 0

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        self.fetched += 1
        if self.fetched == self.n:
            os.kill(os.getpid(), self.sig)
        return self.x[i], self.y[i]


def finish(processes: list[subprocess.Popen]) -> list[tuple[str, str]]:
    """Wait for processes started together (the ranks or machines of one run); each must exit 0. Their
    ``(stdout, stderr)``; any still running after 4 minutes is killed with the others."""
    try:
        outputs = [p.communicate(timeout=240) for p in processes]
    finally:
        for p in processes:
            p.kill()
    for p, (_, stderr) in zip(processes, outputs):
        assert p.returncode == 0, stderr[-3000:]
    return outputs


def overlay_venv(venv: Path, hide: str | tuple[str, ...] = ()) -> tuple[Path, Path]:
    """Make a venv that sees this environment's packages (torch, xt-training...) through a ``.pth`` file;
    returns its python and its own site-packages, where ``pip --python PYTHON install`` puts what it installs.

    ``hide`` leaves out this environment's entries whose names contain it, or any of them (``xt_optuna``: a
    plugin installed here would otherwise satisfy the requirement that the test wants pip to install).
    """
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = Path(
        subprocess.run(
            [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    )  # fmt: skip
    base = Path(sysconfig.get_paths()["purelib"])
    hide = (hide,) if isinstance(hide, str) else hide
    if hide:
        visible = venv.parent / f"{venv.name}-base-site"
        visible.mkdir()
        for entry in base.iterdir():
            if not any(h in entry.name.lower().replace("-", "_") for h in hide):
                (visible / entry.name).symlink_to(entry)
        base = visible
    (site / "_xt_base.pth").write_text(f"import site; site.addsitedir({str(base)!r})\n")
    return python, site


# The files whose tests take minutes together, longest first. `make test` hands whole files to two workers
# in collection order: started first, they run beside the many short files instead of after them.
LONG_FILES = ("test_docs.py", "test_benchmarks.py", "test_tune.py", "test_fsdp.py", "test_predict.py",
              "test_cli.py", "test_mlflow.py", "test_fault_tolerance.py", "test_distributed.py")  # fmt: skip


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """The long files first (see LONG_FILES); the valgrind run (minutes), if selected, last."""
    rank = {name: i for i, name in enumerate(LONG_FILES)}
    items.sort(key=lambda item: (rank.get(item.path.name, len(rank)), "cachegrind" in item.name))  # stable
