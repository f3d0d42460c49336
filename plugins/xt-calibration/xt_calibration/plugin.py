"""The plugin module named by the entry point: registers the metrics without importing torch."""

from __future__ import annotations

from typing import Any

from xt_training.hookspecs import hookimpl


@hookimpl
def register_metrics(register: Any) -> None:
    register(
        "ece",
        "xt_calibration.metrics:ExpectedCalibrationError",
        description="expected calibration error: |accuracy - confidence| over confidence bins",
    )
    register(
        "brier",
        "xt_calibration.metrics:BrierScore",
        description="Brier score: mean squared error of the predicted probabilities",
    )
