"""Batches: moving them to the device, and the default way a batch is fed to the model.

A batch is whatever the loader yields. By default it must be an ``(x, y)`` pair, where ``x`` and
``y`` are tensors or nested tuples/lists/dicts of tensors. To feed other batch shapes to the model,
pass a ``forward_fn(model, batch) -> (y_pred, y)`` to ``Runner``/``F.train``/``F.test``; it receives
the batch already moved to the device. Examples::

    # dict batches of a text model: {'input_ids': ..., 'attention_mask': ..., 'labels': ...}
    def forward_fn(model, batch):
        return model(batch['input_ids'], batch['attention_mask']), batch['labels']

    # a model that needs the targets in its forward pass (torchvision detection in training mode)
    def forward_fn(model, batch):
        images, targets = batch
        return model(images, targets), targets
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .errors import BatchError


def map_tensors(fn: Callable[[torch.Tensor], Any], obj: Any) -> Any:
    """``obj`` with ``fn`` applied to every tensor in it: nested tuples (named ones too), lists and dicts
    are rebuilt around the results, other leaves are kept as they are."""
    if isinstance(obj, torch.Tensor):
        return fn(obj)
    if isinstance(obj, (tuple, list)):
        mapped = [map_tensors(fn, o) for o in obj]
        if hasattr(obj, "_fields"):  # namedtuple
            return type(obj)(*mapped)
        return type(obj)(mapped) if isinstance(obj, tuple) else mapped
    if isinstance(obj, Mapping):
        return {k: map_tensors(fn, v) for k, v in obj.items()}
    return obj


def tensor_bytes(obj: Any) -> int:
    """The bytes of the tensors in ``obj`` (nested as :func:`map_tensors` walks it)."""
    sizes: list[int] = []
    map_tensors(lambda t: sizes.append(t.numel() * t.element_size()), obj)
    return sum(sizes)


def to_device(obj: Any, device: torch.device, non_blocking: bool = False, channels_last: bool = False) -> Any:
    """Move every tensor in a nested tuple/list/dict to ``device``; other leaves are kept as they are.

    With ``channels_last``, 4-D floating-point and uint8 tensors (image batches) also get that memory format
    (a uint8 batch keeps it when the model turns it into floats).
    """

    def move(t: torch.Tensor) -> torch.Tensor:
        if channels_last and t.ndim == 4 and (t.is_floating_point() or t.dtype == torch.uint8):
            return t.to(device, non_blocking=non_blocking, memory_format=torch.channels_last)
        return t.to(device, non_blocking=non_blocking)

    return map_tensors(move, obj)


def prefetch_to_cuda(
    batches: Iterator[Any], device: torch.device, channels_last: bool = False
) -> Iterator[Any]:
    """Yield the batches already on the GPU: batch i+1 is copied on a side stream while step i runs.

    The copies overlap with compute when the loader pins its memory (``pin_memory=True``).
    """
    stream = torch.cuda.Stream(device)
    current = torch.cuda.current_stream(device)

    def load() -> Any:
        batch = next(batches, _END)
        if batch is _END:
            return _END
        with torch.cuda.stream(stream):
            return to_device(batch, device, non_blocking=True, channels_last=channels_last)

    upcoming = load()
    while upcoming is not _END:
        current.wait_stream(stream)  # the step waits for its batch's copy (on the GPU, not the host)
        batch = upcoming
        # its memory must not be reused while the step still reads it
        map_tensors(lambda t: t.record_stream(current), batch)
        upcoming = load()
        yield batch


_END = object()


def concat(chunks: list[Any], ragged_to_list: bool = False) -> Any:
    """Per-batch outputs joined along the batch: tensors with torch.cat, lists joined, tuples/dicts per field.

    Tensors whose shapes differ beyond the batch dimension (padded per batch) raise, or with
    ``ragged_to_list`` become a list of per-example tensors.
    """
    first = chunks[0]
    if isinstance(first, torch.Tensor):
        parts = [c.reshape(1) if c.ndim == 0 else c for c in chunks]
        if ragged_to_list and any(p.shape[1:] != parts[0].shape[1:] for p in parts):
            return [row for p in parts for row in p.unbind(0)]
        return torch.cat(parts)
    if isinstance(first, list):
        return [item for c in chunks for item in c]
    if isinstance(first, tuple):
        return tuple(concat(list(parts), ragged_to_list) for parts in zip(*chunks))
    if isinstance(first, Mapping):
        return {k: concat([c[k] for c in chunks], ragged_to_list) for k in first}
    raise BatchError(f"cannot join outputs of type {type(first).__name__}; return tensors, lists or dicts")


def default_forward(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    """Unpack an ``(x, y)`` batch and return ``(model(x), y)``."""
    match batch:
        case (x, y):  # a tuple or list of two (a pattern: cheaper than isinstance and len, every step)
            return model(x), y
    if isinstance(batch, Mapping) and len(batch) >= 2:  # name its keys: the usual fix
        x, y, *_ = batch
        example = f"(model(batch[{x!r}]), batch[{y!r}])"
    else:
        example = "(model(batch[0]), batch[1])"
    raise BatchError(
        f"the loader must yield (x, y) pairs, but it yielded {describe(batch)}; "
        f"pass forward_fn=lambda model, batch: {example} to unpack other batch shapes"
    )


def checked_forward(
    forward_fn: Callable[[torch.nn.Module, Any], Any],
) -> Callable[[torch.nn.Module, Any], Any]:
    """A user's ``forward_fn`` whose result must be a ``(y_pred, y)`` pair.

    Returning only ``y_pred`` is an easy mistake, and unpacking a tensor of two rows would "work":
    training would fit row 0 to row 1. The check costs one pattern match a step.
    """

    @functools.wraps(forward_fn)
    def forward(model: torch.nn.Module, batch: Any) -> Any:
        out = forward_fn(model, batch)
        match out:
            case (_, _):  # a tuple or list of two; a tensor is not a sequence pattern's match
                return out
        raise BatchError(
            f"forward_fn must return a (y_pred, y) pair, but returned {describe(out)}; "
            "e.g. forward_fn=lambda model, batch: (model(batch[0]), batch[1])"
        )

    return forward


def batch_size(y: Any) -> int:
    """Number of examples in a batch, read from the targets ``y`` (its first tensor)."""
    try:
        return y.shape[0]  # a tensor with a batch dimension: the common case first (it runs every step)
    except (AttributeError, IndexError):
        pass
    if isinstance(y, torch.Tensor):
        return 1  # a scalar target
    if isinstance(y, Mapping):
        return batch_size(next(iter(y.values()), None))
    if isinstance(y, (tuple, list)) and y:
        # a list of per-example dicts (torchvision detection targets) has one element per example
        return len(y) if isinstance(y[0], Mapping) else batch_size(y[0])
    raise BatchError(f"cannot tell the batch size from the targets {describe(y)}: they must hold a tensor")


def describe(obj: Any) -> str:
    """A short description of a (nested) batch for error messages: types and shapes, never values."""
    if isinstance(obj, torch.Tensor):
        return f"Tensor{tuple(obj.shape)} {str(obj.dtype).removeprefix('torch.')}"
    if isinstance(obj, Mapping):
        return "{" + ", ".join(f"{k!r}: {describe(v)}" for k, v in list(obj.items())[:6]) + "}"
    if isinstance(obj, (tuple, list)):
        inner = ", ".join(describe(o) for o in obj[:6]) + (", ..." if len(obj) > 6 else "")
        return f"({inner})" if isinstance(obj, tuple) else f"[{inner}]"
    return type(obj).__name__
