"""torchvision's detection models, randomly initialised: the model computes its loss dict while training.

Use them with xt-training's ``synthetic-detection`` data (or any data in torchvision's detection format),
whose ``forward_fn`` hands the targets to the model in training mode, and the ``detection`` loss.
"""

from __future__ import annotations

from typing import Any

from xt_training.errors import ConfigError

#: registered name -> torchvision builder
DETECTION_MODELS = {
    "fasterrcnn-mobilenet": "fasterrcnn_mobilenet_v3_large_320_fpn",
    "fasterrcnn-mobilenet-hires": "fasterrcnn_mobilenet_v3_large_fpn",
}


def detection_model(
    builder: str,
    *,
    num_classes: int = 91,
    image_size: int | None = None,
    weights: str | None = None,
    weights_backbone: str | None = None,
    **options: Any,
) -> Any:
    """``torchvision.models.detection.<builder>(weights=None, weights_backbone=None, num_classes=...)``.

    ``num_classes`` counts the background (class 0). ``image_size`` (given by the data) makes the model
    resize images to that size instead of its default (320 or 800 pixels), which is what small synthetic
    images need on a CPU; ``min_size``/``max_size`` options override it.
    """
    if weights is not None or weights_backbone is not None:
        raise ConfigError(
            f"xt-vision builds the detection model {builder} with random weights only; drop weights= and "
            "weights_backbone=, then load your own with xt_training.load_checkpoint(path, model)"
        )
    import torchvision.models.detection

    if image_size is not None:
        options = {"min_size": image_size, "max_size": image_size, **options}
    try:
        return getattr(torchvision.models.detection, builder)(
            weights=None, weights_backbone=None, num_classes=num_classes, **options
        )
    except TypeError as e:  # an option the builder does not take
        raise ConfigError(
            f"torchvision model {builder!r} rejected the options {sorted(options)}: {e}"
        ) from None
