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
``B - A``, so the imports and the set-up cancel out. The simulated last-level cache has the size of the
L2 of this machine's CPU (512 KiB): its misses are the ones that go to the L3 or memory. On this
hardware the extra misses and mispredictions of the loop cost more than its extra instructions.

``--compare DIR`` adds the Runner of the ``xt_training`` package in DIR (a patched copy); ``--variants runner``
counts only the default Runner beside plain (two runs fewer). Needs valgrind
(``apt install valgrind``); each run takes a minute or two (the process runs ~50x slower), two at a time.
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
LOOPS = {"runner": "Runner", "runner_no_fast_path": "Runner, fast_path=False"}


def child(variant: str, steps: int) -> None:
    """The measured process: set-up, then ``steps`` steps of the plain loop or of a Runner pass.

    ``runner`` iterates with the Runner's defaults (the fast path fetches the map-style batches without
    the DataLoader iterator's bookkeeping); ``runner_no_fast_path`` iterates the DataLoader itself, as
    ``plain`` does: the loop's own cost.
    """
    sys.path.insert(0, str(HERE))
    from cases import make_setup, plain

    s = make_setup("map", steps, 1, Path(tempfile.mkdtemp()))
    from xt_training import Runner

    runner = Runner(
        s.model.train(), s.loss_fn, s.optimizer, quiet=True, fast_path=variant != "runner_no_fast_path"
    )  # built in every variant: only the loop differs
    print("XT_TRAINING", Path(sys.modules["xt_training"].__file__).parent, flush=True)  # which copy ran
    # The objects made so far (imports, set-up) leave the garbage collector's view: a full collection
    # over them, which one run may hit and another not, would swamp the per-step counts.
    gc.freeze()
    if variant == "plain":
        plain(s)  # the harness's hand-written loop (its clock reads cancel out with the set-up)
    else:
        runner(s.loader)


def parse(summary: str) -> dict[str, int]:
    """The event totals from cachegrind's summary (its stderr)."""
    counts = {}
    for name, pattern in EVENTS.items():
        found = re.search(pattern + r":\s+([\d,]+)", summary)
        if found is None:
            raise SystemExit(f"no '{name}' in cachegrind's output:\n{summary[-2000:]}")
        counts[name] = int(found.group(1).replace(",", ""))
    return counts


def count(variant: str, steps: int, tree: Path | None) -> dict[str, int]:
    env = {**os.environ, "PYTHONHASHSEED": "0", "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    if tree is not None:  # imported before the installed xt_training
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    cmd = [
        "valgrind", "--tool=cachegrind", "--cache-sim=yes", "--branch-sim=yes", L2,
        "--cachegrind-out-file=/dev/null",
        sys.executable, str(Path(__file__).resolve()), "--child", variant, str(steps),
    ]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=3600)
    if proc.returncode != 0:
        raise SystemExit(f"{variant} ({steps} steps) failed under valgrind:\n{proc.stderr[-3000:]}")
    ran = proc.stdout.split("XT_TRAINING ", 1)[-1].strip()
    if tree is not None and not Path(ran).is_relative_to(tree):
        raise SystemExit(f"--compare {tree}: the run imported the xt_training in {ran} instead")
    return parse(proc.stderr)


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
        default=",".join(LOOPS),
        help=f"the Runner variants counted beside plain, from {', '.join(LOOPS)} (default: all)",
    )
    p.add_argument("--child", nargs=2, metavar=("VARIANT", "STEPS"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.child:
        child(args.child[0], int(args.child[1]))
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
    variants = {"plain": ("plain", None)}  # name: (loop, xt_training tree)
    variants.update({LOOPS[v]: (v, None) for v in chosen})
    if args.compare is not None:
        variants[f"Runner of {args.compare}"] = ("runner", args.compare.resolve())
    jobs = [(name, n) for name in variants for n in (few, many)]
    with ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
        totals = pool.map(lambda job: count(variants[job[0]][0], job[1], variants[job[0]][1]), jobs)
        done = dict(zip(jobs, totals))
    results = {name: per_step(done[name, few], done[name, many], many - few) for name in variants}
    print(f"## Counted per step (cachegrind; {few} and {many} steps; L2 {L2.split('=')[1]})\n")
    print(report(results))


if __name__ == "__main__":
    main()
