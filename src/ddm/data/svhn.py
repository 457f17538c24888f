"""SVHN (cropped digits) from its MATLAB files."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from .core import Dataset, DatasetError, Split, _check_size, _labels, _locate, _need_file

_SVHN_LAYOUT = (
    "svhn/ (or the folder itself) with train_32x32.mat and test_32x32.mat "
    "(the cropped-digits format 2 from http://ufldl.stanford.edu/housenumbers/)"
)


def _read_svhn(path: Path) -> Split:
    from scipy.io import loadmat

    try:
        mat = loadmat(path)
    except Exception as err:  # scipy raises many types for a bad file
        raise DatasetError(
            f"cannot read {path} as a MATLAB file: {err}; expected {_SVHN_LAYOUT}"
        ) from err
    x, y = mat.get("X"), mat.get("y")
    if x is None or y is None or x.ndim != 4 or x.shape[:3] != (32, 32, 3):
        raise DatasetError(f"{path} must hold X (32x32x3xN) and y (Nx1); expected {_SVHN_LAYOUT}")
    if x.dtype != np.uint8:
        raise DatasetError(f"{path}: X must be uint8, got {x.dtype}")
    y = np.asarray(y, dtype=np.int64).reshape(-1)
    if len(y) != x.shape[3]:
        raise DatasetError(f"{path} has {x.shape[3]} images but {len(y)} labels")
    y[y == 10] = 0  # SVHN stores the digit 0 as label 10
    images = np.ascontiguousarray(x.transpose(3, 2, 0, 1))  # H W C N -> N C H W
    return Split(torch.from_numpy(images), _labels(y, 10, path), 10)


def _load_svhn(root: str | os.PathLike | None = None, image_size: int | None = None) -> Dataset:
    """SVHN (cropped digits) from train_32x32.mat and test_32x32.mat."""
    folder = _locate(root, "svhn", ("train_32x32.mat",), ("svhn", "SVHN"), _SVHN_LAYOUT)
    _check_size("svhn", 32, image_size)
    train = _read_svhn(_need_file(folder, "train_32x32.mat", _SVHN_LAYOUT))
    test = _read_svhn(_need_file(folder, "test_32x32.mat", _SVHN_LAYOUT))
    return Dataset.from_splits("svhn", tuple(str(c) for c in range(10)), train, test)
