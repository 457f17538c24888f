"""``ddm diagnose RUN``: DDM's own analysis of a condensed set, as numbers and one figure.

DDM's argument (docs/method.md, 'DDM, paper form') is that DM's mean-embedding matching leaves
two defects that accuracy alone does not show: the synthetic images keep a **style gap** to
the real data (their feature maps have other per-channel moments and channel correlations),
and the images of a class **lack diversity** (they drift towards similar embeddings). This
module measures both for a condensed set and, as the yardstick, for a random real subset of
the same size (``random_subset(dataset, ipc, seed)``: what "natural" images of that budget look
like). It measures them the way each form of DDM sees them: the paper's and the released one
(docs/method.md, 'DDM, paper form' and 'DDM, released form'), so that a report shows what
each form's terms change.

Style gap, per layer l of ``ConvNet.feature_maps``, between a real batch of the class
(``batch`` images, T) and the set's images of the class (S). Paper form, at the ``act`` tap
(after the activation, before pooling):

- ``moments``: L_MM^l of the paper form: 0.5 * (mean_k (mu_S,k - mu_T,k)^2 + mean_k
  (sigma_S,k - sigma_T,k)^2), mu and sigma the per-channel spatial mean and
  sqrt(unbiased variance + 1e-5) of the batch-mean map.
- ``gram``: L_CM^l, sum_ij (G_T - G_S)_ij^2 of the batch-mean Gram matrices
  G = F F^T / (C H W).

Released form, at the ``conv`` tap (each block's convolution output, before the norm):

- ``moments_conv``: the released form's L_MM^l. Per image n and channel k,
  mu_nk = spatial mean and s_nk = sqrt(population spatial variance + 1e-5); mu_T, s_T are
  their means over the real batch, mu_S, s_S over the set's images. With
  d(a, b) = mean_k (a_k - b_k)^2 / (mean_k b_k^2 + 1e-8):
  ``moments_conv`` = 0.5 * (d(mu_S, mu_T) + d(s_S, s_T)), a fraction of the real moments'
  own size (scale-free, so comparable across layers).
- ``gram_conv``: L_CM^l as above, on the conv-tap maps.

Intra-class diversity, on the final embedding ``ConvNet.embed``:

- ``pairwise``: mean Euclidean distance over all pairs of the set's images of a class.
- ``knn_kl``: the positive mean kNN KL of the paper's L_ICD, ``-diversity_loss(emb, k)`` with
  ``k = default_icd_k(m)`` for the m images of the class; 0 when every image sits on its
  neighbours.
- Spread along the real class's principal directions (the released L_CD's view): R = the
  real batch's embeddings (n_R x D), S = the set's (m x D); r = min(m - 1, 16, n_R - 1, D)
  (``default_spread_rank``); v_1..v_r the top principal directions of R - mean R;
  a_k = unbiased std of (R - mean R) v_k, b_k = unbiased std of (S - mean S) v_k.
  ``spread_ratio`` = mean_k b_k / a_k: 1 where the class spreads like the real one along its
  main axes of variation, < 1 collapsed (0 for identical images), > 1 wider.
  ``spread_loss`` = L_CD = mean_k (b_k - a_k)^2 / (mean_k a_k^2 + 1e-8): 0 at the real
  spread, 1 for identical images. The directions are fitted to R, so a real sample of m
  images reads somewhat below 1 too: the random subset's row is the yardstick.

With one image per class there are no pairs, neighbours or spread: the diversity numbers are
NaN (null in JSON, "n/a" in the table).

Lower style numbers mean closer to the real style; higher pairwise / kNN KL mean more varied
classes. Every number is computed per class and per network, then averaged over the classes
and over ``nets`` randomly initialised ConvNets (the same networks and real batches for both
sets, so the comparison is paired). No augmentation: the sets themselves are measured. IDM
sets (expansion factor > 1) are measured as a network sees them, i.e. expanded; the random
subset keeps the stored budget (``ipc`` images per class). Real batches come from the train
split, so the random subset may overlap them; that is the "natural" reference.

Seeds: network k is initialised under ``seed_for(seed, 30, k)``; the real batch of class c
is drawn with ``generator(seed, 31, c)``.

Heavy imports (torch, matplotlib, the rest of the package) happen inside the functions, so
that registering the sub-command (``add_parser``) keeps ``ddm --help`` fast.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .config import CondenseConfig
from .settings import setting, shared

if TYPE_CHECKING:
    import torch

    from .data import Dataset
    from .io import SyntheticSet
    from .runtime import Runtime

__all__ = ["DiagnoseReport", "DiagnoseConfig", "diagnose", "plot", "summary"]

NET_STREAM = 30  # seed_for(seed, NET_STREAM, k): initialisation of network k
REAL_STREAM = 31  # generator(seed, REAL_STREAM, c): the real batch of class c
REAL_CHUNK = 128  # real images per no-grad forward
CONDENSED, RANDOM = "condensed", "random real"
STYLE_KEYS = ("moments", "gram")  # paper form, act tap
CONV_STYLE_KEYS = ("moments_conv", "gram_conv")  # released form, conv tap
DIVERSITY_KEYS = ("pairwise", "knn_kl")
SPREAD_KEYS = ("spread_ratio", "spread_loss")


# --- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagnoseReport:
    """Style gap per layer and intra-class diversity of each measured set.

    ``sets[name]`` holds ``moments``, ``gram``, ``moments_conv`` and ``gram_conv`` (lists, one
    value per layer), ``pairwise``, ``knn_kl``, ``spread_ratio`` and ``spread_loss`` (floats,
    NaN when undefined). ``meta`` records what was measured. Reports written before the
    conv-tap and spread numbers existed lack those keys; the table, figure and summary then
    show what there is.
    """

    layers: list[str]  # e.g. ["block1 128x32x32", "block2 128x16x16", "block3 128x8x8"]
    sets: dict[str, dict[str, list[float] | float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown: the paper-form table (act-tap style, pairwise, kNN KL), then, where
        measured, the released-form table (conv-tap style, spread ratio, L_CD); one row per set.
        """
        short = [name.split()[0] for name in self.layers]
        paper = _markdown(
            [
                "set",
                *(f"moments {s}" for s in short),
                *(f"Gram {s}" for s in short),
                "pairwise",
                "kNN KL",
            ],
            {n: _cells(v, STYLE_KEYS, DIVERSITY_KEYS) for n, v in self.sets.items()},
        )
        if not self._has(*CONV_STYLE_KEYS, *SPREAD_KEYS):
            return paper
        released = _markdown(
            [
                "set",
                *(f"moments conv {s}" for s in short),
                *(f"Gram conv {s}" for s in short),
                "spread ratio",
                "L_CD",
            ],
            {n: _cells(v, CONV_STYLE_KEYS, SPREAD_KEYS) for n, v in self.sets.items()},
        )
        return paper + "\n\n" + released

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: NaN (undefined diversity) becomes null."""

        def clean(v: Any) -> Any:
            if isinstance(v, list):
                return [clean(x) for x in v]
            return None if isinstance(v, float) and math.isnan(v) else v

        return {
            "layers": list(self.layers),
            "sets": {n: {k: clean(v) for k, v in s.items()} for n, s in self.sets.items()},
            "meta": dict(self.meta),
        }

    def _has(self, *keys: str) -> bool:
        """Whether every set carries all of ``keys`` (older reports lack the newer ones)."""
        return all(key in values for values in self.sets.values() for key in keys)


def _cells(values: dict, per_layer: tuple[str, ...], scalars: tuple[str, ...]) -> list[str]:
    """A set's row: the per-layer lists of ``per_layer``, then the floats of ``scalars``."""
    cells = [_fmt(v) for key in per_layer for v in values[key]]
    return cells + [_fmt(values[key]) for key in scalars]


def _markdown(header: list[str], rows: dict[str, list[str]]) -> str:
    """A markdown table: names left-aligned, numbers right-aligned."""
    body = [[name, *cells] for name, cells in rows.items()]
    widths = [max(len(r[i]) for r in [header, *body]) for i in range(len(header))]
    lines = [
        "| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |",
        "|" + "|".join("-" * (w + 2) for w in widths) + "|",
    ]
    for name, *cells in body:
        padded = [name.ljust(widths[0])]
        padded += [c.rjust(w) for c, w in zip(cells, widths[1:], strict=True)]
        lines.append("| " + " | ".join(padded) + " |")
    return "\n".join(lines)


def _fmt(value: float) -> str:
    return "n/a" if math.isnan(value) else f"{value:.3g}"


# --- the measurement ------------------------------------------------------------------------


def diagnose(
    syn: SyntheticSet,
    dataset: Dataset,
    nets: int = 5,
    batch: int = 256,
    seed: int = 0,
    device: str = "auto",
    progress: bool = False,
    *,
    runtime: Runtime | None = None,
) -> DiagnoseReport:
    """Style gap to the real data and intra-class diversity of ``syn`` and of a random subset.

    ``nets`` random ConvNets, ``batch`` real train images per class (all of a smaller class);
    ``runtime``: the device (default: ``device`` resolved), in float32.
    """
    import torch
    from tqdm.auto import tqdm

    from .baselines import random_subset
    from .runtime import Runtime, generator

    if nets < 1 or batch < 1:
        raise ValueError(f"nets and batch must be >= 1, got nets={nets}, batch={batch}")
    _check_compatible(syn, dataset)
    dev = (runtime or Runtime.resolve(device, "fp32")).device
    ipc = int(syn.meta.get("ipc") or torch.bincount(syn.labels).max())
    images, labels = syn.expanded()
    sets = {
        CONDENSED: _by_class(images, labels, dataset.num_classes),
        RANDOM: _by_class(*random_subset(dataset, ipc, seed).expanded(), dataset.num_classes),
    }
    real_idx = [
        dataset.class_subset_indices(c, batch, generator(seed, REAL_STREAM, c))
        for c in range(dataset.num_classes)
    ]
    # one entry per (net, class): style vectors (one value per layer), diversity floats
    per_layer, scalars = (*STYLE_KEYS, *CONV_STYLE_KEYS), (*DIVERSITY_KEYS, *SPREAD_KEYS)
    values: dict[str, dict[str, list]] = {s: {k: [] for k in (*per_layer, *scalars)} for s in sets}
    layer_names: list[str] = []
    embed_dim = 0
    with torch.no_grad():
        for k in tqdm(range(nets), desc="diagnose", unit="net", disable=not progress):
            net = _random_convnet(dataset, seed, k).to(dev)
            embed_dim = net.embed_dim
            for c in range(dataset.num_classes):
                real = _real_statistics(net, dataset, real_idx[c], dev)
                for name, per_class in sets.items():
                    x = per_class[c].to(dev)
                    emb, maps = net.embed_and_maps(x)
                    conv_maps = net.feature_maps(x, tap="conv")
                    layer_names = [
                        f"block{i + 1} " + "x".join(str(d) for d in m.shape[1:])
                        for i, m in enumerate(maps)
                    ]
                    measured = {
                        **_style_gap(real, maps, conv_maps),
                        **_diversity(emb),
                        **_spread(real.emb, emb),
                    }
                    for key, v in measured.items():
                        values[name][key].append(v)
    report_sets: dict[str, dict[str, list[float] | float]] = {
        name: {
            **{key: torch.stack(v[key]).mean(0).tolist() for key in per_layer},
            **{key: _nanmean(v[key]) for key in scalars},
        }
        for name, v in values.items()
    }
    counts = {name: len(sets[name][0]) for name in sets}
    n_real = min(len(idx) for idx in real_idx)
    meta = {
        "dataset": dataset.name,
        "ipc": ipc,
        "method": syn.meta.get("method", "unknown"),
        "expansion_factor": syn.expansion_factor,
        "nets": nets,
        "batch": batch,
        "seed": seed,
        "model": "convnet (random init, instance norm)",
        "real_split": "train",
        "images_per_class": counts,
        "knn_k": {name: _knn_k(m) for name, m in counts.items()},
        "spread_rank": {name: _spread_rank(m, n_real, embed_dim) for name, m in counts.items()},
    }
    return DiagnoseReport(layer_names, report_sets, meta)


def _random_convnet(dataset: Dataset, seed: int, k: int) -> torch.nn.Module:
    """The k-th randomly initialised ConvNet (PyTorch's default init under a derived seed)."""
    import torch

    from .models import build_model
    from .runtime import seed_for

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed_for(seed, NET_STREAM, k))
        net = build_model("convnet", dataset.channels, dataset.num_classes, dataset.image_size)
    return net.requires_grad_(False)


def _by_class(images: torch.Tensor, labels: torch.Tensor, num_classes: int) -> list[torch.Tensor]:
    """The images of each class; every class must have at least one."""
    out = [images[labels == c] for c in range(num_classes)]
    missing = [c for c, x in enumerate(out) if len(x) == 0]
    if missing:
        raise ValueError(f"the set has no images of class(es) {missing}")
    return out


@dataclass(frozen=True)
class _RealStats:
    """What the measures need of one class's real batch through one network.

    Per layer: the act tap's batch-mean map (C x H x W) and Gram (C x C); the conv tap's
    batch means of the per-sample channel moments mu_nk and s_nk (C each) and its batch-mean
    Gram. ``emb``: every image's embedding (n_R x D), which the spread needs.
    """

    means: list[torch.Tensor]
    grams: list[torch.Tensor]
    conv_mu: list[torch.Tensor]
    conv_s: list[torch.Tensor]
    conv_grams: list[torch.Tensor]
    emb: torch.Tensor


def _real_statistics(
    net: torch.nn.Module, dataset: Dataset, idx: torch.Tensor, dev: torch.device
) -> _RealStats:
    """The real batch's statistics, accumulated over chunks of ``REAL_CHUNK`` images."""
    import torch

    from .losses import mean_gram, mean_map, persample_moments

    sums: dict[str, list[torch.Tensor]] = {}
    embs: list[torch.Tensor] = []
    for start in range(0, len(idx), REAL_CHUNK):
        part = idx[start : start + REAL_CHUNK]
        x = dataset.normalize(dataset.train.images.index_select(0, part)).to(dev)
        act = net.feature_maps(x)
        emb, conv = net.embed_and_maps(x, tap="conv")  # a second forward, for the conv tap
        embs.append(emb)
        moments = [persample_moments(m) for m in conv]  # (N x C, N x C) per layer
        chunk = {
            "means": [mean_map(m) for m in act],
            "grams": [mean_gram(m) for m in act],
            "conv_mu": [mu.mean(0) for mu, _ in moments],
            "conv_s": [s.mean(0) for _, s in moments],
            "conv_grams": [mean_gram(m) for m in conv],
        }
        w = len(part) / len(idx)  # chunk means weighted by their share of the batch
        for key, per_layer in chunk.items():
            weighted = [v * w for v in per_layer]
            old = sums.get(key)
            sums[key] = (
                weighted if old is None else [a + b for a, b in zip(old, weighted, strict=True)]
            )
    return _RealStats(**sums, emb=torch.cat(embs))


def _style_gap(
    real: _RealStats, syn_maps: list[torch.Tensor], syn_conv_maps: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Per layer (float64 CPU vectors), via ddm.losses: L_MM^l and L_CM^l at the act tap
    (paper form), the released relative per-sample L_MM^l and L_CM^l at the conv tap."""
    import torch

    from .losses import correlation_from_stats, moments_from_stats, persample_moments_from_stats

    def per_layer(term) -> torch.Tensor:
        return torch.stack([term(i) for i in range(len(syn_maps))]).double().cpu()

    return {
        "moments": per_layer(lambda i: moments_from_stats([real.means[i]], [syn_maps[i]])),
        "gram": per_layer(lambda i: correlation_from_stats([real.grams[i]], [syn_maps[i]])),
        "moments_conv": per_layer(
            lambda i: persample_moments_from_stats(
                [real.conv_mu[i]], [real.conv_s[i]], [syn_conv_maps[i]], relative=True
            )
        ),
        "gram_conv": per_layer(
            lambda i: correlation_from_stats([real.conv_grams[i]], [syn_conv_maps[i]])
        ),
    }


def _knn_k(m: int) -> int:
    """Neighbours for m images of a class: DDM's default, 0 (undefined) for one image."""
    from .losses import default_icd_k

    return default_icd_k(m)


def _spread_rank(m: int, n_real: int, embed_dim: int) -> int:
    """Principal directions for m images of a class: L_CD's r, capped at n_R - 1 and D."""
    from .losses import default_spread_rank

    return max(0, min(default_spread_rank(m), n_real - 1, embed_dim))


def _diversity(emb: torch.Tensor) -> dict[str, float]:
    """Mean pairwise distance and mean kNN KL of one class's embeddings (NaN if undefined)."""
    import torch

    from .losses import diversity_loss

    m = len(emb)
    if m < 2:
        return {"pairwise": math.nan, "knn_kl": math.nan}
    pairwise = float(torch.pdist(emb.double()).mean())
    return {"pairwise": pairwise, "knn_kl": float(-diversity_loss(emb, _knn_k(m)))}


def _spread(real_emb: torch.Tensor, emb: torch.Tensor) -> dict[str, float]:
    """Spread ratio mean_k b_k / a_k and L_CD of one class's embeddings against its real
    batch's, along the real batch's top principal directions (NaN if undefined)."""
    from .losses import default_spread_rank, spread_directions, spread_from_stats

    undefined = {"spread_ratio": math.nan, "spread_loss": math.nan}
    if len(emb) < 2:
        return undefined
    dirs, a = spread_directions(real_emb, default_spread_rank(len(emb)))  # D x r, r
    if dirs.shape[1] == 0:  # a real batch of one image (or of copies) has no directions
        return undefined
    b = ((emb - emb.mean(0)) @ dirs).std(0, correction=1)  # r
    return {
        "spread_ratio": float((b / a).double().mean()),
        "spread_loss": float(spread_from_stats(dirs, a, emb)),
    }


def _nanmean(values: list[float]) -> float:
    defined = [v for v in values if not math.isnan(v)]
    return sum(defined) / len(defined) if defined else math.nan


def _check_compatible(syn: SyntheticSet, dataset: Dataset) -> None:
    """The set must have the dataset's image shape, classes and normalisation."""
    shape = tuple(syn.images.shape[1:])
    want = (dataset.channels, dataset.image_size, dataset.image_size)
    if shape != want:
        raise ValueError(f"the set's images are {shape}, but {dataset.name} images are {want}")
    if len(syn.labels) and int(syn.labels.max()) >= dataset.num_classes:
        raise ValueError(f"the set has labels beyond {dataset.name}'s {dataset.num_classes}")
    for key, ours in (("mean", dataset.mean), ("std", dataset.std)):
        theirs = syn.meta.get(key)
        if theirs is None:
            continue
        if len(theirs) != len(ours) or any(
            abs(a - b) > 1e-4 for a, b in zip(theirs, ours, strict=True)
        ):
            raise ValueError(
                f"the set was normalised with another {key} ({theirs}) than {dataset.name} "
                f"({list(ours)}); its style gap would be meaningless"
            )


# --- the figure -----------------------------------------------------------------------------

_COLORS = {CONDENSED: "#d1495b", RANDOM: "#00798c"}


def plot(report: DiagnoseReport, path: str | Path) -> None:
    """Write the report as one PNG, one row per DDM form: style gap per layer (left) and
    diversity (right); top the paper form (act tap, pairwise, kNN KL), bottom, where measured,
    the released form (conv tap, spread ratio, L_CD)."""
    from io import BytesIO

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .io import atomic_write_bytes

    released = report._has(*CONV_STYLE_KEYS, *SPREAD_KEYS)
    rows = 2 if released else 1
    fig = Figure(figsize=(12.5, 4.4 * rows + 0.4), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(rows, 3, gridspec_kw={"width_ratios": [3.2, 1, 1]}, squeeze=False)

    _style_panel(axes[0, 0], report, STYLE_KEYS, "paper form: after the ReLU (act tap)")
    _scalar_panel(axes[0, 1], report, "pairwise", "Mean pairwise distance\n(higher = more diverse)")
    _scalar_panel(
        axes[0, 2],
        report,
        "knn_kl",
        f"kNN KL, k = {_k_label(report, 'knn_k')}\n(higher = more diverse)",
    )
    if released:
        _style_panel(
            axes[1, 0], report, CONV_STYLE_KEYS, "released form: before the norm (conv tap)"
        )
        _scalar_panel(
            axes[1, 1],
            report,
            "spread_ratio",
            f"Spread / real spread along the top {_k_label(report, 'spread_rank')}\n"
            "principal directions (1 = real, < 1 collapsed)",
            reference=1.0,
        )
        _scalar_panel(
            axes[1, 2], report, "spread_loss", "L_CD (spread mismatch)\n(lower = closer to real)"
        )

    m = report.meta
    fig.suptitle(
        f"{m.get('dataset')} | {m.get('method')} | ipc {m.get('ipc')}: condensed set vs a random "
        f"real subset of the same size ({m.get('nets')} random ConvNets, "
        f"{m.get('batch')} real images per class)"
    )
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _style_panel(ax: Any, report: DiagnoseReport, keys: tuple[str, str], where: str) -> None:
    """Style gap: one group per (statistic, layer), one bar per set; log scale if wide."""
    import numpy as np

    names = list(report.sets)
    short = [layer.split()[0] for layer in report.layers]
    groups = [f"moments\n{s}" for s in short] + [f"Gram\n{s}" for s in short]
    x = np.arange(len(groups))
    width = 0.8 / len(names)
    values = []
    for i, name in enumerate(names):
        v = [*report.sets[name][keys[0]], *report.sets[name][keys[1]]]
        values += v
        ax.bar(
            x + (i - (len(names) - 1) / 2) * width,
            v,
            width,
            label=_legend(report, name),
            color=_COLORS.get(name),
        )
    positive = [v for v in values if v > 0]
    log = bool(positive) and len(positive) == len(values) and max(positive) / min(positive) > 20
    if log:
        ax.set_yscale("log")
    ax.axvline(len(short) - 0.5, color="0.7", lw=0.8)
    ax.set_xticks(x, groups)
    ax.set_ylabel("distance to real batch, mean over classes" + (" (log)" if log else ""))
    ax.set_title(f"Style gap to real data, {where}\n(lower = closer to real style)", fontsize=10)
    ax.legend(frameon=False, fontsize=9)


def _scalar_panel(
    ax: Any, report: DiagnoseReport, key: str, title: str, reference: float | None = None
) -> None:
    """One bar per set for a per-set number; "n/a" where it is undefined."""
    names = list(report.sets)
    vals = [float(report.sets[n][key]) for n in names]
    shown = [0 if math.isnan(v) else v for v in vals]
    ax.bar(range(len(names)), shown, 0.6, color=[_COLORS.get(n) for n in names])
    for i, v in enumerate(vals):
        label = "n/a\n(1 image\nper class)" if math.isnan(v) else f"{v:.3g}"
        ax.annotate(
            label,
            (i, shown[i]),
            ha="center",
            va="bottom",
            xytext=(0, 2),
            textcoords="offset points",
            fontsize=8,
        )
    if reference is not None:
        ax.axhline(reference, color="0.3", ls="--", lw=1)
        ax.annotate(
            "real class",
            (1, reference),
            xycoords=("axes fraction", "data"),
            ha="right",
            va="bottom",
            fontsize=8,
            color="0.3",
        )
        ax.set_ylim(0, 1.25 * max(reference, *shown))
    elif not any(shown):  # all undefined (or zero): keep the axis at 0..1, not around 0
        ax.set_ylim(0, 1)
    else:
        ax.margins(y=0.2)
    ax.set_xticks(range(len(names)), [_legend(report, n).replace(" (", "\n(") for n in names])
    ax.set_title(title, fontsize=10)


def _legend(report: DiagnoseReport, name: str) -> str:
    return f"{name} ({report.meta.get('method')})" if name == CONDENSED else name


def _k_label(report: DiagnoseReport, key: str) -> str:
    ks = sorted(set(report.meta.get(key, {}).values()))
    return "/".join(str(k) for k in ks) if ks else "?"


# --- the command's settings and reading ---------------------------------------------------------


@dataclass(frozen=True)
class DiagnoseConfig:
    """What ``ddm diagnose`` measures with (``diagnose``'s keywords)."""

    nets: int = setting(5, help="random ConvNets")
    batch: int = setting(256, help="real images per class")
    seed: int = setting(0, help="seed of the networks and the random subset")
    device: str = shared(CondenseConfig, "device")


def summary(report: DiagnoseReport) -> str:
    """Plain-words reading: style gaps as multiples of the random subset's, the spread, notes."""
    cond, rand = report.sets[CONDENSED], report.sets[RANDOM]
    lines = []
    for key, label in (
        ("moments", "moments"),
        ("gram", "Gram"),
        ("moments_conv", "conv-tap moments (released, relative)"),
        ("gram_conv", "conv-tap Gram"),
    ):
        if key not in cond or key not in rand:
            continue
        ratios = [a / b for a, b in zip(cond[key], rand[key], strict=True) if b > 0]
        if ratios:
            lines.append(
                f"{label} gap, condensed / random real per layer: "
                + ", ".join(f"{r:.2g}x" for r in ratios)
            )
    defined = report._has("spread_ratio") and any(
        not math.isnan(float(values["spread_ratio"])) for values in report.sets.values()
    )
    if defined:  # with one image per class, the note below says why there is none
        rank = _k_label(report, "spread_rank")
        lines.append(
            f"spread (synthetic / real std along the real class's top {rank} principal "
            "directions, 1 = the real spread):"
        )
        for name, values in report.sets.items():
            ratio = float(values["spread_ratio"])
            lines.append(f"  {name}: {_spread_reading(ratio)}")
        c, r = float(cond["spread_ratio"]), float(rand["spread_ratio"])
        if r > 0 and not math.isnan(c):
            lines.append(
                f"  condensed / random real: {c / r:.2f}x (a real sample of this size is the "
                "yardstick: the directions are fitted to the real batch)"
            )
    if any(math.isnan(float(s["knn_kl"])) for s in report.sets.values()):
        lines.append(
            "pairwise distance, kNN KL and spread are undefined with one image per class "
            "(no pairs, no neighbours): n/a"
        )
    return "\n".join(lines)


_summary = summary  # the earlier name


def _spread_reading(ratio: float) -> str:
    """The spread ratio in words (thresholds: 0.5, 0.8, 1.25)."""
    if math.isnan(ratio):
        return "n/a"
    if ratio < 0.5:
        words = "collapsed: its images vary far less than the real class"
    elif ratio < 0.8:
        words = "narrower than the real class"
    elif ratio <= 1.25:
        words = "spreads about like the real class"
    else:
        words = "wider than the real class"
    return f"{ratio:.2f}, {words}"
