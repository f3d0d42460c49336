"""Where the xt-training loop's time goes, per step, against the plain loop: ``python benchmarks/profile_loop.py``.

The harness (``run.py``) says *how much* slower the loop is; this says *why*, in microseconds per step:

1. **Loop overhead**: the plain loop and ``Runner`` over the same pre-fetched batches (a list, so data
   loading, which both pay alike, adds no noise), alternated many times, timed on this thread's CPU
   clock (waiting for a core does not count); the minimum of each is the least disturbed run. Also
   with the map-style DataLoader, as the harness runs it. With ``--compare DIR`` the Runner of the
   xt_training package in DIR (a patched copy) runs in the same process, alternated with the others:
   differences of a few µs/step that separate processes on a busy machine cannot resolve show here.
2. **Fixed costs of F.train per epoch** (checkpoints, history.json, set-up), as µs per step of an
   epoch of ``--steps`` steps.
3. **The pieces**: each per-step operation of the loop timed on its own (timeit, best of 5), and the
   logging step (every ``log_every_n_steps``) amortised over the steps between two of them.
4. With ``--cprofile``: the functions whose own time differs most between the Runner and the plain
   loop under cProfile (which inflates Python-level costs, so read it for *where*, not *how much*).

Run it before and after a change to the loop, or once with ``--compare``.
"""

from __future__ import annotations

import argparse
import contextlib
import cProfile
import importlib
import io
import os
import pstats
import shutil
import statistics
import sys
import tempfile
import time
import timeit
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import make_setup  # noqa: E402

import xt_training  # noqa: E402
from xt_training.batch import batch_size, to_device  # noqa: E402
from xt_training.loggers.console import ConsoleLogger  # noqa: E402
from xt_training.runner import Runner  # noqa: E402
from xt_training.utils import functional as F  # noqa: E402


def alternate(
    variants: dict[str, Callable[[], Any]],
    steps: int,
    reps: int,
    clock: Callable[[], float] = time.thread_time,
) -> dict[str, list[float]]:
    """µs/step of each variant, run in turn ``reps`` times (after one warm-up each)."""
    for fn in variants.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(reps):
        for k, fn in variants.items():
            start = clock()
            fn()
            times[k].append((clock() - start) / steps * 1e6)
    return times


def compared_runner(tree: Path) -> type:
    """The Runner class of the xt_training package in ``tree``, imported beside the installed one.

    The package is copied under another name; the Runner's own imports are relative, so the copy
    uses its own modules throughout.
    """
    if not (tree / "xt_training" / "runner.py").is_file():
        raise SystemExit(
            f"--compare {tree}: no xt_training/runner.py there; give the directory that holds it"
        )
    target = Path(tempfile.mkdtemp()) / "xt_training_compared"
    shutil.copytree(tree / "xt_training", target, ignore=shutil.ignore_patterns("__pycache__"))
    sys.path.insert(0, str(target.parent))
    return importlib.import_module("xt_training_compared.runner").Runner


def show(times: dict[str, list[float]], base: str) -> None:
    b = min(times[base])
    print(f"| variant | min µs/step | median µs/step | min - {base} |\n|---|---|---|---|")
    for k, v in times.items():
        print(f"| {k} | {min(v):.1f} | {statistics.median(v):.1f} | {min(v) - b:+.1f} |")
    print()


def loop_overhead(steps: int, reps: int, compare: Path | None) -> None:
    s = make_setup("map", steps, 1, Path(tempfile.mkdtemp()))
    batches = list(s.loader)
    model, opt, loss_fn = s.model, s.optimizer, s.loss_fn

    def plain(data: Any = batches) -> None:
        for x, y in data:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

    quiet = Runner(model, loss_fn, opt, quiet=True)
    console = Runner(model, loss_fn, opt, loggers=[ConsoleLogger(file=io.StringIO())])
    runners = {"Runner(quiet=True)": quiet, "Runner, console": console}
    if compare is not None:
        runners[f"Runner(quiet=True) of {compare}"] = compared_runner(compare)(
            model, loss_fn, opt, quiet=True
        )
    print("## 1. Loop overhead, pre-fetched batches (no data loading), CPU time of the thread\n")
    variants: dict[str, Callable[[], Any]] = {"plain": plain}
    variants.update({k: (lambda r=r: r(batches)) for k, r in runners.items()})
    show(alternate(variants, len(batches), reps), "plain")
    print("## 1b. The same with the map-style DataLoader (data loading included, noisier)\n")
    variants = {"plain": lambda: plain(s.loader)}
    variants.update({k: (lambda r=r: r(s.loader)) for k, r in runners.items()})
    show(alternate(variants, len(batches), max(3, reps // 2)), "plain")


def epoch_costs(steps: int, reps: int) -> None:
    s = make_setup("map", steps, 1, Path(tempfile.mkdtemp()))
    batches = list(s.loader)
    runner = Runner(s.model, s.loss_fn, s.optimizer, loggers=[ConsoleLogger(file=io.StringIO())])
    out = io.StringIO()

    def train() -> None:
        with contextlib.redirect_stdout(out):
            F.train(s.run_dir(), batches, s.model, s.optimizer, 1, s.loss_fn)

    print(f"## 2. F.train around the Runner: one epoch of {len(batches)} steps, console logger, CPU time\n")
    variants = {"Runner pass": lambda: runner(batches), "F.train, 1 epoch": train}
    times = alternate(variants, len(batches), reps, clock=time.process_time)
    show(times, "Runner pass")
    fixed = (min(times["F.train, 1 epoch"]) - min(times["Runner pass"])) * len(batches) / 1000
    waits = []
    with open(s.workdir / "fsync-probe", "wb") as f:
        for _ in range(max(3, reps)):
            f.write(b"x")
            f.flush()
            start = time.perf_counter()
            os.fsync(f.fileno())
            waits.append((time.perf_counter() - start) * 1e3)
    print(
        f"F.train's fixed CPU cost per epoch: ~{fixed:.1f} ms (checkpoint files, history.json, set-up; "
        "with the background writer's CPU time); each fsync takes "
        f"~{statistics.median(waits):.2f} ms here, on the writer's thread (the loop does not wait for it).\n"
    )


def pieces(scale: float = 1.0) -> None:
    """Each per-step operation of the loop on its own, on a real batch of the benchmark."""
    s = make_setup("map", 300, 1, Path(tempfile.mkdtemp()))
    batch = next(iter(s.loader))
    x, y = batch
    y_pred = s.model(x)
    loss = s.loss_fn(y_pred, y)
    cpu = torch.device("cpu")
    autocast_off = torch.autocast("cpu", enabled=False)
    null = contextlib.nullcontext()
    losses = [loss.detach() for _ in range(50)]
    sizes = [64] * 50
    ns = {"torch": torch, "to_device": to_device, "batch_size": batch_size, **locals()}

    def with_ctx(ctx: Any) -> None:
        with ctx:
            pass

    ns["with_ctx"] = with_ctx
    rows = [
        ("to_device(batch, cpu) (recursion over [x, y])", "to_device(batch, cpu, False)"),
        ("x.to(cpu); y.to(cpu)", "x.to(cpu); y.to(cpu)"),
        ("torch.autocast(enabled=False): enter + exit", "with_ctx(autocast_off)"),
        ("contextlib.nullcontext(): enter + exit", "with_ctx(null)"),
        ("batch_size(y)", "batch_size(y)"),
        ("loss.detach() + list.append", "losses.append(loss.detach()); losses.pop()"),
        ("y_pred.detach(), y.detach() (metrics on)", "y_pred.detach(); y.detach()"),
        (
            "[p for g in optimizer.param_groups for p in g['params']]",
            "[p for g in s.optimizer.param_groups for p in g['params']]",
        ),
        ("isinstance(loss, Tensor) and loss.ndim != 0", "isinstance(loss, torch.Tensor) and loss.ndim != 0"),
    ]
    print("## 3. The pieces, µs per call (timeit, best of 5)\n\n| operation | µs |\n|---|---|")
    for label, stmt in rows:
        n = max(1, int(100_000 * scale))
        best = min(timeit.repeat(stmt, number=n, repeat=5, globals=ns)) / n * 1e6
        print(f"| {label} | {best:.3f} |")
    flush_stmt = (
        "(torch.stack(losses).float() * torch.tensor(sizes, dtype=torch.float32).to(cpu, non_blocking=True))"
        ".sum().item()"
    )
    n = max(1, int(5000 * scale))
    best = min(timeit.repeat(flush_stmt, number=n, repeat=5, globals=ns)) / n * 1e6
    print(
        f"| logging step's loss reduction over 50 losses (stack, sizes tensor, sum, item) | {best:.1f} "
        f"(/50 = {best / 50:.2f} per step) |"
    )
    runner = Runner(s.model, s.loss_fn, s.optimizer, loggers=[ConsoleLogger(file=io.StringIO())])
    ns["runner"], ns["batches"] = runner, [batch] * 50
    n = max(1, int(200 * scale))
    one = min(timeit.repeat("runner(batches[:1])", number=n, repeat=5, globals=ns)) / n * 1e6
    print(f"| a whole 1-step pass (pass set-up + step + logging step + end of pass) | {one:.1f} |\n")


def cprofile_diff(steps: int) -> None:
    s = make_setup("map", steps, 1, Path(tempfile.mkdtemp()))
    batches = list(s.loader)
    model, opt, loss_fn = s.model, s.optimizer, s.loss_fn

    def plain() -> None:
        for x, y in batches:
            opt.zero_grad()
            loss = loss_fn(model(x), y)
            loss.backward()
            opt.step()

    runner = Runner(model, loss_fn, opt, quiet=True)
    runner(batches)

    def profile(fn: Callable[[], Any]) -> dict[Any, Any]:
        pr = cProfile.Profile()
        pr.enable()
        fn()
        pr.disable()
        return pstats.Stats(pr).stats  # type: ignore[attr-defined]

    p, r = profile(plain), profile(lambda: runner(batches))
    n = len(batches)
    rows = sorted(((v[2] - p.get(k, (0, 0, 0, 0))[2], k, v) for k, v in r.items()), key=lambda t: -t[0])
    print("## 4. cProfile: own time, Runner minus plain loop (µs/step, inflated by the profiler)\n")
    print(
        "| own time diff | calls (Runner) | calls (plain) | cumulative (Runner) | function |\n|---|---|---|---|---|"
    )
    for diff, k, v in rows[:20]:
        where = f"{k[0].split('site-packages/')[-1].split('/work/main/')[-1]}:{k[1]}({k[2]})"
        calls = p.get(k, (0,))[0]
        print(f"| {diff / n * 1e6:.2f} | {v[0]} | {calls} | {v[3] / n * 1e6:.2f} | `{where}` |")
    total_p = sum(v[2] for v in p.values()) / n * 1e6
    total_r = sum(v[2] for v in r.values()) / n * 1e6
    print(f"\nTotal under cProfile: plain {total_p:.1f} µs/step, Runner {total_r:.1f} µs/step.\n")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", type=int, default=1000, help="steps per timed pass (default 1000)")
    p.add_argument("--reps", type=int, default=15, help="alternations of the variants (default 15)")
    p.add_argument("--cprofile", action="store_true", help="also print the cProfile difference")
    p.add_argument(
        "--compare", type=Path, metavar="DIR", help="also time the Runner of the xt_training in DIR"
    )
    p.add_argument(
        "--quick", action="store_true", help="tiny passes and few repetitions: checks that it runs"
    )
    args = p.parse_args()
    if args.quick:
        args.steps, args.reps = 20, 1
    torch.set_num_threads(1)
    print(f"xt_training from {Path(xt_training.__file__).parent}, torch {torch.__version__}\n")
    loop_overhead(args.steps, args.reps, args.compare.resolve() if args.compare else None)
    epoch_costs(args.steps, 1 if args.quick else max(3, args.reps // 3))
    pieces(0.01 if args.quick else 1.0)
    if args.cprofile:
        cprofile_diff(args.steps)


if __name__ == "__main__":
    main()
