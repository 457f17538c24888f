"""``ddm diagnose RUN``: DDM's own analysis of a condensed set, as numbers and one figure.

DDM's argument (METHOD.md section 4) is that DM's mean-embedding matching leaves two defects
that accuracy alone does not show: the synthetic images keep a **style gap** to the real data
(their feature maps have other per-channel moments and channel correlations), and the images
of a class **lack diversity** (they drift towards similar embeddings). This module measures
both for a condensed set and, as the yardstick, for a random real subset of the same size
(``random_subset(dataset, ipc, seed)``: what "natural" images of that budget look like).

Style gap, per layer l of ``ConvNet.feature_maps`` (after the activation, before pooling):

- ``moments``: L_MM^l of METHOD.md 4 between a real batch of the class (``batch`` images)
  and the set's images of the class: 0.5 * (mean_k (d mu_k)^2 + mean_k (d sigma_k)^2) of
  the per-channel spatial mean and std of the batch-mean map.
- ``gram``: L_CM^l, the summed squared difference of the batch-mean Gram matrices.

Intra-class diversity, on the final embedding ``ConvNet.embed``:

- ``pairwise``: mean Euclidean distance over all pairs of the set's images of a class.
- ``knn_kl``: the positive mean kNN KL of L_ICD, ``-diversity_loss(emb, k)`` with
  ``k = default_icd_k(m)`` for the m images of the class; 0 when every image sits on its
  neighbours. With one image per class there are no neighbours (nor pairs): NaN.

Lower style numbers mean closer to the real style; higher diversity numbers mean more varied
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

import argparse
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch

    from .data import Dataset
    from .io import SyntheticSet

__all__ = ["DiagnoseReport", "diagnose", "plot", "add_parser"]

NET_STREAM = 30  # seed_for(seed, NET_STREAM, k): initialisation of network k
REAL_STREAM = 31  # generator(seed, REAL_STREAM, c): the real batch of class c
REAL_CHUNK = 128  # real images per no-grad forward
CONDENSED, RANDOM = "condensed", "random real"
STYLE_KEYS = ("moments", "gram")
DIVERSITY_KEYS = ("pairwise", "knn_kl")


# --- the report ---------------------------------------------------------------------------


@dataclass(frozen=True)
class DiagnoseReport:
    """Style gap per layer and intra-class diversity of each measured set.

    ``sets[name]`` holds ``moments`` and ``gram`` (lists, one value per layer), ``pairwise``
    and ``knn_kl`` (floats, NaN when undefined). ``meta`` records what was measured.
    """

    layers: list[str]  # e.g. ["block1 128x32x32", "block2 128x16x16", "block3 128x8x8"]
    sets: dict[str, dict[str, list[float] | float]]
    meta: dict[str, Any] = field(default_factory=dict)

    def table(self) -> str:
        """Markdown table: one row per set, style columns per layer, then diversity."""
        short = [name.split()[0] for name in self.layers]
        header = [
            "set",
            *(f"moments {s}" for s in short),
            *(f"Gram {s}" for s in short),
            "pairwise",
            "kNN KL",
        ]
        rows = []
        for name, values in self.sets.items():
            cells = [_fmt(v) for key in STYLE_KEYS for v in values[key]]
            cells += [_fmt(values[key]) for key in DIVERSITY_KEYS]
            rows.append([name, *cells])
        widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
        lines = [
            "| " + " | ".join(c.ljust(w) for c, w in zip(header, widths, strict=True)) + " |",
            "|" + "|".join("-" * (w + 2) for w in widths) + "|",
        ]
        for name, *cells in rows:  # names left-aligned, numbers right-aligned
            padded = [name.ljust(widths[0])]
            padded += [c.rjust(w) for c, w in zip(cells, widths[1:], strict=True)]
            lines.append("| " + " | ".join(padded) + " |")
        return "\n".join(lines)

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
) -> DiagnoseReport:
    """Style gap to the real data and intra-class diversity of ``syn`` and of a random subset.

    ``nets`` random ConvNets, ``batch`` real train images per class (all of a smaller class).
    """
    import torch
    from tqdm.auto import tqdm

    from .baselines import random_subset
    from .runtime import generator, resolve_device

    if nets < 1 or batch < 1:
        raise ValueError(f"nets and batch must be >= 1, got nets={nets}, batch={batch}")
    _check_compatible(syn, dataset)
    dev = resolve_device(device)
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
    values: dict[str, dict[str, list]] = {
        s: {k: [] for k in (*STYLE_KEYS, *DIVERSITY_KEYS)} for s in sets
    }
    layer_names: list[str] = []
    with torch.no_grad():
        for k in tqdm(range(nets), desc="diagnose", unit="net", disable=not progress):
            net = _random_convnet(dataset, seed, k).to(dev)
            for c in range(dataset.num_classes):
                real_means, real_grams = _real_statistics(net, dataset, real_idx[c], dev)
                for name, per_class in sets.items():
                    emb, maps = net.embed_and_maps(per_class[c].to(dev))
                    layer_names = [
                        f"block{i + 1} " + "x".join(str(d) for d in m.shape[1:])
                        for i, m in enumerate(maps)
                    ]
                    for key, v in _style_gap(real_means, real_grams, maps).items():
                        values[name][key].append(v)
                    for key, v in _diversity(emb).items():
                        values[name][key].append(v)
    report_sets: dict[str, dict[str, list[float] | float]] = {
        name: {
            "moments": torch.stack(v["moments"]).mean(0).tolist(),
            "gram": torch.stack(v["gram"]).mean(0).tolist(),
            "pairwise": _nanmean(v["pairwise"]),
            "knn_kl": _nanmean(v["knn_kl"]),
        }
        for name, v in values.items()
    }
    counts = {name: len(sets[name][0]) for name in sets}
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


def _real_statistics(
    net: torch.nn.Module, dataset: Dataset, idx: torch.Tensor, dev: torch.device
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per layer, the batch-mean map (C x H x W) and batch-mean Gram (C x C), in chunks."""
    from .losses import mean_gram, mean_map

    means: list[torch.Tensor] = []
    grams: list[torch.Tensor] = []
    for start in range(0, len(idx), REAL_CHUNK):
        part = idx[start : start + REAL_CHUNK]
        x = dataset.normalize(dataset.train.images.index_select(0, part)).to(dev)
        w = len(part) / len(idx)  # chunk means weighted by their share of the batch
        for layer, maps in enumerate(net.feature_maps(x)):
            m, g = mean_map(maps) * w, mean_gram(maps) * w
            if start == 0:
                means.append(m)
                grams.append(g)
            else:
                means[layer] += m
                grams[layer] += g
    return means, grams


def _style_gap(
    real_means: list[torch.Tensor], real_grams: list[torch.Tensor], syn_maps: list[torch.Tensor]
) -> dict[str, torch.Tensor]:
    """L_MM^l and L_CM^l for every layer (float64 CPU vectors), via ddm.losses per layer."""
    import torch

    from .losses import correlation_from_stats, moments_from_stats

    layers = range(len(syn_maps))
    mm = [moments_from_stats([real_means[i]], [syn_maps[i]]) for i in layers]
    cm = [correlation_from_stats([real_grams[i]], [syn_maps[i]]) for i in layers]
    return {
        "moments": torch.stack(mm).double().cpu(),
        "gram": torch.stack(cm).double().cpu(),
    }


def _knn_k(m: int) -> int:
    """Neighbours for m images of a class: DDM's default, 0 (undefined) for one image."""
    from .losses import default_icd_k

    return default_icd_k(m)


def _diversity(emb: torch.Tensor) -> dict[str, float]:
    """Mean pairwise distance and mean kNN KL of one class's embeddings (NaN if undefined)."""
    import torch

    from .losses import diversity_loss

    m = len(emb)
    if m < 2:
        return {"pairwise": math.nan, "knn_kl": math.nan}
    pairwise = float(torch.pdist(emb.double()).mean())
    return {"pairwise": pairwise, "knn_kl": float(-diversity_loss(emb, _knn_k(m)))}


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
    """Write the report as one PNG: style gap per layer (left), diversity (right)."""
    from io import BytesIO

    import numpy as np
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from .io import atomic_write_bytes

    names = list(report.sets)
    short = [layer.split()[0] for layer in report.layers]
    fig = Figure(figsize=(12, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, 3, gridspec_kw={"width_ratios": [3.2, 1, 1]})

    # left: style gap, one group per (statistic, layer), one bar per set
    ax = axes[0]
    groups = [f"moments\n{s}" for s in short] + [f"Gram\n{s}" for s in short]
    x = np.arange(len(groups))
    width = 0.8 / len(names)
    values = []
    for i, name in enumerate(names):
        v = [*report.sets[name]["moments"], *report.sets[name]["gram"]]
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
    ax.set_title("Style gap to real data (lower = closer to real style)")
    ax.legend(frameon=False)

    # right: intra-class diversity, one small axis per measure (their scales differ)
    titles = {
        "pairwise": "Mean pairwise distance\n(higher = more diverse)",
        "knn_kl": f"kNN KL, k = {_k_label(report)}\n(higher = more diverse)",
    }
    for ax, key in zip(axes[1:], DIVERSITY_KEYS, strict=True):
        vals = [float(report.sets[n][key]) for n in names]
        ax.bar(
            range(len(names)),
            [0 if math.isnan(v) else v for v in vals],
            0.6,
            color=[_COLORS.get(n) for n in names],
        )
        for i, v in enumerate(vals):
            label = "n/a\n(1 image\nper class)" if math.isnan(v) else f"{v:.3g}"
            ax.annotate(
                label,
                (i, 0 if math.isnan(v) else v),
                ha="center",
                va="bottom",
                xytext=(0, 2),
                textcoords="offset points",
                fontsize=8,
            )
        ax.set_xticks(range(len(names)), [_legend(report, n).replace(" (", "\n(") for n in names])
        ax.set_title(titles[key], fontsize=10)
        ax.margins(y=0.2)

    m = report.meta
    fig.suptitle(
        f"{m.get('dataset')} | {m.get('method')} | ipc {m.get('ipc')}: condensed set vs a random "
        f"real subset of the same size ({m.get('nets')} random ConvNets, "
        f"{m.get('batch')} real images per class)"
    )
    buf = BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    atomic_write_bytes(path, buf.getvalue())


def _legend(report: DiagnoseReport, name: str) -> str:
    return f"{name} ({report.meta.get('method')})" if name == CONDENSED else name


def _k_label(report: DiagnoseReport) -> str:
    ks = sorted(set(report.meta.get("knn_k", {}).values()))
    return "/".join(str(k) for k in ks) if ks else "?"


# --- the command ----------------------------------------------------------------------------


def add_parser(sub: Any) -> None:
    """Register ``diagnose RUN`` on an argparse sub-parsers object."""
    p = sub.add_parser(
        "diagnose",
        help="style gap and intra-class diversity of a condensed set vs a random subset",
        description=(
            "Measure, as DDM's paper does, how far a condensed set's feature-map style is "
            "from the real data and how diverse its classes are, next to a random real "
            "subset of the same size. Prints a table and writes RUN/diagnose.json and "
            "RUN/diagnose.png."
        ),
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the run's)")
    p.add_argument("--nets", type=int, default=5, help="random ConvNets (%(default)s)")
    p.add_argument("--batch", type=int, default=256, help="real images per class (%(default)s)")
    p.add_argument("--seed", type=int, default=0, help="(%(default)s)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda[:N] (%(default)s)")
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Load the run and its dataset, measure, print the table, write diagnose.json/.png."""
    from .data import load_dataset
    from .io import atomic_write_json, load_synthetic, read_json
    from .runtime import tune_allocator

    tune_allocator()
    folder = Path(args.run)
    syn = load_synthetic(folder)
    root = args.data_root
    if root is None and (folder / "config.json").exists():
        root = read_json(folder / "config.json").get("data_root")
    dataset = load_dataset(syn.meta["dataset"], root, syn.meta.get("image_size"))
    report = diagnose(
        syn,
        dataset,
        nets=args.nets,
        batch=args.batch,
        seed=args.seed,
        device=args.device,
        progress=not getattr(args, "quiet", False),
    )
    m = report.meta
    print(
        f"{folder}: {m['method']} on {m['dataset']}, ipc {m['ipc']} "
        f"({m['images_per_class'][CONDENSED]} images per class measured), "
        f"{m['nets']} random ConvNets, {m['batch']} real images per class"
    )
    print(f"layers: {', '.join(report.layers)}")
    print(report.table())
    print(_summary(report))
    atomic_write_json(folder / "diagnose.json", report.to_dict())
    plot(report, folder / "diagnose.png")
    print(f"wrote {folder / 'diagnose.json'} and {folder / 'diagnose.png'}")
    return 0


def _summary(report: DiagnoseReport) -> str:
    """Plain-words reading: style gap as a multiple of the random subset's, and notes."""
    cond, rand = report.sets[CONDENSED], report.sets[RANDOM]
    lines = []
    for key, label in (("moments", "moments"), ("gram", "Gram")):
        ratios = [a / b for a, b in zip(cond[key], rand[key], strict=True) if b > 0]
        if ratios:
            lines.append(
                f"{label} gap, condensed / random real per layer: "
                + ", ".join(f"{r:.2g}x" for r in ratios)
            )
    if any(math.isnan(float(s["knn_kl"])) for s in report.sets.values()):
        lines.append(
            "pairwise distance and kNN KL are undefined with one image per class "
            "(no pairs, no neighbours): n/a"
        )
    return "\n".join(lines)
