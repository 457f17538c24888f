"""Image folders: Tiny-ImageNet, ImageNette, ImageWoof and any train/<class>/ tree.

Images are decoded in threads, resized (short side) and centre-cropped to a square.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .core import (
    Dataset,
    DatasetError,
    Split,
    _dataset_root,
    _locate,
    _need_dir,
    _need_file,
    check_image_size,
    check_memory,
)

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


def _to_8bit(img: Any, path: Path) -> Any:
    """A 16-bit grayscale image (PNG, TIFF) as 8-bit ``L``: 0..65535 mapped onto 0..255.

    Pillow's own conversion clips such pixels at 255 (a mostly white image); float or 32-bit
    pixels have no agreed range and are refused.
    """
    from PIL import Image

    arr = np.asarray(img)
    if img.mode == "F" or arr.size == 0 or int(arr.min()) < 0 or int(arr.max()) > 65535:
        low, high = (arr.min(), arr.max()) if arr.size else (0, 0)
        raise DatasetError(
            f"image {path} has {img.mode} pixels ({arr.dtype}, {low}..{high}), no 8- or "
            "16-bit range; convert it to 8-bit RGB or grayscale"
        )
    eight = (arr.astype(np.uint32) * 255 + 32767) // 65535
    return Image.fromarray(eight.astype(np.uint8), mode="L")


_WIDE_MODES = frozenset({"I", "I;16", "I;16L", "I;16B", "I;16N", "F"})


def _decode(path: Path, size: int) -> np.ndarray:
    """One image as uint8 RGB ``3 x size x size``: short side resized to ``size``, centre crop."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            w, h = img.size
            if min(w, h) >= 2 * size:
                img.draft("RGB", (size, size))  # JPEG: decode at a reduced scale, >= size
            if img.mode in _WIDE_MODES:
                img = _to_8bit(img, path)
            rgb = img.convert("RGB")
    except DatasetError:
        raise
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
    check_image_size(size)
    check_memory(
        len(paths) * 3 * size * size,
        f"{len(paths)} images of 3 x {size} x {size} bytes (one split, decoded)",
    )
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
