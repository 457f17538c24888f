"""Seconds per condensation iteration and peak memory, next to the bare compute.

For each setting (method, ipc) a fresh subprocess loads CIFAR-10, runs a few iterations of
the real loop, then times the *bare compute* an iteration cannot avoid, in the same process:
one no-grad forward of the real class batches plus forward and backward of the synthetic
images through the same network. ``ratio`` = iteration / bare; ``queue share`` is the part of
an IDM iteration spent training queue models between matching steps. A ``reference-style`` row runs
the field's reference DM loop shape (per-class forward with autograd, stock pooling, glibc's
default allocator behaviour) in the same way, for scale.

    python benchmarks/speed.py --data-root DATA            # full table
    python benchmarks/speed.py --data-root DATA --ipc 10 --methods dm ddm
    python benchmarks/speed.py --ipc 10 --methods dm idm ddm-idm   # IDM with its own defaults
    python benchmarks/speed.py --ipc 10 --methods idm --set model_batch=64 --set model_train_steps=5

Methods: dm, ddm (the default form), ddm-paper, ddm-released, idm, ddm-idm (DDM's terms on the
IDM base, default form), ddm-paper-idm, ddm-released-idm, ncfm, ddm-ncfm, ddm-released-ncfm
(the NCFM rows need ``--pool DIR``), reference-style.

``--paired`` times several methods in ONE process, their iterations interleaved (dm, ddm, dm,
ddm, ...), so a busy machine slows every method alike and the ratios stay meaningful:

    python benchmarks/speed.py --paired --ipc 10 --methods dm ddm-paper ddm-released --iters 5

A method name with ``+compile`` (``dm+compile``) is its ``--compile`` row in the same process;
its warm-up iteration compiles, and its FLOPs are counted on the eager row's.

Every claim is a ratio to the hardware: ``--paired`` first measures the machine's matmul
throughput (GFLOPS, 2048 x 2048, float32 and bf16), counts each method's FLOPs in one iteration
(``torch.utils.flop_counter``: convolutions and matrix products, forward and backward) and
prints, beside the seconds per iteration, the *floor* = FLOPs / peak of the precision used.
``--precision fp32 bf16`` times every method in each precision (interleaved as well; ``auto``
is resolved by ``ddm.runtime``). ``--eval`` times the evaluation protocol instead: seconds per
training epoch (ConvNet, 10 x ipc images, batch 256) and per test pass, in each precision:

    python benchmarks/speed.py --paired --ipc 10 --methods dm ddm-paper ddm-released \
        --precision fp32 bf16 --iters 3 --threads 1
    python benchmarks/speed.py --eval --ipc 10 --precision fp32 bf16 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from functools import partial

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
    "ncfm": ("ncfm", {}),
    "ddm-ncfm": ("ddm", {"base": "ncfm"}),
    "ddm-released-ncfm": ("ddm", {"base": "ncfm", "form": "released"}),
}


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 3) -> float:
    """This machine's matmul throughput in ``dtype`` (best of ``reps`` n x n products)."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    a @ b  # warm-up
    best = float("inf")
    for _ in range(reps):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best / 1e9


def count_flops(fn) -> tuple[float, object]:
    """FLOPs of one call of ``fn`` (convolutions and matrix products) and its result."""
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        out = fn()
    return float(counter.get_total_flops()), out


def _make_run(args, name: str, ipc: int, dataset, precision: str | None = None):
    from ddm.condense import Run
    from ddm.config import CondenseConfig, parse_overrides

    name, compiled = name.removesuffix("+compile"), name.endswith("+compile")
    if name not in METHODS:
        raise SystemExit(
            f"unknown method {name!r}; known: {', '.join(METHODS)}, reference-style "
            "(--paired: any of them + '+compile' for its torch.compile row)"
        )
    method, extra = METHODS[name]
    extra = dict(extra)
    if getattr(args, "compile", False) or compiled:
        extra["compile"] = True
    if precision is not None:
        extra["precision"] = precision
    extra.update(parse_overrides(args.set))  # CondenseConfig fields, KEY=VALUE
    if method == "ncfm" or extra.get("base") == "ncfm":
        if not getattr(args, "pool", None):
            raise SystemExit(f"{name} needs --pool DIR (a pool made by `ddm pool`)")
        extra["pool"] = args.pool
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
    return Run(cfg, dataset, None)


def paired(args) -> None:
    """Interleaved iterations of several methods in this process; print seconds and ratios."""
    from ddm.data import load_dataset
    from ddm.runtime import tune_allocator

    torch.set_num_threads(args.threads)
    tune_allocator()
    dataset = load_dataset("cifar10", args.data_root)
    peak = _print_peaks(args.threads)
    for ipc in args.ipc:
        runs, flops = {}, {}
        for p in args.precision:
            for m in args.methods:
                runs[(m, p)] = _make_run(args, m, ipc, dataset, p)
        for key, run in runs.items():  # the warm-up iteration, counted
            if key[0].endswith("+compile"):  # the FLOP counter and the compiler do not mix:
                run.step()  # the same FLOPs as the eager row (compilation happens here)
                eager = _make_run(args, key[0].removesuffix("+compile"), ipc, dataset, key[1])
                flops[key] = count_flops(eager.step)[0]
                continue
            flops[key] = count_flops(run.step)[0]
        times: dict[tuple[str, str], list[float]] = {key: [] for key in runs}
        for _ in range(args.iters):
            for key, run in runs.items():
                t0 = time.perf_counter()
                run.step()
                times[key].append(time.perf_counter() - t0)
        first = next(iter(runs))
        base = sum(times[first]) / args.iters
        print(
            f"\nCIFAR-10, ipc {ipc}, batch_real {args.batch_real}, {args.threads} threads, "
            f"{args.iters} interleaved iterations per row after one warm-up (one process); "
            "floor = FLOPs / matmul peak of the precision\n"
        )
        print(
            f"| method | precision | s / iteration | vs {first[0]} ({first[1]}) | "
            "GFLOP / iteration | floor (s) | ratio to floor |"
        )
        print("|---|---|---|---|---|---|---|")
        for key, ts in times.items():
            used = runs[key].cfg.precision  # resolved
            sec = sum(ts) / len(ts)
            floor = flops[key] / (peak[used] * 1e9)
            print(
                f"| {key[0]} | {used} | {sec:.2f} | {sec / base:.2f}x | {flops[key] / 1e9:.0f} | "
                f"{floor:.2f} | {sec / floor:.1f}x |"
            )


def _print_peaks(threads: int) -> dict[str, float]:
    from ddm.runtime import auto_precision_verdict

    peak = {"fp32": matmul_gflops(torch.float32), "bf16": matmul_gflops(torch.bfloat16)}
    print(
        f"matmul peak, {threads} threads, torch {torch.__version__}: "
        f"float32 {peak['fp32']:.0f} GFLOPS, bf16 {peak['bf16']:.0f} GFLOPS\n"
        f"({auto_precision_verdict()})"
    )
    return peak


def eval_speed(args) -> None:
    """The evaluation protocol's cost per precision: seconds per epoch and per test pass."""
    from ddm.config import EvalConfig
    from ddm.data import load_dataset
    from ddm.evaluate import accuracy, train_and_test
    from ddm.models import build_model
    from ddm.runtime import resolve_precision, tune_allocator

    torch.set_num_threads(args.threads)
    tune_allocator()
    dataset = load_dataset("cifar10", args.data_root)
    peak = _print_peaks(args.threads)
    gen = torch.Generator().manual_seed(0)
    ipc = args.ipc[0]
    x = torch.cat([dataset.class_batch(c, ipc, gen) for c in range(dataset.num_classes)])
    y = torch.arange(dataset.num_classes).repeat_interleave(ipc)
    test_x, test_y = dataset.test_tensors()
    cpu = torch.device("cpu")
    rows = []
    for model, p in [(m, p) for m in args.eval_models for p in args.precision]:
        used = resolve_precision(p, cpu)
        cfg = EvalConfig(model=model, epochs=args.eval_epochs, runs=1, device="cpu", precision=used)
        kw = {"num_classes": dataset.num_classes, "strategy": dataset.dsa_strategy, "cfg": cfg}
        warm = EvalConfig(model=model, epochs=1, precision=used)
        train_and_test(x, y, x[:1], y[:1], **{**kw, "cfg": warm})
        t0 = time.perf_counter()  # the test set is one image here: training time only
        train_and_test(x, y, x[:1], y[:1], **kw)
        epoch = (time.perf_counter() - t0) / args.eval_epochs
        net = build_model(model, dataset.channels, dataset.num_classes, 32)
        # FLOPs of a test pass: those of its first 1,000 images, scaled
        one_batch = partial(accuracy, net, test_x[:1000], test_y[:1000], cpu, 1000, used)
        flops = count_flops(one_batch)[0] * len(test_x) / 1000
        t0 = time.perf_counter()
        accuracy(net, test_x, test_y, cpu, precision=used)
        test = time.perf_counter() - t0
        rows.append((model, used, epoch, test, test / (flops / (peak[used] * 1e9))))
    print(
        f"\nEvaluation protocol, CIFAR-10, {len(x)} training images, batch 256, "
        f"{args.threads} threads; per epoch: mean of {args.eval_epochs} epochs after one; "
        f"test: one pass over {len(test_x)} images\n"
    )
    print(
        "| model | precision | s / epoch | test pass (s) | test pass / floor | "
        "1,000 epochs x 5 models (min) |"
    )
    print("|---|---|---|---|---|---|")
    for model, used, epoch, test, ratio in rows:
        total = 5 * (1000 * epoch + test) / 60
        print(f"| {model} | {used} | {epoch:.3f} | {test:.2f} | {ratio:.1f}x | {total:.1f} |")


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
    p.add_argument("--data-root", default="DATA")
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
    p.add_argument("--pool", default=None, help="pool of trained networks for the NCFM rows")
    p.add_argument(
        "--precision",
        nargs="+",
        default=["fp32"],
        help="--paired / --eval: auto | fp32 | bf16, each timed (default fp32)",
    )
    p.add_argument("--eval", action="store_true", help="time the evaluation protocol instead")
    p.add_argument(
        "--eval-models", nargs="+", default=["convnet"], help="--eval: architectures timed"
    )
    p.add_argument("--eval-epochs", type=int, default=10, help="--eval: epochs timed")
    p.add_argument("--one", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--method", help=argparse.SUPPRESS)
    p.add_argument("--ipc-one", type=int, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.one:
        print(json.dumps(one(args)))
        return
    if args.eval:
        eval_speed(args)
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
        if args.pool:
            cmd += ["--pool", args.pool]
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
