"""Plugins that clash, are slow or raise, and the errors a user meets: through the real ``xt`` in a subprocess,
with plugins fake-installed the way ``pip install`` leaves them (a module and a ``*.dist-info`` directory)."""

from __future__ import annotations

import re
import textwrap
from pathlib import Path

from conftest import ENV, xt

MINE = """
    from xt_training import hookimpl

    class Accuracy:
        higher_is_better = True

        def reset(self):
            self.n = 0

        def update(self, y_pred, y):
            self.n += len(y)

        def compute(self):
            return 1.0


    class Broken(Accuracy):
        def update(self, y_pred, y):
            return 1 / 0

    @hookimpl
    def register_metrics(register):
        register("accuracy", Accuracy, description="mine, clashing with the built-in accuracy")
        register("mine-count", Accuracy, description="not clashing")
        register("mine-broken", Broken, description="raises in update")
"""

RUN = [
    "run",
    "--model",
    "mlp",
    "--data",
    "synthetic-classification",
    "--data-opt",
    "n_samples=200",
    "--epochs",
    "1",
]


def install(site: Path, dist: str, entry_point: str, module: str, source: str) -> None:
    """What `pip install` leaves: the module and a dist-info directory with the entry point."""
    site.mkdir(exist_ok=True)
    (site / f"{module}.py").write_text(textwrap.dedent(source))
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[xt_training]\n{entry_point} = {module}\n")


def env_with(site: Path, **extra: str) -> dict:
    return {**ENV, "PYTHONPATH": ":".join([str(site), *filter(None, [ENV.get("PYTHONPATH")])]), **extra}


def test_a_name_clash_breaks_only_that_name(tmp_path):
    install(tmp_path / "site", "xt-mine", "mine", "xt_mine", MINE)
    env = env_with(tmp_path / "site")
    listed = xt("list", "metrics", cwd=tmp_path, env=env)
    assert "xt-mine:accuracy" in listed.stdout and "xt-training:accuracy" in listed.stdout
    assert "mine-count" in listed.stdout
    assert "metric 'accuracy' is registered by 2 plugins" in listed.stderr
    assert "`--metric xt-mine:accuracy`" in listed.stderr and "`xt -p no:mine`" in listed.stderr
    assert "conflict: metric 'accuracy'" in xt("plugins", cwd=tmp_path, env=env).stdout

    # a run that does not use the name works; one that does is refused with the way out
    xt(*RUN, "--metric", "mine-count", "--save-dir", str(tmp_path / "ok"), "-q", cwd=tmp_path, env=env)
    used = xt(*RUN, "--metric", "accuracy", "--save-dir", str(tmp_path / "no"), cwd=tmp_path, env=env, code=2)
    assert used.stderr.startswith("xt: error: metric 'accuracy' is registered by 2 plugins")
    assert "`--metric xt-mine:accuracy`" in used.stderr and len(used.stderr.splitlines()) == 1
    picked = tmp_path / "picked"
    xt(*RUN, "--metric", "xt-training:accuracy", "--save-dir", str(picked), "-q", cwd=tmp_path, env=env)
    assert '"val/accuracy"' in (picked / "history.json").read_text()


SLOW = """
    import os
    import time

    import click

    from xt_training import hookimpl

    with open(os.environ["SLOW_MARKER"], "a") as f:
        f.write("imported\\n")
    time.sleep(0.7)

    @hookimpl
    def register_commands(cli):
        @cli.command("slowcmd")
        def slowcmd():
            '''A slow plugin's command.'''
"""


def test_a_blocked_plugin_is_not_imported_even_for_help(tmp_path):
    install(tmp_path / "site", "xt-slow", "slow", "xt_slow", SLOW)
    marker = tmp_path / "marker"
    env = env_with(tmp_path / "site", SLOW_MARKER=str(marker))
    blocked = xt("-p", "no:slow", "--help", cwd=tmp_path, env=env)
    assert not marker.exists() and "slowcmd" not in blocked.stdout and blocked.stderr == ""
    typo = xt("-p", "no:slwo", "--help", cwd=tmp_path, env=env)
    assert (
        "xt: warning: -p no:slwo: no plugin of that name is installed; did you mean 'no:slow'?" in typo.stderr
    )
    assert marker.read_text() == "imported\n" and "slowcmd" in typo.stdout


def test_a_slow_plugin_is_named_and_an_unmarked_hook_is_warned_about(tmp_path):
    install(tmp_path / "site", "xt-slow", "slow", "xt_slow", SLOW)
    unmarked = "def register_models(register):\n    register('never', 'torch.nn:Identity')\n"
    install(tmp_path / "site", "xt-unmarked", "unmarked", "xt_unmarked", unmarked)
    env = env_with(tmp_path / "site", SLOW_MARKER=str(tmp_path / "marker"))
    help_ = xt("--help", cwd=tmp_path, env=env)
    assert len([line for line in help_.stderr.splitlines() if "slow to load" in line]) == 1
    slow = r"plugins slow to load, which every xt command waits for: 'slow' \(xt-slow 1.0\) \d"
    assert re.search(slow, help_.stderr)
    assert "slow to load" not in xt("list", "losses", cwd=tmp_path, env=env).stderr  # --help only
    assert (
        "xt: warning: plugin 'unmarked' (xt-unmarked 1.0): register_models (" in help_.stderr
        and "xt_unmarked.py:1) is named like a hook but not marked @hookimpl" in help_.stderr
    )
    timed = xt("plugins", "--timings", cwd=tmp_path, env=env).stdout
    seconds = float(re.search(r"^slow  xt-slow 1.0  loaded  ([0-9.]+) s$", timed, re.M)[1])
    assert seconds >= 0.7
    traced = xt("list", "losses", cwd=tmp_path, env={**env, "XT_TRACE_PLUGINS": "1"}).stderr
    assert (
        float(re.search(r"^xt: plugin 'slow' \(xt-slow 1.0\) loaded in ([0-9.]+) s$", traced, re.M)[1]) >= 0.7
    )
    assert "plugin 'xt_training.builtins.models' (xt-training" in traced
