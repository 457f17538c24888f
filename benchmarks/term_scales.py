"""Scale and pull of each term of a run's objective: value and gradient norm on the pixels.

For a run folder (or a snapshot inside it), rebuild the run's objective from its config.json,
draw a few fresh matching steps (network, real batches, one Siamese DSA draw per class; the
draw does not depend on the run's own iterations), and for each weighted term report, summed
over classes and averaged over the steps:

- ``value``: the term's unweighted value, and ``weighted`` = weight x value;
- ``|grad|``: the L2 norm of the gradient of the weighted term with respect to all pixels;
- ``cos to mmd``: cosine between that gradient and the content term's (L_MMD) gradient
  (negative: the term pulls the pixels against the content term).

This is the evidence to look at when a term does not pay: is it too small to matter, too
large (drowning L_MMD), or pulling against it?

    python benchmarks/term_scales.py runs/ev/a/ddm/s0 runs/ev/a/ddm-paper/s0 --steps 3
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import torch

from ddm.augment import sample_params
from ddm.condense import Run
from ddm.config import CondenseConfig, config_from_dict
from ddm.data import load_dataset
from ddm.io import load_synthetic, read_json
from ddm.objective import TERMS, Weights, objective, real_statistics
from ddm.runtime import generator

WEIGHT_OF = {"mm": "w_mm", "cm": "w_cm", "icd": "w_icd", "cd": "w_cd", "sd": "w_sd"}
PROBE_STREAM = 77  # generator(seed, PROBE_STREAM, step): batches and DSA draws of the probes


def _only(weights: Weights, term: str | None) -> Weights:
    """The run's weights with every term but ``term`` (and L_MMD) switched off."""
    off = {name: 0.0 for name in WEIGHT_OF.values()}
    if term is not None:
        off.pop(WEIGHT_OF[term])
    return dataclasses.replace(weights, **off)


def term_scales(folder: Path, steps: int, batch_real: int | None, data_root: str | None):
    config = read_json(folder / "config.json") if (folder / "config.json").exists() else None
    if config is None:  # a snapshot folder: the config sits one level up
        config = read_json(folder.parent / "config.json")
    config.pop("version", None)
    cfg: CondenseConfig = config_from_dict(CondenseConfig, config).resolved()
    if data_root:
        cfg = dataclasses.replace(cfg, data_root=data_root)
    dataset = load_dataset(cfg.dataset, cfg.data_root, cfg.image_size)
    run = Run(cfg, dataset, None)
    syn = load_synthetic(folder)
    active = [t for t, w in WEIGHT_OF.items() if getattr(cfg, w) > 0]
    rows: dict[str, dict[str, float]] = {
        t: {"value": 0.0, "weighted": 0.0, "grad": 0.0, "cos": 0.0} for t in ["mmd", *active]
    }
    size = (dataset.image_size, dataset.image_size)
    n_real = batch_real or cfg.batch_real
    for step in range(steps):
        gen = generator(cfg.seed, PROBE_STREAM, step)
        net = run.base.network(step)
        batches, params = [], []
        for c in range(dataset.num_classes):
            batches.append(dataset.class_batch(c, n_real, gen))
            params.append(sample_params(run.strategy, run.per_class, size, gen, siamese=True))
        grads: dict[str, torch.Tensor] = {}
        for term in [None, *active]:
            weights = _only(run.weights, term)
            real = real_statistics(
                net, batches, params, weights, run.chunk, run.device, run.autocast, False
            )
            images = syn.images.clone().to(run.device).requires_grad_(True)
            expanded, _ = run.base.expand(images, syn.labels)
            total, terms = objective(
                net,
                real,
                expanded,
                [run.per_class] * dataset.num_classes,
                params,
                weights,
                run.autocast,
                False,
            )
            total.backward()
            name = term or "mmd"
            grads[name] = images.grad.flatten().clone()
            if term is not None:
                grads[name] -= grads["mmd"]  # the weighted term's own gradient
            w = 1.0 if term is None else getattr(cfg, WEIGHT_OF[term])
            rows[name]["value"] += terms[name] / steps
            rows[name]["weighted"] += w * terms[name] / steps
        for name, g in grads.items():
            rows[name]["grad"] += float(g.norm()) / steps
            cos = torch.nn.functional.cosine_similarity(g, grads["mmd"], dim=0)
            rows[name]["cos"] += float(cos) / steps
    return cfg, rows


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("runs", nargs="+", type=Path, help="run folders or snapshot folders")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--batch-real", type=int, default=None, help="default: the run's")
    p.add_argument("--data-root", default=None)
    p.add_argument("--json", default=None, help="write every table to this file")
    args = p.parse_args()
    out = {}
    for folder in args.runs:
        cfg, rows = term_scales(folder, args.steps, args.batch_real, args.data_root)
        meta = read_json(folder / "meta.json")
        print(
            f"\n{folder}: {cfg.method} (form {cfg.form}, base {cfg.base}), "
            f"{meta.get('iterations')} iterations; {args.steps} probe steps"
        )
        print("| term | weight | value | weighted | |grad| | |grad| / mmd's | cos to mmd |")
        print("|---|---|---|---|---|---|---|")
        for name, r in rows.items():
            w = 1.0 if name == "mmd" else getattr(cfg, WEIGHT_OF[name])
            rel = r["grad"] / rows["mmd"]["grad"]
            print(
                f"| {name} | {w:g} | {r['value']:.4g} | {r['weighted']:.4g} | {r['grad']:.4g} "
                f"| {rel:.2f} | {r['cos']:+.2f} |"
            )
        out[str(folder)] = {"config": cfg.to_dict(), "terms": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2))
    assert set(WEIGHT_OF) <= set(TERMS)


if __name__ == "__main__":
    main()
