"""timm's models by name: ``timm.create_model``, with timm's own loading of pretrained weights.

timm finds a model's pretrained weights through its pretrained configuration: on the Hugging Face hub
(cached under ``$HF_HOME/hub``, offline with ``HF_HUB_OFFLINE=1``), at a URL (cached under
``$TORCH_HOME/hub/checkpoints``), or in a local file (``pretrained_cfg_overlay={'file': PATH}``).
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from xt_training.errors import ConfigError, first_line


def timm_model(
    name: str,
    *,
    num_classes: int = 1000,
    in_channels: int = 3,
    pretrained: bool | str = False,
    freeze: bool = False,
    from_checkpoint: bool = False,
    **options: Any,
) -> Any:
    """``timm.create_model(name, pretrained=..., num_classes=..., in_chans=..., **options)``.

    Args:
        num_classes, in_channels: the classes and image channels (the CLI takes them from the data).
        pretrained: True loads timm's default pretrained weights of the model, a tag (``'a1_in1k'``, see
            ``timm.list_pretrained('resnet18.*')``) those of that tag; timm replaces the classifier when
            the weights classify other than ``num_classes`` classes (said on stderr), and adapts the first
            convolution to ``in_channels``.
        freeze: train only the classifier (``model.get_classifier()``): every other parameter gets
            ``requires_grad=False`` (BatchNorm statistics still follow the data in training mode).
        from_checkpoint: the model gets a run's checkpoint next (the CLI says so): built as with
            ``pretrained``, but the weights are not read.
        options: other options of ``timm.create_model`` and the model (``drop_rate=0.2``,
            ``pretrained_cfg_overlay={'file': 'weights.safetensors'}``).
    """
    import timm

    if freeze and not pretrained:
        raise ConfigError(
            f"freeze=True trains only the classifier of a pretrained {name}; add pretrained=True, or drop freeze"
        )
    arch = _with_tag(name, pretrained)
    load = bool(pretrained) and not from_checkpoint
    try:
        model = timm.create_model(
            arch, pretrained=load, num_classes=num_classes, in_chans=in_channels, **options
        )
    except TypeError as e:  # an option that neither create_model nor the model takes
        raise ConfigError(f"timm model {name!r} rejected the options {sorted(options)}: {e}") from None
    except RuntimeError as e:  # an unknown tag
        if "pretrained tag" not in str(e):
            raise
        raise ConfigError(
            f"timm model {name!r}: {first_line(e)}; its tags: timm.list_pretrained('{name}.*')"
        ) from None
    except OSError as e:  # not in the cache, and no network
        raise ConfigError(_not_loaded(arch, options, e)) from None
    classes = model.pretrained_cfg.get("num_classes")
    if load and classes and classes != num_classes:
        print(
            f"xt-timm: {arch}'s pretrained weights classify {classes} classes, the data {num_classes}: its "
            f"classifier '{model.pretrained_cfg.get('classifier')}' is a new {model.get_classifier()}",
            file=sys.stderr,
        )
    if freeze:
        model.requires_grad_(False)
        heads = model.get_classifier()  # a tuple for the distilled models' two heads
        for head in heads if isinstance(heads, tuple) else (heads,):
            head.requires_grad_(True)
    return model


def timm_preprocessing(name: str, *, pretrained: bool | str = False, **options: Any) -> dict[str, Any] | None:
    """How the images of the pretrained weights were prepared, from timm's data configuration
    (``resolve_data_config``, as ``create_transform`` applies it for evaluation): resize, crop,
    interpolation, mean and std, for the data (``xt run`` hands it to an image folder); None without
    ``pretrained``."""
    if not pretrained:
        return None
    import timm.data
    import timm.models

    cfg = timm.models.get_pretrained_cfg(_with_tag(name, pretrained))
    if cfg is None:
        raise ConfigError(
            f"timm model {name!r} has no pretrained weights {pretrained!r}; see timm.list_pretrained()"
        )
    config = timm.data.resolve_data_config(
        pretrained_cfg={**cfg.to_dict(), **(options.get("pretrained_cfg_overlay") or {})}
    )
    _, height, width = config["input_size"]
    mode = config.get("crop_mode", "center")
    if height != width or mode not in ("center", "squash"):
        raise ConfigError(
            f"timm model {name!r} prepares images of {height}x{width} with crop_mode {mode!r}; image folders "
            "prepare square images, center-cropped or squashed: pass your own data"
        )
    resize = math.floor(width / config["crop_pct"])
    return {
        # center: the shorter side to `resize`, then the crop; squash: the whole image to `resize` x `resize`
        "resize": resize if mode == "center" else [resize, resize],
        "crop": width,
        "interpolation": config["interpolation"],
        "mean": list(config["mean"]),
        "std": list(config["std"]),
    }


def _with_tag(name: str, pretrained: bool | str) -> str:
    return f"{name}.{pretrained}" if isinstance(pretrained, str) else name


def _not_loaded(arch: str, options: dict[str, Any], error: OSError) -> str:
    """One line: where timm looked for the weights of ``arch`` and the cache variable that places it."""
    import timm.models

    cfg = {**timm.models.get_pretrained_cfg(arch).to_dict(), **(options.get("pretrained_cfg_overlay") or {})}
    reason = first_line(error)
    if cfg.get("file"):
        return f"timm could not read the pretrained weights of {arch} from {cfg['file']} ({reason})"
    fix = "download them once with network, or give a file: pretrained_cfg_overlay={'file': PATH}"
    if cfg.get("hf_hub_id"):
        from huggingface_hub import constants

        home = os.environ.get("HF_HOME")
        where = f"HF_HOME={home}" if home else "HF_HOME is not set"
        file = cfg.get("hf_hub_filename") or "model.safetensors (or pytorch_model.bin)"
        return (
            f"{arch}'s pretrained weights are not in the Hugging Face cache and could not be downloaded "
            f"({reason}); timm looked for {file} of {cfg['hf_hub_id']} in {constants.HF_HUB_CACHE} ({where}"
            f"{', HF_HUB_OFFLINE=1' if constants.HF_HUB_OFFLINE else ''}): {fix}"
        )
    import torch.hub

    home = os.environ.get("TORCH_HOME")
    where = f"TORCH_HOME={home}" if home else "TORCH_HOME is not set"
    file = Path(torch.hub.get_dir()) / "checkpoints" / os.path.basename(urlparse(cfg.get("url") or "").path)
    return (
        f"{arch}'s pretrained weights are not in torch's cache and could not be downloaded ({reason}); timm "
        f"looked for {file} ({where}): {fix}"
    )
