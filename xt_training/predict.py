"""Predictions of a model object: ``F.predict`` (its outputs over a loader, kept or streamed to a file).

Usage::

    from xt_training import load_model
    from xt_training.utils import functional as F

    model = load_model('runs/exp1')              # any run directory: its best checkpoint, in eval mode
    probabilities = F.predict(model, loader).softmax(1)
    F.predict(model, big_loader, out="predictions.npy")      # streamed: memory stays bounded

``F.predict`` moves batches with the loop's own code (:mod:`xt_training.batch`), takes the loop's fast path
for single-process DataLoaders, and feeds batches the way ``F.train`` does when given the same ``forward_fn``.
"""

from __future__ import annotations

import csv
import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .batch import (
    checked_forward,
    concat,
    describe,
    feed_dict,
    leading_size,
    logits,
    map_tensors,
    smaller_batch,
    tensor_bytes,
    to_device,
)
from .checkpoint import load_checkpoint
from .devices import streams
from .errors import BatchError, ConfigError, XtError, first_line
from .fastpath import check_data_on_device, fast_batches
from .files import check_writable, temporary_beside
from .rundir import checkpoint_file
from .runner import resolve_device

__all__ = ["predict", "predict_forward", "model_expects", "expected_input", "FORMATS"]

#: the file formats of ``out=``, by extension; the first two are written batch by batch
FORMATS = (".npy", ".csv", ".pt")

_CPU = torch.device("cpu")
# Outputs wait where the model made them and go to the CPU in groups of up to this many batches or bytes:
# on a GPU, moving each batch's at once is a blocking copy, so the host would wait for the GPU every batch
# and the GPU would idle while the host prepares the next one. Of a group, the first copy waits for the
# GPU; the others find their outputs ready.
_GROUP_BATCHES = 64
_GROUP_BYTES = 64 << 20


def predict(
    model: nn.Module,
    loader: Iterable[Any],
    checkpoint_path: str | os.PathLike[str] | None = None,
    device: str | torch.device | None = None,
    *,
    forward_fn: Callable[[nn.Module, Any], tuple[Any, Any]] | None = None,
    out: str | os.PathLike[str] | None = None,
    fast_path: bool = True,
    data_on_device: bool | str = "auto",
) -> Any:
    """The model's outputs for every batch of ``loader``, in loader order, on the CPU.

    Runs under ``model.eval()`` and ``torch.inference_mode()`` and restores the model's mode afterwards.

    Args:
        loader: yields inputs only -- ``x`` (a tensor or a dict of tensors) or ``[x]`` (as
            ``TensorDataset(x)`` yields) -- or ``(x, y)`` pairs, whose ``y`` is ignored.
        checkpoint_path: load these weights first: a checkpoint file, or a run directory (its ``best.pt``).
        device: default CUDA when available, else the CPU; the model is moved there.
        forward_fn: ``forward_fn(model, batch) -> (y_pred, y)`` for other batch shapes; the one given to
            ``F.train`` works as it is (``y`` may be None for unlabelled batches).
        out: write the outputs to this file instead of returning them, by extension:

            - ``.npy``: a tensor output with the same shape per example; written batch by batch (the
              header's length is fixed up at the end), so memory stays bounded;
            - ``.csv``: one row per example, from ``(N,)`` or ``(N, K)`` tensors or a dict of such
              columns (values may also be lists, e.g. class names); written batch by batch;
            - ``.pt``: any outputs (nested lists/dicts, detection's boxes); kept in memory and saved at
              the end, loadable with ``torch.load(..., weights_only=True)``.

            The file appears complete or not at all (written to a temporary file of its own, then
            renamed): calls writing the same ``out`` at once each leave a whole file, the last one's.
        fast_path, data_on_device: see :class:`~xt_training.Runner`.

    Returns:
        The outputs concatenated along the batch: tensors with ``torch.cat`` (tensors whose shapes differ
        between batches, e.g. padded per batch, become a list of per-example tensors), lists joined (a
        detection model's per-image dicts), tuples and dicts per field. With ``out``: the path written.
    """
    if checkpoint_path is not None:
        load_checkpoint(checkpoint_file(checkpoint_path), model)
    if not isinstance(fast_path, bool):
        raise ConfigError(f"fast_path must be True or False, not {fast_path!r}")
    data_on_device = check_data_on_device(data_on_device)
    writer = _writer(out)
    dev = resolve_device(device)
    model = model.to(dev)
    forward = predict_forward if forward_fn is None else checked_forward(forward_fn)
    non_blocking = streams(dev) is not None  # pinned memory copies to CUDA, XPU asynchronously
    was_training = model.training
    model.eval()
    try:
        fast = fast_batches(loader, dev, data_on_device) if fast_path else None
        group: list[Any] = []  # outputs not yet on the CPU
        group_bytes = 0
        # on the CPU there is nothing to wait for: each batch goes to the writer at once (streamed)
        group_batches = 1 if dev.type == "cpu" else _GROUP_BATCHES
        with torch.inference_mode():
            for step, batch in enumerate(loader if fast is None else fast, 1):
                batch = to_device(batch, dev, non_blocking)
                if step == 1:  # for the error of a smaller (last) batch
                    first_size = leading_size(batch)
                try:
                    y_pred, _ = forward(model, batch)
                except XtError:
                    raise
                except (RuntimeError, ValueError, TypeError, IndexError) as e:
                    inputs = batch if forward_fn is not None else _inputs(batch)
                    raise BatchError(
                        _mismatch(model, inputs, step, e, smaller_batch(batch, first_size))
                    ) from e
                group.append(y_pred)
                group_bytes += tensor_bytes(y_pred)
                if len(group) == group_batches or group_bytes >= _GROUP_BYTES:
                    _hand_over(group, writer)
                    group, group_bytes = [], 0
            _hand_over(group, writer)
    except BaseException:
        writer.abort()
        raise
    finally:
        model.train(was_training)
    return writer.finish()


def _hand_over(group: list[Any], writer: Any) -> None:
    """The group's outputs to the CPU (the host waits here for the GPU) and to the writer, in order."""
    for y_pred in group:
        writer.add(to_device(y_pred, _CPU))


def predict_forward(model: nn.Module, batch: Any) -> tuple[Any, Any]:
    """``(model(x), y)`` for ``(x, y)`` batches and ``(model(x), None)`` for batches of inputs only; a dict
    batch fed by its keys as in training where a rule fits (:func:`~xt_training.batch.feed_dict`), else
    as ``x``. An output's ``.logits`` (a Hugging Face ``ModelOutput``) are the predictions."""
    fed = feed_dict(model, batch, need_targets=False) if isinstance(batch, Mapping) else None
    if fed is None:
        x = _inputs(batch)
        fed = model(x), batch[1] if isinstance(batch, (tuple, list)) and len(batch) == 2 else None
    return logits(fed[0]), fed[1]


def _inputs(batch: Any) -> Any:
    if isinstance(batch, (torch.Tensor, Mapping)):
        return batch
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0]
    raise BatchError(
        f"the loader yielded {describe(batch)}; F.predict takes x, [x] or (x, y) batches: "
        "pass forward_fn=lambda model, batch: (model(...), None) for other batch shapes"
    )


def _mismatch(model: nn.Module, inputs: Any, step: int, error: Exception, smaller: str | None) -> str:
    """Why a batch did not fit the model: it is smaller than the first (``smaller``, see
    :func:`~xt_training.batch.smaller_batch`), or the inputs' shape beside the one the model's first layer expects."""
    failed = (
        f"the model failed on batch {step} of the loader, inputs {describe(inputs)} ({first_line(error)})"
    )
    if smaller is not None:  # the shape of the examples is not the problem
        return f"{failed}: {smaller}; DataLoader(..., drop_last=True) would leave its examples without predictions"
    return f"{failed}{model_expects(model, inputs)}; give it inputs of the shape it was trained on"


def model_expects(model: nn.Module, inputs: Any = None) -> str:
    """``'; the model expects ...'`` for an error about inputs that do not fit (empty for an unknown first layer).

    Where the inputs have what the first layer checks (a convolution's channels), the rest of their shape
    is what differs: a later layer (a ``Linear`` after ``Flatten``) was built for another height and width.
    """
    expected = expected_input(model)
    first = next((m for m in model.modules() if isinstance(m, nn.modules.conv._ConvNd)), None)
    if (
        expected
        and first is not None
        and expected_input(first) == expected
        and isinstance(inputs, torch.Tensor)
        and inputs.ndim == 2 + len(first.kernel_size)
        and inputs.shape[1] == first.in_channels
    ):
        size = "x".join(map(str, inputs.shape[2:]))
        return (
            f"; the inputs have the {first.in_channels} channels its first layer ({type(first).__name__}) takes, "
            f"so their size, {size}, is what a later layer was not built for"
        )
    return f"; the model expects {expected}" if expected else ""


def expected_input(model: nn.Module) -> str | None:
    """What the model's first layer with weights takes, in words (None when it is not a known layer)."""
    for m in model.modules():
        if isinstance(m, nn.Linear):
            return f"{m.in_features} features per example (its first layer is Linear({m.in_features}, {m.out_features}))"
        if isinstance(m, nn.modules.conv._ConvNd):
            dims = ", ".join(["N", str(m.in_channels), *"HWD"[: len(m.kernel_size)]])
            return f"({dims}) inputs with {m.in_channels} channels (its first layer is {type(m).__name__})"
        if isinstance(m, nn.Embedding):
            return (
                f"token ids below {m.num_embeddings} (its first layer is Embedding({m.num_embeddings}, ...))"
            )
        if isinstance(m, nn.RNNBase):
            order = "N, T" if m.batch_first else "T, N"
            return f"sequences ({order}, {m.input_size}) (its first layer is {type(m).__name__})"
    return None


# --- where the outputs go ----------------------------------------------------------------------------------
def _writer(out: str | os.PathLike[str] | None) -> Any:
    if out is None:
        return _Memory()
    path = Path(out)
    kinds = {".npy": _Npy, ".csv": _Csv, ".pt": _Pt}
    if path.suffix.lower() not in kinds:
        raise ConfigError(f"cannot write predictions to '{path}': the file must end in {', '.join(FORMATS)}")
    if path.is_dir():
        raise ConfigError(f"'{path}' is a directory; name a file ending in {', '.join(FORMATS)}")
    check_writable(path)  # fail before predicting, not at the first batch
    return kinds[path.suffix.lower()](path)


class _Memory:
    """Keeps every batch's outputs; ``finish`` concatenates them."""

    def __init__(self) -> None:
        self.chunks: list[Any] = []

    def add(self, y_pred: Any) -> None:
        self.chunks.append(y_pred)

    def abort(self) -> None:
        self.chunks = []

    def finish(self) -> Any:
        if not self.chunks:
            raise ConfigError("the loader yielded no batches; check the dataset size and drop_last")
        return _owned(concat(self.chunks, ragged_to_list=True))


class _File:
    """Writes to a temporary file of its own beside ``PATH`` and renames it to ``PATH`` once complete."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp: Path | None = None  # made at the first write: a failure before it leaves nothing behind
        self.rows = 0

    def temporary(self) -> Path:
        if self.tmp is None:
            fd, self.tmp = temporary_beside(self.path)
            os.close(fd)  # reopened by name: torch.save and the writers take a path
        return self.tmp

    def abort(self) -> None:
        self.close()
        if self.tmp is not None:
            self.tmp.unlink(missing_ok=True)

    def close(self) -> None:
        pass

    def finish(self) -> Path:
        self.close()
        if not self.rows or self.tmp is None:
            self.abort()
            raise ConfigError("the loader yielded no batches; check the dataset size and drop_last")
        os.replace(self.tmp, self.path)
        return self.path


class _Pt(_File):
    """Everything in memory, ``torch.save`` at the end (a pickle cannot be appended to)."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.memory = _Memory()

    def add(self, y_pred: Any) -> None:
        self.memory.add(y_pred)
        self.rows += 1

    def abort(self) -> None:
        self.memory.abort()
        super().abort()

    def close(self) -> None:
        if self.memory.chunks:
            torch.save(self.memory.finish(), self.temporary())
            self.memory.chunks = []


class _Npy(_File):
    """A ``.npy`` file written batch by batch: the header is reserved first and rewritten with the final length."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.file: Any = None
        self.shape: tuple[int, ...] = ()
        self.descr = ""
        self.size = 0  # of the header, reserved for the longest length it may have to hold

    def add(self, y_pred: Any) -> None:
        import numpy as np

        if not isinstance(y_pred, torch.Tensor) or y_pred.ndim == 0:
            raise ConfigError(
                f"'.npy' holds one array, but the model returned {describe(y_pred)}; write '.pt' instead"
            )
        if y_pred.dtype == torch.bfloat16:
            y_pred = y_pred.float()  # NumPy has no bfloat16
        array = np.ascontiguousarray(y_pred.numpy())
        if self.file is None:
            self.shape, self.descr = tuple(array.shape[1:]), np.lib.format.dtype_to_descr(array.dtype)
            self.size = -(-len(self._header(10**20)) // 64) * 64  # .npy headers end on a 64-byte boundary
            self.file = open(self.temporary(), "wb")  # noqa: SIM115 - closed in close()
            self.file.write(self._header(0))
        elif tuple(array.shape[1:]) != self.shape or np.lib.format.dtype_to_descr(array.dtype) != self.descr:
            raise ConfigError(
                f"'.npy' holds one array: batch outputs {describe(y_pred)} differ from the first batch's "
                f"(N, {', '.join(map(str, self.shape))}) {self.descr}; write '.pt' instead"
            )
        self.file.write(array.tobytes())
        self.file.flush()  # on disk batch by batch, not in a buffer
        self.rows += array.shape[0]

    def _header(self, rows: int) -> bytes:
        """Format 1.0: magic, version, header length, then the header dict padded with spaces and a newline."""
        text = f"{{'descr': {self.descr!r}, 'fortran_order': False, 'shape': {(rows, *self.shape)!r}, }}"
        body = text.ljust(max(self.size - 11, len(text))) + "\n"
        return b"\x93NUMPY\x01\x00" + len(body).to_bytes(2, "little") + body.encode("latin1")

    def close(self) -> None:
        if self.file is not None:
            self.file.seek(0)
            self.file.write(self._header(self.rows))
            self.file.close()
            self.file = None


class _Csv(_File):
    """One row per example, written batch by batch; the header comes from the first batch."""

    def __init__(self, path: Path):
        super().__init__(path)
        self.file: Any = None
        self.writer: Any = None
        self.header: list[str] | None = None

    def add(self, y_pred: Any) -> None:
        columns = _columns(y_pred)
        header = list(columns)
        if self.file is None:
            self.header = header
            self.file = open(self.temporary(), "w", newline="", encoding="utf-8")  # noqa: SIM115 - closed in close()
            self.writer = csv.writer(self.file)
            self.writer.writerow(header)
        elif header != self.header:
            raise ConfigError(
                f"CSV columns changed between batches: {', '.join(header)} after {', '.join(self.header or [])}"
            )
        values = list(columns.values())
        lengths = {len(v) for v in values}
        if len(lengths) != 1:
            raise ConfigError(f"CSV columns of different lengths in one batch: {describe(y_pred)}")
        self.writer.writerows(zip(*values))
        self.file.flush()
        self.rows += lengths.pop()

    def close(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None


def _columns(y_pred: Any) -> dict[str, list[Any]]:
    """CSV columns of one batch: ``output`` or ``output_0..K-1`` for a tensor; ``key``/``key_j`` for a dict."""
    items = y_pred.items() if isinstance(y_pred, Mapping) else [("output", y_pred)]
    columns: dict[str, list[Any]] = {}
    for key, value in items:
        if isinstance(value, torch.Tensor) and value.ndim == 2:
            for j, column in enumerate(value.T.tolist()):
                columns[f"{key}_{j}"] = column
        elif isinstance(value, torch.Tensor) and value.ndim == 1 or isinstance(value, list):
            columns[str(key)] = value.tolist() if isinstance(value, torch.Tensor) else value
        else:
            raise ConfigError(
                f"a CSV row holds up to one value per column, but the outputs are {describe(y_pred)}; "
                "write '.npy' or '.pt' for outputs of more dimensions"
            )
    return columns


def _owned(obj: Any) -> Any:
    """Copies of tensors made under inference mode, which could not be modified in place outside it."""
    return map_tensors(lambda t: t.clone() if t.is_inference() else t, obj)
