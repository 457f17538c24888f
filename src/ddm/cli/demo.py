"""``ddm demo``: DDM beside DM and a random subset on the embedded digits dataset."""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from pathlib import Path

from .common import _table, _write_set

# `ddm demo`'s budget (digits, ipc 10): DDM's gain over DM shows at it (paper form, 3 models
# per set: +3.84, +0.74 and +2.14 points in condensation seeds 0, 1 and 2), and condensing
# both sets and training the 9 models took 220 s of CPU time on one thread
# (docs/guide/first-runs.md: the output and the times).
DEMO_ITERATIONS = 500
DEMO_BATCH_REAL = 128
DEMO_EPOCHS = 300
DEMO_RUNS = 3


def paired_gain(better: Sequence[float], worse: Sequence[float]) -> str:
    """``'+1.23 +- 0.45'``: mean and std of the per-model differences (model i of one set
    against model i of the other: the same seed, initialisation and augmentation draws)."""
    import numpy as np

    diffs = np.asarray(better, dtype=float) - np.asarray(worse, dtype=float)
    return f"{diffs.mean():+.2f} +- {diffs.std():.2f}"


def cmd_demo(args: argparse.Namespace) -> int:
    """The flagship on the embedded digits dataset: DDM beside DM and a random subset."""
    from ..baselines import random_subset
    from ..condense import condense, prepare_run_folder
    from ..config import CondenseConfig, EvalConfig
    from ..data import load_dataset
    from ..evaluate import evaluate_folder
    from ..runtime import Runtime

    out = Path(args.out)
    dataset = load_dataset("digits")
    configs = {
        method: CondenseConfig(
            dataset="digits",
            ipc=args.ipc,
            method=method,
            form=args.form if method == "ddm" else None,
            iterations=args.iterations,
            batch_real=args.batch_real,
            seed=args.seed,
            device=args.device,
            precision=args.precision,
        )
        for method in ("ddm", "dm")
    }
    form = configs["ddm"].resolved().form
    ecfg = EvalConfig(
        epochs=args.epochs, runs=args.runs, device=args.device, precision=args.precision
    )
    runtime = Runtime.resolve(args.device, args.precision)  # condensation and evaluation
    print(
        f"condensing digits ({dataset.num_classes} classes, {len(dataset.train)} train "
        f"images) into {args.ipc} images per class with DDM ({form} form) and with DM, "
        f"{args.iterations} iterations each, from the same real images"
    )
    sets = {}
    for method, cfg in configs.items():
        sets[method] = condense(
            cfg,
            out / method,
            dataset=dataset,
            overwrite=True,
            progress=not args.quiet,
            runtime=runtime,
        )
    rand_dir = out / "random"
    prepare_run_folder(rand_dir, resume=False, overwrite=True)
    sets["random"] = random_subset(dataset, args.ipc, seed=args.seed)
    _write_set(
        rand_dir,
        sets["random"],
        {"method": "random", "dataset": "digits", "ipc": args.ipc, "seed": args.seed},
    )
    names = {"ddm": f"DDM ({form} form)", "dm": "DM", "random": "random subset"}
    results = {
        key: evaluate_folder(
            out / key, sets[key], dataset, ecfg, progress=not args.quiet, runtime=runtime
        )
        for key in names
    }
    print(
        f"\ndigits, ipc {args.ipc}, ConvNet, {args.epochs} epochs x {args.runs} runs, "
        f"{sets['ddm'].meta['precision']} (test accuracy, mean +- std):"
    )
    print(_table([(names[k], f"{results[k]} %") for k in names], ("set", "accuracy")))
    ddm = results["ddm"].accuracies
    print(
        f"\nDDM - DM: {paired_gain(ddm, results['dm'].accuracies)} points; "
        f"DDM - random: {paired_gain(ddm, results['random'].accuracies)} points "
        f"(mean +- std over the {args.runs} models, paired by seed)"
    )
    print(f"runs and grids in {out}/ (grid.png in each folder)")
    return 0
