"""The data's preprocessing as part of the model, so an exported model takes raw inputs.

A model is trained on preprocessed inputs: a CSV's features standardized by the training split's mean
and standard deviation, images normalised per channel. Deployed alone, the exported file would need the
deployer to repeat that preprocessing exactly, with numbers that live only in the training code. Instead
the exported graph applies it: :func:`with_preprocessing` puts a :class:`Normalize` in front of the model,
so the ONNX file alone, given raw inputs, gives the outputs the trained model gives on preprocessed ones.

The convention: a data set records ``normalization = {"mean": [...], "std": [...]}`` (in its
``info['normalization']``, or as a torchvision ``Normalize`` among its transforms, found by
:func:`normalization_of`), applied along dimension 1 of the input ``x`` as ``(x - mean) / std``: per
channel for images ``(N, C, H, W)``, per feature for tables ``(N, F)``. A table with missing values
filled in (the CSV data's ``na=mean|median``) adds ``"fill": [...]``, per feature the value that replaces
a missing (NaN) input before the scaling, or None for a feature that is never missing: the exported
graph then takes raw rows with NaN where a value is missing. What comes before it stays out
of the graph: for images decoding, resizing, cropping and ``ToTensor`` (raw images are ``float`` pixels in
``[0, 1]``, channels first); for text the tokenizer (token ids are the raw inputs).

Usage::

    from xt_training.preprocessing import normalization_of, raw_inputs, with_preprocessing

    normalization = data.info.get("normalization") or normalization_of(data.loaders.values())
    deployable = with_preprocessing(model, normalization)   # the model itself when there is none
    export(deployable, raw_inputs(x, normalization), "model.onnx")
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from typing import Any

import torch

from .errors import ConfigError

__all__ = [
    "Normalize",
    "WithPreprocessing",
    "normalization_in",
    "normalization_of",
    "with_preprocessing",
    "raw_inputs",
]


def _checked(normalization: Mapping[str, Any]) -> tuple[list[float], list[float]]:
    """The ``mean`` and ``std`` lists of a normalization, once they are numbers of one length, ``std`` non-zero.

    Its ``fill``, when there is one, is checked too (:func:`_fill`).
    """
    if not isinstance(normalization, Mapping) or not {"mean", "std"} <= set(normalization):
        raise ConfigError(
            f"a normalization is a dict with 'mean' and 'std' (lists of numbers, one per channel or "
            f"feature), not {normalization!r}"
        )
    values = {}
    for key in ("mean", "std"):
        try:
            values[key] = _floats(normalization[key])
        except (TypeError, ValueError):
            raise ConfigError(
                f"normalization {key!r} must be a list of numbers, not {normalization[key]!r}"
            ) from None
        if not values[key]:
            raise ConfigError(f"normalization {key!r} is empty; give one value per channel or feature")
    mean, std = values["mean"], values["std"]
    if len(mean) != len(std) and 1 not in (len(mean), len(std)):
        raise ConfigError(
            f"normalization 'mean' has {len(mean)} values and 'std' {len(std)}; give one per channel or "
            "feature for both"
        )
    if any(s == 0 for s in std):
        raise ConfigError(f"normalization 'std' has a zero ({std}); dividing by it gives infinities")
    _fill(normalization, max(len(mean), len(std)))
    return mean, std


def _fill(normalization: Mapping[str, Any], n: int) -> list[float] | None:
    """The ``fill`` of a normalization as ``n`` floats (NaN for a feature without one), or None when it has none."""
    fill = normalization.get("fill")
    if fill is None:
        return None
    if (
        not isinstance(fill, (list, tuple))
        or len(fill) != n
        or not all(v is None or isinstance(v, (int, float)) and not isinstance(v, bool) for v in fill)
    ):
        raise ConfigError(
            f"normalization 'fill' must be a list of {n} numbers or nulls (one per feature), not {fill!r}"
        )
    return [math.nan if v is None else float(v) for v in fill]


def _along_dim1(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """``values`` ``(C,)`` shaped ``(1, C, 1, ...)`` to broadcast along dimension 1 of ``x``, in ``x``'s dtype."""
    if x.ndim < 2 and values.numel() != 1:
        raise ConfigError(
            f"the normalization has {values.numel()} values for dimension 1, but the input has shape "
            f"{list(x.shape)}: no dimension 1"
        )
    if x.ndim >= 2 and values.numel() not in (1, x.shape[1]):
        raise ConfigError(
            f"the normalization has {values.numel()} values (one per channel or feature), but dimension 1 "
            f"of the input has {x.shape[1]} (input shape {list(x.shape)})"
        )
    shape = (1, -1, *([1] * (x.ndim - 2))) if x.ndim >= 2 else (-1,)
    if x.is_floating_point():
        values = values.to(x.dtype)
    return values.reshape(shape)


class Normalize(torch.nn.Module):
    """``(x - mean) / std`` along dimension 1 of ``x``, for inputs of any rank (``(N, F)``, ``(N, C, H, W)``, ...).

    ``mean`` and ``std`` are buffers of shape ``(C,)`` (one value per channel or feature, or a single
    value for all), reshaped in ``forward`` to broadcast along dimension 1; they are cast to a floating
    ``x``'s dtype, and an integer ``x`` (raw pixels) becomes floating. With ``fill`` (one value or None
    per feature), a NaN of feature ``j`` becomes ``fill[j]`` first: a missing value, filled in as the
    data filled it in.
    """

    mean: torch.Tensor
    std: torch.Tensor
    fill: torch.Tensor | None

    def __init__(
        self,
        mean: Sequence[float] | torch.Tensor,
        std: Sequence[float] | torch.Tensor,
        fill: Sequence[float | None] | None = None,
    ):
        super().__init__()
        mean, std = _checked({"mean": mean, "std": std, "fill": fill})
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        fills = _fill({"fill": fill}, max(len(mean), len(std)))
        self.register_buffer("fill", None if fills is None else torch.tensor(fills, dtype=torch.float32))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fill is not None:  # NaN where no fill is given: that feature is never missing
            x = torch.where(torch.isnan(x), _along_dim1(self.fill, x), x)
        return (x - _along_dim1(self.mean, x)) / _along_dim1(self.std, x)

    def extra_repr(self) -> str:
        fill = "" if self.fill is None else f", fill={self.fill.tolist()}"
        return f"mean={self.mean.tolist()}, std={self.std.tolist()}{fill}"


class WithPreprocessing(torch.nn.Module):
    """``model(normalize(x))``: a trained model that takes raw inputs, for export (see :func:`with_preprocessing`).

    Its ``state_dict`` has the model's entries under ``model.`` and the normalization under
    ``normalize.``, so it cannot be mistaken for (or silently loaded as) the model's checkpoint.
    """

    def __init__(self, model: torch.nn.Module, normalize: Normalize):
        super().__init__()
        self.normalize = normalize
        self.model = model

    def forward(self, x: torch.Tensor) -> Any:
        return self.model(self.normalize(x))


def with_preprocessing(model: torch.nn.Module, normalization: Mapping[str, Any] | None) -> torch.nn.Module:
    """``model`` itself when ``normalization`` is None, else a module applying :class:`Normalize`, then ``model``.

    The result is for export (``export(with_preprocessing(model, n), raw_inputs(x, n), path)``), not for
    training or checkpoints: it shares ``model``'s parameters, and its mode (``train``/``eval``) is the model's.
    The normalization's buffers are put on the device of ``model``'s first parameter or buffer.
    """
    if normalization is None:
        return model
    if not isinstance(model, torch.nn.Module):
        raise ConfigError(f"model must be a torch.nn.Module, not {type(model).__name__}")
    mean, std = _checked(normalization)
    tensor = next(iter(model.parameters()), None)
    if tensor is None:
        tensor = next(iter(model.buffers()), None)
    normalize = Normalize(mean, std, normalization.get("fill"))
    if tensor is not None:
        normalize = normalize.to(tensor.device)
    wrapped = WithPreprocessing(model, normalize)
    wrapped.train(model.training)
    return wrapped


def raw_inputs(x: Any, normalization: Mapping[str, Any] | None) -> Any:
    """The raw inputs that preprocess to ``x``: ``x * std + mean`` along dimension 1 (``x`` itself without a normalization).

    Export uses it to make a raw example batch from a preprocessed one (whose values are all present: a
    ``fill`` has nothing to undo). ``x`` must be a tensor when a
    normalization applies (the convention normalises the model's single input).
    """
    if normalization is None:
        return x
    if not isinstance(x, torch.Tensor):
        raise ConfigError(
            f"a normalization applies to an input tensor, but the input is a {type(x).__name__}; "
            "a model of several inputs takes them raw"
        )
    mean, std = _checked(normalization)
    if not x.is_floating_point():
        x = x.float()
    mean_t = torch.tensor(mean, dtype=torch.float32, device=x.device)
    std_t = torch.tensor(std, dtype=torch.float32, device=x.device)
    return x * _along_dim1(std_t, x) + _along_dim1(mean_t, x)


def _transforms(transform: Any) -> Iterator[Any]:
    """``transform`` and, through ``Compose``-like ``.transforms``, the transforms inside it."""
    if transform is None:
        return
    yield transform
    for inner in getattr(transform, "transforms", None) or []:
        yield from _transforms(inner)


def _floats(values: Any) -> list[float]:
    """A tensor, a number (one value for every channel) or a sequence of numbers as a list of floats."""
    if isinstance(values, torch.Tensor):
        values = values.flatten().tolist()
    elif isinstance(values, (int, float)) and not isinstance(values, bool):
        values = [values]
    return [float(v) for v in values]


def normalization_in(transform: Any) -> dict[str, list[float]] | None:
    """The mean and std of the first torchvision ``Normalize`` in ``transform`` (through ``Compose``), else None."""
    for t in _transforms(transform):
        if type(t).__name__ == "Normalize" and hasattr(t, "mean") and hasattr(t, "std"):
            return {"mean": _floats(t.mean), "std": _floats(t.std)}
    return None


def normalization_of(loaders: Iterable[Any] | Mapping[str, Any]) -> dict[str, list[float]] | None:
    """The normalisation the loaders' data sets apply; None if there is none.

    A data set declares it as its attribute ``normalization`` (``{'mean', 'std'}``, as the built-in CSV data
    does for its standardisation), or applies a torchvision ``Normalize`` among its transforms. Datasets are
    followed through ``Subset``-like wrappers (``.dataset``) and transforms through ``Compose``
    (``.transforms``); the first found wins. A mapping of loaders by split (``data.loaders``) is taken by
    its values.
    """
    if isinstance(loaders, Mapping):
        loaders = loaders.values()
    for loader in loaders:
        dataset = getattr(loader, "dataset", None)
        while dataset is not None:
            declared = getattr(dataset, "normalization", None)
            found = (
                declared
                if isinstance(declared, Mapping)
                else normalization_in(getattr(dataset, "transform", None))
            )
            if found is not None:
                return found
            dataset = getattr(dataset, "dataset", None)
    return None
