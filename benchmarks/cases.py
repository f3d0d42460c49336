"""One benchmark case, run in a process of its own: ``python benchmarks/cases.py CASE DATA STEPS WORKDIR``.

Every case builds the same data, model (MLP 32-64-10), optimizer, loss and loader from the same seed,
on one thread, times only the work itself (not the imports or the set-up) and prints one line
``BENCH_RESULT {json}`` -- or ``BENCH_SKIP reason`` when an optional package is missing. Training
cases report the loss of the trained model on the whole training set: bit-equal losses across cases
prove that they did the same work (same batches, same order, same updates). ``benchmarks/run.py``
runs the cases and builds the tables; see its docstring.

DATA is ``map`` (a small map-style ``Dataset`` class: no shortcut can apply, so the time measures the
loop's own overhead) or ``tensor`` (``DataLoader(TensorDataset(x, y))``, the case an in-memory fast
path speeds up). Training runs ``STEPS`` optimizer steps over ``EPOCHS`` epochs; evaluation runs
``STEPS`` batches in one pass.
"""

from __future__ import annotations

import gc
import json
import math
import os
import resource
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def timed(fn: Callable[[], Any]) -> Timing:
    """(wall seconds, CPU seconds of this process) of ``fn()``.

    The CPU time leaves out the time the process waited for a core, so on a shared machine it is the
    steadier of the two; both include the work of helper threads (e.g. TensorBoard's writer).
    """
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
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

    return timed(lambda: F.train(s.workdir / "run", s.loader, s.model, s.optimizer, s.epochs, s.loss_fn))


def full_metrics() -> dict[str, Any]:
    """The logging case's metrics: ROC AUC keeps every prediction of the epoch and sorts them to compute."""
    from xt_training import metrics

    return {"acc": metrics.Accuracy(), "auc": metrics.ROC_AUC(), "f1": metrics.F1()}


def _train_logged(s: Setup, metrics: dict[str, Any]) -> Timing:
    """``F.train`` with the console progress bar forced on, the TensorBoard logger and ``metrics``."""
    from xt_training.loggers.console import ConsoleLogger
    from xt_training.utils import functional as F

    try:
        from xt_training.loggers.tensorboard import TensorBoardLogger
    except ImportError as e:
        raise Skip(f"xt_training.loggers.tensorboard does not import yet ({e})") from None
    loggers = [ConsoleLogger(progress=True), TensorBoardLogger(save_dir=s.workdir / "run")]
    return timed(
        lambda: F.train(
            s.workdir / "run",
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
            s.workdir / "run",
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


TRAIN_CASES: dict[str, Callable[[Setup], Timing]] = {
    f.__name__: f
    for f in (plain, plain_item, plain_metrics, xt_defaults, xt_logging, xt_full, ignite, lightning)
}
EVAL_CASES = {f.__name__: f for f in (eval_plain, eval_xt)}
CASES = [*TRAIN_CASES, *EVAL_CASES, "memory"]


def run_case(case: str, data: str, steps: int, workdir: Path) -> dict[str, Any]:
    """Run one case and return its result (what ``BENCH_RESULT`` prints)."""
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
    if "xt_training" in sys.modules:  # which copy ran: run.py --compare checks it
        result["xt_training"] = str(Path(sys.modules["xt_training"].__file__).parent)
    return result


def main(argv: list[str]) -> None:
    if len(argv) != 4 or argv[1] not in ("map", "tensor") or not argv[2].isdigit():
        raise SystemExit("usage: python benchmarks/cases.py CASE {map,tensor} STEPS WORKDIR")
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
