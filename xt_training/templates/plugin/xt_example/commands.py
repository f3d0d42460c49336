"""The command ``xt example-best RUN_DIR``: a click command, added to ``xt`` by ``register_commands``."""

from __future__ import annotations

import json
from pathlib import Path

import click


@click.command("example-best")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def best_command(run_dir: str) -> None:
    """Print the best epoch of the run in RUN_DIR and its monitored value."""
    # run.json holds the run's facts (the monitored value and its direction), history.json a row per epoch
    run_file, history_file = Path(run_dir) / "run.json", Path(run_dir) / "history.json"
    if not (run_file.exists() and history_file.exists()):
        raise click.UsageError(
            f"{run_dir} holds no run.json and history.json: give a run directory of `xt run`"
        )
    run, history = json.loads(run_file.read_text()), json.loads(history_file.read_text())
    monitor = run["monitor"]
    pick = max if run["mode"] == "max" else min
    rows = [row for row in history if row.get(monitor) is not None]
    if not rows:
        raise click.UsageError(f"{run_dir}: no epoch has a value of {monitor}")
    best = pick(rows, key=lambda row: row[monitor])
    click.echo(f"best epoch {best['epoch']}: {monitor} = {best[monitor]:.4f}")
