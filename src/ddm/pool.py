"""A pool of trained networks: NCFM's feature extractors (docs/method.md, 'NCFM').

``train_pool`` trains N networks on a dataset's real training set with NCFM's pretraining
recipe: SGD (lr 0.01, momentum 0.9, weight decay 5e-4), the learning rate x0.2 at 2/3 and 5/6
of the epochs, batches of 128, per-sample colour + crop augmentation (every group applied)
and CutMix (p 0.5, area ratio ~ Beta(1, 1)). Each network's initial and final weights are
stored, so that NCFM can interpolate between them.

A pool folder holds::

    pool.json                   manifest: dataset, image size, channels, classes, model,
                                depth/width/norm, normalisation, recipe, per-network accuracy
    net{i}_init.safetensors     network i's initial weights (a state dict)
    net{i}_final.safetensors    network i's weights after training
    net{i}_partial.safetensors  network i mid-training (weights, momentum, epoch); removed
                                when it finishes

Every file is written atomically; rerunning the same command continues from the last finished
epoch. A network listed in the manifest is finished; its final weights are a plain state dict,
loadable with ``build_model(manifest["model"], channels, classes, image_size,
depth=manifest["depth"])`` (e.g. as a teacher for soft labels).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors import safe_open
from torch import nn

from .augment import apply
from .config import PRECISIONS, CondenseConfig, EvalConfig
from .data import Dataset
from .io import atomic_write_json, load_tensors, read_json, save_tensors
from .models import build_model, default_depth
from .runtime import Runtime, Stream, autocast, generator, seed_for
from .settings import setting, shared

__all__ = ["POOL_FILE", "PoolConfig", "Pool", "PoolError", "train_pool", "load_pool"]

POOL_FILE = "pool.json"
POOL_FORMAT = "ddm-pool"
POOL_STRATEGY = "color_crop"  # per-sample, every group applied
CUTMIX_PROB = 0.5


class PoolError(ValueError):
    """A pool folder is missing, incomplete, corrupt or made for another setting."""


@dataclass(frozen=True)
class PoolConfig:
    """How a pool is trained (NCFM's pretraining recipe by default)."""

    dataset: str = shared(CondenseConfig, "dataset", "cifar10")
    data_root: str | None = shared(CondenseConfig, "data_root")
    model: str = setting("convnet", help="network")
    depth: int | None = shared(EvalConfig, "depth")  # None: by resolution
    networks: int = setting(20, help="networks trained")
    epochs: int = setting(60, help="training epochs per network")
    batch_size: int = setting(128, help="batch size")
    lr: float = setting(0.01, help="SGD learning rate")
    momentum: float = setting(0.9, help="SGD momentum")
    weight_decay: float = setting(5e-4, help="weight decay")
    seed: int = shared(CondenseConfig, "seed")
    device: str = shared(CondenseConfig, "device")
    # the training's forward: fp32 | bf16 (autocast) | auto (bf16 where it is faster)
    precision: str = shared(CondenseConfig, "precision", "fp32")

    def __post_init__(self) -> None:
        for name in ("networks", "epochs", "batch_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"--{name.replace('_', '-')} must be positive")
        if self.lr <= 0:
            raise ValueError("--lr must be positive")
        if self.precision not in PRECISIONS:
            raise ValueError(
                f"unknown --precision {self.precision!r}; known: {', '.join(PRECISIONS)}"
            )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _build(model: str, dataset_shape: tuple[int, int, int], depth: int | None) -> nn.Module:
    """``model`` for (channels, classes, image size); ``depth`` only for ConvNets."""
    channels, classes, size = dataset_shape
    extra = {"depth": depth} if depth is not None else {}
    return build_model(model, channels, classes, size, **extra)


def _depth(model: str, depth: int | None, image_size: int) -> int | None:
    """The resolved ConvNet depth (None for other models)."""
    if not model.lower().replace("_", "").startswith("convnet"):
        return None
    return depth or default_depth(image_size)


def _architecture(net: nn.Module) -> dict[str, Any]:
    """Depth, width and norm of a network, read from its layers."""
    convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
    norms = [
        type(m).__name__
        for m in net.modules()
        if isinstance(m, (nn.GroupNorm, nn.LayerNorm, nn.modules.batchnorm._BatchNorm))
    ]
    norm = norms[0] if norms else "none"
    if norm == "GroupNorm":
        first = next(m for m in net.modules() if isinstance(m, nn.GroupNorm))
        norm = "instancenorm" if first.num_groups == first.num_channels else "groupnorm"
    return {
        "depth": len(convs),
        "width": convs[0].out_channels if convs else 0,
        "norm": norm,
    }


def _learning_rate(cfg: PoolConfig, epoch: int) -> float:
    """x0.2 at 2/3 and at 5/6 of the epochs."""
    milestones = (cfg.epochs * 2 // 3, cfg.epochs * 5 // 6)
    return cfg.lr * 0.2 ** sum(epoch >= m > 0 for m in milestones)


def _cutmix(
    x: torch.Tensor, gen: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor, float] | None:
    """CutMix with probability 0.5: a box of area ratio ~ Beta(1, 1) (= U(0, 1)) pasted from a
    permuted batch. Returns (mixed images, permutation, weight of the original labels)."""
    if float(torch.rand(1, generator=gen)) >= CUTMIX_PROB:
        return None
    lam = float(torch.rand(1, generator=gen))
    perm = torch.randperm(len(x), generator=gen).to(x.device)
    h, w = x.shape[-2:]
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy = int(torch.randint(h, (1,), generator=gen))
    cx = int(torch.randint(w, (1,), generator=gen))
    y0, y1 = max(cy - ch // 2, 0), min(cy + ch // 2, h)
    x0, x1 = max(cx - cw // 2, 0), min(cx + cw // 2, w)
    mixed = x.clone()
    mixed[:, :, y0:y1, x0:x1] = x[perm, :, y0:y1, x0:x1]
    kept = 1.0 - (y1 - y0) * (x1 - x0) / (h * w)
    return mixed, perm, kept


def _train_epoch(
    net: nn.Module,
    opt: torch.optim.Optimizer,
    dataset: Dataset,
    cfg: PoolConfig,
    index: int,
    epoch: int,
    device: torch.device,
    precision: str = "fp32",
) -> None:
    from .ncfm import ncfm_augmentation

    gen = generator(cfg.seed, Stream.POOL_TRAIN, index, epoch)
    for group in opt.param_groups:
        group["lr"] = _learning_rate(cfg, epoch)
    train = dataset.train
    order = torch.randperm(len(train), generator=gen)
    size = (dataset.image_size, dataset.image_size)
    net.train()
    for start in range(0, len(order), cfg.batch_size):
        idx = order[start : start + cfg.batch_size]
        x = dataset.normalize(train.gather(idx)).to(device)
        y = train.labels[idx].to(device)
        for params in ncfm_augmentation(size, gen, POOL_STRATEGY, n=len(x)):
            x = apply(x, params)
        mix = _cutmix(x, gen)
        if mix is None:
            with autocast(precision, device):
                out = net(x)
            loss = F.cross_entropy(out.float(), y)
        else:
            x, perm, kept = mix
            with autocast(precision, device):
                out = net(x)
            out = out.float()
            loss = kept * F.cross_entropy(out, y) + (1 - kept) * F.cross_entropy(out, y[perm])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()


def test_accuracy(net: nn.Module, dataset: Dataset, device: torch.device) -> float:
    """Percent of the test split classified correctly (eval mode, no augmentation)."""
    test = dataset.test
    net.eval()
    correct = 0
    with torch.no_grad():
        for start in range(0, len(test), 512):
            idx = torch.arange(start, min(start + 512, len(test)))
            x = dataset.normalize(test.gather(idx)).to(device)
            correct += int((net(x).argmax(1).cpu() == test.labels[idx]).sum())
    net.train()
    return 100.0 * correct / max(len(test), 1)


def _manifest(
    cfg: PoolConfig, dataset: Dataset, net: nn.Module, depth: int, precision: str
) -> dict[str, Any]:
    recipe: dict[str, Any] = {
        "epochs": cfg.epochs,
        "batch_size": cfg.batch_size,
        "lr": cfg.lr,
        "momentum": cfg.momentum,
        "weight_decay": cfg.weight_decay,
        "lr_decay": "x0.2 at 2/3 and 5/6 of the epochs",
        "augmentation": f"per-sample {POOL_STRATEGY} (every group) + CutMix p 0.5, Beta(1,1)",
        "seed": cfg.seed,
    }
    if precision != "fp32":  # float32 pools' manifests read as before
        recipe["precision"] = precision
    return {
        "format": POOL_FORMAT,
        "dataset": dataset.name,
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "num_classes": dataset.num_classes,
        "classes": list(dataset.classes),
        "model": cfg.model,
        **_architecture(net),
        "depth": depth,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "recipe": recipe,
        "networks": [],
    }


def _same_recipe(saved: dict[str, Any], new: dict[str, Any]) -> list[str]:
    keys = ("dataset", "image_size", "channels", "num_classes", "model", "depth", "recipe")
    return [f"{k}: {saved.get(k)!r} -> {new[k]!r}" for k in keys if saved.get(k) != new[k]]


def train_pool(
    cfg: PoolConfig,
    out: str | os.PathLike,
    *,
    dataset: Dataset | None = None,
    progress: bool = True,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Train (or continue training) the pool in ``out``; returns the manifest. ``runtime``: the
    device and precision (default: ``cfg.device`` and ``cfg.precision`` resolved)."""
    from tqdm.auto import tqdm

    from .data import load_dataset

    if runtime is None:
        runtime = Runtime.resolve(cfg.device, cfg.precision)
    device = runtime.device
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.data_root)
    depth = _depth(cfg.model, cfg.depth, dataset.image_size)
    shape = (dataset.channels, dataset.num_classes, dataset.image_size)
    out = Path(out)
    probe = _build(cfg.model, shape, depth)
    precision = runtime.for_images(dataset.image_size).precision
    manifest = _manifest(cfg, dataset, probe, depth, precision)
    if (out / POOL_FILE).exists():
        saved = read_json(out / POOL_FILE)
        diffs = _same_recipe(saved, manifest)
        if diffs:
            raise PoolError(
                f"{out} holds a pool made with other settings ({'; '.join(diffs)}); "
                "use another --out or the original settings"
            )
        manifest["networks"] = saved.get("networks", [])
        for entry in manifest["networks"]:  # finished networks must still be readable
            for kind in ("init", "final"):
                try:
                    load_tensors(out / str(entry.get(kind, "")))
                except Exception as exc:
                    raise PoolError(
                        f"finished pool network {entry.get('index')}: {exc}; use another --out "
                        f"or remove its entry from {out / POOL_FILE} to retrain it"
                    ) from None
    out.mkdir(parents=True, exist_ok=True)
    done = {n["index"] for n in manifest["networks"]}
    bar = tqdm(
        total=cfg.networks * cfg.epochs,
        initial=len(done & set(range(cfg.networks))) * cfg.epochs,
        disable=not progress,
        unit="epoch",
        dynamic_ncols=True,
        desc="pool",
    )
    try:
        for i in range(cfg.networks):
            if i in done:
                continue
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(cfg.seed, Stream.POOL_NET, i))
                net = _build(cfg.model, shape, depth)
            net = net.to(device)
            opt = torch.optim.SGD(
                net.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
            )
            init_file = out / f"net{i}_init.safetensors"
            final_file = out / f"net{i}_final.safetensors"
            partial = out / f"net{i}_partial.safetensors"
            if not init_file.exists():
                save_tensors(init_file, net.state_dict())
            epoch, by_epoch = 0, []
            if partial.exists():
                epoch, by_epoch = _load_partial(partial, net, opt, device)
                bar.update(epoch)
            while epoch < cfg.epochs:
                _train_epoch(net, opt, dataset, cfg, i, epoch, device, precision)
                epoch += 1
                if epoch < cfg.epochs:  # how accuracy grows with training length
                    by_epoch.append(round(test_accuracy(net, dataset, device), 4))
                _save_partial(partial, net, opt, epoch, by_epoch)
                bar.update(1)
            save_tensors(final_file, net.state_dict())
            accuracy = test_accuracy(net, dataset, device)
            manifest["networks"].append(
                {
                    "index": i,
                    "init": init_file.name,
                    "final": final_file.name,
                    "test_accuracy": round(accuracy, 4),
                    "epochs": cfg.epochs,
                    "accuracy_by_epoch": [*by_epoch, round(accuracy, 4)],
                }
            )
            manifest["networks"].sort(key=lambda n: n["index"])
            atomic_write_json(out / POOL_FILE, manifest)
            partial.unlink(missing_ok=True)
            bar.set_postfix(last_acc=f"{accuracy:.2f}", refresh=False)
    finally:
        bar.close()
    if not (out / POOL_FILE).exists():
        atomic_write_json(out / POOL_FILE, manifest)
    return manifest


def _save_partial(
    path: Path, net: nn.Module, opt: torch.optim.Optimizer, epoch: int, by_epoch: list[float]
) -> None:
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()}
    for name, p in net.named_parameters():
        buf = opt.state.get(p, {}).get("momentum_buffer")
        if buf is not None:
            tensors[f"momentum.{name}"] = buf
    save_tensors(path, tensors, {"epoch": str(epoch), "accuracy_by_epoch": json.dumps(by_epoch)})


def _load_partial(
    path: Path, net: nn.Module, opt: torch.optim.Optimizer, device
) -> tuple[int, list[float]]:
    """Restore a network mid-training: (epochs done, test accuracy after each of them)."""
    tensors = load_tensors(path)
    with safe_open(str(path), "pt") as f:
        meta = f.metadata() or {}
    epoch = int(meta.get("epoch", 0))
    by_epoch = json.loads(meta.get("accuracy_by_epoch", "[]"))
    net.load_state_dict({k[6:]: v for k, v in tensors.items() if k.startswith("model.")})
    for name, p in net.named_parameters():
        if f"momentum.{name}" in tensors:
            opt.state[p]["momentum_buffer"] = tensors[f"momentum.{name}"].to(device).clone()
    return epoch, by_epoch


# --- reading a pool ------------------------------------------------------------------------------


@dataclass
class Pool:
    """A loaded pool: its manifest and, per network, the initial and final state dicts."""

    manifest: dict[str, Any]
    initial: list[dict[str, torch.Tensor]]
    final: list[dict[str, torch.Tensor]]
    fingerprint: str = ""  # sha256 over the networks' indices and weight files

    def build(self) -> nn.Module:
        """A network of the pool's architecture (weights to be loaded)."""
        m = self.manifest
        return _build(m["model"], (m["channels"], m["num_classes"], m["image_size"]), m["depth"])

    def summary(self) -> dict[str, Any]:
        """What a set condensed with this pool records of it (its meta.json "pool")."""
        nets = self.manifest["networks"]
        return {
            "networks": len(nets),
            "indices": [n.get("index") for n in nets],
            "epochs": [n.get("epochs") for n in nets],
            "test_accuracy": [n.get("test_accuracy") for n in nets],
            "fingerprint": self.fingerprint,
        }


def load_pool(
    folder: str | os.PathLike | None,
    dataset: Dataset,
    model: str,
    depth: int | None = None,
) -> Pool:
    """Read and check a pool for condensing ``dataset`` with ``model``; one clear PoolError on
    a missing folder or manifest, an empty pool, a missing or corrupt network file, or a pool
    made for another dataset, resolution or architecture."""
    make = f"make one with `ddm pool --dataset {dataset.name} --out DIR`"
    if folder is None:
        raise PoolError(f"the ncfm base needs --pool DIR, a pool of trained networks; {make}")
    folder = Path(folder)
    if not (folder / POOL_FILE).is_file():
        what = "does not exist" if not folder.exists() else f"holds no {POOL_FILE}"
        raise PoolError(f"pool folder {folder} {what}; {make}")
    try:
        m = read_json(folder / POOL_FILE)
    except Exception as exc:
        raise PoolError(
            f"{folder / POOL_FILE} is not a readable pool manifest ({exc}); {make}"
        ) from None
    if m.get("format") != POOL_FORMAT or not isinstance(m.get("networks"), list):
        raise PoolError(f"{folder / POOL_FILE} is not a pool manifest; {make}")
    if not m["networks"]:
        raise PoolError(
            f"pool {folder} has no finished network; finish it by rerunning `ddm pool` "
            "with its settings"
        )
    want = {
        "dataset": dataset.name,
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "num_classes": dataset.num_classes,
        "model": model,
        "depth": _depth(model, depth, dataset.image_size),
    }
    diffs = [f"{k} {m.get(k)!r} (wanted {v!r})" for k, v in want.items() if m.get(k) != v]
    if diffs:
        raise PoolError(
            f"pool {folder} was made for another setting: {', '.join(diffs)}; "
            f"use a pool trained for it ({make})"
        )
    pool = Pool(m, [], [])
    reference = pool.build().state_dict()
    digest = hashlib.sha256()
    for entry in m["networks"]:
        digest.update(f"network {entry.get('index')}\n".encode())
        for kind, target in (("init", pool.initial), ("final", pool.final)):
            path = folder / str(entry.get(kind, ""))
            try:
                state = load_tensors(path, digest)
            except Exception as exc:
                raise PoolError(
                    f"pool network {entry.get('index')} of {folder}: {exc}; rerun `ddm pool` "
                    "to retrain it after removing its entry, or use another pool"
                ) from None
            bad = sorted(set(state) ^ set(reference)) or [
                k for k in reference if state[k].shape != reference[k].shape
            ]
            if bad:
                raise PoolError(
                    f"pool network file {path} does not fit the pool's architecture "
                    f"(e.g. {bad[0]}); use another pool"
                )
            target.append(state)
    return dataclasses.replace(pool, fingerprint=digest.hexdigest())
