"""The xt-training benchmark harness: training/eval speed against hand-written loops and peers, start-up, memory.

Usage::

    python benchmarks/run.py                  # 5 interleaved rounds, 3000 steps; writes benchmarks/RESULTS.md
    python benchmarks/run.py --only 'map/*'   # a subset (ids as printed: map/plain, tensor/xt_defaults, ...)
    python benchmarks/run.py --quick --output /tmp/r.md   # one tiny round of everything
    python benchmarks/run.py --quick --jobs 2 --output /tmp/r.md   # the same, two cases at a time (the
                                              # smoke test: timings that compete for cores mean nothing)
    python benchmarks/run.py --only 'gpu/*' --rounds 3 --no-startup --no-memory   # the GPU group alone:
                                              # writes benchmarks/RESULTS-GPU.md (skipped without CUDA)

Each case runs as its own process of this interpreter (``benchmarks/cases.py``), so imports, caches
and allocator state of one case cannot help or hurt another. Rounds are interleaved (every case once per
round, in a rotated order), so a slow spell of the machine hits all cases alike. Per case the table gives
the median, min and max wall seconds per 1000 steps, the median CPU seconds of the process, and the
ratio to the group's baseline (the plain loop) as the median of the per-round ratios: each round's
ratio compares two processes that ran seconds apart. On a machine shared with other work the CPU
ratio is the steadier one (it leaves out the time spent waiting for a core). Training cases print the
trained model's loss on the whole training set; equal losses prove equal work.

The ``gpu`` group (issue 5) is a different workload: a ResNet-18 on synthetic 224x224 images in bf16 on a
CUDA GPU, ``--gpu-steps`` steps; without CUDA its cases are skipped with the reason. Its losses agree
within ``Group.tolerance``, not bit for bit (bf16, nondeterministic cuDNN kernels). A run of only
``gpu/*`` cases writes ``benchmarks/RESULTS-GPU.md`` by default, leaving the CPU tables of
``RESULTS.md`` alone.

``benchmarks/fsdp.py`` (FSDP against DDP on 2 processes; minutes) writes a section of its own into
``RESULTS.md``, which this script keeps when it rewrites the file.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import fnmatch
import json
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Group:
    """Cases compared with each other: same data, the first case is the baseline of the ratios."""

    name: str
    title: str
    data: str
    cases: list[str]
    targets: dict[str, str] = field(default_factory=dict)  # case -> target, e.g. '<= 1.03'
    values: tuple[str, ...] = ("loss",)  # what proves equal work
    same_work: dict[str, str] = field(default_factory=dict)  # case -> hand-written case doing its extra work
    notes: dict[str, str] = field(default_factory=dict)  # case -> its note, where CASE_NOTES' does not fit
    tolerance: float = 0.0  # equal work: the values agree within this (0: printed equal to 6 decimals)
    steps: int | None = None  # steps of its cases, where not --steps


GROUPS = [
    Group(
        "map",
        "Training, map-style Dataset (a custom `Dataset` class: batches fetched and collated sample by sample;"
        " `xt_no_fast_path` is the loop's own overhead)",
        "map",
        [
            "plain",
            "plain_item",
            "plain_metrics",
            "xt_defaults",
            "xt_no_fast_path",
            "xt_logging",
            "xt_mlflow",
            "xt_full",
            "ignite",
            "lightning",
        ],
        {"xt_defaults": "<= 1.03", "xt_logging": "<= 1.05", "xt_mlflow": "<= xt_logging"},
        same_work={"xt_full": "plain_metrics"},
    ),
    Group(
        "tensor",
        "Training, `DataLoader(TensorDataset(x, y))` (where an in-memory fast path applies)",
        "tensor",
        ["plain", "xt_defaults"],
        {"xt_defaults": "<= 0.75"},
    ),
    Group(
        "eval",
        "Evaluation, map-style Dataset, Accuracy + ROC AUC + examples/s, one pass",
        "map",
        ["eval_plain", "eval_xt"],
        {"eval_xt": "<= 1.10"},
        ("loss", "acc", "auc"),
    ),
    Group(
        "gpu",
        "GPU training: ResNet-18, synthetic 3x224x224 images, bf16 autocast, channels_last",
        "gpu",
        ["plain", "xt_defaults", "xt_fast", "xt_runner"],
        notes={
            "plain": "tuned hand-written loop: channels_last model and inputs, `torch.autocast('cuda', "
            "dtype=torch.bfloat16)`, `zero_grad(set_to_none=True)`, "
            "`DataLoader(..., pin_memory=True, num_workers=4)`, `.to(device, non_blocking=True)`, "
            "no host read per step, `torch.cuda.synchronize()` before the clock stops",
            "xt_defaults": "`F.train(..., precision='bf16-mixed', channels_last=True)`, defaults otherwise "
            "(console logger, checkpoint + history.json per epoch), on plain's loader (pinned, 4 workers: "
            "the fast path does not apply)",
            "xt_fast": "the same `F.train` on `DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True)`: "
            "the fast path, batches gathered from a copy of the data set on the GPU (`data_on_device='auto'`; "
            "the copy is part of the timed call)",
            "xt_runner": "the loop alone: `Runner(..., precision='bf16-mixed', channels_last=True, "
            "quiet=True)` called once per epoch on plain's loader, without F.train's checkpoints (about "
            "90 MB each, serialized every epoch and written in the background) and history",
        },
        tolerance=0.01,
    ),
]

GPU_DEFAULT_STEPS = 900

CASE_NOTES = {
    "plain": "hand-written loop: zero_grad, forward, loss, backward, step",
    "plain_item": "the same with `loss.item()` every step",
    "plain_metrics": "hand-written loop with torchmetrics Accuracy, AUROC, F1 updated every step, computed per epoch",
    "xt_defaults": "`F.train` defaults: console logger, checkpoint + history.json per epoch",
    "xt_no_fast_path": "the same with `fast_path=False`: the DataLoader's own iterator (on map data the fast "
    "path calls the dataset and `collate_fn` as it does, without its per-batch bookkeeping)",
    "xt_logging": "`F.train`, progress bar, `TensorBoardLogger`, Accuracy + F1 + EPS on the training pass",
    "xt_mlflow": "xt_logging with xt-mlflow's `MLflowLogger` instead of `TensorBoardLogger` (SQLite store, made "
    "before the clock starts): values queued per logging step and sent by its thread; the timed call includes "
    "the end of the run, which waits while the last values, the run's files and its status are sent",
    "xt_full": "`F.train`, progress bar, `TensorBoardLogger`, Accuracy + ROC_AUC + F1 on the training pass",
    "ignite": "Ignite `create_supervised_trainer`, defaults",
    "lightning": "Lightning `Trainer` defaults (progress bar, logger, checkpoints), `self.log` of the loss",
    "eval_plain": "hand-written: torchmetrics updated per batch, computed once",
    "eval_xt": "`F.test` with Accuracy, ROC_AUC, EPS; defaults",
}


@dataclass
class Outcome:
    """The results of one case over all rounds."""

    seconds: list[float] = field(default_factory=list)  # wall time per 1000 steps, one per round
    cpu: list[float] = field(default_factory=list)  # CPU time of the process per 1000 steps
    result: dict[str, Any] = field(default_factory=dict)  # the first round's full result
    skipped: str | None = None
    failed: str | None = None


COMPARED = "@B"  # suffix of the case ids that run with the xt_training of --compare


def run_case(case: str, data: str, steps: int, workdir: Path, tree: Path | None = None) -> tuple[str, Any]:
    """Run one case process; return ('result', dict), ('skip', reason) or ('fail', reason).

    ``tree``: a directory holding another ``xt_training`` package, imported instead of the installed one.
    """
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    if tree is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(tree), env.get("PYTHONPATH")]))
    cmd = [sys.executable, str(HERE / "cases.py"), case, data, str(steps), str(workdir)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1800)
    for line in proc.stdout.splitlines():
        if line.startswith("BENCH_RESULT "):
            return "result", json.loads(line.removeprefix("BENCH_RESULT "))
        if line.startswith("BENCH_SKIP "):
            return "skip", line.removeprefix("BENCH_SKIP ")
    tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
    return "fail", f"exit code {proc.returncode}: {tail}"


def select(groups: list[Group], only: str, compare: Path | None = None) -> list[str]:
    """The case ids that ``--only``'s comma-separated patterns select, in the groups' order."""
    ids = [f"{g.name}/{c}" for g in groups for c in g.cases]
    if compare is not None:
        ids = [j for i in ids for j in ([i, i + COMPARED] if "xt" in i.split("/")[1] else [i])]
    patterns = only.split(",")
    return [i for i in ids if any(fnmatch.fnmatch(i.removesuffix(COMPARED), p) for p in patterns)]


def run_groups(
    groups: list[Group],
    only: str,
    rounds: int,
    steps: int,
    tmp: Path,
    compare: Path | None = None,
    jobs: int = 1,
) -> dict[str, Outcome]:
    """Every selected case once per round, rounds interleaved, the order rotated from round to round.

    With ``compare``, every xt-training case also runs with that tree's package, as ``case@B``.
    A group's own ``steps`` overrides ``steps``. ``jobs`` cases run at a time (printed in order).
    """
    selected = select(groups, only, compare)
    data = {f"{g.name}/{c}{b}": g.data for g in groups for c in g.cases for b in ("", COMPARED)}
    group_steps = {
        f"{g.name}/{c}{b}": g.steps or steps for g in groups for c in g.cases for b in ("", COMPARED)
    }
    outcomes = {i: Outcome() for i in selected}

    def run_one(run_id: str, r: int) -> tuple[str, Any]:
        workdir = tmp / f"{run_id.replace('/', '-').replace('@', '-')}-{r}"
        case = run_id.split("/")[1].removesuffix(COMPARED)
        tree = compare if run_id.endswith(COMPARED) else None
        kind, value = run_case(case, data[run_id], group_steps[run_id], workdir, tree)
        shutil.rmtree(workdir, ignore_errors=True)
        return kind, value

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        for r in range(rounds):
            k = r % len(selected) if selected else 0
            ids = [i for i in selected[k:] + selected[:k] if not (outcomes[i].skipped or outcomes[i].failed)]
            for run_id, (kind, value) in zip(ids, pool.map(run_one, ids, [r] * len(ids))):
                out = outcomes[run_id]
                tree = compare if run_id.endswith(COMPARED) else None
                if kind == "skip":
                    out.skipped = value
                    print(f"round {r + 1}/{rounds}  {run_id:<22} skipped: {value}", flush=True)
                    continue
                if (
                    kind == "result"
                    and tree is not None
                    and not value.get("xt_training", "").startswith(str(tree))
                ):
                    kind, value = (
                        "fail",
                        f"imported xt_training from {value.get('xt_training')}, not from {tree}",
                    )
                if kind == "fail":
                    out.failed = value
                    print(f"round {r + 1}/{rounds}  {run_id:<22} FAILED: {value}", flush=True)
                    continue
                per_1000 = value["seconds"] / value["steps"] * 1000
                out.seconds.append(per_1000)
                out.cpu.append(value["cpu_seconds"] / value["steps"] * 1000)
                out.result = out.result or value
                shown = "  ".join(f"{k} {v:.6f}" for k, v in value.items() if k in ("loss", "acc", "auc"))
                print(
                    f"round {r + 1}/{rounds}  {run_id:<22} {per_1000:.4f} s/1000 steps (CPU {out.cpu[-1]:.4f})  {shown}",
                    flush=True,
                )
    return outcomes


def ratio(
    group: Group, case: str, outcomes: dict[str, Outcome], baseline: str | None = None, clock: str = "seconds"
) -> float | None:
    """Median over rounds of (case time / baseline time in the same round), on the wall or CPU clock."""
    base = outcomes.get(f"{group.name}/{baseline or group.cases[0]}")
    out = outcomes.get(f"{group.name}/{case}")
    if not base or not out or not base.seconds or len(out.seconds) != len(base.seconds):
        return None
    return statistics.median(c / b for c, b in zip(getattr(out, clock), getattr(base, clock)))


def ratios(group: Group, case: str, outcomes: dict[str, Outcome], baseline: str | None = None) -> str:
    """'wall ratio / CPU ratio' of ``case`` to ``baseline``."""
    wall = ratio(group, case, outcomes, baseline)
    cpu = ratio(group, case, outcomes, baseline, clock="cpu")
    return "" if wall is None or cpu is None else f"**{wall:.3f}x** / {cpu:.3f}x"


def group_table(group: Group, outcomes: dict[str, Outcome]) -> list[str]:
    """The markdown table of one group, with a line on equal work."""
    base = group.cases[0]
    extra = ["ratio to the same work by hand"] if group.same_work else []
    head = [
        "case",
        "wall s / 1000 steps: median",
        "min",
        "max",
        "CPU s / 1000 steps",
        f"ratio to {base}: wall / CPU",
    ]
    head += ["target", *extra, *group.values]
    lines = [f"### {group.title}", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    seen: dict[str, set[str]] = {v: set() for v in group.values}
    numbers: dict[str, list[float]] = {v: [] for v in group.values}
    for case in [c + b for c in group.cases for b in ("", COMPARED)]:
        out = outcomes.get(f"{group.name}/{case}")
        if out is None:
            continue
        target = group.targets.get(case.removesuffix(COMPARED), "")
        if out.skipped or out.failed:
            note = f"skipped: {out.skipped}" if out.skipped else f"FAILED: {out.failed}"
            lines.append(
                f"| {case} | {note} |  |  |  |  | {target} |" + " |" * (len(extra) + len(group.values))
            )
            continue
        s = out.seconds
        shown = [f"{out.result[v]:.6f}" if v in out.result else "" for v in group.values]
        for v, text in zip(group.values, shown):
            seen[v].add(text)
            if v in out.result:
                numbers[v].append(out.result[v])
        cells = [case, f"{statistics.median(s):.4f}", f"{min(s):.4f}", f"{max(s):.4f}"]
        cells += [
            f"{statistics.median(out.cpu):.4f}",
            "1" if case == base else ratios(group, case, outcomes),
            target,
        ]
        if extra:
            fair = group.same_work.get(case.removesuffix(COMPARED))
            cells.append(f"{ratios(group, case, outcomes, fair)} ({fair})" if fair else "")
        lines.append("| " + " | ".join(cells + shown) + " |")
    lines += ["", equal_work(group, seen, numbers)]
    lines += [""] + [f"- {c}: {group.notes.get(c) or CASE_NOTES[c]}" for c in group.cases]
    ran = {c: o for c in group.cases if (o := outcomes.get(f"{group.name}/{c}")) and o.result}
    lines += [
        f"- {c}, this run's data path: {o.result['path']}" for c, o in ran.items() if "path" in o.result
    ]
    devices = sorted({o.result["device"] for o in ran.values() if "device" in o.result})
    if devices:
        seeds = sorted({str(o.result["seed"]) for o in ran.values() if "seed" in o.result})
        lines.append(f"- Device: {'; '.join(devices)}; seed {', '.join(seeds)}")
    if any(k.startswith(group.name + "/") and k.endswith(COMPARED) for k in outcomes):
        lines.append(f"- case{COMPARED}: the same case with the xt_training of `--compare`")
    lines.append("")
    return lines


def equal_work(group: Group, seen: dict[str, set[str]], numbers: dict[str, list[float]]) -> str:
    """The line saying whether the group's cases did the same work, judged by their printed values."""
    names = ", ".join(group.values)
    if not any(numbers.values()):
        return "Equal work: not checked, no case ran."
    if not group.tolerance:
        equal = all(len(texts) <= 1 for texts in seen.values())
        verdict = "yes, every case printed the same " if equal else "**NO**, the cases differ in "
        return f"Equal work: {verdict}{names}."
    spread = max(max(v) - min(v) for v in numbers.values() if v)
    verdict = "yes" if spread <= group.tolerance else "**NO**"
    return (
        f"Equal work: {verdict}, the largest difference in {names} between cases is {spread:.6f}; the "
        f"limit is {group.tolerance:g}, not 0: bf16 autocast and nondeterministic cuDNN kernels make the "
        "same work give close, not bit-equal, results."
    )


# ---- start-up ------------------------------------------------------------------------------------------

TORCH_LABEL = "python -c 'import torch'"
IMPORT_USE = "import torch; from xt_training.utils import functional; from xt_training import metrics, Runner"
#: a metric made: what it imports of torchmetrics (its parts, not the optional packages of its __init__)
METRIC_MADE = "import torch; from xt_training import metrics; metrics.Accuracy()"


def startup_commands() -> list[tuple[str, list[str], str]]:
    """(label, argv, target) of the start-up rows; the xt script sits beside this interpreter."""
    py = sys.executable
    xt = shutil.which("xt", path=str(Path(py).parent)) or "xt"
    return [
        ("python -c pass", [py, "-c", "pass"], ""),
        (TORCH_LABEL, [py, "-c", "import torch"], ""),
        ("python -c 'import xt_training'", [py, "-c", "import xt_training"], ""),
        (f"python -c '{IMPORT_USE}'", [py, "-c", IMPORT_USE], "adds < 0.2 s to import torch"),
        (f"python -c '{METRIC_MADE}'", [py, "-c", METRIC_MADE], "adds < 1 s to import torch"),
        ("xt --help", [xt, "--help"], "< 0.3 s"),
        ("xt list", [xt, "list"], "< 0.6 s"),
    ]


def run_startup(rounds: int) -> dict[str, Outcome]:
    """Wall time of each command, interleaved rounds; a command that fails is reported as skipped."""
    commands = startup_commands()
    outcomes = {label: Outcome() for label, _, _ in commands}
    for r in range(rounds):
        for label, argv, _ in commands:
            out = outcomes[label]
            if out.skipped:
                continue
            start = time.perf_counter()
            try:
                proc = subprocess.run(argv, capture_output=True, text=True, cwd=ROOT, timeout=300)
            except OSError as e:
                out.skipped = f"cannot run: {e.strerror}"
                continue
            elapsed = time.perf_counter() - start
            if proc.returncode != 0:
                tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
                out.skipped = f"exit code {proc.returncode}: {tail}"
                print(f"round {r + 1}/{rounds}  {label:<40} skipped: {out.skipped}", flush=True)
                continue
            out.seconds.append(elapsed)
            print(f"round {r + 1}/{rounds}  {label:<40} {elapsed:.3f} s", flush=True)
    return outcomes


def startup_table(outcomes: dict[str, Outcome]) -> list[str]:
    lines = [
        "### Start-up (wall time of the whole command)",
        "",
        "| command | median s | min | max | added to `import torch` | target |",
        "|---|---|---|---|---|---|",
    ]
    torch_out = outcomes[TORCH_LABEL]
    base = statistics.median(torch_out.seconds) if torch_out.seconds else None
    for label, _, target in startup_commands():
        out = outcomes[label]
        if out.skipped:
            lines.append(f"| `{label}` | skipped: {out.skipped} |  |  |  | {target} |")
            continue
        s, med = out.seconds, statistics.median(out.seconds)
        added = f"{med - base:+.3f}" if base is not None and "torch" in label and label != TORCH_LABEL else ""
        lines.append(f"| `{label}` | {med:.3f} | {min(s):.3f} | {max(s):.3f} | {added} | {target} |")
    return lines + [""]


# ---- memory ----------------------------------------------------------------------------------------------


def run_memory(steps: int, tmp: Path) -> tuple[str, Any]:
    print("memory: training with metrics for several epochs ...", flush=True)
    kind, value = run_case("memory", "map", steps, tmp / "memory")
    shutil.rmtree(tmp / "memory", ignore_errors=True)
    return kind, value


def memory_table(kind: str, value: Any) -> list[str]:
    lines = [
        "### Memory across epochs (`F.train`, map-style data, Accuracy + ROC_AUC + F1, console logger)",
        "",
    ]
    if kind != "result":
        return lines + [f"{'Skipped' if kind == 'skip' else 'FAILED'}: {value}", ""]
    rows = value["epochs"]
    lines += ["| epoch | RSS MiB | peak RSS MiB | live tensors holding a graph |", "|---|---|---|---|"]
    lines += [
        f"| {r['epoch']} | {r['rss_mb']:.1f} | {r['peak_mb']:.1f} | {r['graph_tensors']} |" for r in rows
    ]
    growth = rows[-1]["rss_mb"] - rows[1]["rss_mb"] if len(rows) > 1 else 0.0
    graphs = max(r["graph_tensors"] for r in rows)
    verdict = "no growth" if growth < 2.0 and graphs == 0 else "**GROWTH**"
    lines += ["", f"RSS change from epoch 2 to epoch {rows[-1]['epoch']}: {growth:+.1f} MiB; {verdict}.", ""]
    return lines


# ---- the report ------------------------------------------------------------------------------------------


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def versions() -> str:
    found = []
    for dist in (
        "xt-training",
        "torch",
        "torchvision",
        "torchmetrics",
        "tensorboard",
        "pytorch-ignite",
        "lightning",
    ):
        try:
            found.append(f"{dist} {metadata.version(dist)}")
        except metadata.PackageNotFoundError:
            pass
    return ", ".join([f"Python {platform.python_version()}", *found])


def git_commit() -> str:
    try:
        rev = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        )
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "xt_training"], capture_output=True, text=True, cwd=ROOT
        )
    except OSError:
        return "unknown"
    return rev.stdout.strip() + (" (xt_training modified)" if dirty.stdout.strip() else "")


def load_average() -> str:
    """The 1-minute load average: above the core count, other work was competing for the cores."""
    try:
        return f"{os.getloadavg()[0]:.1f}"
    except OSError:
        return "unknown"


def work_lines(args: argparse.Namespace, data: set[str]) -> list[str]:
    """The header's description of the work, for the kinds of data the run covered."""
    lines = []
    if data - {"gpu"}:
        lines += [
            f"- Work: MLP 32-64-10, SGD (lr 0.05, momentum 0.9), cross-entropy, batch 64, {args.steps} steps "
            f"in 3 epochs (evaluation: {args.steps} batches in one pass), 1 thread, seed 0; each case in its "
            f"own process, {args.rounds} interleaved rounds. Times cover the training/evaluation call only "
            "(not imports or set-up). Ratios are medians of per-round ratios to the group's first case, of "
            "wall time and of the process's CPU time (steadier where other work shares the machine).",
            "- The case processes' stdout is a pipe, not a terminal: the default console logger prints plain "
            "lines (a summary per pass), no progress bar. `xt_logging`/`xt_full` force the progress bar on "
            "(written to the pipe), as on a terminal.",
        ]
    if "gpu" in data:
        n = max(1, args.gpu_steps // 3) * 64
        lines.append(
            f"- GPU work: torchvision ResNet-18 (10 classes, random init) behind a uint8-to-float layer, SGD "
            f"(lr 0.02, momentum 0.9), cross-entropy, batch 64, bf16 autocast, channels_last, "
            f"`cudnn.benchmark`, {args.gpu_steps} steps in 3 epochs over {n} synthetic uint8 3x224x224 images "
            "(a class template plus noise, seed 0, in host memory); each case in its own process, "
            f"{args.rounds} interleaved rounds; 3 warm-up steps on a copy of the model before the clock "
            "starts; the timed call includes moving the model to the GPU and ends with "
            "`torch.cuda.synchronize()`. Ratios are medians of per-round ratios to `plain`."
        )
    return lines


def report(
    args: argparse.Namespace, commit: str, load: str, sections: list[list[str]], data: set[str]
) -> str:
    command = shlex.join(["python", "benchmarks/run.py", *args.argv])
    head = [
        "# Benchmark results",
        "",
        f"- Date: {datetime.date.today().isoformat()}; commit {commit} (as the run started)",
        f"- Machine: {cpu_model()}, {os.cpu_count()} cores, {platform.system()} {platform.release()}; "
        f"load average (1 min) {load} at the start, {load_average()} at the end",
        f"- Versions: {versions()}",
        f"- Reproduce: `{command}`",
        *work_lines(args, data),
        "",
    ]
    return "\n".join(head + [line for section in sections for line in section]) + "\n"


def other_sections(path: Path) -> str:
    """The ``## `` sections of ``path`` that another script wrote (``benchmarks/fsdp.py``'s): kept as they were."""
    if not path.exists():
        return ""
    parts = re.split(r"(?m)^(?=## )", path.read_text())[1:]
    return "".join("\n" + part.rstrip("\n") + "\n" for part in parts if not part.startswith("## Speed"))


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rounds", type=int, default=5, help="interleaved rounds per case (default 5)")
    p.add_argument("--steps", type=int, default=3000, help="training steps per case (default 3000)")
    p.add_argument(
        "--gpu-steps",
        type=int,
        default=GPU_DEFAULT_STEPS,
        help=f"training steps per case of the gpu group (default {GPU_DEFAULT_STEPS}; with --quick 60)",
    )
    p.add_argument(
        "--only",
        default="*",
        help="run only the case ids matching these comma-separated patterns, e.g. 'map/*,eval/*'",
    )
    p.add_argument(
        "--compare",
        type=Path,
        metavar="DIR",
        help="also run every xt-training case with the xt_training package in DIR (e.g. a patched copy), "
        "interleaved, as case@B",
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="run this many cases at a time (default 1); more only to check that they run: their timings "
        "then compete for the cores",
    )
    p.add_argument("--no-startup", action="store_true", help="skip the start-up timings")
    p.add_argument("--no-memory", action="store_true", help="skip the memory case")
    p.add_argument("--quick", action="store_true", help="one round of 60 steps: checks that everything runs")
    p.add_argument(
        "--output",
        type=Path,
        help="markdown file for the results (default: benchmarks/RESULTS.md, or benchmarks/RESULTS-GPU.md "
        "when only gpu/* cases are selected; with --quick or --compare none)",
    )
    args = p.parse_args(argv)
    args.argv = argv
    if args.quick:
        args.rounds, args.steps, args.gpu_steps = 1, 60, 60
    elif args.output is None and args.compare is None:
        selected = select(GROUPS, args.only)
        gpu_only = selected and all(i.startswith("gpu/") for i in selected)
        args.output = HERE / ("RESULTS-GPU.md" if gpu_only else "RESULTS.md")
    if args.rounds < 1 or args.steps < 3 or args.gpu_steps < 3:
        p.error("--rounds must be at least 1, --steps and --gpu-steps at least 3")
    if args.jobs < 1:
        p.error("--jobs must be at least 1")
    if args.compare is not None:
        if not (args.compare / "xt_training" / "__init__.py").is_file():
            p.error(
                f"--compare {args.compare}: no xt_training package there; give the directory that holds it"
            )
        args.compare = args.compare.resolve()
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(sys.argv[1:] if argv is None else argv)
    commit, load = git_commit(), load_average()
    sections: list[list[str]] = [["## Speed", ""]]
    groups = [dataclasses.replace(g, steps=args.gpu_steps) if g.data == "gpu" else g for g in GROUPS]
    with tempfile.TemporaryDirectory(prefix="xt-bench-") as tmp:
        outcomes = run_groups(groups, args.only, args.rounds, args.steps, Path(tmp), args.compare, args.jobs)
        ran = [g for g in groups if any(k.startswith(g.name + "/") for k in outcomes)]
        sections += [group_table(g, outcomes) for g in ran]
        data = {g.data for g in ran} | ({"map"} if not (args.no_startup and args.no_memory) else set())
        if not args.no_startup:
            sections.append(startup_table(run_startup(args.rounds)))
        memory = ("skip", "not run (--no-memory)")
        if not args.no_memory:
            memory = run_memory(args.steps, Path(tmp))
            sections.append(memory_table(*memory))
    text = report(args, commit, load, sections, data)
    print("\n" + text)
    if args.output is not None:
        args.output.write_text(text + other_sections(args.output))
        print(f"written to {args.output}")
    failed = [i for i, o in outcomes.items() if o.failed] + (["memory"] if memory[0] == "fail" else [])
    if failed:
        print(f"FAILED: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
