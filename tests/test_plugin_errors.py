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

    class Log:
        def __init__(self, *, save_dir: str):  # xt passes the run directory: str or Path, as annotated
            self.save_dir = save_dir

        def end_run(self, status):
            with open(self.save_dir + "/mine-log.txt", "w") as f:
                f.write(status)

    @hookimpl
    def register_loggers(register):
        register("mine-log", Log)

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
    xt(*RUN, "--metric", "mine-count", "--logger", "mine-log", "--save-dir", str(tmp_path / "ok"), "-q",
       cwd=tmp_path, env=env)  # fmt: skip
    assert (tmp_path / "ok" / "mine-log.txt").read_text() == "completed"
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


def test_a_corrupt_image_is_one_line_naming_its_file(tmp_path):
    from PIL import Image

    for label in ("a", "b"):
        (tmp_path / "images" / label).mkdir(parents=True)
        for i in range(4):
            Image.new("RGB", (8, 8), (60 * i, 0, 0)).save(tmp_path / "images" / label / f"{i}.png")
    corrupt = tmp_path / "images" / "a" / "corrupt.jpg"
    corrupt.write_bytes(b"not a jpeg")
    args = ["run", "--model", "mlp", "--data", "image-folder", "--data-opt", f"root={tmp_path / 'images'}"]
    args += ["--data-opt", "image_size=8", "--data-opt", "batch_size=4", "--data-opt", "val_fraction=0"]
    for workers in (0, 1):  # raised in the main process, and in a DataLoader worker
        out = xt(*args, "--data-opt", f"num_workers={workers}", "--save-dir", str(tmp_path / f"r{workers}"),
                 "-q", cwd=tmp_path, code=2)  # fmt: skip
        assert out.stderr.splitlines() == [
            f"xt: error: image '{corrupt}' cannot be read (not an image PIL can read); remove or replace the file"
        ]


def test_an_exception_in_plugin_code_names_its_file_and_line(tmp_path):
    install(tmp_path / "site", "xt-mine", "mine", "xt_mine", MINE)
    env = env_with(tmp_path / "site")
    line = MINE.splitlines().index("            return 1 / 0") + 1  # the file is the dedented MINE
    args = [*RUN, "--metric", "mine-broken", "-q"]
    out = xt(*args, "--save-dir", str(tmp_path / "a"), cwd=tmp_path, env=env, code=1)
    assert out.stderr.splitlines()[-1].startswith(
        f"xt: error: plugin 'mine' (xt-mine 1.0), xt_mine.py:{line} in update: metric 'mine-broken' (Broken) "
    )
    assert "division by zero (the full traceback: `xt --debug ...` or XT_DEBUG=1)" in out.stderr
    assert "Traceback" not in out.stderr
    debug = xt("--debug", *args, "--save-dir", str(tmp_path / "b"), cwd=tmp_path, env=env, code=1)
    assert "Traceback (most recent call last)" in debug.stderr and "ZeroDivisionError" in debug.stderr
    assert debug.stderr.splitlines()[-1].startswith("xt: error: plugin 'mine' (xt-mine 1.0), xt_mine.py:")
    same = xt(*args, "--save-dir", str(tmp_path / "c"), cwd=tmp_path, env={**env, "XT_DEBUG": "1"}, code=1)
    assert f'xt_mine.py", line {line}, in update' in same.stderr
