"""DD-Ranking's file formats: export a set for its ``compute_metrics``, read tensor folders.

DD-Ranking 0.2.0 (``ddranking``) takes a set as an image tensor (``N x C x H x W``, class-major
with the same number of images per class: it builds the hard labels as ``ipc`` copies of each
class in order) normalised with **its** per-dataset statistics (``ddranking/utils/data.py``,
``get_dataset``), optional soft labels (``N x classes`` logits, for ``soft_label_mode: S``),
and a YAML config read by ``ddranking.config.Config.from_file``. Its statistics are not the
exact ones of the data that ``ddm`` normalises with: CIFAR-10's std there is (0.2023, 0.1994,
0.2010), ours (0.2470, 0.2435, 0.2616); CIFAR-100 there uses CIFAR-10's mean and std.

``ddm export --format ddranking`` writes ``images.pt``, ``labels.pt`` (the soft labels when
the set carries them, else the int64 class labels), ``ddranking.yaml`` (a ready config whose
training settings are the ``ddranking`` recipe's), ``export.json`` (format, normalisation,
layout) and ``classes.txt``. ``ddm evaluate FOLDER --dataset NAME`` reads back such a folder,
the ``tensors`` export (``images.pt``, ``labels.pt``, ``mean.pt``, ``std.pt``) and a bare
``images.pt`` + ``labels.pt`` pair (taken to be in DD-Ranking's normalisation unless
``--syn-mean``/``--syn-std`` or ``--syn-pixels`` say otherwise). All ``.pt`` files are read
with ``torch.load(..., weights_only=True)`` only.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from io import BytesIO
from pathlib import Path
from typing import Any

import torch

from . import __version__
from .data import Dataset
from .io import SyntheticSet, atomic_write_bytes, atomic_write_json

__all__ = [
    "DDRANKING_DATASETS",
    "DDRANKING_NORMALIZATION",
    "EXPORT_JSON",
    "export_ddranking",
    "ddranking_config",
    "is_tensor_folder",
    "read_tensor_folder",
]

EXPORT_JSON = "export.json"
YAML_FILE = "ddranking.yaml"

# ddm dataset name -> DD-Ranking's (``get_dataset``); its networks take 3 channels only
DDRANKING_DATASETS: dict[str, str] = {
    "cifar10": "CIFAR10",
    "cifar100": "CIFAR100",
    "tiny-imagenet": "TinyImageNet",
    "imagenette": "ImageNette",
    "imagewoof": "ImageWoof",
}
_IMAGENET = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_CIFAR10 = ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))
DDRANKING_NORMALIZATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "cifar10": _CIFAR10,
    "cifar100": _CIFAR10,  # DD-Ranking 0.2.0 normalises CIFAR-100 with CIFAR-10's statistics
    "tiny-imagenet": _IMAGENET,
    "imagenette": _IMAGENET,
    "imagewoof": _IMAGENET,
}


def _pt_bytes(t: torch.Tensor) -> bytes:
    buf = BytesIO()
    torch.save(t.detach().cpu().clone(), buf)
    return buf.getvalue()


def _renormalise(
    images: torch.Tensor,
    src: tuple[Sequence[float], Sequence[float]],
    dst: tuple[Sequence[float], Sequence[float]],
) -> torch.Tensor:
    """(x * s_src + m_src - m_dst) / s_dst per channel; nothing clipped."""
    m0, s0, m1, s1 = (torch.tensor(v, dtype=torch.float32).view(1, -1, 1, 1) for v in (*src, *dst))
    return (images * s0 + m0 - m1) / s1


def _image_folder_transform(dataset: str, size: int) -> list[dict[str, Any]]:
    """DD-Ranking's ``get_dataset`` transform for the dataset, as its YAML transform list:
    ToTensor and its Normalize; ImageNet subsets then Resize and CenterCrop to the size."""
    mean, std = DDRANKING_NORMALIZATION[dataset]
    out: list[dict[str, Any]] = [
        {"name": "ToTensor"},
        {"name": "Normalize", "args": {"mean": list(mean), "std": list(std)}},
    ]
    if dataset in ("imagenette", "imagewoof"):
        out += [{"name": n, "args": [[size, size]]} for n in ("Resize", "CenterCrop")]
    return out


def ddranking_config(syn: SyntheticSet, ipc: int, soft: bool) -> dict[str, Any]:
    """A config for DD-Ranking's evaluators (``Config.from_file``): the ``ddranking`` recipe,
    its DSA parameters (ours), a teacher named ConvNet-<depth>; paths are placeholders."""
    from .augment import (
        BRIGHTNESS,
        CONTRAST,
        CROP_RATIO,
        CUTOUT_RATIO,
        FLIP_PROB,
        ROTATE_DEGREES,
        SATURATION,
        SCALE_RATIO,
    )
    from .models import default_depth
    from .recipes import RECIPES

    recipe = RECIPES["ddranking"]
    size = int(syn.meta.get("image_size") or syn.images.shape[-1])
    model = f"ConvNet-{default_depth(size)}"
    return {
        "dataset": DDRANKING_DATASETS[syn.meta["dataset"]],
        "real_data_path": "./dataset/",
        "ipc": ipc,
        "im_size": [size, size],
        "model_name": model,
        "stu_use_torchvision": False,
        "tea_use_torchvision": False,
        "teacher_dir": "./teacher_models",
        "teacher_model_names": [model],
        "data_aug_func": "dsa",
        "aug_params": {
            "flip": FLIP_PROB,
            "rotate": ROTATE_DEGREES,
            "saturation": SATURATION,
            "brightness": BRIGHTNESS,
            "contrast": CONTRAST,
            "scale": SCALE_RATIO,
            "crop": CROP_RATIO,
            "cutout": CUTOUT_RATIO,
        },
        "use_zca": False,
        "use_aug_for_hard": True,
        # its random subsets are image folders read with this transform (None yields PIL images
        # that no DataLoader can batch): its own test-set transform (``get_dataset``)
        "custom_train_trans": _image_folder_transform(syn.meta["dataset"], size),
        "custom_val_trans": None,
        "label_type": "soft",
        "use_soft_label": True,
        "soft_label_mode": "S" if soft else "M",
        "soft_label_criterion": "kl",
        "loss_fn_kwargs": {"temperature": recipe.temperature, "scale_loss": False},
        "optimizer": recipe.optimizer,
        "lr_scheduler": "cosine",
        "weight_decay": recipe.weight_decay,
        "momentum": 0.9,
        "step_size": None,
        "num_eval": 5,
        "num_epochs": 300,
        "num_workers": 4,
        "device": "cuda",
        "dist": False,
        "eval_full_data": True,  # its cache has no CIFAR/ConvNet full-data accuracy
        "real_batch_size": recipe.batch_size,
        "syn_batch_size": recipe.batch_size,
        "batch_size": recipe.batch_size,
        "default_lr": recipe.lr,
        "random_data_format": "image",
        "random_data_path": "./random_data/",
        "save_path": "./ddranking_scores.csv",
    }


def export_ddranking(
    syn: SyntheticSet, out: str | os.PathLike, *, expand: bool = True, overwrite: bool = False
) -> int:
    """Write DD-Ranking's input: images in its normalisation, labels, YAML, export.json."""
    import yaml

    from .interop import CLASSES_FILE, _class_names, _prepare_out, _trained_images

    out = Path(out)
    name = syn.meta.get("dataset")
    if name not in DDRANKING_DATASETS:
        raise ValueError(
            f"DD-Ranking 0.2.0 has no dataset for {name}; it knows "
            f"{', '.join(DDRANKING_DATASETS)}. Export --format tensors or imagefolder instead"
        )
    images, labels = _trained_images(syn, expand)
    counts = torch.bincount(labels).tolist()
    if len(set(counts)) != 1:
        raise ValueError(
            f"DD-Ranking needs the same number of images per class; this set has {counts}"
        )
    soft = syn.expanded_soft_labels() if expand else syn.soft_labels
    if soft is not None:
        order = torch.argsort((syn.expanded()[1] if expand else syn.labels), stable=True)
        soft = soft[order].float()
    theirs = DDRANKING_NORMALIZATION[name]
    ours = (syn.meta["mean"], syn.meta["std"])
    _prepare_out(out, overwrite)
    atomic_write_bytes(out / "images.pt", _pt_bytes(_renormalise(images, ours, theirs)))
    atomic_write_bytes(out / "labels.pt", _pt_bytes(soft if soft is not None else labels))
    config = ddranking_config(syn, counts[0], soft is not None)
    text = yaml.safe_dump(config, sort_keys=False)
    atomic_write_bytes(out / YAML_FILE, text.encode())
    atomic_write_json(
        out / EXPORT_JSON,
        {
            "format": "ddranking",
            "dataset": name,
            "ddranking_dataset": DDRANKING_DATASETS[name],
            "images": "images.pt: float32 N x C x H x W, class-major, normalised as below",
            "labels": "labels.pt: float32 N x classes soft-label logits"
            if soft is not None
            else "labels.pt: int64 N class indices",
            "mean": list(theirs[0]),
            "std": list(theirs[1]),
            "normalisation": "DD-Ranking 0.2.0's (ddranking/utils/data.py, get_dataset)",
            "ddm_mean": list(ours[0]),
            "ddm_std": list(ours[1]),
            "images_per_class": counts[0],
            "version": __version__,
        },
    )
    atomic_write_bytes(out / CLASSES_FILE, ("\n".join(_class_names(syn, labels)) + "\n").encode())
    return len(labels)


def is_tensor_folder(path: str | os.PathLike) -> bool:
    """A folder holding ``images.pt`` and ``labels.pt`` (ours, DD-Ranking's, or bare)."""
    path = Path(path)
    return path.is_dir() and (path / "images.pt").is_file() and (path / "labels.pt").is_file()


def read_tensor_folder(
    folder: str | os.PathLike,
    dataset: Dataset,
    *,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    pixels: bool = False,
) -> SyntheticSet:
    """``images.pt`` + ``labels.pt`` moved into ``dataset``'s normalised space.

    The images' normalisation: ``mean``/``std`` or ``pixels`` when given, else the folder's
    ``mean.pt``/``std.pt`` (the ``tensors`` export) or ``export.json``, else DD-Ranking's for
    the dataset. Labels: int class indices, or float ``N x classes`` soft labels, whose hard
    labels are DD-Ranking's (``N / classes`` copies of each class, in class order).
    """
    from .interop import ExternalSetError, _imported, _load_pt
    from .io import check_soft_labels, read_json

    folder = Path(folder)
    images, labels = _load_pt(folder / "images.pt"), _load_pt(folder / "labels.pt")
    for what, t in (("images.pt", images), ("labels.pt", labels)):
        if not isinstance(t, torch.Tensor):
            raise ExternalSetError(f"{folder / what} must hold one tensor, got {type(t).__name__}")
    want = (dataset.channels, dataset.image_size, dataset.image_size)
    if images.ndim != 4 or tuple(images.shape[1:]) != want:
        raise ExternalSetError(
            f"{folder / 'images.pt'} is {tuple(images.shape)}; {dataset.name} needs N x "
            f"{want[0]} x {want[1]} x {want[2]}"
        )
    images = images.detach().float()
    if not torch.isfinite(images).all():
        raise ExternalSetError(f"{folder / 'images.pt'} holds NaN or infinite values")
    n, k = len(images), dataset.num_classes
    soft = None
    if labels.is_floating_point():
        try:
            check_soft_labels(labels, n, k, folder / "labels.pt")
        except Exception as exc:  # RunFolderError: one line either way
            raise ExternalSetError(str(exc)) from None
        if n % k:
            raise ExternalSetError(
                f"{folder / 'labels.pt'}: soft labels for {n} images of {k} classes; DD-Ranking "
                "sets hold the same number per class, in class order"
            )
        soft = labels.detach().float()
        labels = torch.arange(k).repeat_interleave(n // k)
    elif labels.ndim != 1 or len(labels) != n:
        raise ExternalSetError(
            f"{folder / 'labels.pt'}: expected {n} class indices or ({n}, {k}) soft labels, "
            f"got {labels.dtype} {tuple(labels.shape)}"
        )
    labels = labels.long()
    if int(labels.min()) < 0 or int(labels.max()) >= k:
        raise ExternalSetError(f"{folder / 'labels.pt'}: labels must be in 0..{k - 1}")
    if (mean is None) != (std is None):
        raise ExternalSetError("give both --syn-mean and --syn-std, or neither")
    if pixels:
        stats, norm = None, "[0, 1] pixels (--syn-pixels)"
    elif mean is not None:
        stats, norm = (tuple(mean), tuple(std)), "--syn-mean/--syn-std"
    elif (folder / "mean.pt").is_file() and (folder / "std.pt").is_file():
        m, s = _load_pt(folder / "mean.pt"), _load_pt(folder / "std.pt")
        stats, norm = (tuple(m.tolist()), tuple(s.tolist())), "the folder's mean.pt/std.pt"
    elif (folder / EXPORT_JSON).is_file() and "mean" in read_json(folder / EXPORT_JSON):
        info = read_json(folder / EXPORT_JSON)
        stats, norm = (tuple(info["mean"]), tuple(info["std"])), "the folder's export.json"
    elif dataset.name in DDRANKING_NORMALIZATION:
        stats, norm = DDRANKING_NORMALIZATION[dataset.name], "DD-Ranking's mean/std"
    else:
        raise ExternalSetError(
            f"{folder}: unknown normalisation for {dataset.name}; give --syn-mean ... "
            "--syn-std ..., or --syn-pixels for [0, 1] pixels"
        )
    ours = (dataset.mean, dataset.std)
    if stats is None:
        moved = _renormalise(images, ((0.0,) * want[0], (1.0,) * want[0]), ours)
    else:
        if len(stats[0]) != want[0] or len(stats[1]) != want[0]:
            raise ExternalSetError(f"{folder}: the mean/std need {want[0]} value(s), one a channel")
        moved = _renormalise(images, stats, ours)
    source = {
        "path": str(folder.resolve()),
        "format": "tensors",
        "normalisation": norm,
        **({"mean": list(stats[0]), "std": list(stats[1])} if stats else {}),
    }
    syn = _imported(moved, labels, dataset, source)
    if soft is not None:  # _imported sorts by label (stably): the order is already class-major
        syn = SyntheticSet(syn.images, syn.labels, syn.meta, soft)
    return syn
