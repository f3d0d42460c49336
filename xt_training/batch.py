"""Batches: moving them to the device, and the default way a batch is fed to the model.

A batch is whatever the loader yields. By default it must be an ``(x, y)`` pair, where ``x`` and
``y`` are tensors or nested tuples/lists/dicts of tensors, or a dict fed by its keys (Hugging Face's
conventions, see :func:`forward_output`). To feed other batch shapes to the model, pass a
``forward_fn(model, batch) -> (y_pred, y)`` to ``Runner``/``F.train``/``F.test``; it receives the batch
already moved to the device. Examples::

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
import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any

import torch

from .devices import streams
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


def prefetch_to_device(
    batches: Iterator[Any], device: torch.device, channels_last: bool = False
) -> Iterator[Any]:
    """Yield the batches already on ``device`` (CUDA, XPU: see :func:`~xt_training.devices.streams`): batch
    i+1 is copied on a side stream while step i runs.

    The copies overlap with compute when the loader pins its memory (``pin_memory=True``).
    """
    module = streams(device)  # torch.cuda, torch.xpu...
    stream = module.Stream(device)
    current = module.current_stream(device)

    def load() -> Any:
        batch = next(batches, _END)
        if batch is _END:
            return _END
        with module.stream(stream):
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


#: the keys that hold the targets of a dict batch, looked for in this order (Hugging Face's first)
TARGET_KEYS = ("labels", "label", "target", "targets", "y")


def default_forward(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    """``(model(x), y)`` for an ``(x, y)`` batch; a dict batch as :func:`forward_output` feeds it, with the
    output's ``.logits`` as ``y_pred`` where it has them (a Hugging Face ``ModelOutput``)."""
    match batch:
        case (x, y):  # a tuple or list of two (a pattern: cheaper than isinstance and len, every step)
            return model(x), y
    y_pred, y = forward_output(model, batch)
    return logits(y_pred), y


def forward_output(model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
    """``(the model's output, y)``: ``(model(x), y)`` for an ``(x, y)`` batch, a dict batch as
    :func:`feed_dict` feeds it; anything else is a one-line :class:`BatchError` with a ``forward_fn`` that
    would feed it."""
    match batch:
        case (x, y):
            return model(x), y
    if not isinstance(batch, Mapping):
        raise BatchError(
            f"the loader must yield (x, y) pairs or dicts, but it yielded {describe(batch)}; "
            "pass forward_fn=lambda model, batch: (model(batch[0]), batch[1]) to unpack other batch shapes"
        )
    fed = feed_dict(model, batch, need_targets=True)
    if fed is None:
        raise BatchError(_no_rule(model, batch))
    return fed


def feed_dict(model: torch.nn.Module, batch: Mapping[Any, Any], need_targets: bool) -> tuple[Any, Any] | None:
    """``(the model's output, the targets or None)`` of a dict batch, fed by its keys; None (the model not
    called) when no rule fits, or the targets are needed and missing:

    - the targets are the value of its first key of :data:`TARGET_KEYS`, if any;
    - the other keys are the model's keyword arguments, ``model(**inputs)``, when its ``forward`` takes
      those names (or ``**kwargs``), the targets too when it takes their key's name (Hugging Face models
      then return their loss); else, beside the targets, the one other key is its input, ``model(batch[key])``.
    """
    target, inputs, names = _dict_keys(type(_plain_module(model)), tuple(batch))
    if target is None and (need_targets or names is None):
        return None
    if names is None and len(inputs) != 1:
        return None
    y = batch[target] if target is not None else None
    if names is None:
        return model(batch[inputs[0]]), y
    return model(**{k: batch[k] for k in names}), y


def logits(output: Any) -> Any:
    """A model output's ``.logits`` (a Hugging Face ``ModelOutput``), else the output as it is."""
    return output if isinstance(output, torch.Tensor) else getattr(output, "logits", output)


class ModelLoss:
    """The loss when ``loss_fn`` is None: the one the model's output carries, as the ``.loss`` of a Hugging
    Face model given its labels.

    The loop calls :meth:`forward` and then this object as its ``loss_fn``, in turn, once a step: the
    forward keeps the output's ``.loss`` and gives its ``.logits`` as ``y_pred`` (to the metrics); the call
    returns that loss, or None for an output without one (evaluation then reports no loss).
    """

    def __init__(self, forward_fn: Callable[[torch.nn.Module, Any], tuple[Any, Any]]):
        self.forward_fn = forward_fn
        self.loss: Any = None

    def forward(self, model: torch.nn.Module, batch: Any) -> tuple[Any, Any]:
        output, y = self.forward_fn(model, batch)
        self.loss = None if isinstance(output, torch.Tensor) else getattr(output, "loss", None)
        return logits(output), y

    def __call__(self, y_pred: Any, y: Any) -> Any:
        return self.loss


def _plain_module(model: torch.nn.Module) -> torch.nn.Module:
    """The model inside DistributedDataParallel and torch.compile wrappers: the one whose forward names its inputs."""
    while True:
        if isinstance(getattr(model, "module", None), torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


@functools.lru_cache(maxsize=64)
def _dict_keys(cls: type, keys: tuple[Any, ...]) -> tuple[Any, tuple[Any, ...], tuple[Any, ...] | None]:
    """``(target key or None, input keys, keys passed by name or None)`` of dict batches with these keys fed to
    a model of this class (see :func:`feed_dict`). Cached: the signature is read once, not every step."""
    target = next((k for k in TARGET_KEYS if k in keys), None)
    inputs = tuple(k for k in keys if k != target)
    names, any_name = _keyword_names(cls)
    if not inputs or not (any_name or all(k in names for k in inputs)):
        return target, inputs, None
    return target, inputs, inputs + ((target,) if target in names else ())


def _keyword_names(cls: type) -> tuple[set[str], bool]:
    """The names a model class's forward takes by keyword, and whether it takes any (``**kwargs``)."""
    try:
        params = list(inspect.signature(cls.forward).parameters.values())[1:]  # after self
    except (TypeError, ValueError):  # no signature to read: nothing is passed by name
        return set(), False
    names = {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}
    return names, any(p.kind is p.VAR_KEYWORD for p in params)


def _no_rule(model: torch.nn.Module, batch: Mapping[Any, Any]) -> str:
    """Why a dict batch cannot be fed by its keys, with a ``forward_fn`` that feeds it (the targets under their key)."""
    cls = type(_plain_module(model))
    target, inputs, _ = _dict_keys(cls, tuple(batch))
    call = ", ".join(f"batch[{k!r}]" for k in inputs) or "..."
    keys = ", ".join(map(repr, batch))
    if target is None:
        return (
            f"the dict batch with keys {keys} holds no targets under any of the keys "
            f"{', '.join(map(repr, TARGET_KEYS))}; call the targets' key 'labels', or pass "
            f"forward_fn=lambda model, batch: (model({call}), TARGETS)"
        )
    takes = ", ".join(sorted(_keyword_names(cls)[0])) or "no named arguments"
    return (
        f"cannot feed a dict batch with keys {keys} to {cls.__name__}, whose forward takes ({takes}); "
        f"pass forward_fn=lambda model, batch: (model({call}), batch[{target!r}])"
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


def leading_size(batch: Any) -> int | None:
    """The first dimension that every tensor in a (nested) batch shares -- its number of examples --, else None."""
    sizes: set[int | None] = set()
    map_tensors(lambda t: sizes.add(t.shape[0] if t.ndim else None), batch)
    return sizes.pop() if len(sizes) == 1 else None


def smaller_batch(batch: Any, earlier: int | None) -> str | None:
    """Why a batch may have failed where earlier ones of ``earlier`` examples did not: it is smaller (a loader's
    last batch), and the model or loss assumes the batch size (a hidden state sized 32); None when it is not smaller.
    """
    size = leading_size(batch)
    if earlier is None or size is None or size >= earlier:
        return None
    return (
        f"the batch size changed, {size} vs {earlier} before: a model that assumes a fixed batch size "
        "fails on the loader's last, smaller batch; size its state by the input (x.shape[0])"
    )


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
