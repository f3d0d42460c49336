"""The plugin module named by the entry point: registers names without importing torch or torchvision.

torchvision's model names come from :func:`model_names`, which reads them from torchvision's source
files (the functions decorated with ``@register_model()``) -- importing torchvision to ask
``torchvision.models.list_models()`` would cost ``xt list`` a second or more.
"""

from __future__ import annotations

import functools
import importlib.util
import re
from pathlib import Path
from typing import Any

from xt_training.hookspecs import hookimpl

_REGISTERED = re.compile(r"@register_model\([^)]*\)\s*\n(?:\s*@.*\n)*\s*def (\w+)\(")


@functools.cache
def model_names() -> list[str]:
    """torchvision's classification model names, as ``torchvision.models.list_models(module=torchvision.models)``."""
    spec = importlib.util.find_spec("torchvision")
    names: list[str] = []
    if spec is not None and spec.submodule_search_locations:
        models_dir = Path(next(iter(spec.submodule_search_locations))) / "models"
        for file in sorted(models_dir.glob("*.py")):  # top-level modules only: the classification models
            names += _REGISTERED.findall(file.read_text(encoding="utf-8"))
    if not names:  # an unusual install (zipped, compiled): ask torchvision itself
        import torchvision.models

        names = torchvision.models.list_models(module=torchvision.models)
    return sorted(names)


@hookimpl
def register_models(register: Any) -> None:
    from .detection import DETECTION_MODELS, detection_model
    from .models import torchvision_model, weights_preprocessing

    for name in model_names():
        register(
            name,
            functools.partial(torchvision_model, name),
            description=f"torchvision {name}; weights=DEFAULT: pretrained (default: random)",
            # a pretrained model's images are prepared as its weights' were
            preprocessing=functools.partial(weights_preprocessing, name),
        )
    for name, builder in DETECTION_MODELS.items():
        register(
            name,
            functools.partial(detection_model, builder),
            description=f"torchvision {builder} detection model, randomly initialised",
            task="detection",
        )


@hookimpl
def register_data(register: Any) -> None:
    register(
        "fake-images",
        "xt_vision.data:fake_images",
        description="torchvision FakeData: random images and labels (not learnable; for smoke tests)",
    )
    register(
        "augmented-image-folder",
        "xt_vision.data:augmented_image_folder",
        description="images in class folders with a training augmentation preset (preset=...)",
    )
