"""``xt new plugin``: the package it writes installs with pip and passes its own tests."""

from __future__ import annotations

import subprocess
import sys

import pytest
from conftest import ENV, overlay_venv, xt


@pytest.mark.slow
def test_new_plugin_installs_and_passes_its_own_tests(tmp_path):
    out = xt("new", "plugin", "my-tools", cwd=tmp_path).stdout
    assert "wrote xt-my-tools/" in out
    source = tmp_path / "xt-my-tools"
    assert sorted(p.name for p in (source / "xt_my_tools").iterdir()) == [
        "__init__.py", "callbacks.py", "commands.py", "data.py", "loggers.py", "metrics.py", "models.py", "plugin.py",
    ]  # fmt: skip
    python, _ = overlay_venv(tmp_path / "venv")
    env = {k: v for k, v in ENV.items() if k != "PYTHONPATH"}
    pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "install", "--no-deps", "--no-build-isolation", "-e", str(source)], check=True,
                   env=env, cwd=tmp_path, timeout=300)  # fmt: skip
    # its tests: it is listed, a run uses every name (model, data, metric, logger, callback) and its command
    # reads the run back; they run the real `xt` of the environment the plugin is installed in
    proc = subprocess.run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], cwd=source, env=env,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0 and "3 passed" in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_new_plugin_refuses_a_bad_name_and_an_existing_directory(tmp_path):
    proc = xt("new", "plugin", "My_Tools", cwd=tmp_path, code=2)
    assert proc.stderr.strip() == (
        "xt: error: plugin name 'My_Tools': use lower-case letters, digits and single hyphens, starting with a "
        "letter, e.g. `xt new plugin my-models`"
    )
    (tmp_path / "xt-tools").mkdir()
    proc = xt("new", "plugin", "xt-tools", cwd=tmp_path, code=2)
    assert (
        proc.stderr.strip()
        == "xt: error: xt-tools exists: choose another NAME, or another directory with --dir"
    )
    assert list((tmp_path / "xt-tools").iterdir()) == []
