"""The condensation loop shared by DM, DDM (and the IDM base).

One iteration (METHOD.md sections 3-4): take a randomly initialised, frozen network; for every
class draw a real batch and one Siamese DSA draw shared by the real batch and the synthetic
images of that class; compare them through the objective (a weighted sum of terms); take one
SGD step on the pixels.

The real side needs no gradient and enters every term only through batch means (mean
embedding, mean feature map, mean Gram matrix), so it is pushed through the network in
chunks under ``torch.no_grad`` and reduced to those statistics at once. With instance norm
every sample is independent and chunks may mix classes; with batch norm all classes go
through together, as in the reference.

Randomness: every class of every iteration draws its real batch and DSA parameters from its
own generator seeded by (seed, iteration, class), and the network of iteration t is initialised
from (seed, t). A checkpoint therefore needs only the pixels, the momentum buffer and the
iteration, and a resumed run ends exactly where an uninterrupted one would.

Several processes (torchrun, ``ddm.distributed``): each rank holds, matches and steps only its
contiguous block of classes; the network of an iteration is the same on every rank from its
seed and the per-class draws do not depend on the other classes, so N ranks produce the set
one process produces. The logged losses are summed over ranks; rank 0 gathers every shard
into the usual checkpoint (the format of a one-process run, so a run resumes on any number of
ranks) and writes the outputs.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import os
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from . import __version__
from . import distributed as dist
from .augment import DSAParams, apply, sample_params
from .bases import init_partitioned, make_base
from .config import CondenseConfig
from .data import Dataset, load_dataset
from .io import (
    META_FILE,
    SYNTHETIC_FILE,
    RunFolderError,
    SyntheticSet,
    atomic_write_bytes,
    atomic_write_json,
    load_tensors,
    save_grid,
    save_synthetic,
    save_tensors,
)
from .losses import (
    SIGMA_EPS,
    conv_mean_gram,
    correlation_from_stats,
    default_icd_k,
    default_spread_rank,
    diversity_loss,
    mean_gram,
    mean_map,
    mmd_from_stats,
    moments_from_stats,
    persample_moments,
    persample_moments_from_stats,
    spread_directions_many,
    spread_from_stats,
    style_spread_from_stats,
)
from .models import uses_batchnorm
from .runtime import Stream, autocast, generator, resolve_precision, tune_allocator

__all__ = [
    "NonFiniteLossError",
    "condense",
    "prepare_run_folder",
    "TERMS",
]

CHECKPOINT_FILE = "checkpoint.safetensors"
CONFIG_FILE = "config.json"
LOG_FILE = "log.csv"
GRID_FILE = "grid.png"
RUN_FILES = (
    SYNTHETIC_FILE,
    META_FILE,
    CONFIG_FILE,
    LOG_FILE,
    GRID_FILE,
    CHECKPOINT_FILE,
    "metrics.json",
    "curves.png",
    "grid_expanded.png",
)
TERMS = ("mmd", "mm", "cm", "icd", "cd", "sd", "ce")  # logged unweighted, summed over classes
# Settings a resumed run may change (they do not change what an iteration computes).
RESUMABLE_CHANGES = {
    "iterations",
    "checkpoint_every",
    "device",
    "real_chunk",
    "data_root",
    "compile",
}


class NonFiniteLossError(RuntimeError):
    """The objective became NaN or infinite; the run stopped at its last good checkpoint."""


# --- small utilities -----------------------------------------------------------------------------


# --- run folder -----------------------------------------------------------------------------------


def prepare_run_folder(out: Path, *, resume: bool, overwrite: bool) -> None:
    """Create/validate the output folder: refuse to clobber a run unless asked to."""
    if resume and overwrite:
        raise RunFolderError("--resume and --overwrite contradict each other; choose one")
    has_run = out.exists() and any((out / f).exists() for f in (META_FILE, CHECKPOINT_FILE))
    if resume and not (out / CHECKPOINT_FILE).exists():
        raise RunFolderError(f"--resume: no checkpoint in {out}; start a new run without --resume")
    if has_run and not resume and not overwrite:
        raise RunFolderError(
            f"{out} already holds a run; pass --resume to continue it or --overwrite to replace it"
        )
    try:
        out.mkdir(parents=True, exist_ok=True)
        probe = out / ".write-test"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as exc:
        raise RunFolderError(f"cannot write to output folder {out}: {exc.strerror or exc}") from exc
    if overwrite:
        for name in RUN_FILES:
            (out / name).unlink(missing_ok=True)


# --- initialisation -----------------------------------------------------------------------------


def initial_images(
    dataset: Dataset, ipc: int, init: str, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """ipc random real images per class (or N(0,1) noise), class-major order."""
    counts = dataset.train.class_counts()
    smallest = int(counts.min())
    if ipc > smallest:
        worst = int(counts.argmin())
        raise ValueError(
            f"ipc {ipc} is larger than the smallest class of {dataset.name} "
            f"(class {worst} '{dataset.classes[worst]}' has {smallest} training images); "
            f"use --ipc {smallest} or less"
        )
    images = []
    for c in range(dataset.num_classes):
        if init == "real":
            images.append(dataset.class_batch(c, ipc, generator))
        else:
            shape = (ipc, dataset.channels, dataset.image_size, dataset.image_size)
            images.append(torch.randn(shape, generator=generator))
    labels = torch.arange(dataset.num_classes).repeat_interleave(ipc)
    return torch.cat(images), labels


# --- one matching step ----------------------------------------------------------------------------


# The embedding size DDM's weights were calibrated at: the CIFAR-10 ConvNet's 128 x 4 x 4.
REFERENCE_EMBEDDING = 2048


@dataclass(frozen=True)
class _Weights:
    """The objective's terms: weights and how each is computed (METHOD.md 4 and 4b)."""

    w_mm: float
    w_cm: float
    w_icd: float
    icd_k: int
    neighbour_grad: bool
    w_cd: float = 0.0
    cd_rank: int = 0  # resolved: > 0 whenever L_CD can act
    w_sd: float = 0.0
    tap: str = "act"  # where style maps are read: act | conv
    moments: str = "batch"  # batch | persample
    relative: bool = False  # relative distances in the moment terms
    by_embedding: bool = False  # DDM's weights x D / REFERENCE_EMBEDDING (``term_scale``)
    correlation: str = "sum"  # L_CM's distance between mean Gram matrices: sum | cosine

    @property
    def needs_maps(self) -> bool:
        return self.w_mm > 0 or self.w_cm > 0 or self.w_sd > 0

    def term_scale(self, embed_dim: int) -> float:
        """The factor on DDM's term weights for a D-dimensional embedding: D / 2048 with
        ``by_embedding`` (exactly 1 at D = 2048), else 1.

        Why (docs/guide/stability.md): L_MMD sums over the D embedding dimensions, each a
        pooled average over HW C / D pixels of the map, so its gradient per pixel grows as
        D / HW; the style terms are means over each map (per pixel: 1 / HW). Against L_MMD,
        their pull per pixel is hence 2048 / D times the calibrated one: 16x on 8 x 8 images
        (D = 128), where the Gram term's steps then outgrow the pixels and diverge.
        """
        return embed_dim / REFERENCE_EMBEDDING if self.by_embedding else 1.0

    @property
    def persample(self) -> bool:
        """Whether per-sample moments of the real batch are needed."""
        return (self.w_mm > 0 and self.moments == "persample") or self.w_sd > 0


class CompiledEntryPoints:
    """``net`` with the embedding that matching calls compiled (``--compile``).

    ``torch.compile(net)`` compiles ``forward`` alone, and matching never calls it: it reads
    ``embed`` (DM, IDM), so that is what is compiled here, once per input shape and grad mode
    (``dynamic=False``: the real chunks and the synthetic batch keep their shapes from one
    iteration to the next). The network object is re-initialised in place every iteration, so
    nothing recompiles after the first. DDM's entry points with style maps
    (``embed_and_maps``, ``embed_maps_and_moments``) stay eager: compiled, a released-DDM
    iteration was 1.04-1.08x slower (the maps it keeps are graph outputs; README, Speed).
    Everything else (``features``, ``classifier``, ...) is the network's own.
    """

    ENTRY_POINTS = ("embed",)

    def __init__(self, net: nn.Module) -> None:
        self.net = net
        for name in self.ENTRY_POINTS:
            if hasattr(net, name):
                setattr(self, name, torch.compile(getattr(net, name), dynamic=False))

    def __getattr__(self, name: str) -> Any:
        return getattr(self.net, name)


@dataclass
class _RealStats:
    """One class's real-batch statistics: everything the terms need, nothing more."""

    emb: torch.Tensor  # D
    map_means: list[torch.Tensor]  # per layer C x H x W (batch-estimator moments)
    grams: list[torch.Tensor]  # per layer C x C (correlations)
    mu: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per layer C
    s: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per layer C
    mu_std: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per layer C (L_SD)
    s_std: list[torch.Tensor] = dataclasses.field(default_factory=list)  # per layer C (L_SD)
    cd_dirs: torch.Tensor | None = None  # D x r principal directions (L_CD)
    cd_std: torch.Tensor | None = None  # r: real std along them


def _features(net: nn.Module, x: torch.Tensor, weights: _Weights, moments: bool = False):
    """Embedding, style maps and, per map, its per-sample moments where the network's own
    instance norm computed them in the same pass (``moments``, no autograd), else None."""
    if not weights.needs_maps:
        return net.embed(x), [], []
    if moments and hasattr(net, "embed_maps_and_moments"):
        return net.embed_maps_and_moments(x, tap=weights.tap, eps=SIGMA_EPS)
    emb, maps = net.embed_and_maps(x, tap=weights.tap)
    return emb, maps, [None] * len(maps)


def _class_stats(
    emb: torch.Tensor,
    maps: list[torch.Tensor],
    weights: _Weights,
    gram_dtype: torch.dtype | None = None,
    first_gram: torch.Tensor | None = None,
    moments: Sequence[tuple[torch.Tensor, torch.Tensor] | None] = (),
) -> _RealStats:
    """One class's statistics, in float32; ``gram_dtype`` (bf16) is the Gram product's input,
    ``first_gram`` the first layer's mean Gram matrix and ``moments`` a layer's per-sample
    (mu, s) when already known (None or missing: computed here)."""
    stat = _RealStats(
        emb=emb.mean(0),
        map_means=[mean_map(m) for m in maps]
        if weights.w_mm > 0 and weights.moments == "batch"
        else [],
        grams=[
            first_gram if i == 0 and first_gram is not None else mean_gram(m, gram_dtype)
            for i, m in enumerate(maps)
        ]
        if weights.w_cm > 0
        else [],
    )
    if weights.persample:
        for i, m in enumerate(maps):
            known = moments[i] if i < len(moments) else None
            mu, s = known if known is not None else persample_moments(m)
            stat.mu.append(mu.mean(0))
            stat.s.append(s.mean(0))
            if weights.w_sd > 0:
                stat.mu_std.append(mu.std(0))
                stat.s_std.append(s.std(0))
    return stat


def _input_conv(net: nn.Module, weights: _Weights) -> nn.Conv2d | None:
    """The convolution whose output is the first style map, when it reads the images and has
    few inputs per pixel: its mean Gram matrix then comes from the patches (``conv_mean_gram``,
    far fewer FLOPs than from the maps)."""
    features = getattr(net, "features", None)
    if weights.w_cm <= 0 or weights.tap != "conv" or not isinstance(features, nn.Sequential):
        return None
    conv = features[0]
    if not isinstance(conv, nn.Conv2d) or conv.groups != 1 or conv.padding_mode != "zeros":
        return None
    if conv.stride != (1, 1) or conv.dilation != (1, 1) or isinstance(conv.padding, str):
        return None
    k = conv.in_channels * conv.kernel_size[0] * conv.kernel_size[1]
    return conv if 2 * k <= conv.out_channels else None


def real_statistics(
    net: nn.Module,
    batches: list[torch.Tensor],
    params: list[DSAParams],
    weights: _Weights,
    chunk_images: int,
    device: torch.device,
    autocast: Any,
    channels_last: bool,
    gram_dtype: torch.dtype | None = None,
) -> list[_RealStats]:
    """Per-class statistics of the augmented real batches, without autograd, in chunks.

    ``chunk_images`` bounds the images per forward (whole classes are kept together);
    0 puts every class in one forward (required for batch norm). Maps stay in the dtype the
    network gave them (bf16 under autocast); each statistic is computed in float32.
    """
    stats: list[_RealStats] = []
    spread_embs: list[torch.Tensor] = []  # per class, for L_CD's directions (solved at the end)
    spread = weights.w_cd > 0 and weights.cd_rank > 0
    c, n_classes = 0, len(batches)
    conv = _input_conv(net, weights)
    with torch.no_grad():
        while c < n_classes:
            group, size = [c], len(batches[c])
            while c + len(group) < n_classes and (
                chunk_images == 0 or size + len(batches[c + len(group)]) <= chunk_images
            ):
                size += len(batches[c + len(group)])
                group.append(c + len(group))
            x = torch.cat(
                [apply(batches[k].to(device, non_blocking=True), params[k]) for k in group]
            )
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            with autocast:
                emb, maps, moments = _features(net, x, weights, moments=weights.persample)
            sizes = [len(batches[k]) for k in group]
            embs = emb.float().split(sizes)
            per_layer = [m.split(sizes) for m in maps]
            split_moments = [
                None if m is None else list(zip(m[0].split(sizes), m[1].split(sizes), strict=True))
                for m in moments
            ]
            inputs = x.split(sizes)
            for i in range(len(group)):
                layers = [layer[i] for layer in per_layer]
                first = None
                if conv is not None:
                    first = conv_mean_gram(
                        inputs[i], conv.weight, conv.bias, conv.padding, gram_dtype
                    )
                known = [None if m is None else m[i] for m in split_moments]
                stats.append(_class_stats(embs[i], layers, weights, gram_dtype, first, known))
                if spread:
                    spread_embs.append(embs[i])
            c += len(group)
        if spread:  # the classes' eigenproblems side by side (the same values as one by one)
            for stat, (dirs, std) in zip(
                stats, spread_directions_many(spread_embs, weights.cd_rank), strict=True
            ):
                stat.cd_dirs, stat.cd_std = dirs, std
    return stats


def objective(
    net: nn.Module,
    real: list[_RealStats],
    syn_images: torch.Tensor,
    syn_sizes: list[int],
    params: list[DSAParams],
    weights: _Weights,
    autocast: Any,
    channels_last: bool,
    ce_weight: float = 0.0,
    classes: list[int] | None = None,
) -> tuple[torch.Tensor, dict[str, float]]:
    """Sum over classes of L_MMD + w_mm L_MM + w_cm L_CM + w_icd L_ICD + w_cd L_CD + w_sd L_SD
    (+ IDM's CE term).

    ``ce_weight`` (IDM: ce_weight x the model's running accuracy) scales the cross-entropy of
    the network's logits on the same augmented images against ``classes`` (their labels).
    With ``weights.by_embedding`` the DDM terms' weights are scaled by D / 2048
    (``_Weights.term_scale``). Returns the total and the unweighted terms summed over classes.
    """
    per_class = syn_images.split(syn_sizes)
    augmented = [apply(s, p) for s, p in zip(per_class, params, strict=True)]
    x = torch.cat(augmented)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    with autocast:
        emb, maps, _ = _features(net, x, weights)
    embs = emb.float().split(syn_sizes)
    layer_maps = [m.float().split(syn_sizes) for m in maps]
    # the first layer's Gram matrices from the patches, as on the real side (with autograd;
    # float32 outside autocast): 22x fewer FLOPs than from the maps, forward and backward
    conv = _input_conv(net, weights)
    first_grams = [
        None if conv is None else conv_mean_gram(a, conv.weight, conv.bias, conv.padding)
        for a in augmented
    ]
    total = emb.new_zeros((), dtype=torch.float32)
    terms = dict.fromkeys(TERMS, 0.0)
    w = weights
    scale = w.term_scale(emb.shape[1])  # on DDM's terms; exactly 1 at D = 2048
    for c, stat in enumerate(real):
        syn_maps = [layer[c] for layer in layer_maps]
        parts = {"mmd": (1.0, mmd_from_stats(stat.emb, embs[c]))}
        if w.w_mm > 0 and w.moments == "persample":
            mm = persample_moments_from_stats(stat.mu, stat.s, syn_maps, w.relative)
            parts["mm"] = (w.w_mm, mm)
        elif w.w_mm > 0:
            parts["mm"] = (w.w_mm, moments_from_stats(stat.map_means, syn_maps, w.relative))
        if w.w_cm > 0:
            parts["cm"] = (
                w.w_cm,
                correlation_from_stats(stat.grams, syn_maps, first_grams[c], w.correlation),
            )
        if w.w_icd > 0 and w.icd_k > 0:
            parts["icd"] = (w.w_icd, diversity_loss(embs[c], w.icd_k, w.neighbour_grad))
        if w.w_cd > 0 and stat.cd_dirs is not None:
            parts["cd"] = (w.w_cd, spread_from_stats(stat.cd_dirs, stat.cd_std, embs[c]))
        if w.w_sd > 0:
            sd = style_spread_from_stats(stat.mu_std, stat.s_std, syn_maps, w.relative)
            parts["sd"] = (w.w_sd, sd)
        if ce_weight > 0:
            label = classes[c] if classes is not None else c
            logits = net.classifier(embs[c])
            target = torch.full((len(logits),), label, dtype=torch.long, device=logits.device)
            parts["ce"] = (ce_weight, F.cross_entropy(logits, target))
        for name, (weight, value) in parts.items():
            if scale != 1.0 and name not in ("mmd", "ce"):
                weight = weight * scale
            total = total + weight * value
            terms[name] += float(value.detach())
    return total, terms


# --- the run ------------------------------------------------------------------------------------


class _Run:
    """State of one condensation run: pixels, optimiser, base, iteration, outputs."""

    def __init__(self, cfg: CondenseConfig, dataset: Dataset, out: Path | None) -> None:
        self.dataset, self.out = dataset, out
        self.device = dist.resolve_device(cfg.device)
        dist.init(self.device)
        # the resolved precision (fp32 | bf16) is the run's setting from here on; under
        # torchrun every process takes the first one's (auto's probe is timed per process)
        precision = resolve_precision(cfg.precision, self.device, dataset.image_size)
        precision = dist.all_gather_object(precision)[0]
        self.cfg = cfg = dataclasses.replace(cfg, precision=precision)
        if dist.world_size() > dataset.num_classes:
            raise ValueError(
                f"{dist.world_size()} processes for {dataset.num_classes} classes: every "
                "process needs at least one class; start fewer processes"
            )
        # this rank's classes (all of them in one process) and their rows of the set
        self.classes = dist.shard(dataset.num_classes)
        self.class_counts = dist.shard_counts(dataset.num_classes)
        self.base = make_base(cfg, dataset, self.device)
        self.per_class = cfg.ipc * self.base.factor**2  # images matched per class
        k = cfg.icd_k if cfg.icd_k is not None else default_icd_k(self.per_class)
        rank = cfg.cd_rank or default_spread_rank(self.per_class)
        self.weights = _Weights(
            cfg.w_mm,
            cfg.w_cm,
            cfg.w_icd,
            min(k, self.per_class - 1),
            cfg.icd_neighbour_grad,
            w_cd=cfg.w_cd,
            cd_rank=rank if self.per_class > 1 else 0,
            w_sd=cfg.w_sd,
            tap=cfg.style_tap,
            moments=cfg.moments,
            relative=cfg.moments_relative,
            by_embedding=cfg.weights_by_embedding,
            correlation=cfg.correlation,
        )
        self.strategy = dataset.dsa_strategy if cfg.dsa else "none"
        gen = generator(cfg.seed, Stream.INIT)
        if self.base.factor > 1 and cfg.init == "real":
            images, self.labels = init_partitioned(dataset, cfg.ipc, self.base.factor, gen)
        else:
            images, self.labels = initial_images(dataset, cfg.ipc, cfg.init, gen)
        rows = slice(self.classes.start * cfg.ipc, self.classes.stop * cfg.ipc)
        self.images = images[rows].to(self.device).requires_grad_(True)  # this shard's rows
        self.optimizer = torch.optim.SGD([self.images], lr=cfg.lr_img, momentum=cfg.momentum)
        self.iteration = 0
        probe = self.base.network(0) if cfg.base == "dm" else self.base.nets[0]
        self.batchnorm = uses_batchnorm(probe)
        if self.batchnorm and dist.world_size() > 1:
            raise ValueError(
                f"--model {cfg.model} uses batch norm, whose statistics mix all classes in one "
                "forward (as the reference does); class sharding over processes would change "
                "the result. Condense it in one process, or use an instance-norm model"
            )
        self.chunk = 0 if self.batchnorm else (cfg.real_chunk or _auto_chunk(self.device))
        self.autocast = autocast(cfg.precision, self.device)
        # bf16: the real batch's Gram products too (float32 accumulation and mean)
        self.gram_dtype = torch.bfloat16 if cfg.precision == "bf16" else None
        self._compiled: dict[int, nn.Module] = {}

    def _forward_net(self, net: nn.Module) -> nn.Module:
        if self.cfg.channels_last:
            net = net.to(memory_format=torch.channels_last)
        if not self.cfg.compile:
            return net
        if id(net) not in self._compiled:
            self._compiled[id(net)] = CompiledEntryPoints(net)
        return self._compiled[id(net)]

    # one iteration -------------------------------------------------------------------------------

    def step(self) -> tuple[float, dict[str, float]]:
        cfg, it, n_classes = self.cfg, self.iteration, self.dataset.num_classes
        net = self._forward_net(self.base.network(it))
        size = (self.dataset.image_size, self.dataset.image_size)
        first = self.classes.start
        batches, params = [], []  # this rank's classes, each from its own generator
        for c in self.classes:
            gen = generator(cfg.seed, Stream.ITER, it, c)
            batches.append(self.dataset.class_batch(c, cfg.batch_real, gen))
            params.append(sample_params(self.strategy, self.per_class, size, gen, siamese=True))
        real = real_statistics(
            net,
            batches,
            params,
            self.weights,
            self.chunk,
            self.device,
            self.autocast,
            cfg.channels_last,
            self.gram_dtype,
        )
        ce = self.base.ce_weight()
        if self.base.per_class_steps:  # IDM: one image step per class, for every class
            groups = [[c] for c in range(n_classes)]
        else:  # DM: all (of this rank's) classes, one step
            groups = [list(self.classes)]
        total, terms, bad = 0.0, dict.fromkeys(TERMS, 0.0), 0.0
        for group in groups:
            self.optimizer.zero_grad(set_to_none=True)
            if group[0] not in self.classes:
                # another rank's class (IDM): its step moves this shard's pixels by their
                # momentum only, exactly as the shared momentum does in one process
                self.images.grad = torch.zeros_like(self.images)
                self.optimizer.step()
                continue
            lo, hi = (group[0] - first) * cfg.ipc, (group[-1] + 1 - first) * cfg.ipc
            labels = self.labels[lo + first * cfg.ipc : hi + first * cfg.ipc]
            syn, _ = self.base.expand(self.images[lo:hi], labels)
            loss, parts = objective(
                net,
                [real[c - first] for c in group],
                syn,
                [self.per_class] * len(group),
                [params[c - first] for c in group],
                self.weights,
                self.autocast,
                cfg.channels_last,
                ce_weight=ce,
                classes=group,
            )
            value = float(loss.detach())
            if not math.isfinite(value):  # stop before the bad step; every rank stops below
                total, bad = value, 1.0
                break
            loss.backward()
            self.optimizer.step()
            total += value
            for name, v in parts.items():
                terms[name] += v
        # the log's sums over all classes, and whether any rank met a NaN/inf
        summed = dist.all_reduce_sum(
            torch.tensor([total, *terms.values(), bad], dtype=torch.float64, device=self.device)
        )
        total, values = float(summed[0]), summed[1:-1].tolist()
        if summed[-1] > 0:
            raise NonFiniteLossError(f"loss became {total} at iteration {it + 1}")
        terms = dict(zip(terms, values, strict=True))
        terms["queue_s"] = self.base.after_iteration(it)
        self.iteration += 1
        return total, terms

    # checkpoints ------------------------------------------------------------------------------

    def _gather(self, part: torch.Tensor) -> torch.Tensor:
        """The whole set's rows from every rank's shard (collective; ``part`` in one process)."""
        return dist.gather_rows(part, [k * self.cfg.ipc for k in self.class_counts])

    def _rows(self, full: torch.Tensor) -> torch.Tensor:
        """This rank's rows of a whole-set tensor."""
        return full[self.classes.start * self.cfg.ipc : self.classes.stop * self.cfg.ipc]

    def state_tensors(self) -> dict[str, torch.Tensor]:
        """The checkpoint's tensors, whole set (collective: every rank must call it)."""
        tensors = {"images": self._gather(self.images.detach())}
        buf = self.optimizer.state.get(self.images, {}).get("momentum_buffer")
        if buf is not None:
            tensors["momentum"] = self._gather(buf)
        return {**tensors, **self.base.state_tensors()}

    def load_state(
        self, tensors: dict[str, torch.Tensor], iteration: int, meta: dict[str, str]
    ) -> None:
        """Continue from a checkpoint of a run on any number of ranks (it holds the whole set)."""
        with torch.no_grad():
            self.images.copy_(self._rows(tensors["images"]).to(self.device))
        if "momentum" in tensors:
            self.optimizer.state[self.images]["momentum_buffer"] = (
                self._rows(tensors["momentum"]).to(self.device).clone()
            )
        self.base.load_state(tensors, meta)
        self.iteration = iteration

    def synthetic(self) -> SyntheticSet:
        """The current set, whole (collective: every rank must call it)."""
        d = self.dataset
        meta = {
            "dataset": d.name,
            "classes": list(d.classes),
            "num_classes": d.num_classes,
            "ipc": self.cfg.ipc,
            "method": self.cfg.method,
            "base": self.cfg.base,
            "form": self.cfg.form,
            "image_size": d.image_size,
            "channels": d.channels,
            "mean": list(d.mean),
            "std": list(d.std),
            "seed": self.cfg.seed,
            "iterations": self.iteration,
            "iterations_planned": self.cfg.iterations,
            "expansion_factor": self.base.factor,
            "dsa_strategy": self.strategy,
            "precision": self.cfg.precision,
            "version": __version__,
        }
        if d.held_out:
            meta["holdout"] = d.held_out
        images = self._gather(self.images.detach())
        return SyntheticSet(images.cpu().clone(), self.labels.clone(), meta)

    def save(self) -> None:
        """Checkpoint + current set + grid; each file atomic, checkpoint first.

        Every rank gathers; rank 0 writes (an error there stops every rank).
        """
        if self.out is None:
            return
        tensors, syn = self.state_tensors(), self.synthetic()
        dist.on_main(self._write, tensors, syn)

    def _write(self, tensors: dict[str, torch.Tensor], syn: SyntheticSet) -> None:
        meta = {
            "iteration": str(self.iteration),
            "config": json.dumps(self.cfg.to_dict()),
            **self.base.state_meta(),
        }
        save_tensors(self.out / CHECKPOINT_FILE, tensors, meta)
        save_synthetic(self.out, syn)
        save_grid(self.out / GRID_FILE, syn.denormalized(), syn.labels)
        try:  # log.csv is line-buffered, so it holds every finished iteration
            from .curves import save_curves

            title = f"{self.out.name}: {self.cfg.method} on {self.dataset.name}"
            save_curves(self.out / LOG_FILE, self.out / "curves.png", title=title)
        except Exception as exc:  # a picture must never stop a run: say so once, go on
            if not getattr(self, "_curves_warned", False):
                self._curves_warned = True
                _notice(f"could not draw curves.png ({exc}); the run goes on without it")


def _auto_chunk(device: torch.device) -> int:
    """Real images per no-grad forward: everything at once on a GPU, bounded chunks on CPU."""
    return 0 if device.type == "cuda" else 512


def _saved_precision(saved: dict[str, Any]) -> str:
    """A saved run's precision (runs from before --precision saved a bf16 switch instead)."""
    return saved.get("precision", "bf16" if saved.get("bf16") else "fp32")


def _check_resumable(saved: dict[str, Any], cfg: CondenseConfig) -> None:
    # runs from before these settings: no holdout, the published Gram distance, and weights
    # by embedding (its factor is exactly 1 for every D = 2048 network)
    saved = {"holdout": 0, "correlation": "sum", "weights_by_embedding": True, **saved}
    saved["precision"] = _saved_precision(saved)
    now = cfg.to_dict()
    diffs = [
        f"{k}: {saved.get(k)!r} -> {now[k]!r}"
        for k in now
        if k not in RESUMABLE_CHANGES and saved.get(k) != now[k]
    ]
    if diffs:
        raise RunFolderError(
            "--resume with settings that change the result: "
            + "; ".join(diffs)
            + ". Use the original settings (see config.json) or start a new run."
        )


class _Log:
    """Per-iteration CSV log; on resume, rows past the checkpoint are dropped."""

    FIELDS = ("iteration", "loss", *TERMS, "queue_seconds", "seconds")

    def __init__(self, path: Path | None, resume_at: int) -> None:
        self.path = path
        if path is None:
            return
        rows: list[list[str]] = []
        if resume_at > 0 and path.exists():
            with path.open(newline="") as f:
                rows = [r for r in csv.reader(f)][1:]
            rows = [r for r in rows if r and int(r[0]) <= resume_at]
        lines = [",".join(self.FIELDS)] + [",".join(r) for r in rows]
        atomic_write_bytes(path, ("\n".join(lines) + "\n").encode())
        self.file = path.open("a", newline="", buffering=1)  # line-buffered: curves read it

    def write(self, iteration: int, loss: float, terms: dict[str, float], seconds: float) -> None:
        if self.path is None:
            return
        values = [
            str(iteration),
            f"{loss:.6g}",
            *(f"{terms[t]:.6g}" for t in TERMS),
            f"{terms.get('queue_s', 0.0):.4f}",
            f"{seconds:.4f}",
        ]
        self.file.write(",".join(values) + "\n")

    def close(self) -> None:
        if self.path is not None:
            self.file.close()


def _progress(total: int, start: int, enabled: bool) -> Any:
    from tqdm.auto import tqdm

    return tqdm(
        total=total,
        initial=start,
        disable=not enabled,
        unit="it",
        dynamic_ncols=True,
        desc="condense",
    )


def condense(
    config: CondenseConfig,
    out: str | os.PathLike | None = None,
    *,
    dataset: Dataset | None = None,
    resume: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    stop_after: int | None = None,
) -> SyntheticSet:
    """Condense ``config.dataset`` into ``config.ipc`` images per class.

    With ``out``, writes the run folder (see ``ddm.io``), checkpoints every
    ``checkpoint_every`` iterations and continues a previous run with ``resume``.
    ``stop_after`` ends this call after that many iterations (the run stays resumable).
    Raises ``NonFiniteLossError`` (with the last good checkpoint kept) if the loss diverges.
    """
    cfg = config.resolved()
    tune_allocator()
    out_path = Path(out) if out is not None else None
    dist.init(dist.resolve_device(cfg.device))  # a no-op unless torchrun started several
    if dataset is None:
        dataset = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    dataset = dataset.holdout(cfg.holdout)  # the held-out images are never drawn
    if out_path is not None:
        dist.on_main(prepare_run_folder, out_path, resume=resume, overwrite=overwrite)
    header: dict[str, str] = {}
    if resume and out_path is not None:
        # first the tensors: a missing or corrupt checkpoint gets load_tensors' clear error
        tensors = load_tensors(out_path / CHECKPOINT_FILE)
        from safetensors import safe_open

        with safe_open(str(out_path / CHECKPOINT_FILE), "pt") as f:
            header = f.metadata() or {}
        saved = json.loads(header.get("config", "{}"))
        if cfg.precision == "auto":
            # auto resumes in the precision the run chose: the hardware probe may answer
            # otherwise on another machine or a busy one, and that would refuse the resume
            cfg = dataclasses.replace(cfg, precision=_saved_precision(saved))
    run = _Run(cfg, dataset, out_path)
    if resume and out_path is not None:
        _check_resumable(saved, run.cfg)
        run.load_state(tensors, int(header.get("iteration", 0)), header)
    if out_path is not None:
        settings = {**run.cfg.to_dict(), "version": __version__}
        dist.on_main(atomic_write_json, out_path / CONFIG_FILE, settings)
        if run.iteration == 0:
            run.save()  # iteration 0: the initial images are the first good checkpoint
    if cfg.w_icd > 0 and run.weights.icd_k <= 0:
        _notice("ipc = 1: the intra-class diversity term has no neighbours and contributes 0")
    if (cfg.w_cd > 0 or cfg.w_sd > 0) and run.per_class < 2:
        _notice("ipc = 1: the spread terms (L_CD, L_SD) have no spread to match and contribute 0")

    log = _Log(out_path / LOG_FILE if out_path and dist.is_main() else None, run.iteration)
    bar = _progress(cfg.iterations, run.iteration, progress and dist.is_main())
    done_here = 0
    last_saved = run.iteration
    try:
        while run.iteration < cfg.iterations and (stop_after is None or done_here < stop_after):
            t0 = time.perf_counter()
            try:
                loss, terms = run.step()
            except NonFiniteLossError as exc:
                where = (
                    f"; the last good checkpoint (iteration {last_saved}) is in {out_path}"
                    if out_path
                    else ""
                )
                raise NonFiniteLossError(
                    f"{exc}{where}. Lower --lr-img or the term weights, then rerun "
                    "(with --resume to continue from the checkpoint)."
                ) from None
            seconds = time.perf_counter() - t0
            done_here += 1
            log.write(run.iteration, loss, terms, seconds)
            bar.set_postfix(loss=f"{loss:.4g}", s_it=f"{seconds:.2f}", refresh=False)
            bar.update(1)
            if (
                out_path is not None
                and cfg.checkpoint_every > 0
                and run.iteration % cfg.checkpoint_every == 0
            ):
                run.save()
                last_saved = run.iteration
        if out_path is not None and last_saved != run.iteration:
            run.save()
    finally:
        bar.close()
        log.close()
    return run.synthetic()


def _notice(message: str) -> None:
    from tqdm.auto import tqdm

    if not dist.is_main():
        return
    tqdm.write(f"note: {message}", file=sys.stderr)
