"""Matching losses of DM and DDM, as pure functions of tensors (METHOD.md sections 3 and 4).

Each public loss takes raw network outputs:

- ``mmd_loss``: content term of DM, squared distance of mean embeddings.
- ``moments_loss``: DDM's first/second moment (per channel) matching of feature maps.
- ``correlation_loss``: DDM's Gram-matrix matching of feature maps.
- ``diversity_loss``: DDM's intra-class diversity term (negative kNN KL).

Every term that compares a real batch with a synthetic one depends on the real side only
through batch means (the mean embedding, the mean map, the mean Gram matrix). The
condensation loop uses that: it accumulates these *statistics* over chunks of the real batch
without autograd (``mean_map``, ``mean_gram``), then calls the ``*_from_stats`` functions.
The public losses are thin compositions of the same pieces, so the two paths cannot drift.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = [
    "mmd_loss",
    "moments_loss",
    "correlation_loss",
    "diversity_loss",
    "default_icd_k",
    "mean_map",
    "mean_gram",
    "mmd_from_stats",
    "moments_from_stats",
    "correlation_from_stats",
]

SIGMA_EPS = 1e-5  # added to the spatial variance before the square root (METHOD.md 4)


# --- statistics (batch means) ------------------------------------------------------------


def mean_map(maps: torch.Tensor) -> torch.Tensor:
    """Average a layer's maps over the batch: N x C x H x W -> C x H x W."""
    return maps.mean(dim=0)


def mean_gram(maps: torch.Tensor) -> torch.Tensor:
    """Batch mean of per-sample Gram matrices G = F F^T / (C H W): N x C x H x W -> C x C.

    One batched matmul over flattened views (no copy of the maps).
    """
    n, c, h, w = maps.shape
    flat = maps.reshape(n, c, h * w)  # N x C x HW
    gram = torch.bmm(flat, flat.transpose(1, 2))  # N x C x C
    return gram.mean(dim=0) / (c * h * w)


# --- losses from statistics ---------------------------------------------------------------


def mmd_from_stats(real_mean: torch.Tensor, syn_emb: torch.Tensor) -> torch.Tensor:
    """|| real_mean - mean_j syn_emb_j ||^2, summed over dimensions."""
    return (real_mean - syn_emb.mean(dim=0)).pow(2).sum()


def _channel_moments(fmap: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel spatial mean and sqrt(unbiased variance + eps) of a C x H x W map."""
    flat = fmap.flatten(1)  # C x HW
    mu = flat.mean(dim=1)
    sigma = torch.sqrt(flat.var(dim=1, unbiased=True) + SIGMA_EPS)
    return mu, sigma


def moments_from_stats(
    real_means: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor]
) -> torch.Tensor:
    """L_MM from the real batch's mean maps (C x H x W per layer) and synthetic maps."""
    _check_layers(real_means, syn_maps)
    per_layer = []
    for real_mean, syn in zip(real_means, syn_maps, strict=True):
        mu_t, sigma_t = _channel_moments(real_mean)
        mu_s, sigma_s = _channel_moments(mean_map(syn))
        per_layer.append(0.5 * ((mu_s - mu_t).pow(2).mean() + (sigma_s - sigma_t).pow(2).mean()))
    return torch.stack(per_layer).mean()


def correlation_from_stats(
    real_grams: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor]
) -> torch.Tensor:
    """L_CM from the real batch's mean Gram matrices (C x C per layer) and synthetic maps."""
    _check_layers(real_grams, syn_maps)
    per_layer = [
        (real_gram - mean_gram(syn)).pow(2).sum()
        for real_gram, syn in zip(real_grams, syn_maps, strict=True)
    ]
    return torch.stack(per_layer).mean()


def _check_layers(real: Sequence[torch.Tensor], syn: Sequence[torch.Tensor]) -> None:
    if len(real) != len(syn) or len(real) == 0:
        raise ValueError(
            f"real and synthetic feature maps must list the same layers, "
            f"got {len(real)} and {len(syn)}"
        )


# --- public losses on raw outputs -----------------------------------------------------------


def mmd_loss(real_emb: torch.Tensor, syn_emb: torch.Tensor) -> torch.Tensor:
    """DM's content term: || mean_i real_i - mean_j syn_j ||^2 (N x D, M x D -> scalar)."""
    return mmd_from_stats(real_emb.mean(dim=0), syn_emb)


def moments_loss(
    real_maps: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor]
) -> torch.Tensor:
    """DDM's moments matching L_MM, mean over layers (maps N x C x H x W and M x C x H x W)."""
    return moments_from_stats([mean_map(m) for m in real_maps], syn_maps)


def correlation_loss(
    real_maps: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor]
) -> torch.Tensor:
    """DDM's correlation (Gram) matching L_CM, mean over layers."""
    return correlation_from_stats([mean_gram(m) for m in real_maps], syn_maps)


def default_icd_k(ipc: int) -> int:
    """k = max(1, round(0.2 ipc)) capped at ipc - 1 (0 when ipc = 1: no neighbours)."""
    return min(max(1, round(0.2 * ipc)), ipc - 1)


def diversity_loss(syn_emb: torch.Tensor, k: int, neighbour_grad: bool = True) -> torch.Tensor:
    """DDM's intra-class diversity L_ICD = -(1/M) sum_i KL(softmax(f_i) || softmax(m_i)).

    m_i is the mean embedding of the k nearest other synthetic images (Euclidean). With
    ``neighbour_grad`` (the reference's behaviour) gradient also flows through m_i.
    With fewer than two images, or k = 0, there are no neighbours and the term is zero.
    """
    m = syn_emb.shape[0]
    k = min(k, m - 1)
    if k <= 0:
        return syn_emb.sum() * 0.0
    with torch.no_grad():
        dist = torch.cdist(syn_emb, syn_emb)  # M x M
        dist.fill_diagonal_(float("inf"))
        neighbours = dist.topk(k, dim=1, largest=False).indices  # M x k
    source = syn_emb if neighbour_grad else syn_emb.detach()
    neighbour_mean = source[neighbours].mean(dim=1)  # M x D
    log_p = F.log_softmax(syn_emb, dim=1)
    log_q = F.log_softmax(neighbour_mean, dim=1)
    kl = (log_p.exp() * (log_p - log_q)).sum(dim=1)  # M
    return -kl.mean()
