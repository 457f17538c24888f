"""The containers every loader returns (:class:`Dataset`, :class:`Split`) and shared helpers.

A :class:`Dataset` holds uint8 ``N x C x H x W`` train and test splits, int64 labels, class
names, and the per-channel mean and std of the *train* images (in [0, 1] units). Networks and
synthetic images live in the space normalised by that mean and std; :meth:`Dataset.normalize`
and :meth:`Dataset.denormalize` convert between the two.

A split's images are a uint8 tensor in memory, or, for a dataset store (``store.py``), a
lazy per-class source whose files are memory-mapped on first access (see :class:`Split`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = [
    "Dataset",
    "DatasetError",
    "ImageSource",
    "Split",
    "channel_stats",
    "MAX_IMAGE_SIZE",
    "available_memory",
    "check_image_size",
    "check_memory",
]

# The largest --image-size a loader resizes to: the networks here are built for 8 to 512
# pixels across (ConvNet's depth grows with the size), and one 3 x 1024 x 1024 image is
# already 3 MiB of uint8 (12 MiB once normalised).
MAX_IMAGE_SIZE = 1024


class DatasetError(ValueError):
    """A dataset file or folder is missing or malformed (the message says which and why)."""


# --------------------------------------------------------------------------------------
# Containers
# --------------------------------------------------------------------------------------


class ImageSource:
    """Images that stay on disk until asked for: the contract of a lazy ``Split.images``.

    A subclass (the store's per-class arrays, ``store.py``) gives ``shape`` (``N x C x H x W``),
    :meth:`gather` (uint8 images at int64 indices, in order, read on demand) and
    :meth:`select` (the images of a boolean mask, lazily where it can). From these, this
    class provides the few tensor operations the package applies to ``Split.images``:
    ``len``, ``.dtype`` (uint8), ``.dim()``, ``x[idx]`` (int64 indices, a boolean mask, a
    slice or an int) and ``x.index_select(0, idx)``, each returning a uint8 tensor. Prefer
    :meth:`Split.gather` in new code; :meth:`Split.materialize` reads everything.
    """

    dtype = torch.uint8

    @property
    def shape(self) -> torch.Size:  # pragma: no cover - abstract
        raise NotImplementedError

    def gather(self, idx: torch.Tensor) -> torch.Tensor:  # pragma: no cover - abstract
        """uint8 ``len(idx) x C x H x W``: the images at int64 indices ``idx`` (in order)."""
        raise NotImplementedError

    def select(self, mask: torch.Tensor) -> ImageSource | torch.Tensor:
        """The images where the boolean ``mask`` is true (default: read into memory)."""
        return self.gather(torch.nonzero(mask).reshape(-1))

    def __len__(self) -> int:
        return int(self.shape[0])

    def dim(self) -> int:
        return len(self.shape)

    def contiguous(self) -> ImageSource:
        return self

    def index_select(self, dim: int, idx: torch.Tensor) -> torch.Tensor:
        if dim != 0:
            raise ValueError(f"{type(self).__name__} selects along dimension 0 only")
        return self.gather(idx)

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, int):
            return self.gather(torch.tensor([key]))[0]
        if isinstance(key, slice):
            return self.gather(torch.arange(len(self))[key])
        key = torch.as_tensor(key)
        if key.dim() == 0 and key.dtype != torch.bool:  # a scalar index: one image
            return self.gather(key.reshape(1).to(torch.int64))[0]
        if key.dtype == torch.bool:
            if key.shape != (len(self),):
                raise IndexError(f"mask of shape {tuple(key.shape)} for {len(self)} images")
            return self.gather(torch.nonzero(key).reshape(-1))
        return self.gather(key.to(torch.int64).reshape(-1))

    def __repr__(self) -> str:
        return f"{type(self).__name__}(shape={tuple(self.shape)})"


class IndexedSource(ImageSource):
    """The images of another source at ``index`` (int64), read through it on demand."""

    def __init__(self, base: ImageSource, index: torch.Tensor) -> None:
        self._base = base
        self._index = torch.as_tensor(index, dtype=torch.int64).reshape(-1)

    @property
    def shape(self) -> torch.Size:
        return torch.Size((len(self._index), *self._base.shape[1:]))

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        return self._base.gather(self._index[torch.as_tensor(idx, dtype=torch.int64)])


@dataclass(frozen=True, eq=False)
class Split:
    """One split (train or test): uint8 images ``N x C x H x W`` and int64 labels ``N``.

    The per-class index is built once here so that drawing a class batch costs only an
    index into the uint8 tensor. ``num_classes`` (optional) fixes the length of
    :meth:`class_counts`; without it, it is ``max(label) + 1``.

    ``images`` is a uint8 tensor in memory, or an :class:`ImageSource` (a dataset store's
    memory-mapped per-class files) that reads only the images asked for. Read images with
    :meth:`gather` (a batch) or :meth:`materialize` (all); both work for either kind.
    """

    images: torch.Tensor | ImageSource
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
        if not isinstance(images, ImageSource | torch.Tensor):
            raise ValueError(f"Split.images must be a tensor or an ImageSource, got {images!r}")
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

    @property
    def lazy(self) -> bool:
        """True when the images are read from disk on demand (a dataset store)."""
        return isinstance(self.images, ImageSource)

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        """uint8 images at the int64 indices ``idx`` (a store reads only those)."""
        return self.images.index_select(0, idx)

    def materialize(self) -> torch.Tensor:
        """All images as one uint8 tensor (a store reads every file of the split)."""
        if isinstance(self.images, ImageSource):
            return self.images.gather(torch.arange(len(self)))
        return self.images

    def select(
        self, mask: torch.Tensor, labels: torch.Tensor | None = None, num_classes: int | None = None
    ) -> Split:
        """The samples where ``mask`` is true (lazily for a store where whole classes are kept).

        ``labels`` and ``num_classes`` (optional) replace the kept samples' labels and the
        class count (e.g. remapped ids); by default both are kept.
        """
        if isinstance(self.images, ImageSource):
            images = self.images.select(mask)
        else:
            images = self.images[mask]
        if labels is None:
            return Split(images, self.labels[mask], self.num_classes)
        return Split(images, labels, num_classes)


@dataclass(frozen=True, eq=False)
class Dataset:
    """A classification dataset (in memory, or a store's lazy splits) with its normalisation.

    ``mean`` and ``std`` are the per-channel statistics of the train images in [0, 1]
    units; use :meth:`from_splits` to compute them from the data.
    """

    name: str
    classes: tuple[str, ...]
    train: Split
    test: Split
    mean: tuple[float, ...]
    std: tuple[float, ...]
    held_out: int = 0  # train images per class moved to the test split (holdout); 0: none
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
        return self.normalize(self.train.gather(idx))

    def train_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All train images normalised (float32) and their labels."""
        return self.normalize(self.train.materialize()), self.train.labels.clone()

    def test_tensors(self) -> tuple[torch.Tensor, torch.Tensor]:
        """All test images normalised (float32) and their labels."""
        return self.normalize(self.test.materialize()), self.test.labels.clone()

    def holdout(self, per_class: int) -> Dataset:
        """The same dataset with ``per_class`` train images of every class held out: the
        train split without them, and they as the test split.

        For tuning without the test set: condense from the rest, evaluate on them. The
        held-out images depend on ``per_class`` and the train split alone (a fixed draw, the
        same in every run and process), so runs with the same ``per_class`` are comparable.
        Mean and std stay the whole train split's, so sets stay compatible. ``per_class`` 0:
        this dataset unchanged.
        """
        if per_class < 0:
            raise ValueError(f"holdout must be >= 0 images per class, got {per_class}")
        if per_class == self.held_out:
            return self  # 0, or already these images held out
        if self.held_out:
            raise ValueError(
                f"{self.name} already holds out {self.held_out} images per class; hold out "
                f"{per_class} from the whole dataset instead"
            )
        gen = torch.Generator().manual_seed(HOLDOUT_SEED)
        held = torch.zeros(len(self.train), dtype=torch.bool)
        for c in range(self.num_classes):
            idx = self.train.class_indices(c)
            if per_class >= len(idx):
                raise ValueError(
                    f"{self.name}: holdout {per_class} images per class leaves class {c} "
                    f"({self.classes[c]}) with none of its {len(idx)} train images; hold out "
                    "fewer"
                )
            held[idx[torch.randperm(len(idx), generator=gen)[:per_class]]] = True

        def part(mask: torch.Tensor) -> Split:
            index = torch.nonzero(mask).reshape(-1)
            images = self.train.images
            # a store's images stay on disk: read through the index on demand
            kept = IndexedSource(images, index) if isinstance(images, ImageSource) else None
            return Split(
                kept if kept is not None else images[index],
                self.train.labels[index],
                self.num_classes,
            )

        return Dataset(
            self.name, self.classes, part(~held), part(held), self.mean, self.std, per_class
        )

    def subset_classes(self, classes: Sequence[int], relabel: bool = False) -> Dataset:
        """Only the samples of ``classes`` (continual learning, a block of classes).

        Labels keep their original ids and class names are unchanged; with ``relabel``,
        label i is ``classes[i]`` and the names follow (a dataset of ``len(classes)``
        classes). Mean and std are unchanged. A store's splits stay lazy: only the kept
        classes' files are ever read.
        """
        keep = torch.as_tensor(list(classes), dtype=torch.int64)
        if len(keep) == 0 or len(torch.unique(keep)) != len(keep):
            raise ValueError(f"subset_classes needs distinct class ids, got {list(classes)}")
        if int(keep.min()) < 0 or int(keep.max()) >= self.num_classes:
            raise ValueError(f"class ids must be in [0, {self.num_classes}), got {keep.tolist()}")

        if not relabel:

            def pick(split: Split) -> Split:
                return split.select(torch.isin(split.labels, keep))

            return Dataset(
                self.name,
                self.classes,
                pick(self.train),
                pick(self.test),
                self.mean,
                self.std,
                self.held_out,
            )
        lut = torch.full((self.num_classes,), -1, dtype=torch.int64)
        lut[keep] = torch.arange(len(keep))

        def pick_relabelled(split: Split) -> Split:
            mask = torch.isin(split.labels, keep)
            return split.select(mask, lut[split.labels[mask]], len(keep))

        names = tuple(self.classes[c] for c in keep.tolist())
        return Dataset(
            self.name,
            names,
            pick_relabelled(self.train),
            pick_relabelled(self.test),
            self.mean,
            self.std,
            self.held_out,
        )


_NO_FLIP = frozenset({"mnist", "svhn", "digits"})
HOLDOUT_SEED = 20250101  # the draw of Dataset.holdout: fixed, so every run holds out the same


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
# Shared helpers: root resolution, file checks (used by the format modules)
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
# Memory: refuse before allocating what the machine cannot hold
# --------------------------------------------------------------------------------------


def _cgroup_free() -> int | None:
    """Bytes this process's cgroup may still allocate (v2 or v1), or None without a limit."""
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (
            "/sys/fs/cgroup/memory/memory.limit_in_bytes",
            "/sys/fs/cgroup/memory/memory.usage_in_bytes",
        ),
    ):
        try:
            limit = Path(limit_file).read_text().strip()
            usage = int(Path(usage_file).read_text().strip())
        except (OSError, ValueError):
            continue
        if limit == "max" or not limit.isdigit() or int(limit) >= 1 << 60:
            return None
        return max(0, int(limit) - usage)
    return None


def available_memory() -> int | None:
    """Bytes of memory available to this process (Linux: MemAvailable, capped by the cgroup's
    limit), or None where the system does not say."""
    found = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                found = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        pass
    cgroup = _cgroup_free()
    if cgroup is not None:
        found = cgroup if found is None else min(found, cgroup)
    return found


def _gib(n: float) -> str:
    """Bytes in words: '21.0 GiB', '72.0 KiB', '1000 bytes'."""
    for unit, size in (("TiB", 2**40), ("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if n >= size:
            return f"{n / size:.1f} {unit}"
    return f"{int(n)} bytes"


def check_image_size(size: int) -> None:
    """Refuse an image size no loader should allocate (``MAX_IMAGE_SIZE``)."""
    if size <= 0:
        raise DatasetError(f"--image-size must be positive, got {size}")
    if size > MAX_IMAGE_SIZE:
        raise DatasetError(
            f"--image-size {size} is above the largest supported, {MAX_IMAGE_SIZE} (one "
            f"{size}x{size} RGB image is {_gib(3 * size * size)}); use a smaller size"
        )


def check_memory(needed: int, what: str) -> None:
    """Raise DatasetError when ``needed`` bytes (for ``what``) exceed the available memory."""
    free = available_memory()
    if free is not None and needed > free:
        raise DatasetError(
            f"{what} needs about {_gib(needed)} of memory, and {_gib(free)} is available; "
            "use a smaller --image-size or fewer images (`ddm prepare` makes a store read "
            "from disk on demand)"
        )
