"""The objective that DM, DDM and IDM minimise: what one matching step compares.

For one frozen network and one DSA draw per class, ``real_statistics`` reduces each class's
augmented real batch (without autograd, in chunks) to the batch means the terms need (mean
embedding, mean feature map, mean Gram matrix, ...), and ``objective`` compares the synthetic
images against them: L_MMD plus DDM's weighted style and diversity terms (and IDM's
cross-entropy), summed over classes (docs/method.md, 'DM', 'DDM, paper form' and 'DDM,
released form'). ``Weights`` holds the terms' weights and how each term is computed;
``weights_for`` resolves them from a run's settings. ``TERMS`` names the terms in the order
they are logged.

The loop that draws the networks and batches and steps the pixels is ``ddm.condense``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .augment import DSAParams, apply
from .config import CondenseConfig
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
from .ncfm import (
    SampledFrequencies,
    cf_loss,
    cf_loss_from_stats,
    cf_stats,
    normalise_features,
)

__all__ = [
    "TERMS",
    "REFERENCE_EMBEDDING",
    "Weights",
    "weights_for",
    "RealStats",
    "input_conv",
    "real_statistics",
    "objective",
]

TERMS = ("mmd", "mm", "cm", "icd", "cd", "sd", "ce", "cf")  # logged unweighted, summed over classes

# The embedding size DDM's weights were calibrated at: the CIFAR-10 ConvNet's 128 x 4 x 4.
REFERENCE_EMBEDDING = 2048


@dataclass(frozen=True)
class Weights:
    """The objective's terms: weights and how each is computed (docs/method.md, 'DDM, paper form'
    and 'DDM, released form')."""

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


def weights_for(cfg: CondenseConfig, per_class: int) -> Weights:
    """The terms of a run with ``per_class`` images matched per class: L_ICD's k and L_CD's
    rank resolved (defaults from ``per_class``, k below it; no L_CD for one image a class)."""
    k = cfg.icd_k if cfg.icd_k is not None else default_icd_k(per_class)
    rank = cfg.cd_rank or default_spread_rank(per_class)
    return Weights(
        cfg.w_mm,
        cfg.w_cm,
        cfg.w_icd,
        min(k, per_class - 1),
        cfg.icd_neighbour_grad,
        w_cd=cfg.w_cd,
        cd_rank=rank if per_class > 1 else 0,
        w_sd=cfg.w_sd,
        tap=cfg.style_tap,
        moments=cfg.moments,
        relative=cfg.moments_relative,
        by_embedding=cfg.weights_by_embedding,
        correlation=cfg.correlation,
    )


@dataclass
class RealStats:
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
    cf_freqs: torch.Tensor | None = None  # T x D frequencies (NCFM's L_CF replaces L_MMD)
    cf_re: torch.Tensor | None = None  # T: real part of the real side's characteristic function
    cf_im: torch.Tensor | None = None  # T: imaginary part
    cf_sampled: Any = None  # NCFM's sampler: noise and sampler (frequencies with autograd)
    cf_real: torch.Tensor | None = None  # N x D normalised real embeddings (with the sampler)


def _features(net: nn.Module, x: torch.Tensor, weights: Weights, moments: bool = False):
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
    weights: Weights,
    gram_dtype: torch.dtype | None = None,
    first_gram: torch.Tensor | None = None,
    moments: Sequence[tuple[torch.Tensor, torch.Tensor] | None] = (),
) -> RealStats:
    """One class's statistics, in float32; ``gram_dtype`` (bf16) is the Gram product's input,
    ``first_gram`` the first layer's mean Gram matrix and ``moments`` a layer's per-sample
    (mu, s) when already known (None or missing: computed here)."""
    stat = RealStats(
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


def input_conv(net: nn.Module, weights: Weights) -> nn.Conv2d | None:
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
    weights: Weights,
    chunk_images: int,
    device: torch.device,
    autocast: Any,
    channels_last: bool,
    gram_dtype: torch.dtype | None = None,
    freqs: Sequence[torch.Tensor | None] = (),
) -> list[RealStats]:
    """Per-class statistics of the augmented real batches, without autograd, in chunks.

    ``freqs`` (NCFM), per class: the frequencies at which the characteristic function of the
    normalised real embeddings is taken (None or missing: not needed).

    ``chunk_images`` bounds the images per forward (whole classes are kept together);
    0 puts every class in one forward (required for batch norm). Maps stay in the dtype the
    network gave them (bf16 under autocast); each statistic is computed in float32.
    """
    stats: list[RealStats] = []
    spread_embs: list[torch.Tensor] = []  # per class, for L_CD's directions (solved at the end)
    spread = weights.w_cd > 0 and weights.cd_rank > 0
    c, n_classes = 0, len(batches)
    conv = input_conv(net, weights)
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
                stat = _class_stats(embs[i], layers, weights, gram_dtype, first, known)
                k = group[i]
                if k < len(freqs) and isinstance(freqs[k], SampledFrequencies):
                    stat.cf_sampled, stat.cf_real = freqs[k], normalise_features(embs[i])
                elif k < len(freqs) and freqs[k] is not None:
                    stat.cf_freqs = freqs[k].to(device)
                    stat.cf_re, stat.cf_im = cf_stats(normalise_features(embs[i]), stat.cf_freqs)
                stats.append(stat)
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
    real: list[RealStats],
    syn_images: torch.Tensor,
    syn_sizes: list[int],
    params: list[DSAParams],
    weights: Weights,
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
    (``Weights.term_scale``). Returns the total and the unweighted terms summed over classes.
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
    conv = input_conv(net, weights)
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
        if stat.cf_sampled is not None:  # NCFM with its sampler: frequencies with autograd
            freqs = stat.cf_sampled.frequencies(embs[c].device)
            parts = {"cf": (1.0, cf_loss(stat.cf_real, normalise_features(embs[c]), freqs))}
        elif stat.cf_freqs is not None:  # NCFM: the characteristic-function discrepancy
            cf = cf_loss_from_stats(
                stat.cf_re, stat.cf_im, normalise_features(embs[c]), stat.cf_freqs
            )
            parts = {"cf": (1.0, cf)}
        else:
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
