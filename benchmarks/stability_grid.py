"""Short condensations over resolution x ipc x DDM form x base: is the loss finite and falling?

Each cell runs ``--iterations`` iterations of ``ddm condense --method ddm`` with the form's and
the base's default settings (only ``batch_real`` and the precision are set here) and records
the matching loss of every iteration (the weighted terms without IDM's cross-entropy, whose
weight grows with the queue models' accuracy), whether it stayed finite, and whether the set
improved: the matching objective on a few fixed random networks and real batches (the probe)
is lower at the end than at the start. (Each iteration's training loss is measured on a new
network, so over a few iterations it is noisy; its first- and last-quarter means are kept.)
The result is JSON (and a Markdown table); docs/guide/stability.md shows it.

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/stability_grid.py \\
        --data-root DATA --out benchmarks/results/stability_grid.json

Cells are written as they finish, so an interrupted grid resumes (``--resume``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import torch

from ddm.augment import sample_params
from ddm.bases import new_net
from ddm.condense import NonFiniteLossError, Run
from ddm.config import CondenseConfig
from ddm.data import load_dataset
from ddm.io import atomic_write_json
from ddm.objective import objective, real_statistics
from ddm.runtime import generator, seed_for

DATASETS = ("digits", "mnist", "cifar10", "tiny-imagenet")
SIZES = {"digits": "8x8", "mnist": "28x28", "cifar10": "32x32", "tiny-imagenet": "64x64"}


def _embed_dim(run: Run, dataset) -> int:
    """The matching network's embedding size (D)."""
    net = run.base.network(0) if run.cfg.base == "dm" else run.base.nets[0]
    x = torch.zeros(1, dataset.channels, dataset.image_size, dataset.image_size)
    with torch.no_grad():
        return net.embed(x).shape[1]


PROBE_STREAM = 78  # generator(seed, PROBE_STREAM, k, class): the probes' real batches and DSA


def probe_loss(run: Run, dataset, nets: int, batch: int) -> float:
    """The matching objective of the current set, averaged over ``nets`` fixed random
    networks with fixed real batches and DSA draws (the same at every call): a measure of the
    set that, unlike the training loss, does not change with each iteration's network."""
    cfg, size, per = run.cfg, (dataset.image_size, dataset.image_size), run.per_class
    syn, _ = run.base.expand(run.images.detach(), run.labels)
    total = 0.0
    for k in range(nets):
        net = new_net(cfg, dataset, seed_for(cfg.seed, PROBE_STREAM, k), run.device)
        net.train().requires_grad_(False)
        gens = [generator(cfg.seed, PROBE_STREAM, k, c) for c in range(dataset.num_classes)]
        batches = [dataset.class_batch(c, batch, g) for c, g in enumerate(gens)]
        params = [sample_params(run.strategy, per, size, g, siamese=True) for g in gens]
        stats = real_statistics(
            net, batches, params, run.weights, 0, run.device, run.autocast, False
        )
        with torch.no_grad():
            loss, _ = objective(
                net,
                stats,
                syn,
                [per] * dataset.num_classes,
                params,
                run.weights,
                run.autocast,
                False,
            )
        total += float(loss)
    return total / nets


def run_cell(dataset, ipc: int, form: str, base: str, args) -> dict:
    """One short condensation; its losses, finiteness and trend."""
    cfg = CondenseConfig(
        dataset=dataset.name,
        ipc=ipc,
        method="ddm",
        form=form,
        base=base,
        iterations=args.iterations,
        batch_real=args.batch_real,
        precision=args.precision,
        seed=args.seed,
        device="cpu",
        model_train_steps=args.model_train_steps,
        model_batch=args.model_batch,
        weights_by_embedding=not args.published_weights,
    ).resolved()
    run = Run(cfg, dataset, None)
    weights = {"mm": cfg.w_mm, "cm": cfg.w_cm, "icd": cfg.w_icd, "cd": cfg.w_cd, "sd": cfg.w_sd}
    scale = run.weights.term_scale(_embed_dim(run, dataset))
    losses: list[float] = []
    totals: list[float] = []
    t0 = time.perf_counter()
    finite = True
    probe_start = probe_loss(run, dataset, args.probe_nets, args.probe_batch)
    try:
        for _ in range(args.iterations):
            total, terms = run.step()
            totals.append(total)
            # the matching objective, without IDM's CE term (its weight grows with the queue
            # models' accuracy, so the total rises as they learn)
            losses.append(terms["mmd"] + scale * sum(w * terms[t] for t, w in weights.items()))
    except NonFiniteLossError:
        finite = False
    q = max(1, len(losses) // 4)
    first, last = sum(losses[:q]) / q, sum(losses[-q:]) / q
    finite = finite and all(math.isfinite(v) for v in losses)
    probe_end = probe_loss(run, dataset, args.probe_nets, args.probe_batch) if finite else math.inf
    finite = finite and math.isfinite(probe_end)
    return {
        "dataset": dataset.name,
        "size": SIZES.get(dataset.name, str(dataset.image_size)),
        "ipc": ipc,
        "form": form,
        "base": base,
        "iterations": len(losses),
        "finite": finite,
        "falling": finite and probe_end < probe_start,
        "probe_start": probe_start,
        "probe_end": probe_end,
        "training_loss_falling": finite and last < first,
        "first_quarter_mean": first,
        "last_quarter_mean": last,
        "matching_losses": losses,
        "totals": totals,
        "seconds": round(time.perf_counter() - t0, 1),
    }


def _markdown(result: dict) -> str:
    rows = [
        "| size | ipc | form | base | finite | falling | probe: start -> end "
        "| training loss: first -> last quarter |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for c in result["cells"]:
        rows.append(
            f"| {c['size']} | {c['ipc']} | {c['form']} | {c['base']} | "
            f"{'yes' if c['finite'] else 'NO'} | {'yes' if c['falling'] else 'NO'} | "
            f"{c['probe_start']:.4g} -> {c['probe_end']:.4g} | "
            f"{c['first_quarter_mean']:.4g} -> {c['last_quarter_mean']:.4g} |"
        )
    return f"# Stability grid\n\nCommand: `{result['command']}`\n\n" + "\n".join(rows) + "\n"


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-root", default="data")
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--ipcs", nargs="+", type=int, default=[1, 4, 10, 50])
    p.add_argument("--forms", nargs="+", default=["paper", "released"])
    p.add_argument("--bases", nargs="+", default=["dm", "idm"])
    p.add_argument("--iterations", type=int, default=20)
    p.add_argument("--batch-real", type=int, default=64)
    p.add_argument("--precision", default="fp32")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--probe-nets", type=int, default=3, help="fixed networks of the probe")
    p.add_argument("--probe-batch", type=int, default=64, help="real images per class (probe)")
    p.add_argument("--model-train-steps", type=int, default=10, help="IDM queue training")
    p.add_argument("--model-batch", type=int, default=256, help="IDM queue training")
    p.add_argument("--published-weights", action="store_true", help="weights_by_embedding false")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--resume", action="store_true")
    args = p.parse_args(argv)
    command = "python benchmarks/stability_grid.py " + " ".join(argv or sys.argv[1:])
    result = {"command": command, "budget": vars(args) | {"out": str(args.out)}, "cells": []}
    if args.resume and args.out.exists():
        result["cells"] = json.loads(args.out.read_text())["cells"]
    done = {(c["dataset"], c["ipc"], c["form"], c["base"]) for c in result["cells"]}
    for name in args.datasets:
        dataset = load_dataset(name, None if name == "digits" else args.data_root)
        for ipc in args.ipcs:
            for form in args.forms:
                for base in args.bases:
                    if (dataset.name, ipc, form, base) in done:
                        continue
                    torch.manual_seed(0)
                    cell = run_cell(dataset, ipc, form, base, args)
                    print(
                        f"{cell['size']} ipc {ipc} {form} {base}: finite {cell['finite']} "
                        f"falling {cell['falling']} {cell['first_quarter_mean']:.4g} -> "
                        f"{cell['last_quarter_mean']:.4g} ({cell['seconds']} s)",
                        flush=True,
                    )
                    result["cells"].append(cell)
                    atomic_write_json(args.out, result)
                    args.out.with_suffix(".md").write_text(_markdown(result))


if __name__ == "__main__":
    main()
