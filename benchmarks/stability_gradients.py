"""Per-pixel gradient of each weighted DDM term at the start of a run, and with the synthetic
pixels scaled x2: how the terms' pull scales with resolution, ipc and pixel scale.

For each dataset and ipc: the released form's initial set (real images), one network and one
real batch / DSA draw per class; for each term, the RMS over pixels of the gradient of its
weighted value (summed over classes), and the unweighted value. ``--published`` uses the
published released form (``correlation sum``, ``weights_by_embedding false``).

    OMP_NUM_THREADS=1 PYTHONPATH=src python benchmarks/stability_gradients.py \\
        --datasets digits cifar10 --ipcs 4 10 --published
"""

from __future__ import annotations

import argparse
import dataclasses

import torch

from ddm.augment import sample_params
from ddm.condense import Run
from ddm.config import CondenseConfig
from ddm.data import load_dataset
from ddm.objective import objective, real_statistics
from ddm.runtime import generator

WEIGHT_OF = {"mm": "w_mm", "cm": "w_cm", "cd": "w_cd"}


def term_gradients(dataset, ipc: int, scale: float, published: bool, batch: int) -> dict:
    extra = {"correlation": "sum", "weights_by_embedding": False} if published else {}
    cfg = CondenseConfig(
        dataset=dataset.name,
        ipc=ipc,
        method="ddm",
        form="released",
        batch_real=batch,
        precision="fp32",
        device="cpu",
        **extra,
    ).resolved()
    run = Run(cfg, dataset, None)
    net = run.base.network(0)
    size = (dataset.image_size, dataset.image_size)
    gens = [generator(0, 77, 0, c) for c in range(dataset.num_classes)]
    batches = [dataset.class_batch(c, batch, g) for c, g in enumerate(gens)]
    params = [sample_params(run.strategy, ipc, size, g, siamese=True) for g in gens]
    nograd = torch.autocast("cpu", enabled=False)
    none = dataclasses.replace(run.weights, w_mm=0.0, w_cm=0.0, w_cd=0.0)
    out = {}
    for term in ("mmd", *WEIGHT_OF):
        field = WEIGHT_OF.get(term)
        w = none if field is None else dataclasses.replace(none, **{field: getattr(cfg, field)})
        stats = real_statistics(net, batches, params, w, 0, torch.device("cpu"), nograd, False)
        img = (run.images.detach() * scale).requires_grad_(True)
        sizes = [ipc] * dataset.num_classes
        loss, parts = objective(net, stats, img, sizes, params, w, nograd, False)
        if term != "mmd":  # the term alone
            loss = loss - objective(net, stats, img, sizes, params, none, nograd, False)[0]
        (grad,) = torch.autograd.grad(loss, img)
        out[term] = {"grad_rms": grad.pow(2).mean().sqrt().item(), "value": parts[term]}
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--datasets", nargs="+", default=["digits", "cifar10"])
    p.add_argument("--data-root", default="data")
    p.add_argument("--ipcs", nargs="+", type=int, default=[4, 10])
    p.add_argument("--batch-real", type=int, default=64)
    p.add_argument("--published", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    for name in args.datasets:
        dataset = load_dataset(name, None if name == "digits" else args.data_root)
        for ipc in args.ipcs:
            for scale in (1.0, 2.0):
                r = term_gradients(dataset, ipc, scale, args.published, args.batch_real)
                cells = " ".join(
                    f"{t}: grad {v['grad_rms']:.3g} value {v['value']:.3g}" for t, v in r.items()
                )
                print(f"{name} ipc {ipc} pixels x{scale:.0f}: {cells}", flush=True)


if __name__ == "__main__":
    main()
