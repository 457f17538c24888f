"""Compare condensation methods on one dataset at one budget; print and save a results table.

Every row is condensed (or selected) with the same seed, so every condensation row starts from
the same real images (the random-subset row *is* that initial draw), and evaluated with the
same protocol, models seeded alike. Finished rows are reused (run folders are resumable), so
an interrupted benchmark continues where it stopped.

    # DM vs random vs herding on CIFAR-10 at a reduced CPU budget
    python benchmarks/compare.py --rows random herding dm --out runs/c10
    # the DDM ablation at the same budget
    python benchmarks/compare.py --rows dm dm+mm dm+cm dm+style dm+icd ddm --out runs/c10

A row is a name from ROWS or ``name=method:key=value,key=value`` (CondenseConfig fields),
e.g. ``ddm-w1e3=ddm:w_mm=1e3,w_cm=1e3``.
"""

from __future__ import annotations

import argparse
import csv
import sys
import time
from pathlib import Path

from ddm import config
from ddm.baselines import herding, random_subset
from ddm.condense import condense
from ddm.config import CondenseConfig, EvalConfig
from ddm.data import load_dataset
from ddm.evaluate import evaluate_folder, find_evaluation, set_fingerprint
from ddm.io import (
    META_FILE,
    atomic_write_bytes,
    load_synthetic,
    read_json,
    save_grid,
    save_synthetic,
)
from ddm.runtime import resolve_device, resolve_precision

# name -> (method, overrides); "random"/"herding" are coreset baselines
ROWS: dict[str, tuple[str, dict]] = {
    "random": ("random", {}),
    "herding": ("herding", {}),
    "dm": ("dm", {}),
    # DDM's paper form (docs/method.md, 'DDM, paper form'), spelled out so the ablation's rows
    # stay the paper form whatever `--method ddm` defaults to
    "dm+mm": ("ddm", {"form": "paper", "w_cm": 0.0, "w_icd": 0.0}),
    "dm+cm": ("ddm", {"form": "paper", "w_mm": 0.0, "w_icd": 0.0}),
    "dm+style": ("ddm", {"form": "paper", "w_icd": 0.0}),
    "dm+icd": ("ddm", {"form": "paper", "w_mm": 0.0, "w_cm": 0.0}),
    "ddm": ("ddm", {"form": "paper"}),
    "idm": ("idm", {}),
    "ddm-idm": ("ddm", {"form": "paper", "base": "idm"}),
}


def parse_row(spec: str) -> tuple[str, str, dict]:
    try:
        return config.parse_row(spec, ROWS)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data"))
    p.add_argument("--rows", nargs="+", default=["random", "herding", "dm"])
    p.add_argument("--ipc", type=int, default=10)
    p.add_argument("--iterations", type=int, default=200)
    p.add_argument("--batch-real", type=int, default=64)
    p.add_argument("--epochs", type=int, default=200, help="evaluation epochs")
    p.add_argument("--runs", type=int, default=3, help="evaluation models per row")
    p.add_argument("--herding-epochs", type=int, default=1)
    p.add_argument("--model", default="convnet", help="evaluation architecture")
    p.add_argument(
        "--precision",
        default="fp32",
        help="the evaluation's training precision, auto | fp32 | bf16 (fp32: the published tables)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="auto")
    p.add_argument("--out", default="runs/compare")
    p.add_argument("--table", default=None, help="markdown file to write (default OUT/table.md)")
    args = p.parse_args()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    dataset = load_dataset(args.dataset, args.data_root)
    ecfg = EvalConfig(
        model=args.model,
        epochs=args.epochs,
        runs=args.runs,
        device=args.device,
        precision=args.precision,
    )
    # a cached evaluation counts only if it trained in the precision this one would
    precision = resolve_precision(ecfg.precision, resolve_device(ecfg.device), dataset.image_size)
    results = []
    for spec in args.rows:
        name, method, overrides = parse_row(spec)
        folder = out / name
        t0 = time.perf_counter()
        if method in ("random", "herding"):
            if not (folder / META_FILE).exists():
                folder.mkdir(parents=True, exist_ok=True)
                syn = (
                    random_subset(dataset, args.ipc, seed=args.seed)
                    if method == "random"
                    else herding(
                        dataset,
                        args.ipc,
                        seed=args.seed,
                        epochs=args.herding_epochs,
                        device=args.device,
                    )
                )
                save_synthetic(folder, syn)
                save_grid(folder / "grid.png", syn.denormalized(), syn.labels)
        else:
            cfg = CondenseConfig(
                dataset=args.dataset,
                data_root=args.data_root,
                ipc=args.ipc,
                method=method,
                iterations=args.iterations,
                batch_real=args.batch_real,
                seed=args.seed,
                device=args.device,
                checkpoint_every=50,
                # float32 unless a row says otherwise: the results in docs/results were made so
                **{"precision": "fp32", **overrides},
            )
            done = (folder / META_FILE).exists() and (
                read_json(folder / META_FILE).get("iterations") == args.iterations
            )
            if not done:
                resume = (folder / "checkpoint.safetensors").exists()
                condense(cfg, folder, dataset=dataset, resume=resume)
        build_s = time.perf_counter() - t0
        syn = load_synthetic(folder)
        entry = find_evaluation(folder, ecfg, precision, set_fingerprint(syn))
        if entry is None:
            result = evaluate_folder(folder, syn, dataset, ecfg)
            entry = result.to_dict(ecfg)
        results.append((name, method, overrides, entry, build_s))
        print(f"{name}: {entry['mean']:.2f} +- {entry['std']:.2f}", file=sys.stderr, flush=True)

    header = (
        f"{args.dataset}, ipc {args.ipc}; condensation: {args.iterations} iterations, "
        f"batch_real {args.batch_real}, seed {args.seed}; evaluation: {args.model}, "
        f"{args.epochs} epochs, {args.runs} runs (mean +- std, %)"
    )
    lines = [header, "", "| row | method | settings | accuracy | runs |", "|---|---|---|---|---|"]
    for name, method, overrides, e, _ in results:
        sets = ", ".join(f"{k}={v}" for k, v in overrides.items()) or "defaults"
        accs = ", ".join(f"{a:.2f}" for a in e["accuracies"])
        lines.append(f"| {name} | {method} | {sets} | {e['mean']:.2f} +- {e['std']:.2f} | {accs} |")
    table = "\n".join(lines) + "\n"
    print(table)
    atomic_write_bytes(Path(args.table) if args.table else out / "table.md", table.encode())
    with (out / "table.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["row", "method", "settings", "mean", "std", "accuracies"])
        for name, method, overrides, e, _ in results:
            w.writerow([name, method, overrides, e["mean"], e["std"], e["accuracies"]])


if __name__ == "__main__":
    main()
