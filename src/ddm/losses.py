"""Matching losses of DM and DDM, as pure functions of tensors (docs/method.md, 'DM' and
'DDM, paper form').

Each public loss takes raw network outputs:

- ``mmd_loss``: content term of DM, squared distance of mean embeddings.
- ``moments_loss``: DDM's first/second moment (per channel) matching of feature maps.
- ``correlation_loss``: DDM's Gram-matrix matching of feature maps (the published sum of
  squared differences, or its scale-free cosine form).
- ``diversity_loss``: DDM's intra-class diversity term (negative kNN KL).

The released form of DDM (docs/method.md, 'DDM, released form') adds:

- ``persample_moments_loss``: per-sample channel moments, averaged, compared relatively.
- ``spread_loss``: the bounded diversity term L_CD, the synthetic class's spread along the
  real class's top principal directions against the real spread.
- ``style_spread_loss``: the optional L_SD, across-sample spread of the per-sample moments.

Every term that compares a real batch with a synthetic one depends on the real side only
through batch means (the mean embedding, the mean map, the mean Gram matrix). The
condensation loop uses that: it accumulates these *statistics* over chunks of the real batch
without autograd (``mean_map``, ``mean_gram``), then calls the ``*_from_stats`` functions.
The public losses are thin compositions of the same pieces, so the two paths cannot drift.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

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
    "conv_mean_gram",
    "mmd_from_stats",
    "moments_from_stats",
    "correlation_from_stats",
    "gram_gap",
    "gram_cosine_gap",
    "CORRELATION_FORMS",
    "persample_moments_loss",
    "spread_loss",
    "style_spread_loss",
    "default_spread_rank",
    "relative_sq",
    "persample_moments",
    "persample_moments_from_stats",
    "spread_directions",
    "spread_directions_many",
    "spread_from_stats",
    "style_spread_from_stats",
]

SIGMA_EPS = 1e-5  # added to the spatial variance before the square root (both DDM forms)
RELATIVE_EPS = 1e-8  # added to the target's mean square in relative distances (released form)
MAX_SPREAD_RANK = 16  # L_CD's default number of principal directions (released form)
GRAM_NORM_EPS = 1e-12  # lower bound on a Gram matrix's norm in the scale-free L_CM


# --- statistics (batch means) ------------------------------------------------------------


_LOW_PRECISION = (torch.bfloat16, torch.float16)


def mean_map(maps: torch.Tensor) -> torch.Tensor:
    """Average a layer's maps over the batch: N x C x H x W -> C x H x W (bf16: in float32)."""
    return maps.mean(dim=0, dtype=torch.float32 if maps.dtype in _LOW_PRECISION else None)


def mean_gram(maps: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    """Batch mean of per-sample Gram matrices G = F F^T / (C H W): N x C x H x W -> C x C.

    One batched matmul over flattened views (no copy of the maps), summed over the batch in
    float32 (or the maps' wider type). ``dtype`` (e.g. ``torch.bfloat16``) is the product's
    input type: bf16 products (float32 accumulation inside the kernel, each sample's Gram
    rounded to bf16 before the float32 sum) run 2-3x faster on CPUs with bf16 units; the
    mean's error is then about 3e-4 of its largest entry (``tests/test_losses.py``).
    Small maps (on the CPU): the products of a few samples' pixels are concatenated into one
    (``_samples_per_product``), since a 128 x 64 x 128 product is mostly call overhead (a copy
    of the maps; 3x faster at 8 x 8, 1.4x at 16 x 16 in bf16). Measured and kept out: one GEMM
    over all pixels of the batch (float32 sums of bf16 products need per-group outputs) and
    using the symmetry of F F^T by channel blocks (slower in both types).
    """
    n, c, h, w = maps.shape
    if dtype is not None:
        maps = maps.to(dtype)
    g = _samples_per_product(n, h * w, maps)
    if g > 1:  # (N/g) x C x g*HW, a copy
        flat = maps.reshape(n // g, g, c, h * w).transpose(1, 2).reshape(n // g, c, g * h * w)
    else:
        flat = maps.reshape(n, c, h * w)  # N x C x HW, a view
    gram = torch.bmm(flat, flat.transpose(1, 2))  # N/g x C x C
    acc = torch.float32 if gram.dtype in _LOW_PRECISION else gram.dtype
    return gram.sum(dim=0, dtype=acc) / (n * c * h * w)


def _samples_per_product(n: int, pixels: int, maps: torch.Tensor) -> int:
    """How many samples' pixels ``mean_gram`` puts in one product: the largest divisor of
    ``n`` up to 32 for maps of <= 64 pixels, up to 8 for <= 256 pixels in bf16/fp16, else 1
    (measured on a 2-core CPU, 2,560 x 128-channel maps: float32 products of 256 pixels and
    products of 1,024 pixels are as fast per sample). Off the CPU: 1."""
    if maps.device.type != "cpu":
        return 1
    if pixels <= 64:
        target = 32
    elif pixels <= 256 and maps.dtype in _LOW_PRECISION:
        target = 8
    else:
        return 1
    return max(d for d in range(1, min(target, n) + 1) if n % d == 0)


def conv_mean_gram(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    padding: int | tuple,
    dtype: torch.dtype | None = None,
) -> torch.Tensor:
    """``mean_gram(F.conv2d(x, weight, bias, padding=padding))`` without computing the maps.

    Each output pixel is f = W u + b, u the input patch (k = C_in kh kw values), so the mean
    Gram matrix is (W S2 W^T + (W s1) b^T + b (W s1)^T + HW b b^T) / (C H W), with S2 and
    s1 the per-image sums of u u^T and u, averaged over the batch. That costs 2 k^2 per pixel
    instead of 2 C^2: for a first convolution on RGB images (k = 27, C = 128) 22x fewer
    FLOPs, which is where most of DDM's released-form style cost was (measured: 2-3.5x
    faster than the bf16 Gram of the maps). Float32 patches, float64 for the small products;
    the result is float32. Stride 1, no dilation, zero padding. Differentiable in ``x`` (the
    synthetic images' side; the weights are taken as constants).

    ``dtype`` (bf16/fp16, without autograd: the real batch under bf16 precision) makes the
    patches that type, one image per product, the products' float32-accumulated outputs
    summed in float32: error about 7e-5 of the largest entry (against 2e-3 for the bf16 Gram
    of the maps), and 1.4x faster than the float32 patches (256 CIFAR images, 2 threads,
    median of 15: 8.6 -> 6.2 ms).
    """
    n, _, h, w = x.shape
    c_out, _, kh, kw = weight.shape
    ph, pw = (padding, padding) if isinstance(padding, int) else padding
    oh, ow = h + 2 * ph - kh + 1, w + 2 * pw - kw + 1
    k, hw = weight[0].numel(), oh * ow
    grad = torch.is_grad_enabled() and x.requires_grad
    if dtype in _LOW_PRECISION and not grad:
        padded = F.pad(x.to(dtype), (pw, pw, ph, ph))  # N x C_in x H' x W'
        cols = padded.new_empty(n, k + 1, hw)  # per image: its patches and a row of ones
        view = cols[:, :k].view(n, padded.shape[1], kh * kw, oh, ow)
        for idx in range(kh * kw):
            i, j = divmod(idx, kw)
            view[:, :, idx].copy_(padded[:, :, i : i + oh, j : j + ow])
        cols[:, k] = 1.0
        products = torch.bmm(cols, cols.transpose(1, 2))  # N x (k + 1) x (k + 1)
        return _gram_from_patch_moments(
            products.sum(0, dtype=torch.float32).double() / n, weight, bias, hw
        )
    padded = F.pad(x.float().transpose(0, 1), (pw, pw, ph, ph))  # C_in x N x H' x W'
    # (k + 1) x N*HW: the patches, rows in the weight's (C_in, kh, kw) order (shifted slices
    # copy faster than unfold), and a row of ones, so that one product gives S2 and s1 (a
    # separate sum over the patches cost a fifth of the time)
    slices = [padded[:, :, i : i + oh, j : j + ow] for i in range(kh) for j in range(kw)]
    if grad:
        cols = torch.stack(slices, dim=1).reshape(k, n * hw)
        cols = torch.cat([cols, cols.new_ones(1, n * hw)])
    else:  # written in place, no second copy
        cols = padded.new_empty(k + 1, n * hw)
        torch.stack(slices, dim=1, out=cols[:k].view(padded.shape[0], kh * kw, n, oh, ow))
        cols[k] = 1.0
    return _gram_from_patch_moments((cols @ cols.T).double() / n, weight, bias, hw)


def _gram_from_patch_moments(
    moments: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, hw: int
) -> torch.Tensor:
    """The mean Gram matrix of f = W u + b from the patches' per-image moments
    [[S2, s1], [s1^T, HW]] ((k + 1) x (k + 1), float64), as float32."""
    c_out, k = weight.shape[0], weight[0].numel()
    s2, s1 = moments[:k, :k], moments[:k, k]
    wt = weight.detach().reshape(c_out, -1).double()  # C x k
    gram = wt @ s2 @ wt.T
    if bias is not None:
        b, ws1 = bias.detach().double(), wt @ s1
        gram = gram + torch.outer(ws1, b) + torch.outer(b, ws1) + hw * torch.outer(b, b)
    return (gram / (c_out * hw)).float()


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
    real_means: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor], relative: bool = False
) -> torch.Tensor:
    """L_MM from the real batch's mean maps (C x H x W per layer) and synthetic maps.

    ``relative`` divides each squared difference by the target's mean square (as 4b does).
    """
    _check_layers(real_means, syn_maps)
    per_layer = []
    for real_mean, syn in zip(real_means, syn_maps, strict=True):
        mu_t, sigma_t = _channel_moments(real_mean)
        mu_s, sigma_s = _channel_moments(mean_map(syn))
        per_layer.append(
            0.5 * (relative_sq(mu_s, mu_t, relative) + relative_sq(sigma_s, sigma_t, relative))
        )
    return torch.stack(per_layer).mean()


def correlation_from_stats(
    real_grams: Sequence[torch.Tensor],
    syn_maps: Sequence[torch.Tensor],
    syn_first_gram: torch.Tensor | None = None,
    form: str = "sum",
) -> torch.Tensor:
    """L_CM from the real batch's mean Gram matrices (C x C per layer) and synthetic maps.

    ``form``: ``sum`` (the published distance, ``gram_gap``) or ``cosine`` (scale-free,
    ``gram_cosine_gap``). ``syn_first_gram``: the synthetic first layer's mean Gram matrix
    when already known (from the patches, ``conv_mean_gram``, with autograd); the first map
    is then not multiplied.
    """
    _check_layers(real_grams, syn_maps)
    if form not in CORRELATION_FORMS:
        known = ", ".join(CORRELATION_FORMS)
        raise ValueError(f"unknown correlation form {form!r}; known: {known}")
    gap = CORRELATION_FORMS[form]
    per_layer = [
        gap(syn_first_gram if i == 0 and syn_first_gram is not None else mean_gram(syn), real_gram)
        for i, (real_gram, syn) in enumerate(zip(real_grams, syn_maps, strict=True))
    ]
    return torch.stack(per_layer).mean()


def gram_gap(syn_gram: torch.Tensor, real_gram: torch.Tensor) -> torch.Tensor:
    """The published correlation distance: the sum over entries of (G_T - G_S)^2."""
    return (real_gram - syn_gram).pow(2).sum()


def gram_cosine_gap(syn_gram: torch.Tensor, real_gram: torch.Tensor) -> torch.Tensor:
    """|| G_S / ||G_S|| - G_T / ||G_T|| ||^2 (Frobenius norms), i.e. 2 - 2 cos(G_S, G_T).

    The scale-free correlation distance: it compares the shape of the two Gram matrices, not
    their size, which the moments term already matches (a mean Gram matrix's diagonal is
    mean_n (mu_nk^2 + s_nk^2) / C). Invariant to the scale of either side and bounded in
    [0, 2] (Gram matrices are positive semi-definite, so cos >= 0); its gradient shrinks as
    1 / scale where the published distance's grows as scale^3 on the conv tap
    (docs/guide/stability.md).
    """
    syn = syn_gram / syn_gram.norm().clamp_min(GRAM_NORM_EPS)
    real = real_gram / real_gram.norm().clamp_min(GRAM_NORM_EPS)
    return (syn - real).pow(2).sum()


# L_CM's distances between mean Gram matrices, by name (``correlation_from_stats``)
CORRELATION_FORMS = {"sum": gram_gap, "cosine": gram_cosine_gap}


def _as_layers(maps: Sequence[torch.Tensor] | torch.Tensor) -> Sequence[torch.Tensor]:
    """A single N x C x H x W tensor is one layer."""
    return [maps] if isinstance(maps, torch.Tensor) else maps


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
    real_maps: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor], form: str = "sum"
) -> torch.Tensor:
    """DDM's correlation (Gram) matching L_CM, mean over layers; ``form``: sum | cosine."""
    return correlation_from_stats([mean_gram(m) for m in real_maps], syn_maps, form=form)


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


# --- the released form (docs/method.md, 'DDM, released form') -----------------------------------


def relative_sq(a: torch.Tensor, b: torch.Tensor, relative: bool = True) -> torch.Tensor:
    """d(a, b) = mean_k (a_k - b_k)^2 / (mean_k b_k^2 + 1e-8); ``b`` is the (real) target.

    Without ``relative`` the plain mean squared difference.
    """
    diff = (a - b).pow(2).mean()
    if not relative:
        return diff
    return diff / (b.detach().pow(2).mean() + RELATIVE_EPS)


def persample_moments(maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per image and channel: spatial mean and sqrt(population variance + 1e-5). N x C each.

    Without autograd (the real batch) both come from group norm's statistics kernel (one
    group per channel: mean and 1 / sqrt(var + 1e-5)), in float32 also for bf16 maps and
    without a float copy of them: measured 2.5x (float32) to 4x (bf16 maps) faster on CPU
    than ``var_mean``. With autograd: a mean and a mean squared deviation.
    """
    if maps.dim() == 4 and not (maps.requires_grad and torch.is_grad_enabled()):
        n, c, h, w = maps.shape
        low = maps.dtype in _LOW_PRECISION
        # float weights with low-precision maps: float32 statistics
        ones = torch.ones(c, device=maps.device, dtype=torch.float32 if low else maps.dtype)
        _, mu, rstd = torch.ops.aten.native_group_norm(
            maps.contiguous(), ones, torch.zeros_like(ones), n, c, h * w, c, SIGMA_EPS
        )
        return mu.view(n, c), rstd.view(n, c).reciprocal()
    if maps.dim() == 4 and maps.device.type == "cpu":
        return _PersampleMoments.apply(maps)
    # two passes (mean, then the mean squared deviation): the same values, and on CPU 10x+
    # faster in the forward than ``var_mean``'s single-pass kernel on these row lengths
    flat = maps.flatten(2)
    mu = flat.mean(dim=2)
    var = (flat - mu.unsqueeze(2)).pow(2).mean(dim=2)
    return mu, torch.sqrt(var + SIGMA_EPS)


class _PersampleMoments(torch.autograd.Function):
    """``persample_moments`` with autograd on CPU: the forward from group norm's statistics
    kernel (as without autograd), the backward in closed form, d mu / dx = 1 / HW and
    d s / dx = (x - mu) / (HW s), in one expression. Measured (2 threads, the synthetic
    moments of 10 classes x 3 maps, forward and backward): 132 ms by the mean / deviation
    route, 63 ms this way."""

    @staticmethod
    def forward(ctx, maps: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with torch.no_grad():
            mu, s = persample_moments(maps)
        ctx.save_for_backward(maps, mu, s)
        return mu, s

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad_mu: torch.Tensor | None, grad_s: torch.Tensor | None) -> torch.Tensor:
        maps, mu, s = ctx.saved_tensors
        n, c, h, w = maps.shape
        if grad_mu is None:
            grad_mu = torch.zeros_like(mu)
        if grad_s is None:
            grad_s = torch.zeros_like(s)
        scale = (grad_s / (s * (h * w))).view(n, c, 1, 1)
        shift = (grad_mu / (h * w)).view(n, c, 1, 1) - mu.view(n, c, 1, 1) * scale
        return torch.addcmul(shift, maps, scale).to(maps.dtype)


def persample_moments_from_stats(
    real_mu: Sequence[torch.Tensor],
    real_s: Sequence[torch.Tensor],
    syn_maps: Sequence[torch.Tensor],
    relative: bool = True,
) -> torch.Tensor:
    """L_MM (released) from the real batch's mean per-sample moments (C per layer)."""
    return _persample_gap(real_mu, real_s, syn_maps, lambda x: x.mean(0), relative)


def _persample_gap(real_mu, real_s, syn_maps, reduce, relative: bool) -> torch.Tensor:
    """Mean over layers of 0.5 * (d(reduce(mu_S), mu_T) + d(reduce(s_S), s_T)), where
    ``reduce`` summarises the synthetic per-sample moments over images (mean or std)."""
    _check_layers(real_mu, syn_maps)
    per_layer = []
    for mu_t, s_t, syn in zip(real_mu, real_s, syn_maps, strict=True):
        mu, s = persample_moments(syn)
        gap = relative_sq(reduce(mu), mu_t, relative) + relative_sq(reduce(s), s_t, relative)
        per_layer.append(0.5 * gap)
    return torch.stack(per_layer).mean()


def persample_moments_loss(
    real_maps: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor], relative: bool = True
) -> torch.Tensor:
    """Released DDM's moments term, mean over layers (maps N x C x H x W and M x C x H x W).

    mu_nk, s_nk per sample and channel; targets are their means over the real batch; per layer
    0.5 * (d(mean mu_S, mean mu_T) + d(mean s_S, mean s_T)) with ``relative_sq`` as d.
    Independent of the batch size, and scale-free when ``relative``.
    """
    real_maps, syn_maps = _as_layers(real_maps), _as_layers(syn_maps)
    stats = [persample_moments(m) for m in real_maps]
    return persample_moments_from_stats(
        [mu.mean(0) for mu, _ in stats], [s.mean(0) for _, s in stats], syn_maps, relative
    )


def style_spread_from_stats(
    real_mu_std: Sequence[torch.Tensor],
    real_s_std: Sequence[torch.Tensor],
    syn_maps: Sequence[torch.Tensor],
    relative: bool = True,
) -> torch.Tensor:
    """L_SD from the real batch's across-sample (unbiased) std of mu_nk and s_nk per layer."""
    _check_layers(real_mu_std, syn_maps)
    if syn_maps[0].shape[0] < 2:
        return syn_maps[0].sum() * 0.0
    return _persample_gap(real_mu_std, real_s_std, syn_maps, lambda x: x.std(0), relative)


def style_spread_loss(
    real_maps: Sequence[torch.Tensor], syn_maps: Sequence[torch.Tensor], relative: bool = True
) -> torch.Tensor:
    """The optional L_SD: per channel, match the across-sample std of mu_nk and of s_nk.

    Zero when the synthetic side has fewer than two images (no spread to match).
    """
    real_maps, syn_maps = _as_layers(real_maps), _as_layers(syn_maps)
    stats = [persample_moments(m) for m in real_maps]
    return style_spread_from_stats(
        [mu.std(0) for mu, _ in stats], [s.std(0) for _, s in stats], syn_maps, relative
    )


def default_spread_rank(n_syn: int) -> int:
    """r = min(n_S - 1, 16): L_CD's number of principal directions (0 when n_S < 2)."""
    return max(0, min(n_syn - 1, MAX_SPREAD_RANK))


@contextmanager
def _one_cpu_thread(t: torch.Tensor) -> Iterator[None]:
    """Run a small LAPACK call on one thread: on CPU, MKL's threaded eigensolver for an N x N
    matrix of a few hundred rows is several times slower with 2 threads than with 1 (and far
    slower when the cores are busy); one thread also makes the result independent of the
    thread count. A no-op off the CPU or when already on one thread."""
    threads = torch.get_num_threads()
    if t.device.type != "cpu" or threads == 1:
        yield
        return
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


def spread_directions(real_emb: torch.Tensor, rank: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``rank`` principal directions of the centred real embeddings and the real std along
    each: N x D -> (D x r, r), r = min(rank, N - 1, D), fewer where the batch spans fewer
    directions (eigenvalues below N x float32 epsilon x the largest are dropped).

    Exact eigendecomposition of the N x N Gram matrix of the centred batch (the same
    directions as an SVD, at the cost of an N x N problem), on one CPU thread, so the
    directions, and a resumed run, are deterministic. Solved in the embeddings' own precision
    (float32: its errors are the input's, 1e-7 of L_CD against a float64 SVD, and it is 2x
    faster than float64); the directions are formed in float64. The sign of a direction does
    not matter to a standard deviation.
    """
    n, d = real_emb.shape
    r = max(0, min(rank, n - 1, d))
    centred = real_emb - real_emb.mean(0)
    if r == 0:
        return real_emb.new_zeros(d, 0), real_emb.new_zeros(0)
    gram = centred @ centred.T  # N x N
    if gram.dtype in _LOW_PRECISION:
        gram = gram.float()
    with _one_cpu_thread(gram):
        eigvals, eigvecs = torch.linalg.eigh(gram)  # ascending
    top_vals, top_vecs = eigvals.flip(0)[:r].double(), eigvecs.flip(1)[:, :r].double()
    floor = n * torch.finfo(gram.dtype).eps * top_vals[0].clamp_min(1e-300)
    keep = top_vals > floor  # directions the batch spans
    top_vals, top_vecs = top_vals[keep], top_vecs[:, keep]
    # D x r, orthonormal columns; as (V^T C)^T: a transposed float64 copy of the D x N batch
    # cost 3.5x the product itself (measured 7.6 vs 2.2 ms at 256 x 2048)
    dirs = (top_vecs.T @ centred.double()).T / top_vals.sqrt()
    dirs = dirs.to(real_emb.dtype)
    a = (centred @ dirs).std(0, correction=1)
    return dirs, a


def spread_directions_many(
    real_embs: Sequence[torch.Tensor], rank: int
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """``[spread_directions(e, rank) for e in real_embs]``, the same values bitwise; on a CPU
    with several threads, the classes are solved side by side, one thread each (each solve
    runs on one thread either way; 10 CIFAR classes of 256 x 2,048 real embeddings, 2
    threads, median of 15: 78 -> 61 ms, the Gram products being memory-bound)."""
    threads = torch.get_num_threads()
    cpu = all(e.device.type == "cpu" for e in real_embs)
    if not cpu or threads == 1 or len(real_embs) < 2:
        return [spread_directions(e, rank) for e in real_embs]
    torch.set_num_threads(1)
    try:
        with ThreadPoolExecutor(max_workers=min(threads, len(real_embs))) as pool:
            return list(pool.map(lambda e: spread_directions(e, rank), real_embs))
    finally:
        torch.set_num_threads(threads)


def spread_from_stats(dirs: torch.Tensor, real_std: torch.Tensor, syn_emb: torch.Tensor):
    """L_CD = mean_k (b_k - a_k)^2 / (mean_k a_k^2 + 1e-8), b_k = std of S along v_k."""
    if syn_emb.shape[0] < 2 or dirs.shape[1] == 0:
        return syn_emb.sum() * 0.0
    b = ((syn_emb - syn_emb.mean(0)) @ dirs).std(0, correction=1)
    return relative_sq(b, real_std)


def spread_loss(real_emb: torch.Tensor, syn_emb: torch.Tensor, rank: int = 0) -> torch.Tensor:
    """Released DDM's bounded diversity term L_CD (N x D real, M x D synthetic -> scalar).

    a_k, b_k: unbiased std of the centred real / synthetic embeddings along the real class's
    k-th principal direction, k < r; r = ``rank`` or, for 0, min(M - 1, 16), also capped at
    N - 1 and D. Zero when M < 2; minimal (0) where the synthetic class spreads like the real.
    """
    r = rank if rank > 0 else default_spread_rank(syn_emb.shape[0])
    if syn_emb.shape[0] < 2 or r == 0:
        return syn_emb.sum() * 0.0
    dirs, a = spread_directions(real_emb.detach(), r)
    return spread_from_stats(dirs, a, syn_emb)
