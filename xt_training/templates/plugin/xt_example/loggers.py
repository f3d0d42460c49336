"""The logger ``example-text``: every method of the logger contract is optional; this one uses three."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any


class TextLogger:
    """Appends one line per epoch to ``save_dir/example.log``: ``epoch 3 step 60 train/loss=0.1234 ...``.

    Args:
        save_dir: the run directory (the CLI passes it).
        digits: decimals written per value.
    """

    def __init__(self, *, save_dir: str | os.PathLike[str], digits: int = 4):
        self.path = Path(save_dir) / "example.log"
        self.digits = digits

    def start_run(self, config: dict[str, Any]) -> None:
        if not config.get("resumed"):
            self.path.write_text("")  # a new run starts a new file; a resumed one appends

    def end_epoch(self, epoch: int, values: dict[str, Any], step: int) -> None:
        # the epoch's row of the history: scalars (not confusion matrices), the epoch number aside
        numbers = {k: v for k, v in values.items() if isinstance(v, (int, float)) and k != "epoch"}
        fields = " ".join(f"{k}={v:.{self.digits}f}" for k, v in numbers.items())
        with self.path.open("a") as f:
            f.write(f"epoch {epoch} step {step} {fields}\n")

    def end_run(self, status: str) -> None:
        with self.path.open("a") as f:
            f.write(f"run {status}\n")
