"""The callback ``example-stop-at``: a plain object with some of the callback methods."""

from __future__ import annotations

from typing import Any


class StopAt:
    """Stop training after the epoch whose monitored value reaches ``value`` (by the run's mode).

    Args:
        value: the target; with the run's mode ``'min'`` (a loss) the run stops at or below it, with
            ``'max'`` at or above.
    """

    def __init__(self, value: float):
        self.value = value
        self.stopped_at: int | None = None  # saved with the checkpoint: a resumed run remembers it

    def on_epoch_end(self, run: Any, row: dict[str, Any]) -> None:
        current = row.get(run.monitor)
        if current is None:
            return
        if (current <= self.value) if run.mode == "min" else (current >= self.value):
            self.stopped_at = run.epoch
            run.should_stop = True
            print(f"example-stop-at: {run.monitor} = {current:.4f} reached {self.value} at epoch {run.epoch}")

    def state_dict(self) -> dict[str, Any]:
        return {"stopped_at": self.stopped_at}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.stopped_at = state["stopped_at"]
