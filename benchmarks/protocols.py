"""Condensed sets under several evaluation protocols: hard and soft labels, two training
recipes, with and without augmentation, and DD-Ranking's scores.

Works on a folder made by ``benchmarks/evidence.py condense`` (``OUT/<row>/s<seed>/``, the
``random`` row being each seed's initial images, i.e. the random real subset every set of
that seed started from):

    # train every set (and the random row) under each protocol; resumable
    python benchmarks/protocols.py evaluate --out runs/ev/c10 --teacher runs/ev/pool \
        --protocols dm-hard dm-soft dm-hard-noaug ncfm-hard --epochs 300 --runs 2
    # tables (markdown + json) and the figure
    python benchmarks/protocols.py report --out runs/ev/c10 --teacher runs/ev/pool \
        --protocols dm-hard dm-soft dm-hard-noaug ncfm-hard --epochs 300 --runs 2 \
        --results benchmarks/results/protocols_cifar10 --figure docs/img/protocols_cifar10.png

A protocol is ``<recipe>-<labels>[-noaug]``: recipe a key of ``ddm.recipes`` (dm, ncfm,
ddranking), labels hard or soft (the teacher labels every augmented batch, DD-Ranking's
mode M), ``noaug`` training without any augmentation. The scores follow ``ddm.scores``
(DD-Ranking's formulas, per evaluation run, paired by run index), with the same seed's
random row as the random subset, so that IOR and ARS compare a set with the very real images
it was condensed from; HLR's full-data accuracy is the teacher's.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

from evidence import ROWS, _precision, _selected_folders, _stats

from ddm.config import EvalConfig
from ddm.data import load_dataset
from ddm.evaluate import evaluate_folder, find_evaluation
from ddm.io import load_synthetic
from ddm.scores import augmentation_robust_score, label_robust_score
from ddm.teacher import load_teacher


def parse_protocol(name: str, teacher: str | None) -> dict:
    """``dm-soft-noaug`` -> EvalConfig overrides (recipe, labels, dsa, teacher)."""
    parts = name.split("-")
    if (
        len(parts) not in (2, 3)
        or parts[1] not in ("hard", "soft")
        or parts[2:]
        not in (
            [],
            ["noaug"],
        )
    ):
        raise SystemExit(f"protocol {name!r}: expected <recipe>-<hard|soft>[-noaug]")
    out = {"recipe": parts[0], "labels": parts[1], "dsa": not parts[2:]}
    if parts[1] == "soft":
        if teacher is None:
            raise SystemExit(f"protocol {name} needs --teacher DIR")
        out["teacher"] = teacher
    return out


def _config(args: argparse.Namespace, protocol: str, precision: str) -> EvalConfig:
    return EvalConfig(
        model="convnet",
        epochs=args.epochs,
        runs=args.runs,
        seed=args.eval_seed,
        device=args.device,
        precision=precision,
        **parse_protocol(protocol, args.teacher),
    )


def _finished(args: argparse.Namespace) -> list[Path]:
    """The final sets of finished runs (a run still condensing has no snapshot folder yet)."""
    return [
        f for f in _selected_folders(args) if f.name.startswith("it") or f.parent.name == "random"
    ]


def cmd_evaluate(args: argparse.Namespace) -> None:
    dataset = load_dataset(args.dataset, args.data_root)
    precision = _precision(args.precision, args.device)
    folders = _finished(args)
    for protocol in args.protocols:
        cfg = _config(args, protocol, precision)
        for folder in folders:
            if find_evaluation(folder, cfg, precision):
                continue
            result = evaluate_folder(folder, load_synthetic(folder), dataset, cfg, args.progress)
            print(
                f"{folder.relative_to(args.out)} {protocol}: {result}", file=sys.stderr, flush=True
            )


def collect(args: argparse.Namespace) -> dict:
    """{protocol: {row: {seed: [accuracy per run]}}} for the final set of every row and seed."""
    precision = _precision(args.precision, args.device)
    table: dict = {}
    for protocol in args.protocols:
        cfg = _config(args, protocol, precision)
        for folder in _finished(args):
            row, seed = folder.relative_to(args.out).parts[:2]
            entry = find_evaluation(folder, cfg, precision)
            if entry is not None:
                cell = table.setdefault(protocol, {}).setdefault(row, {})
                cell[int(seed[1:])] = entry["accuracies"]
    return table


def _paired(per_seed: dict, base: dict) -> dict | None:
    seeds = sorted(set(per_seed) & set(base))
    if not seeds:
        return None
    diff = {s: statistics.fmean(per_seed[s]) - statistics.fmean(base[s]) for s in seeds}
    return {
        "mean": statistics.fmean(diff.values()),
        "per_seed": {str(s): d for s, d in diff.items()},
    }


def _scores(table: dict, protocol: str, row: str, full: float) -> dict | None:
    """DD-Ranking's scores of ``row`` under a labelled, augmented protocol, per seed (runs
    paired by index, as DD-Ranking pairs them), then averaged over seeds. LRS needs the
    protocol's hard-label twin; ARS its ``-noaug`` twin (left out where that was not run)."""
    recipe, labels = protocol.split("-")[:2]
    noaug = f"{recipe}-{labels}-noaug"

    def cell(p: str, r: str) -> dict:
        return table.get(p, {}).get(r, {})

    lrs_cells = [cell(f"{recipe}-hard", row), cell(protocol, row), cell(protocol, "random")]
    ars_cells = [cell(noaug, row), cell(noaug, "random")]
    seeds = sorted(set.intersection(*(set(c) for c in lrs_cells)))
    if not seeds:
        return None
    per_seed = {}
    for s in seeds:
        # ARS only for the seeds whose no-augmentation twins ran
        with_ars = all(s in c for c in ars_cells)
        values: dict[str, list[float]] = {}
        runs = zip(*(c[s] for c in lrs_cells), strict=True)
        for k, (sh, sl, rl) in enumerate(runs):
            for scale, suffix in ((1.0, ""), (0.01, "_fraction")):
                lrs = label_robust_score(full, sh, sl, rl, scale=scale)
                got = {"hlr": lrs["hlr"], "ior": lrs["ior"]} if not suffix else {}
                got[f"lrs{suffix}"] = lrs["lrs"]
                if with_ars:
                    sn, rn = ars_cells[0][s][k], ars_cells[1][s][k]
                    ars = augmentation_robust_score(sl, rl, sn, rn, scale=scale)
                    got[f"ars{suffix}"] = ars["ars"]
                for key, v in got.items():
                    values.setdefault(key, []).append(v)
        per_seed[str(s)] = {k: statistics.fmean(v) for k, v in values.items()}
    keys = {k for p in per_seed.values() for k in p}
    return {
        "mean": {
            k: statistics.fmean(p[k] for p in per_seed.values() if k in p) for k in sorted(keys)
        },
        "seeds": {k: [s for s, p in per_seed.items() if k in p] for k in sorted(keys)},
        "per_seed": per_seed,
    }


def _pools(args: argparse.Namespace) -> dict:
    """{row: the pool its sets were matched with (their meta.json "pool")}, for the NCFM rows;
    a row whose seeds used different pools is an error (its cells would mix them)."""
    out: dict = {}
    for folder in _finished(args):
        row = folder.relative_to(args.out).parts[0]
        meta = load_synthetic(folder).meta
        if "pool" not in meta:
            continue
        pool = {**meta["pool"], "method": meta["method"]}
        if out.setdefault(row, pool)["fingerprint"] != pool["fingerprint"]:
            raise SystemExit(f"row {row}: its seeds were condensed with different pools")
    return out


def cmd_report(args: argparse.Namespace) -> None:
    table = collect(args)
    full = load_teacher(args.teacher, None, "cpu").accuracy if args.teacher else None
    rows = [r for r in (args.rows or ROWS) if any(r in t for t in table.values())]
    base = args.base_row
    record: dict = {
        "protocols": {},
        "scores": {},
        "full_accuracy": full,
        "budget": {
            "epochs": args.epochs,
            "runs": args.runs,
            "eval_seed": args.eval_seed,
            "precision": _precision(args.precision, args.device),
        },
    }
    pool_file = Path(args.teacher or "") / "pool.json"
    if args.teacher and pool_file.is_file():  # the pool the NCFM rows matched with, too
        manifest = json.loads(pool_file.read_text())
        record["pool"] = {
            "recipe": manifest["recipe"],
            "networks": [
                {k: n.get(k) for k in ("index", "test_accuracy", "accuracy_by_epoch")}
                for n in manifest["networks"]
            ],
        }
    pools = _pools(args)
    if pools:
        record["pools"] = pools
    lines = [f"full real data (teacher): {full} %" if full is not None else "", ""]
    for protocol in args.protocols:
        got = table.get(protocol, {})
        lines += [f"### {protocol}", "", "| row | accuracy % | per seed | vs " + base + " |"]
        lines.append("|---|---|---|---|")
        for row in rows:
            if row not in got:
                continue
            accs = [a for s in sorted(got[row]) for a in got[row][s]]
            mean, std = _stats(accs)
            seeds = {str(s): statistics.fmean(v) for s, v in sorted(got[row].items())}
            gain = _paired(got[row], got[base]) if base in got and row != base else None
            record["protocols"].setdefault(protocol, {})[row] = {
                "mean": mean,
                "std": std,
                "n": len(accs),
                "seed_means": seeds,
                "per_seed": {str(s): v for s, v in sorted(got[row].items())},
                "gain": gain,
            }
            per = ", ".join(f"s{s} {v:.2f}" for s, v in seeds.items())
            shown = f"{gain['mean']:+.2f}" if gain else ""
            lines.append(f"| {row} | {mean:.2f} +- {std:.2f} ({len(accs)}) | {per} | {shown} |")
        lines.append("")
    if full is not None:
        for protocol in args.protocols:
            if protocol.endswith("-noaug"):
                continue
            for row in rows:
                if row == "random":
                    continue
                sc = _scores(table, protocol, row, full)
                if sc:
                    record["scores"].setdefault(protocol, {})[row] = sc
        for protocol, by_row in record["scores"].items():
            lines += [
                f"### scores, {protocol}",
                "",
                "| row | HLR | IOR | LRS | ARS | LRS (fractions) |",
            ]
            lines.append("|---|---|---|---|---|---|")
            for row, sc in by_row.items():
                m = sc["mean"]
                ars = f"{m['ars']:.4f}" if "ars" in m else "-"
                lines.append(
                    f"| {row} | {m['hlr']:.2f} | {m['ior']:.2f} | {m['lrs']:.4f} | "
                    f"{ars} | {m['lrs_fraction']:.4f} |"
                )
            lines.append("")
    text = "\n".join(lines)
    print(text)
    if args.results:
        Path(args.results).with_suffix(".md").write_text(text + "\n")
        Path(args.results).with_suffix(".json").write_text(json.dumps(record, indent=1) + "\n")
    if args.figure:
        _figure(record, args, Path(args.figure))
    if args.pool_figure and pools:
        _pool_figure(record, Path(args.pool_figure))


def _figure(record: dict, args: argparse.Namespace, path: Path) -> None:
    """Each row's gain over the base row (paired by seed) under each augmented protocol."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = [p for p in args.protocols if not p.endswith("-noaug") and p in record["protocols"]]
    rows = [r for r in (args.rows or ROWS) if r in ROWS and r not in ("random", args.base_row)]
    rows = [r for r in rows if any(r in record["protocols"][p] for p in protocols)]
    fig, ax = plt.subplots(figsize=(1.2 + 1.1 * len(rows), 3.2))
    width = 0.8 / max(len(protocols), 1)
    for i, protocol in enumerate(protocols):
        cells = record["protocols"][protocol]
        xs, ys, points = [], [], []
        for j, row in enumerate(rows):
            gain = (cells.get(row) or {}).get("gain")
            if gain:
                x = j + (i - (len(protocols) - 1) / 2) * width
                xs.append(x)
                ys.append(gain["mean"])
                points += [(x, v) for v in gain["per_seed"].values()]
        ax.bar(xs, ys, width, label=protocol)
        if points:
            ax.scatter(*zip(*points, strict=True), s=8, color="black", zorder=3)
    ax.axhline(0, color="grey", lw=0.8)
    ax.set_xticks(range(len(rows)), rows, rotation=20)
    ax.set_ylabel(f"accuracy gain over {args.base_row} (points)")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def _pool_figure(record: dict, path: Path) -> None:
    """NCFM's accuracy against the number of pool networks, one line per pool training length
    and recipe (hard labels; dots: the seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    pools = {r: p for r, p in record["pools"].items() if p["method"] == "ncfm"}
    protocols = [p for p in ("dm-hard", "ncfm-hard") if p in record["protocols"]]
    fig, ax = plt.subplots(figsize=(4.6, 3.2))
    lengths = sorted({max(p["epochs"]) for p in pools.values()})
    for protocol, marker in zip(protocols, "os", strict=False):
        for epochs in lengths:
            rows = sorted(
                (p["networks"], r) for r, p in pools.items() if max(p["epochs"]) == epochs
            )
            cells = [(n, record["protocols"][protocol].get(r)) for n, r in rows]
            cells = [(n, c) for n, c in cells if c]
            if not cells:
                continue
            line = ax.plot(
                [n for n, _ in cells],
                [c["mean"] for _, c in cells],
                marker=marker,
                label=f"{protocol.split('-')[0]} recipe, networks trained {epochs} "
                f"epoch{'s' if epochs > 1 else ''}",
            )[0]
            for n, c in cells:
                seeds = list(c["seed_means"].values())
                ax.scatter([n] * len(seeds), seeds, s=8, color=line.get_color(), alpha=0.5)
    ax.set_xlabel("networks in the pool")
    ax.set_xticks(sorted({p["networks"] for p in pools.values()}))
    ax.set_ylabel("NCFM set's test accuracy %")
    ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("phase", choices=("evaluate", "report"))
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--dataset", default="cifar10")
    p.add_argument("--data-root", default="data")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="fp32", help="auto | fp32 | bf16")
    p.add_argument("--progress", action="store_true")
    p.add_argument("--protocols", nargs="+", default=["dm-hard", "dm-soft", "dm-hard-noaug"])
    p.add_argument("--teacher", default=None, help="teacher or pool folder (soft labels, HLR)")
    p.add_argument("--rows", nargs="*", default=None)
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--eval-seed", type=int, default=0)
    p.add_argument("--base-row", default="dm")
    p.add_argument("--results", default=None, help="path stem for .md and .json")
    p.add_argument("--figure", default=None)
    p.add_argument("--pool-figure", default=None, help="NCFM accuracy against pool size")
    args = p.parse_args()
    # what evidence's folder selection reads
    args.all_snapshots, args.only_iterations = False, None
    {"evaluate": cmd_evaluate, "report": cmd_report}[args.phase](args)


if __name__ == "__main__":
    main()
