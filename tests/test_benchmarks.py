"""Smoke test of the benchmark harness: one tiny round of every case, end to end, in real processes.

It checks that the harness runs and reports, not how fast anything is (timings are not tests here):
every case has a row with a time (or, for the optional peers and the GPU cases without CUDA, a reason it
was skipped), every group's cases did the same work, and the memory probe found no live autograd graph
between epochs. The GPU cases also run here in their tiny CPU form (``XT_BENCH_GPU_ON_CPU=1``).
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
OPTIONAL = {"ignite", "lightning", "xt_mlflow"}  # optional packages: skipped with a note when not installed
GPU_CASES = ["plain", "xt_defaults", "xt_fast", "xt_runner"]


def has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


def load_harness():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_quick_round_of_every_case(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--jobs", "2", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    text = out.read_text()
    assert (
        "- Machine: " in text
        and "torch " in text
        and "- Reproduce: `python benchmarks/run.py --quick" in text
    )

    harness = load_harness()
    for group in harness.GROUPS:
        section = text.split(f"### {group.title}", 1)[1].split("###", 1)[0]
        may_skip = OPTIONAL if group.name != "gpu" or has_cuda() else set(group.cases)
        for case in group.cases:
            row = re.search(rf"^\| {case} \| (.*)$", section, re.MULTILINE)
            assert row, f"no row for {group.name}/{case}"
            timed = re.match(r"\d+\.\d{4} \|", row.group(1))
            assert timed or (case in may_skip and row.group(1).startswith("skipped: ")), row.group(0)
        assert "Equal work: yes" in section or may_skip == set(group.cases), section

    startup = text.split("### Start-up", 1)[1].split("###", 1)[0]
    assert re.search(r"^\| `python -c 'import torch'` \| \d+\.\d{3} \|", startup, re.MULTILINE), startup
    assert "`xt --help`" in startup and "`xt list`" in startup and "metrics.Accuracy()" in startup

    memory = text.split("### Memory", 1)[1]
    rows = re.findall(r"^\| (\d+) \| [\d.]+ \| [\d.]+ \| (\d+) \|$", memory, re.MULTILINE)
    assert [int(epoch) for epoch, _ in rows] == [1, 2, 3, 4, 5, 6], memory
    assert all(graphs == "0" for _, graphs in rows), memory


def test_bad_options_name_the_problem():
    proc = subprocess.run(
        [sys.executable, str(RUN), "--rounds", "0"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "--rounds must be at least 1" in proc.stderr
    proc = subprocess.run([sys.executable, str(RUN), "--jobs", "0"], capture_output=True, text=True, cwd=ROOT)
    assert proc.returncode == 2 and "--jobs must be at least 1" in proc.stderr
    cases = ROOT / "benchmarks" / "cases.py"
    proc = subprocess.run(
        [sys.executable, str(cases), "nonsense", "map", "60", "/tmp"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert proc.returncode == 1 and "unknown case 'nonsense'; choose one of: plain," in proc.stderr


def test_profiler_runs_and_compares_a_copy(tmp_path):
    # --compare imports the Runner of another xt_training copy beside the installed one
    import xt_training

    shutil.copytree(Path(xt_training.__file__).parent, tmp_path / "xt_training")
    proc = subprocess.run(
        [
            sys.executable,
            str(ROOT / "benchmarks" / "profile_loop.py"),
            "--quick",
            "--cprofile",
            "--compare",
            str(tmp_path),
        ],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    for heading in ("## 1. Loop overhead", "## 2. F.train", "## 3. The pieces", "## 4. cProfile"):
        assert heading in proc.stdout
    assert f"| Runner(quiet=True) of {tmp_path} | " in proc.stdout


def run_gpu_group(tmp_path, gpu_on_cpu: bool, only: str = "gpu/*") -> tuple[subprocess.CompletedProcess, str]:
    env = {k: v for k, v in os.environ.items() if k != "XT_BENCH_GPU_ON_CPU"}
    if gpu_on_cpu:
        env["XT_BENCH_GPU_ON_CPU"] = "1"
    out = tmp_path / "RESULTS-GPU.md"
    argv = ["--only", only, "--rounds", "1", "--gpu-steps", "6", "--jobs", "2", "--no-startup", "--no-memory"]
    proc = subprocess.run(
        [sys.executable, str(RUN), *argv, "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=env,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return proc, out.read_text()


def test_gpu_cases_run_end_to_end_in_their_tiny_cpu_form(tmp_path):
    # ResNet-18 on 32x32 images, 2 batches of 64 per epoch, bf16 autocast on the CPU: the code of every
    # GPU case runs, prints its BENCH_RESULT (a row with a time comes from nothing else) and its loss.
    proc, text = run_gpu_group(tmp_path, gpu_on_cpu=True)
    assert "- GPU work: torchvision ResNet-18" in text and "- Work: MLP" not in text
    losses = set()
    for case in GPU_CASES:
        printed = re.search(
            rf"^round 1/1  gpu/{case} +[\d.]+ s/1000 steps .* loss (\d+\.\d+)$", proc.stdout, re.M
        )
        assert printed, proc.stdout
        row = re.search(rf"^\| {case} \| \d+\.\d{{4}} \|.* \| (\d+\.\d{{6}}) \|$", text, re.MULTILINE)
        assert row and row.group(1) == printed.group(1), text
        losses.add(row.group(1))
    # CPU kernels are deterministic: the same batches and updates give the same loss in every case
    assert (
        len(losses) == 1
        and "Equal work: yes, the largest difference in loss between cases is 0.000000" in text
    )
    assert "- xt_fast, this run's data path: fast path: batches are gathered directly" in text
    assert "- xt_defaults, this run's data path: the DataLoader's batches" in text
    assert "- Device: CPU (XT_BENCH_GPU_ON_CPU=1: tiny form, 32x32 images" in text and "seed 0" in text


@pytest.mark.skipif(has_cuda(), reason="checks the run without CUDA")
def test_gpu_group_is_skipped_without_cuda(tmp_path):
    proc, text = run_gpu_group(tmp_path, gpu_on_cpu=False, only="gpu/plain,gpu/xt_defaults")
    assert "round 1/1  gpu/plain              skipped: no CUDA device" in proc.stdout
    for case in ("plain", "xt_defaults"):
        assert re.search(rf"^\| {case} \| skipped: no CUDA device \(torch ", text, re.MULTILINE), text
    assert "| xt_fast |" not in text and "Equal work: not checked, no case ran." in text


def test_a_gpu_only_run_writes_its_own_results_file():
    harness = load_harness()
    assert harness.parse_args(["--only", "gpu/*"]).output.name == "RESULTS-GPU.md"
    assert harness.parse_args(["--only", "gpu/plain,gpu/xt_fast"]).output.name == "RESULTS-GPU.md"
    assert harness.parse_args(["--only", "gpu/*,map/plain"]).output.name == "RESULTS.md"
    assert harness.parse_args([]).output.name == "RESULTS.md"
    args = harness.parse_args(["--quick"])
    assert args.output is None and args.gpu_steps == 60


CACHEGRIND = ROOT / "benchmarks" / "cachegrind_loop.py"


@pytest.mark.valgrind
@pytest.mark.skipif(shutil.which("valgrind") is None, reason="needs valgrind")
def test_cachegrind_counts_the_loops_per_step():
    # two short runs per loop under valgrind, per-step counts, the Runner beside plain (only the default
    # Runner). The imports dominate (~4 minutes of a core under valgrind): the tool does them once and
    # forks the four runs. `make test` leaves it out (-m "not valgrind"): `pytest -m valgrind` runs it. Ten
    # steps apart: a rare one-off of a few million instructions in one run (seen
    # once, on a CI machine, with one step apart) must not flip a difference's sign.
    proc = subprocess.run(
        [sys.executable, str(CACHEGRIND), "--steps", "2,12", "--variants", "runner"],
        capture_output=True, text=True, cwd=ROOT, timeout=1200,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    rows = {
        line.split("|")[1].strip(): line.split("|")[2:-1]
        for line in proc.stdout.splitlines()
        if line.startswith("| ")
    }
    assert set(rows) == {"variant", "plain", "Runner"}
    plain_instructions = float(rows["plain"][0].replace(",", ""))
    assert plain_instructions > 1e5  # a training step runs millions of instructions
    assert re.fullmatch(r"[\d,]+ \([+-][\d,]+, [+-]\d+\.\d\d%\)", rows["Runner"][0].strip())


def test_cachegrind_bad_options_name_the_problem(tmp_path):
    for argv, message in (
        (["--steps", "600,100"], "--steps must be two step counts A,B with 0 < A < B"),
        (["--compare", str(tmp_path)], f"--compare {tmp_path}: no xt_training/runner.py there"),
        (["--variants", "runner,fast"], "--variants 'runner,fast': choose from runner, runner_no_fast_path"),
    ):
        proc = subprocess.run([sys.executable, str(CACHEGRIND), *argv], capture_output=True, text=True)
        assert proc.returncode == 1 and message in proc.stderr, proc.stderr
