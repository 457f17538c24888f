"""Condensed sets in the formats of the field's other tools: export, and import for evaluation.

Export (``ddm export``), as class-major sets in the run's class order:

- ``imagefolder``: ``00000/``, ``00001/``, ... (zero-padded class index), each holding the
  class's images as de-normalised 8-bit PNGs (``00000.png``, ...; RGB, or L for one channel),
  and ``classes.txt`` (line k: the name of class k). DD-Ranking and every ImageFolder reader
  take this tree.
- ``tensors``: ``images.pt`` (float32 N x C x H x W, **normalised** with the run's mean/std,
  i.e. the data's own statistics, not DD-Ranking's), ``labels.pt`` (int64 N), ``mean.pt`` and
  ``std.pt`` (float32 C), ``export.json`` (the constants, stated) and ``classes.txt``; plain
  tensors that ``torch.load(path, weights_only=True)`` reads, and ``ddm evaluate`` reads back.
- ``ddranking``: DD-Ranking's input, in its normalisation, with a ready YAML config
  (``ddm.ddranking``).

IDM sets are expanded first (the images a network is trained on) unless ``expand=False``.

Import (``ddm evaluate PATH --dataset NAME``), into a :class:`~ddm.io.SyntheticSet` in the
real dataset's normalised space:

- an image folder of class sub-folders, numbered (``00000``, ``0``, ...) or named by the
  dataset's classes; every image must have the dataset's size and mode (RGB, or L for one
  channel), nothing is resized. Pixels are read as [0, 1] and normalised with the dataset's
  mean/std, like its real images.
- a folder of ``images.pt`` + ``labels.pt``: the ``tensors`` and ``ddranking`` exports, or a
  bare pair in DD-Ranking's normalisation, hard or soft labels (``ddm.ddranking``).
- a ``.pt`` file in the layout of the DM/DC code (and DC-BENCH): ``{'data': [[images,
  labels], ...]}``, one pair per experiment, other keys ignored. Those images are stored
  normalised with the mean/std that code uses for the dataset (``DMDC_NORMALIZATION``); other
  statistics can be given, or the tensors declared to be [0, 1] pixels. The file is read with
  ``torch.load(..., weights_only=True)`` only: a file that needs code to load is refused.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
import warnings
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import __version__
from .data import Dataset
from .io import (
    META_FILE,
    SYNTHETIC_FILE,
    RunFolderError,
    SyntheticSet,
    atomic_write_bytes,
    atomic_write_json,
)

__all__ = [
    "EXPORT_FORMATS",
    "CLASSES_FILE",
    "DMDC_NORMALIZATION",
    "ExternalSetError",
    "export_set",
    "export_imagefolder",
    "export_tensors",
    "to_uint8",
    "is_run_folder",
    "read_image_folder",
    "read_dmdc_pt",
    "import_set",
]

EXPORT_FORMATS = ("imagefolder", "tensors", "ddranking")
CLASSES_FILE = "classes.txt"
TENSOR_FILES = ("images.pt", "labels.pt", "mean.pt", "std.pt", "export.json", "ddranking.yaml")
IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".bmp", ".webp"})
_CLASS_DIR = re.compile(r"\d{5}")

# The per-channel mean/std the DM/DC reference code (utils.get_dataset) normalises with, so
# the images in its .pt files are (pixels - mean) / std with these; IDM and DC-BENCH use the
# same. Not the exact statistics of the data (CIFAR-10's std there is 0.2023, not 0.247).
# Files from the first DC release normalised CIFAR-100 with CIFAR-10's statistics: give
# those with --syn-mean/--syn-std.
DMDC_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fashion-mnist": ((0.2861,), (0.3530,)),
    "svhn": ((0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4866, 0.4409), (0.2673, 0.2564, 0.2762)),
    "tiny-imagenet": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagenette": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
    "imagewoof": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}


class ExternalSetError(ValueError):
    """A set made elsewhere is missing, unreadable, or does not fit the real dataset."""


# --- export --------------------------------------------------------------------------------------


def _trained_images(syn: SyntheticSet, expand: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The set's images (expanded for IDM unless ``expand`` is False), class-major."""
    images, labels = syn.expanded() if expand else (syn.images, syn.labels)
    order = torch.argsort(labels, stable=True)
    return images[order].detach().float().contiguous(), labels[order].long().contiguous()


def _class_names(syn: SyntheticSet, labels: torch.Tensor) -> list[str]:
    n = int(syn.meta.get("num_classes") or int(labels.max()) + 1)
    names = list(syn.meta.get("classes") or [])
    return [str(names[k]) if k < len(names) else str(k) for k in range(n)]


def _prepare_out(out: Path, overwrite: bool) -> None:
    """Create ``out``; refuse a non-empty one unless ``overwrite`` (which clears an export)."""
    if out.exists() and not out.is_dir():
        raise RunFolderError(f"--out {out} is a file; name a folder")
    if out.is_dir() and any(out.iterdir()):
        if not overwrite:
            raise RunFolderError(
                f"{out} is not empty; name a new or empty folder, or pass --overwrite"
            )
        for name in (CLASSES_FILE, *TENSOR_FILES):
            (out / name).unlink(missing_ok=True)
        for sub in out.iterdir():
            if sub.is_dir() and _CLASS_DIR.fullmatch(sub.name):
                shutil.rmtree(sub)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise RunFolderError(f"cannot create {out}: {exc.strerror or exc}") from exc


def to_uint8(images01: torch.Tensor) -> np.ndarray:
    """[0, 1] images N x C x H x W -> uint8 N x H x W x C, rounded to the nearest level."""
    x = (images01.clamp(0, 1) * 255).round().to(torch.uint8)
    return x.permute(0, 2, 3, 1).cpu().numpy()


def export_imagefolder(
    syn: SyntheticSet, out: str | os.PathLike, *, expand: bool = True, overwrite: bool = False
) -> int:
    """Write ``out/<class:05d>/<i:05d>.png`` and ``classes.txt``; returns the images written."""
    from PIL import Image

    out = Path(out)
    images, labels = _trained_images(syn, expand)
    channels = images.shape[1]
    if channels not in (1, 3):
        raise ValueError(f"PNG export needs 1 or 3 channels, the set has {channels}")
    names = _class_names(syn, labels)
    _prepare_out(out, overwrite)
    pixels = to_uint8(syn.denormalized(images))
    counts: dict[int, int] = {}
    for arr, label in zip(pixels, labels.tolist(), strict=True):
        folder = out / f"{label:05d}"
        if label not in counts:
            folder.mkdir(exist_ok=True)
        i = counts[label] = counts.get(label, -1) + 1
        img = Image.fromarray(arr[..., 0] if channels == 1 else arr)  # uint8: L or RGB
        buf = BytesIO()
        img.save(buf, format="PNG")
        atomic_write_bytes(folder / f"{i:05d}.png", buf.getvalue(), sync=False)
    # written last: a folder with classes.txt holds a complete export
    atomic_write_bytes(out / CLASSES_FILE, ("\n".join(names) + "\n").encode())
    return len(labels)


def _tensor_bytes(t: torch.Tensor) -> bytes:
    buf = BytesIO()
    torch.save(t.detach().cpu().clone(), buf)  # clone: save this tensor, not a larger storage
    return buf.getvalue()


def export_tensors(
    syn: SyntheticSet, out: str | os.PathLike, *, expand: bool = True, overwrite: bool = False
) -> int:
    """Write ``images.pt``, ``labels.pt``, ``mean.pt``, ``std.pt`` and ``classes.txt``."""
    out = Path(out)
    images, labels = _trained_images(syn, expand)
    names = _class_names(syn, labels)
    _prepare_out(out, overwrite)
    tensors = {
        "images.pt": images,
        "labels.pt": labels,
        "mean.pt": torch.tensor(syn.meta["mean"], dtype=torch.float32),
        "std.pt": torch.tensor(syn.meta["std"], dtype=torch.float32),
    }
    for name, t in tensors.items():
        atomic_write_bytes(out / name, _tensor_bytes(t))
    atomic_write_json(
        out / "export.json",
        {
            "format": "tensors",
            "dataset": syn.meta.get("dataset"),
            "images": "images.pt: float32 N x C x H x W, class-major, normalised as below",
            "labels": "labels.pt: int64 N class indices",
            "mean": list(syn.meta["mean"]),
            "std": list(syn.meta["std"]),
            "normalisation": "the data's own per-channel statistics (ddm's); DD-Ranking "
            "normalises with other constants: export --format ddranking for its input",
            "version": __version__,
        },
    )
    atomic_write_bytes(out / CLASSES_FILE, ("\n".join(names) + "\n").encode())
    return len(labels)


def export_set(
    syn: SyntheticSet,
    out: str | os.PathLike,
    fmt: str,
    *,
    expand: bool = True,
    overwrite: bool = False,
) -> int:
    """Export in ``fmt`` (one of ``EXPORT_FORMATS``); returns the number of images written."""
    from .ddranking import export_ddranking

    writers = {
        "imagefolder": export_imagefolder,
        "tensors": export_tensors,
        "ddranking": export_ddranking,
    }
    if fmt not in writers:
        raise ValueError(f"unknown export format {fmt!r}; known: {', '.join(EXPORT_FORMATS)}")
    return writers[fmt](syn, out, expand=expand, overwrite=overwrite)


# --- import --------------------------------------------------------------------------------------


def is_run_folder(path: str | os.PathLike) -> bool:
    """A folder written by condense/baseline (or a .safetensors file), not a set from elsewhere."""
    path = Path(path)
    if path.suffix == ".safetensors":
        return True
    return path.is_dir() and ((path / SYNTHETIC_FILE).exists() or (path / META_FILE).exists())


def _class_of_folders(folder: Path, names: Sequence[str], dataset: Dataset) -> list[int]:
    """Label of each class folder: its number, or its position in the dataset's classes."""
    if all(n.isdigit() for n in names):
        labels = [int(n) for n in names]
        bad = [n for n, k in zip(names, labels, strict=True) if k >= dataset.num_classes]
        if bad:
            raise ExternalSetError(
                f"{folder}: class folder(s) {', '.join(bad)} out of range for "
                f"{dataset.name} ({dataset.num_classes} classes, 0..{dataset.num_classes - 1})"
            )
        if len(set(labels)) != len(labels):
            raise ExternalSetError(f"{folder}: two class folders have the same number")
        return labels
    index = {c: k for k, c in enumerate(dataset.classes)}
    if all(n in index for n in names):
        return [index[n] for n in names]
    raise ExternalSetError(
        f"{folder}: class folders must be numbered (00000, 00001, ...) or named by "
        f"{dataset.name}'s classes ({', '.join(dataset.classes[:3])}, ...); "
        f"got {', '.join(names[:3])}{', ...' if len(names) > 3 else ''}"
    )


def _read_image(path: Path, dataset: Dataset) -> np.ndarray:
    """uint8 C x H x W, refusing another size or mode than the dataset's (nothing resized)."""
    from PIL import Image

    mode = "L" if dataset.channels == 1 else "RGB"
    size = dataset.image_size
    try:
        with Image.open(path) as img:
            if img.size != (size, size):
                raise ExternalSetError(
                    f"image {path} is {img.size[0]}x{img.size[1]}; {dataset.name} images are "
                    f"{size}x{size} (synthetic images are not resized)"
                )
            if img.mode != mode:
                raise ExternalSetError(
                    f"image {path} has mode {img.mode}; {dataset.name} needs {mode} "
                    f"({dataset.channels} channel{'s' if dataset.channels > 1 else ''})"
                )
            arr = np.asarray(img, dtype=np.uint8)
    except ExternalSetError:
        raise
    except (OSError, ValueError, SyntaxError) as exc:
        raise ExternalSetError(f"cannot read image {path}: {exc}") from None
    return arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)


def read_image_folder(folder: str | os.PathLike, dataset: Dataset) -> SyntheticSet:
    """A folder of class sub-folders of images, normalised like ``dataset``'s real images."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ExternalSetError(f"missing folder {folder}")
    subs = sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not subs:
        raise ExternalSetError(
            f"{folder} has no class sub-folders; expected {folder}/00000/*.png, "
            f"{folder}/00001/*.png, ... (one folder per class)"
        )
    labels_of = _class_of_folders(folder, [p.name for p in subs], dataset)
    arrays, labels = [], []
    for sub, label in sorted(zip(subs, labels_of, strict=True), key=lambda t: t[1]):
        files = sorted(
            p
            for p in sub.iterdir()
            if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_SUFFIXES
        )
        if not files:
            raise ExternalSetError(f"class folder {sub} holds no images (.png, .jpg, ...)")
        arrays += [_read_image(p, dataset) for p in files]
        labels += [label] * len(files)
    pixels = torch.from_numpy(np.stack(arrays))
    images = dataset.normalize(pixels)
    source = {"path": str(folder.resolve()), "format": "imagefolder", "pixels": "[0, 255] PNG"}
    return _imported(images, torch.tensor(labels, dtype=torch.int64), dataset, source)


def _load_pt(path: Path) -> Any:
    if not path.is_file():
        raise ExternalSetError(f"missing file {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols; the error says all
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"GLOBAL ([\w.]+)", str(exc))
        why = (
            f"needs code to load (it names {found.group(1)})"
            if found
            else "needs code to load or is corrupt"
        )
        raise ExternalSetError(
            f"{path} {why}; refused: only files that torch.load(..., weights_only=True) "
            "reads (tensors, lists, dicts) are accepted"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as exc:
        text = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise ExternalSetError(f"{path} is not a readable .pt file ({text})") from None


def _describe(obj: Any) -> str:
    if isinstance(obj, dict):
        return f"a dict with keys {sorted(map(str, obj))}"
    return f"a {type(obj).__name__}"


def read_dmdc_pt(
    path: str | os.PathLike,
    dataset: Dataset,
    *,
    index: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pixels: bool = False,
) -> SyntheticSet:
    """Set ``index`` of a DM/DC ``.pt`` file, moved into ``dataset``'s normalised space.

    The stored images are taken as normalised with ``mean``/``std`` (default: the DM/DC
    code's statistics for the dataset, ``DMDC_NORMALIZATION``), or as [0, 1] pixels with
    ``pixels``; they are not clipped (condensed images may leave [0, 1]).
    """
    path = Path(path)
    layout = "{'data': [[images, labels], ...]}"
    if (mean is None) != (std is None):
        raise ExternalSetError("give both --syn-mean and --syn-std, or neither")
    if pixels and mean is not None:
        raise ExternalSetError("--syn-pixels and --syn-mean/--syn-std contradict each other")
    obj = _load_pt(path)
    if not isinstance(obj, dict) or "data" not in obj:
        raise ExternalSetError(f"{path}: expected the DM/DC layout {layout}, got {_describe(obj)}")
    data = obj["data"]
    if not isinstance(data, (list, tuple)) or not data:
        raise ExternalSetError(f"{path}: 'data' must be a non-empty list {layout}")
    if not 0 <= index < len(data):
        raise ExternalSetError(
            f"{path} holds {len(data)} set(s) (one per experiment); "
            f"--pt-index must be 0..{len(data) - 1}, got {index}"
        )
    pair = data[index]
    if not (isinstance(pair, (list, tuple)) and len(pair) == 2) or not all(
        isinstance(t, torch.Tensor) for t in pair
    ):
        raise ExternalSetError(f"{path}: data[{index}] must be a pair [images, labels] of tensors")
    images, labels = pair[0].detach().float(), pair[1].detach()
    want = (dataset.channels, dataset.image_size, dataset.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ExternalSetError(
            f"{path}: images are {tuple(images.shape)}; {dataset.name} needs N x "
            f"{want[0]} x {want[1]} x {want[2]}"
        )
    if labels.ndim != 1 or labels.is_floating_point() or len(labels) != len(images):
        raise ExternalSetError(
            f"{path}: labels must be {len(images)} class indices (int), got "
            f"{labels.dtype} {tuple(labels.shape)} (soft labels are not supported)"
        )
    labels = labels.long()
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= dataset.num_classes):
        raise ExternalSetError(f"{path}: labels must be in 0..{dataset.num_classes - 1}")
    if not torch.isfinite(images).all():
        raise ExternalSetError(f"{path}: images hold NaN or infinite values")
    if pixels:
        stats, norm = None, "[0, 1] pixels (--syn-pixels)"
    elif mean is not None:
        stats, norm = (tuple(mean), tuple(std)), "--syn-mean/--syn-std"
    elif dataset.name in DMDC_NORMALIZATION:
        stats, norm = DMDC_NORMALIZATION[dataset.name], "the DM/DC code's mean/std"
    else:
        raise ExternalSetError(
            f"the DM/DC code has no normalisation for {dataset.name}; give the one {path} "
            "was saved with (--syn-mean ... --syn-std ...), or --syn-pixels for [0, 1] pixels"
        )
    x01 = images
    if stats is not None:
        m, s = (torch.tensor(v, dtype=torch.float32) for v in stats)
        if len(m) != dataset.channels or len(s) != dataset.channels:
            raise ExternalSetError(
                f"--syn-mean/--syn-std need {dataset.channels} value(s) (one per channel)"
            )
        if not (torch.isfinite(m).all() and torch.isfinite(s).all()):
            raise ExternalSetError("--syn-mean/--syn-std must be finite numbers")
        if (s <= 0).any():
            raise ExternalSetError("--syn-std must be positive")
        x01 = images * s.view(1, -1, 1, 1) + m.view(1, -1, 1, 1)
    ours_m = torch.tensor(dataset.mean, dtype=torch.float32).view(1, -1, 1, 1)
    ours_s = torch.tensor(dataset.std, dtype=torch.float32).view(1, -1, 1, 1)
    source = {
        "path": str(path.resolve()),
        "format": "dmdc-pt",
        "index": index,
        "normalisation": norm,
        **({"mean": list(stats[0]), "std": list(stats[1])} if stats else {}),
    }
    return _imported((x01 - ours_m) / ours_s, labels, dataset, source)


def _imported(
    images: torch.Tensor, labels: torch.Tensor, dataset: Dataset, source: dict[str, Any]
) -> SyntheticSet:
    order = torch.argsort(labels, stable=True)
    images, labels = images[order].contiguous(), labels[order].contiguous()
    counts = torch.bincount(labels, minlength=dataset.num_classes).tolist()
    meta = {
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "num_classes": dataset.num_classes,
        "ipc": counts[0] if len(set(counts)) == 1 else None,
        "images_per_class": counts,
        "method": "imported",
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "expansion_factor": 1,
        "source": source,
        "version": __version__,
    }
    return SyntheticSet(images, labels, meta)


def import_set(
    path: str | os.PathLike,
    dataset: Dataset,
    *,
    index: int = 0,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pixels: bool = False,
) -> SyntheticSet:
    """A set made elsewhere: an image folder, a folder of ``images.pt`` + ``labels.pt``, or a
    DM/DC ``.pt`` file (by its suffix)."""
    path = Path(path)
    if path.suffix in (".pt", ".pth"):
        return read_dmdc_pt(path, dataset, index=index, mean=mean, std=std, pixels=pixels)
    if not path.exists():
        raise ExternalSetError(
            f"missing file or folder {path}: expected a run folder, an image folder of class "
            "sub-folders, or a DM/DC .pt file"
        )
    if path.is_file():
        raise ExternalSetError(
            f"{path}: expected a run folder, an image folder or a .pt file (by its suffix)"
        )
    from .ddranking import is_tensor_folder, read_tensor_folder

    if is_tensor_folder(path):
        if index:
            raise ExternalSetError("--pt-index selects a set of a DM/DC .pt file, not a folder")
        return read_tensor_folder(path, dataset, mean=mean, std=std, pixels=pixels)
    if mean is not None or std is not None or pixels or index:
        raise ExternalSetError(
            "--syn-mean/--syn-std/--syn-pixels/--pt-index describe .pt files; an image folder "
            "holds pixels and is normalised with the real dataset's mean/std"
        )
    return read_image_folder(path, dataset)
