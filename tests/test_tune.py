"""``xt tune`` of plugins/xt-optuna: real Optuna, real SQLite, the real ``xt`` command line in subprocesses.

The plugin is installed once for this module by ``pip install 'xt-training[tune]'`` (its wheel built
from a copy of plugins/xt-optuna) into a venv that sees this environment's packages (torch, optuna,
xt-training) through a ``.pth`` file, as tests/test_plugins.py does, and every command runs
``python -m xt_training`` (the ``xt`` CLI) of that venv. Trials are tiny: synthetic-classification
with 240 rows, 2-3 epochs. Refused commands (bad ``--search`` forms, a changed study) run in-process
through click's CliRunner, with the plugin imported from the source tree. One test runs against a real
PostgreSQL server that its fixture ``postgres_url`` starts (initdb and pg_ctl, as an unprivileged user under
root; a few seconds) and stops; it is skipped where the server programs or psycopg2 are missing.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from conftest import overlay_venv

optuna = pytest.importorskip("optuna")

from optuna.trial import TrialState  # noqa: E402

from xt_training import registry  # noqa: E402

PLUGIN = Path(__file__).resolve().parents[1] / "plugins" / "xt-optuna"
ENV = {**{k: v for k, v in os.environ.items() if k != "PYTHONPATH"}, "OMP_NUM_THREADS": "1"}
BASE = [
    "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=240",
    "--metric", "acc=accuracy", "--monitor", "val/acc",
]  # fmt: skip


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> Path:
    """The python of a venv where ``pip install 'xt-training[tune]'`` pulled in xt-optuna.

    xt-training (with the extras of this checkout's pyproject.toml), torch and optuna come from this
    environment through a ``.pth`` file; the only place pip can find xt-optuna is a wheel built from a copy
    of plugins/xt-optuna, and only the extra asks for it. A copy of xt-optuna installed here (``make tune``)
    is hidden from the venv, or pip would find the requirement already satisfied.
    """
    root = tmp_path_factory.mktemp("tune-venv")
    python, site = overlay_venv(root / "venv", hide="xt_optuna")

    source = shutil.copytree(PLUGIN, root / "src" / "xt-optuna")
    wheels = root / "wheels"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "-w", str(wheels), str(source)],
        check=True, env=ENV, cwd=root, timeout=300,
    )  # fmt: skip
    subprocess.run(
        [*pip, "--python", str(python), "install", "--no-index", "--find-links", str(wheels),
         "--no-build-isolation", "xt-training[tune]"],
        check=True, env={**ENV, "PIP_FIND_LINKS": ""}, cwd=root, timeout=300,
    )  # fmt: skip
    where = subprocess.run(
        [python, "-c", "from importlib.metadata import distribution as d; print(d('xt-optuna').locate_file(''))"],
        capture_output=True, text=True, env=ENV,
    )  # fmt: skip
    assert where.returncode == 0 and Path(where.stdout.strip()) == site, (
        f"pip install 'xt-training[tune]' did not install xt-optuna into {site}\n{where.stdout}{where.stderr}"
    )
    return python


def postgres_bindir() -> Path | None:
    """The directory of PostgreSQL's server programs: that of ``pg_ctl`` on PATH, else the newest
    ``/usr/lib/postgresql/VERSION/bin`` (Debian keeps them there, off PATH)."""
    found = shutil.which("pg_ctl")
    candidates = [Path(found).resolve().parent] if found else []
    versions = [d for d in Path("/usr/lib/postgresql").glob("*/bin") if d.parent.name.isdigit()]
    candidates += sorted(versions, key=lambda d: int(d.parent.name), reverse=True)
    for bindir in candidates:
        if all((bindir / name).is_file() for name in ("initdb", "pg_ctl", "postgres", "createdb")):
            return bindir
    return None


@pytest.fixture
def postgres_url():
    """A SQLAlchemy URL of a database on a real PostgreSQL server started for this test, stopped after it.

    initdb makes a throw-away cluster (user ``xt``, trust authentication, no fsync) in a new directory under
    /tmp; the server listens only on a unix socket in that directory. PostgreSQL refuses to run as root, so
    under root the server programs run as the ``postgres`` user (else ``nobody``) through ``runuser``, and
    that user owns the directory. Skipped where the server programs, such a user or psycopg2 are missing.
    """
    pytest.importorskip("psycopg2", reason="psycopg2 (psycopg2-binary, in the dev extra) is not installed")
    bindir = postgres_bindir()
    if bindir is None:
        pytest.skip("PostgreSQL's server programs (initdb, pg_ctl, postgres, createdb) are not installed")
    as_user: list[str] = []
    owner = None
    if os.geteuid() == 0:  # postgres will not run as root
        runuser = shutil.which("runuser")
        for name in ("postgres", "nobody"):
            try:
                owner = pwd.getpwnam(name)
                break
            except KeyError:
                continue
        if runuser is None or owner is None:
            pytest.skip("running as root, with no runuser or no postgres/nobody user to run PostgreSQL as")
        as_user = [runuser, "-u", owner.pw_name, "--"]
    root = Path(tempfile.mkdtemp(prefix="xt-pg-"))  # short: a socket path has at most 107 bytes
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    data, log, port = root / "data", root / "server.log", 5432  # the port only names the socket file here
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}

    def run(*args: str | Path, user: bool = True) -> None:
        out = subprocess.run(
            [*(as_user if user else []), *map(str, args)],
            capture_output=True, text=True, env=env, cwd=root, timeout=120,
        )  # fmt: skip
        if out.returncode != 0:
            server = log.read_text(errors="replace") if log.exists() else ""
            pytest.fail(f"{' '.join(map(str, args))} -> {out.returncode}\n{out.stdout}{out.stderr}{server}")

    try:
        run(bindir / "initdb", "-D", data, "-U", "xt", "--auth=trust", "--no-locale", "-E", "UTF8", "-N")
        with open(data / "postgresql.conf", "a") as conf:
            conf.write(
                f"listen_addresses = ''\nunix_socket_directories = '{root}'\nport = {port}\n"
                "fsync = off\nsynchronous_commit = off\nfull_page_writes = off\n"
            )
        run(bindir / "pg_ctl", "-D", data, "-l", log, "-w", "-t", "60", "start")
        run(bindir / "createdb", "-h", root, "-p", str(port), "-U", "xt", "optuna", user=False)
        yield f"postgresql+psycopg2://xt@/optuna?host={root}&port={port}"
    finally:
        if (data / "postmaster.pid").exists():
            subprocess.run(
                [*as_user, bindir / "pg_ctl", "-D", data, "-m", "immediate", "-w", "stop"],
                capture_output=True, env=env, cwd=root, timeout=60,
            )  # fmt: skip
        shutil.rmtree(root, ignore_errors=True)


def xt(python: Path, *args: str, cwd: Path, code: int = 0) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [python, "-m", "xt_training", *args], capture_output=True, text=True, env=ENV, cwd=cwd, timeout=300
    )
    assert out.returncode == code, f"xt {' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def start(python: Path, *args: str, cwd: Path) -> subprocess.Popen:
    return subprocess.Popen(
        [python, "-m", "xt_training", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        env=ENV, cwd=cwd,
    )  # fmt: skip


def error_line(out: subprocess.CompletedProcess) -> str:
    """The one-line error of a refused command."""
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xt: error: "), out.stderr
    return lines[0]


def refused(*args: str) -> str:
    """The one-line error of ``xt ARGS`` run in-process with this plugin loaded (needs ``plugin_on_path``)."""
    from importlib.metadata import entry_points

    from click.testing import CliRunner

    from xt_training.cli import cli

    installed = any(ep.value == "xt_optuna.plugin" for ep in entry_points(group="xt_training"))
    result = CliRunner().invoke(cli, [*([] if installed else ["-p", "xt_optuna.plugin"]), *args])
    assert result.exit_code == 2, (result.output, result.exception)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("xt: error: "), result.stderr
    return lines[0]


@pytest.fixture
def plugin_on_path(monkeypatch):
    """xt_optuna importable in this process from the source tree; ``xt -p xt_optuna.plugin`` loads it by name."""
    monkeypatch.syspath_prepend(str(PLUGIN))
    registry.reset()
    yield
    registry.reset()


def study_of(study_dir: Path):
    record = json.loads((study_dir / "study.json").read_text())
    return optuna.load_study(study_name=record["study_name"], storage=f"sqlite:///{study_dir / 'study.db'}")


def trial_record(study_dir: Path, number: int) -> dict:
    return json.loads((study_dir / "trials" / str(number) / "trial.json").read_text())


def assert_complete_run(study_dir: Path, number: int) -> None:
    """Trial ``number`` ran to the end as an ordinary run directory."""
    run = study_dir / "trials" / str(number)
    config = json.loads((run / "config.json").read_text())
    history = json.loads((run / "history.json").read_text())
    assert len(history) == config["epochs"] and config["monitor"] == "val/acc"
    assert (run / "checkpoints" / "last.pt").is_file() and (run / "checkpoints" / "best.pt").is_file()
    record = trial_record(study_dir, number)
    assert (record["trial"], record["state"]) == (number, "complete")
    assert record["value"] == max(row["val/acc"] for row in history)


# --- the installed plugin ---------------------------------------------------------------------------------------
def test_installed_plugin_is_listed_and_imports_neither_torch_nor_optuna_for_help(python, tmp_path):
    plugins = {
        p["name"]: p for p in json.loads(xt(python, "plugins", "--json", cwd=tmp_path).stdout)["plugins"]
    }
    optuna_plugin = plugins["optuna"]
    assert (optuna_plugin["distribution"], optuna_plugin["status"]) == ("xt-optuna", "loaded")
    assert optuna_plugin["hooks"] == [
        "plot_directory",
        "register_callbacks",
        "register_commands",
        "show_directory",
    ]
    assert optuna_plugin["registered"] == {"callback": ["optuna-pruning"]}
    code = (
        "import atexit, sys\n"
        "atexit.register(lambda: print('imported:', sorted(m for m in ('torch', 'optuna') if m in sys.modules),"
        " file=sys.stderr))\n"
        "from xt_training.cli import main\nmain(sys.argv[1:])\n"
    )
    for args in (["--help"], ["tune", "--help"], ["list", "callbacks"]):
        out = subprocess.run(
            [python, "-c", code, *args], capture_output=True, text=True, env=ENV, cwd=tmp_path
        )
        assert out.returncode == 0 and out.stderr.strip().endswith("imported: []"), out.stderr
    assert (
        "--search KEY=SPEC"
        in subprocess.run(
            [python, "-m", "xt_training", "tune", "--help"], capture_output=True, text=True, env=ENV
        ).stdout
    )


# --- concurrency ---------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_two_processes_started_together_share_one_study(python, tmp_path):
    args = [*BASE, "--epochs", "2", "--search", "lr=logfloat:1e-3:1e-1", "--search", "model.hidden=int:4:32"]
    args += ["--pruner", "none"]
    first = start(python, "tune", *args, "--trials", "4", "--study-dir", "s", cwd=tmp_path)
    second = start(python, "tune", *args, "--trials", "5", "--jobs", "2", "--study-dir", "s", cwd=tmp_path)
    for proc in (first, second):
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, out + err

    study = study_of(tmp_path / "s")
    numbers = sorted(t.number for t in study.trials)
    assert numbers == list(range(9))  # 4 + 5 trials, no number twice
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert sorted(int(p.name) for p in (tmp_path / "s" / "trials").iterdir()) == numbers
    for number in numbers:
        assert_complete_run(tmp_path / "s", number)
    assert len({t.user_attrs["session"] for t in study.trials}) == 2  # the --jobs 2 workers share one


# --- pruning, and a trial's saved configuration reproduces it ---------------------------------------------------
@pytest.mark.slow
def test_hopeless_trials_are_pruned_and_the_best_trial_reproduces(python, tmp_path):
    out = xt(
        python, "tune", *BASE, "--epochs", "3", "--search", "lr=float:0.001:100", "--trials", "12",
        "--sampler", "random", "--sampler-seed", "1", "--pruner", "median", "--pruner-opt", "n_startup_trials=3",
        "--study-dir", "s", cwd=tmp_path,
    ).stdout  # fmt: skip
    study = study_of(tmp_path / "s")
    pruned = [t for t in study.trials if t.state == TrialState.PRUNED]
    assert pruned, out
    stopped_at = []
    for t in pruned:  # stopped at once: the run directory ends at the pruned epoch, and says so
        record = trial_record(tmp_path / "s", t.number)
        history = json.loads((tmp_path / "s" / "trials" / str(t.number) / "history.json").read_text())
        assert record["state"] == "pruned" and len(history) == record["pruned_at_epoch"] == t.last_step
        assert f"trial {t.number} pruned at epoch {record['pruned_at_epoch']}" in out
        stopped_at.append(t.last_step)
    assert min(stopped_at) < 3
    best = study.best_trial
    assert best.params["lr"] < 1 and f"best: trial {best.number}, val/acc" in out

    xt(
        python,
        "run",
        "--config",
        f"s/trials/{best.number}/config.json",
        "--save-dir",
        "again",
        "-q",
        cwd=tmp_path,
    )
    history = json.loads((tmp_path / "again" / "history.json").read_text())
    assert max(row["val/acc"] for row in history) == best.value

    shown = xt(python, "show", "s", cwd=tmp_path).stdout
    assert f"{len(pruned)} pruned" in shown and f"best: trial {best.number}" in shown
    assert f"run s/trials/{best.number}" in xt(python, "show", f"s/trials/{best.number}", cwd=tmp_path).stdout
    pytest.importorskip("matplotlib")
    plotted = xt(python, "plot", "s", "-o", "figs/s.png", cwd=tmp_path).stdout
    for name in ("s-history.png", "s-importances.png"):
        assert f"wrote figs/{name}" in plotted
        assert (tmp_path / "figs" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_trial_with_validations_within_epochs_counts_its_epochs(python, tmp_path):
    xt(python, "tune", *BASE, "--epochs", "2", "--val-every", "2", "--search", "lr=float:0.001:0.1", "--trials", "1",
       "--study-dir", "s", cwd=tmp_path)  # fmt: skip
    history = json.loads((tmp_path / "s" / "trials" / "0" / "history.json").read_text())
    assert len(history) > 2  # the validations every 2 steps are rows too
    assert trial_record(tmp_path / "s", 0)["epochs"] == 2


# --- continuing and refusing ---------------------------------------------------------------------------------
@pytest.mark.slow
def test_continue_a_study_and_refuse_a_changed_one(python, plugin_on_path, tmp_path):
    study_dir = str(tmp_path / "s")
    args = [*BASE, "--epochs", "2", "--search", "lr=logfloat:1e-3:1e-1", "--study-dir", study_dir, "-q"]
    xt(python, "tune", *args, "--trials", "2", cwd=tmp_path)
    first = {n: (tmp_path / "s" / "trials" / str(n) / "config.json").read_bytes() for n in (0, 1)}
    xt(python, "tune", *args, "--trials", "2", cwd=tmp_path)  # the same definition again
    xt(python, "tune", "--study-dir", study_dir, "--trials", "1", "-q", cwd=tmp_path)  # none: as it is
    study = study_of(tmp_path / "s")
    assert sorted(t.number for t in study.trials) == list(range(5))
    assert all(t.state == TrialState.COMPLETE for t in study.trials)
    assert {n: (tmp_path / "s" / "trials" / str(n) / "config.json").read_bytes() for n in (0, 1)} == first

    # refusals are bad input: checked in this process, against the same storage
    changed = [a.replace("1e-1", "1") for a in args]
    assert "--search lr: logfloat:0.001:0.1 then, logfloat:0.001:1.0 now" in refused("tune", *changed)
    assert "epochs: 2 then, 3 now" in refused("tune", *args, "--epochs", "3")
    assert "--search model.hidden=int:4:8 is new" in refused(
        "tune", *args, "--search", "model.hidden=int:4:8"
    )
    other = f"sqlite:///{tmp_path / 'other.db'}"
    assert "pass the same --storage or none" in refused("tune", "--study-dir", study_dir, "--storage", other)
    assert len(study_of(tmp_path / "s").trials) == 5


# --- PostgreSQL: a real server, one study shared by two study directories ---------------------------------------
@pytest.mark.slow
def test_a_study_in_postgresql_is_shared_and_continued(postgres_url, python, tmp_path):
    args = [*BASE, "--epochs", "2", "--search", "lr=logfloat:1e-3:1e-1", "--pruner", "none", "-q"]
    xt(python, "tune", *args, "--storage", postgres_url, "--trials", "3", "--study-dir", "s", cwd=tmp_path)
    record = json.loads((tmp_path / "s" / "study.json").read_text())
    assert (record["study_name"], record["storage"]) == ("s", postgres_url)
    assert not (tmp_path / "s" / "study.db").exists()
    study = optuna.load_study(study_name="s", storage=postgres_url)  # from this process, from the server
    assert [(t.number, t.state) for t in study.trials] == [(n, TrialState.COMPLETE) for n in range(3)]

    # another machine: the same --storage and --study-name, trial directories under its own --study-dir
    xt(
        python, "tune", *args, "--storage", postgres_url, "--study-name", "s", "--trials", "2",
        "--study-dir", "elsewhere", cwd=tmp_path,
    )  # fmt: skip
    # the first directory again, with no definition: the study as it is
    xt(python, "tune", "--study-dir", "s", "--trials", "1", "--pruner", "none", "-q", cwd=tmp_path)
    study = optuna.load_study(study_name="s", storage=postgres_url)
    assert [(t.number, t.state) for t in study.trials] == [(n, TrialState.COMPLETE) for n in range(6)]
    for study_dir, numbers in (("s", [0, 1, 2, 5]), ("elsewhere", [3, 4])):
        assert sorted(int(p.name) for p in (tmp_path / study_dir / "trials").iterdir()) == numbers
        for number in numbers:
            assert_complete_run(tmp_path / study_dir, number)
            assert study.trials[number].user_attrs["run_dir"].endswith(f"{study_dir}/trials/{number}")
    assert "trials: 6 (6 complete, 0 pruned" in xt(python, "show", "elsewhere", cwd=tmp_path).stdout


# --- failures ------------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_failing_trials_do_not_stop_the_study(python, tmp_path):
    # the grid: a NaN loss (lr 1e30), a model the factory refuses (hidden -4), both, and one good trial
    out = xt(
        python, "tune", *BASE, "--epochs", "2", "--search", "lr=choice:0.01,1e30",
        "--search", "model.hidden=choice:16,-4", "--sampler", "grid", "--trials", "10", "--study-dir", "s",
        cwd=tmp_path,
    ).stdout  # fmt: skip
    study = study_of(tmp_path / "s")
    assert len(study.trials) == 4  # the grid is done before --trials
    by_params = {(t.params["lr"], t.params["model.hidden"]): t for t in study.trials}
    good = by_params.pop((0.01, 16))
    assert good.state == TrialState.COMPLETE and study.best_trial.number == good.number
    assert_complete_run(tmp_path / "s", good.number)
    for (_, hidden), t in by_params.items():
        error = t.user_attrs["error"]
        assert t.state == TrialState.FAIL and "\n" not in error
        if hidden == -4:
            assert error == "ConfigError: hidden must be positive integers, got -4"
        else:
            assert error.startswith("NonFiniteLossError: the loss is nan")
        record = trial_record(tmp_path / "s", t.number)
        assert (record["state"], record["error"]) == ("failed", error)
        assert f"trial {t.number}: {error}" in out


@pytest.mark.slow
def test_all_trials_failing_is_an_error(python, tmp_path):
    args = [*BASE, "--model-opt", "hidden=-4", "--search", "lr=logfloat:1e-3:1e-1", "--trials", "2"]
    line = error_line(
        xt(python, "tune", *args, "--epochs", "2", "--study-dir", "s", "-q", cwd=tmp_path, code=2)
    )
    assert line == (
        "xt: error: all 2 trials failed; the first, trial 0: ConfigError: hidden must be positive integers, got -4"
    )


# --- a search_space(trial) file, and Ctrl-C -------------------------------------------------------------------
SPACE = """
def search_space(trial):
    return {
        "lr": trial.suggest_float("lr", 1e-3, 1e-1, log=True),
        "model.hidden": trial.suggest_categorical("model.hidden", [8, 32]),
        "epochs": 500 if trial.number == 1 else 2,  # trial 1 runs long enough to be interrupted
    }
"""


@pytest.mark.slow
def test_search_space_file_ctrl_c_and_a_changed_file(python, plugin_on_path, tmp_path):
    (tmp_path / "space.py").write_text(SPACE)
    args = ["space.py", *BASE, "--epochs", "2", "--pruner", "none", "--study-dir", "s"]
    proc = start(python, "tune", *args, "--trials", "3", cwd=tmp_path)
    history = tmp_path / "s" / "trials" / "1" / "history.json"
    deadline = time.monotonic() + 120
    while not history.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and err.strip().endswith("xt: interrupted"), out + err

    study = study_of(tmp_path / "s")
    assert [t.state for t in study.trials] == [TrialState.COMPLETE, TrialState.FAIL]
    assert study.trials[1].user_attrs["error"] == "interrupted (Ctrl-C)"
    assert trial_record(tmp_path / "s", 1)["state"] == "interrupted"
    assert_complete_run(tmp_path / "s", 0)
    config = json.loads((tmp_path / "s" / "trials" / "0" / "config.json").read_text())
    assert config["optimizer"]["options"]["lr"] == study.trials[0].params["lr"]
    assert config["model"]["options"]["hidden"] == study.trials[0].params["model.hidden"]

    xt(python, "tune", *args, "--trials", "1", "-q", cwd=tmp_path)  # continues after the interrupted trial
    assert [t.state for t in study_of(tmp_path / "s").trials][2] == TrialState.COMPLETE
    assert_complete_run(tmp_path / "s", 2)

    (tmp_path / "space.py").write_text(SPACE.replace("[8, 32]", "[8, 64]"))
    line = refused("tune", *[str(tmp_path / a) if a in ("space.py", "s") else a for a in args])
    assert "search_space of" in line and "line 5:" in line and "[8, 64]" in line


# --- the Python API ------------------------------------------------------------------------------------------
def test_python_api_returns_the_study(plugin_on_path, tmp_path):
    import xt_optuna

    config = {
        "model": {"name": "mlp", "options": {"hidden": 8}},
        "data": {"name": "synthetic-classification", "options": {"n_samples": 240}},
        "epochs": 2,
        "monitor": "val/loss",
    }
    study = xt_optuna.tune(
        config, {"lr": "logfloat:1e-3:1e-1"}, study_dir=tmp_path / "s", trials=2, quiet=True
    )
    assert [t.state for t in study.trials] == [TrialState.COMPLETE] * 2
    assert study.direction == optuna.study.StudyDirection.MINIMIZE
    study = xt_optuna.tune(study_dir=tmp_path / "s", trials=1, quiet=True)
    assert len(study.trials) == 3


# --- every bad --search form: one line naming the problem ---------------------------------------------------------
@pytest.mark.parametrize(
    "searches, message",
    [
        (["lr"], "Invalid value for --search: 'lr' is not KEY=SPEC, e.g. lr=logfloat:1e-5:1e-1"),
        (["lr=float:0:1", "lr=float:0:2"], "'lr' is searched twice"),
        (["lr=uniform:0:1"], "search lr=uniform:0:1: unknown form 'uniform'; SPEC is float:LOW:HIGH"),
        (["lr=flaot:0:1"], "unknown form 'flaot'; did you mean 'float'?"),
        (["lr=float:1"], "search lr=float:1: float needs LOW:HIGH, e.g. float:0.0:0.5"),
        (["lr=float:0:1:2"], "float needs LOW:HIGH"),
        (["lr=float:a:b"], "LOW and HIGH must be numbers, e.g. float:0.0:0.5"),
        (["lr=float:1:0.1"], "LOW must be below HIGH"),
        (["lr=float:0:inf"], "LOW must be below HIGH (and both finite)"),
        (["lr=logfloat:0:1"], "logfloat needs LOW > 0 (a log scale)"),
        (["model.hidden=int:8:6.5"], "LOW and HIGH must be integers, e.g. int:16:256"),
        (["batch-size=int:0:8"], "batch sizes start at 1"),
        (["epochs=float:1:3"], "epochs takes integers; use int:LOW:HIGH or choice:A,B"),
        (["optimizer=float:0:1"], "optimizer takes names, not numbers; use choice:A,B"),
        (["precision=int:16:32"], "precision takes text, not numbers"),
        (["optimizer=choice:"], "choice needs values separated by commas"),
        (["model.hidden=choice:8,,16"], "choice needs values separated by commas"),
        (["model.hidden=choice:8,8"], "a value is listed twice"),
        (["batch-size=choice:8,big"], "'big' is not a valid integer range"),
        (["precision=choice:32,64"], "'64' is not one of '32', 'bf16-mixed', '16-mixed'"),
        (["learning-rate=float:0:1"], "search key 'learning-rate' is neither an `xt run` option nor KIND.OPTION"),
        (["monitor=choice:val/acc"], "search key 'monitor' is neither"),
        (["batch_size=int:8:16"], "did you mean 'batch-size'?"),
        (["model.hiden=int:8:64"], "model 'mlp' has no option 'hiden'; did you mean 'model.hidden'?"),
        (["scheduler.gamma=float:0.1:0.9"], "search scheduler.gamma: no scheduler is chosen; name it with --scheduler NAME"),
        (["lr=float:0.001:0.1", "optimizer.lr=float:0.001:0.1"], "search keys 'lr' and 'optimizer.lr' set the same value"),
    ],
)  # fmt: skip
def test_every_bad_search_form_is_a_one_line_error(plugin_on_path, tmp_path, searches, message):
    args = [
        "tune",
        "--model",
        "mlp",
        "--data",
        "synthetic-classification",
        "--study-dir",
        str(tmp_path / "s"),
    ]
    assert message in refused(*args, *(a for s in searches for a in ("--search", s)))
    assert not (tmp_path / "s").exists()  # refused before anything was made


def test_nproc_is_refused_with_the_ways_to_scale_out(plugin_on_path, tmp_path):
    args = ["tune", *BASE, "--search", "lr=float:0.001:0.1", "--study-dir", str(tmp_path / "s")]
    line = refused(*args, "--nproc", "2")
    assert "--nproc: xt tune trains each trial in one process (distributed trials are not supported)" in line
    assert "--jobs N" in line and "one --storage URL" in line
    assert not (tmp_path / "s").exists()


def test_nothing_to_search_and_nothing_to_continue(plugin_on_path, tmp_path):
    for args, message in (
        (["--model", "mlp", "--data", "synthetic-classification"], "nothing to search: add --search KEY=SPEC"),
        ([], "define a study (--model NAME --data NAME --search KEY=SPEC), or continue one with --study-dir DIR"),
        (["--study-dir", str(tmp_path / "none")], "holds no study yet; define one with --model"),
        (["--search", "lr=float:0:1", "--data", "synthetic-classification"], "no model is chosen; pick one with --model"),
        (["--search", "lr=float:0:1", "--model", "mlp"], "no data is chosen"),
    ):  # fmt: skip
        assert message in refused("tune", *args), args
    assert not (tmp_path / "none").exists()
