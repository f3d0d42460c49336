"""The exact fast path: a single-process DataLoader's batches, without the DataLoader's own overheads.

A ``DataLoader(TensorDataset(x, y), batch_size=64)`` fetches every batch one sample at a time
(``dataset[i]`` for each index) and then stacks the samples: measured here, that is about 40% of a small
model's training step. The same batch is ``[x[idx], y[idx]]`` for the sampler's indices ``idx`` -- one
gather per tensor, or a slice (a view, no copy) when the indices are a contiguous run.

Any other map-style dataset is fetched and collated exactly as the DataLoader does it (``__getitems__``
or ``dataset[i]`` per index, then the loader's ``collate_fn``), called directly: the DataLoader
iterator's per-batch bookkeeping around that (a profiler range entered even when no profiler runs,
counters and checks for iterable datasets) costs ~8 us a batch, ~3% of the small model's step. Under a
running profiler each batch still gets its ``enumerate(DataLoader)...`` range.

:func:`fast_batches` returns such an iterable only when the result is *exactly* the DataLoader's:

* the batches are equal bit for bit (values, dtype, shape, contiguous like ``default_collate``'s
  output, a list ``[x, y]`` as ``default_collate`` makes of tuple samples), in the same order;
* iterating it makes the same draws from torch's global RNG (and from the loader's ``generator``), in
  the same order: the DataLoader draws a base seed when its iterator is created, and the samplers draw
  what they draw -- they are the loader's own samplers, iterated exactly as the DataLoader iterates them.
  So shuffles, dropout masks and everything after them match a plain loop over the loader.

It qualifies: a ``torch.utils.data.DataLoader`` (not a subclass) over a map-style dataset, with batching,
``num_workers=0``, no ``pin_memory``. Batches are gathered from tensors for a ``TensorDataset`` or
(nested) ``Subset`` s of one with the default collate; any sampler or batch sampler works, since its
indices are used as it yields them; a batch that is not a flat list of integer indices (possible only
with a custom sampler) is fetched and collated the DataLoader's own way. Anything else gets ``None``,
and the caller iterates the loader as usual.

Views are handed out for contiguous runs, so modifying a batch in place would modify the dataset (the
DataLoader's batches are copies): that is detected at the next batch and raised as an error.
"""

from __future__ import annotations

import array
import weakref
from collections.abc import Iterator
from typing import Any

import torch
from torch.autograd import _profiler_enabled
from torch.autograd.profiler import record_function
from torch.utils.data import DataLoader, IterableDataset, Subset, TensorDataset
from torch.utils.data._utils.collate import collate_tensor_fn, default_collate, default_collate_fn_map

from .devices import streams
from .errors import ConfigError

__all__ = [
    "DATA_ON_DEVICE_FRACTION",
    "FastBatches",
    "FastIterator",
    "GatherIterator",
    "check_data_on_device",
    "fast_batches",
]

# data_on_device="auto" copies the tensors to a CUDA (or XPU) device when they take at most this fraction of its
# free memory, leaving the rest to the model, its activations and the optimizer state.
DATA_ON_DEVICE_FRACTION = 0.25


def check_data_on_device(value: Any) -> bool | str:
    """Validate a ``data_on_device`` option: ``True``, ``False`` or ``'auto'``."""
    if value is True or value is False or (isinstance(value, str) and value == "auto"):
        return value
    raise ConfigError(f"data_on_device must be True, False or 'auto', not {value!r}")


def fast_batches(
    loader: Any, device: str | torch.device | None = None, data_on_device: bool | str = "auto"
) -> FastBatches | None:
    """An iterable with exactly ``loader``'s batches and RNG draws, or ``None`` where that is not possible.

    Args:
        loader: usually a DataLoader; anything that does not qualify (see the module docstring) gets None.
        device: the run's device. Batches come from tensors there when ``data_on_device`` says so: the
            dataset's tensors are copied there once (the copy is kept while the tensors live, and renewed
            if they are modified) and every batch is gathered on the device, with no per-step copy.
        data_on_device: ``True`` (copy to any device other than the CPU), ``False`` (gather where the
            tensors are), ``'auto'`` (copy to a CUDA or XPU device when the tensors take at most
            ``DATA_ON_DEVICE_FRACTION`` of its free memory).

    Create it once per pass: it reads the dataset's tensors and subset indices when it is created.
    """
    data_on_device = check_data_on_device(data_on_device)
    if not _loader_qualifies(loader):
        return None
    resolved = _resolve_dataset(loader.dataset) if _collates_by_default(loader) else None
    if resolved is None:  # fetched and collated sample by sample, as the DataLoader does it
        return FastBatches(loader, (), None, None)
    tensors, index_map = resolved
    target = torch.device(device) if device is not None else None
    if not _copy_to_device(tensors, target, data_on_device):
        target = None
    return FastBatches(loader, tensors, index_map, target)


class FastBatches:
    """Iterates like ``loader``: the same batches, the same RNG draws, the same ``len``.

    ``tensors`` empty: every batch is fetched and collated sample by sample, the DataLoader's own way.
    """

    def __init__(
        self,
        loader: DataLoader,
        tensors: tuple[torch.Tensor, ...],
        index_map: torch.Tensor | None,
        device: torch.device | None,
    ):
        self.loader = loader
        self.tensors = tensors
        self.index_map = index_map  # dataset position -> row of the tensors, for Subsets
        self.device = device  # where batches are gathered from a cached copy; None: where the tensors are
        where = f" on {device}" if device is not None else ""
        # what the run says once (None: nothing the user would notice, the batches are fetched as before)
        self.description = (
            f"fast path: batches are gathered{where} directly from the TensorDataset's {len(tensors)} "
            "in-memory tensor(s) -- the same batches and random draws as the DataLoader, without its "
            "per-sample indexing and stacking (fast_path=False turns it off)"
            if tensors
            else None
        )

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> FastIterator:
        # The draws of DataLoader.__iter__ (_BaseDataLoaderIter.__init__), in its order: the batch
        # sampler's iterator is created first (a user's may draw eagerly), then the base seed is drawn
        # from the loader's generator, or from the global RNG when it has none. Samplers draw the rest
        # as they are iterated.
        batch_indices = iter(self.loader.batch_sampler)
        torch.empty((), dtype=torch.int64).random_(generator=self.loader.generator)
        sources = (
            self.tensors if self.device is None else tuple(_on_device(t, self.device) for t in self.tensors)
        )
        if not sources:
            return FastIterator(self.loader, batch_indices)
        return GatherIterator(self.loader, batch_indices, self.index_map, sources)


class FastIterator:
    """One pass of :class:`FastBatches`; like the DataLoader's iterator, it fetches each batch on demand.

    This class fetches each batch the DataLoader's way; :class:`GatherIterator` gathers it from tensors.
    """

    def __init__(self, loader: DataLoader, batch_indices: Iterator[Any]):
        self._indices = batch_indices
        # read once per pass, as the DataLoader's iterator reads them when it is created
        self._dataset, self._collate = loader.dataset, loader.collate_fn
        self._getitems = getattr(self._dataset, "__getitems__", None)

    def __iter__(self) -> FastIterator:
        return self

    def __next__(self) -> Any:
        if _profiler_enabled():  # a profile shows each batch's loading, as it does the DataLoader's
            with record_function(_PROFILE_NAME):
                return self._fetch(next(self._indices))
        return self._fetch(next(self._indices))

    def skip(self, n: int) -> int:
        """Advance by up to ``n`` batches without fetching them (to resume a pass); returns how many.

        Like skipping a DataLoader iterator's indices: the sampler makes its draws, no data is read.
        """
        for done in range(n):
            if next(self._indices, _END) is _END:
                return done
        return n

    def _fetch(self, indices: Any) -> Any:
        """One batch the DataLoader's way (its ``_MapDatasetFetcher``): per-sample fetch, then collate."""
        samples = self._getitems(indices) if self._getitems else [self._dataset[i] for i in indices]
        return self._collate(samples)


class GatherIterator(FastIterator):
    """One pass over a TensorDataset's tensors: each batch gathered (or sliced) with the sampler's indices."""

    def __init__(
        self,
        loader: DataLoader,
        batch_indices: Iterator[Any],
        index_map: torch.Tensor | None,
        sources: tuple[torch.Tensor, ...],
    ):
        super().__init__(loader, batch_indices)
        self._index_map = index_map
        self._sources = sources
        self._lent: list[int] | None = None  # the sources' versions when views of them were handed out

    def __next__(self) -> list[torch.Tensor]:
        if self._lent is not None:  # checked before the next batch, and when the pass ends
            if any(t._version != v for t, v in zip(self._sources, self._lent)):
                raise ConfigError(
                    "a batch of the fast path was modified in place (e.g. by x.mul_() or an inplace=True "
                    "layer applied to the input); its tensors are views of the dataset, so the dataset "
                    "changed too. Modify a copy instead (x = x * 2), or pass fast_path=False"
                )
            self._lent = None
        return super().__next__()

    def _fetch(self, indices: Any) -> list[torch.Tensor]:
        """One batch; a slice of the sources where the indices are a contiguous run (noted in ``_lent``)."""
        idx = _index_tensor(indices)
        if idx is None:  # not a flat list of integers: the DataLoader's own per-sample fetch and collate
            return super()._fetch(indices)
        if self._index_map is not None:
            idx = self._index_map[idx]
        first, last = int(idx[0]), int(idx[-1])
        if (
            0 <= first
            and last - first == len(idx) - 1
            and last < len(self._sources[0])
            and torch.equal(idx, torch.arange(first, last + 1))
        ):
            # A contiguous run: slices. default_collate's result is always contiguous; so is a slice of a
            # contiguous tensor (a view), and .contiguous() copies the slice of any other.
            self._lent = [t._version for t in self._sources]
            return [t[first : last + 1].contiguous() for t in self._sources]
        # Advanced indexing (not index_select) reads negative indices as the dataset's t[i] does.
        # data on the GPU, XPU (a source on another device gets the CPU indices)
        if streams(self._sources[0].device) is not None:
            on_gpu = _to_gpu(idx, self._sources[0].device)
            return [t[on_gpu if t.device == on_gpu.device else idx].contiguous() for t in self._sources]
        return [t[idx].contiguous() for t in self._sources]


def _to_gpu(idx: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``idx`` copied to ``device`` without a host-device synchronisation.

    A plain ``.to(device)`` copies from pageable memory and then waits for the stream, so the host
    would wait every batch for all the GPU work queued so far; from pinned memory, ``non_blocking``
    copies are queued on the stream like a kernel.
    """
    return idx.pin_memory().to(device, non_blocking=True)


_END = object()
_PROFILE_NAME = "enumerate(DataLoader)#FastIterator.__next__"  # the prefix profile viewers look for


def _loader_qualifies(loader: Any) -> bool:
    if type(loader) is not DataLoader:  # a subclass may iterate differently
        return False
    if loader.num_workers != 0 or loader.pin_memory or loader.timeout != 0:
        return False
    if loader.batch_sampler is None:  # batch_size=None: no batching
        return False
    return not isinstance(loader.dataset, IterableDataset)


def _collates_by_default(loader: DataLoader) -> bool:
    """Whether ``loader`` collates with ``default_collate``, unextended (what gathering tensors reproduces)."""
    if loader.collate_fn is not default_collate:
        return False
    # default_collate can be extended by editing default_collate_fn_map in place; it must still stack
    # tensors, and turn the tuple samples into a list of them.
    return default_collate_fn_map.get(torch.Tensor) is collate_tensor_fn and not any(
        isinstance((), kind) for kind in default_collate_fn_map
    )


def _resolve_dataset(dataset: Any) -> tuple[tuple[torch.Tensor, ...], torch.Tensor | None] | None:
    """The TensorDataset's tensors and the map from dataset positions to their rows (None: identity)."""
    subset_indices = []
    while type(dataset) is Subset:
        subset_indices.append(dataset.indices)
        dataset = dataset.dataset
    if type(dataset) is not TensorDataset or not dataset.tensors:
        return None
    tensors = tuple(dataset.tensors)
    rows = tensors[0].shape[0] if tensors[0].ndim else -1
    for t in tensors:
        # Exactly torch.Tensor (a subclass may index or stack differently), strided, dense.
        if type(t) is not torch.Tensor or t.layout != torch.strided or t.is_quantized or t.is_nested:
            return None
        if t.ndim == 0 or t.shape[0] != rows:
            return None
    index_map = None
    for indices in reversed(subset_indices):  # innermost first
        positions = _index_tensor(indices)
        size = rows if index_map is None else len(index_map)
        if positions is None or len(positions) == 0:
            return None
        positions = torch.where(positions < 0, positions + size, positions)  # Python's negative indices
        if int(positions.min()) < 0 or int(positions.max()) >= size:
            return None  # out of range: the DataLoader raises its own error
        index_map = positions if index_map is None else index_map[positions]
    return tensors, index_map


def _index_tensor(indices: Any) -> torch.Tensor | None:
    """``indices`` as a 1-D int64 tensor, or None when they are not a non-empty flat list of integers."""
    if type(indices) is list and indices and set(map(type, indices)) == {int}:
        # What BatchSampler yields; this way is 3x faster than torch.as_tensor (bools are excluded above:
        # t[True] is not t[1]).
        try:
            return torch.frombuffer(array.array("q", indices), dtype=torch.int64)
        except OverflowError:
            return None
    try:
        idx = torch.as_tensor(indices)
    except (TypeError, ValueError, RuntimeError):
        return None
    if idx.ndim != 1 or len(idx) == 0 or idx.dtype == torch.bool:
        return None
    if idx.dtype.is_floating_point or idx.dtype.is_complex:
        return None
    return idx.to(device="cpu", dtype=torch.int64)


def _copy_to_device(
    tensors: tuple[torch.Tensor, ...], device: torch.device | None, data_on_device: bool | str
) -> bool:
    if device is None or data_on_device is False or device.type == "cpu":
        return False
    if data_on_device is True:
        return True
    module = streams(device)  # torch.cuda, torch.xpu: they tell the free memory
    if module is None or not hasattr(module, "mem_get_info"):
        return False
    if all((device, id(t)) in _device_copies for t in tensors):  # copied by an earlier pass
        return True
    free, _ = module.mem_get_info(device)
    return sum(t.numel() * t.element_size() for t in tensors) <= DATA_ON_DEVICE_FRACTION * free


# (device, id(tensor)) -> (a weak reference to the tensor, its version when copied, the copy).
_device_copies: dict[tuple[torch.device, int], tuple[weakref.ref, int, torch.Tensor]] = {}


def _on_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """``t`` on ``device``, copied once and kept while ``t`` lives; copied again if ``t`` was modified."""
    key = (device, id(t))
    cached = _device_copies.get(key)
    if cached is not None and cached[0]() is t and cached[1] == t._version:
        return cached[2]
    copy = t.to(device)
    if copy is t:  # already there; caching it would keep it alive forever
        return t
    _device_copies[key] = (weakref.ref(t, lambda _, key=key: _device_copies.pop(key, None)), t._version, copy)
    return copy
