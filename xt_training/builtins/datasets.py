"""The built-in data sets: synthetic ones generated on the spot (seeded, learnable), CSV files and image folders.

Each factory returns :class:`xt_training.registry.Data`: loaders by split (``train``, ``val``, ``test``),
the facts a model needs (``info``) and the suggested loss and metrics. Synthetic data lives in tensors
(``TensorDataset``); it depends only on its options (``seed`` included), not on the global RNG, so
runs with different ``--seed`` values train on the same data.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader, Subset, TensorDataset

from .. import distributed
from ..devices import default_device, streams
from ..errors import ConfigError, first_line
from ..preprocessing import normalization_in
from ..registry import Data
from . import table

__all__ = [
    "synthetic_classification",
    "synthetic_images",
    "synthetic_sequences",
    "csv_table",
    "image_folder",
    "image_preprocessing",
    "image_transform",
]

_CLASSIFICATION = {"loss": "cross-entropy", "metrics": ["accuracy"]}
_REGRESSION = {"loss": "mse", "metrics": ["mse", "mae", "r2"]}


def _check(batch_size: int, val_fraction: float, test_fraction: float, n_samples: int | None = None) -> None:
    if batch_size < 1:
        raise ConfigError(f"batch_size must be a positive integer, got {batch_size}")
    if n_samples is not None and n_samples < 1:
        raise ConfigError(f"n_samples must be a positive integer, got {n_samples}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError(
            f"val_fraction ({val_fraction}) and test_fraction ({test_fraction}) must be >= 0 and sum to "
            "less than 1, leaving examples to train on"
        )


def _split_sizes(n: int, val_fraction: float, test_fraction: float) -> tuple[int, int, int]:
    n_val, n_test = math.floor(n * val_fraction), math.floor(n * test_fraction)
    if n - n_val - n_test < 1:
        raise ConfigError(f"{n} examples leave none to train on after the val/test split; use more examples")
    return n - n_val - n_test, n_val, n_test


def _loaders(x: torch.Tensor, y: torch.Tensor, sizes: tuple[int, int, int], batch_size: int) -> dict:
    """Consecutive train/val/test slices of ``(x, y)`` (shuffle first if their order means anything)."""
    loaders: dict[str, DataLoader] = {}
    start = 0
    for split, size in zip(("train", "val", "test"), sizes):
        if size:
            subset = TensorDataset(x[start : start + size], y[start : start + size])
            loaders[split] = DataLoader(subset, batch_size=batch_size, shuffle=split == "train")
        start += size
    return loaders


def synthetic_classification(
    *,
    n_samples: int = 2000,
    n_features: int = 20,
    num_classes: int = 3,
    noise: float = 0.5,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
) -> Data:
    """Tabular classification: Gaussian features, the label is the argmax of a noisy random linear map.

    Args:
        n_samples: examples generated, before the split.
        n_features: features per row.
        num_classes: classes of the label.
        noise: standard deviation of the noise added to the linear map (more: harder).
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n_samples, n_features, generator=g)
    w = torch.randn(n_features, num_classes, generator=g)
    y = (x @ w + noise * torch.randn(n_samples, num_classes, generator=g)).argmax(1)
    sizes = _split_sizes(n_samples, val_fraction, test_fraction)
    info = {"num_classes": num_classes, "in_features": n_features}
    return Data(_loaders(x, y, sizes, batch_size), info, **_CLASSIFICATION)


def synthetic_images(
    *,
    n_samples: int = 2000,
    image_size: int = 32,
    in_channels: int = 3,
    num_classes: int = 10,
    noise: float = 4.0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
) -> Data:
    """Images: each class a smooth random pattern (4x4 noise upsampled), plus per-pixel Gaussian noise.

    Args:
        n_samples: examples generated, before the split.
        image_size: height and width of the square images.
        in_channels: channels per image.
        num_classes: classes, one pattern each.
        noise: standard deviation of the per-pixel noise (more: harder).
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    g = torch.Generator().manual_seed(seed)
    coarse = torch.randn(num_classes, in_channels, 4, 4, generator=g)
    templates = torch.nn.functional.interpolate(coarse, size=image_size, mode="bilinear", align_corners=False)
    y = torch.randint(0, num_classes, (n_samples,), generator=g)
    x = templates[y] + noise * torch.randn(n_samples, in_channels, image_size, image_size, generator=g)
    sizes = _split_sizes(n_samples, val_fraction, test_fraction)
    info = {
        "num_classes": num_classes,
        "in_channels": in_channels,
        "image_size": image_size,
        "in_features": in_channels * image_size * image_size,
    }
    return Data(_loaders(x, y, sizes, batch_size), info, **_CLASSIFICATION)


def synthetic_sequences(
    *,
    n_samples: int = 2000,
    seq_len: int = 20,
    input_size: int = 32,
    num_classes: int = 2,
    signal: float = 1.0,
    val_fraction: float = 0.2,
    test_fraction: float = 0.2,
    batch_size: int = 64,
    seed: int = 0,
) -> Data:
    """Sequences ``(N, seq_len, input_size)`` of noise; a class-specific pattern appears in a random window.

    Args:
        n_samples: examples generated, before the split.
        seq_len: time steps per sequence.
        input_size: features per time step.
        num_classes: classes, one pattern each.
        signal: the pattern's strength against the unit noise (less: harder).
        val_fraction: the share of the examples in the validation split.
        test_fraction: the share of the examples in the test split.
        batch_size: examples per batch, in every split.
        seed: seeds the generated data (not the run's ``--seed``: every run sees the same data).
    """
    _check(batch_size, val_fraction, test_fraction, n_samples)
    if seq_len < 1 or input_size < 1:
        raise ConfigError(f"seq_len and input_size must be positive, got {seq_len} and {input_size}")
    g = torch.Generator().manual_seed(seed)
    patterns = torch.randn(num_classes, input_size, generator=g)
    y = torch.randint(0, num_classes, (n_samples,), generator=g)
    x = torch.randn(n_samples, seq_len, input_size, generator=g)
    window = max(1, seq_len // 4)
    start = torch.randint(0, seq_len - window + 1, (n_samples,), generator=g)
    steps = torch.arange(seq_len)
    inside = (steps >= start[:, None]) & (steps < start[:, None] + window)  # (N, T)
    x += signal * inside[:, :, None] * patterns[y][:, None, :]
    sizes = _split_sizes(n_samples, val_fraction, test_fraction)
    info = {
        "num_classes": num_classes,
        "input_size": input_size,
        "seq_len": seq_len,
        "in_features": seq_len * input_size,
    }
    return Data(_loaders(x, y, sizes, batch_size), info, **_CLASSIFICATION)


def csv_table(
    *,
    path: str,
    label: str = "label",
    task: str | None = None,
    features: str | list[str] | None = None,
    ignore: str | list[str] | None = None,
    id: str | None = None,
    one_hot: str | list[str] | None = None,
    na: str = "error",
    test_path: str | None = None,
    predict_path: str | None = None,
    delimiter: str = ",",
    standardize: bool = True,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    batch_size: int = 64,
    seed: int = 0,
) -> Data:
    """A CSV file with a header: feature columns and a label column (class names, or numbers to regress on).

    ``task``: ``'classification'`` (one class per distinct label) or ``'regression'`` (the label is a
    number; MSE loss, regression metrics); by default integers and text are classes, numbers with decimals
    regression, and the inference is in ``data.notes``. The model reads ``features`` (columns, ``'a,b'`` or
    a list; default: all but the label and ``id``) less ``ignore``; the columns named by ``one_hot`` hold
    text (or codes) and become one 0/1 feature per value of the training file. ``id`` names a column that
    identifies a row: not a feature, it goes into the predictions of ``xt predict`` beside them. ``na``: a
    missing cell (empty, ``NA``, ``NaN``, ``null``...) is an ``'error'``; ``'drop'`` leaves out the rows
    with one; ``'mean'`` or ``'median'`` fills a number in from the training split (a one-hot column's
    values are all 0.0). The encoding is recorded in ``info['table']`` (see :mod:`~xt_training.builtins.table`).

    Rows are shuffled (seeded) and split into train/val(/test); ``test_path`` names a separate test file.
    With ``standardize`` the features are scaled by the training split's mean and standard deviation
    (``info['normalization']``, with the fill values). ``info['classes']`` maps class index to the label as
    written in the file. ``predict_path`` names a file of inputs to predict (``xt predict --input``): its
    columns are found by name (others may be there, the label too); it becomes the split ``predict``,
    which yields the features alone, encoded and standardized as the training rows are.

    Args:
        path: the CSV file.
        label: the name of the label column.
        task: classification or regression; default: inferred from the label column.
        features: the feature columns ('a,b' or a list); default: all but the label and id.
        ignore: columns left out of the features.
        id: a column identifying each row, carried into the predictions.
        one_hot: text (or code) columns encoded as one 0/1 feature per value of the training file.
        na: what a missing cell does: error, drop (the row), mean or median (filled in).
        test_path: a CSV file of test rows with the same columns; else ``test_fraction`` of the file.
        predict_path: a CSV file of inputs to predict, its columns found by name.
        delimiter: the character between the fields.
        standardize: scale the features by the training split's mean and standard deviation.
        val_fraction: the share of the rows in the validation split.
        test_fraction: the share of the rows in the test split (0: none, or ``test_path``).
        batch_size: examples per batch, in every split.
        seed: seeds the shuffle of the rows before the split.
    """
    _check(batch_size, val_fraction, test_fraction)
    if na not in table.NA_CHOICES:
        raise ConfigError(f"na must be one of {', '.join(table.NA_CHOICES)}, not {na!r}")
    data = table.read(path, delimiter)
    data.require([label], "name the label column with --data-opt label=NAME")
    one_hot = table.columns_option(one_hot, "one_hot")
    columns = table.feature_columns(
        data,
        label,
        table.columns_option(features, "features"),
        table.columns_option(ignore, "ignore"),
        id,
        one_hot,
    )
    table.check_numbers(data, [c for c in columns if c not in one_hot], id)
    if na == "drop":
        data = data.without_missing([*columns, label])
        if not data.rows:
            raise ConfigError(f"every row of '{path}' has a missing value; na=mean|median fills them in")
    values = table.labels(data, label, na)
    if na == "error":  # before the shuffle: the error names the file's first missing value
        table.check_complete(data, columns)
    order = torch.randperm(len(data.rows), generator=torch.Generator().manual_seed(seed)).tolist()
    data, values = data.subset(order), [values[i] for i in order]
    task, note = table.task_of(values, task, label)
    sizes = _split_sizes(len(data.rows), val_fraction, test_fraction)
    record = table.fit(
        data.subset(range(sizes[0])), data, columns, one_hot, na, id=id, label=label, task=task
    )
    classes = table.categories(values) if task == "classification" else None

    def targets(file: table.Table, values: list[str]) -> torch.Tensor:
        """Class indices ``(N,)``, or the numbers to regress on ``(N, 1)``."""
        if classes is None:
            return torch.tensor(table.numbers(file, label, values)).unsqueeze(1)
        unknown = sorted(set(values) - set(classes))
        if unknown:
            raise ConfigError(f"test file '{file.path}' has labels not in '{path}': {', '.join(unknown[:5])}")
        index = {c: i for i, c in enumerate(classes)}
        return torch.tensor([index[v] for v in values])

    x, y = torch.tensor(table.encode(data, record)), targets(data, values)
    ids: dict[str, list[str]] = {}  # per split: the id of each row, in the loader's order
    if id is not None:
        bounds = [0, sizes[0], sizes[0] + sizes[1], len(values)]
        ids = {s: data.values(id)[bounds[i] : bounds[i + 1]] for i, s in enumerate(("train", "val", "test"))}
    test = None
    if test_path is not None:
        test_file = table.read(test_path, delimiter, "test file")
        test_file.require([*columns, label], "a test file has the training file's columns")
        if na == "drop":
            test_file = test_file.without_missing([*columns, label])
        test = (
            torch.tensor(table.encode(test_file, record)),
            targets(test_file, table.labels(test_file, label, na)),
        )
        if id is not None:
            ids["test"] = test_file.values(id) if id in test_file.header else []
    predict = None
    if predict_path is not None:
        predict_file = table.read(predict_path, delimiter, "predict file")
        predict_file.require(
            [*columns, *([id] if id else [])], "rows to predict need the columns the model was trained on"
        )
        predict = torch.tensor(table.encode(predict_file, record))
        if id is not None:
            ids["predict"] = predict_file.values(id)
    normalization = None
    if standardize:
        train = x[: sizes[0]]
        mean, std = train.mean(0), train.std(0).nan_to_num(0.0)
        std = std.where(std > 0, 1.0)  # a constant column (a category the training split lacks) stays put
        normalization = {"mean": mean.tolist(), "std": std.tolist()}
        x = (x - mean) / std
        test = ((test[0] - mean) / std, test[1]) if test is not None else None
        predict = (predict - mean) / std if predict is not None else None
    if record["fill"]:  # missing values filled in: an exported model fills a NaN input in the same way
        normalization = normalization or {"mean": [0.0] * x.shape[1], "std": [1.0] * x.shape[1]}
        normalization["fill"] = [record["fill"].get(name) for name in record["inputs"]]
    loaders = _loaders(x, y, sizes, batch_size)
    if test is not None:
        loaders["test"] = DataLoader(TensorDataset(*test), batch_size=batch_size)
    if predict is not None:
        loaders["predict"] = DataLoader(TensorDataset(predict), batch_size=batch_size)
    for split, loader in loaders.items():
        if split != "train" and ids.get(split):  # the training loader shuffles: its ids would not line up
            loader.dataset.ids, loader.dataset.id_column = ids[split], id
    info: dict[str, Any] = {
        "num_classes": len(classes) if classes is not None else 1,
        "in_features": x.shape[1],
        "features": record["inputs"],
        "table": record,
    }
    if classes is not None:
        info["classes"] = classes
    if normalization is not None:  # an exported model applies it, so it takes the file's raw features
        info["normalization"] = normalization
        for loader in loaders.values():  # declared on the data sets too: F.train records it from the loaders
            loader.dataset.normalization = normalization
    kind = _CLASSIFICATION if classes is not None else _REGRESSION
    return Data(loaders, info, **kind, notes=[note] if note else [])


_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
_PREPROCESSING_KEYS = {"resize", "crop", "interpolation", "mean", "std"}


def image_preprocessing(
    preprocessing: Mapping[str, Any] | None, image_size: int | None, normalize: bool = True
) -> dict[str, Any]:
    """How evaluation images are prepared: ``{'resize', 'crop', 'interpolation', 'mean', 'std'}``.

    ``preprocessing`` is what a pretrained model asks for (the ``preprocessing`` its plugin registered
    with the name, see ``register_models``): the shorter side resized to ``resize`` pixels (or the whole
    image to ``[height, width]``) with ``interpolation`` (``'bilinear'``, ``'bicubic'``, ...), a square
    center ``crop``, ``ToTensor`` and ``(x - mean) / std`` per channel. Without one: ``image_size``
    (default 224) for both resize and crop, bilinear, ImageNet's mean and std. An ``image_size`` other
    than the model's crop makes the crop that size and scales the resize in the same ratio (rounded
    down). Without ``normalize``, no mean and std. The result is what ``info['preprocessing']`` records
    and :func:`image_transform` applies.
    """
    if preprocessing is None:
        size = image_size or 224
        preprocessing = {
            "resize": size,
            "crop": size,
            "interpolation": "bilinear",
            "mean": _IMAGENET_MEAN,
            "std": _IMAGENET_STD,
        }
    resize = preprocessing.get("resize") if isinstance(preprocessing, Mapping) else None
    sides = list(resize) if isinstance(resize, (list, tuple)) else [resize]
    if (
        not isinstance(preprocessing, Mapping)
        or not _PREPROCESSING_KEYS <= set(preprocessing)
        or not (len(sides) in (1, 2) and all(map(_positive, [*sides, preprocessing["crop"]])))
    ):
        raise ConfigError(
            f"an image preprocessing is a dict of {', '.join(sorted(_PREPROCESSING_KEYS))} (crop a positive "
            f"integer, resize one or [height, width]), not {preprocessing!r}"
        )
    crop = preprocessing["crop"]
    if image_size is not None and image_size != crop:
        sides, crop = [side * image_size // crop for side in sides], image_size
    prepared = {
        "resize": sides if isinstance(resize, (list, tuple)) else sides[0],
        "crop": crop,
        "interpolation": preprocessing["interpolation"],
    }
    if normalize:  # lists of floats, as config.json gives them back to xt predict, which compares them
        prepared.update({key: [float(v) for v in preprocessing[key]] for key in ("mean", "std")})
    return prepared


def _positive(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def image_transform(prepared: Mapping[str, Any], *, augment: Sequence[Any] | None = None) -> Any:
    """The torchvision transform of :func:`image_preprocessing`'s record; ``augment`` (transforms of PIL
    images: a training augmentation) replaces its resize and center crop."""
    from torchvision import transforms

    try:
        interpolation = transforms.InterpolationMode(prepared["interpolation"])
    except ValueError:
        modes = ", ".join(m.value for m in transforms.InterpolationMode)
        raise ConfigError(
            f"image interpolation {prepared['interpolation']!r} is not one of torchvision's ({modes})"
        ) from None
    if augment is None:
        augment = [
            transforms.Resize(prepared["resize"], interpolation),
            transforms.CenterCrop(prepared["crop"]),
        ]
    steps = [*augment, transforms.ToTensor()]
    if "mean" in prepared:
        steps.append(transforms.Normalize(prepared["mean"], prepared["std"]))
    return transforms.Compose(steps)


def image_folder(
    *,
    root: str,
    image_size: int | None = None,
    normalize: bool = True,
    preprocessing: dict[str, Any] | None = None,
    predict_path: str | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    batch_size: int = 32,
    num_workers: int | None = None,
    seed: int = 0,
) -> Data:
    """Images in class folders (torchvision ImageFolder): resized, center-cropped, normalised.

    ``root`` is either one folder of class folders (split into train/val/test, seeded), or has
    ``train/`` and optionally ``val/`` and ``test/`` folders of class folders. ``predict_path`` is a folder
    of images without class folders (``xt predict --input``): the split ``predict`` yields them, in the
    order of their file names, prepared as the evaluation images are. ``num_workers``: DataLoader worker
    processes decoding the images; None fits the machine (see :func:`default_workers`).

    Images are resized and center-cropped to ``image_size`` (default 224) and ImageNet-normalised, or
    prepared as a pretrained model asks (``preprocessing``, which ``xt run`` passes from the model's
    plugin; an ``image_size`` then overrides its crop): see :func:`image_preprocessing`. How they were
    prepared is recorded in ``info['preprocessing']``.

    Args:
        root: a folder of class folders, or of ``train/`` (``val/``, ``test/``) folders of class folders.
        image_size: the side of the square the images are center-cropped to (default 224, or the model's).
        normalize: normalise with ImageNet's (or the pretrained model's) channel means and deviations.
        preprocessing: how a pretrained model asks its images prepared (``xt run`` passes it).
        predict_path: a folder of images to predict, without class folders.
        val_fraction: the share of the images in the validation split (one folder of class folders).
        test_fraction: the share of the images in the test split (one folder of class folders).
        batch_size: examples per batch, in every split.
        num_workers: DataLoader worker processes decoding images; None fits the machine.
        seed: seeds the split of one folder of class folders.
    """
    prepared = image_preprocessing(preprocessing, image_size, normalize)
    transform = image_transform(prepared)
    return folder_data(
        root,
        transform,
        transform,
        image_size=prepared["crop"],
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        predict_path=predict_path,
        preprocessing=prepared,
    )


def folder_data(
    root: str,
    train_transform: Any,
    eval_transform: Any,
    *,
    image_size: int,
    val_fraction: float,
    test_fraction: float,
    batch_size: int,
    num_workers: int | None,
    seed: int,
    predict_path: str | None = None,
    preprocessing: Mapping[str, Any] | None = None,
) -> Data:
    """Loaders over an image folder with separate training and evaluation transforms (see :func:`image_folder`).

    ``preprocessing``: how the evaluation images are prepared (:func:`image_preprocessing`), for ``info``.
    """
    from torchvision.datasets import ImageFolder

    _check(batch_size, val_fraction, test_fraction)
    base = Path(root)
    if not base.is_dir():
        raise ConfigError(f"image folder '{root}' does not exist; pass it with --data-opt root=DIR")

    def folder(path: Path, transform: Any) -> ImageFolder:
        try:
            return ImageFolder(str(path), transform=transform, loader=read_image)
        except (FileNotFoundError, RuntimeError) as e:
            raise ConfigError(
                f"image folder '{path}': {e}; it must hold one folder of images per class"
            ) from None

    workers = default_workers() if num_workers is None else num_workers
    if workers < 0:
        raise ConfigError(f"num_workers must be >= 0 (or None: fit the machine), not {num_workers}")
    # workers live across epochs (no new processes per pass); pinned batches copy to a GPU asynchronously
    options = {
        "batch_size": batch_size,
        "num_workers": workers,
        "persistent_workers": workers > 0,
        "pin_memory": streams(default_device()) is not None,  # CUDA, XPU
    }
    if (base / "train").is_dir():
        train = folder(base / "train", train_transform)
        loaders = {"train": DataLoader(train, shuffle=True, **options)}
        for split in ("val", "test"):
            if (base / split).is_dir():
                loaders[split] = DataLoader(folder(base / split, eval_transform), **options)
        classes = train.classes
    else:
        train, evaluation = folder(base, train_transform), folder(base, eval_transform)
        sizes = _split_sizes(len(train), val_fraction, test_fraction)
        order = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed)).tolist()
        bounds = [0, sizes[0], sizes[0] + sizes[1], len(train)]
        loaders = {}
        for i, split in enumerate(("train", "val", "test")):
            indices = order[bounds[i] : bounds[i + 1]]
            if indices:
                subset = Subset(train if split == "train" else evaluation, indices)
                loaders[split] = DataLoader(subset, shuffle=split == "train", **options)
        classes = train.classes
    if predict_path is not None:
        loaders["predict"] = DataLoader(ImageFiles(predict_path, eval_transform), **options)
    info = {
        "num_classes": len(classes),
        "classes": classes,
        "in_channels": 3,
        "image_size": image_size,
        "in_features": 3 * image_size * image_size,
    }
    # the evaluation images' Normalize: an exported model applies it, so it takes ToTensor's [0, 1] pixels
    normalization = normalization_in(eval_transform)
    if normalization is not None:
        info["normalization"] = normalization
    if preprocessing is not None:  # xt predict checks that its images are prepared so
        info["preprocessing"] = dict(preprocessing)
    return Data(loaders, info, **_CLASSIFICATION)


def read_image(path: str) -> Any:
    """The image at ``path`` as an RGB PIL image; one that cannot be read is bad input naming the file."""
    from PIL import UnidentifiedImageError
    from torchvision.datasets.folder import default_loader

    try:
        return default_loader(path)
    except OSError as e:  # not an image, a truncated file, ...
        reason = "not an image PIL can read" if isinstance(e, UnidentifiedImageError) else first_line(e)
        raise ConfigError(f"image '{path}' cannot be read ({reason}); remove or replace the file") from None


def default_workers() -> int:
    """DataLoader workers that fit this machine: one per core this process may use, less one for the
    training loop itself, shared among the processes of this machine under torchrun, at most 8."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    local_processes = distributed.env_int("LOCAL_WORLD_SIZE", 1, 1)
    return max(0, min(8, cores // local_processes - 1))


class ImageFiles(torch.utils.data.Dataset):
    """The images of one folder (no class folders), sorted by file name; items are transformed images only.

    ``ids`` are the images' paths, in that order: ``xt predict`` writes each beside its prediction.
    """

    id_column = "path"

    def __init__(self, root: str, transform: Any):
        from torchvision.datasets.folder import IMG_EXTENSIONS

        folder = Path(root)
        if not folder.is_dir():
            raise ConfigError(f"image folder '{root}' does not exist; pass a folder of images to predict")
        self.files = sorted(p for p in folder.iterdir() if p.suffix.lower() in IMG_EXTENSIONS)
        if not self.files:
            raise ConfigError(f"image folder '{root}' has no images ({', '.join(IMG_EXTENSIONS)})")
        self.transform = transform
        self.ids = [str(p) for p in self.files]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> Any:
        return self.transform(read_image(str(self.files[i])))
