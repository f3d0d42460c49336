"""torchvision's classification models, randomly initialised: nothing is ever downloaded."""

from __future__ import annotations

from typing import Any

from xt_training.errors import ConfigError

# Auxiliary classifiers make these models return tuples while training; a plain loss needs logits.
_NO_AUX = {"googlenet", "inception_v3"}


def torchvision_model(
    name: str, *, num_classes: int = 1000, weights: str | None = None, **options: Any
) -> Any:
    """``torchvision.models.get_model(name, weights=None, num_classes=..., **options)``."""
    if weights is not None:
        raise ConfigError(
            f"xt-vision builds {name} with random weights: pretrained weights ({weights!r}) would have to be "
            "downloaded, which it never does; drop weights=, then load your own with "
            "xt_training.load_checkpoint(path, model)"
        )
    import torchvision.models

    if name in _NO_AUX:
        options.setdefault("aux_logits", False)
        options.setdefault("init_weights", True)
    try:
        return torchvision.models.get_model(name, weights=None, num_classes=num_classes, **options)
    except TypeError as e:  # an option the builder does not take
        raise ConfigError(f"torchvision model {name!r} rejected the options {sorted(options)}: {e}") from None
