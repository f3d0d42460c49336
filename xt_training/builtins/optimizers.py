"""Built-in optimizers: torch's, under lower-case names (plugin module, ``register_optimizers``)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl

OPTIMIZERS = {
    "sgd": ("SGD", "stochastic gradient descent (momentum, nesterov)"),
    "adam": ("Adam", "Adam"),
    "adamw": ("AdamW", "Adam with decoupled weight decay"),
    "rmsprop": ("RMSprop", "RMSprop"),
    "adagrad": ("Adagrad", "Adagrad"),
    "adadelta": ("Adadelta", "Adadelta"),
    "adamax": ("Adamax", "Adamax (Adam with the infinity norm)"),
    "nadam": ("NAdam", "Adam with Nesterov momentum"),
    "radam": ("RAdam", "rectified Adam"),
}


@hookimpl
def register_optimizers(register: Any) -> None:
    for name, (cls, description) in OPTIMIZERS.items():
        register(name, f"torch.optim:{cls}", description=f"{description} (torch.optim.{cls})")
