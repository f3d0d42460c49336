"""Built-in losses: torch's loss modules under kebab-case names (plugin module, ``register_losses``)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl

#: what a model trained with the loss outputs (``predicts``): ``xt predict`` turns it into classes and
#: probabilities; a plugin's loss declares it the same way
PREDICTS = {
    "cross-entropy": "logits",
    "nll": "log-probabilities",
    "bce-with-logits": "binary-logits",
    "bce": "binary-probabilities",
}
LOSSES = {
    "cross-entropy": (
        "CrossEntropyLoss",
        "cross entropy of class logits and class indices (or probabilities)",
    ),
    "nll": ("NLLLoss", "negative log-likelihood of log-probabilities"),
    "bce-with-logits": ("BCEWithLogitsLoss", "binary cross entropy of logits and 0/1 targets"),
    "bce": ("BCELoss", "binary cross entropy of probabilities and 0/1 targets"),
    "mse": ("MSELoss", "mean squared error"),
    "l1": ("L1Loss", "mean absolute error"),
    "smooth-l1": ("SmoothL1Loss", "L1 for large errors, squared below beta"),
    "huber": ("HuberLoss", "squared for small errors, linear above delta"),
    "kl-div": ("KLDivLoss", "Kullback-Leibler divergence of log-probabilities"),
}


@hookimpl
def register_losses(register: Any) -> None:
    for name, (cls, description) in LOSSES.items():
        predicts = {"predicts": PREDICTS[name]} if name in PREDICTS else {}
        register(name, f"torch.nn:{cls}", description=f"{description} (torch.nn.{cls})", **predicts)
