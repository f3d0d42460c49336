"""Run summaries: ``summary``/``show`` say how a run went, ``runs``/``compare`` put runs side by side,
``plot`` draws a run's curves.

They read only the files a run directory holds -- ``run.json`` (what the run is, its monitored value
and how it ended), ``config.json`` (written by ``xt run``; optional) and ``history.json`` (written by
``F.train`` after every epoch: a list of rows such as ``{'epoch': 1, 'lr': 0.1, 'train/loss': 0.69,
'val/acc': 0.81}``) -- so they work on a finished run, a run still in progress and a killed one alike.
None imports torch (``xt show`` and ``xt runs`` start fast); ``plot`` needs matplotlib, ``pip install matplotlib``.
"""

from __future__ import annotations

import datetime
import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .loggers.console import format_duration, format_value, is_scalar
from .rundir import (
    BEST,
    CHECKPOINTS,
    CONFIG_FILE,
    HISTORY_FILE,
    LAST,
    RUN_FILE,
    direction,
    is_run_dir,
    kept_checkpoints,
)

__all__ = ["summary", "show", "find_runs", "runs", "RUNS_COLUMNS", "runs_table", "compare", "plot"]

#: what a run of F.train or `xt train` recorded of itself in run.json, shown as its configuration
_RECORDED = ("model", "loss", "input", "normalization", "monitor", "mode", "epochs")


def summary(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """How a run went, from its files: ``xt show --json`` and each row of ``xt runs --json``.

    ``{'run', 'status', 'epochs', 'epochs_planned', 'monitor', 'mode', 'best': {'epoch', 'value'} | None,
    'best_values' (the history row of the best value), 'checkpoints': {'best', 'last'} (paths, None when
    missing), 'kept_checkpoints' (the paths of the others), 'created', 'ended', 'seconds', 'history',
    'configuration'}``. ``best`` of a validation inside an epoch (``val_every_n_steps``) has its
    ``'step'`` too; ``epochs`` counts the completed epochs, not those validations.
    ``status`` is what ``run.json`` recorded (``'running'`` until the run ends, then ``'completed'``,
    ``'stopped'``, ``'failed'`` or ``'interrupted'``; a killed run stays ``'running'``), None for a run
    written before run.json said it. ``configuration`` is ``config.json``, else what ``run.json`` recorded.
    """
    run = _run_dir(run_dir)
    history = _history(run) if (run / HISTORY_FILE).exists() else []
    record = _read_json(run / RUN_FILE) if (run / RUN_FILE).exists() else {}
    config = _read_json(run / CONFIG_FILE) if (run / CONFIG_FILE).exists() else None
    if not isinstance(record, dict) or not isinstance(config, (dict, type(None))):
        raise ConfigError(f"'{run}' holds a {RUN_FILE} or {CONFIG_FILE} that is not a JSON object; rerun")
    monitor = record.get("monitor") or (config or {}).get("monitor")
    if monitor is None:  # F.train's default
        monitor = "val/loss" if any("val/loss" in row for row in history) else "train/loss"
    # the run's own record of which way the value improves; a name alone says it only for a loss
    mode = (
        record.get("mode")
        or (config or {}).get("mode")
        or (record.get("directions") or {}).get(monitor)
        or direction(monitor, {})
    )
    best, best_row = None, None
    for row in history if mode is not None else ():
        value = row.get(monitor)
        if is_scalar(value) and not math.isnan(value):
            if best is None or (value < best["value"] if mode == "min" else value > best["value"]):
                # a validation inside an epoch (val_every_n_steps) is at a step of it
                best, best_row = {"epoch": row["epoch"], "value": value}, row
                if "step" in row:
                    best["step"] = row["step"]
    checkpoints = {name: run / CHECKPOINTS / file for name, file in (("best", BEST), ("last", LAST))}
    if config is None:  # a run of F.train or xt train: what it recorded of itself
        config = {k: record[k] for k in _RECORDED if k in record}
    created = (config or {}).get("created") or record.get("created")  # config.json's: the run's first start
    ended = record.get("ended")
    return {
        "run": str(run),
        "status": record.get("status"),
        "epochs": sum("step" not in row for row in history),
        "epochs_planned": record.get("epochs") or (config or {}).get("epochs"),
        "monitor": monitor,
        "mode": mode,
        "best": best,
        "best_values": best_row,
        "checkpoints": {k: str(path) if path.is_file() else None for k, path in checkpoints.items()},
        "kept_checkpoints": [str(path) for path in kept_checkpoints(run)],
        "created": created,
        "ended": ended,
        "seconds": _seconds(created, ended),
        "history": history,
        "configuration": config,
    }


def _seconds(start: str | None, end: str | None) -> float | None:
    """Seconds from ``start`` to ``end`` (timestamps as run.json writes them); None when either is unknown."""
    start_time, end_time = _time(start), _time(end)
    return None if start_time is None or end_time is None else (end_time - start_time).total_seconds()


def _time(timestamp: str | None) -> datetime.datetime | None:
    try:
        return datetime.datetime.strptime(timestamp or "", "%Y-%m-%dT%H:%M:%S%z")
    except ValueError:
        return None


def show(run_dir: str | os.PathLike[str]) -> str:
    """The run's result first (status, best epoch and value, checkpoints), then its per-epoch metrics, then
    its configuration (``config.json``; else what ``run.json`` recorded)."""
    run = _run_dir(run_dir)
    _history(run)  # no history.json: not a run directory, or no completed epoch yet
    info = summary(run)
    history = info["history"]
    parts = [f"run {run}  ({_status(info)})"]
    best = info["best"]
    if best is not None:
        at = f"epoch {best['epoch']}" + (f", step {best['step']}" if "step" in best else "")
        parts.append(f"best: {info['monitor']} {format_value(best['value'])} ({info['mode']}) at {at}")
    else:
        parts.append(f"best: none ({info['monitor']} has no value yet)")
    checkpoints = [f"{name} {path}" for name, path in info["checkpoints"].items() if path]
    parts.append(f"checkpoints: {', '.join(checkpoints) or 'none'}")
    if info["kept_checkpoints"]:
        parts.append(f"kept: {', '.join(Path(path).name for path in info['kept_checkpoints'])}")
    epochs = f"{info['epochs']} epoch" + ("" if info["epochs"] == 1 else "s")
    within = len(history) - info["epochs"]  # validations inside epochs (val_every_n_steps)
    epochs += f" and {within} validation{'s' if within != 1 else ''} inside them" if within else ""
    parts.append(f"\nhistory ({HISTORY_FILE}, {epochs}):")
    parts.append(_history_table(history) if history else "  no completed epoch yet")
    skipped = [k for k in dict.fromkeys(k for row in history for k in row) if _non_scalar(history, k)]
    if skipped:
        parts.append(f"not shown (not numbers; see {HISTORY_FILE}): {', '.join(skipped)}")
    if info["configuration"]:
        source = f"configuration ({CONFIG_FILE})" if (run / CONFIG_FILE).exists() else f"run ({RUN_FILE})"
        parts.append(f"\n{source}:\n" + "\n".join(_config_lines(info["configuration"], "  ")))
    return "\n".join(parts)


def _status(info: dict[str, Any]) -> str:
    """``'completed, 3 of 3 epochs, started 2025-01-31 12:00, 1:02'``."""
    planned = f" of {info['epochs_planned']}" if info["epochs_planned"] else ""
    words = [info["status"] or "status not recorded", f"{info['epochs']}{planned} epochs"]
    if info["created"]:
        words.append(f"started {_when(info['created'])}")
    if info["seconds"] is not None:
        words.append(f"took {_duration(info['seconds'])}")
    return ", ".join(words)


def _duration(seconds: float | None) -> str:
    """A duration measured between whole-second timestamps: ``'12 s'``, ``'1:02'``, ``'-'`` when unknown."""
    if seconds is None:
        return "-"
    return f"{seconds:.0f} s" if seconds < 60 else format_duration(seconds)


def _when(timestamp: str | None) -> str:
    """``'2025-01-31T12:00:05+0100'`` -> ``'2025-01-31 12:00'``."""
    return timestamp[:16].replace("T", " ") if timestamp else "-"


# --- many runs: xt runs ---------------------------------------------------------------------------------------
#: the columns of ``xt runs``, each a key for ``--sort``
RUNS_COLUMNS = ("run", "status", "epochs", "monitor", "best", "at", "started", "time")


def find_runs(path: str | os.PathLike[str]) -> list[Path]:
    """The run directories at or under ``path`` (a run directory is not searched further), in name order."""
    path = Path(path)
    if not path.is_dir():
        raise ConfigError(f"'{path}' is not a directory; pass a run directory or a directory that holds runs")
    if is_run_dir(path):
        return [path]
    return [run for child in sorted(path.iterdir()) if child.is_dir() for run in find_runs(child)]


def runs(paths: list[str | os.PathLike[str]], sort: str = "best") -> list[dict[str, Any]]:
    """The :func:`summary` of every run at or under ``paths``, sorted by a column of :data:`RUNS_COLUMNS`.

    ``best`` puts the best value first in each run's direction (runs grouped by their monitored value);
    ``started`` and ``time`` put the latest and the longest first; a run that lacks the value goes last.
    """
    if sort not in RUNS_COLUMNS:
        raise ConfigError(f"cannot sort by {sort!r}; columns: {', '.join(RUNS_COLUMNS)}")
    found = list(dict.fromkeys(run for path in paths for run in find_runs(path)))
    summaries = [summary(run) for run in found]

    def key(info: dict[str, Any]) -> tuple[Any, ...]:
        best = info["best"]
        value = {
            "run": info["run"],
            "status": info["status"],
            "epochs": info["epochs"],
            "monitor": info["monitor"],
            "best": None
            if best is None
            else (info["monitor"], best["value"] * (1 if info["mode"] == "min" else -1)),
            "at": None if best is None else best["epoch"],
            "started": None if _time(info["created"]) is None else -_time(info["created"]).timestamp(),
            "time": None if info["seconds"] is None else -info["seconds"],
        }[sort]
        return (value is None, value if value is not None else 0)

    return sorted(summaries, key=key)


def runs_table(summaries: list[dict[str, Any]]) -> str:
    """``xt runs``: one line per run, the columns of :data:`RUNS_COLUMNS`."""
    rows = [
        [
            info["run"],
            info["status"] or "-",
            f"{info['epochs']}/{info['epochs_planned']}" if info["epochs_planned"] else str(info["epochs"]),
            info["monitor"],
            "-" if info["best"] is None else format_value(info["best"]["value"]),
            "-" if info["best"] is None else str(info["best"]["epoch"]),
            _when(info["created"]),
            _duration(info["seconds"]),
        ]
        for info in summaries
    ]
    return _table(list(RUNS_COLUMNS), rows, left=(0, 1, 3, 6))


def compare(summaries: list[dict[str, Any]]) -> str:
    """Runs side by side, one column each: their results, their values at the best epoch, and the
    configuration entries in which they differ."""
    names = [info["run"] for info in summaries]
    rows = [
        ["status", *(info["status"] or "-" for info in summaries)],
        ["epochs", *(str(info["epochs"]) for info in summaries)],
        ["monitor", *(info["monitor"] for info in summaries)],
        ["best", *("-" if i["best"] is None else format_value(i["best"]["value"]) for i in summaries)],
        ["best epoch", *("-" if i["best"] is None else str(i["best"]["epoch"]) for i in summaries)],
        ["time", *(_duration(i["seconds"]) for i in summaries)],
    ]
    at_best = [info["best_values"] or {} for info in summaries]
    keys = dict.fromkeys(k for values in at_best for k, v in values.items() if "/" in k and is_scalar(v))
    if keys:
        rows.append(["at the best epoch:"])
        rows += [[f"  {k}", *(format_value(values.get(k)) for values in at_best)] for k in keys]
    configs = [_comparable(info["configuration"]) for info in summaries]
    differ = [
        k
        for k in dict.fromkeys(k for config in configs for k in config)
        if k not in ("created", "xt_training_version") and len({json.dumps(c.get(k)) for c in configs}) > 1
    ]
    rows.append(["configuration:" + ("" if differ else " the same")])
    rows += [[f"  {k}", *(_cell(config.get(k, "-")) for config in configs)] for k in differ]
    return _table(["", *names], rows, left=(0,))


def _comparable(config: Any) -> dict[str, Any]:
    """The configuration flattened; a component's options as given are left out where it has its resolved
    ones (config.json), which include them."""
    flat = _flat(config)
    return {
        k: v
        for k, v in flat.items()
        if ".options." not in k or k.replace(".options.", ".resolved.", 1) not in flat
    }


def _flat(config: Any, prefix: str = "") -> dict[str, Any]:
    """``{'model': {'name': 'mlp'}}`` -> ``{'model.name': 'mlp'}``."""
    if not isinstance(config, dict) or not config:
        return {prefix: config} if prefix else {}
    return {
        k: v
        for key, item in config.items()
        for k, v in _flat(item, f"{prefix}.{key}" if prefix else key).items()
    }


def _cell(value: Any) -> str:
    if isinstance(value, str):
        return value
    return format_value(value) if isinstance(value, float) else json.dumps(value)


def _table(header: list[str], rows: list[list[str]], left: tuple[int, ...]) -> str:
    """Aligned columns: those in ``left`` left-aligned, the others (numbers) right-aligned; a row of one
    cell is a heading across the table."""
    cells = [header, *rows]
    widths = [max(len(row[i]) for row in cells if len(row) > 1 and i < len(row)) for i in range(len(header))]
    lines = []
    for row in cells:
        if len(row) == 1:
            lines.append(row[0])
            continue
        lines.append(
            "  ".join(
                c.ljust(w) if i in left else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))
            ).rstrip()
        )
    return "\n".join(lines)


def plot(run_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> Path:
    """Draw the loss and metric curves per loader into a PNG; returns its path (default ``run_dir/curves.png``).

    One panel per metric (``loss`` first) with one line per loader (``train``, ``val``, ``test``,
    ``test.NAME``) against the epoch, and a panel for the learning rate when it changed.
    """
    run = _run_dir(run_dir)
    history = _history(run)
    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ConfigError(
            "plotting needs matplotlib, which is not installed: pip install matplotlib"
        ) from None
    if not history:
        raise ConfigError(f"{run / HISTORY_FILE} has no completed epoch yet; plot once an epoch has finished")

    history = [row for row in history if "step" not in row]  # validations inside epochs have no place on it
    panels: dict[str, dict[str, tuple[list[float], list[float]]]] = {}
    for row in history:
        for key, value in row.items():
            loader, _, metric = key.partition("/")
            if metric and (is_scalar(value) or value is None):
                epochs, values = panels.setdefault(metric, {}).setdefault(loader, ([], []))
                epochs.append(row["epoch"])
                values.append(math.nan if value is None else value)
    names = sorted(panels, key=lambda m: m != "loss")  # loss first, then the metrics in history order
    lrs = [row.get("lr") for row in history]
    if all(is_scalar(lr) for lr in lrs) and len(set(lrs)) > 1:
        names.append("lr")
        panels["lr"] = {"lr": ([row["epoch"] for row in history], lrs)}
    if not names:
        raise ConfigError(f"{run / HISTORY_FILE} holds no 'loader/metric' numbers to plot")

    cols = min(3, len(names))
    rows = math.ceil(len(names) / cols)
    fig = Figure(figsize=(4.5 * cols, 3.2 * rows), layout="constrained")
    fig.suptitle(str(run))
    for i, name in enumerate(names):
        ax = fig.add_subplot(rows, cols, i + 1)
        for loader, (epochs, values) in panels[name].items():
            ax.plot(epochs, values, marker="o", markersize=3, label=loader)
        ax.set_title(name)
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if name != "lr":
            ax.legend(fontsize="small")
        elif min(lrs) > 0:
            ax.set_yscale("log")  # schedules mostly scale the lr by factors
    path = Path(out) if out is not None else run / "curves.png"
    if not path.suffix:  # matplotlib would append its default format's suffix: return the file it writes
        path = path.with_name(path.name + ".png")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
    except OSError as e:
        raise ConfigError(f"cannot write '{path}' ({e.strerror or e}); choose another output path") from None
    except ValueError as e:  # matplotlib: "Format 'txt' is not supported (supported formats: ...)"
        raise ConfigError(
            f"cannot plot to '{path}': {e}; give an output path ending in .png, .svg or .pdf"
        ) from None
    return path


def _run_dir(run_dir: str | os.PathLike[str]) -> Path:
    path = Path(run_dir)
    if not path.is_dir():
        raise ConfigError(
            f"run directory '{path}' does not exist; pass the save_dir of a run (e.g. runs/exp1)"
        )
    return path


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"cannot read {path}: {e}; is it a file that xt-training wrote?") from None


def _history(run: Path) -> list[dict[str, Any]]:
    path = run / HISTORY_FILE
    if not path.exists():
        raise ConfigError(
            f"'{run}' has no {HISTORY_FILE}: not a run directory, or the run has not finished an epoch yet"
        )
    history = _read_json(path)
    if not isinstance(history, list) or not all(isinstance(row, dict) and "epoch" in row for row in history):
        raise ConfigError(f"{path} is not a list of epoch rows; is it a file that F.train wrote?")
    return history


def _config_lines(value: Any, indent: str) -> list[str]:
    """A JSON configuration as indented ``key: value`` lines, nested dicts as nested blocks."""
    if not isinstance(value, dict):
        return [f"{indent}{json.dumps(value)}"]
    lines = []
    for key, item in value.items():
        if isinstance(item, dict) and item:
            lines.append(f"{indent}{key}:")
            lines.extend(_config_lines(item, indent + "  "))
        else:
            lines.append(f"{indent}{key}: {item if isinstance(item, str) else json.dumps(item)}")
    return lines


def _non_scalar(history: list[dict[str, Any]], key: str) -> bool:
    return any(key in row and not (is_scalar(row[key]) or row[key] is None) for row in history)


def _history_table(history: list[dict[str, Any]]) -> str:
    columns = [k for k in dict.fromkeys(k for row in history for k in row) if not _non_scalar(history, k)]
    cells = [[format_value(row.get(c)) for c in columns] for row in history]
    widths = [max(len(c), *(len(r[i]) for r in cells)) for i, c in enumerate(columns)]
    lines = ["  ".join(c.rjust(w) for c, w in zip(columns, widths))]
    lines += ["  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in cells]
    return "\n".join(lines)
