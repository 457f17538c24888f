"""A dataset store: per-class uint8 arrays memory-mapped on first access (data larger than memory).

``ddm prepare`` (``prepare.py``) writes a store from a class-folder tree; ``load_dataset("store",
STORE)`` (``--dataset store --data-root STORE``) reads it. Layout::

    STORE/index.json        format, version, name, source, image_size, channels, classes,
                            train_counts, val_counts, mean, std (per channel, [0, 1] units,
                            over every train pixel), corrupt (skipped images), complete
    STORE/train/00000.npy   class 0's train images: uint8 n_0 x C x S x S (numpy .npy)
    STORE/train/00001.npy   ...
    STORE/val/00000.npy     class 0's validation (test) images
    STORE/corrupt.txt       the images that could not be decoded (skipped), one path a line

Loading reads only ``index.json`` (and checks that every class file exists); a class's
file is opened (``np.load(mmap_mode="r")``) the first time one of its images is asked for,
and only the pages of the images read come into memory. A process that draws batches of
some classes touches only those classes' files, so its memory grows with the classes it
holds, not with the dataset (docs/scaling.md).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import Dataset, DatasetError, ImageSource, Split

__all__ = ["INDEX_FILE", "STORE_FORMAT", "STORE_VERSION", "ClassArrays", "class_file", "read_index"]

STORE_FORMAT = "ddm-store"
STORE_VERSION = 1
INDEX_FILE = "index.json"
SPLITS = ("train", "val")


def class_file(store: str | os.PathLike, split: str, k: int) -> Path:
    """Path of class ``k``'s array of ``split`` (train | val) in ``store``."""
    return Path(store) / split / f"{k:05d}.npy"


class _ClassFile:
    """One class's ``.npy`` file, memory-mapped the first time it is read."""

    def __init__(self, path: Path, count: int, item_shape: tuple[int, ...]) -> None:
        self.path, self.count, self.item_shape = path, count, item_shape
        self._array: np.ndarray | None = None

    def array(self) -> np.ndarray:
        if self._array is None:
            try:
                arr = np.load(self.path, mmap_mode="r", allow_pickle=False)
            except (OSError, ValueError) as err:
                raise DatasetError(
                    f"cannot read store file {self.path}: {err}; rerun `ddm prepare` on the store"
                ) from err
            want = (self.count, *self.item_shape)
            if arr.dtype != np.uint8 or arr.shape != want:
                raise DatasetError(
                    f"store file {self.path} holds {arr.dtype} {arr.shape}, but the index says "
                    f"uint8 {want}; rerun `ddm prepare` on the store"
                )
            self._array = arr
        return self._array


class ClassArrays(ImageSource):
    """Images of one split as consecutive per-class files (class-major), read on demand.

    Image ``i`` is row ``i - start[s]`` of segment ``s``'s file, where segments are the
    class files in order. :meth:`gather` opens (memory-maps) only the files its indices
    fall in; :meth:`select` keeps whole classes lazily.
    """

    def __init__(self, files: Sequence[_ClassFile], item_shape: tuple[int, ...]) -> None:
        self._files = list(files)
        self._item_shape = tuple(item_shape)
        counts = np.array([f.count for f in self._files], dtype=np.int64)
        self._starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._shape = torch.Size((int(self._starts[-1]), *self._item_shape))

    @property
    def shape(self) -> torch.Size:
        return self._shape

    def opened(self) -> int:
        """How many class files have been memory-mapped so far."""
        return sum(f._array is not None for f in self._files)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        idx = torch.as_tensor(idx).to(torch.int64).reshape(-1)
        n = len(self)
        if len(idx) and (int(idx.min()) < -n or int(idx.max()) >= n):
            raise IndexError(f"index out of range for {n} images")
        pos = torch.where(idx < 0, idx + n, idx).numpy()
        out = np.empty((len(pos), *self._item_shape), dtype=np.uint8)
        seg = np.searchsorted(self._starts, pos, side="right") - 1
        for s in np.unique(seg):
            where = np.flatnonzero(seg == s)
            out[where] = self._files[s].array()[pos[where] - self._starts[s]]
        return torch.from_numpy(out)

    def select(self, mask: torch.Tensor) -> ClassArrays | torch.Tensor:
        """Whole classes stay lazy (a new source over their files); a partial class is read."""
        mask = torch.as_tensor(mask, dtype=torch.bool).reshape(-1)
        if len(mask) != len(self):
            raise IndexError(f"mask of length {len(mask)} for {len(self)} images")
        kept = np.concatenate([[0], np.cumsum(mask.numpy(), dtype=np.int64)])
        per_file = kept[self._starts[1:]] - kept[self._starts[:-1]]
        counts = np.array([f.count for f in self._files], dtype=np.int64)
        if not np.all((per_file == 0) | (per_file == counts)):
            return super().select(mask)
        files = [f for f, n in zip(self._files, per_file, strict=True) if n > 0]
        return ClassArrays(files, self._item_shape)


# --------------------------------------------------------------------------------------
# Reading a store
# --------------------------------------------------------------------------------------

_MAKE = "make one with `ddm prepare --src DIR --image-size 64 --out STORE`"


def read_index(store: str | os.PathLike) -> dict[str, Any]:
    """The store's ``index.json``, checked; a DatasetError says what is wrong and what to do."""
    path = Path(store).expanduser() / INDEX_FILE
    if not path.is_file():
        raise DatasetError(f"{path.parent} is not a dataset store (no {INDEX_FILE}); {_MAKE}")
    try:
        index = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(f"{path} is not a readable store index ({err}); {_MAKE}") from err
    if not isinstance(index, dict) or index.get("format") != STORE_FORMAT:
        raise DatasetError(f'{path} is not a ddm store index (no "format": "{STORE_FORMAT}")')
    if index.get("version") != STORE_VERSION:
        raise DatasetError(
            f"{path} has store version {index.get('version')}; this ddm reads version "
            f"{STORE_VERSION}: make the store again with `ddm prepare`"
        )
    try:
        classes = [str(c) for c in index["classes"]]
        k = len(classes)
        size, channels = int(index["image_size"]), int(index["channels"])
        for key in ("train_counts", "val_counts"):
            if not isinstance(index[key], list) or len(index[key]) != k:
                raise ValueError(f"{key} must list one count per class")
    except (KeyError, TypeError, ValueError) as err:
        raise DatasetError(f"{path} is malformed ({err}); {_MAKE}") from err
    if not index.get("complete"):
        done = sum(c is not None for c in index["train_counts"])
        raise DatasetError(
            f"store {path.parent} is incomplete ({done} of {k} classes written: a `ddm prepare` "
            "was stopped); rerun the same `ddm prepare` command to finish it"
        )
    if k == 0 or size <= 0 or channels <= 0:
        raise DatasetError(f"{path} is malformed (no classes, or a non-positive image size)")
    for key in ("mean", "std"):
        if not isinstance(index.get(key), list) or len(index[key]) != channels:
            raise DatasetError(f"{path} is malformed ({key} must have {channels} entries)")
    return index


def _split(store: Path, split: str, counts: Sequence[int], item: tuple[int, ...]) -> Split:
    files = []
    for k, n in enumerate(counts):
        path = class_file(store, split, k)
        if not path.is_file():
            raise DatasetError(f"store file {path} is missing; rerun `ddm prepare` on the store")
        files.append(_ClassFile(path, int(n), item))
    labels = torch.repeat_interleave(
        torch.arange(len(counts)), torch.tensor([int(n) for n in counts], dtype=torch.int64)
    )
    return Split(ClassArrays(files, item), labels, len(counts))


def _load_store(root: str | os.PathLike | None = None, image_size: int | None = None) -> Dataset:
    """A store made by ``ddm prepare``: ``root`` is the store folder (holding index.json)."""
    if root is None:
        raise DatasetError(
            "store is read from a folder: pass --data-root STORE (root=...) naming a store "
            f"made by `ddm prepare`; {_MAKE}"
        )
    store = Path(root).expanduser()
    index = read_index(store)
    size = int(index["image_size"])
    if image_size is not None and image_size != size:
        raise ValueError(
            f"store {store} holds {size}x{size} images; image_size={image_size} needs a store "
            f"made with `ddm prepare --image-size {image_size}`"
        )
    item = (int(index["channels"]), size, size)
    train = _split(store, "train", index["train_counts"], item)
    test = _split(store, "val", index["val_counts"], item)
    mean = tuple(float(m) for m in index["mean"])
    std = tuple(float(s) for s in index["std"])
    return Dataset("store", tuple(str(c) for c in index["classes"]), train, test, mean, std)
