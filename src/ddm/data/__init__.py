"""Datasets: read the standard files of each benchmark into compact uint8 tensors.

One module per format behind one face, :func:`load_dataset` (a new format is a new module and
a line in :data:`DATASETS`):

- ``digits.py``: scikit-learn's embedded 8x8 digits
- ``idx.py``: MNIST, Fashion-MNIST (idx files)
- ``svhn.py``: SVHN (``.mat``)
- ``cifar.py``: CIFAR-10 / CIFAR-100 (python pickles, restricted unpickler)
- ``folders.py``: Tiny-ImageNet, ImageNette, ImageWoof, any ``train/<class>/`` image folder
- ``store.py``: a dataset store made by ``ddm prepare`` (``prepare.py``): per-class uint8
  arrays memory-mapped on first access, for data larger than memory (ImageNet-1K)

Loaders read the files as they are published; there is no torchvision and nothing is
downloaded. ``root`` may be the dataset's own folder or a parent holding the standard folder
name. A missing or malformed file raises :class:`DatasetError` naming the file and the layout
that was expected. The containers (:class:`Dataset`, :class:`Split`) are in ``core.py``.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from .cifar import _load_cifar10, _load_cifar100
from .core import Dataset, DatasetError, Split, channel_stats
from .digits import _load_digits
from .folders import _load_imagefolder, _load_imagenette, _load_imagewoof, _load_tiny_imagenet
from .idx import _load_fashion_mnist, _load_mnist
from .store import _load_store
from .svhn import _load_svhn

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "Split",
    "available_datasets",
    "channel_stats",
    "load_dataset",
]

DATASETS: dict[str, Callable[..., Dataset]] = {
    "digits": _load_digits,
    "mnist": _load_mnist,
    "fashion-mnist": _load_fashion_mnist,
    "svhn": _load_svhn,
    "cifar10": _load_cifar10,
    "cifar100": _load_cifar100,
    "tiny-imagenet": _load_tiny_imagenet,
    "imagenette": _load_imagenette,
    "imagewoof": _load_imagewoof,
    "imagefolder": _load_imagefolder,
    "store": _load_store,
}

_ALIASES = {"folder": "imagefolder"}


def _canonical(name: str) -> str | None:
    key = name.strip().lower().replace("-", "").replace("_", "")
    for known in DATASETS:
        if known.replace("-", "") == key:
            return known
    return _ALIASES.get(key)


def available_datasets() -> list[str]:
    """Registered dataset names (sorted)."""
    return sorted(DATASETS)


def load_dataset(
    name: str, root: str | os.PathLike | None = None, image_size: int | None = None
) -> Dataset:
    """Load a dataset by (case-insensitive) name from the standard files under ``root``.

    ``root`` may be the dataset's own folder or a parent holding its standard folder name;
    only ``digits`` needs none. ``image_size`` applies to image-folder datasets. ``store``
    reads a store made by ``ddm prepare`` (``root`` is the store's folder).
    """
    key = _canonical(name)
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(available_datasets())}")
    return DATASETS[key](root, image_size)
