"""Built-in models (plugin module: registers through ``register_models``; the classes are in ``nets``)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl

_NETS = "xt_training.builtins.nets"


@hookimpl
def register_models(register: Any) -> None:
    register("mlp", f"{_NETS}:MLP", description="multi-layer perceptron on flattened inputs")
    register(
        "cnn", f"{_NETS}:CNN", description="the seed's CVModel generalised: conv-pool blocks + FC layers"
    )
    register("rnn", f"{_NETS}:RNNClassifier", description="sequence classifier: RNN, LSTM or GRU (cell=...)")
