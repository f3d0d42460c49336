"""The plugin module named by the entry point: registers the ``mlflow`` logger without importing MLflow."""

from __future__ import annotations

from typing import Any

from xt_training.hookspecs import hookimpl


@hookimpl
def register_loggers(register: Any) -> None:
    register(
        "mlflow",
        "xt_mlflow.logger:MLflowLogger",
        description="MLflow tracking: parameters, metrics, the run's files; sqlite:///mlflow.db or a server",
    )
