"""Teachers: networks trained on the full real training set, for soft labels and scores.

A teacher gives the soft labels of DD-Ranking's evaluation (``ddm evaluate --labels soft``:
its logits for every augmented batch) and the "full real data" accuracy of its label-robust
score (``--scores``: HLR = full-data accuracy - the set's hard-label accuracy).

On disk a teacher is a folder holding ``teacher.safetensors`` (the network's state) and
``teacher.json`` (dataset, image size, channels, classes, model, depth, normalisation mean/std,
test accuracy, training recipe, package version). Stored teachers are found again by dataset
and model under a teachers folder: ``<teachers-dir>/<dataset>-<model>/``. Training is
resumable: every epoch ends with a checkpoint (``checkpoint.safetensors``, one file holding the
network, the optimiser's momentum and the generator, with the epoch in its metadata), and a
rerun of ``ddm teacher`` with the same settings continues from it. Nothing is unpickled.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from .augment import augment
from .config import CondenseConfig, EvalConfig
from .data import Dataset
from .io import RunFolderError, atomic_write_json, load_tensors, read_json, save_tensors
from .models import build_model
from .runtime import Runtime, Stream, resolve_device, seed_for
from .settings import setting, shared

__all__ = [
    "TEACHER_FILE",
    "TEACHER_META",
    "TeacherConfig",
    "Teacher",
    "TeacherError",
    "train_teacher",
    "load_teacher",
    "teacher_folder",
    "check_teacher",
    "soft_label_loss",
]

TEACHER_FILE = "teacher.safetensors"
TEACHER_META = "teacher.json"
CHECKPOINT_FILE = "checkpoint.safetensors"


class TeacherError(ValueError):
    """A teacher is missing, unreadable, or made for other data than the set's."""


@dataclass(frozen=True)
class TeacherConfig:
    """How a teacher is trained: SGD with momentum, cosine decay per step, light DSA.

    The defaults train the CIFAR-10 ConvNet in 5 epochs (about ten minutes per epoch on one CPU
    core); the augmentation is one of crop/flip per batch with per-image parameters (crop
    only where the dataset must not be flipped).
    """

    dataset: str = shared(CondenseConfig, "dataset")
    model: str = shared(EvalConfig, "model")
    depth: int | None = shared(EvalConfig, "depth")
    epochs: int = setting(5, help="training epochs")
    batch_size: int = setting(128, help="batch size")
    lr: float = setting(0.05, help="SGD learning rate, cosine decay per step")
    momentum: float = setting(0.9, help="SGD momentum")
    weight_decay: float = setting(5e-4, help="weight decay")
    augment: bool = setting(True, help="one of crop/flip per batch, per-image parameters")
    seed: int = shared(CondenseConfig, "seed")
    device: str = shared(CondenseConfig, "device")

    def __post_init__(self) -> None:
        if self.epochs <= 0 or self.batch_size <= 0 or self.lr <= 0:
            raise ValueError("teacher --epochs, --batch-size and --lr must be positive")

    def recipe(self) -> dict[str, Any]:
        """The settings that decide the trained network (a resumed run must share them)."""
        out = dataclasses.asdict(self)
        out.pop("device")
        return {**out, "optimizer": "sgd", "schedule": "cosine per step"}


@dataclass(frozen=True)
class Teacher:
    """A trained teacher network and its description (``teacher.json``)."""

    net: nn.Module
    meta: dict[str, Any] = field(default_factory=dict)
    path: Path | None = None

    @property
    def accuracy(self) -> float:
        """Test accuracy (percent) on the dataset's whole real test set."""
        return float(self.meta["test_accuracy"])

    @torch.no_grad()
    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """The teacher's class scores for a batch (eval mode, float32, no gradient)."""
        self.net.eval()
        return self.net(x).float()

    def describe(self) -> dict[str, Any]:
        """What metrics.json records of the teacher."""
        return {
            "path": str(self.path) if self.path else None,
            "model": self.meta.get("model"),
            "test_accuracy": self.meta.get("test_accuracy"),
            "epochs": self.meta.get("recipe", {}).get("epochs"),
        }


def soft_label_loss(
    student_logits: torch.Tensor, target_probs: torch.Tensor, temperature: float
) -> torch.Tensor:
    """KL(target || softmax(student / T)), averaged over the batch (DD-Ranking's
    ``KLDivergenceLoss`` with ``scale_loss=False``). ``target_probs`` are the soft labels as
    probabilities: ``softmax(teacher_logits / T)``, or a CutMix blend of two of them."""
    log_p = F.log_softmax(student_logits.float() / temperature, dim=1)
    return F.kl_div(log_p, target_probs.float(), reduction="batchmean")


def _strategy(dataset: Dataset) -> str:
    return "crop_flip" if "flip" in dataset.dsa_strategy else "crop"


def _lr_at(cfg: TeacherConfig, step: int, total: int) -> float:
    """Cosine decay from ``cfg.lr`` to 0 over ``total`` steps."""
    return 0.5 * cfg.lr * (1.0 + math.cos(math.pi * step / max(total, 1)))


def teacher_folder(teachers_dir: str | os.PathLike, dataset: str, model: str) -> Path:
    """Where a stored teacher of ``model`` on ``dataset`` lives: ``<dir>/<dataset>-<model>``."""
    return Path(teachers_dir) / f"{dataset}-{model.lower()}"


def _build(cfg_model: str, depth: int | None, dataset: Dataset | dict[str, Any]) -> nn.Module:
    if isinstance(dataset, dict):
        shape = (dataset["channels"], dataset["num_classes"], dataset["image_size"])
    else:
        shape = (dataset.channels, dataset.num_classes, dataset.image_size)
    extra = {"depth": depth} if depth else {}
    return build_model(cfg_model, *shape, **extra)


def _save_checkpoint(out: Path, net: nn.Module, opt: torch.optim.Optimizer, gen, epoch, cfg):
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    for i, p in enumerate(net.parameters()):
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{i}"] = buf
    tensors["generator"] = gen.get_state()
    meta = {"epoch": str(epoch), "recipe": json.dumps(cfg.recipe(), sort_keys=True)}
    save_tensors(out / CHECKPOINT_FILE, tensors, meta)


def _load_checkpoint(out: Path, net: nn.Module, opt, gen, cfg: TeacherConfig) -> int:
    """Restore a checkpoint of the same recipe; returns the epochs it had done (0: none)."""
    path = out / CHECKPOINT_FILE
    if not path.exists():
        return 0
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    if json.loads(meta.get("recipe", "{}")) != cfg.recipe():
        raise TeacherError(
            f"{path} was written by a teacher trained with other settings; rerun with the same "
            "settings to continue it, or name another --out"
        )
    tensors = load_tensors(path)
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for i, p in enumerate(net.parameters()):
        if f"momentum.{i}" in tensors:
            opt.state[p]["momentum_buffer"] = tensors[f"momentum.{i}"].to(p.device)
    gen.set_state(tensors["generator"])
    return int(meta["epoch"])


def train_teacher(
    dataset: Dataset,
    cfg: TeacherConfig,
    out: str | os.PathLike,
    progress: bool = True,
    *,
    runtime: Runtime | None = None,
) -> Teacher:
    """Train ``cfg.model`` on all of ``dataset``'s training images, test it, write the teacher.

    Resumes from ``out``'s checkpoint when one of the same settings is there; a finished
    teacher in ``out`` is returned as it is. ``runtime``: the device (default: ``cfg.device``
    resolved); a teacher trains in float32.
    """
    from tqdm.auto import tqdm

    from .evaluate import accuracy

    if runtime is None:
        runtime = Runtime.resolve(cfg.device, "fp32")
    device = runtime.device
    out = Path(out)
    if (out / TEACHER_META).exists():
        done = read_json(out / TEACHER_META)
        if done.get("recipe") == cfg.recipe() and done.get("dataset") == dataset.name:
            return load_teacher(out, dataset, device)
        raise TeacherError(
            f"{out} already holds a teacher trained otherwise ({done.get('dataset')}, "
            f"{done.get('model')}); name another --out"
        )
    out.mkdir(parents=True, exist_ok=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(cfg.seed, Stream.TEACHER_MODEL))
        net = _build(cfg.model, cfg.depth, dataset).to(device)
    opt = torch.optim.SGD(
        net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
    )
    gen = torch.Generator().manual_seed(seed_for(cfg.seed, Stream.TEACHER_TRAIN))
    start = _load_checkpoint(out, net, opt, gen, cfg)
    n = len(dataset.train)
    per_epoch = math.ceil(n / cfg.batch_size)
    total = per_epoch * cfg.epochs
    strategy = _strategy(dataset) if cfg.augment else "none"
    labels = dataset.train.labels
    t0 = time.perf_counter()
    bar = tqdm(
        total=total,
        initial=start * per_epoch,
        desc=f"teacher {cfg.model} on {dataset.name}",
        unit="batch",
        disable=not progress,
    )
    for epoch in range(start, cfg.epochs):
        net.train()
        order = torch.randperm(n, generator=gen)
        losses = []
        for b, i in enumerate(range(0, n, cfg.batch_size)):
            idx = order[i : i + cfg.batch_size]
            x = dataset.normalize(dataset.train.gather(idx)).to(device)
            x = augment(x, strategy, gen)
            for group in opt.param_groups:
                group["lr"] = _lr_at(cfg, epoch * per_epoch + b, total)
            loss = F.cross_entropy(net(x), labels[idx].to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            bar.update(1)
        bar.set_postfix(epoch=epoch + 1, loss=f"{np.mean(losses):.3f}")
        _save_checkpoint(out, net, opt, gen, epoch + 1, cfg)
    bar.close()
    test_x, test_y = dataset.test_tensors()
    acc = accuracy(net, test_x, test_y, device)
    meta = {
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "num_classes": dataset.num_classes,
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "model": cfg.model,
        "depth": cfg.depth,
        "test_accuracy": round(acc, 4),
        "recipe": cfg.recipe(),
        "seconds": round(time.perf_counter() - t0, 1),
        "version": __version__,
    }
    state = {k: v.detach().cpu() for k, v in net.state_dict().items()}
    save_tensors(out / TEACHER_FILE, state)
    atomic_write_json(out / TEACHER_META, meta)  # written last: its presence means finished
    (out / CHECKPOINT_FILE).unlink(missing_ok=True)
    return Teacher(net.eval(), meta, out)


def check_teacher(meta: dict[str, Any], dataset: Dataset, where: str | os.PathLike) -> None:
    """Refuse a teacher made for another dataset, image size, channel count or normalisation."""
    got = (meta.get("dataset"), meta.get("image_size"), meta.get("channels"))
    want = (dataset.name, dataset.image_size, dataset.channels)
    if got != want or meta.get("num_classes") != dataset.num_classes:
        raise TeacherError(
            f"teacher {where} was trained on {got[0]} ({got[2]}x{got[1]}x{got[1]}, "
            f"{meta.get('num_classes')} classes), not {want[0]} ({want[2]}x{want[1]}x{want[1]}, "
            f"{dataset.num_classes} classes); train one with `ddm teacher --dataset "
            f"{dataset.name} --out DIR`"
        )
    for key, ours in (("mean", dataset.mean), ("std", dataset.std)):
        if not np.allclose(meta.get(key, ours), ours, atol=1e-4):
            raise TeacherError(
                f"teacher {where} was trained on images normalised with another {key} "
                f"({meta.get(key)}) than {dataset.name}'s ({list(ours)})"
            )


def load_teacher(
    folder: str | os.PathLike,
    dataset: Dataset | None = None,
    device: str | torch.device = "auto",
) -> Teacher:
    """Read a teacher folder (safetensors + JSON), checked against ``dataset`` when given, onto
    ``device`` (a resolved one, or a name: auto | cpu | cuda[:N]).

    A pool folder made by ``ddm pool`` serves too: its first finished network (the lowest
    index) is the teacher, with the test accuracy the pool recorded for it."""
    folder = Path(folder)
    from .pool import POOL_FILE

    if (folder / POOL_FILE).exists() and not (folder / TEACHER_META).exists():
        return _pool_teacher(folder, dataset, device)
    if not (folder / TEACHER_META).exists():
        hint = (
            " (training there was interrupted: rerun `ddm teacher` with the same settings)"
            if (folder / CHECKPOINT_FILE).exists()
            else ""
        )
        raise TeacherError(
            f"no teacher at {folder}{hint}; train one with `ddm teacher --dataset D --model M "
            f"--out {folder}`"
        )
    try:
        meta = read_json(folder / TEACHER_META)
        state = load_tensors(folder / TEACHER_FILE)
    except RunFolderError as exc:
        raise TeacherError(f"teacher {folder}: {exc}") from None
    if dataset is not None:
        check_teacher(meta, dataset, folder)
    return _frozen_teacher(meta, state, folder, device)


def _pool_teacher(folder: Path, dataset: Dataset | None, device: str | torch.device) -> Teacher:
    """The first finished network of a pool folder as a teacher."""
    from .pool import POOL_FILE

    try:
        manifest = read_json(folder / POOL_FILE)
    except RunFolderError as exc:
        raise TeacherError(f"teacher {folder}: {exc}") from None
    finished = sorted(manifest.get("networks") or [], key=lambda n: n.get("index", 0))
    if not finished:
        raise TeacherError(
            f"pool {folder} has no finished network to teach with; finish it by rerunning "
            "`ddm pool` with its settings"
        )
    entry = finished[0]
    meta = {
        key: manifest.get(key)
        for key in ("dataset", "classes", "num_classes", "image_size", "channels", "mean", "std")
    }
    meta.update(
        model=manifest.get("model"),
        depth=manifest.get("depth"),
        test_accuracy=entry.get("test_accuracy"),
        recipe=manifest.get("recipe", {}),
        pool_network=entry.get("index"),
    )
    if dataset is not None:
        check_teacher(meta, dataset, folder)
    try:
        state = load_tensors(folder / str(entry.get("final", "")))
    except RunFolderError as exc:
        raise TeacherError(f"teacher {folder}: {exc}") from None
    return _frozen_teacher(meta, state, folder, device)


def _frozen_teacher(
    meta: dict[str, Any], state: dict[str, torch.Tensor], folder: Path, device
) -> Teacher:
    """The network ``meta`` describes, with ``state`` loaded, on ``device``, frozen."""
    net = _build(meta["model"], meta.get("depth"), meta)
    try:
        net.load_state_dict(state)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise TeacherError(
            f"teacher {folder}: weights do not fit {meta['model']} ({first})"
        ) from None
    if not isinstance(device, torch.device):
        device = resolve_device(device)
    net = net.to(device).eval()
    for p in net.parameters():
        p.requires_grad_(False)
    return Teacher(net, meta, folder)
