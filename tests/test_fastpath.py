"""The exact fast path: the same batches and the same RNG draws as iterating the DataLoader."""

from __future__ import annotations

import gc
import inspect

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import (
    BatchSampler,
    ConcatDataset,
    DataLoader,
    Dataset,
    IterableDataset,
    RandomSampler,
    SequentialSampler,
    Subset,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
    random_split,
)
from torch.utils.data._utils.collate import default_collate_fn_map
from torch.utils.data.distributed import DistributedSampler

from xt_training import Runner
from xt_training.errors import ConfigError
from xt_training.fastpath import _device_copies, _on_device, check_data_on_device, fast_batches
from xt_training.loggers import LoggerGroup
from xt_training.utils import functional as F

N = 103  # not a multiple of any batch size below: the last batch is short


def data(n: int = N, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 5, generator=g), torch.randint(0, 3, (n,), generator=g)


def generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class EagerBatches:
    """A user batch sampler that draws its whole permutation when its iterator is created."""

    def __init__(self, n: int, size: int):
        self.n, self.size = n, size

    def __iter__(self):
        order = torch.randperm(self.n).tolist()
        return iter([order[i : i + self.size] for i in range(0, self.n, self.size)])

    def __len__(self):
        return -(-self.n // self.size)


class OddIndices:
    """A user batch sampler yielding what a TensorDataset also accepts: numpy arrays and integers,
    tensors, negative indices, lists of one-element lists (samples of shape (1, 5)), booleans."""

    def __iter__(self):
        yield np.array([4, 2, 9])
        yield torch.tensor([7, 8, 9])
        yield [-1, -3, 0]
        yield [[5], [1]]
        yield [10, 11, 12]
        yield [np.int64(3), np.int64(4)]
        yield [True, True]  # t[True] is all of t under a new dimension, not row 1

    def __len__(self):
        return 7


def dataset() -> TensorDataset:
    return TensorDataset(*data())


# Each factory builds the loader from scratch, with its generators freshly seeded, and returns it with the
# generators whose state must end up the same on both paths.
def make(**kwargs):
    def factory():
        return DataLoader(dataset(), **kwargs), []

    return factory


def with_generator(**kwargs):
    def factory():
        g = generator(7)
        return DataLoader(dataset(), generator=g, **kwargs), [g]

    return factory


def with_sampler(build):
    def factory():
        ds = dataset()
        sampler, gens = build(ds)
        return DataLoader(ds, batch_size=16, sampler=sampler), gens

    return factory


def with_batch_sampler(build):
    def factory():
        ds = dataset()
        batch_sampler, gens = build(ds)
        return DataLoader(ds, batch_sampler=batch_sampler), gens

    return factory


def own_generator(ds):
    g = generator(11)
    return RandomSampler(ds, generator=g), [g]


def on_dataset(build, **kwargs):
    def factory():
        return DataLoader(build(), **kwargs), []

    return factory


def nested_subset():
    ds = dataset()
    return Subset(Subset(ds, torch.randperm(N, generator=generator(3)).tolist()), range(10, 90))


def mixed_layouts():
    """Tensors that are not contiguous, of several dtypes: default_collate's output is contiguous."""
    g = generator(5)
    images = torch.randn(N, 3, 4, 4, generator=g).to(memory_format=torch.channels_last)
    columns = torch.randn(6, N, generator=g).T  # column-major, as numpy gives for a pandas frame
    return TensorDataset(
        images,
        columns,
        torch.arange(N, dtype=torch.int8),
        torch.rand(N, generator=g) > 0.5,
        torch.randn(N).half(),
    )


QUALIFYING = {
    "sequential": make(batch_size=16),
    "sequential_drop_last": make(batch_size=16, drop_last=True),
    "one_short_batch": make(batch_size=500),
    "shuffle": make(batch_size=16, shuffle=True),
    "shuffle_drop_last": make(batch_size=16, shuffle=True, drop_last=True),
    "shuffle_loader_generator": with_generator(batch_size=16, shuffle=True),
    "sequential_loader_generator": with_generator(batch_size=16),
    "random_with_replacement": with_sampler(
        lambda ds: (RandomSampler(ds, replacement=True, num_samples=70), [])
    ),
    "random_num_samples": with_sampler(lambda ds: (RandomSampler(ds, num_samples=250), [])),
    "random_own_generator": with_sampler(
        lambda ds: ((g := generator(11)) and RandomSampler(ds, generator=g), [g])
    ),
    "subset_random": with_sampler(lambda ds: (SubsetRandomSampler(list(range(0, N, 2))), [])),
    "subset_random_tensor_indices": with_sampler(lambda ds: (SubsetRandomSampler(torch.arange(5, 60)), [])),
    "weighted": with_sampler(lambda ds: (WeightedRandomSampler(torch.rand(N) + 0.1, 80), [])),
    "weighted_no_replacement": with_sampler(
        lambda ds: (WeightedRandomSampler(torch.linspace(0.1, 1, N), 60, replacement=False), [])
    ),
    "distributed": with_sampler(lambda ds: (DistributedSampler(ds, num_replicas=3, rank=1, seed=4), [])),
    "distributed_sequential": with_sampler(
        lambda ds: (DistributedSampler(ds, num_replicas=2, rank=0, shuffle=False), [])
    ),
    "batch_sampler": with_batch_sampler(
        lambda ds: (BatchSampler(RandomSampler(ds), 10, drop_last=False), [])
    ),
    "batch_sampler_sequential": with_batch_sampler(
        lambda ds: (BatchSampler(SequentialSampler(ds), 10, True), [])
    ),
    "user_batch_sampler_eager": with_batch_sampler(lambda ds: (EagerBatches(N, 12), [])),
    "user_batch_sampler_odd_indices": with_batch_sampler(lambda ds: (OddIndices(), [])),
    "subset_shuffle": on_dataset(lambda: Subset(dataset(), list(range(0, N, 3))), batch_size=8, shuffle=True),
    "subset_range_sequential": on_dataset(lambda: Subset(dataset(), range(20, 90)), batch_size=16),
    "subset_negative_indices": on_dataset(lambda: Subset(dataset(), [-1, -2, 5, 6, 7, -N]), batch_size=4),
    "nested_subsets": on_dataset(nested_subset, batch_size=16),
    "nested_subsets_shuffle": on_dataset(nested_subset, batch_size=16, shuffle=True),
    "random_split": on_dataset(lambda: random_split(dataset(), [0.7, 0.3], generator(9))[0], batch_size=16),
    "mixed_layouts_sequential": on_dataset(mixed_layouts, batch_size=16),
    "mixed_layouts_shuffle": on_dataset(mixed_layouts, batch_size=16, shuffle=True),
}


def run_epochs(iterable, epochs: int = 3) -> list[list]:
    batches = []
    for _ in range(epochs):
        # Something random between epochs, as a training step would do: the draws must interleave the same.
        batches.extend(iterable)
        torch.rand(3)
    return batches


def assert_same_batch(fast, slow) -> None:
    assert type(fast) is type(slow) is list
    assert len(fast) == len(slow)
    for f, s in zip(fast, slow):
        assert type(f) is torch.Tensor
        assert (f.dtype, f.shape, f.device) == (s.dtype, s.shape, s.device)
        assert f.is_contiguous() and s.is_contiguous()
        assert torch.equal(f, s)


@pytest.mark.parametrize("name", QUALIFYING)
def test_same_batches_and_random_draws_as_the_dataloader(name):
    factory = QUALIFYING[name]
    torch.manual_seed(123)
    loader, gens = factory()
    expected = run_epochs(loader)
    expected_states = [torch.get_rng_state(), *(g.get_state() for g in gens)]

    torch.manual_seed(123)
    loader, gens = factory()
    fast = fast_batches(loader)
    assert fast is not None
    assert len(fast) == len(loader)
    got = run_epochs(fast)

    assert len(got) == len(expected) > 0
    for f, s in zip(got, expected):
        assert_same_batch(f, s)
    for after, before in zip([torch.get_rng_state(), *(g.get_state() for g in gens)], expected_states):
        assert torch.equal(after, before)


def test_contiguous_runs_are_views_and_other_batches_gathers():
    x, y = data()
    fast = fast_batches(DataLoader(TensorDataset(x, y), batch_size=16))
    first = next(iter(fast))
    assert first[0]._base is x and first[0].data_ptr() == x.data_ptr()
    shuffled = next(iter(fast_batches(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True))))
    assert shuffled[0]._base is None


def test_no_sample_is_fetched_one_by_one(monkeypatch):
    calls = []
    getitem = TensorDataset.__getitem__
    monkeypatch.setattr(TensorDataset, "__getitem__", lambda self, i: calls.append(i) or getitem(self, i))
    loader = DataLoader(Subset(dataset(), range(50)), batch_size=8, shuffle=True)
    list(loader)
    assert len(calls) == 50  # the DataLoader's way
    calls.clear()
    list(fast_batches(loader))
    assert calls == []


class Squares(Dataset):
    """A map-style dataset of (x, y) pairs, not a TensorDataset."""

    def __len__(self):
        return 10

    def __getitem__(self, i):
        return torch.tensor([float(i)]), torch.tensor(i * i)


class SquaresGetitems(Squares):
    """Fetches a whole batch at once, as the DataLoader lets a dataset do."""

    def __getitems__(self, indices):
        return [(torch.tensor([float(i)]), torch.tensor(-i)) for i in indices]


class MyTensorDataset(TensorDataset):
    def __getitem__(self, i):
        return tuple(t[i] * 2 for t in self.tensors)


def sample_by_sample():
    """Loaders whose batches are fetched and collated sample by sample, the DataLoader's way."""
    ds = dataset()
    return {
        "collate_fn": DataLoader(ds, batch_size=8, collate_fn=lambda samples: samples),
        "map_dataset": DataLoader(Squares(), batch_size=4),
        "map_dataset_shuffle": DataLoader(Squares(), batch_size=3, shuffle=True),
        "map_dataset_generator": DataLoader(Squares(), batch_size=3, shuffle=True, generator=generator(5)),
        "getitems": DataLoader(SquaresGetitems(), batch_size=4, shuffle=True),
        "tensor_dataset_subclass": DataLoader(MyTensorDataset(*data()), batch_size=4),
        "concat": DataLoader(ConcatDataset([ds, ds]), batch_size=4, shuffle=True, drop_last=True),
        "subset_of_map_dataset": DataLoader(Subset(Squares(), [1, 2]), batch_size=4),
        "empty_subset": DataLoader(Subset(ds, []), batch_size=4),
        "parameter_tensor": DataLoader(
            TensorDataset(nn.Parameter(torch.randn(N, 2)), data()[1]), batch_size=4
        ),
        "list_of_pairs": DataLoader(list(zip(*data())), batch_size=16, shuffle=True),
    }


def assert_same_nested(fast, slow) -> None:
    assert type(fast) is type(slow)
    if isinstance(slow, torch.Tensor):
        assert (fast.dtype, fast.shape, fast.requires_grad) == (slow.dtype, slow.shape, slow.requires_grad)
        assert torch.equal(fast, slow)
    elif isinstance(slow, (list, tuple)):
        assert len(fast) == len(slow)
        for f, s in zip(fast, slow):
            assert_same_nested(f, s)
    else:
        assert fast == slow


@pytest.mark.parametrize("name", list(sample_by_sample()))
def test_other_map_datasets_get_the_dataloaders_batches_and_draws(name):
    torch.manual_seed(7)
    loader = sample_by_sample()[name]
    expected = run_epochs(loader)
    expected_states = [torch.get_rng_state(), *([loader.generator.get_state()] if loader.generator else [])]

    torch.manual_seed(7)
    loader = sample_by_sample()[name]
    fast = fast_batches(loader)
    assert fast is not None and fast.tensors == () and fast.description is None  # nothing to tell the user
    assert len(fast) == len(loader)
    got = run_epochs(fast)

    assert len(got) == len(expected)
    assert_same_nested(got, expected)
    states = [torch.get_rng_state(), *([loader.generator.get_state()] if loader.generator else [])]
    assert all(torch.equal(a, b) for a, b in zip(states, expected_states))


def test_a_bad_index_fails_as_in_the_dataloader():
    loader = DataLoader(Subset(dataset(), [0, N]), batch_size=4)
    with pytest.raises(IndexError) as expected:
        list(loader)
    with pytest.raises(IndexError) as got:
        list(fast_batches(loader))
    assert str(got.value) == str(expected.value)


def test_each_batch_gets_a_dataloader_range_under_the_profiler():
    fast = fast_batches(DataLoader(Squares(), batch_size=4))
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        assert len(list(fast)) == 3
    ranges = [e for e in prof.events() if e.name.startswith("enumerate(DataLoader)#")]
    assert len(ranges) == 4  # three batches and the call that ends the pass, as the DataLoader's iterator


def nonqualifying():
    ds = dataset()

    class MyLoader(DataLoader):
        pass

    class Stream(IterableDataset):
        def __iter__(self):
            return iter(zip(*data()))

    return {
        "workers": DataLoader(ds, batch_size=8, num_workers=1),
        "pin_memory": DataLoader(ds, batch_size=8, pin_memory=True),
        "no_batching": DataLoader(ds, batch_size=None),
        "iterable_dataset": DataLoader(Stream(), batch_size=8),
        "dataloader_subclass": MyLoader(ds, batch_size=8),
        "not_a_dataloader": [torch.zeros(2)],
    }


@pytest.mark.parametrize("name", list(nonqualifying()))
def test_other_loaders_get_none(name):
    assert fast_batches(nonqualifying()[name]) is None


def test_an_extended_default_collate_is_called_sample_by_sample(monkeypatch):
    loader = DataLoader(dataset(), batch_size=8)
    assert fast_batches(loader).tensors != ()
    monkeypatch.setitem(default_collate_fn_map, torch.Tensor, lambda batch, **_: torch.stack(batch) * 2)
    fast = fast_batches(loader)
    assert fast.tensors == ()
    assert_same_nested(next(iter(fast)), next(iter(loader)))
    monkeypatch.undo()
    monkeypatch.setitem(default_collate_fn_map, tuple, lambda batch, **_: batch)
    assert fast_batches(loader).tensors == ()


def test_sparse_tensors_are_not_gathered():
    loader = DataLoader(TensorDataset(torch.eye(N).to_sparse()), batch_size=4)
    assert fast_batches(loader).tensors == ()  # fetched and collated sample by sample, as the DataLoader does


def test_modifying_a_view_batch_in_place_is_an_error_naming_the_fix():
    x, y = data()
    original = x.clone()
    fast = fast_batches(DataLoader(TensorDataset(x, y), batch_size=16))
    with pytest.raises(ConfigError, match="modified in place.*fast_path=False"):
        for xb, _ in fast:
            xb.mul_(2)
    # Gathered batches are copies, as the DataLoader's are: modifying them leaves the dataset alone.
    x.copy_(original)
    for xb, _ in fast_batches(DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)):
        xb.mul_(2)
    assert torch.equal(x, original)


def test_data_on_device_copies_once_and_renews_a_modified_copy():
    # No GPU here: the meta device stands in for one (tensors with shapes, without data).
    x, y = data()
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    fast = fast_batches(loader, device="meta", data_on_device=True)
    assert "on meta" in fast.description
    batches = list(fast)
    assert all(b.device.type == "meta" for batch in batches for b in batch)
    assert [b.shape for b in batches[-1]] == [torch.Size([7, 5]), torch.Size([7])]
    meta = torch.device("meta")
    copy = _on_device(x, meta)
    assert _on_device(x, meta) is copy  # kept between passes
    x.add_(1)
    assert _on_device(x, meta) is not copy  # renewed after the data changed
    assert (meta, id(x)) in _device_copies
    key = (meta, id(x))
    del x, loader, fast, batches
    gc.collect()
    assert key not in _device_copies  # released with the tensor
    # On the CPU, or with data_on_device=False or 'auto' off CUDA, batches are gathered where the tensors are.
    for device, setting in (("cpu", True), ("meta", False), ("meta", "auto")):
        fast = fast_batches(DataLoader(dataset(), batch_size=8), device=device, data_on_device=setting)
        assert fast.device is None and next(iter(fast))[0].device.type == "cpu"


def test_bad_data_on_device_is_a_config_error():
    with pytest.raises(ConfigError, match="data_on_device must be True, False or 'auto', not 'yes'"):
        check_data_on_device("yes")
    with pytest.raises(ConfigError, match="data_on_device"):
        fast_batches(DataLoader(dataset(), batch_size=8), data_on_device=1)


# --- a plain training loop: the weights come out bit-identical ---------------------------------------
def train(batches, epochs: int = 3) -> list[torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    for _ in range(epochs):
        for x, y in batches:
            optimizer.zero_grad()
            nn.functional.cross_entropy(model(x), y).backward()
            optimizer.step()
    return [p.detach().clone() for p in model.parameters()]


TRAINING = {
    "shuffle": make(batch_size=16, shuffle=True),
    "drop_last": make(batch_size=16, shuffle=True, drop_last=True),
    "subset": on_dataset(lambda: Subset(dataset(), list(range(0, N, 2))), batch_size=8, shuffle=True),
    "weighted": with_sampler(lambda ds: (WeightedRandomSampler(torch.rand(N) + 0.1, N), [])),
    "loader_generator": with_generator(batch_size=16, shuffle=True),
    "sequential": make(batch_size=16),
}


@pytest.mark.parametrize("name", TRAINING)
def test_a_training_loop_ends_with_bit_identical_weights(name):
    factory = TRAINING[name]
    torch.manual_seed(123)
    loader, gens = factory()
    expected = train(loader)
    expected_states = [torch.get_rng_state(), *(g.get_state() for g in gens)]
    torch.manual_seed(123)
    loader, gens = factory()
    got = train(fast_batches(loader))
    for a, b in zip(got, expected):
        assert torch.equal(a, b)
    for after, before in zip([torch.get_rng_state(), *(g.get_state() for g in gens)], expected_states):
        assert torch.equal(after, before)


def test_skip_advances_the_samplers_without_reading_data():
    """Resuming a pass: skipping k batches draws what the DataLoader's skipped indices draw."""

    def factory():
        g = generator(2)
        return DataLoader(Subset(dataset(), range(90)), batch_size=8, shuffle=True, generator=g), g

    torch.manual_seed(5)
    loader, g = factory()
    it = iter(loader)
    for _ in range(4):
        it._next_index()  # how the Runner skips a DataLoader iterator's batches on resume
    expected, expected_states = list(it), (torch.get_rng_state(), g.get_state())

    torch.manual_seed(5)
    loader, g = factory()
    it = iter(fast_batches(loader))
    assert it.skip(4) == 4
    got = list(it)
    assert len(got) == len(expected) == len(loader) - 4
    for f, s in zip(got, expected):
        assert_same_batch(f, s)
    assert torch.equal(torch.get_rng_state(), expected_states[0]) and torch.equal(
        g.get_state(), expected_states[1]
    )
    assert iter(fast_batches(loader)).skip(100) == len(loader)


# --- through F.train / F.test (needs the Runner's fast_path option) ----------------------------------
needs_runner_option = pytest.mark.skipif(
    "fast_path" not in inspect.signature(Runner).parameters, reason="Runner has no fast_path option yet"
)


def train_and_test(save_dir, train_samples, val_samples, fast_path: bool):
    """F.train (with dropout and shuffling) then F.test: history, results, weights, the RNG state after."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 16), nn.ReLU(), nn.Dropout(0.3), nn.Linear(16, 3))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    train_loader = DataLoader(train_samples, batch_size=16, shuffle=True)
    val_loader = DataLoader(val_samples, batch_size=16)
    common = dict(loss_fn=nn.functional.cross_entropy, quiet=True, fast_path=fast_path)
    history = F.train(
        save_dir / str(fast_path), train_loader, model, optimizer, 3, val_loader=val_loader, **common
    )
    results = F.test({"test": val_loader}, model, **common)
    return history, results, [p.detach().clone() for p in model.parameters()], torch.get_rng_state()


def assert_same_run(fast, slow) -> None:
    assert fast[0] == slow[0] and fast[1] == slow[1]
    assert all(torch.equal(a, b) for a, b in zip(fast[2], slow[2]))
    assert torch.equal(fast[3], slow[3])


@needs_runner_option
def test_f_train_and_f_test_are_identical_with_and_without_the_fast_path(tmp_path, monkeypatch):
    calls = []
    getitem = TensorDataset.__getitem__
    monkeypatch.setattr(TensorDataset, "__getitem__", lambda self, i: calls.append(i) or getitem(self, i))
    train, val = Subset(dataset(), range(80)), Subset(dataset(), range(80, N))

    slow = train_and_test(tmp_path, train, val, fast_path=False)
    assert len(calls) == 3 * N + (N - 80)  # three epochs of train + val, then the test pass
    calls.clear()
    fast = train_and_test(tmp_path, train, val, fast_path=True)
    assert calls == []  # every batch came from the fast path
    assert_same_run(fast, slow)


@needs_runner_option
def test_a_map_dataset_trains_identically_with_and_without_the_fast_path(tmp_path):
    pairs = list(zip(*data()))  # a plain list of (x, y) samples: fetched one by one either way
    fast = train_and_test(tmp_path, pairs[:80], pairs[80:], fast_path=True)
    assert_same_run(fast, train_and_test(tmp_path, pairs[:80], pairs[80:], fast_path=False))


@needs_runner_option
@pytest.mark.skipif(not hasattr(LoggerGroup, "notice"), reason="loggers have no notice() yet")
def test_the_run_says_once_that_the_fast_path_is_used(tmp_path):
    class Notices:
        def __init__(self):
            self.messages = []

        def notice(self, message):
            if not message.startswith("model: "):  # the run's model summary, a notice of every run
                self.messages.append(message)

    def run(name, loader, **options):
        torch.manual_seed(0)
        model, logger = nn.Linear(5, 3), Notices()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.1)
        options.update(val_loader=loader, loggers=[logger], quiet=True)
        F.train(tmp_path / name, loader, model, optimizer, 2, nn.functional.cross_entropy, **options)
        return logger.messages

    messages = run("fast", DataLoader(dataset(), batch_size=16, shuffle=True))
    assert len(messages) == 1 and "fast path" in messages[0] and "fast_path=False" in messages[0]
    assert run("off", DataLoader(dataset(), batch_size=16, shuffle=True), fast_path=False) == []
    # not a TensorDataset: fetched sample by sample as the DataLoader does, nothing to say
    assert run("other", DataLoader(list(zip(*data())), batch_size=16)) == []
