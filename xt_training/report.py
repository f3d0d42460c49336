"""Run summaries: ``show`` prints a run's configuration and per-epoch metrics, ``plot`` draws its curves.

Both read only the files a run directory holds -- ``config.json`` (written by ``xt run``; optional)
and ``history.json`` (written by ``F.train`` after every epoch: a list of rows such as
``{'epoch': 1, 'lr': 0.1, 'train/loss': 0.69, 'val/acc': 0.81}``) -- so they work on a finished run,
a run still in progress and a killed one alike. Neither imports torch (``xt show`` starts fast);
``plot`` needs matplotlib, the optional extra ``pip install matplotlib``.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .loggers.console import format_value, is_scalar
from .rundir import CONFIG_FILE, HISTORY_FILE, RUN_FILE

__all__ = ["show", "plot"]


def show(run_dir: str | os.PathLike[str]) -> str:
    """The run's configuration (``config.json``; else what ``run.json`` recorded) and its per-epoch metrics."""
    run = _run_dir(run_dir)
    history = _history(run)
    parts = [f"run {run}"]
    config_path = run / CONFIG_FILE
    if config_path.exists():
        config = _read_json(config_path)
        parts.append(f"\nconfiguration ({CONFIG_FILE}):\n" + "\n".join(_config_lines(config, "  ")))
    elif (run / RUN_FILE).exists():  # a run of F.train or xt train: what it recorded of itself
        record = _read_json(run / RUN_FILE)
        shown = {
            k: record.get(k) for k in ("model", "loss", "input", "normalization", "monitor", "mode", "epochs")
        }
        parts.append(f"\nrun ({RUN_FILE}):\n" + "\n".join(_config_lines(shown, "  ")))
    epochs = f"{len(history)} epoch" + ("" if len(history) == 1 else "s")
    parts.append(f"\nhistory ({HISTORY_FILE}, {epochs}):")
    parts.append(_history_table(history) if history else "  no completed epoch yet")
    skipped = [k for k in dict.fromkeys(k for row in history for k in row) if _non_scalar(history, k)]
    if skipped:
        parts.append(f"not shown (not numbers; see {HISTORY_FILE}): {', '.join(skipped)}")
    return "\n".join(parts)


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
        raise ConfigError(
            f"cannot write '{path}' ({e.strerror or e}); choose another output path (-o FILE)"
        ) from None
    except ValueError as e:  # matplotlib: "Format 'txt' is not supported (supported formats: ...)"
        raise ConfigError(f"cannot plot to '{path}': {e}; end -o with .png, .svg or .pdf") from None
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
