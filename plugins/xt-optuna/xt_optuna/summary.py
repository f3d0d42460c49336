"""``xt show STUDY_DIR`` and ``xt plot STUDY_DIR``: the best trials, the counts, and two plots.

Both read the study from its storage (named in ``study.json``), so they work while trials still run,
from any process, on any machine that reaches the storage. Neither imports torch; ``plot`` needs
matplotlib (``pip install matplotlib``).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any

from xt_training.errors import ConfigError

from .study import mask, open_storage, read_record, storage_url

__all__ = ["show", "plot"]


def _load(study_dir: Path) -> tuple[dict[str, Any], Any]:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    record = read_record(study_dir)
    url = storage_url(study_dir, record["storage"])
    try:
        study = optuna.load_study(study_name=record["study_name"], storage=open_storage(url))
    except KeyError:
        raise ConfigError(
            f"storage {mask(url)} has no study {record['study_name']!r}; was it deleted?"
        ) from None
    return record, study


def _format(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def show(study_dir: str | os.PathLike[str], top: int = 10) -> str:
    """The study's definition, its trial counts, its best trial and a table of the ``top`` complete trials."""
    from optuna.trial import TrialState

    study_dir = Path(study_dir)
    record, study = _load(study_dir)
    definition = record["definition"]
    monitor, mode = definition["config"]["monitor"], definition["config"]["mode"]
    if "search" in definition:
        space = "  ".join(f"{k}={v}" for k, v in definition["search"].items())
    else:
        source = definition["search_space"]
        space = f"search_space(trial) of {source.get('file') or source['object']}"
    trials = study.get_trials(deepcopy=False)
    counts = {state: sum(t.state == state for t in trials) for state in TrialState}
    lines = [
        f"study {record['study_name']!r} in {study_dir} (storage {mask(storage_url(study_dir, record['storage']))})",
        f"  monitor: {monitor} ({mode})",
        f"  search:  {space}",
        f"trials: {len(trials)} ({counts[TrialState.COMPLETE]} complete, {counts[TrialState.PRUNED]} pruned, "
        f"{counts[TrialState.FAIL]} failed, {counts[TrialState.RUNNING]} running)",
    ]
    complete = sorted(
        (t for t in trials if t.state == TrialState.COMPLETE), key=lambda t: t.value, reverse=mode == "max"
    )
    if not complete:
        lines.append("best: no complete trial yet")
    else:
        best = complete[0]
        run_dir = best.user_attrs.get("run_dir", "?")
        lines.append(f"best: trial {best.number}, {monitor} {_format(best.value)}, in {run_dir}")
        lines.append(f"  train it again: xt run --config {Path(run_dir) / 'config.json'}")
        shown = complete[:top]
        keys = list(dict.fromkeys(k for t in shown for k in t.params))
        columns = ["trial", monitor, *keys]
        rows = [
            [str(t.number), _format(t.value), *(_format(t.params.get(k, "")) for k in keys)] for t in shown
        ]
        widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(columns)]
        lines.append(f"\nbest {len(shown)} of {len(complete)} complete trials:")
        lines.append("  " + "  ".join(c.rjust(w) for c, w in zip(columns, widths)))
        lines += ["  " + "  ".join(v.rjust(w) for v, w in zip(r, widths)) for r in rows]
    failed = [t for t in trials if t.state == TrialState.FAIL]
    if failed:
        lines.append(f"\nfailed trials{' (the last 5)' if len(failed) > 5 else ''}:")
        lines += [
            f"  trial {t.number}: {t.user_attrs.get('error', 'no error recorded')}" for t in failed[-5:]
        ]
    return "\n".join(lines)


def plot(study_dir: str | os.PathLike[str], out: str | os.PathLike[str] | None = None) -> list[Path]:
    """Draw the optimisation history and the parameter importances into PNGs; return their paths.

    Default paths ``STUDY_DIR/history.png`` and ``STUDY_DIR/importances.png``; with ``out`` (``x.png``):
    ``x-history.png`` and ``x-importances.png``. The importances need two complete trials; until then
    only the history is drawn.
    """
    from optuna.trial import TrialState

    try:
        from matplotlib.figure import Figure
        from matplotlib.ticker import MaxNLocator
    except ImportError:
        raise ConfigError(
            "plotting needs matplotlib, which is not installed: pip install matplotlib"
        ) from None
    study_dir = Path(study_dir)
    record, study = _load(study_dir)
    monitor, mode = record["definition"]["config"]["monitor"], record["definition"]["config"]["mode"]
    trials = study.get_trials(deepcopy=False)
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    if not complete:
        raise ConfigError(
            f"study {record['study_name']!r} has no complete trial yet; plot once one has finished"
        )
    if out is None:
        paths = [study_dir / "history.png", study_dir / "importances.png"]
    else:
        out = Path(out)
        paths = [
            out.with_name(f"{out.stem}-{name}{out.suffix or '.png'}") for name in ("history", "importances")
        ]
    paths[0].parent.mkdir(parents=True, exist_ok=True)

    fig = Figure(figsize=(7, 4), layout="constrained")
    ax = fig.add_subplot()
    ax.scatter([t.number for t in complete], [t.value for t in complete], s=18, label="complete")
    pruned = [t for t in trials if t.state == TrialState.PRUNED and t.intermediate_values]
    if pruned:
        last = [t.intermediate_values[max(t.intermediate_values)] for t in pruned]
        ax.scatter(
            [t.number for t in pruned], last, s=18, marker="x", color="grey", label="pruned (last epoch)"
        )
    best, numbers, bests = -math.inf if mode == "max" else math.inf, [], []
    for t in complete:
        best = max(best, t.value) if mode == "max" else min(best, t.value)
        numbers.append(t.number)
        bests.append(best)
    ax.step(numbers, bests, where="post", color="C3", label="best so far")
    ax.set_xlabel("trial")
    ax.set_ylabel(monitor)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_title(f"{record['study_name']}: {monitor} ({mode})")
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")
    fig.savefig(paths[0], dpi=100)

    importances = _importances(study, complete)
    if importances is None:
        return paths[:1]
    fig = Figure(figsize=(7, 1.2 + 0.4 * len(importances)), layout="constrained")
    ax = fig.add_subplot()
    names = list(importances)[::-1]
    ax.barh(names, [importances[n] for n in names])
    ax.set_xlabel("importance (share of the variation of the value)")
    ax.set_title(f"{record['study_name']}: parameter importances for {monitor}")
    fig.savefig(paths[1], dpi=100)
    return paths


def _importances(study: Any, complete: list[Any]) -> dict[str, float] | None:
    """Optuna's parameter importances (its default evaluator), or None with a note when there are too few trials."""
    import warnings

    import optuna

    if len(complete) < 2 or not any(t.params for t in complete):
        print(
            "importances need 2 complete trials with parameters; only the history is drawn", file=sys.stderr
        )
        return None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            return optuna.importance.get_param_importances(study)
        except (RuntimeError, ValueError) as e:
            print(f"importances not drawn: {e}", file=sys.stderr)
            return None
