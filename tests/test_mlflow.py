"""The xt-mlflow plugin, pip-installed for real into a venv and driven by the real ``xt`` command.

What the runs record is read back through MLflow's own client (``MlflowClient``): from the default SQLite
store, and from an ``mlflow server`` this module starts on 127.0.0.1 (one server: it takes ~1 minute to
start on a busy machine) and kills mid-run. The venv sees this environment's packages (torch, mlflow,
optuna) through a ``.pth`` file; pip installs copies of plugins/xt-mlflow and plugins/xt-optuna into it.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import ENV, overlay_venv

mlflow = pytest.importorskip("mlflow")
pytest.importorskip("optuna")

from mlflow.tracking import MlflowClient  # noqa: E402

pytestmark = pytest.mark.slow  # each test runs `xt` (and MLflow) in fresh processes: ~10 s or more each

PLUGINS = Path(__file__).resolve().parents[1] / "plugins"
# MLflow's HTTP client retries a refused connection for minutes by default; a killed server fails at once
RUN_ENV = {**ENV, "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0", "MLFLOW_HTTP_REQUEST_TIMEOUT": "20"}
BASE = [
    "--model", "mlp", "--data", "synthetic-classification", "--data-opt", "n_samples=240", "--batch-size", "16",
    "--metric", "acc=accuracy", "--monitor", "val/acc", "--log-every", "5", "-q",
]  # fmt: skip
WARNING = "warning: logger MLflowLogger failed"


@pytest.fixture(scope="module")
def python(tmp_path_factory) -> Path:
    """The python of a venv where pip installed xt-mlflow (and xt-optuna, for ``xt tune``) from copies."""
    root = tmp_path_factory.mktemp("mlflow-venv")
    python, site = overlay_venv(root / "venv", hide=("xt_mlflow", "xt_optuna"))
    sources = [
        str(shutil.copytree(PLUGINS / name, root / "src" / name)) for name in ("xt-mlflow", "xt-optuna")
    ]
    subprocess.run(
        [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q", "--python", str(python), "install",
         "--no-index", "--no-build-isolation", *sources],
        check=True, env={**ENV, "PIP_FIND_LINKS": ""}, cwd=root, timeout=300,
    )  # fmt: skip
    where = run(python, "-c", "import xt_mlflow; print(xt_mlflow.__file__)", cwd=root)
    assert Path(where.stdout.strip()).is_relative_to(site), where.stdout  # the installed copy
    return python


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """The working directory of the runs: its ``mlflow.db`` is the default store, made once for the module."""
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="module")
def client(workdir) -> MlflowClient:
    """The default store's client. Whoever touches the store first makes its tables and MLflow's default
    artifact root, ``./mlruns`` of the working directory at that moment: the working directory of the runs."""
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(workdir)
        client = MlflowClient(f"sqlite:///{workdir / 'mlflow.db'}")
        client.search_experiments()
    return client


def run(
    python: Path, *args: str, cwd: Path, code: int = 0, env: dict | None = None
) -> subprocess.CompletedProcess:
    out = subprocess.run(
        [str(python), *args], cwd=cwd, env=env or RUN_ENV, capture_output=True, text=True, timeout=600
    )
    assert out.returncode == code, f"{' '.join(args)} -> {out.returncode}\n{out.stdout}\n{out.stderr}"
    return out


def xt(python: Path, *args: str, cwd: Path, code: int = 0) -> subprocess.CompletedProcess:
    """``xt ARGS`` in the venv; without a warning (a dropped logger) unless it is to fail."""
    out = run(python, "-m", "xt_training", *args, cwd=cwd, code=code)
    assert code or "warning" not in out.stderr, out.stderr
    return out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def steps_and_values(client: MlflowClient, run_id: str, key: str) -> list[tuple[int, float]]:
    return [(m.step, m.value) for m in sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def jsonl_rows(run_dir: Path, kind: str) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if r["kind"] == kind]


def test_the_plugin_is_listed_and_mlflow_is_not_imported_to_list_it(python, workdir):
    plugins = {
        p["name"]: p for p in json.loads(xt(python, "plugins", "--json", cwd=workdir).stdout)["plugins"]
    }
    assert plugins["mlflow"]["distribution"] == "xt-mlflow" and plugins["mlflow"]["registered"] == {
        "logger": ["mlflow"]
    }
    listed = run(python, "-X", "importtime", "-m", "xt_training", "list", "loggers", cwd=workdir)
    assert "mlflow" in listed.stdout
    imported = [line.split("|")[-1].strip() for line in listed.stderr.splitlines() if "|" in line]
    assert not [m for m in imported if m.split(".")[0] == "mlflow"]


def test_the_sqlite_default_records_params_metrics_tags_files_and_the_model(
    python, workdir, client, tmp_path
):
    run_dir = workdir / "sqlite-run"
    xt(python, "run", *BASE, "--epochs", "2", "--logger", "mlflow", "--logger", "jsonl",
       "--logger-opt", "mlflow.log_model=True", "--logger-opt", "mlflow.tags={'team': 'vision'}",
       "--save-dir", str(run_dir), cwd=workdir)  # fmt: skip
    record = json.loads((run_dir / "mlflow.json").read_text())
    assert record["tracking_uri"] == f"sqlite:///{workdir / 'mlflow.db'}"  # the default, made absolute
    mlrun = client.get_run(record["run_id"])
    assert (mlrun.info.status, mlrun.info.run_name) == ("FINISHED", "sqlite-run")
    assert mlrun.data.tags["team"] == "vision" and mlrun.data.tags["xt.run_dir"] == str(run_dir)

    # the resolved configuration, flattened
    config, params = json.loads((run_dir / "config.json").read_text()), mlrun.data.params
    assert (params["model"], params["data"], params["optimizer"]) == (
        "mlp",
        "synthetic-classification",
        "adam",
    )
    assert (params["data.n_samples"], params["epochs"], params["monitor"]) == ("240", "2", "val/acc")
    assert float(params["optimizer.lr"]) == config["optimizer"]["resolved"]["lr"]
    assert json.loads(params["model.hidden"]) == config["model"]["resolved"]["hidden"]
    assert params["metrics.acc"] == "accuracy" and params["loggers"] == "mlflow,jsonl"
    assert int(params["parameters"]) > 0 and params["batch_size"] == "16"

    # metrics: the running values of every logging step and the exact values of every epoch, at their steps
    steps = jsonl_rows(run_dir, "step")
    assert steps_and_values(client, mlrun.info.run_id, "train/loss") == [
        (r["step"], r["train/loss"]) for r in steps
    ]
    epochs = jsonl_rows(run_dir, "epoch")
    history = json.loads((run_dir / "history.json").read_text())
    for key in ("val/acc", "val/loss", "train/loss", "test/acc", "lr"):
        got = steps_and_values(client, mlrun.info.run_id, f"epoch/{key}")
        assert got == [(r["step"], h[key]) for r, h in zip(epochs, history)], key

    # the run directory's files, byte for byte, and the best checkpoint's model in MLflow's format
    names = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"run.json", "history.json", "config.json", "notes.txt", "checkpoints", "model"} <= names
    for name in ("history.json", "config.json", "checkpoints/best.pt"):
        got = Path(client.download_artifacts(mlrun.info.run_id, name, str(tmp_path)))
        assert got.read_bytes() == (run_dir / name).read_bytes(), name
    import mlflow.pytorch

    from xt_training import load_model

    logged = mlflow.pytorch.load_model(client.download_artifacts(mlrun.info.run_id, "model", str(tmp_path)))
    x = torch.randn(7, 20)
    with torch.no_grad():
        torch.testing.assert_close(logged.eval()(x), load_model(run_dir)(x), rtol=0, atol=0)


def test_a_resumed_run_continues_the_same_mlflow_run(python, workdir, client):
    run_dir = workdir / "resumed-run"
    xt(python, "run", *BASE, "--epochs", "1", "--logger", "mlflow", "--save-dir", str(run_dir), cwd=workdir)
    first = json.loads((run_dir / "mlflow.json").read_text())["run_id"]
    assert client.get_run(first).info.status == "FINISHED"
    xt(python, "run", "--resume", str(run_dir), "--epochs", "3", "-q", cwd=workdir)
    assert json.loads((run_dir / "mlflow.json").read_text())["run_id"] == first
    mlrun = client.get_run(first)
    assert (
        mlrun.info.status == "FINISHED" and mlrun.data.params["epochs"] == "1"
    )  # MLflow keeps the first value
    history = json.loads((run_dir / "history.json").read_text())
    assert [v for _, v in steps_and_values(client, first, "epoch/val/acc")] == [h["val/acc"] for h in history]
    runs = client.search_runs([mlrun.info.experiment_id], f"tags.`xt.run_dir` = '{run_dir}'")
    assert [r.info.run_id for r in runs] == [first]


def test_xt_tune_trials_are_nested_runs_of_one_parent(python, workdir, client):
    study_dir = workdir / "study"
    xt(python, "tune", *BASE, "--epochs", "1", "--search", "lr=logfloat:1e-3:1e-1", "--trials", "2",
       "--study-dir", str(study_dir), "--logger", "mlflow", "--logger-opt", "mlflow.experiment=tuning",
       cwd=workdir)  # fmt: skip
    experiment = client.get_experiment_by_name("tuning")
    runs = client.search_runs([experiment.experiment_id])
    parents = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(runs) == 3 and len(parents) == 1
    parent = parents[0]
    assert parent.data.tags["xt.study_dir"] == str(study_dir) and parent.info.run_name == "study"
    assert json.loads((study_dir / "mlflow.json").read_text())["run_id"] == parent.info.run_id
    trials = sorted((r for r in runs if r is not parent), key=lambda r: r.info.run_name)
    assert [r.info.run_name for r in trials] == ["trial 0", "trial 1"]
    for n, trial in enumerate(trials):
        assert trial.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert trial.data.tags["xt.run_dir"] == str(study_dir / "trials" / str(n))
        assert trial.info.status == "FINISHED" and "epoch/val/acc" in trial.data.metrics


def test_an_unreachable_server_is_a_one_line_error_before_training(python, workdir):
    url = f"http://127.0.0.1:{free_port()}"
    out = xt(python, "run", *BASE, "--epochs", "1", "--logger", "mlflow", "--logger-opt", f"mlflow.tracking_uri={url}",
             "--save-dir", "unreachable", cwd=workdir, code=2)  # fmt: skip
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the MLflow tracking server {url} cannot be reached" in lines[0], out.stderr
    assert "mlflow server --host 127.0.0.1" in lines[0]
    assert not (workdir / "unreachable" / "history.json").exists()


@pytest.fixture
def server(tmp_path):
    """An ``mlflow server`` on a free port of 127.0.0.1 (SQLite store, artifacts served by it); killed after the test."""
    port, log = free_port(), tmp_path / "server.log"
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port", str(port), "--workers", "1",
             "--backend-store-uri", f"sqlite:///{tmp_path / 'server.db'}", "--artifacts-destination",
             str(tmp_path / "artifacts")],
            cwd=tmp_path, env=ENV, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: its workers die with it
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        import requests

        deadline = time.monotonic() + 240
        while True:
            try:
                if requests.get(f"{url}/health", timeout=5).ok:
                    break
            except requests.ConnectionError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
            time.sleep(0.5)
        yield proc, url
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)


def test_a_server_records_the_run_and_one_killed_mid_run_costs_only_the_logger(python, workdir, server):
    proc, url = server
    served = workdir / "served-run"
    xt(python, "run", *BASE, "--epochs", "2", "--logger", "mlflow", "--logger-opt", f"mlflow.tracking_uri={url}",
       "--logger-opt", "mlflow.experiment=served", "--save-dir", str(served), cwd=workdir)  # fmt: skip
    remote = MlflowClient(url)
    mlrun = remote.get_run(json.loads((served / "mlflow.json").read_text())["run_id"])
    history = json.loads((served / "history.json").read_text())
    assert mlrun.info.status == "FINISHED" and mlrun.data.params["model"] == "mlp"
    assert [v for _, v in steps_and_values(remote, mlrun.info.run_id, "epoch/val/acc")] == [
        h["val/acc"] for h in history
    ]
    assert mlrun.info.artifact_uri.startswith("mlflow-artifacts:")  # the files went through the server
    got = Path(remote.download_artifacts(mlrun.info.run_id, "history.json", str(workdir)))
    assert got.read_bytes() == (served / "history.json").read_bytes()

    # The run is stopped (SIGSTOP) as soon as its MLflow run exists, the server is killed, the run goes on.
    killed = workdir / "killed-run"
    args = ["run", *BASE, "--epochs", "3", "--logger", "mlflow", "--logger-opt", f"mlflow.tracking_uri={url}",
            "--logger-opt", "mlflow.flush_secs=0.1", "--save-dir", str(killed)]  # fmt: skip
    training = subprocess.Popen(
        [str(python), "-m", "xt_training", *args], cwd=workdir, env=RUN_ENV, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 300
    while not (killed / "mlflow.json").exists():
        assert training.poll() is None and time.monotonic() < deadline, training.communicate()
        time.sleep(0.01)
    training.send_signal(signal.SIGSTOP)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    training.send_signal(signal.SIGCONT)
    stdout, stderr = training.communicate(timeout=300)
    assert training.returncode == 0, stdout + stderr
    warnings = [line for line in stderr.splitlines() if line.startswith("warning:")]
    assert len(warnings) == 1 and warnings[0].startswith(WARNING), stderr
    assert "Traceback" not in stderr, stderr
    assert [h["epoch"] for h in json.loads((killed / "history.json").read_text())] == [1, 2, 3]
    assert all(
        (killed / name).is_file()
        for name in ("run.json", "config.json", "checkpoints/best.pt", "checkpoints/last.pt")
    )


def test_the_python_api_logs_a_model_the_run_cannot_rebuild_when_given_it(
    workdir, client, monkeypatch, tmp_path
):
    """In-process: ``MLflowLogger(model=...)`` for a model whose constructor's arguments a run cannot record."""
    monkeypatch.syspath_prepend(str(PLUGINS / "xt-mlflow"))
    monkeypatch.chdir(workdir)
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    from xt_mlflow.logger import MLflowLogger

    from xt_training.utils import functional as F

    torch.manual_seed(0)
    x, net = torch.randn(64, 4), nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
    loader = DataLoader(TensorDataset(x, (x[:, 0] > 0).long()), batch_size=16)
    run_dir = tmp_path / "api-run"
    logger = MLflowLogger(save_dir=run_dir, log_model=True, model=net, experiment="api")
    F.train(run_dir, loader, net, torch.optim.SGD(net.parameters(), lr=0.1), 2, nn.CrossEntropyLoss(),
            val_loader=loader, loggers=[logger], quiet=True)  # fmt: skip
    assert logger.tracking_uri == client.tracking_uri
    import mlflow.pytorch

    logged = mlflow.pytorch.load_model(client.download_artifacts(logger.run_id, "model", str(tmp_path)))
    best = torch.load(run_dir / "checkpoints" / "best.pt", weights_only=True)["model"]
    assert all(torch.equal(logged.state_dict()[k], v) for k, v in best.items())
    assert client.get_run(logger.run_id).data.params["model"] == "Sequential"
