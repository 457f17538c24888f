"""CIFAR-10 / CIFAR-100 from the python pickles, read with a restricted unpickler.

The unpickler can only rebuild numpy arrays, so a crafted file cannot run code.
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import Dataset, DatasetError, Split, _check_size, _labels, _locate, _need_file


def _numpy_internals() -> tuple[Any, Any]:
    try:  # numpy >= 2
        from numpy._core import multiarray, numeric
    except ImportError:  # pragma: no cover - numpy 1.x
        from numpy.core import multiarray, numeric
    return multiarray, numeric


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """``_codecs.encode`` as protocol-2 pickles use it for bytes, limited to latin-1."""
    if encoding not in ("latin1", "latin-1") or not isinstance(text, str):
        raise pickle.UnpicklingError(f"refusing _codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


def _safe_globals() -> dict[tuple[str, str], Any]:
    multiarray, numeric = _numpy_internals()
    allowed: dict[tuple[str, str], Any] = {
        ("numpy", "ndarray"): np.ndarray,
        ("numpy", "dtype"): np.dtype,
        ("_codecs", "encode"): _latin1_encode,
    }
    for package in ("numpy.core", "numpy._core"):
        allowed[(f"{package}.multiarray", "_reconstruct")] = multiarray._reconstruct
        allowed[(f"{package}.multiarray", "scalar")] = multiarray.scalar
        allowed[(f"{package}.numeric", "_frombuffer")] = numeric._frombuffer
    return allowed


_SAFE_GLOBALS = _safe_globals()


class _ArrayUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else (no code execution)."""

    def __init__(self, file: Any, path: Path) -> None:
        super().__init__(file, encoding="bytes")
        self._path = path

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise DatasetError(
                f"refusing to unpickle {module}.{name} from {self._path}: not a CIFAR batch"
            ) from None


def _unpickle(path: Path, layout: str) -> dict[str, Any]:
    """A CIFAR pickle as a dict with str keys (bytes keys are decoded)."""
    try:
        with open(path, "rb") as f:
            obj = _ArrayUnpickler(f, path).load()
    except DatasetError:
        raise
    except OSError as err:
        raise DatasetError(f"cannot read {path}: {err}; expected {layout}") from err
    except Exception as err:  # malformed pickles raise many types
        raise DatasetError(
            f"{path} is not a readable CIFAR pickle ({type(err).__name__}: {err}); "
            f"expected {layout}"
        ) from err
    if not isinstance(obj, dict):
        raise DatasetError(f"{path} does not hold a dict; expected {layout}")
    return {k.decode("latin1") if isinstance(k, bytes) else str(k): v for k, v in obj.items()}


def _cifar_batch(path: Path, label_key: str, num_classes: int, layout: str) -> Split:
    d = _unpickle(path, layout)
    if "data" not in d or label_key not in d:
        raise DatasetError(f"{path} lacks the 'data' or '{label_key}' entry; expected {layout}")
    data = d["data"]
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2:
        raise DatasetError(f"{path}: 'data' must be a uint8 N x 3072 array")
    if data.shape[1] != 3072:
        raise DatasetError(f"{path}: 'data' rows have {data.shape[1]} values, expected 3072")
    labels = _labels(d[label_key], num_classes, path)
    if len(labels) != len(data):
        raise DatasetError(f"{path} has {len(data)} images but {len(labels)} labels")
    images = torch.from_numpy(np.ascontiguousarray(data).reshape(-1, 3, 32, 32))
    return Split(images, labels, num_classes)


def _concat(splits: Sequence[Split], num_classes: int) -> Split:
    images = torch.cat([s.images for s in splits])
    labels = torch.cat([s.labels for s in splits])
    return Split(images, labels, num_classes)


def _cifar_names(path: Path, key: str, default: tuple[str, ...], layout: str) -> tuple[str, ...]:
    if not path.is_file():
        return default
    names = _unpickle(path, layout).get(key)
    if not isinstance(names, list) or len(names) != len(default):
        raise DatasetError(f"{path}: '{key}' must list {len(default)} class names")
    return tuple(n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names)


_CIFAR10_CLASSES = (
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
)


def _load_cifar10(root: str | os.PathLike | None = None, image_size: int | None = None) -> Dataset:
    """CIFAR-10 from the python-pickle batches (md5 sums are not checked)."""
    layout = (
        "<root>/cifar-10-batches-py/ with data_batch_1 ... data_batch_5, test_batch and "
        "batches.meta (the python version of CIFAR-10 from "
        "https://www.cs.toronto.edu/~kriz/cifar.html)"
    )
    folder = _locate(root, "cifar10", ("data_batch_1",), ("cifar-10-batches-py",), layout)
    _check_size("cifar10", 32, image_size)
    files = [_need_file(folder, f"data_batch_{i}", layout) for i in range(1, 6)]
    test_file = _need_file(folder, "test_batch", layout)
    train = _concat([_cifar_batch(p, "labels", 10, layout) for p in files], 10)
    test = _cifar_batch(test_file, "labels", 10, layout)
    classes = _cifar_names(folder / "batches.meta", "label_names", _CIFAR10_CLASSES, layout)
    return Dataset.from_splits("cifar10", classes, train, test)


def _load_cifar100(root: str | os.PathLike | None = None, image_size: int | None = None) -> Dataset:
    """CIFAR-100 (fine labels) from the python-pickle files train, test and meta."""
    layout = (
        "<root>/cifar-100-python/ with train, test and meta (the python version of "
        "CIFAR-100 from https://www.cs.toronto.edu/~kriz/cifar.html)"
    )
    folder = _locate(root, "cifar100", ("train",), ("cifar-100-python",), layout)
    _check_size("cifar100", 32, image_size)
    train = _cifar_batch(_need_file(folder, "train", layout), "fine_labels", 100, layout)
    test = _cifar_batch(_need_file(folder, "test", layout), "fine_labels", 100, layout)
    default = tuple(str(c) for c in range(100))
    classes = _cifar_names(folder / "meta", "fine_label_names", default, layout)
    return Dataset.from_splits("cifar100", classes, train, test)
