"""The loop's cost per step in counted events, not seconds: ``python benchmarks/cachegrind_loop.py``.

The harness (``run.py``) times whole processes, which on a shared 2-core VM vary by a few percent between
runs: a change that saves 0.3% of a step cannot show there. This runs the plain loop and ``Runner`` passes
(with the fast path, the default, and with ``fast_path=False``: the loop's own cost over the DataLoader's
iterator) over the same map-style DataLoader under valgrind's cachegrind, which counts the instructions, the
cache misses and the mispredicted branches of the whole process. The counts are nearly deterministic (one
thread, a fixed hash seed: equal runs agree to about a millionth, though a run on a CI machine once
counted a few million instructions more, about a step's worth: hence hundreds of steps between the two
runs); different code moves the memory layout, which moves the miss counts by a few hundred a step
(~1%): the instruction and misprediction differences are the sharper ones.

Each variant runs twice, for ``--steps A,B`` steps; per-step counts are the difference divided by
``B - A``, so the imports and the set-up cancel out. They are done once: one process under valgrind
imports and sets up, then forks a process per variant and run length, and cachegrind counts each of
those from the state they share (a forked process starts with its parent's counts). The imports are
most of a process's time under valgrind (``import torch`` alone takes minutes); the loops take seconds.
The simulated last-level cache has the size of the L2 of this machine's CPU (512 KiB): its misses are
the ones that go to the L3 or memory. On this hardware the extra misses and mispredictions of the loop
cost more than its extra instructions.

``--variants`` picks the Runner variants counted beside plain: ``runner`` (the defaults, quiet),
``runner_no_fast_path``, ``runner_metrics`` (the harness's ``xt_logging`` metrics: Accuracy, F1, EPS) and
``runner_logging`` (those with its progress bar and TensorBoard: the bar refreshes by the clock, which
valgrind slows ~50x, so that row overstates the bar); default the first two. ``--compare DIR``
counts the same variants with the ``xt_training`` package in DIR (a patched copy). Needs valgrind
(``apt install valgrind``); the imports take a few minutes under it (the process runs ~50x slower), once
per xt_training copy counted, and the forked runs then share the cores.
"""

from __future__ import annotations

import argparse
import gc
import os
import re
import shutil
import subprocess
import sys
import tempfile
import traceback
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

HERE = Path(__file__).resolve().parent
# name in the report, pattern of cachegrind's summary line
EVENTS = {
    "instructions": r"I\s+refs",
    "L1i misses": r"I1\s+misses",
    "L1d misses": r"D1\s+misses",
    "L2 misses": r"LL misses",
    "mispredicted branches": r"Mispredicts",
}
L2 = "--LL=524288,8,64"  # 512 KiB, 8-way, 64-byte lines
# the Runner variants (--variants): loop name, its name in the report
LOOPS = {
    "runner": "Runner",
    "runner_no_fast_path": "Runner, fast_path=False",
    "runner_metrics": "Runner, Accuracy + F1 + EPS",
    "runner_logging": "Runner, Accuracy + F1 + EPS, progress bar, TensorBoard",
}


def child(variants: list[str], runs: list[int]) -> None:
    """The measured process: the imports and the set-up, then one forked process per variant and run length.

    Each forked process runs ``steps`` steps of the plain loop or of a Runner pass and leaves by
    ``os._exit`` (the counts stop at the loop's end, not after the interpreter's teardown); cachegrind
    writes its counts to a log file of its own (``--log-file=DIR/%p``). ``runner`` iterates with the
    Runner's defaults (the fast path fetches the map-style batches without the DataLoader iterator's
    bookkeeping); ``runner_no_fast_path`` iterates the DataLoader itself, as ``plain`` does: the loop's own
    cost. Every data set is made here, before the forks: its size, which grows with the run length, is
    part of what the runs share, not of the per-step counts.
    """
    sys.path.insert(0, str(HERE))
    from cases import make_setup, plain

    from xt_training import Runner
    from xt_training.loggers.console import ConsoleLogger
    from xt_training.loggers.tensorboard import TensorBoardLogger
    from xt_training.metrics import EPS, F1, Accuracy

    def run(variant: str, steps: int) -> int:
        s = setups[steps]
        try:
            if variant == "plain":
                plain(s)  # the harness's hand-written loop (its clock reads cancel out with the set-up)
            elif variant in ("runner", "runner_no_fast_path"):
                fast_path = variant != "runner_no_fast_path"
                Runner(s.model.train(), s.loss_fn, s.optimizer, quiet=True, fast_path=fast_path)(s.loader)
            else:  # the benchmark's xt_logging work: its metrics, and its loggers for runner_logging
                logging = variant == "runner_logging"
                loggers = []
                if logging:  # (the bar to os.devnull: on stdout it would garble the lines reported here)
                    bar = ConsoleLogger(progress=True, file=open(os.devnull, "w"))  # noqa: SIM115
                    loggers = [bar, TensorBoardLogger(save_dir=s.run_dir())]
                metrics = {"acc": Accuracy(), "f1": F1(), "eps": EPS()}
                Runner(
                    s.model.train(),
                    s.loss_fn,
                    s.optimizer,
                    batch_metrics=metrics,
                    loggers=loggers,
                    quiet=not logging,
                )(s.loader)
        except BaseException:
            traceback.print_exc()
            return 1
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
        return 0

    setups = {steps: make_setup("map", steps, 1, Path(tempfile.mkdtemp())) for steps in runs}
    print("XT_TRAINING", Path(sys.modules["xt_training"].__file__).parent, flush=True)  # which copy ran
    # The objects made so far (imports, set-up) leave the garbage collector's view: a full collection
    # over them, which one run may hit and another not, would swamp the per-step counts.
    gc.freeze()
    # Forked back to back, so that each process starts from nearly the same counts (a loop turn apart,
    # the same for every variant); printed only after the last fork.
    forked = []
    for variant in variants:
        for steps in runs:
            pid = os.fork()
            if pid == 0:
                os._exit(run(variant, steps))
            forked.append((pid, variant, steps))
    failed = []
    for pid, variant, steps in forked:
        print("COUNTED", pid, variant, steps, flush=True)
        if os.waitpid(pid, 0)[1] != 0:
            failed.append(f"{variant} ({steps} steps)")
    if failed:
        print(f"failed under valgrind: {', '.join(failed)} (the traceback is above)", file=sys.stderr)
    sys.stderr.flush()
    # Not the interpreter's teardown: natively a quarter of the time `import torch` takes, and as slow
    # under valgrind as the rest.
    os._exit(1 if failed else 0)


def parse(summary: str) -> dict[str, int]:
    """The event totals from cachegrind's summary (its log)."""
    counts = {}
    for name, pattern in EVENTS.items():
        found = re.search(pattern + r":\s+([\d,]+)", summary)
        if found is None:
            raise SystemExit(f"no '{name}' in cachegrind's output:\n{summary[-2000:]}")
        counts[name] = int(found.group(1).replace(",", ""))
    return counts


def count(variants: list[str], runs: list[int], tree: Path | None) -> dict[tuple[str, int], dict[str, int]]:
    """The event totals of every (variant, run length): one process under valgrind and its forks."""
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if tree is not None:  # imported before the installed xt_training
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    with tempfile.TemporaryDirectory(prefix="xt-cachegrind-") as logs:
        cmd = [
            "valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes", L2,
            "--cachegrind-out-file=/dev/null", f"--log-file={logs}/%p",
            sys.executable, str(Path(__file__).resolve()), "--child", ",".join(variants), ",".join(map(str, runs)),
        ]  # fmt: skip
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
        what = f"{', '.join(variants)}{f' of {tree}' if tree else ''}"
        if proc.returncode != 0:
            logs_tail = "".join(p.read_text()[-1000:] for p in Path(logs).iterdir())
            raise SystemExit(f"{what} failed under valgrind:\n{proc.stderr[-3000:]}\n{logs_tail}")
        ran = proc.stdout.split("XT_TRAINING ", 1)[-1].splitlines()[0].strip()
        if tree is not None and not Path(ran).is_relative_to(tree):
            raise SystemExit(f"--compare {tree}: the run imported the xt_training in {ran} instead")
        counted = re.findall(r"^COUNTED (\d+) (\w+) (\d+)$", proc.stdout, re.MULTILINE)
        return {
            (variant, int(steps)): parse((Path(logs) / pid).read_text()) for pid, variant, steps in counted
        }


def per_step(few: dict[str, int], many: dict[str, int], steps: int) -> dict[str, float]:
    return {k: (many[k] - few[k]) / steps for k in EVENTS}


def report(results: dict[str, dict[str, float]]) -> str:
    plain = results["plain"]
    lines = [
        "| variant | " + " | ".join(f"{e} / step" for e in EVENTS) + " |",
        "|---|" + "---|" * len(EVENTS),
    ]
    for name, r in results.items():
        cells = [f"{r[e]:,.0f}" for e in EVENTS]
        if name != "plain":
            cells = [
                f"{c} ({r[e] - plain[e]:+,.0f}, {100 * (r[e] / plain[e] - 1):+.2f}%)"
                for c, e in zip(cells, EVENTS)
            ]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--steps", default="100,600", help="the two run lengths A,B (default 100,600)")
    p.add_argument(
        "--compare", type=Path, help="also the Runner of the xt_training package in this directory"
    )
    p.add_argument(
        "--variants",
        default="runner,runner_no_fast_path",
        help=f"the Runner variants counted beside plain, from {', '.join(LOOPS)} (default: the first two)",
    )
    p.add_argument("--child", nargs=2, metavar=("VARIANTS", "RUNS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0].split(","), [int(n) for n in args.child[1].split(",")])
        return
    parts = args.steps.split(",")
    if len(parts) != 2 or not all(n.isdigit() for n in parts) or not 0 < int(parts[0]) < int(parts[1]):
        raise SystemExit(
            f"--steps must be two step counts A,B with 0 < A < B, e.g. 100,600; got {args.steps!r}"
        )
    few, many = int(parts[0]), int(parts[1])
    if args.compare is not None and not (args.compare / "xt_training" / "runner.py").is_file():
        raise SystemExit(
            f"--compare {args.compare}: no xt_training/runner.py there; give the directory that holds it"
        )
    chosen = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = [v for v in chosen if v not in LOOPS]
    if unknown or not chosen:
        raise SystemExit(
            f"--variants {args.variants!r}: choose from {', '.join(LOOPS)} (comma-separated), e.g. runner"
        )
    if shutil.which("valgrind") is None:
        raise SystemExit(
            "valgrind is not installed (e.g. apt install valgrind); it runs the counted processes"
        )
    trees = {None: ["plain", *chosen]}  # the loops counted with each xt_training copy (None: installed)
    if args.compare is not None:
        trees[args.compare.resolve()] = chosen
    with ThreadPoolExecutor(max_workers=len(trees)) as pool:
        done = dict(zip(trees, pool.map(lambda tree: count(trees[tree], [few, many], tree), trees)))
    names = {"plain": "plain", **LOOPS}
    results = {
        names[loop] if tree is None else f"{names[loop]}, of {args.compare}": per_step(
            done[tree][loop, few], done[tree][loop, many], many - few
        )
        for tree, loops in trees.items()
        for loop in loops
    }
    print(f"## Counted per step (cachegrind; {few} and {many} steps; L2 {L2.split('=')[1]})\n")
    print(report(results))


if __name__ == "__main__":
    main()
