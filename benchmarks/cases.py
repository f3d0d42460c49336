"""One benchmark case, run in a process of its own: ``python benchmarks/cases.py CASE DATA STEPS WORKDIR``.

Every case builds the same data, model (MLP 32-64-10), optimizer, loss and loader from the same seed,
on one thread, times only the work itself (not the imports or the set-up) and prints one line
``BENCH_RESULT {json}`` -- or ``BENCH_SKIP reason`` when an optional package is missing. Training
cases report the loss of the trained model on the whole training set: bit-equal losses across cases
prove that they did the same work (same batches, same order, same updates). ``benchmarks/run.py``
runs the cases and builds the tables; see its docstring.

DATA is ``map`` (a small map-style ``Dataset`` class: every batch is fetched and collated sample by
sample; ``xt_no_fast_path`` iterates the DataLoader itself, so its time is the loop's own overhead) or
``tensor`` (``DataLoader(TensorDataset(x, y))``, the case an in-memory fast path speeds up). Training
runs ``STEPS`` optimizer steps over ``EPOCHS`` epochs; evaluation runs ``STEPS`` batches in one pass.

DATA ``gpu`` is another workload (issue 5): a ResNet-18 on synthetic 3x224x224 images, bf16 autocast,
channels_last, on a CUDA GPU (``BENCH_SKIP`` without one); see :func:`make_gpu_setup`. Setting
``XT_BENCH_GPU_ON_CPU=1`` runs those cases in a tiny form on the CPU (32x32 images): only the smoke
test does, to check that the code runs end to end; its timings mean nothing.
"""

from __future__ import annotations

import copy
import gc
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, TensorDataset

BATCH_SIZE = 64
EPOCHS = 3
MEMORY_EPOCHS = 6
SEED = 0
NUM_CLASSES = 10


class PairDataset(Dataset):
    """A map-style dataset as users write them: one ``(x[i], y[i])`` pair per index."""

    def __init__(self, x: torch.Tensor, y: torch.Tensor):
        self.x, self.y = x, y

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]


@dataclass
class Setup:
    """Everything a case needs; built identically in every process."""

    data: str
    steps: int
    epochs: int
    workdir: Path
    x: torch.Tensor
    y: torch.Tensor
    model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loss_fn: torch.nn.Module
    loader: DataLoader
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))

    last_run: Path | None = None

    def run_dir(self) -> Path:
        """A new run directory for each F.train call (F.train refuses one that holds a run)."""
        self.last_run = Path(tempfile.mkdtemp(prefix="run-", dir=self.workdir))
        return self.last_run


def make_setup(data: str, steps: int, epochs: int, workdir: Path, shuffle: bool = True) -> Setup:
    """Data from a random linear teacher (so metrics are meaningful), then model and loader, seeded."""
    torch.set_num_threads(1)
    batches = max(1, steps // epochs)
    n = batches * BATCH_SIZE
    g = torch.Generator().manual_seed(SEED)
    x = torch.randn(n, 32, generator=g)
    teacher = torch.randn(32, NUM_CLASSES, generator=g)
    y = (x @ teacher + 2.0 * torch.randn(n, NUM_CLASSES, generator=g)).argmax(1)
    torch.manual_seed(SEED)  # the global RNG drives the init and the shuffling: equal in every case
    model = torch.nn.Sequential(torch.nn.Linear(32, 64), torch.nn.ReLU(), torch.nn.Linear(64, NUM_CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    dataset = TensorDataset(x, y) if data == "tensor" else PairDataset(x, y)
    loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=shuffle)
    return Setup(
        data, batches * epochs, epochs, workdir, x, y, model, optimizer, torch.nn.CrossEntropyLoss(), loader
    )


def final_loss(s: Setup) -> float:
    """The trained model's loss on the whole training set: equal only if the training was equal."""
    with torch.no_grad():
        return s.loss_fn(s.model.eval()(s.x), s.y).item()


class Skip(Exception):
    """A case that cannot run here (an optional package is missing); the harness prints the reason."""


Timing = tuple[float, float]


def timed(fn: Callable[[], Any], device: torch.device | None = None) -> Timing:
    """(wall seconds, CPU seconds of this process) of ``fn()``.

    The CPU time leaves out the time the process waited for a core, so on a shared machine it is the
    steadier of the two; both include the work of helper threads (e.g. TensorBoard's writer). On a CUDA
    ``device`` the clocks are read after ``torch.cuda.synchronize()``: the queued kernels count.

    Garbage is collected before the clock starts. The imports leave a full collection due (~0.4M
    objects with torchmetrics loaded: ~0.2 s, a fifth of a case); without this it lands in the timed
    work of whichever case happens to cross the collector's threshold there, depending on what the case
    imported rather than on what it runs. Collections the work itself causes still count.
    """
    gc.collect()
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - wall, time.process_time() - cpu


# ---- training cases: each returns the timing of the work -----------------------------------------------


def plain(s: Setup) -> Timing:
    """The loop a user writes by hand: nothing but the step."""

    def run() -> None:
        model, opt, loss_fn = s.model, s.optimizer, s.loss_fn
        model.train()
        for _ in range(s.epochs):
            for x, y in s.loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()

    return timed(run)


def plain_item(s: Setup) -> Timing:
    """The hand-written loop with the common habit of reading the loss every step (``loss.item()``)."""

    def run() -> None:
        model, opt, loss_fn = s.model, s.optimizer, s.loss_fn
        model.train()
        for _ in range(s.epochs):
            total = 0.0
            for x, y in s.loader:
                opt.zero_grad()
                loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                total += loss.item()

    return timed(run)


def xt_defaults(s: Setup) -> Timing:
    """``F.train`` with its defaults: console logger (plain lines when stdout is not a terminal),
    checkpoints and history.json each epoch."""
    from xt_training.utils import functional as F

    return timed(lambda: F.train(s.run_dir(), s.loader, s.model, s.optimizer, s.epochs, s.loss_fn))


def xt_no_fast_path(s: Setup) -> Timing:
    """``F.train`` defaults with ``fast_path=False``: the DataLoader iterated as it is, so the time is the
    loop's own overhead."""
    from xt_training.utils import functional as F

    return timed(
        lambda: F.train(s.run_dir(), s.loader, s.model, s.optimizer, s.epochs, s.loss_fn, fast_path=False)
    )


def full_metrics() -> dict[str, Any]:
    """The logging case's metrics: ROC AUC keeps every prediction of the epoch and sorts them to compute."""
    from xt_training import metrics

    return {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "f1": metrics.F1()}


def _train_logged(s: Setup, metrics: dict[str, Any], logger: Callable[[Path], Any] | None = None) -> Timing:
    """``F.train`` with the console progress bar forced on, ``metrics`` and a logger: ``logger(run_dir)``,
    by default the TensorBoard logger."""
    from xt_training.loggers.console import ConsoleLogger
    from xt_training.utils import functional as F

    if logger is None:
        try:
            from xt_training.loggers.tensorboard import TensorBoardLogger
        except ImportError as e:
            raise Skip(f"xt_training.loggers.tensorboard does not import yet ({e})") from None
        logger = TensorBoardLogger
    run_dir = s.run_dir()
    loggers = [ConsoleLogger(progress=True), logger(save_dir=run_dir)]
    return timed(
        lambda: F.train(
            run_dir,
            s.loader,
            s.model,
            s.optimizer,
            s.epochs,
            s.loss_fn,
            eval_metrics=metrics,
            loggers=loggers,
        )
    )


def xt_full(s: Setup) -> Timing:
    """Progress bar, TensorBoard, and Accuracy, ROC_AUC, F1 on the training pass."""
    return _train_logged(s, full_metrics())


def xt_logging(s: Setup) -> Timing:
    """Progress bar, TensorBoard, and three metrics whose cost does not grow with the epoch: Accuracy,
    F1, examples/s -- the loop's own cost of logging."""
    from xt_training import metrics

    return _train_logged(s, {"acc": metrics.Accuracy(), "f1": metrics.F1(), "eps": metrics.EPS()})


def xt_mlflow(s: Setup) -> Timing:
    """xt_logging with the MLflow logger (plugins/xt-mlflow) instead of TensorBoard's: SQLite store, files
    and ``best.pt`` sent at the end. The store is made before the clock starts (its tables, once per benchmark)."""
    from xt_training import metrics

    try:
        import mlflow  # noqa: F401
    except ImportError:
        raise Skip("mlflow is not installed (pip install ./plugins/xt-mlflow)") from None
    try:
        from xt_mlflow import MLflowLogger
    except ImportError:  # not installed: this checkout's copy
        sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "plugins" / "xt-mlflow"))
        from xt_mlflow import MLflowLogger
    # The store is shared by the rounds (its tables are made once) and its artifacts, MLflow's ./mlruns of
    # the directory where the store is made, go beside it rather than into the checkout.
    os.chdir(s.workdir.parent)
    return _train_logged(
        s,
        {"acc": metrics.Accuracy(), "f1": metrics.F1(), "eps": metrics.EPS()},
        lambda save_dir: MLflowLogger(save_dir=save_dir, tracking_uri="sqlite:///mlflow.db"),
    )


def plain_metrics(s: Setup) -> Timing:
    """The hand-written loop computing xt_full's metrics over each epoch with torchmetrics (updated every
    step, computed at the end of the epoch): the same work as xt_full, written by hand."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC, MulticlassF1Score

    metrics = [
        MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro"),
        MulticlassAUROC(num_classes=NUM_CLASSES),
        MulticlassF1Score(num_classes=NUM_CLASSES, average="macro"),
    ]

    def run() -> None:
        model, opt, loss_fn = s.model, s.optimizer, s.loss_fn
        model.train()
        for epoch in range(1, s.epochs + 1):
            for m in metrics:
                m.reset()
            for x, y in s.loader:
                opt.zero_grad()
                y_pred = model(x)
                loss = loss_fn(y_pred, y)
                loss.backward()
                opt.step()
                for m in metrics:
                    m.update(y_pred.detach(), y)
            print(f"epoch {epoch}", " | ".join(f"{m.compute().item():.4f}" for m in metrics))

    return timed(run)


def ignite(s: Setup) -> Timing:
    """PyTorch-Ignite's ``create_supervised_trainer`` with its defaults (its output is ``loss.item()``)."""
    try:
        from ignite.engine import create_supervised_trainer
    except ImportError:
        raise Skip("pytorch-ignite is not installed (pip install pytorch-ignite)") from None
    trainer = create_supervised_trainer(s.model, s.optimizer, s.loss_fn)
    return timed(lambda: trainer.run(s.loader, max_epochs=s.epochs))


def lightning(s: Setup) -> Timing:
    """Lightning with its defaults (progress bar, logger, checkpoint each epoch), logging the loss."""
    try:
        import lightning as L
    except ImportError:
        raise Skip("lightning is not installed (pip install lightning)") from None

    class Module(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.model = s.model

        def training_step(self, batch: Any, batch_idx: int) -> torch.Tensor:
            x, y = batch
            loss = s.loss_fn(self.model(x), y)
            self.log("train_loss", loss)
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return s.optimizer

    module = Module()

    def run() -> None:
        trainer = L.Trainer(max_epochs=s.epochs, accelerator="cpu", devices=1, default_root_dir=s.workdir)
        trainer.fit(module, s.loader)

    return timed(run)


# ---- evaluation cases: one pass, same metrics; each returns (timing, values) -------------------------


def eval_plain(s: Setup) -> tuple[Timing, dict[str, float]]:
    """A hand-written eval loop: torchmetrics Accuracy and AUROC updated per batch and computed once over
    the epoch, the loss summed on the device, examples per second."""
    from torchmetrics.classification import MulticlassAccuracy, MulticlassAUROC

    acc = MulticlassAccuracy(num_classes=NUM_CLASSES, average="micro")
    auc = MulticlassAUROC(num_classes=NUM_CLASSES)
    values: dict[str, float] = {}

    def run() -> None:
        model, loss_fn = s.model.eval(), s.loss_fn
        loss_sum, n, start = torch.zeros(()), 0, time.perf_counter()
        with torch.no_grad():
            for x, y in s.loader:
                y_pred = model(x)
                loss_sum += loss_fn(y_pred, y) * len(y)
                acc.update(y_pred, y)
                auc.update(y_pred, y)
                n += len(y)
        values.update(loss=loss_sum.item() / n, acc=acc.compute().item(), auc=auc.compute().item())
        values["eps"] = n / (time.perf_counter() - start)
        print(" | ".join(f"{k} {v:.4f}" for k, v in values.items()))

    return timed(run), values


def eval_xt(s: Setup) -> tuple[Timing, dict[str, float]]:
    """``F.test`` with Accuracy, ROC_AUC and EPS, defaults otherwise (console logger on)."""
    from xt_training import metrics
    from xt_training.utils import functional as F

    m = {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "eps": metrics.EPS()}
    results: dict[str, Any] = {}
    timing = timed(lambda: results.update(F.test({"test": s.loader}, s.model, s.loss_fn, eval_metrics=m)))
    return timing, results["test"]


# ---- memory: several epochs with metrics and loggers, memory read after each epoch -------------------


def _rss_mb() -> tuple[float, float]:
    """(current RSS, peak RSS) of this process in MiB; current needs psutil, else it is the peak."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    try:
        import psutil
    except ImportError:
        return peak, peak
    return psutil.Process().memory_info().rss / 2**20, peak


def _graph_tensors() -> int:
    """Live tensors that hold an autograd graph: a loop that keeps none leaves 0 between epochs."""
    return sum(1 for o in gc.get_objects() if isinstance(o, torch.Tensor) and o.grad_fn is not None)


class MemoryProbe:
    """A logger (only ``end_epoch``) recording memory after every epoch."""

    def __init__(self) -> None:
        self.rows: list[dict[str, float]] = []

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        rss, peak = _rss_mb()
        row = {"epoch": epoch, "rss_mb": rss, "peak_mb": max(rss, peak), "graph_tensors": _graph_tensors()}
        self.rows.append(row)


def memory(s: Setup) -> tuple[Timing, dict[str, Any]]:
    """``F.train`` with Accuracy, ROC_AUC, F1 and the console logger for several epochs."""
    from xt_training.loggers.console import ConsoleLogger
    from xt_training.utils import functional as F

    probe, metrics = MemoryProbe(), full_metrics()
    loggers = [ConsoleLogger(), probe]
    timing = timed(
        lambda: F.train(
            s.run_dir(),
            s.loader,
            s.model,
            s.optimizer,
            s.epochs,
            s.loss_fn,
            eval_metrics=metrics,
            loggers=loggers,
        )
    )
    return timing, {"epochs": probe.rows}


# ---- GPU: ResNet-18 on synthetic 224x224 images, bf16 (DATA 'gpu'; issue 5) ---------------------------

GPU_ON_CPU = "XT_BENCH_GPU_ON_CPU"  # "1": the GPU cases in a tiny form on the CPU (the smoke test only)
GPU_IMAGE_SIZE = 224
TINY_IMAGE_SIZE = 32  # with GPU_ON_CPU
GPU_WORKERS = 4  # DataLoader workers of the tuned loader (not persistent: see make_gpu_setup)
TINY_WORKERS = 1  # with GPU_ON_CPU: the same code path, without forking 4 workers an epoch on a small machine
GPU_LR = 0.02
GPU_WARMUP_STEPS = 3
SIGNAL = 0.05  # an image is this much its class's template, the rest noise: the loss falls as it trains
TEMPLATE_SIZE = 7  # the templates are random 7x7 colour blocks, upsampled: shapes a CNN can learn


class ToFloat(torch.nn.Module):
    """The model's first layer: uint8 images to floats in [-1, 1], on the device, keeping the memory
    format (so the host-to-device copies move a quarter of float32's bytes)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.float().mul_(2 / 255).sub_(1)


def gpu_device() -> torch.device:
    """CUDA, or the CPU with ``XT_BENCH_GPU_ON_CPU=1``; otherwise the case is skipped."""
    if os.environ.get(GPU_ON_CPU) == "1":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise Skip(f"no CUDA device (torch {torch.__version__}: torch.cuda.is_available() is False)")
    return torch.device("cuda")


def synthetic_images(n: int, size: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` uint8 images (3 x size x size) and their labels, on the host. Each image is ``SIGNAL`` of its
    class's template (a smooth random colour pattern) plus uniform noise. Drawn from a generator seeded
    with ``SEED`` on ``device`` (fast on a GPU; the same numbers in every process on the same device), in
    chunks, then copied to the host."""
    g = torch.Generator(device=device).manual_seed(SEED)
    shape = (3, size, size)
    coarse = torch.randint(0, 256, (NUM_CLASSES, 3, TEMPLATE_SIZE, TEMPLATE_SIZE), generator=g, device=device)
    templates = torch.nn.functional.interpolate(coarse.float(), size=(size, size), mode="bilinear")
    y = torch.randint(0, NUM_CLASSES, (n,), generator=g, device=device)
    x = torch.empty((n, *shape), dtype=torch.uint8)
    for i in range(0, n, 512):
        labels = y[i : i + 512]
        noise = torch.randint(0, 256, (len(labels), *shape), generator=g, device=device, dtype=torch.uint8)
        mixed = noise.float().mul_(1 - SIGNAL).add_(templates[labels].mul_(SIGNAL))
        x[i : i + len(labels)] = mixed.round_().to(torch.uint8).cpu()
    return x, y.cpu()


def warm_up(s: Setup) -> None:
    """A few bf16 steps of a copy of the model on a batch of the data, before the clock starts: CUDA
    context, cuDNN/cuBLAS handles, cudnn.benchmark's algorithm choice and the caching allocator are then
    ready alike for every case. The copy leaves the model, optimizer and global RNG untouched. (It runs in
    the tiny CPU form too, so that the smoke test runs its code.)"""
    model = copy.deepcopy(s.model).to(s.device, memory_format=torch.channels_last).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=GPU_LR, momentum=0.9)
    x = s.x[:BATCH_SIZE].to(s.device).contiguous(memory_format=torch.channels_last)
    y = s.y[:BATCH_SIZE].to(s.device)
    for _ in range(GPU_WARMUP_STEPS):
        with torch.autocast(s.device.type, dtype=torch.bfloat16):
            loss = s.loss_fn(model(x), y)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    del model, optimizer, x, y, loss
    if s.device.type == "cuda":
        torch.cuda.synchronize(s.device)


def make_gpu_setup(steps: int, workdir: Path, tuned_loader: bool) -> Setup:
    """ResNet-18 (torchvision, 10 classes, random init: nothing is downloaded) behind :class:`ToFloat`,
    SGD (lr ``GPU_LR``, momentum 0.9), cross-entropy, ``STEPS // EPOCHS`` batches of 64 synthetic images
    per epoch, ``EPOCHS`` epochs, seed ``SEED``; ``cudnn.benchmark`` on (in every case alike).

    ``tuned_loader``: ``DataLoader(..., shuffle=True, pin_memory=True, num_workers=GPU_WORKERS)`` as a
    tuned loop has it, else a plain ``DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)``.
    The workers are not persistent: a persistent loader draws its base seed once, not once per epoch,
    so from the 2nd epoch on it would shuffle differently from the other loader (and from F.train's fast
    path). The model stays on the host: moving it to the device is part of the timed work of each case.
    """
    device = gpu_device()  # skips without CUDA, before anything slow
    from torchvision.models import resnet18

    torch.set_num_threads(1)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    size = TINY_IMAGE_SIZE if device.type == "cpu" else GPU_IMAGE_SIZE
    batches = max(1, steps // EPOCHS)
    x, y = synthetic_images(batches * BATCH_SIZE, size, device)
    torch.manual_seed(SEED)  # the global RNG drives the init and the shuffling: equal in every case
    model = torch.nn.Sequential(ToFloat(), resnet18(weights=None, num_classes=NUM_CLASSES))
    optimizer = torch.optim.SGD(model.parameters(), lr=GPU_LR, momentum=0.9)
    dataset = TensorDataset(x, y)
    if tuned_loader:
        workers = TINY_WORKERS if device.type == "cpu" else GPU_WORKERS
        loader = DataLoader(
            dataset, batch_size=BATCH_SIZE, shuffle=True, pin_memory=True, num_workers=workers
        )
    else:
        loader = DataLoader(dataset, batch_size=BATCH_SIZE, shuffle=True)
    s = Setup("gpu", batches * EPOCHS, EPOCHS, workdir, x, y, model, optimizer, torch.nn.CrossEntropyLoss(),
              loader, device)  # fmt: skip
    warm_up(s)
    return s


def gpu_plain(s: Setup) -> Timing:
    """The tuned hand-written loop: channels_last model and inputs, bf16 autocast, pinned batches copied
    with ``non_blocking=True``, ``zero_grad(set_to_none=True)``, no host read of any value per step."""

    def run() -> None:
        device, opt, loss_fn = s.device, s.optimizer, s.loss_fn
        model = s.model.to(device, memory_format=torch.channels_last).train()
        for _ in range(s.epochs):
            for x, y in s.loader:
                x = x.to(device, non_blocking=True).contiguous(memory_format=torch.channels_last)
                y = y.to(device, non_blocking=True)
                with torch.autocast(device.type, dtype=torch.bfloat16):
                    loss = loss_fn(model(x), y)
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

    return timed(run, s.device)


def _gpu_train(s: Setup) -> Timing:
    """``F.train`` with its defaults but for ``precision='bf16-mixed'`` and ``channels_last=True``."""
    from xt_training.utils import functional as F

    return timed(
        lambda: F.train(s.run_dir(), s.loader, s.model, s.optimizer, s.epochs, s.loss_fn,
                        device=s.device, precision="bf16-mixed", channels_last=True),
        s.device,
    )  # fmt: skip


def gpu_runner(s: Setup) -> Timing:
    """The loop alone: a ``Runner`` (bf16-mixed, channels_last, quiet) called once per epoch on the tuned
    loader, without F.train's per-epoch checkpoints (~90 MB each for ResNet-18 with momentum) and history."""
    from xt_training import Runner

    def run() -> None:
        runner = Runner(s.model, s.loss_fn, s.optimizer, device=s.device, precision="bf16-mixed",
                        channels_last=True, quiet=True)  # fmt: skip
        s.model.train()
        for epoch in range(1, s.epochs + 1):
            runner.epoch = epoch
            runner(s.loader, "train")

    return timed(run, s.device)


def data_path(s: Setup) -> str:
    """Which data path F.train took, from the notices in the run's notes.txt."""
    notes = s.last_run / "notes.txt" if s.last_run is not None else None
    text = notes.read_text() if notes is not None and notes.is_file() else ""
    fast = [line for line in text.splitlines() if line.startswith("fast path")]
    if fast:
        return fast[0].split(" -- ")[0]  # e.g. 'fast path: batches are gathered on cuda:0 directly from ...'
    path = "the DataLoader's batches (no fast-path notice in notes.txt)"
    return path + (", copied to the GPU on a side stream one step ahead" if s.device.type == "cuda" else "")


def gpu_final_loss(s: Setup) -> float:
    """The trained model's loss on the whole training set (eval mode, bf16 autocast, batches of 256)."""
    model, total = s.model.eval(), torch.zeros((), device=s.device)
    with torch.no_grad(), torch.autocast(s.device.type, dtype=torch.bfloat16):
        for i in range(0, len(s.x), 256):
            x = s.x[i : i + 256].to(s.device).contiguous(memory_format=torch.channels_last)
            y = s.y[i : i + 256].to(s.device)
            total += torch.nn.functional.cross_entropy(model(x).float(), y, reduction="sum")
    return total.item() / len(s.x)


def gpu_info(device: torch.device) -> str:
    if device.type != "cuda":
        return f"CPU ({GPU_ON_CPU}=1: tiny form, {TINY_IMAGE_SIZE}x{TINY_IMAGE_SIZE} images; timings mean nothing)"
    cudnn = torch.backends.cudnn.version()
    return f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}, cuDNN {cudnn}"


def run_gpu_case(case: str, steps: int, workdir: Path) -> dict[str, Any]:
    if case not in GPU_CASES:
        raise SystemExit(f"unknown GPU case {case!r}; choose one of: {', '.join(GPU_CASES)}")
    s = make_gpu_setup(steps, workdir, tuned_loader=case != "xt_fast")
    timing = GPU_CASES[case](s)
    extra = {"loss": gpu_final_loss(s), "device": gpu_info(s.device), "seed": SEED}
    extra["image_size"] = s.x.shape[-1]
    if case.startswith("xt_") and case != "xt_runner":
        extra["path"] = data_path(s)
    return {"timing": timing, "steps": s.steps, **extra}


GPU_CASES: dict[str, Callable[[Setup], Timing]] = {
    "plain": gpu_plain,
    "xt_defaults": _gpu_train,  # the tuned loop's loader: pinned, workers
    "xt_fast": _gpu_train,  # a plain DataLoader over the TensorDataset: F.train's fast path
    "xt_runner": gpu_runner,  # the tuned loop's loader
}


TRAIN_CASES: dict[str, Callable[[Setup], Timing]] = {
    f.__name__: f
    for f in (
        plain,
        plain_item,
        plain_metrics,
        xt_defaults,
        xt_no_fast_path,
        xt_logging,
        xt_mlflow,
        xt_full,
        ignite,
        lightning,
    )
}
EVAL_CASES = {f.__name__: f for f in (eval_plain, eval_xt)}
CASES = [*TRAIN_CASES, *EVAL_CASES, "memory"]


def run_case(case: str, data: str, steps: int, workdir: Path) -> dict[str, Any]:
    """Run one case and return its result (what ``BENCH_RESULT`` prints)."""
    if data == "gpu":
        gpu = run_gpu_case(case, steps, workdir)
        wall, cpu = gpu.pop("timing")
        return {"case": case, "data": data, "seconds": wall, "cpu_seconds": cpu, **gpu, **_package()}
    if case in TRAIN_CASES:
        s = make_setup(data, steps, EPOCHS, workdir)
        timing, extra = TRAIN_CASES[case](s), {}
        extra["loss"] = final_loss(s)
    elif case in EVAL_CASES:
        s = make_setup(data, steps, 1, workdir, shuffle=False)
        timing, extra = EVAL_CASES[case](s)
    elif case == "memory":
        s = make_setup(data, steps, MEMORY_EPOCHS, workdir)
        timing, extra = memory(s)
    else:
        raise SystemExit(f"unknown case {case!r}; choose one of: {', '.join(CASES)}")
    extra = {k: v for k, v in extra.items() if not (isinstance(v, float) and math.isnan(v))}
    wall, cpu = timing
    result = {"case": case, "data": data, "steps": s.steps, "seconds": wall, "cpu_seconds": cpu, **extra}
    return {**result, **_package()}


def _package() -> dict[str, str]:
    """Which copy of xt_training ran, if any: run.py --compare checks it."""
    if "xt_training" not in sys.modules:
        return {}
    return {"xt_training": str(Path(sys.modules["xt_training"].__file__).parent)}


def main(argv: list[str]) -> None:
    if len(argv) != 4 or argv[1] not in ("map", "tensor", "gpu") or not argv[2].isdigit():
        raise SystemExit("usage: python benchmarks/cases.py CASE {map,tensor,gpu} STEPS WORKDIR")
    case, data, steps, workdir = argv[0], argv[1], int(argv[2]), Path(argv[3])
    os.makedirs(workdir, exist_ok=True)
    try:
        result = run_case(case, data, steps, workdir)
    except Skip as e:
        print(f"BENCH_SKIP {e}", flush=True)
        return
    print("BENCH_RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
