"""docs/install.md's install lines, run as a newcomer runs them: in a fresh venv, from a copy of the checkout.

The venv sees this environment's packages (torch, matplotlib, optuna, ...) through a ``.pth`` file, with
this environment's own xt-training and plugins hidden, so each line really installs this project or its
plugin; pip runs offline (``--no-index``), which is also what proves no line reaches for the package
index's ``xt-training`` (a different project).
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import overlay_venv

ROOT = Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "install.md"
ENV = {
    **{k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
    "PIP_FIND_LINKS": "",
    "OMP_NUM_THREADS": "1",
}


def install_lines() -> list[tuple[list[str], str]]:
    """The commands of the page's "The lines" block, each with what its comment says."""
    section = PAGE.read_text().split("## The lines", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    lines = []
    for line in block.splitlines():
        command, _, comment = line.partition("#")
        lines.append((shlex.split(command), comment.strip()))
    return lines


def test_the_page_names_this_projects_checkout_or_plugins_in_every_install() -> None:
    installs = [args for args, _ in install_lines() if args[:2] == ["pip", "install"]]
    assert len(installs) >= 8
    for args in installs:
        assert all(a.startswith((".", "./plugins/")) for a in args[2:]), args  # never the index's name


@pytest.mark.slow
def test_each_install_line_installs_this_project_offline(tmp_path: Path) -> None:
    source = shutil.copytree(
        ROOT, tmp_path / "xt-training",
        ignore=shutil.ignore_patterns(".git", ".venv", "runs", "build", "*.egg-info", "__pycache__", ".nox"),
    )  # fmt: skip
    python, site = overlay_venv(
        tmp_path / "venv",
        hide=("xt_training", "xt_vision", "xt_timm", "xt_calibration", "xt_optuna", "xt_mlflow"),
    )
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", str(python)]
    for args, comment in install_lines():
        if args[:2] == ["pip", "install"]:
            out = subprocess.run(
                [*pip, "install", "--no-index", "--no-build-isolation", *args[2:]],
                cwd=source, env=ENV, capture_output=True, text=True, timeout=600,
            )  # fmt: skip
            assert out.returncode == 0, f"{shlex.join(args)}\n{out.stdout}{out.stderr}"
        else:  # `xt --version`: the venv's own console script, printing what the comment says
            assert args[0] == "xt", args
            out = subprocess.run(
                [python.parent / "xt", *args[1:]], cwd=tmp_path, env=ENV, capture_output=True, text=True
            )
            assert out.stdout.strip() == comment, out.stdout + out.stderr
    listed = subprocess.run(
        [python.parent / "xt", "plugins"], cwd=tmp_path, env=ENV, capture_output=True, text=True
    )
    for plugin in ("xt-vision", "xt-timm", "xt-calibration", "xt-optuna", "xt-mlflow"):
        assert plugin in listed.stdout, listed.stdout + listed.stderr
    where = subprocess.run(
        [python, "-c", "import xt_training; print(xt_training.__file__)"], cwd=tmp_path, env=ENV,
        capture_output=True, text=True,
    )  # fmt: skip
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout  # installed, not the checkout's
    # the plugin template is package data: an installed xt-training (not a checkout) writes a whole plugin
    subprocess.run([python.parent / "xt", "new", "plugin", "probe"], cwd=tmp_path, env=ENV, check=True)
    written = {p.relative_to(tmp_path / "xt-probe").as_posix() for p in (tmp_path / "xt-probe").rglob("*.*")}
    assert {"pyproject.toml", "tests/test_plugin.py", "xt_probe/plugin.py", "xt_probe/models.py"} <= written
