"""DD-Ranking's scores of a condensed set: HLR, IOR, LRS (label-robust) and ARS
(augmentation-robust), next to its accuracies (``ddm evaluate --scores``).

The formulas are those of DD-Ranking 0.2.0's code (``ddranking/metrics/soft_label.py``,
``hard_label.py`` and ``aug_robust.py``), per evaluation run, then mean and population std
over the runs:

- HLR = acc(full real data, hard labels) - acc(set, hard labels)
- IOR = acc(set, labels) - acc(random real subset of the set's size, labels)
- alpha = w IOR - (1 - w) HLR, w = 0.5;          LRS = (e^alpha - e^-1) / (e - e^-1)
- beta = g (syn_aug - rdm_aug) + (1 - g) (syn_noaug - rdm_noaug), g = 0.5;   ARS likewise

"labels" is the evaluation's label mode (hard, or a teacher's soft labels), "aug" the recipe's
augmentation and "noaug" none at all. DD-Ranking's code puts accuracies in **percent** into
the exponent (``hlr = 1.00 * (full - syn)`` of percentages), so LRS and ARS there are not in
[0, 1]: alpha = -10 (10 points) gives LRS = -0.156. Its README's formula reads naturally with
accuracies as fractions, where LRS lies in [0, 1] for |alpha| <= 1. Both are recorded:
``lrs``/``ars`` as the code computes them, ``lrs_fraction``/``ars_fraction`` with fractions.

The full-data accuracy is the teacher's test accuracy (``ddm teacher``) or a given number;
the random subset is ``ddm.baselines.random_subset`` with the evaluation seed, trained under
the same recipe, labels and seeds as the set, kept as a run folder inside the set's folder
(``random-ipc<N>-seed<S>/``) so that its models are recorded and resumed like the set's.
"""

from __future__ import annotations

import dataclasses
import math
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from . import distributed as dist
from .config import EvalConfig
from .data import Dataset
from .io import META_FILE, SyntheticSet, atomic_write_json, read_json, save_synthetic
from .runtime import Runtime

__all__ = [
    "normalise",
    "label_robust_score",
    "augmentation_robust_score",
    "ScoreInputs",
    "compute_scores",
    "score_set",
]

SCORES_KEY = "scores"  # metrics.json: one entry per protocol


def normalise(x: float) -> float:
    """DD-Ranking's map (e^x - e^-1) / (e - e^-1): -1 -> 0, 1 -> 1."""
    return (math.exp(x) - math.exp(-1)) / (math.exp(1) - math.exp(-1))


def label_robust_score(
    full_hard: float,
    syn_hard: float,
    syn_labels: float,
    rdm_labels: float,
    w: float = 0.5,
    scale: float = 1.0,
) -> dict[str, float]:
    """HLR, IOR, alpha and LRS of one run; accuracies in percent, multiplied by ``scale``
    before the formula (1: DD-Ranking's code, 0.01: fractions)."""
    hlr = scale * (full_hard - syn_hard)
    ior = scale * (syn_labels - rdm_labels)
    alpha = w * ior - (1 - w) * hlr
    return {"hlr": hlr, "ior": ior, "alpha": alpha, "lrs": normalise(alpha)}


def augmentation_robust_score(
    syn_aug: float,
    rdm_aug: float,
    syn_noaug: float,
    rdm_noaug: float,
    g: float = 0.5,
    scale: float = 1.0,
) -> dict[str, float]:
    """The two differences, beta and ARS of one run (accuracies in percent, see above)."""
    with_aug = scale * (syn_aug - rdm_aug)
    without_aug = scale * (syn_noaug - rdm_noaug)
    beta = g * with_aug + (1 - g) * without_aug
    return {"with_aug": with_aug, "without_aug": without_aug, "beta": beta, "ars": normalise(beta)}


@dataclasses.dataclass(frozen=True)
class ScoreInputs:
    """Per-run test accuracies (percent) of every training the scores need."""

    full_hard: float
    syn_hard: list[float]
    syn_labels: list[float]
    rdm_labels: list[float]
    syn_noaug: list[float]
    rdm_noaug: list[float]


def _stats(values: list[float]) -> dict[str, float]:
    return {"mean": float(np.mean(values)), "std": float(np.std(values))}


def compute_scores(x: ScoreInputs, w: float = 0.5, g: float = 0.5) -> dict[str, Any]:
    """Mean and std over runs of HLR, IOR, LRS, ARS (DD-Ranking's units) and the fraction
    forms of LRS and ARS."""
    out: dict[str, list[float]] = {}
    runs = zip(x.syn_hard, x.syn_labels, x.rdm_labels, x.syn_noaug, x.rdm_noaug, strict=True)
    for sh, sl, rl, sn, rn in runs:
        lrs = label_robust_score(x.full_hard, sh, sl, rl, w)
        ars = augmentation_robust_score(sl, rl, sn, rn, g)
        frac_l = label_robust_score(x.full_hard, sh, sl, rl, w, scale=0.01)
        frac_a = augmentation_robust_score(sl, rl, sn, rn, g, scale=0.01)
        for key, value in (
            ("hlr", lrs["hlr"]),
            ("ior", lrs["ior"]),
            ("lrs", lrs["lrs"]),
            ("ars", ars["ars"]),
            ("lrs_fraction", frac_l["lrs"]),
            ("ars_fraction", frac_a["ars"]),
        ):
            out.setdefault(key, []).append(value)
    return {k: {**_stats(v), "per_run": [round(a, 6) for a in v]} for k, v in out.items()}


def _random_baseline(
    syn: SyntheticSet, dataset: Dataset, cfg: EvalConfig, folder: Path
) -> tuple[SyntheticSet, Path]:
    """The random real subset of the set's size (per class), as a run folder in ``folder``."""
    from .baselines import random_subset
    from .teacher import load_teacher

    counts = torch.bincount(syn.labels, minlength=dataset.num_classes)
    ipc = int(counts.max())
    rand = random_subset(dataset.holdout(cfg.holdout), ipc, seed=cfg.seed)
    if cfg.labels == "soft" and cfg.soft_label_mode == "S":
        if cfg.teacher is None:  # DD-Ranking labels the random images with its teacher
            raise ValueError(
                "--scores with --soft-label-mode S labels the random subset with a teacher: "
                "give --teacher DIR"
            )
        teacher = load_teacher(cfg.teacher, dataset, "cpu")
        soft = torch.cat([teacher.logits(b) for b in rand.images.split(256)])
        rand = dataclasses.replace(rand, soft_labels=soft)
    out = folder / f"random-ipc{ipc}-seed{cfg.seed}"
    dist.on_main(_keep_set, out, rand)
    return rand, out


def _keep_set(out: Path, syn: SyntheticSet) -> None:
    out.mkdir(parents=True, exist_ok=True)
    if not (out / META_FILE).exists():
        save_synthetic(out, syn)


def _record(path: Path, cfg: EvalConfig, entry: dict[str, Any]) -> None:
    """Add (or replace: same protocol) a scores entry in the metrics file at ``path``."""
    metrics = read_json(path) if path.exists() else {"evaluations": []}
    want = {k: v for k, v in cfg.to_dict().items() if k != "device"}
    kept = [
        e
        for e in metrics.get(SCORES_KEY, [])
        if {k: v for k, v in e.get("protocol", {}).items() if k != "device"} != want
    ]
    metrics[SCORES_KEY] = [*kept, entry]
    atomic_write_json(path, metrics)


def score_set(
    folder: str | os.PathLike,
    syn: SyntheticSet,
    dataset: Dataset,
    cfg: EvalConfig,
    full_accuracy: float | None = None,
    progress: bool = True,
    w: float = 0.5,
    g: float = 0.5,
    *,
    runtime: Runtime | None = None,
) -> dict[str, Any]:
    """Train everything the scores need (reusing models already in the metrics files),
    record the scores in ``folder``'s metrics.json and return them with the accuracies.
    ``runtime``: device and precision of the training (default: resolved from ``cfg``'s)."""
    from .evaluate import METRICS_FILE, evaluate_folder
    from .teacher import load_teacher

    if runtime is None:
        runtime = Runtime.resolve(cfg.device, cfg.precision)
    folder = Path(folder)
    if full_accuracy is None:
        if cfg.teacher is None:
            raise ValueError(
                "--scores needs the full-real-data accuracy for HLR: give a --teacher (its "
                "test accuracy) or --full-accuracy PCT"
            )
        full_accuracy = load_teacher(cfg.teacher, dataset, "cpu").accuracy
    hard = dataclasses.replace(cfg, labels="hard")
    noaug = dataclasses.replace(cfg, dsa=False)
    rand, rand_dir = _random_baseline(syn, dataset, cfg, folder)
    how = {"progress": progress, "runtime": runtime}
    runs = {
        "syn_hard": evaluate_folder(folder, syn, dataset, hard, **how),
        "syn_labels": evaluate_folder(folder, syn, dataset, cfg, **how),
        "rdm_labels": evaluate_folder(rand_dir, rand, dataset, cfg, **how),
        "syn_noaug": evaluate_folder(folder, syn, dataset, noaug, **how),
        "rdm_noaug": evaluate_folder(rand_dir, rand, dataset, noaug, **how),
    }
    inputs = ScoreInputs(full_accuracy, *(runs[k].accuracies for k in list(runs)))
    scores = compute_scores(inputs, w, g)
    entry = {
        "protocol": cfg.to_dict(),
        "w": w,
        "g": g,
        "full_accuracy": full_accuracy,
        "accuracies": {
            k: {"mean": round(r.mean, 4), "std": round(r.std, 4), "per_run": r.accuracies}
            for k, r in runs.items()
        },
        "random_baseline": rand_dir.name,
        "scores": scores,
        "units": "lrs, ars: DD-Ranking 0.2.0's code (accuracies in percent in the exponent); "
        "*_fraction: accuracies as fractions",
    }
    dist.on_main(_record, folder / METRICS_FILE, cfg, entry)
    return entry


def format_scores(entry: dict[str, Any]) -> str:
    """The accuracies and scores of a ``score_set`` entry as a few aligned lines."""
    acc, sc = entry["accuracies"], entry["scores"]
    labels = entry["protocol"].get("labels", "hard")
    names = {
        "syn_hard": "set, hard labels",
        "syn_labels": f"set, {labels} labels",
        "rdm_labels": f"random subset, {labels} labels",
        "syn_noaug": f"set, {labels} labels, no augmentation",
        "rdm_noaug": f"random subset, {labels} labels, no augmentation",
    }
    width = max(map(len, names.values()))
    lines = [f"  {'full real data (hard)':<{width}}  {entry['full_accuracy']:6.2f} %"]
    lines += [
        f"  {names[k]:<{width}}  {v['mean']:6.2f} +- {v['std']:.2f} %" for k, v in acc.items()
    ]
    spread = [f"{k.upper()} {sc[k]['mean']:.3f} +- {sc[k]['std']:.3f}" for k in ("hlr", "ior")]
    lines.append(
        "  "
        + "  ".join(spread)
        + f"  LRS {sc['lrs']['mean']:.4f} (fractions: {sc['lrs_fraction']['mean']:.4f})"
        + f"  ARS {sc['ars']['mean']:.4f} (fractions: {sc['ars_fraction']['mean']:.4f})"
    )
    return "\n".join(lines)
