"""The MLflow logger: an xt-training run recorded as an MLflow run.

What it records, with the names of the history (the TensorBoard logger uses the same):

- **parameters**: the resolved configuration, flattened to ``a.b`` keys: for ``xt run`` its ``config.json``
  (``model``, ``model.hidden``, ``optimizer``, ``optimizer.lr``, ``epochs``, ...), and what the loop knows
  (``parameters``: the model's size, ``batch_size``, ``monitor``). Values are JSON text.
- **metrics**: ``train/loss``, ``train/METRIC``: running values of the training pass at logging steps;
  ``epoch/LOADER/loss``, ``epoch/LOADER/METRIC``, ``epoch/lr``: each epoch's exact values at its last step.
  Every step is an optimizer step, so all charts share one x-axis.
- **tags**: ``xt.run_dir`` (the run directory), ``xt.version``, and those given (``tags=``).
- **at the end**: the run directory's files as artifacts (``run.json``, ``history.json``, ``config.json`` or
  ``config.py``, ``notes.txt``, ``checkpoints/best.pt``); with ``log_model=True`` the model with the best
  checkpoint's weights in MLflow's format (artifact ``model``: ``mlflow.pytorch.load_model('runs:/ID/model')``);
  the status: FINISHED, FAILED, or KILLED for an interrupted (resumable) run.

**Speed.** At a logging step the loop only appends the values to a queue. A thread of the logger makes the
MLflow run, then sends what is queued in one request every ``flush_secs`` and when a checkpoint is written,
so the store's latency never reaches the loop. At the end of the run the thread sends what is queued, the
files and the status, and the loop waits for it (at most ``close_timeout``).

**Resume.** The MLflow run's id is kept in ``RUN_DIR/mlflow.json``; a resumed run (``xt run --resume``,
``F.train(..., resume=True)``) continues that MLflow run when it logs to the same store. MLflow cannot change
or delete what was logged: the steps that the interrupted run logged after its last checkpoint are logged
again, and a parameter the resume changed (``epochs``) keeps its first value.

**xt tune.** Each trial (``STUDY_DIR/trials/N/`` of xt-optuna) is a nested run of one parent run per study
directory, recorded in ``STUDY_DIR/mlflow.json``; the parent's status and end time follow the last trial that ended.

**Failures.** A store that fails while the run trains (a server gone) fails the logger's next call from the
loop, which reports it once and drops the logger (:mod:`xt_training.loggers`): the run goes on. How long the
sending thread keeps trying first is MLflow's: ``MLFLOW_HTTP_REQUEST_MAX_RETRIES`` and
``MLFLOW_HTTP_REQUEST_TIMEOUT``.
"""

from __future__ import annotations

import collections
import copy
import inspect
import json
import os
import re
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from xt_training import __version__ as xt_version
from xt_training.errors import ConfigError, first_line
from xt_training.files import temporary_beside, write_json
from xt_training.loggers.console import is_scalar
from xt_training.rundir import BEST, CHECKPOINTS, CONFIG_FILE, CONFIG_PY, HISTORY_FILE, NOTES_FILE, RUN_FILE

__all__ = ["MLflowLogger", "DEFAULT_TRACKING_URI", "RECORD"]

DEFAULT_TRACKING_URI = "sqlite:///mlflow.db"  # embedded, under the working directory: no server to run
RECORD = "mlflow.json"  # in a run directory: its MLflow run; in a study directory: the trials' parent run
STATUS = {"completed": "FINISHED", "stopped": "FINISHED", "failed": "FAILED", "interrupted": "KILLED"}
_BAD_CHARACTER = re.compile(r"[^/\w.\- ]")  # what MLflow refuses in a metric or parameter name
_NOT_PARAMETERS = ("format", "xt_training_version", "created")  # config.json's bookkeeping
_MAX_PARAMS, _MAX_METRICS, _MAX_VALUE = 100, 1000, 6000  # MLflow's limits per request and per value


class MLflowLogger:
    """Records the run in MLflow; see the module docstring for what and how.

    Args:
        save_dir: the run directory (required; the CLI passes it).
        tracking_uri: where to record: ``sqlite:///PATH``, a server's ``http(s)://HOST:PORT``, or any MLflow
            tracking URI. Default: ``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db`` in the working directory.
        experiment: the experiment's name, created when missing. Default: ``MLFLOW_EXPERIMENT_NAME``, else
            MLflow's ``Default``.
        run_name: default: the run directory's name (``trial N`` for a trial of ``xt tune``).
        tags: more tags of the run, ``{'team': 'vision'}``.
        log_artifacts: send the run directory's files at the end of the run.
        log_checkpoint: with them, ``checkpoints/best.pt`` (which may be large).
        log_model: send the model with the best checkpoint's weights in MLflow's format at the end of a
            completed run. The model is rebuilt like ``xt_training.load_model(RUN)`` does, or is a copy of
            ``model`` when given.
        model: the trained model, for ``log_model`` where ``load_model`` cannot rebuild it.
        flush_secs: how often the queued values are sent (also at every checkpoint and at the end).
        close_timeout: how long the end of the run waits for the store to take the queued values, the
            files and the status (a checkpoint of gigabytes on a slow link may need more, or ``log_checkpoint=False``).
    """

    def __init__(
        self,
        *,
        save_dir: str | os.PathLike[str] | None = None,
        tracking_uri: str | None = None,
        experiment: str | None = None,
        run_name: str | None = None,
        tags: dict[str, str] | None = None,
        log_artifacts: bool = True,
        log_checkpoint: bool = True,
        log_model: bool = False,
        model: Any = None,
        flush_secs: float = 5.0,
        close_timeout: float = 600.0,
    ):
        if save_dir is None:
            raise ConfigError(
                "MLflowLogger needs save_dir, the run directory: MLflowLogger(save_dir='runs/exp1')"
            )
        for name, value in (("flush_secs", flush_secs), ("close_timeout", close_timeout)):
            if not is_scalar(value) or value <= 0:
                raise ConfigError(f"{name} must be a positive number of seconds, not {value!r}")
        # imported here (~2 s), when the logger is made: the plugin module itself imports no MLflow
        from mlflow.tracking import MlflowClient

        self.save_dir = Path(save_dir)
        self.tracking_uri = _absolute(
            tracking_uri or os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI
        )
        _check_reachable(self.tracking_uri)
        self.client = MlflowClient(self.tracking_uri)
        self.experiment_id = self._experiment(
            experiment or os.environ.get("MLFLOW_EXPERIMENT_NAME") or "Default"
        )
        self.run_name = run_name
        self.tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self.log_artifacts, self.log_checkpoint, self.log_model = log_artifacts, log_checkpoint, log_model
        self.model = model
        self.flush_secs, self.close_timeout = float(flush_secs), float(close_timeout)
        self.run_id: str | None = None
        self.parent_id: str | None = None  # the study's run, for a trial of xt tune
        # the loop appends, the sender thread pops (deque's append and popleft are thread-safe)
        self._queue: collections.deque[tuple[Any, ...]] = collections.deque()
        self._wake = threading.Event()
        self._stopping = False
        self._thread: threading.Thread | None = None
        self._error: Exception | None = None  # the sender's failure, raised at the loop's next call
        self._status: str | None = None  # how the run ended, once end_run is called

    def _experiment(self, name: str) -> str:
        """The id of experiment ``name``, created when missing (by this or, at the same moment, another process)."""
        try:
            found = self.client.get_experiment_by_name(name)
            if found is None:
                try:
                    return self.client.create_experiment(name)
                except Exception:  # created meanwhile by another trial's process
                    found = self.client.get_experiment_by_name(name)
                    if found is None:
                        raise
        except Exception as e:
            raise ConfigError(
                f"the MLflow tracking store {self.tracking_uri} failed ({type(e).__name__}: {first_line(e)}); "
                "check tracking_uri= (or MLFLOW_TRACKING_URI)"
            ) from None
        if found.lifecycle_stage == "deleted":
            raise ConfigError(
                f"the MLflow experiment {name!r} is deleted in {self.tracking_uri}; restore it "
                f"(mlflow experiments restore --experiment-id {found.experiment_id}) or pass another experiment="
            )
        return found.experiment_id

    # --- the logger contract ------------------------------------------------------------------------

    def start_run(self, config: dict[str, Any]) -> None:
        """Start the sender thread; it makes the MLflow run first, so the loop does not wait for the store."""
        self._thread = threading.Thread(
            target=self._send_loop, args=(dict(config),), name="xt-mlflow", daemon=True
        )
        self._thread.start()

    def _open(self, config: dict[str, Any]) -> None:
        """Make the MLflow run, or continue the one a resumed run records; its parameters go first."""
        params = _params(config, self.save_dir)
        run_id = self._previous_run() if config.get("resumed") else None
        if run_id is not None:  # continue it: MLflow parameters cannot change, only new ones are logged
            self.client.update_run(run_id, status="RUNNING")
            logged = self.client.get_run(run_id).data.params
            params = {k: v for k, v in params.items() if k not in logged}
        else:
            tags = {"xt.run_dir": str(self.save_dir.resolve()), "xt.version": xt_version, **self.tags}
            name = self.run_name or self.save_dir.resolve().name
            trial = _trial(self.save_dir)
            if trial is not None:
                study_dir, study_name = trial
                self.parent_id = self._parent(study_dir, study_name)
                name = self.run_name or f"trial {self.save_dir.name}"
                if self.parent_id is not None:
                    tags["mlflow.parentRunId"] = self.parent_id
            run_id = self.client.create_run(self.experiment_id, tags=tags, run_name=name).info.run_id
            write_json(self.save_dir / RECORD, self._record(run_id))
        self.run_id = run_id
        self._queue.appendleft(("params", params))  # before the values the loop queued meanwhile

    def log_metrics(self, values: dict[str, Any], step: int) -> None:
        self._check()
        # kept as it is: the loop makes a new dict at each logging step
        self._queue.append(("metrics", values, step, int(time.time() * 1000)))

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        self._check()
        values = {f"epoch/{k}": v for k, v in values.items() if k != "epoch"}
        self._queue.append(("metrics", values, step, int(time.time() * 1000)))

    def flush(self) -> None:
        """Before a checkpoint: wake the sender (the loop does not wait for it)."""
        self._check()
        self._wake.set()

    def end_run(self, status: str) -> None:
        """The sender thread sends what is queued, the files and the status; wait for it (``close_timeout``)."""
        self._status = status
        self._stop()
        self._check()

    def close(self) -> None:
        self._stop()
        self._check()

    # --- sending ------------------------------------------------------------------------------------

    def _send_loop(self, config: dict[str, Any]) -> None:
        """The sender thread: the MLflow run (:meth:`_open`), then what is queued, every ``flush_secs`` or when
        woken; at the stop, after the last values, the end of the run (:meth:`_finish`). It ends at the first
        failure, kept for :meth:`_check`."""
        try:
            self._open(config)
            while True:
                self._wake.wait(self.flush_secs)
                self._wake.clear()
                stopping = self._stopping  # read before sending: what is queued before the stop is sent
                self._send()
                if stopping:
                    break
            if self._status is not None:
                self._finish(self._status)
        except Exception as e:
            self._error = e

    def _finish(self, status: str) -> None:
        """The run's files (and model), then its status: set even when sending the files failed (then raised)."""
        failed = None
        try:
            if self.log_artifacts:
                for path, folder in self._files():
                    self.client.log_artifact(self.run_id, str(path), folder)
            if self.log_model and status in ("completed", "stopped"):
                self._send_model()
        except Exception as e:
            failed = e
        self.client.set_terminated(self.run_id, STATUS.get(status, "FINISHED"))
        if self.parent_id is not None:
            self.client.set_terminated(self.parent_id, "FINISHED")
        if failed is not None:
            raise failed

    def _send(self) -> None:
        from mlflow.entities import Metric, Param

        params, metrics = [], []
        while self._queue:
            kind, *item = self._queue.popleft()
            if kind == "params":
                params += [Param(k, v) for k, v in item[0].items()]
            else:
                values, step, ms = item
                metrics += [Metric(_name(k), float(v), ms, step) for k, v in values.items() if is_scalar(v)]
        for i in range(0, len(params), _MAX_PARAMS):
            self.client.log_batch(self.run_id, params=params[i : i + _MAX_PARAMS])
        for i in range(0, len(metrics), _MAX_METRICS):
            self.client.log_batch(self.run_id, metrics=metrics[i : i + _MAX_METRICS])

    def _check(self) -> None:
        """Raise the sender's failure in the loop's thread, where the logger group reports it and drops the logger."""
        if self._error is not None:
            raise self._error

    def _stop(self) -> None:
        """Send what is queued and end the sender thread."""
        thread, self._thread = self._thread, None
        if thread is None:
            return
        self._stopping = True
        self._wake.set()
        thread.join(self.close_timeout)
        if thread.is_alive():  # a daemon: it does not keep the process alive
            raise TimeoutError(
                f"the MLflow tracking store {self.tracking_uri} took more than close_timeout={self.close_timeout:g} s "
                "to take the run's last values and files; what it has not taken is lost"
            )

    def _files(self) -> Iterator[tuple[Path, str | None]]:
        """The run directory's files to send, each with its artifact folder."""
        for name in (RUN_FILE, HISTORY_FILE, CONFIG_FILE, CONFIG_PY, NOTES_FILE):
            if (self.save_dir / name).is_file():
                yield self.save_dir / name, None
        best = self.save_dir / CHECKPOINTS / BEST
        if self.log_checkpoint and best.is_file():
            yield best, CHECKPOINTS

    def _send_model(self) -> None:
        import mlflow.pytorch

        from xt_training import load_model

        given = (
            copy.deepcopy(self.model) if self.model is not None else None
        )  # the caller's model stays as it is
        try:
            model = load_model(self.save_dir, "best", model=given)
        except ConfigError as e:  # a model whose constructor's arguments the run could not record
            if given is not None:
                raise
            raise ConfigError(
                f"log_model=True cannot rebuild the model of {self.save_dir} ({first_line(e)}); give the logger "
                "the model: MLflowLogger(..., log_model=True, model=model)"
            ) from None
        # MLflow 3's default format, 'pt2' (torch.export), needs an example input and a model that exports;
        # the pickled module (MLflow 2's only format) takes any model whose class can be imported
        pickle = {"serialization_format": "pickle"}
        if "serialization_format" not in inspect.signature(mlflow.pytorch.save_model).parameters:
            pickle = {}
        with tempfile.TemporaryDirectory() as tmp:
            mlflow.pytorch.save_model(model, os.path.join(tmp, "model"), **pickle)
            self.client.log_artifacts(self.run_id, os.path.join(tmp, "model"), "model")

    # --- where a run continues, and the parent of trials --------------------------------------------

    def _record(self, run_id: str) -> dict[str, str]:
        return {"run_id": run_id, "tracking_uri": self.tracking_uri, "experiment_id": self.experiment_id}

    def _recorded(self, path: Path) -> str | None:
        """The run id recorded in ``path`` for this store and experiment, if any."""
        try:
            record = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        if not isinstance(record, dict) or record.get("tracking_uri") != self.tracking_uri:
            return None
        return record.get("run_id") if record.get("experiment_id") == self.experiment_id else None

    def _previous_run(self) -> str | None:
        """The MLflow run a resumed run continues: the one its directory records, if the store still has it."""
        run_id = self._recorded(self.save_dir / RECORD)
        if run_id is None:
            return None
        try:
            run = self.client.get_run(run_id)
        except Exception:  # deleted for good
            return None
        return run_id if run.info.lifecycle_stage == "active" else None

    def _parent(self, study_dir: Path, study_name: str | None) -> str | None:
        """The study's parent run, made by the first trial to get here; None if the study records one elsewhere."""
        path = study_dir / RECORD
        if path.exists():
            return self._recorded(path)
        tags = {"xt.study_dir": str(study_dir.resolve()), "xt.version": xt_version, **self.tags}
        run_id = self.client.create_run(
            self.experiment_id, tags=tags, run_name=study_name or study_dir.resolve().name
        ).info.run_id
        fd, tmp = temporary_beside(path)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(self._record(run_id), f)
        try:
            os.link(tmp, path)  # fails when another trial's process recorded its parent first
        except FileExistsError:
            self.client.delete_run(run_id)
            return self._recorded(path)
        finally:
            tmp.unlink()
        return run_id


def _absolute(uri: str) -> str:
    """A relative ``sqlite:///PATH`` made absolute: a resumed run and the sender thread find the same file."""
    prefix = "sqlite:///"
    if uri.startswith(prefix) and not uri.startswith(prefix + "/") and uri != prefix + ":memory:":
        return prefix + os.path.abspath(uri[len(prefix) :])
    return uri


def _check_reachable(uri: str) -> None:
    """A server's URI must answer before the run starts (MLflow's client would retry for minutes)."""
    if not uri.startswith(("http://", "https://")):
        return
    import requests

    try:
        requests.get(uri.rstrip("/") + "/health", timeout=10)
    except requests.RequestException as e:
        raise ConfigError(
            f"the MLflow tracking server {uri} cannot be reached ({type(e).__name__}); start it "
            "(mlflow server --host 127.0.0.1 --port 5000) or correct tracking_uri= (or MLFLOW_TRACKING_URI)"
        ) from None


def _trial(save_dir: Path) -> tuple[Path, str | None] | None:
    """``(study directory, study name)`` when ``save_dir`` is a trial of ``xt tune`` (xt-optuna's
    ``STUDY_DIR/trials/N/`` holding ``trial.json``, in a directory whose ``study.json`` says so)."""
    study_dir = save_dir.parent.parent
    if save_dir.parent.name != "trials" or not (save_dir / "trial.json").is_file():
        return None
    try:
        record = json.loads((study_dir / "study.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict) or record.get("kind") != "xt-optuna study":
        return None
    return study_dir, record.get("study_name")


def _params(config: dict[str, Any], save_dir: Path) -> dict[str, str]:
    """The run's parameters: what the loop knows (``config`` of ``start_run``) and, over it, the resolved
    configuration in ``config.json`` (where its value is not None: ``monitor`` is the loop's once resolved)."""
    flat = _flatten({k: v for k, v in config.items() if k not in ("save_dir", "resumed")})
    try:
        saved = json.loads((save_dir / CONFIG_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        saved = None
    if isinstance(saved, dict):
        for key, value in _flatten(_resolved(saved)).items():
            if value is not None or key not in flat:
                flat[key] = value
    return {
        _name(k)[:250]: (v if isinstance(v, str) else json.dumps(v))[:_MAX_VALUE] for k, v in flat.items()
    }


def _resolved(value: Any) -> Any:
    """``config.json``'s content with each component (``{name, options, resolved, source}``) as its name
    (key ``''``) and its resolved options, and lists of components (loggers, callbacks) as their names."""
    if isinstance(value, dict):
        if {"name", "resolved"} <= value.keys():
            return {"": value["name"], **value["resolved"]}
        return {k: _resolved(v) for k, v in value.items() if k not in _NOT_PARAMETERS}
    if isinstance(value, list) and value and all(isinstance(v, dict) and "name" in v for v in value):
        return ",".join(v["name"] for v in value)
    return value


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as ``a.b`` keys; key ``''`` is the value of its prefix itself."""
    if not isinstance(value, dict):
        return {prefix: value}
    flat: dict[str, Any] = {}
    for key, item in value.items():
        flat.update(_flatten(item, f"{prefix}.{key}" if prefix and key else prefix or key))
    return flat


def _name(key: str) -> str:
    return _BAD_CHARACTER.sub("_", key)
