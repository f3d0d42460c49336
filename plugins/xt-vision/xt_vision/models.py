"""torchvision's classification models: randomly initialised, or with torchvision's pretrained weights.

Pretrained weights are loaded by torchvision itself, which downloads them once into torch's cache
(``$TORCH_HOME/hub/checkpoints/``) and reads them from there afterwards.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from xt_training.errors import ConfigError, first_line

# Auxiliary classifiers make these models return tuples while training; a plain loss needs logits.
_NO_AUX = {"googlenet", "inception_v3"}


def torchvision_model(
    name: str,
    *,
    num_classes: int = 1000,
    weights: str | None = None,
    freeze: bool = False,
    from_checkpoint: bool = False,
    **options: Any,
) -> Any:
    """``torchvision.models.get_model(name, weights=weights, **options)`` with ``num_classes`` outputs.

    Args:
        num_classes: the number of classes (the CLI takes it from the data).
        weights: None (random initialisation), ``'DEFAULT'`` or the name of one of the model's weights
            (``'IMAGENET1K_V1'``): torchvision loads them, downloading them once into
            ``$TORCH_HOME/hub/checkpoints/``. When they classify other than ``num_classes`` classes, the
            classifier (the last layer) is replaced by a new one, which is said on stderr.
        freeze: train only the classifier: every other parameter gets ``requires_grad=False``
            (BatchNorm statistics still follow the data in training mode). Needs ``weights``.
        from_checkpoint: the model gets a run's checkpoint next (the CLI says so): built as with
            ``weights``, but their file is not read.
        options: other options of the torchvision builder (``dropout=0.2``).
    """
    if weights is None:
        if freeze:
            raise ConfigError(
                f"freeze=True trains only the classifier of a pretrained {name}; add weights=DEFAULT (or a "
                "weights name), or drop freeze"
            )
        if name in _NO_AUX:
            options.setdefault("aux_logits", False)
            options.setdefault("init_weights", True)
        return _build(name, {"weights": None, "num_classes": num_classes, **options})
    found = pretrained_weights(name, weights)
    categories = len(found.meta["categories"])
    if from_checkpoint:  # the builder's options that the weights set, without reading the weights
        model = _build(name, {"weights": None, **_set_by_weights(name, found), **options})
    else:
        model = _load(name, found, options)
    path, head = _classifier(model, categories, name)
    if num_classes != categories:
        head = _new_head(head, num_classes)
        parent, _, attr = path.rpartition(".")
        setattr(model.get_submodule(parent), attr, head)
        if not from_checkpoint:
            print(
                f"xt-vision: {name}'s weights {found} classify {categories} classes, the data {num_classes}: "
                f"its classifier '{path}' is replaced by a new {head}",
                file=sys.stderr,
            )
    if freeze:
        model.requires_grad_(False)
        head.requires_grad_(True)
    return model


def pretrained_weights(name: str, weights: str) -> Any:
    """The torchvision weights enum member that ``weights`` (``'DEFAULT'``, ``'IMAGENET1K_V1'``) names."""
    import torchvision.models

    enum = torchvision.models.get_model_weights(name)
    try:
        return enum.verify(weights)
    except (KeyError, TypeError):
        names = ", ".join(["DEFAULT", *(w.name for w in enum)])
        raise ConfigError(
            f"torchvision model {name!r} has no weights {weights!r}; its weights: {names}"
        ) from None


def weights_preprocessing(name: str, *, weights: str | None = None, **_: Any) -> dict[str, Any] | None:
    """How the images of ``weights`` were prepared (``weights.transforms()``): resize, crop, interpolation,
    mean and std, for the data (``xt run`` hands it to an image folder); None without weights."""
    if weights is None:
        return None
    transform = pretrained_weights(name, weights).transforms()  # torchvision's ImageClassification
    return {
        "resize": transform.resize_size[0],
        "crop": transform.crop_size[0],
        "interpolation": transform.interpolation.value,
        "mean": list(transform.mean),
        "std": list(transform.std),
    }


def _build(name: str, options: dict[str, Any]) -> Any:
    import torchvision.models

    try:
        return torchvision.models.get_model(name, **options)
    except TypeError as e:  # an option the builder does not take
        given = sorted(k for k in options if k not in ("weights", "num_classes"))
        raise ConfigError(f"torchvision model {name!r} rejected the options {given}: {e}") from None


def _load(name: str, weights: Any, options: dict[str, Any]) -> Any:
    """The model with ``weights`` loaded by torchvision; a download that fails is one line naming the file."""
    import torch.hub

    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(weights.url).path)
    try:
        return _build(name, {"weights": weights, **options})
    except OSError as e:  # not in the cache, and no network
        home = os.environ.get("TORCH_HOME")
        where = f"TORCH_HOME={home}" if home else "TORCH_HOME is not set"
        raise ConfigError(
            f"{name}'s weights {weights} are not in torch's cache and could not be downloaded ({first_line(e)}); "
            f"torchvision looked for {file} ({where}): copy the file there, or download it once with network"
        ) from None
    except RuntimeError as e:  # a file in the cache that does not hold these weights
        if not file.is_file():
            raise
        raise ConfigError(
            f"{file} does not hold {name}'s weights {weights} ({first_line(e)}); delete it and torchvision "
            "downloads it again"
        ) from None


def _set_by_weights(name: str, weights: Any) -> dict[str, Any]:
    """The builder options that torchvision's builders set from ``weights`` (checked by xt-vision's tests
    against the builders for resnet18, googlenet, mobilenet_v3_small and squeezenet1_1)."""
    options: dict[str, Any] = {"num_classes": len(weights.meta["categories"])}
    if name in _NO_AUX:  # built with auxiliary heads to load them, which are then dropped
        options.update(transform_input=True, aux_logits=False, init_weights=False)
    elif name.startswith("vit_"):
        options["image_size"] = weights.meta["min_size"][0]
    elif name.startswith("maxvit"):
        options["input_size"] = weights.meta["min_size"]
    return options


def _classifier(model: Any, categories: int, name: str) -> tuple[str, Any]:
    """The classifier of a torchvision model: its last Linear or Conv2d with one output per class."""
    from torch import nn

    found = None
    for path, module in model.named_modules():
        outputs = getattr(module, "out_features", getattr(module, "out_channels", None))
        if isinstance(module, (nn.Linear, nn.Conv2d)) and outputs == categories:
            found = path, module
    if found is None:
        raise ConfigError(f"xt-vision finds no classifier of {categories} outputs in {name}; this is a bug")
    return found


def _new_head(head: Any, num_classes: int) -> Any:
    """A freshly initialised layer like ``head`` with ``num_classes`` outputs."""
    from torch import nn

    if isinstance(head, nn.Linear):
        return nn.Linear(head.in_features, num_classes, bias=head.bias is not None)
    return nn.Conv2d(
        head.in_channels, num_classes, head.kernel_size, head.stride, head.padding, bias=head.bias is not None
    )
