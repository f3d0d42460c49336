"""Built-in data sets (plugin module: registers through ``register_data``; the code is in ``datasets``)."""

from __future__ import annotations

from typing import Any

from ..hookspecs import hookimpl

_DATASETS = "xt_training.builtins.datasets"


@hookimpl
def register_data(register: Any) -> None:
    register(
        "synthetic-classification",
        f"{_DATASETS}:synthetic_classification",
        description="tabular rows, label = argmax of a noisy linear map (seeded)",
    )
    register(
        "synthetic-images",
        f"{_DATASETS}:synthetic_images",
        description="3x32x32 images of 10 classes: smooth class patterns + noise (seeded)",
    )
    register(
        "synthetic-sequences",
        f"{_DATASETS}:synthetic_sequences",
        description="sequences with a class pattern in a random window (seeded)",
    )
    register(
        "csv",
        f"{_DATASETS}:csv_table",
        description="a CSV file: feature columns (numbers, or text one-hot) and a label (classes or a number)",
    )
    register(
        "image-folder",
        f"{_DATASETS}:image_folder",
        description="images in class folders (torchvision ImageFolder), resized and normalised",
    )
