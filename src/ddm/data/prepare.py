"""``ddm prepare``: turn a class-folder tree of images into a dataset store (``store.py``).

Accepted layouts under ``--src``:

- ``train/<class>/...`` and ``val/<class>/...`` (or ``test/``): ImageNette, ImageWoof, any
  image folder, ImageNet-1K with its validation images sorted into class folders.
- ``train/<wnid>/...`` and a flat ``val/`` of images (ImageNet-1K as published): the labels
  come from ``--val-labels FILE`` (lines ``<file> <class>``, separated by spaces, tabs or a
  comma; the file name with or without its extension, e.g. Tiny-ImageNet's
  ``val_annotations.txt``), or from Kaggle's ``LOC_val_solution.csv`` (``ImageId,
  PredictionString``, the class the first token), found in ``--src`` or up to three folders
  above it (``<top>/ILSVRC/Data/CLS-LOC/`` as ``--src``, the csv in ``<top>/``).

Classes are the sorted sub-folders of ``train/``, or ``--classes`` (a comma list or a file of
names, one a line; label k is the k-th name). Every image is decoded to RGB, its short side
resized to ``image_size`` and centre-cropped (as the image-folder loaders do), in parallel
threads. Each class is written as a unit (its train and val arrays, then its index entry),
every file atomically, so a stopped run continues where it stopped when the same command is
run again. Images that cannot be decoded are skipped, listed in ``corrupt.txt`` and counted.
The mean and std are exact: integer pixel sums per class, combined at the end.
"""

from __future__ import annotations

import csv
import os
import re
import tempfile
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from fractions import Fraction
from math import sqrt
from pathlib import Path
from typing import Any

import numpy as np

from .core import DatasetError, check_image_size, check_memory
from .folders import _decode, _list_images
from .store import INDEX_FILE, SPLITS, STORE_FORMAT, STORE_VERSION, class_file

__all__ = ["PrepareReport", "prepare_store"]

CORRUPT_FILE = "corrupt.txt"
KAGGLE_VAL_CSV = "LOC_val_solution.csv"
_LAYOUT = (
    "--src must hold train/<class>/ image folders and val/<class>/ folders (or test/), or a "
    "flat val/ of images with --val-labels FILE (lines '<file> <class>') or Kaggle's "
    f"{KAGGLE_VAL_CSV}"
)


@dataclass(frozen=True)
class PrepareReport:
    """What a ``prepare_store`` call did."""

    store: Path
    classes: int
    train_images: int
    val_images: int
    written_classes: int  # classes decoded by this call (the rest were already done)
    corrupt: tuple[str, ...]
    bytes: int  # size of the store's arrays on disk


def _class_names(src_train: Path, classes: str | Sequence[str] | None) -> list[str]:
    found = sorted(p.name for p in src_train.iterdir() if p.is_dir() and p.name[0] != ".")
    if classes is None:
        if not found:
            raise DatasetError(f"{src_train} has no class sub-folders; {_LAYOUT}")
        return found
    if isinstance(classes, str):
        text = Path(classes).read_text() if Path(classes).is_file() else classes
        names = [c for c in re.split(r"[,\s]+", text) if c]
    else:
        names = [str(c) for c in classes]
    if not names or len(set(names)) != len(names):
        raise DatasetError(f"--classes must name distinct classes, got {names[:5]}...")
    missing = [c for c in names if c not in set(found)]
    if missing:
        raise DatasetError(f"--classes names folders missing from {src_train}: {missing[:5]}")
    return names


def _read_val_labels(path: Path) -> dict[str, str]:
    """``{file stem: class}`` from a Kaggle CSV or '<file> <class>' lines."""
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise DatasetError(f"cannot read validation labels {path}: {err}") from err
    labels: dict[str, str] = {}
    lines = text.splitlines()
    if lines and lines[0].replace(" ", "").lower().startswith("imageid,predictionstring"):
        for row in csv.reader(lines[1:]):
            if len(row) >= 2 and row[1].split():
                labels[Path(row[0]).stem] = row[1].split()[0]
        return labels
    for n, line in enumerate(lines, 1):
        parts = [p for p in re.split(r"[,\s]+", line.strip()) if p]
        if not parts:
            continue
        if len(parts) < 2:
            raise DatasetError(f"{path} line {n}: expected '<file> <class>', got {line!r}")
        labels[Path(parts[0]).stem] = parts[1]
    return labels


def _val_files(
    src: Path, names: Sequence[str], val_labels: str | os.PathLike | None
) -> list[list[Path]]:
    """Validation images per class (in ``names`` order)."""
    val = src / "val" if (src / "val").is_dir() else src / "test"
    if not val.is_dir():
        raise DatasetError(f"missing folder {src / 'val'} (or {src / 'test'}); {_LAYOUT}")
    sub = {p.name for p in val.iterdir() if p.is_dir()}
    if val_labels is None and sub & set(names):
        return [_list_images(val / c, _LAYOUT) if (val / c).is_dir() else [] for c in names]
    if val_labels is not None:
        label_file = Path(val_labels)
    else:
        # Kaggle: <top>/ILSVRC/Data/CLS-LOC/{train,val}/ with <top>/LOC_val_solution.csv
        near = (src, *src.resolve().parents[:3])
        found = [d / KAGGLE_VAL_CSV for d in near if (d / KAGGLE_VAL_CSV).is_file()]
        if not found:
            raise DatasetError(
                f"{val} holds no class folders; name its labels with --val-labels FILE "
                f"('<file> <class>' lines) or put Kaggle's {KAGGLE_VAL_CSV} beside {src}"
            )
        label_file = found[0]
    labels = _read_val_labels(label_file)
    images = _list_images(val, _LAYOUT)
    k_of = {c: k for k, c in enumerate(names)}
    per_class: list[list[Path]] = [[] for _ in names]
    unlabelled = [p for p in images if p.stem not in labels]
    if unlabelled:
        raise DatasetError(
            f"{len(unlabelled)} images of {val} have no label in {label_file} "
            f"(e.g. {unlabelled[0].name})"
        )
    for p in images:
        if labels[p.stem] in k_of:  # images of classes left out by --classes are skipped
            per_class[k_of[labels[p.stem]]].append(p)
    if not any(per_class):
        raise DatasetError(
            f"no image of {val} has one of the classes of train/ in {label_file} (its labels "
            f"must be class names, e.g. wnids: {labels[next(iter(labels))]!r} is not one)"
        )
    return per_class


def _save_npy(path: Path, array: np.ndarray) -> None:
    """``np.save`` to a temporary file in the same folder, then one rename."""
    from ..io import new_file_mode

    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # mkstemp makes 0600 files; a store follows the umask
            os.fchmod(fd, new_file_mode())
        with os.fdopen(fd, "wb") as f:
            np.save(f, array, allow_pickle=False)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _write_index(store: Path, index: dict[str, Any]) -> None:
    from ..io import atomic_write_json

    atomic_write_json(store / INDEX_FILE, index)


def _stats(index: dict[str, Any]) -> tuple[list[float], list[float]]:
    """Exact per-channel mean and std over every train pixel, from the integer sums."""
    channels = index["channels"]
    pixels = sum(index["train_counts"]) * index["image_size"] ** 2
    if pixels == 0:
        raise DatasetError("the store has no train image that could be decoded")
    mean, std = [], []
    for ch in range(channels):
        s1 = sum(int(s[ch]) for s in index["pixel_sum"])
        s2 = sum(int(s[ch]) for s in index["pixel_sumsq"])
        m = Fraction(s1, pixels * 255)
        var = Fraction(s2, pixels * 255**2) - m * m
        mean.append(float(m))
        std.append(sqrt(float(var)))
    return mean, std


def prepare_store(
    src: str | os.PathLike,
    out: str | os.PathLike,
    image_size: int,
    *,
    val_labels: str | os.PathLike | None = None,
    classes: str | Sequence[str] | None = None,
    name: str | None = None,
    workers: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = print,
) -> PrepareReport:
    """Write (or finish) the store ``out`` from the class-folder tree ``src`` (module doc)."""
    from tqdm.auto import tqdm

    check_image_size(image_size)
    src, store = Path(src).expanduser(), Path(out).expanduser()
    if not (src / "train").is_dir():
        raise DatasetError(f"missing folder {src / 'train'}; {_LAYOUT}")
    names = _class_names(src / "train", classes)
    train_files = [_list_images(src / "train" / c, _LAYOUT) for c in names]
    val_files = _val_files(src, names, val_labels)

    fresh = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "name": name or src.resolve().name,
        "source": str(src.resolve()),
        "image_size": image_size,
        "channels": 3,
        "classes": names,
        "complete": False,
        "train_counts": [None] * len(names),
        "val_counts": [None] * len(names),
        "mean": None,
        "std": None,
        "pixel_sum": [None] * len(names),
        "pixel_sumsq": [None] * len(names),
        "corrupt": [[] for _ in names],
    }
    index = fresh
    if (store / INDEX_FILE).is_file():
        index = _resumable_index(store, fresh)
    elif store.exists() and any(store.iterdir()):
        raise DatasetError(f"{store} is not empty and holds no store; name a new --out folder")
    for split in SPLITS:
        (store / split).mkdir(parents=True, exist_ok=True)
        for stale in (store / split).glob(".*.tmp"):  # left by a stopped run
            stale.unlink(missing_ok=True)

    todo = [
        k
        for k in range(len(names))
        if index["train_counts"][k] is None
        or not all(class_file(store, s, k).is_file() for s in SPLITS)
    ]
    total = sum(len(train_files[k]) + len(val_files[k]) for k in todo)
    if log and todo and len(todo) < len(names):
        done = len(names) - len(todo)
        log(f"{store}: {done} of {len(names)} classes already written; continuing")
    workers = workers or min(32, (os.cpu_count() or 1) + 2)
    if todo:  # a class is held twice while stacked (its decoded images and their array)
        largest = max(max(len(train_files[k]), len(val_files[k])) for k in todo)
        check_memory(
            2 * largest * 3 * image_size * image_size,
            f"the largest class ({largest} images of 3 x {image_size} x {image_size} bytes, "
            "twice while stacked)",
        )

    def decode(path: Path) -> np.ndarray | None:
        try:
            return _decode(path, image_size)
        except Exception:  # any failure to read or decode one image: skipped and listed
            return None

    if todo:
        index["complete"] = False

    bar = tqdm(total=total, desc=f"prepare {store.name}", unit="img", disable=not progress)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        for k in todo:
            counts, corrupt = {}, []
            for split, files in (("train", train_files[k]), ("val", val_files[k])):
                images = []
                for path, img in zip(files, pool.map(decode, files), strict=True):
                    bar.update(1)
                    if img is None:
                        corrupt.append(str(path))
                    else:
                        images.append(img)
                shape = (len(images), 3, image_size, image_size)
                array = np.stack(images) if images else np.zeros(shape, dtype=np.uint8)
                _save_npy(class_file(store, split, k), array)
                counts[split] = len(images)
                if split == "train":
                    index["pixel_sum"][k], index["pixel_sumsq"][k] = _pixel_sums(array)
            index["train_counts"][k] = counts["train"]
            index["val_counts"][k] = counts["val"]
            index["corrupt"][k] = corrupt
            _write_index(store, index)
    bar.close()

    index["mean"], index["std"] = _stats(index)
    index["complete"] = True
    bad = [p for per_class in index["corrupt"] for p in per_class]
    from ..io import atomic_write_bytes

    atomic_write_bytes(store / CORRUPT_FILE, "".join(f"{p}\n" for p in bad).encode())
    _write_index(store, index)
    size = sum(class_file(store, s, k).stat().st_size for s in SPLITS for k in range(len(names)))
    report = PrepareReport(
        store,
        len(names),
        sum(index["train_counts"]),
        sum(index["val_counts"]),
        len(todo),
        tuple(bad),
        size,
    )
    if log:
        empty = [names[k] for k in range(len(names)) if index["train_counts"][k] == 0]
        log(
            f"{store}: {report.classes} classes, {report.train_images} train + "
            f"{report.val_images} val images of {image_size}x{image_size} "
            f"({size / 2**30:.2f} GiB); {len(bad)} corrupt images skipped"
            + (f" (listed in {store / CORRUPT_FILE})" if bad else "")
            + (f"; classes with no train image: {empty[:5]}" if empty else "")
        )
    return report


def _pixel_sums(images: np.ndarray) -> tuple[list[int], list[int]]:
    """Exact per-channel sums of the values and of their squares (from byte histograms)."""
    values = np.arange(256, dtype=np.int64)
    sums, squares = [], []
    for ch in range(images.shape[1]):
        hist = np.bincount(images[:, ch].reshape(-1), minlength=256).astype(np.int64)
        sums.append(int((hist * values).sum()))
        squares.append(int((hist * values**2).sum()))
    return sums, squares


def _resumable_index(store: Path, fresh: dict[str, Any]) -> dict[str, Any]:
    """The index of a store being continued; refused when it was made with other settings."""
    import json

    try:
        index = json.loads((store / INDEX_FILE).read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise DatasetError(
            f"{store / INDEX_FILE} is unreadable ({err}); remove the store or name another --out"
        ) from err
    for key in ("format", "version", "source", "image_size", "classes"):
        if index.get(key) != fresh[key]:
            raise DatasetError(
                f"{store} holds a store made with another {key} ({index.get(key)!r:.80}, now "
                f"{fresh[key]!r:.80}); name another --out"
            )
    return index
