"""Coreset baselines evaluated through the same protocol: a random subset and herding.

- ``random_subset``: ``ipc`` random real training images per class.
- ``herding``: greedy herding (Welling 2009, as used by iCaRL) in the embedding of a ConvNet
  trained briefly on the full training set: pick, one at a time, the image that keeps the mean
  of the selected (L2-normalised) embeddings closest to the class mean.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from . import __version__
from .condense import initial_images
from .data import Dataset
from .io import SyntheticSet
from .models import build_model
from .runtime import Runtime, Stream, generator, seed_for

__all__ = [
    "BASELINES",
    "BASELINE_SETTINGS",
    "baseline",
    "make_baseline",
    "random_subset",
    "herding",
    "herding_select",
]


def _meta(dataset: Dataset, ipc: int, method: str, seed: int, **extra) -> dict:
    return {
        "dataset": dataset.name,
        "classes": list(dataset.classes),
        "num_classes": dataset.num_classes,
        "ipc": ipc,
        "method": method,
        "image_size": dataset.image_size,
        "channels": dataset.channels,
        "mean": list(dataset.mean),
        "std": list(dataset.std),
        "seed": seed,
        "iterations": 0,
        "expansion_factor": 1,
        "version": __version__,
        **({"holdout": dataset.held_out} if dataset.held_out else {}),
        **extra,
    }


def random_subset(dataset: Dataset, ipc: int, seed: int = 0, **_: object) -> SyntheticSet:
    """ipc random real images per class (the same draw as DM's real initialisation)."""
    gen = generator(seed, Stream.INIT)  # the same draw as condense's real init
    images, labels = initial_images(dataset, ipc, "real", gen)
    return SyntheticSet(images, labels, _meta(dataset, ipc, "random", seed))


def herding_select(features: torch.Tensor, k: int) -> list[int]:
    """Indices of k rows chosen greedily so their mean tracks the mean of all rows."""
    feats = F.normalize(features.double(), dim=1)
    target = feats.mean(0)
    chosen: list[int] = []
    running = torch.zeros_like(target)
    available = torch.ones(len(feats), dtype=torch.bool)
    for step in range(1, k + 1):
        gap = (target * step - running).unsqueeze(0) - feats  # candidate residuals
        dist = gap.pow(2).sum(1)
        dist[~available] = float("inf")
        i = int(dist.argmin())
        chosen.append(i)
        available[i] = False
        running += feats[i]
    return chosen


def herding(
    dataset: Dataset,
    ipc: int,
    seed: int = 0,
    epochs: int = 2,
    model: str = "convnet",
    device: str = "auto",
    progress: bool = True,
    *,
    runtime: Runtime | None = None,
) -> SyntheticSet:
    """Herding in the embedding of a ConvNet trained ``epochs`` epochs on the training set.

    ``runtime``: the device (default: ``device`` resolved); the network trains in float32.
    """
    initial_images(dataset, ipc, "real", torch.Generator())  # validates ipc against classes
    dev = (runtime or Runtime.resolve(device, "fp32")).device
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, Stream.HERDING_MODEL))
        net = build_model(model, dataset.channels, dataset.num_classes, dataset.image_size)
    net = net.to(dev)
    gen = torch.Generator().manual_seed(seed_for(seed, Stream.HERDING_TRAIN))
    opt = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
    n = len(dataset.train)
    net.train()
    steps = epochs * ((n + 255) // 256)
    bar = tqdm(total=steps, desc="herding: train embedding net", disable=not progress)
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, 256):
            idx = order[i : i + 256]
            x = dataset.normalize(dataset.train.images[idx]).to(dev)
            loss = F.cross_entropy(net(x), dataset.train.labels[idx].to(dev))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            bar.update(1)
    bar.close()
    net.eval()
    images, labels = [], []
    with torch.no_grad():
        for c in range(dataset.num_classes):
            idx = dataset.train.class_indices(c)
            feats = torch.cat(
                [
                    net.embed(
                        dataset.normalize(dataset.train.images[idx[i : i + 512]]).to(dev)
                    ).cpu()
                    for i in range(0, len(idx), 512)
                ]
            )
            pick = idx[herding_select(feats, ipc)]
            images.append(dataset.normalize(dataset.train.images[pick]))
            labels.append(torch.full((ipc,), c, dtype=torch.int64))
    meta = _meta(dataset, ipc, "herding", seed, herding_epochs=epochs, herding_model=model)
    return SyntheticSet(torch.cat(images), torch.cat(labels), meta)


BASELINES = {"random": random_subset, "herding": herding}
# The settings each baseline reads besides dataset, ipc and seed, by flag name: they are
# recorded with its set (a run's config.json; the continual cache key, less ``device``).
BASELINE_SETTINGS: dict[str, tuple[str, ...]] = {
    "random": (),
    "herding": ("herding_epochs", "device"),
}


def baseline(name: str) -> Callable[..., SyntheticSet]:
    """The set-maker registered as ``name``; raises ValueError listing the known ones."""
    if name not in BASELINES:
        raise ValueError(f"unknown baseline {name!r}; known: {', '.join(BASELINES)}")
    return BASELINES[name]


def make_baseline(
    name: str,
    dataset: Dataset,
    ipc: int,
    seed: int = 0,
    herding_epochs: int = 2,
    device: str = "auto",
    progress: bool = True,
    *,
    runtime: Runtime | None = None,
) -> SyntheticSet:
    """The set of baseline ``name``; each set-maker reads only the settings it uses
    (``runtime``: a resolved device for those that compute, instead of ``device``)."""
    make = baseline(name)
    return make(
        dataset,
        ipc,
        seed=seed,
        epochs=herding_epochs,
        device=device,
        progress=progress,
        runtime=runtime,
    )
