"""Seconds per condensation iteration and peak memory, next to the bare compute.

For each setting (method, ipc) a fresh subprocess loads CIFAR-10, runs a few iterations of
the real loop, then times the *bare compute* an iteration cannot avoid, in the same process:
one no-grad forward of the real class batches plus forward and backward of the synthetic
images through the same network. ``ratio`` = iteration / bare; ``queue share`` is the part of
an IDM iteration spent training queue models between matching steps. A ``reference-style`` row runs
the field's reference DM loop shape (per-class forward with autograd, stock pooling, glibc's
default allocator behaviour) in the same way, for scale.

    python benchmarks/speed.py --data-root ../shared/data            # full table
    python benchmarks/speed.py --data-root ../shared/data --ipc 10 --methods dm ddm
    python benchmarks/speed.py --ipc 10 --methods dm idm ddm-idm   # IDM with its own defaults
    python benchmarks/speed.py --ipc 10 --methods idm --set model_batch=64 --set model_train_steps=5

Methods: dm, ddm (the default form), ddm-paper, ddm-released, idm, ddm-idm (DDM's terms on the
IDM base, default form), ddm-paper-idm, ddm-released-idm, reference-style.

``--paired`` times several methods in ONE process, their iterations interleaved (dm, ddm, dm,
ddm, ...), so a busy machine slows every method alike and the ratios stay meaningful:

    python benchmarks/speed.py --paired --ipc 10 --methods dm ddm-paper ddm-released --iters 5
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch


def _bare(net, dataset, images, batch_real, chunk, maps):
    gen = torch.Generator().manual_seed(0)
    real = [dataset.class_batch(c, batch_real, gen) for c in range(dataset.num_classes)]
    x = torch.cat(real)
    step = chunk or len(x)

    def once():
        with torch.no_grad():
            for i in range(0, len(x), step):
                (net.embed_and_maps if maps else net.embed)(x[i : i + step])
        syn = images.detach().requires_grad_(True)
        out = net.embed_and_maps(syn)[0] if maps else net.embed(syn)
        out.sum().backward()

    once()
    t0 = time.perf_counter()
    for _ in range(3):
        once()
    return (time.perf_counter() - t0) / 3


def _reference_style(dataset, ipc, batch_real, iters):
    """The reference DM loop's shape: per-class forward, real side with autograd on."""
    import torch.nn.functional as F
    from torch import nn

    from ddm.augment import apply, sample_params
    from ddm.models import ConvNet

    images = torch.randn(dataset.num_classes * ipc, 3, 32, 32, requires_grad=True)
    opt = torch.optim.SGD([images], lr=1.0, momentum=0.5)
    gen = torch.Generator().manual_seed(0)

    def stock(net):  # the reference's nn.AvgPool2d and out-of-place ReLU
        for i, m in enumerate(net.features):
            if isinstance(m, nn.AvgPool2d):
                net.features[i] = nn.AvgPool2d(2, 2)
            if isinstance(m, nn.ReLU):
                net.features[i] = nn.ReLU()
        return net

    def step():
        net = stock(ConvNet(3, 10))
        for p in net.parameters():
            p.requires_grad = False
        loss = torch.zeros(())
        for c in range(dataset.num_classes):
            real = dataset.class_batch(c, batch_real, gen)
            syn = images[c * ipc : (c + 1) * ipc]
            p = sample_params(dataset.dsa_strategy, ipc, (32, 32), gen, siamese=True)
            out_real = net.embed(apply(real, p)).detach()
            out_syn = net.embed(apply(syn, p))
            loss = loss + ((out_real.mean(0) - out_syn.mean(0)) ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
        return F.relu(loss)

    step()
    t0 = time.perf_counter()
    for _ in range(iters):
        step()
    return (time.perf_counter() - t0) / iters


# benchmark method name -> (method, extra CondenseConfig settings)
METHODS = {
    "dm": ("dm", {}),
    "ddm": ("ddm", {}),
    "ddm-paper": ("ddm", {"form": "paper"}),
    "ddm-released": ("ddm", {"form": "released"}),
    "idm": ("idm", {}),
    "ddm-idm": ("ddm", {"base": "idm"}),
    "ddm-paper-idm": ("ddm", {"base": "idm", "form": "paper"}),
    "ddm-released-idm": ("ddm", {"base": "idm", "form": "released"}),
}


def _make_run(args, name: str, ipc: int, dataset):
    from ddm.condense import _Run
    from ddm.config import CondenseConfig, parse_overrides

    if name not in METHODS:
        raise SystemExit(f"unknown method {name!r}; known: {', '.join(METHODS)}, reference-style")
    method, extra = METHODS[name]
    extra = dict(extra)
    if getattr(args, "compile", False):
        extra["compile"] = True
    extra.update(parse_overrides(args.set))  # CondenseConfig fields, KEY=VALUE
    cfg = CondenseConfig(
        dataset="cifar10",
        data_root=args.data_root,
        ipc=ipc,
        method=method,
        batch_real=args.batch_real,
        iterations=10**6,
        device="cpu",
        **extra,
    ).resolved()
    return _Run(cfg, dataset, None)


def paired(args) -> None:
    """Interleaved iterations of several methods in this process; print seconds and ratios."""
    from ddm.data import load_dataset
    from ddm.runtime import tune_allocator

    torch.set_num_threads(args.threads)
    tune_allocator()
    dataset = load_dataset("cifar10", args.data_root)
    for ipc in args.ipc:
        runs = {m: _make_run(args, m, ipc, dataset) for m in args.methods}
        for run in runs.values():
            run.step()  # warm-up
        times: dict[str, list[float]] = {m: [] for m in runs}
        for _ in range(args.iters):
            for m, run in runs.items():
                t0 = time.perf_counter()
                run.step()
                times[m].append(time.perf_counter() - t0)
        base = sum(times[args.methods[0]]) / args.iters
        print(
            f"\nCIFAR-10, ipc {ipc}, batch_real {args.batch_real}, {args.threads} threads, "
            f"{args.iters} interleaved iterations per method after one warm-up (one process)\n"
        )
        print(f"| method | s / iteration | vs {args.methods[0]} |")
        print("|---|---|---|")
        for m, ts in times.items():
            sec = sum(ts) / len(ts)
            print(f"| {m} | {sec:.2f} | {sec / base:.2f}x |")


def one(args) -> dict:
    """Measure one setting in this process; print a JSON line."""
    from ddm.data import load_dataset
    from ddm.runtime import tune_allocator

    torch.set_num_threads(args.threads)
    dataset = load_dataset("cifar10", args.data_root)
    if args.method == "reference-style":
        sec = _reference_style(dataset, args.ipc_one, args.batch_real, args.iters)
        bare, queue = None, 0.0
    else:
        tune_allocator()
        run = _make_run(args, args.method, args.ipc_one, dataset)
        run.step()  # warm-up (and compilation)
        queue = 0.0
        t0 = time.perf_counter()
        for _ in range(args.iters):
            queue += run.step()[1].get("queue_s", 0.0)
        sec = (time.perf_counter() - t0) / args.iters
        queue /= args.iters
        net = run.base.network(run.iteration)  # DM: a fresh net; IDM: one drawn from the queue
        syn = run.base.expand(run.images, run.labels)[0]  # IDM matches the expanded images
        bare = _bare(net, dataset, syn, args.batch_real, run.chunk, run.weights.needs_maps)
    peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {
        "method": args.method + ("+compile" if args.compile else ""),
        "ipc": args.ipc_one,
        "sec": sec,
        "bare": bare,
        "queue": queue,
        "peak_mb": peak_mb,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data-root", default="../shared/data")
    p.add_argument("--ipc", type=int, nargs="+", default=[1, 10, 50])
    p.add_argument(
        "--methods", nargs="+", default=["dm", "ddm", "idm", "ddm-idm", "reference-style"]
    )
    p.add_argument("--batch-real", type=int, default=256)
    p.add_argument("--iters", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--compile", action="store_true", help="also time torch.compile rows")
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a CondenseConfig field for every row, e.g. model_train_steps=5 (repeatable)",
    )
    p.add_argument("--paired", action="store_true", help="interleave methods in one process")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--ipc-one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    if args.paired:
        paired(args)
        return

    rows = []
    settings = [(m, i, False) for i in args.ipc for m in args.methods]
    if args.compile:
        settings += [("dm", i, True) for i in args.ipc]
    for method, ipc, comp in settings:
        cmd = [
            sys.executable,
            __file__,
            "--one",
            "--method",
            method,
            "--ipc-one",
            str(ipc),
            "--data-root",
            args.data_root,
            "--batch-real",
            str(args.batch_real),
            "--iters",
            str(args.iters),
            "--threads",
            str(args.threads),
        ]
        if comp:
            cmd.append("--compile")
        for item in args.set:
            cmd += ["--set", item]
        env = {**os.environ, "PYTHONWARNINGS": "ignore"}
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, check=False)
        if out.returncode != 0:
            print(out.stderr[-2000:], file=sys.stderr)
            continue
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        print(f"  measured {rows[-1]['method']} ipc {ipc}", file=sys.stderr)

    dm = {r["ipc"]: r["sec"] for r in rows if r["method"] == "dm"}
    print(
        f"\nCIFAR-10, batch_real {args.batch_real}, {args.threads} threads, "
        f"{torch.__version__}, mean of {args.iters} iterations after one warm-up"
        + (f", with {' '.join(args.set)}" if args.set else "")
        + "\n"
    )
    cols = [
        "method",
        "ipc",
        "s / iteration",
        "bare compute (s)",
        "ratio to bare",
        "vs DM",
        "queue share",
        "peak RSS (MB)",
    ]
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        bare = f"{r['bare']:.2f}" if r["bare"] else "-"
        ratio = f"{r['sec'] / r['bare']:.2f}x" if r["bare"] else "-"
        vs_dm = f"{r['sec'] / dm[r['ipc']]:.2f}x" if r["ipc"] in dm else "-"
        queue = f"{100 * r['queue'] / r['sec']:.0f}%" if r.get("queue") else "-"
        print(
            f"| {r['method']} | {r['ipc']} | {r['sec']:.2f} | {bare} | {ratio} | {vs_dm} | "
            f"{queue} | {r['peak_mb']:.0f} |"
        )


if __name__ == "__main__":
    main()
