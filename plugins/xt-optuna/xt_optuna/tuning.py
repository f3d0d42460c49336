"""``tune``: run the trials of a study, each an ordinary xt-training run in ``DIR/trials/<number>/``.

A trial is built and trained by :func:`xt_training.runs.train`, the function behind ``xt run``, from the
study's base run configuration with the trial's values applied (:func:`xt_optuna.space.apply`) and the
``optuna-pruning`` callback added. So its directory has what any run directory has -- ``config.json``,
``history.json``, ``checkpoints/``, the loggers' files -- and ``xt run --config DIR/trials/7/config.json``
trains trial 7 again. Besides, each trial directory gets ``trial.json`` (state, parameters, value or
error) and ``output.txt`` (what the run printed: trials run without console output).

A trial's value is the best value of the monitored quantity over its epochs, the one ``best.pt`` holds.
A trial that raises (a NaN loss raises ``NonFiniteLossError``) is told to Optuna as failed with its
one-line error, and the study goes on. Ctrl-C ends the running trial as failed ("interrupted") and
re-raises, so the command exits with 130; the trials done are kept.

Trials are asked from and told to Optuna one at a time (``study.ask``/``study.tell``), which keeps the
run, its directory and its record in step. ``jobs`` > 1 starts that many worker processes
(``python -m xt_optuna.worker``) on the same storage.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from xt_training.errors import ConfigError

from .pruning import NAME as PRUNING
from .pruning import reporting_to
from .space import SpaceFunction, apply, grid, parse_space
from .study import (
    TRIALS_DIR,
    is_study_dir,
    make_definition,
    open_storage,
    open_study,
    read_record,
    storage_url,
)

__all__ = ["tune", "work", "ensure_plugin", "TRIAL_FILE"]

TRIAL_FILE = "trial.json"
OUTPUT_FILE = "output.txt"
SAMPLERS = ("tpe", "random", "grid")
PRUNERS = ("median", "hyperband", "none")


def tune(
    config: Mapping[str, Any] | None = None,
    search: Mapping[str, str] | str | os.PathLike[str] | Callable[[Any], Mapping[str, Any]] | None = None,
    *,
    study_dir: str | os.PathLike[str] | None = None,
    trials: int = 10,
    pruner: str = "median",
    pruner_options: Mapping[str, Any] | None = None,
    sampler: str = "tpe",
    sampler_options: Mapping[str, Any] | None = None,
    sampler_seed: int | None = None,
    jobs: int = 1,
    timeout: float | None = None,
    storage: str | None = None,
    study_name: str | None = None,
    quiet: bool = False,
    plugins: Iterable[str] = (),
) -> Any:
    """Run ``trials`` trials of the study in ``study_dir``; return the ``optuna.Study``.

    Args:
        config: the base run configuration, as ``xt run`` saves it in ``config.json``
            (``{"model": "mlp", "data": {"name": ..., "options": {...}}, "epochs": 5, "monitor": "val/acc"}``;
            missing keys take ``xt run``'s defaults). ``monitor`` is the value to optimise (default
            ``val/loss``), ``mode`` its direction.
        search: ``{KEY: SPEC}`` (``{"lr": "logfloat:1e-4:1e-1"}``, see :mod:`xt_optuna.space`), a ``.py``
            file defining ``search_space(trial)``, or that function.
        study_dir: the study directory; default ``runs/tune-MODEL-DATA-TIME``. With neither ``config``
            nor ``search``, the study there continues as it was defined.
        trials: how many trials to run now (with ``jobs`` > 1: in all).
        pruner: ``'median'``, ``'hyperband'`` or ``'none'``; ``pruner_options`` go to its Optuna class.
        sampler: ``'tpe'``, ``'random'`` or ``'grid'`` (int and choice specs only); ``sampler_options``
            go to its Optuna class, ``sampler_seed`` makes its proposals repeatable (worker k: seed + k).
        jobs: worker processes on the same storage.
        timeout: start no trial after this many seconds.
        storage: an Optuna storage URL (``postgresql://...``, ``journal:PATH``); default
            ``sqlite:///STUDY_DIR/study.db``.
        study_name: default: the study directory's name.
        quiet: print nothing (else one line per trial, and the summary of ``xt show STUDY_DIR`` at the end).
        plugins: the ``xt -p`` values, for worker processes to load the same plugins.
    """
    import optuna

    from xt_training.rundir import default_save_dir

    _check_choice("sampler", sampler, SAMPLERS)
    _check_choice("pruner", pruner, PRUNERS)
    if isinstance(trials, bool) or not isinstance(trials, int) or trials < 1:
        raise ConfigError(f"trials must be a positive integer, not {trials!r}")
    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ConfigError(f"jobs must be a positive integer, not {jobs!r}")
    plugins = list(plugins)
    ensure_plugin(plugins)
    definition = None
    if config is not None or search is not None:
        if config is None or search is None:
            raise ConfigError(
                "a study needs both a base run configuration (--model, --data, ...) and a search space "
                "(--search KEY=SPEC or a search_space file)"
            )
        definition = make_definition(config, search)
        if jobs > 1 and "search_space" in definition and callable(search):
            SpaceFunction.load(search).check_importable()
    if study_dir is None:
        if definition is None:
            raise ConfigError("give the study directory to continue (--study-dir DIR)")
        parts = [definition["config"][kind]["name"] for kind in ("model", "data")]
        study_dir = default_save_dir("tune", *parts)
    study_dir = Path(study_dir).resolve()
    known = definition or (read_record(study_dir)["definition"] if is_study_dir(study_dir) else None)
    if known is not None:  # bad options (or a grid of floats): one error before anything is made
        _sampler(sampler, sampler_options, sampler_seed, known)
        _pruner(pruner, pruner_options, known)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study, record = open_study(study_dir, definition, storage, study_name)
    session = {
        "study_dir": str(study_dir),
        "storage": record["storage"],
        "study_name": record["study_name"],
        "session": uuid.uuid4().hex,
        "pruner": pruner,
        "pruner_options": dict(pruner_options or {}),
        "sampler": sampler,
        "sampler_options": dict(sampler_options or {}),
        "sampler_seed": sampler_seed,
        "deadline": None if timeout is None else time.time() + timeout,
        "quiet": quiet,
        "plugins": plugins,
    }
    if jobs == 1:
        work({**session, "trials": trials, "worker": 0})
    else:
        _spawn(session, [trials // jobs + (k < trials % jobs) for k in range(min(jobs, trials))])
    if not quiet:
        from .summary import show

        print("\n" + show(study_dir), flush=True)
    mine = [t for t in study.get_trials(deepcopy=False) if t.user_attrs.get("session") == session["session"]]
    if mine and all(t.state == optuna.trial.TrialState.FAIL for t in mine):
        first = min(mine, key=lambda t: t.number)
        raise ConfigError(
            f"all {len(mine)} trials failed; the first, trial {first.number}: {first.user_attrs.get('error')}"
        )
    return study


def _check_choice(what: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ConfigError(f"unknown {what} {value!r}; choose one of: {', '.join(choices)}")


def _construct(label: str, cls: Any, options: Mapping[str, Any] | None, **fixed: Any) -> Any:
    """``cls(**fixed, **options)``; an option the class does not take is a one-line error listing those it does."""
    import inspect

    options = dict(options or {})
    params = [p for p in inspect.signature(cls).parameters if p not in fixed]
    unknown = [k for k in options if k not in params]
    if unknown:
        raise ConfigError(f"{label} has no option {unknown[0]!r}; options: {', '.join(params) or 'none'}")
    try:
        return cls(**fixed, **options)
    except (TypeError, ValueError) as e:
        raise ConfigError(f"{label}: {e}") from None


def _sampler(
    name: str, options: Mapping[str, Any] | None, seed: int | None, definition: Mapping[str, Any]
) -> Any:
    from optuna import samplers

    if name == "grid":
        if "search" not in definition:
            raise ConfigError(
                "--sampler grid needs --search specs: a search_space(trial) function has no grid"
            )
        space = grid(parse_space(definition["search"]))
        return _construct("--sampler grid", _grid_sampler(), options, search_space=space, seed=seed)
    cls = samplers.TPESampler if name == "tpe" else samplers.RandomSampler
    return _construct(f"--sampler {name}", cls, options, seed=seed)


def _grid_sampler() -> type:
    """Optuna's GridSampler, except that the trial loop stops when the grid is done.

    GridSampler.after_trial calls ``study.stop()`` on the last grid point, which works only inside
    ``study.optimize``; :func:`work` asks and tells trials itself and checks ``is_exhausted`` before each.
    """
    from optuna.samplers import GridSampler

    class StudyGridSampler(GridSampler):
        def after_trial(self, study: Any, trial: Any, state: Any, values: Any) -> None:
            return None

    return StudyGridSampler


def _pruner(name: str, options: Mapping[str, Any] | None, definition: Mapping[str, Any]) -> Any:
    from optuna import pruners

    if name == "median":
        return _construct("--pruner median", pruners.MedianPruner, options)
    if name == "hyperband":
        epochs = definition["config"]["epochs"]
        searched = "epochs" in definition.get("search", {}) or "search_space" in definition
        fixed = {"min_resource": 1, "max_resource": "auto" if searched else epochs}
        return _construct("--pruner hyperband", pruners.HyperbandPruner, options, **fixed)
    return _construct("--pruner none", pruners.NopPruner, options)


def _spawn(session: dict[str, Any], shares: list[int]) -> None:
    """Run the trials in worker processes; Ctrl-C or SIGTERM here is passed on to them, once.

    The workers get a session of their own, so a Ctrl-C in the terminal reaches only this process, which
    forwards it: a trial is interrupted by one signal, not two.
    """
    procs = []
    for k, share in enumerate(shares):
        payload = json.dumps({**session, "trials": share, "worker": k})
        procs.append(
            subprocess.Popen([sys.executable, "-m", "xt_optuna.worker", payload], start_new_session=True)
        )

    def forward(signum: int) -> None:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signum)

    terminated: list[int] = []
    on_term = lambda signum, frame: (terminated.append(signum), forward(signum))  # noqa: E731
    previous = signal.signal(signal.SIGTERM, on_term) if _main_thread() else None
    try:
        codes = [proc.wait() for proc in procs]
    except KeyboardInterrupt:
        forward(signal.SIGINT)
        for proc in procs:
            proc.wait()
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    if terminated:
        raise SystemExit(128 + signal.SIGTERM)
    failed = [(k, code) for k, code in enumerate(codes) if code != 0]
    if failed:
        raise ConfigError(
            f"worker {failed[0][0]} exited with status {failed[0][1]}; its error is printed above"
        )


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


def ensure_plugin(plugins: Iterable[str]) -> None:
    """Load the registry with ``plugins`` and this plugin (which an import from a source tree lacks)."""
    from xt_training import registry

    if PRUNING not in registry.names("callback"):
        registry.load([*plugins, "xt_optuna.plugin"])


def work(session: Mapping[str, Any]) -> None:
    """Run ``session['trials']`` trials one after the other in this process (a worker, or ``jobs=1``)."""
    import optuna

    ensure_plugin(session["plugins"])
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study_dir = Path(session["study_dir"])
    storage = open_storage(storage_url(study_dir, session["storage"]))
    definition = optuna.load_study(study_name=session["study_name"], storage=storage).user_attrs["xt_tune"]
    seed = session["sampler_seed"]
    sampler = _sampler(
        session["sampler"],
        session["sampler_options"],
        None if seed is None else seed + session["worker"],
        definition,
    )
    study = optuna.load_study(
        study_name=session["study_name"],
        storage=storage,
        sampler=sampler,
        pruner=_pruner(session["pruner"], session["pruner_options"], definition),
    )
    suggest = _suggester(definition)
    for _ in range(session["trials"]):
        if session["deadline"] is not None and time.time() >= session["deadline"]:
            break
        if isinstance(sampler, optuna.samplers.GridSampler) and sampler.is_exhausted(study):
            break
        _run_trial(study, definition, suggest, study_dir, session)


def _suggester(definition: Mapping[str, Any]) -> Callable[[Any], dict[str, Any]]:
    """``trial -> {KEY: value}``: from the ``--search`` specs, or the ``search_space(trial)`` function."""
    if "search" in definition:
        space = parse_space(definition["search"])
        return lambda trial: {key: param.suggest(trial) for key, param in space.items()}
    return SpaceFunction.from_record(definition["search_space"])


def _run_trial(
    study: Any,
    definition: Mapping[str, Any],
    suggest: Callable[[Any], dict[str, Any]],
    study_dir: Path,
    session: Mapping[str, Any],
) -> None:
    """Ask Optuna for a trial, train it as a run in ``trials/<number>/`` and tell Optuna how it ended."""
    from optuna.trial import TrialState

    from xt_training import runs as xt_runs
    from xt_training.files import write_json

    started = time.monotonic()
    trial = study.ask()
    run_dir = study_dir / TRIALS_DIR / str(trial.number)
    trial.set_user_attr("session", session["session"])
    trial.set_user_attr("run_dir", str(run_dir))
    monitor, mode = definition["config"]["monitor"], definition["config"]["mode"]
    record: dict[str, Any] = {
        "study": study.study_name,
        "trial": trial.number,
        "state": "running",
        "params": {},
    }
    made = False  # whether this trial made its directory (one that existed is another trial's)

    def finish(state: str, **facts: Any) -> None:
        record.update(state=state, seconds=round(time.monotonic() - started, 3), **facts)
        if made:
            write_json(run_dir / TRIAL_FILE, record)
        if not session["quiet"]:
            print(_line(record, monitor), flush=True)

    try:
        run_dir.mkdir(parents=True, exist_ok=False)  # never over another trial's directory
        made = True
        write_json(run_dir / TRIAL_FILE, record)
        values = suggest(trial)
        record["params"] = values
        config = apply(definition["config"], values)
        if not any(c["name"] == PRUNING for c in config["callbacks"]):
            config["callbacks"] = [*config["callbacks"], {"name": PRUNING, "options": {}}]
        with reporting_to(trial) as reporting, _output_to(run_dir / OUTPUT_FILE):
            _, history = xt_runs.train(config, run_dir, quiet=True)
        value = _best(history, monitor, mode)
    except KeyboardInterrupt:
        _fail(study, trial, "interrupted (Ctrl-C)")
        finish("interrupted", error="interrupted (Ctrl-C)")
        raise
    except SystemExit:  # F.train leaves this way on SIGTERM (preemption)
        _fail(study, trial, "stopped by SIGTERM")
        finish("interrupted", error="stopped by SIGTERM")
        raise
    except Exception as e:
        error = _one_line(e)
        _fail(study, trial, error)
        finish("failed", error=error)
        return
    if reporting.pruned_at is not None:
        study.tell(trial, state=TrialState.PRUNED)
        finish("pruned", pruned_at_epoch=reporting.pruned_at, value=_last(history, monitor))
    else:
        study.tell(trial, value)
        # (rows with a "step" are validations within an epoch: val_every_n_steps)
        finish("complete", value=value, epochs=sum("step" not in row for row in history))


def _fail(study: Any, trial: Any, error: str) -> None:
    from optuna.trial import TrialState

    trial.set_user_attr("error", error)
    study.tell(trial, state=TrialState.FAIL)


@contextlib.contextmanager
def _output_to(path: Path) -> Any:
    """What the run prints (a crash notice, early stopping) goes to its directory, not between the trial lines."""
    with open(path, "a", encoding="utf-8") as f, contextlib.redirect_stdout(f):
        yield


def _best(history: list[dict[str, Any]], monitor: str, mode: str) -> float:
    values = [row[monitor] for row in history if _finite(row.get(monitor))]
    if not values:
        raise ConfigError(f"{monitor} is not a finite number in any epoch; the run learned nothing usable")
    return float(max(values) if mode == "max" else min(values))


def _last(history: list[dict[str, Any]], monitor: str) -> float | None:
    values = [row[monitor] for row in history if _finite(row.get(monitor))]
    return float(values[-1]) if values else None


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _one_line(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


def _line(record: Mapping[str, Any], monitor: str) -> str:
    """``trial 3 complete  val/acc 0.8125  lr=0.0123 model.hidden=48  (2.1 s)``"""
    parts = [f"trial {record['trial']} {record['state']}"]
    if record["state"] == "pruned":
        parts[0] += f" at epoch {record['pruned_at_epoch']}"
    if record.get("value") is not None:
        parts.append(f"{monitor} {record['value']:.4g}")
    params = " ".join(
        f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record["params"].items()
    )
    if params:
        parts.append(params)
    if record.get("error"):
        parts.append(record["error"])
    return "  ".join(parts) + f"  ({record['seconds']:.2f} s)"
