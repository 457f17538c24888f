"""DDM vs DM evidence: several condensation seeds, snapshots, several architectures.

Three phases over one output folder, each resumable (finished work is reused):

    # condense every row for every seed, keeping snapshots of the set at some iterations
    python benchmarks/evidence.py condense --out runs/ev/a --rows dm ddm-paper style ddm \
        --seeds 0 1 --iterations 500 --snapshots 100 300 --batch-real 128
    # evaluate the final sets (or every snapshot) with one or more architectures
    python benchmarks/evidence.py evaluate --out runs/ev/a --models convnet --epochs 300 --runs 3
    # tables (markdown + json) and the gain-vs-iterations figure
    python benchmarks/evidence.py report --out runs/ev/a --results benchmarks/results/table_a
    # style gaps and spread of every set (ddm diagnose), row x iteration
    python benchmarks/evidence.py diagnose --out runs/ev/b --all-snapshots --rows dm ddm

Layout: ``OUT/<row>/s<seed>/`` is a normal run folder (resumable with ``ddm condense
--resume``); ``OUT/<row>/s<seed>/it<N>/`` holds the set as it was after N iterations (the
snapshots are exact: a run stopped at N and resumed ends where an uninterrupted run ends).
The random row is the initial draw of the same seed, i.e. every condensation row of a seed
starts from these very images.

A row is a name from ROWS or ``name=method:key=value,...`` (CondenseConfig fields).
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import time
from pathlib import Path

from ddm import config
from ddm.baselines import random_subset
from ddm.condense import condense
from ddm.config import CondenseConfig, EvalConfig
from ddm.data import load_dataset
from ddm.evaluate import entry_holdout, entry_precision, evaluate_folder, find_evaluation
from ddm.io import (
    META_FILE,
    SYNTHETIC_FILE,
    atomic_write_bytes,
    atomic_write_json,
    load_synthetic,
    read_json,
    save_synthetic,
)

# name -> (method, overrides)
ROWS: dict[str, tuple[str, dict]] = {
    "random": ("random", {}),
    "dm": ("dm", {}),
    "ddm-paper": ("ddm", {"form": "paper"}),
    "style": ("ddm", {"form": "released", "w_cd": 0.0}),
    "ddm": ("ddm", {"form": "released"}),
    "idm": ("idm", {"model_batch": 64, "model_train_steps": 5}),
    "ddm-idm": (
        "ddm",
        {"form": "released", "base": "idm", "model_batch": 64, "model_train_steps": 5},
    ),
    # the NCFM rows read the pool named by ``condense --pool``
    "ncfm": ("ncfm", {}),
    "ddm-ncfm": ("ddm", {"form": "released", "base": "ncfm"}),
}


def parse_row(spec: str) -> tuple[str, str, dict]:
    try:
        return config.parse_row(spec, ROWS)
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def _snapshot(folder: Path, iteration: int) -> None:
    snap = folder / f"it{iteration}"
    snap.mkdir(exist_ok=True)
    for name in (SYNTHETIC_FILE, META_FILE):
        shutil.copyfile(folder / name, snap / name)


def _done_iterations(folder: Path) -> int:
    meta = folder / META_FILE
    return read_json(meta).get("iterations", 0) if meta.exists() else 0


def cmd_condense(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset, args.data_root)
    stages = sorted({*args.snapshots, args.iterations})
    for spec in args.rows:
        name, method, overrides = parse_row(spec)
        # float32 unless a row or --condense-precision says otherwise
        overrides = {"precision": args.condense_precision, **overrides}
        if args.pool and (method == "ncfm" or overrides.get("base") == "ncfm"):
            overrides.setdefault("pool", args.pool)
        for seed in args.seeds:
            folder = Path(args.out) / name / f"s{seed}"
            if method == "random":
                if not (folder / META_FILE).exists():
                    folder.mkdir(parents=True, exist_ok=True)
                    syn = random_subset(dataset.holdout(args.holdout), args.ipc, seed=seed)
                    save_synthetic(folder, syn)
                continue
            for stage in stages:
                if (folder / f"it{stage}" / META_FILE).exists():
                    continue
                cfg = CondenseConfig(
                    dataset=args.dataset,
                    data_root=args.data_root,
                    ipc=args.ipc,
                    method=method,
                    iterations=stage,
                    batch_real=args.batch_real,
                    seed=seed,
                    device=args.device,
                    holdout=args.holdout,
                    checkpoint_every=50,
                    **overrides,
                )
                t0 = time.perf_counter()
                if _done_iterations(folder) < stage:
                    resume = (folder / "checkpoint.safetensors").exists()
                    condense(cfg, folder, dataset=dataset, resume=resume, progress=args.progress)
                _snapshot(folder, stage)
                print(
                    f"{name} s{seed}: {stage} iterations ({time.perf_counter() - t0:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )


def _set_folders(out: Path, snapshots: bool) -> list[Path]:
    folders = []
    for row in sorted(p for p in out.iterdir() if p.is_dir()):
        for seed in sorted(p for p in row.iterdir() if p.is_dir() and p.name.startswith("s")):
            snaps = sorted(p for p in seed.iterdir() if p.name.startswith("it"))
            if not snaps:  # a selected set (random): the folder itself
                folders.append(seed)
            elif snapshots:
                folders += snaps
            else:
                folders.append(max(snaps, key=lambda p: int(p.name[2:])))
    return folders


def _precision(name: str, device: str) -> str:
    """``auto`` resolved here, so cached evaluations are found by what they used."""
    from ddm.runtime import resolve_device, resolve_precision

    return resolve_precision(name, resolve_device(device))


def _selected_folders(args: argparse.Namespace) -> list[Path]:
    """The set folders under ``--out`` that ``--rows``, ``--seeds``, ``--all-snapshots`` and
    ``--only-iterations`` select."""
    out = Path(args.out)
    folders = _set_folders(out, args.all_snapshots)
    if args.rows:
        folders = [f for f in folders if f.relative_to(out).parts[0] in args.rows]
    if args.seeds:
        keep_seeds = {f"s{s}" for s in args.seeds}
        folders = [f for f in folders if f.relative_to(out).parts[1] in keep_seeds]
    if args.only_iterations:
        keep = {f"it{n}" for n in args.only_iterations}
        folders = [f for f in folders if f.name in keep or not f.name.startswith("it")]
    return folders


def cmd_evaluate(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset, args.data_root)
    out = Path(args.out)
    folders = _selected_folders(args)
    precision = _precision(args.precision, args.device)
    for model in args.models:
        ecfg = EvalConfig(
            model=model,
            epochs=args.epochs,
            runs=args.runs,
            seed=args.eval_seed,
            device=args.device,
            precision=precision,
            holdout=args.holdout,
        )
        for folder in folders:
            if find_evaluation(folder, ecfg, precision):
                continue
            syn = load_synthetic(folder)
            result = evaluate_folder(folder, syn, dataset, ecfg, progress=args.progress)
            print(f"{folder.relative_to(out)} {model}: {result}", file=sys.stderr, flush=True)


# what `diagnose` tabulates: (diagnose.json key, column, how) -- "gap": condensed / random
# real per layer (lower = closer to the real style; the paper form reads the maps after the
# ReLU, "act", the released form at the convolution, "conv"); "value": the condensed set's own
DIAG_COLUMNS = (
    ("moments", "act moments gap", "gap"),
    ("gram", "act Gram gap", "gap"),
    ("moments_conv", "conv moments gap", "gap"),
    ("gram_conv", "conv Gram gap", "gap"),
    ("spread_ratio", "spread ratio", "value"),
    ("spread_loss", "L_CD", "value"),
    ("knn_kl", "kNN KL", "value"),
    ("pairwise", "pairwise", "value"),
)


def cmd_diagnose(args: argparse.Namespace) -> None:
    """``ddm diagnose`` on every selected set (cached in its diagnose.json when made with the
    same nets, batch and seed), then one table: row x iteration, mean over seeds."""
    from ddm.diagnose import diagnose

    dataset = None
    out = Path(args.out)
    want = {"nets": args.nets, "batch": args.batch, "seed": args.diag_seed}
    cells: dict = {}  # (row, iteration) -> {seed: {column: value}}
    for folder in _selected_folders(args):
        path = folder / "diagnose.json"
        rep = read_json(path) if path.exists() else None
        fresh = rep and path.stat().st_mtime >= (folder / SYNTHETIC_FILE).stat().st_mtime
        if not fresh or any(rep["meta"].get(k) != v for k, v in want.items()):
            if dataset is None:
                dataset = load_dataset(args.dataset, args.data_root)
            t0 = time.perf_counter()
            rep = diagnose(load_synthetic(folder), dataset, device=args.device, **want).to_dict()
            atomic_write_json(path, rep)
            print(f"{folder}: {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)
        row, seed = folder.relative_to(out).parts[:2]
        it = int(folder.name[2:]) if folder.name.startswith("it") else 0
        cells.setdefault((row, it), {})[int(seed[1:])] = _diag_values(rep)
    order = {r: i for i, r in enumerate(args.rows or ROWS)}
    keys = sorted(cells, key=lambda k: (order.get(k[0], len(order)), k[0], k[1]))
    names = [c[1] for c in DIAG_COLUMNS]
    lines = ["| row | iterations | " + " | ".join(names) + " | seeds |"]
    lines.append("|---|---|" + "---|" * (len(names) + 1))
    record = []
    for row, it in keys:
        per_seed = cells[(row, it)]
        means = {name: _mean_over([v[name] for v in per_seed.values()]) for name in names}
        shown = [_shown(v) for v in means.values()]
        seeds = ", ".join(map(str, sorted(per_seed)))
        lines.append(f"| {row} | {it or '-'} | " + " | ".join(shown) + f" | {seeds} |")
        record.append({"row": row, "iteration": it, "mean": means, "per_seed": per_seed})
    _publish(lines, args.results, {"setting": want, "cells": record})


def _publish(lines: list[str], results: str | None, record: dict) -> None:
    """Print the markdown table; with ``results``, write it and ``record`` (RESULTS.md/.json)."""
    text = "\n".join(lines) + "\n"
    print(text)
    if results:
        base = Path(results)
        base.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_bytes(base.with_suffix(".md"), text.encode())
        atomic_write_json(base.with_suffix(".json"), record)


def _diag_values(rep: dict) -> dict:
    """One diagnose.json -> the DIAG_COLUMNS values: a gap is a list, one ratio per layer;
    None where not measured."""
    cond, rand = rep["sets"]["condensed"], rep["sets"]["random real"]
    got = {}
    for key, name, how in DIAG_COLUMNS:
        if how == "value":
            got[name] = cond.get(key)
        elif cond.get(key) and rand.get(key):
            got[name] = [c / r if r else None for c, r in zip(cond[key], rand[key], strict=True)]
        else:
            got[name] = None
    return got


def _mean_over(values: list) -> float | list | None:
    """Mean over seeds of numbers or of per-layer lists (elementwise), skipping None."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    if isinstance(values[0], list):
        return [_mean_over(list(layer)) for layer in zip(*values, strict=True)]
    return sum(values) / len(values)


def _shown(value: float | list | None) -> str:
    if value is None:
        return "-"
    if isinstance(value, list):
        return " / ".join(_shown(v) if v is None else f"{v:.2f}" for v in value)
    return f"{value:.3g}"


def _stats(values: list[float]) -> tuple[float, float]:
    m = sum(values) / len(values)
    return m, math.sqrt(sum((v - m) ** 2 for v in values) / len(values))


def collect(
    out: Path,
    epochs: int,
    runs: int,
    eval_seed: int = 0,
    precision: str = "fp32",
    holdout: int = 0,
) -> dict:
    """{row: {iteration: {model: {seed: [accuracies]}}}} from every metrics.json under ``out``
    (the evaluations with these epochs, runs, seed and training precision, on the test split
    or, with ``holdout``, on that many held-out train images per class)."""
    table: dict = {}
    for row in sorted(p for p in out.iterdir() if p.is_dir()):
        for seed_dir in sorted(p for p in row.iterdir() if p.is_dir() and p.name.startswith("s")):
            seed = int(seed_dir.name[1:])
            places = [seed_dir, *(p for p in seed_dir.iterdir() if p.name.startswith("it"))]
            for folder in places:
                if not (folder / "metrics.json").exists():
                    continue
                it = int(folder.name[2:]) if folder.name.startswith("it") else 0
                for e in read_json(folder / "metrics.json")["evaluations"]:
                    got = (
                        e["epochs"],
                        e["runs"],
                        e.get("seed", 0),
                        entry_precision(e),
                        entry_holdout(e),
                    )
                    if got != (epochs, runs, eval_seed, precision, holdout):
                        continue
                    cell = table.setdefault(row.name, {}).setdefault(it, {})
                    cell.setdefault(e["model"], {})[seed] = e["accuracies"]
    return table


def cmd_report(args: argparse.Namespace) -> None:
    out = Path(args.out)
    table = collect(
        out,
        args.epochs,
        args.runs,
        args.eval_seed,
        _precision(args.precision, args.device),
        args.holdout,
    )
    order = [r for r in (args.rows or ROWS) if r in table] + sorted(
        r for r in table if r not in (args.rows or ROWS)
    )
    lines = []
    models = sorted({m for r in table.values() for c in r.values() for m in c})
    models = [m for m in args.models if m in models] if args.models else models
    final_it = {r: max(table[r]) for r in order}
    # rows continued to different budgets (Figure B's): say each row's iterations
    mixed = len({it for it in final_it.values() if it}) > 1  # 0: a selected set (random)
    header = "| row | " + " | ".join(models) + " | seeds |" + (" iterations |" if mixed else "")
    lines += [header, "|---|" + "---|" * (len(models) + 1 + mixed)]
    summary: dict = {}
    for r in order:
        cells, seeds = [], set()
        for m in models:
            per_seed = table[r][final_it[r]].get(m, {})
            accs = [a for s in sorted(per_seed) for a in per_seed[s]]
            seeds |= set(per_seed)
            if accs:
                mean, std = _stats(accs)
                cells.append(f"{mean:.2f} +- {std:.2f} ({len(accs)})")
                summary.setdefault(r, {})[m] = {
                    "mean": mean,
                    "std": std,
                    "n": len(accs),
                    "per_seed": {str(s): per_seed[s] for s in sorted(per_seed)},
                    "seed_means": {str(s): _stats(per_seed[s])[0] for s in sorted(per_seed)},
                    "iterations": final_it[r],
                }
            else:
                cells.append("-")
        its = f" {final_it[r] or '-'} |" if mixed else ""
        seed_list = ", ".join(map(str, sorted(seeds)))
        lines.append(f"| {r} | " + " | ".join(cells) + f" | {seed_list} |" + its)
    pairs = _pairs(table, args.pairs or [], models)
    if pairs:
        lines += [
            "",
            "| pair (B - A) | model | difference | per seed |" + (" iterations |" if mixed else ""),
            "|---|---|---|---|" + ("---|" if mixed else ""),
        ]
        for p in pairs:
            per = ", ".join(f"s{s} {d:+.2f}" for s, d in p["per_seed"].items())
            its = f" {p['iteration']} |" if mixed else ""
            lines.append(f"| {p['b']} - {p['a']} | {p['model']} | {p['mean']:+.2f} | {per} |" + its)
    by_it = _pairs_by_iteration(table, args.pairs or [], models) if args.by_iteration else []
    if by_it:
        lines += [
            "",
            "| iterations | pair (B - A) | model | A | B | difference | per seed |",
            "|---|---|---|---|---|---|---|",
        ]
        for p in by_it:
            per = ", ".join(f"s{s} {d:+.2f}" for s, d in p["per_seed"].items())
            cells = [f"{m:.2f} +- {sd:.2f} ({n})" for m, sd, n in (p["a_stats"], p["b_stats"])]
            lines.append(
                f"| {p['iteration']} | {p['b']} - {p['a']} | {p['model']} | {cells[0]} | "
                f"{cells[1]} | {p['mean']:+.2f} | {per} |"
            )
    record = {"rows": summary, "raw": _jsonable(table)}
    if pairs:
        record["pairs"] = pairs
    if by_it:
        record["pairs_by_iteration"] = by_it
    _publish(lines, args.results, record)
    if args.figure:
        _figure(table, Path(args.figure), args.base_row, models[0], args.figure_seeds, args.rows)


def _pair_specs(specs: list[str]) -> list[tuple[str, str]]:
    out = []
    for spec in specs:
        a, sep, b = spec.partition(":")
        if not sep:
            raise SystemExit(f"--pairs takes A:B (two row names), got {spec!r}")
        out.append((a, b))
    return out


def _paired(pa: dict, pb: dict) -> dict | None:
    """Two rows' accuracies per seed ({seed: [accuracies]}) -> B's seed mean minus A's per
    seed both have, their mean, and each side's mean, std and count over those seeds' models
    (the rows' same-seed sets share initial images and draws, so the pairing is by seed)."""
    seeds = sorted(set(pa) & set(pb))
    if not seeds:
        return None
    per = {str(s): _stats(pb[s])[0] - _stats(pa[s])[0] for s in seeds}
    a_stats, b_stats = (
        (*_stats(accs), len(accs))
        for accs in ([x for s in seeds for x in side[s]] for side in (pa, pb))
    )
    return {
        "mean": sum(per.values()) / len(per),
        "per_seed": per,
        "a_stats": a_stats,
        "b_stats": b_stats,
    }


def _pairs(table: dict, specs: list[str], models: list[str]) -> list[dict]:
    """``A:B`` -> B - A per condensation seed (``_paired``), at the largest iteration both rows
    have sets for: their final sets, or where one row was continued further (Figure B), the
    other's final iteration, never two different budgets. A selected set (random: iteration 0
    only) pairs with the other row's final sets."""
    pairs = []
    for a, b in _pair_specs(specs):
        ia, ib = set(table.get(a, {})), set(table.get(b, {}))
        if not ia or not ib:
            continue
        if ia == {0} or ib == {0}:
            it_a, it_b = max(ia), max(ib)
        elif ia & ib:
            it_a = it_b = max(ia & ib)
        else:
            continue
        it = max(it_a, it_b)
        for m in models:
            got = _paired(table[a][it_a].get(m, {}), table[b][it_b].get(m, {}))
            if got:
                pairs.append(
                    {
                        "a": a,
                        "b": b,
                        "model": m,
                        "iteration": it,
                        "mean": got["mean"],
                        "per_seed": got["per_seed"],
                    }
                )
    return pairs


def _pairs_by_iteration(table: dict, specs: list[str], models: list[str]) -> list[dict]:
    """``A:B`` at every iteration both rows have sets for (the snapshots of one run each):
    ``_paired`` there (Figure B's table)."""
    out = []
    for a, b in _pair_specs(specs):
        for m in models:
            for it in sorted(set(table.get(a, {})) & set(table.get(b, {}))):
                got = _paired(table[a][it].get(m, {}), table[b][it].get(m, {}))
                if got:
                    out.append({"a": a, "b": b, "model": m, "iteration": it, **got})
    return out


def _jsonable(table: dict) -> dict:
    return {
        r: {
            str(it): {m: {str(s): v for s, v in c.items()} for m, c in cell.items()}
            for it, cell in its.items()
        }
        for r, its in table.items()
    }


def _figure(
    table: dict,
    path: Path,
    base_row: str,
    model: str,
    seeds: list[int] | None = None,
    rows: list[str] | None = None,
) -> None:
    """Each row's gain over ``base_row`` against iterations (mean over seeds and models;
    ``seeds``: only those condensation seeds, so every point has the same ones; ``rows``: only
    those rows, e.g. the ones paired with ``base_row``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    def mean_at(row: str, it: int) -> tuple[float, float] | None:
        per_seed = table.get(row, {}).get(it, {}).get(model)
        if per_seed and seeds is not None:
            per_seed = {s: v for s, v in per_seed.items() if s in seeds}
        if not per_seed:
            return None
        return _stats([a for accs in per_seed.values() for a in accs])

    fig, ax = plt.subplots(figsize=(6, 4))
    for row in rows or table:
        if row in (base_row, "random") or row not in table:
            continue
        xs, ys, es = [], [], []
        for it in sorted(table[row]):
            a, b = mean_at(row, it), mean_at(base_row, it)
            if a and b:
                xs.append(it)
                ys.append(a[0] - b[0])
                es.append(math.hypot(a[1], b[1]))
        if xs:
            ax.errorbar(xs, ys, yerr=es, marker="o", capsize=3, label=row)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("condensation iterations")
    ax.set_ylabel(f"accuracy gain over {base_row} (points)")
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    print(f"wrote {path}", file=sys.stderr)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="phase", required=True)
    for phase in ("condense", "evaluate", "report", "diagnose"):
        q = sub.add_parser(phase)
        q.add_argument("--out", required=True)
        q.add_argument("--dataset", default="cifar10")
        q.add_argument(
            "--data-root", default=str(Path(__file__).resolve().parents[2] / "shared/data")
        )
        q.add_argument("--device", default="auto")
        q.add_argument("--progress", action="store_true")
        q.add_argument("--rows", nargs="*", default=None)
        q.add_argument("--epochs", type=int, default=200)
        q.add_argument("--runs", type=int, default=3)
        q.add_argument("--eval-seed", type=int, default=0)
        q.add_argument("--models", nargs="+", default=None)
        q.add_argument(
            "--precision",
            default="fp32",
            help="evaluate/report: the evaluation's training precision, auto | fp32 | bf16",
        )
        q.add_argument(
            "--holdout",
            type=int,
            default=0,
            help="train images per class held out: condense never draws them, evaluate and "
            "report test on them (tuning without the test set; use its own --out)",
        )
    c = sub.choices["condense"]
    c.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    c.add_argument("--ipc", type=int, default=10)
    c.add_argument("--iterations", type=int, default=500)
    c.add_argument("--snapshots", type=int, nargs="*", default=[])
    c.add_argument("--batch-real", type=int, default=128)
    c.add_argument(
        "--condense-precision",
        default="fp32",
        help="fp32 | bf16 | auto for every row that sets none (fp32: as docs/results were made)",
    )
    c.add_argument("--pool", default=None, help="pool folder (`ddm pool`) for the NCFM rows")
    for phase in ("evaluate", "diagnose"):
        e = sub.choices[phase]
        e.add_argument("--all-snapshots", action="store_true")
        e.add_argument("--seeds", type=int, nargs="*", default=None, help="only these seeds")
        e.add_argument("--only-iterations", type=int, nargs="*", default=None)
    d = sub.choices["diagnose"]
    d.add_argument("--nets", type=int, default=2, help="random ConvNets per set")
    d.add_argument("--batch", type=int, default=128, help="real images per class")
    d.add_argument("--diag-seed", type=int, default=0)
    d.add_argument("--results", default=None, help="path stem for .md and .json")
    r = sub.choices["report"]
    r.add_argument("--results", default=None, help="path stem for .md and .json")
    r.add_argument("--figure", default=None)
    r.add_argument(
        "--pairs",
        nargs="*",
        default=None,
        help="A:B row pairs: B - A per condensation seed (e.g. dm:dm-bf16)",
    )
    r.add_argument(
        "--by-iteration",
        action="store_true",
        help="also each --pairs difference at every iteration both rows have (snapshots)",
    )
    r.add_argument("--base-row", default="dm")
    r.add_argument("--figure-seeds", type=int, nargs="*", default=None)
    args = p.parse_args()
    if args.phase == "condense" and not args.rows:
        raise SystemExit("condense needs --rows")
    if args.phase == "evaluate" and not args.models:
        args.models = ["convnet"]
    phases = {
        "condense": cmd_condense,
        "evaluate": cmd_evaluate,
        "report": cmd_report,
        "diagnose": cmd_diagnose,
    }
    phases[args.phase](args)


if __name__ == "__main__":
    main()
