"""scikit-learn's embedded 8x8 digits (no files needed)."""

from __future__ import annotations

import os

import numpy as np
import torch

from .core import Dataset, Split, _check_size


def _load_digits(root: str | os.PathLike | None = None, image_size: int | None = None) -> Dataset:
    """scikit-learn's 8x8 digits, split 75/25 per class with a fixed seed (no files needed)."""
    from sklearn.datasets import load_digits

    _check_size("digits", 8, image_size)
    bunch = load_digits()
    images = np.rint(bunch.data * (255.0 / 16.0)).astype(np.uint8).reshape(-1, 1, 8, 8)
    target = bunch.target.astype(np.int64)
    rng = np.random.default_rng(0)
    test_mask = np.zeros(len(target), dtype=bool)
    for c in range(10):
        idx = np.flatnonzero(target == c)
        n_test = (len(idx) + 2) // 4  # 25%, rounded half up
        test_mask[rng.permutation(idx)[:n_test]] = True

    def split(mask: np.ndarray) -> Split:
        return Split(torch.from_numpy(images[mask]), torch.from_numpy(target[mask]), 10)

    classes = tuple(str(c) for c in range(10))
    return Dataset.from_splits("digits", classes, split(~test_mask), split(test_mask))
