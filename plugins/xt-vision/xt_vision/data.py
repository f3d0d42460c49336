"""Image data sets that need no download: torchvision's FakeData, and image folders with augmentation presets."""

from __future__ import annotations

from typing import Any, Literal

from xt_training.builtins.datasets import folder_data, image_preprocessing, image_transform
from xt_training.errors import ConfigError
from xt_training.registry import Data

_MEAN, _STD = [0.485, 0.456, 0.406], [0.229, 0.224, 0.225]


def fake_images(
    *,
    n_samples: int = 512,
    image_size: int = 224,
    num_classes: int = 10,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    batch_size: int = 32,
    num_workers: int = 0,
    seed: int = 0,
) -> Data:
    """Random RGB images with random labels (torchvision ``FakeData``); each image is the same on every read."""
    from torch.utils.data import DataLoader
    from torchvision import datasets, transforms

    if n_samples < 1 or batch_size < 1:
        raise ConfigError(f"n_samples and batch_size must be positive, got {n_samples} and {batch_size}")
    if val_fraction < 0 or test_fraction < 0 or val_fraction + test_fraction >= 1:
        raise ConfigError("val_fraction and test_fraction must be >= 0 and sum to less than 1")
    n_val, n_test = int(n_samples * val_fraction), int(n_samples * test_fraction)
    sizes = {"train": n_samples - n_val - n_test, "val": n_val, "test": n_test}
    loaders, offset = {}, seed * n_samples  # FakeData seeds image i with random_offset + i
    for split, size in sizes.items():
        if size:
            data = datasets.FakeData(
                size=size,
                image_size=(3, image_size, image_size),
                num_classes=num_classes,
                transform=transforms.ToTensor(),
                random_offset=offset,
            )
            loaders[split] = DataLoader(
                data, batch_size=batch_size, shuffle=split == "train", num_workers=num_workers
            )
        offset += size
    info = {
        "num_classes": num_classes,
        "in_channels": 3,
        "image_size": image_size,
        "in_features": 3 * image_size * image_size,
    }
    return Data(loaders, info, loss="cross-entropy", metrics=["accuracy"])


def augmented_image_folder(
    *,
    root: str,
    preset: Literal[
        "flip", "crop-flip", "autoaugment", "randaugment", "trivialaugment", "augmix"
    ] = "crop-flip",
    image_size: int | None = None,
    preprocessing: dict[str, Any] | None = None,
    val_fraction: float = 0.2,
    test_fraction: float = 0.0,
    batch_size: int = 32,
    num_workers: int | None = None,
    seed: int = 0,
) -> Data:
    """Images in class folders (see xt-training's ``image-folder``), augmented for training by ``preset``.

    Training images get the preset (``crop-flip``: random resized crop and horizontal flip, the ImageNet
    recipe; the others add AutoAugment, RandAugment, TrivialAugmentWide or AugMix after it); evaluation
    images are resized to ``image_size / 0.875`` and center-cropped to ``image_size`` (default 224). All
    are ImageNet-normalised. A pretrained model's ``preprocessing`` (``xt run`` passes it) gives the
    evaluation images its resize and crop, and all of them its interpolation, mean and std.
    """
    from torchvision import transforms as T

    if preprocessing is None:
        size = image_size or 224
        preprocessing = {
            "resize": int(size / 0.875),
            "crop": size,
            "interpolation": "bilinear",
            "mean": _MEAN,
            "std": _STD,
        }
    prepared = image_preprocessing(preprocessing, image_size)
    size, interpolation = prepared["crop"], T.InterpolationMode(prepared["interpolation"])
    crop = [T.RandomResizedCrop(size, interpolation=interpolation), T.RandomHorizontalFlip()]
    policies = {
        "flip": [T.Resize(size, interpolation), T.CenterCrop(size), T.RandomHorizontalFlip()],
        "crop-flip": crop,
        "autoaugment": [*crop, T.AutoAugment(T.AutoAugmentPolicy.IMAGENET)],
        "randaugment": [*crop, T.RandAugment()],
        "trivialaugment": [*crop, T.TrivialAugmentWide()],
        "augmix": [*crop, T.AugMix()],
    }
    return folder_data(
        root,
        image_transform(prepared, augment=policies[preset]),
        image_transform(prepared),
        image_size=size,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        batch_size=batch_size,
        num_workers=num_workers,
        seed=seed,
        preprocessing=prepared,
    )
