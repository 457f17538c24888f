"""Datasets: read the standard files of each benchmark into compact uint8 tensors.

Every loader returns a :class:`Dataset`: uint8 ``N x C x H x W`` train and test splits held in
memory, int64 labels, class names, and the per-channel mean and std of the *train* images
(in [0, 1] units, computed from the data). Networks and synthetic images live in the space
normalised by that mean and std; :meth:`Dataset.normalize` and :meth:`Dataset.denormalize`
convert between the two.

Loaders read the files as they are published (CIFAR python pickles, MNIST idx files, SVHN
``.mat`` files, Tiny-ImageNet / ImageNette / generic image folders); there is no torchvision
and nothing is downloaded. ``root`` may be the dataset's own folder or a parent holding the
standard folder name. A missing or malformed file raises :class:`DatasetError` naming the
file and the layout that was expected.

The CIFAR pickles are read with a restricted unpickler that can only rebuild numpy arrays,
so a crafted file cannot run code.
"""

from __future__ import annotations

import gzip
import os
import pickle
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "DATASETS",
    "Dataset",
    "DatasetError",
    "Split",
    "available_datasets",
    "channel_stats",
    "load_dataset",
]


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed (the message says which and why)."""


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Split:
    """One split (train or test): uint8 images ``N x C x H x W`` and int64 labels ``N``.

    The per-class index is built once here so that drawing a class batch costs only an
    index into the uint8 tensor. ``num_classes`` (optional) fixes the length of
    :meth:`class_counts`; without it, it is ``max(label) + 1``.
    """

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int | None = None
    _by_class: tuple[torch.Tensor, ...] = field(init=False, repr=False)
    _counts: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        images, labels = self.images, self.labels
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"Split.images must be uint8 N x C x H x W, got {images.dtype} "
                f"{tuple(images.shape)}"
            )
        if labels.dtype != torch.int64 or labels.dim() != 1:
            raise ValueError(
                f"Split.labels must be int64 of shape (N,), got {labels.dtype} "
                f"{tuple(labels.shape)}"
            )
        if len(images) != len(labels):
            raise ValueError(f"Split has {len(images)} images but {len(labels)} labels")
        if len(labels) and int(labels.min()) < 0:
            raise ValueError("Split.labels must be non-negative")
        top = int(labels.max()) + 1 if len(labels) else 0
        n_classes = top if self.num_classes is None else self.num_classes
        if n_classes < top:
            raise ValueError(f"Split has label {top - 1} but num_classes={n_classes}")
        object.__setattr__(self, "images", images.contiguous())
        object.__setattr__(self, "labels", labels.contiguous())
        counts = torch.bincount(labels, minlength=n_classes)
        order = torch.argsort(labels, stable=True)
        object.__setattr__(self, "_counts", counts)
        object.__setattr__(self, "_by_class", tuple(torch.split(order, counts.tolist())))

    def __len__(self) -> int:
        return len(self.labels)

    def class_indices(self, c: int) -> torch.Tensor:
        """Ascending int64 indices of the samples of class ``c`` (cached: do not modify)."""
        if not 0 <= c < len(self._by_class):
            if self.num_classes is None and c >= 0:
                return torch.empty(0, dtype=torch.int64)
            raise ValueError(f"class {c} out of range [0, {len(self._by_class)})")
        return self._by_class[c]

    def class_counts(self) -> torch.Tensor:
        """Number of samples per class (int64, indexed by label)."""
        return self._counts.clone()


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset in memory with its normalisation statistics.

    ``mean`` and ``std`` are the per-channel statistics of the train images in [0, 1]
    units; use :meth:`from_splits` to compute them from the data.
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    _mean_t: torch.Tensor = field(init=False, repr=False)
    _std_t: torch.Tensor = field(init=False, repr=False)
    _scale_t: torch.Tensor = field(init=False, repr=False)
    _shift_t: torch.Tensor = field(init=False, repr=False)

    def __post_init__(self) -> None:
        k = len(self.classes)
        for split_name, split in (("train", self.train), ("test", self.test)):
            if split.num_classes not in (None, k):
                raise ValueError(
                    f"{self.name}: {split_name} split has num_classes={split.num_classes} "
                    f"but there are {k} class names"
                )
            if len(split) and int(split.labels.max()) >= k:
                raise ValueError(f"{self.name}: {split_name} label out of range [0, {k})")
        c, h, w = self.train.images.shape[1:]
        if self.test.images.shape[1:] != self.train.images.shape[1:]:
            raise ValueError(
                f"{self.name}: train images are {tuple(self.train.images.shape[1:])} but "
                f"test images are {tuple(self.test.images.shape[1:])}"
            )
        if h != w:
            raise ValueError(f"{self.name}: images must be square, got {h}x{w}")
        if len(self.mean) != c or len(self.std) != c:
            raise ValueError(f"{self.name}: mean/std need {c} entries (one per channel)")
        if min(self.std) <= 0:
            raise ValueError(f"{self.name}: std must be positive, got {self.std}")
        mean = torch.tensor(self.mean, dtype=torch.float64).view(c, 1, 1)
        std = torch.tensor(self.std, dtype=torch.float64).view(c, 1, 1)
        object.__setattr__(self, "_mean_t", mean.float())
        object.__setattr__(self, "_std_t", std.float())
        # (x / 255 - mean) / std == x * scale + shift, folded in float64
        object.__setattr__(self, "_scale_t", (1.0 / (255.0 * std)).float())
        object.__setattr__(self, "_shift_t", (-mean / std).float())

    @classmethod
    def from_splits(cls, name: str, classes: Sequence[str], train: Split, test: Split) -> Dataset:
        """Build a dataset whose mean/std are computed from ``train``'s images."""
        mean, std = channel_stats(train.images)
        return cls(name, tuple(classes), train, test, mean, std)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def channels(self) -> int:
        return int(self.train.images.shape[1])

    @property
    def image_size(self) -> int:
        return int(self.train.images.shape[2])

    @property
    def dsa_strategy(self) -> str:
        """The DSA augmentation string; digits must not be flipped."""
        if self.name in _NO_FLIP:
            return "color_crop_cutout_scale_rotate"
        return "color_crop_cutout_flip_scale_rotate"

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """uint8 images ``... x C x H x W`` -> float32 ``(x / 255 - mean) / std``."""
        if x.dtype != torch.uint8:
            raise TypeError(f"normalize expects uint8 images, got {x.dtype}")
        if x.dim() < 3 or x.shape[-3] != self.channels:
            raise ValueError(
                f"normalize expects ... x {self.channels} x H x W, got {tuple(x.shape)}"
            )
        scale, shift = self._scale_t.to(x.device), self._shift_t.to(x.device)
        # empty + copy_ is several times faster than .to(float32) for uint8 on CPU
        out = torch.empty(x.shape, dtype=torch.float32, device=x.device).copy_(x)
        return out.mul_(scale).add_(shift)

    def denormalize(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised images -> float32 in [0, 1] (clipped), for viewing and export."""
        mean, std = self._mean_t.to(x.device), self._std_t.to(x.device)
        return (x.to(torch.float32) * std + mean).clamp_(0.0, 1.0)

    def class_subset_indices(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """Train indices of ``n`` random images of class ``c`` without replacement.

        If ``n`` is at least the class size, all of the class, shuffled.
        """
        if not 0 <= c < self.num_classes:
            raise ValueError(f"class {c} out of range [0, {self.num_classes})")
        if n < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        idx = self.train.class_indices(c)
        if len(idx) == 0:
            raise ValueError(f"{self.name}: class {c} has no training images")
        perm = torch.randperm(len(idx), generator=generator)[:n]
        return idx[perm]

    def class_batch(self, c: int, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` random normalised train images of class ``c`` (float32 ``n x C x H x W``)."""
        idx = self.class_subset_indices(c, n, generator)
        return self.normalize(self.train.images.index_select(0, idx))

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All train images normalised (float32) and their labels."""
        return self.normalize(self.train.images), self.train.labels.clone()

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All test images normalised (float32) and their labels."""
        return self.normalize(self.test.images), self.test.labels.clone()

    def subset_classes(self, classes: Sequence[int]) -> Dataset:
        """Only the samples of ``classes`` (for continual learning).

        Labels keep their original ids; class names, mean and std are unchanged.
        """
        keep = torch.as_tensor(list(classes), dtype=torch.int64)
        if len(keep) == 0 or len(torch.unique(keep)) != len(keep):
            raise ValueError(f"subset_classes needs distinct class ids, got {list(classes)}")
        if int(keep.min()) < 0 or int(keep.max()) >= self.num_classes:
            raise ValueError(f"class ids must be in [0, {self.num_classes}), got {keep.tolist()}")

        def pick(split: Split) -> Split:
            mask = torch.isin(split.labels, keep)
            return Split(split.images[mask], split.labels[mask], self.num_classes)

        return Dataset(
            self.name, self.classes, pick(self.train), pick(self.test), self.mean, self.std
        )


_NO_FLIP = frozenset({"mnist", "svhn", "digits"})


def channel_stats(images: torch.Tensor) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and (population) std of uint8 ``N x C x H x W`` images, in [0, 1].

    Exact: per-channel histograms of the 256 byte values, taken in chunks, then float64.
    """
    if images.dtype != torch.uint8 or images.dim() != 4:
        raise ValueError(f"channel_stats expects uint8 N x C x H x W, got {images.dtype}")
    n, c, h, w = images.shape
    if n == 0:
        raise ValueError("channel_stats needs at least one image")
    hist = torch.zeros(c, 256, dtype=torch.int64)
    chunk = max(1, (1 << 24) // (h * w))  # about 16M pixels per channel and chunk
    for start in range(0, n, chunk):
        block = images[start : start + chunk]
        for ch in range(c):
            hist[ch] += torch.bincount(block[:, ch].reshape(-1), minlength=256)
    values = torch.arange(256, dtype=torch.float64) / 255.0
    p = hist.to(torch.float64) / float(n * h * w)
    mean = (p * values).sum(1)
    var = (p * (values - mean[:, None]) ** 2).sum(1)
    return tuple(mean.tolist()), tuple(var.sqrt().tolist())


# --------------------------------------------------------------------------------------
# Shared helpers: root resolution, file checks
# --------------------------------------------------------------------------------------


def _dataset_root(root: str | os.PathLike | None, name: str, layout: str) -> Path:
    """``root`` as an existing folder, or a DatasetError saying what to pass."""
    if root is None:
        raise DatasetError(
            f"{name} is read from files: pass --data-root (root=...) naming the folder that "
            f"holds {layout}"
        )
    path = Path(root).expanduser()
    if not path.is_dir():
        raise DatasetError(f"data root {path} is not a folder; {name} expects {layout}")
    return path


def _locate(
    root: str | os.PathLike | None,
    name: str,
    markers: Sequence[str],
    subfolders: Sequence[str],
    layout: str,
) -> Path:
    """The folder holding the dataset: ``root`` itself or one of ``subfolders`` of it.

    A folder qualifies when one of ``markers`` (file or folder names) is in it.
    ``subfolders`` are glob patterns relative to ``root`` (e.g. ``"MNIST/raw"``,
    ``"tiny-imagenet-200*"``), tried in order after ``root``.
    """
    base = _dataset_root(root, name, layout)
    candidates = [base]
    for pattern in subfolders:
        candidates += sorted(p for p in base.glob(pattern) if p.is_dir())
    for folder in candidates:
        if any((folder / m).exists() for m in markers):
            return folder
    tried = ", ".join(str(base / s / markers[0]) for s in subfolders)
    raise DatasetError(
        f"{name}: found no {markers[0]} in {base} (tried {base / markers[0]}, {tried}); "
        f"expected {layout}"
    )


def _need_file(folder: Path, filename: str, layout: str) -> Path:
    path = folder / filename
    if not path.is_file():
        raise DatasetError(f"missing file {path}; expected {layout}")
    return path


def _need_dir(folder: Path, dirname: str, layout: str) -> Path:
    path = folder / dirname
    if not path.is_dir():
        raise DatasetError(f"missing folder {path}; expected {layout}")
    return path


def _check_size(name: str, native: int, image_size: int | None) -> None:
    if image_size is not None and image_size != native:
        raise ValueError(
            f"{name} images are {native}x{native}; image_size={image_size} is not supported "
            f"for it (resizing is only done for image-folder datasets)"
        )


def _labels(values: Any, num_classes: int, path: Path) -> torch.Tensor:
    labels = torch.as_tensor(np.asarray(values, dtype=np.int64).reshape(-1))
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise DatasetError(f"{path}: labels outside [0, {num_classes})")
    return labels


# --------------------------------------------------------------------------------------
# digits (scikit-learn, embedded)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# MNIST, Fashion-MNIST (idx files)
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# SVHN (.mat)
# --------------------------------------------------------------------------------------

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


# --------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100 (python pickles, read with a restricted unpickler)
# --------------------------------------------------------------------------------------


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


# --------------------------------------------------------------------------------------
# Image folders: Tiny-ImageNet, ImageNette, ImageWoof, generic
# --------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".webp"})


def _list_images(folder: Path, layout: str) -> list[Path]:
    """Image files under ``folder`` (recursively, sorted); an empty folder is an error."""
    if not folder.is_dir():
        raise DatasetError(f"missing folder {folder}; expected {layout}")
    files = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        for fname in sorted(filenames):
            if not fname.startswith(".") and Path(fname).suffix.lower() in _IMAGE_SUFFIXES:
                files.append(Path(dirpath) / fname)
    if not files:
        raise DatasetError(f"class folder {folder} holds no images; expected {layout}")
    return files


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 RGB ``3 x size x size``: short side resized to ``size``, centre crop."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            if min(w, h) >= 2 * size:
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, >= size
            rgb = img.convert("RGB")
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
        raise DatasetError(f"cannot decode image {path}: {err}") from err
    w, h = rgb.size
    if (w, h) != (size, size):
        scale = size / min(w, h)
        new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
        if (new_w, new_h) != (w, h):
            rgb = rgb.resize((new_w, new_h), Image.Resampling.BILINEAR)
        left, top = (new_w - size) // 2, (new_h - size) // 2
        rgb = rgb.crop((left, top, left + size, top + size))
    return np.asarray(rgb, dtype=np.uint8).transpose(2, 0, 1)


def _decode_all(paths: Sequence[Path], size: int) -> torch.Tensor:
    """Decode images in threads (Pillow releases the GIL) into one uint8 N x 3 x S x S."""
    out = np.empty((len(paths), 3, size, size), dtype=np.uint8)

    def work(start: int) -> None:
        for i in range(start, min(start + 64, len(paths))):
            out[i] = _decode(paths[i], size)

    workers = min(16, (os.cpu_count() or 1) + 2)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for future in [pool.submit(work, s) for s in range(0, len(paths), 64)]:
            future.result()
    return torch.from_numpy(out)


def _folder_split(
    files: Sequence[Path], labels: Sequence[int], num_classes: int, size: int
) -> Split:
    return Split(
        _decode_all(files, size), torch.tensor(list(labels), dtype=torch.int64), num_classes
    )


def _class_folders_split(
    split_dir: Path,
    class_dirs: Sequence[str],
    size: int,
    layout: str,
    sub: str = "",
    allow_missing: bool = False,
) -> Split:
    """Images of ``split_dir/<class_dirs[k]>/<sub>`` labelled k."""
    files: list[Path] = []
    labels: list[int] = []
    for k, name in enumerate(class_dirs):
        folder = split_dir / name / sub if sub else split_dir / name
        if allow_missing and not (split_dir / name).exists():
            continue
        found = _list_images(folder, layout)
        files += found
        labels += [k] * len(found)
    return _folder_split(files, labels, len(class_dirs), size)


def _load_tiny_imagenet(
    root: str | os.PathLike | None = None, image_size: int | None = None
) -> Dataset:
    """Tiny-ImageNet (or a subset of it); label order is the line order of wnids.txt."""
    layout = (
        "a tiny-imagenet-200*/ folder with wnids.txt, words.txt (optional), "
        "train/<wnid>/images/*.JPEG, val/images/*.JPEG and val/val_annotations.txt "
        "(from http://cs231n.stanford.edu/tiny-imagenet-200.zip)"
    )
    folder = _locate(root, "tiny-imagenet", ("wnids.txt",), ("tiny-imagenet-200*",), layout)
    size = image_size or 64
    wnid_file = _need_file(folder, "wnids.txt", layout)
    wnids = [ln.strip() for ln in wnid_file.read_text().splitlines() if ln.strip()]
    if not wnids or len(set(wnids)) != len(wnids):
        raise DatasetError(f"{wnid_file} must list distinct wnids, one per line")
    names = {}
    if (folder / "words.txt").is_file():
        for line in (folder / "words.txt").read_text().splitlines():
            wnid, _, words = line.partition("\t")
            names[wnid] = words.split(",")[0].strip()
    classes = tuple(names.get(w) or w for w in wnids)

    train = _class_folders_split(_need_dir(folder, "train", layout), wnids, size, layout, "images")

    val_dir = _need_dir(folder, "val", layout)
    notes = _need_file(val_dir, "val_annotations.txt", layout)
    label_of = {w: k for k, w in enumerate(wnids)}
    files, labels = [], []
    for n, line in enumerate(notes.read_text().splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split("\t")
        if len(parts) < 2:
            raise DatasetError(f"{notes} line {n}: expected '<file>\\t<wnid>\\t...'")
        if parts[1] in label_of:
            files.append(val_dir / "images" / parts[0])
            labels.append(label_of[parts[1]])
    for path in files:
        if not path.is_file():
            raise DatasetError(f"missing file {path} (listed in {notes}); expected {layout}")
    test = _folder_split(files, labels, len(wnids), size)
    return Dataset.from_splits("tiny-imagenet", classes, train, test)


_IMAGENETTE = {
    "n01440764": "tench",
    "n02102040": "English springer",
    "n02979186": "cassette player",
    "n03000684": "chain saw",
    "n03028079": "church",
    "n03394916": "French horn",
    "n03417042": "garbage truck",
    "n03425413": "gas pump",
    "n03445777": "golf ball",
    "n03888605": "parachute",
}
_IMAGEWOOF = {
    "n02086240": "Shih-Tzu",
    "n02087394": "Rhodesian ridgeback",
    "n02088364": "beagle",
    "n02089973": "English foxhound",
    "n02093754": "Border terrier",
    "n02096294": "Australian terrier",
    "n02099601": "golden retriever",
    "n02105641": "Old English sheepdog",
    "n02111889": "Samoyed",
    "n02115641": "dingo",
}


def _load_imagenet_subset(
    name: str, wnids: dict[str, str], root: str | os.PathLike | None, image_size: int | None
) -> Dataset:
    layout = (
        f"a {name}*/ folder (e.g. {name}2-320 from https://github.com/fastai/imagenette) with "
        f"train/<wnid>/* and val/<wnid>/* for the wnids {' '.join(wnids)}"
    )
    folder = _locate(root, name, ("train",), (f"{name}*",), layout)
    size = image_size or 128
    order = list(wnids)
    train = _class_folders_split(_need_dir(folder, "train", layout), order, size, layout)
    test = _class_folders_split(_need_dir(folder, "val", layout), order, size, layout)
    return Dataset.from_splits(name, tuple(wnids.values()), train, test)


def _load_imagenette(
    root: str | os.PathLike | None = None, image_size: int | None = None
) -> Dataset:
    """ImageNette (10 easy ImageNet classes), resized and centre-cropped (default 128)."""
    return _load_imagenet_subset("imagenette", _IMAGENETTE, root, image_size)


def _load_imagewoof(
    root: str | os.PathLike | None = None, image_size: int | None = None
) -> Dataset:
    """ImageWoof (10 dog breeds from ImageNet), resized and centre-cropped (default 128)."""
    return _load_imagenet_subset("imagewoof", _IMAGEWOOF, root, image_size)


def _load_imagefolder(
    root: str | os.PathLike | None = None, image_size: int | None = None
) -> Dataset:
    """Any ``train/<class>/`` + ``val/<class>/`` (or ``test/``) folder of images, as RGB.

    Classes are the sorted sub-folder names of ``train/``; default image_size 32.
    """
    layout = (
        "<root>/train/<class>/*.{jpg,png,...} and <root>/val/<class>/* (or test/), one "
        "sub-folder per class"
    )
    folder = _dataset_root(root, "imagefolder", layout)
    train_dir = _need_dir(folder, "train", layout)
    test_dir = folder / "val" if (folder / "val").is_dir() else folder / "test"
    if not test_dir.is_dir():
        raise DatasetError(f"missing folder {folder / 'val'} (or {test_dir}); expected {layout}")
    classes = sorted(p.name for p in train_dir.iterdir() if p.is_dir() and p.name[0] != ".")
    if not classes:
        raise DatasetError(f"{train_dir} has no class sub-folders; expected {layout}")
    extra = sorted(
        p.name
        for p in test_dir.iterdir()
        if p.is_dir() and p.name[0] != "." and p.name not in classes
    )
    if extra:
        raise DatasetError(f"{test_dir} has classes missing from {train_dir}: {extra}")
    size = image_size or 32
    train = _class_folders_split(train_dir, classes, size, layout)
    test = _class_folders_split(test_dir, classes, size, layout, allow_missing=True)
    return Dataset.from_splits("imagefolder", classes, train, test)


# --------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------

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
    only ``digits`` needs none. ``image_size`` applies to image-folder datasets.
    """
    key = _canonical(name)
    if key is None:
        raise ValueError(f"unknown dataset {name!r}; known: {', '.join(available_datasets())}")
    return DATASETS[key](root, image_size)
