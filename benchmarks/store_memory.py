"""Peak memory of condensing from a dataset store: it grows with the classes held, not the store.

Writes a synthetic 1,000-class store (random uint8 64x64 RGB images, the store format of
``ddm prepare``) and runs, each in a fresh process (so that its peak RSS is its own):

- ``index``: load the store (index and labels only), nothing read;
- ``condense k``: load the store, keep a block of ``k`` classes (``subset_classes(...,
  relabel=True)``, what one rank of a sharded run holds) and condense it with DM (ipc 1,
  ``--iterations`` iterations of ``--batch-real`` images per class, ConvNet depth 4);
- ``in memory``: read every train file into one array (what an in-memory loader holds).

Columns: peak RSS of the process, the store's pages resident in it at the end (from
/proc/self/smaps: the mapped class files), class files opened, and the share of the store
the block's classes make up. Prints a markdown table; deletes the store unless ``--keep``.

    OMP_NUM_THREADS=1 python benchmarks/store_memory.py --store /tmp/ddm-store-1k
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np


def make_store(path: Path, classes: int, per_class: int, val_per_class: int, size: int) -> None:
    """A store of random images in the format ``ddm prepare`` writes (reused if present)."""
    from ddm.data.prepare import _pixel_sums, _stats, _write_index
    from ddm.data.store import INDEX_FILE, STORE_FORMAT, STORE_VERSION, class_file

    if (path / INDEX_FILE).is_file():
        index = json.loads((path / INDEX_FILE).read_text())
        if index.get("complete") and index["train_counts"] == [per_class] * classes:
            return
    for split in ("train", "val"):
        (path / split).mkdir(parents=True, exist_ok=True)
    index = {
        "format": STORE_FORMAT,
        "version": STORE_VERSION,
        "name": f"synthetic-{classes}",
        "source": "benchmarks/store_memory.py (random images)",
        "image_size": size,
        "channels": 3,
        "classes": [f"c{k:04d}" for k in range(classes)],
        "complete": False,
        "train_counts": [per_class] * classes,
        "val_counts": [val_per_class] * classes,
        "mean": None,
        "std": None,
        "pixel_sum": [],
        "pixel_sumsq": [],
        "corrupt": [[] for _ in range(classes)],
    }
    rng = np.random.default_rng(0)
    for k in range(classes):
        train = rng.integers(0, 256, (per_class, 3, size, size), dtype=np.uint8)
        np.save(class_file(path, "train", k), train)
        val = rng.integers(0, 256, (val_per_class, 3, size, size), dtype=np.uint8)
        np.save(class_file(path, "val", k), val)
        sums, squares = _pixel_sums(train)
        index["pixel_sum"].append(sums)
        index["pixel_sumsq"].append(squares)
    index["mean"], index["std"] = _stats(index)
    index["complete"] = True
    _write_index(path, index)


def _store_rss(store: Path) -> int:
    """Bytes of the store's files resident in this process (its mapped class files)."""
    total, inside = 0, False
    prefix = str(store.resolve())
    with open("/proc/self/smaps") as f:
        for line in f:
            first = line.split(maxsplit=1)[0]
            if "-" in first and not first.endswith(":"):  # a mapping's header line
                inside = line.rstrip().split()[-1].startswith(prefix)
            elif inside and first == "Rss:":
                total += int(line.split()[1]) * 1024
    return total


def child(
    store: Path, mode: str, k: int, iterations: int, batch_real: int, real_chunk: int = 0
) -> dict:
    import torch

    from ddm.condense import condense
    from ddm.config import CondenseConfig
    from ddm.data import load_dataset

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    t0 = time.perf_counter()
    ds = load_dataset("store", store)
    if mode == "condense":
        block = ds.subset_classes(range(k), relabel=True)
        cfg = CondenseConfig(
            dataset="store",
            data_root=str(store),
            ipc=1,
            method="dm",
            iterations=iterations,
            batch_real=batch_real,
            depth=4,
            device="cpu",
            real_chunk=real_chunk,
        )
        condense(cfg, None, dataset=block, progress=False)
    elif mode == "memory":  # as an in-memory loader: every class file read (not mapped)
        images = np.empty(tuple(ds.train.images.shape), dtype=np.uint8)
        start = 0
        for k in range(ds.num_classes):
            part = np.load(store / "train" / f"{k:05d}.npy")
            images[start : start + len(part)] = part
            start += len(part)
    return {
        "peak_rss": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "store_rss": _store_rss(store),
        "opened": ds.train.images.opened() + ds.test.images.opened(),
        "seconds": time.perf_counter() - t0,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--store", default="/tmp/ddm-store-1k", help="where to write the store")
    p.add_argument("--classes", type=int, default=1000)
    p.add_argument("--per-class", type=int, default=200, help="train images per class")
    p.add_argument("--val-per-class", type=int, default=10)
    p.add_argument("--image-size", type=int, default=64)
    p.add_argument("--blocks", type=int, nargs="+", default=[10, 100], help="classes per rank")
    p.add_argument("--iterations", type=int, default=3)
    p.add_argument("--batch-real", type=int, default=32)
    p.add_argument(
        "--real-chunk", type=int, default=0, help="real images per no-grad forward (0: auto, 512)"
    )
    p.add_argument("--no-in-memory", action="store_true", help="skip the in-memory row")
    p.add_argument("--keep", action="store_true", help="keep the store afterwards")
    p.add_argument("--child", nargs=2, metavar=("MODE", "K"), help=argparse.SUPPRESS)
    args = p.parse_args()
    store = Path(args.store)
    if args.child:
        mode, k = args.child[0], int(args.child[1])
        result = child(store, mode, k, args.iterations, args.batch_real, args.real_chunk)
        print(json.dumps(result))
        return

    t0 = time.perf_counter()
    make_store(store, args.classes, args.per_class, args.val_per_class, args.image_size)
    files = [f for split in ("train", "val") for f in (store / split).iterdir()]
    size = sum(f.stat().st_size for f in files)
    train_size = sum(f.stat().st_size for f in (store / "train").iterdir())
    print(
        f"store: {args.classes} classes x {args.per_class} train (+{args.val_per_class} val) "
        f"images of {args.image_size}x{args.image_size}, {size / 2**20:,.0f} MiB "
        f"(written in {time.perf_counter() - t0:.0f} s)",
        flush=True,
    )
    rows = [("index", 0)] + [("condense", k) for k in args.blocks]
    if not args.no_in_memory:
        rows.append(("memory", args.classes))
    table = []
    for mode, k in rows:
        cmd = [sys.executable, __file__, "--store", str(store), "--child", mode, str(k)]
        cmd += ["--iterations", str(args.iterations), "--batch-real", str(args.batch_real)]
        cmd += ["--real-chunk", str(args.real_chunk)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
        r = json.loads(out.strip().splitlines()[-1])
        label = {
            "index": "load the store only",
            "condense": f"condense {k} classes (DM, ipc 1, {args.iterations} it., batch_real "
            f"{args.batch_real}, real_chunk {args.real_chunk or 'auto'})",
            "memory": "whole train split read into memory",
        }[mode]
        share = train_size * k / args.classes
        table.append(
            f"| {label} | {k:,} | {share / 2**20:,.0f} | {r['peak_rss'] / 2**20:,.0f} | "
            f"{r['store_rss'] / 2**20:,.0f} | {r['opened']} | {r['seconds']:.0f} |"
        )
        print(table[-1], flush=True)
    print()
    print(
        "| process | classes held | their train files (MiB) | peak RSS (MiB) | store pages "
        "resident at end (MiB) | class files opened | seconds |"
    )
    print("|---|---:|---:|---:|---:|---:|---:|")
    print("\n".join(table))
    print(f"\nstore size: {size / 2**20:,.0f} MiB (train {train_size / 2**20:,.0f} MiB)")
    if not args.keep:
        shutil.rmtree(store)


if __name__ == "__main__":
    main()
