"""MNIST and Fashion-MNIST from their idx files (optionally gzipped)."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import torch

from .core import Dataset, DatasetError, Split, _check_size, _labels, _locate

_IDX_IMAGES, _IDX_LABELS = 2051, 2049
_FASHION_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def _read_idx(path: Path, magic: int) -> np.ndarray:
    """One idx file (optionally gzipped) of unsigned bytes: images N x H x W or labels N."""
    try:
        raw = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    except (OSError, EOFError) as err:
        raise DatasetError(f"cannot read idx file {path}: {err}") from err
    ndim = 3 if magic == _IDX_IMAGES else 1
    header = 4 + 4 * ndim
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else None
    if found is not None and found != magic:
        raise DatasetError(
            f"idx file {path} has magic number {found}, expected {magic} "
            f"({'images' if magic == _IDX_IMAGES else 'labels'})"
        )
    if len(raw) < header:
        raise DatasetError(f"idx file {path} is truncated ({len(raw)} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = int(np.prod(dims))
    if len(raw) - header != expected:
        raise DatasetError(
            f"idx file {path} is truncated or padded: header says {dims} "
            f"({expected} bytes of data) but it holds {len(raw) - header}"
        )
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims).copy()


def _idx_pair(folder: Path, prefix: str, layout: str) -> Split:
    paths = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        stem = f"{prefix}-{kind}"
        plain, packed = folder / stem, folder / f"{stem}.gz"
        if plain.is_file():
            paths.append(plain)
        elif packed.is_file():
            paths.append(packed)
        else:
            raise DatasetError(f"missing file {packed} (or {plain}); expected {layout}")
    images = _read_idx(paths[0], _IDX_IMAGES)
    labels = _read_idx(paths[1], _IDX_LABELS)
    if len(images) != len(labels):
        raise DatasetError(f"{paths[0]} has {len(images)} images but {paths[1]} has {len(labels)}")
    return Split(torch.from_numpy(images[:, None]), _labels(labels, 10, paths[1]), 10)


def _load_idx_dataset(
    name: str,
    folder_name: str,
    classes: tuple[str, ...],
    url: str,
    root: str | os.PathLike | None,
    image_size: int | None,
) -> Dataset:
    layout = (
        f"{folder_name}/raw/ (or the folder itself) with train-images-idx3-ubyte.gz, "
        f"train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz, t10k-labels-idx1-ubyte.gz "
        f"(gzipped or not; from {url})"
    )
    markers = ("train-images-idx3-ubyte.gz", "train-images-idx3-ubyte")
    folder = _locate(root, name, markers, (f"{folder_name}/raw", folder_name, "raw"), layout)
    _check_size(name, 28, image_size)
    train = _idx_pair(folder, "train", layout)
    test = _idx_pair(folder, "t10k", layout)
    return Dataset.from_splits(name, classes, train, test)


def _load_mnist(root: str | os.PathLike | None = None, image_size: int | None = None) -> Dataset:
    """MNIST from its four idx files."""
    classes = tuple(str(c) for c in range(10))
    url = "http://yann.lecun.com/exdb/mnist/"
    return _load_idx_dataset("mnist", "MNIST", classes, url, root, image_size)


def _load_fashion_mnist(
    root: str | os.PathLike | None = None, image_size: int | None = None
) -> Dataset:
    """Fashion-MNIST from its four idx files."""
    url = "https://github.com/zalandoresearch/fashion-mnist"
    return _load_idx_dataset(
        "fashion-mnist", "FashionMNIST", _FASHION_CLASSES, url, root, image_size
    )
