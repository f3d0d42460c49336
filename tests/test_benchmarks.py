"""Smoke test of the benchmark harness: one tiny round of every case, end to end, in real processes.

It checks that the harness runs and reports, not how fast anything is (timings are not tests here):
every case has a row with a time (or, for the optional peers, a reason it was skipped), every group's
cases did the same work, and the memory probe found no live autograd graph between epochs.
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RUN = ROOT / "benchmarks" / "run.py"
OPTIONAL = {"ignite", "lightning"}  # benchmark-only extras: skipped with a note when not installed


def load_harness():
    spec = importlib.util.spec_from_file_location("bench_run", RUN)
    module = importlib.util.module_from_spec(spec)
    sys.modules["bench_run"] = module  # dataclasses resolve annotations through sys.modules
    spec.loader.exec_module(module)
    return module


def test_quick_round_of_every_case(tmp_path):
    out = tmp_path / "RESULTS.md"
    proc = subprocess.run(
        [sys.executable, str(RUN), "--quick", "--output", str(out)],
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
        for case in group.cases:
            row = re.search(rf"^\| {case} \| (.*)$", section, re.MULTILINE)
            assert row, f"no row for {group.name}/{case}"
            timed = re.match(r"\d+\.\d{4} \|", row.group(1))
            assert timed or (case in OPTIONAL and row.group(1).startswith("skipped: ")), row.group(0)
        assert "Equal work: yes" in section, section

    startup = text.split("### Start-up", 1)[1].split("###", 1)[0]
    assert re.search(r"^\| `python -c 'import torch'` \| \d+\.\d{3} \|", startup, re.MULTILINE), startup
    assert "`xt --help`" in startup and "`xt list`" in startup

    memory = text.split("### Memory", 1)[1]
    rows = re.findall(r"^\| (\d+) \| [\d.]+ \| [\d.]+ \| (\d+) \|$", memory, re.MULTILINE)
    assert [int(epoch) for epoch, _ in rows] == [1, 2, 3, 4, 5, 6], memory
    assert all(graphs == "0" for _, graphs in rows), memory


def test_bad_options_name_the_problem():
    proc = subprocess.run(
        [sys.executable, str(RUN), "--rounds", "0"], capture_output=True, text=True, cwd=ROOT
    )
    assert proc.returncode == 2 and "--rounds must be at least 1" in proc.stderr
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
