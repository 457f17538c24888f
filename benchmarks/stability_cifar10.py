"""CIFAR-10 evidence for the released form's scale-free Gram distance (docs/guide/stability.md).

Reads the released form's new runs (``evidence.py`` folders, row ``ddm``, condensed with the
current defaults) and the published-form rows of ``benchmarks/results/figure_b.json`` (DM
and the released form with the published Gram distance, same seeds, iterations, batch_real
and evaluation protocol) and writes the comparison as JSON and Markdown. Evaluations not
finished yet are left out and named.

    python benchmarks/stability_cifar10.py --out runs/stab \\
        --results benchmarks/results/stability_cifar10
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from ddm.evaluate import METRICS_FILE

PROTOCOL = {"model": "convnet", "epochs": 200, "runs": 3}
CONDENSE = (
    "python benchmarks/evidence.py condense --out {out} --data-root DATA --rows ddm "
    "--seeds {seed} --iterations 500 --snapshots 100 --batch-real 128"
)
EVALUATE = (
    "python benchmarks/evidence.py evaluate --out {out} --data-root DATA --rows ddm "
    "--seeds {seed} --all-snapshots --epochs 200 --runs 3"
)


def _accuracies(folder: Path) -> list[float] | None:
    path = folder / METRICS_FILE
    if not path.exists():
        return None
    for entry in json.loads(path.read_text()).get("evaluations", []):
        if all(entry.get(k) == v for k, v in PROTOCOL.items() if k in entry):
            return list(entry["accuracies"])
    return None


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="runs/stab")
    p.add_argument("--reference", default="benchmarks/results/figure_b.json")
    p.add_argument("--results", default="benchmarks/results/stability_cifar10")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    p.add_argument("--iterations", type=int, nargs="+", default=[100, 500])
    args = p.parse_args()
    raw = json.loads(Path(args.reference).read_text())["raw"]
    rows, missing = [], []
    for it in args.iterations:
        for seed in args.seeds:
            folder = Path(args.out) / "ddm" / f"s{seed}" / f"it{it}"
            new = _accuracies(folder)
            if new is None:
                missing.append(f"{it} iterations, seed {seed}")
                continue
            dm = raw["dm"][str(it)]["convnet"][str(seed)]
            old = raw["ddm"][str(it)]["convnet"][str(seed)]
            rows.append(
                {
                    "iterations": it,
                    "seed": seed,
                    "dm": dm,
                    "released_published": old,
                    "released_cosine": new,
                    "gain_published": float(np.mean(old) - np.mean(dm)),
                    "gain_cosine": float(np.mean(new) - np.mean(dm)),
                }
            )
    out = Path(args.results)
    result = {
        "what": "CIFAR-10 ipc 10, ConvNet: the released form with the scale-free Gram "
        "distance (correlation cosine, w_cm 1e3; the new default) against DM and the "
        "released form with the published distance (correlation sum, w_cm 1e4), "
        "from benchmarks/results/figure_b.json",
        "budget": "condensation 500 iterations (snapshot at 100), batch_real 128, fp32, "
        "seeds 0 and 1, one thread; evaluation ConvNet 200 epochs x 3 models per set",
        "commands": [CONDENSE.format(out=args.out, seed=s) for s in args.seeds]
        + [EVALUATE.format(out=args.out, seed=s) for s in args.seeds],
        "rows": rows,
        "not_finished": missing,
    }
    out.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    lines = [
        "# CIFAR-10: the released form's scale-free Gram distance",
        "",
        result["what"] + ".",
        "",
        f"Budget: {result['budget']}.",
        "",
        "| iterations | seed | DM | released, published Gram | released, cosine Gram "
        "| gain over DM: published | gain over DM: cosine |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['iterations']} | {r['seed']} | {np.mean(r['dm']):.2f} | "
            f"{np.mean(r['released_published']):.2f} | {np.mean(r['released_cosine']):.2f} | "
            f"{r['gain_published']:+.2f} | {r['gain_cosine']:+.2f} |"
        )
    for it in sorted({r["iterations"] for r in rows}):
        done = [r for r in rows if r["iterations"] == it]
        pub = np.mean([r["gain_published"] for r in done])
        cos = np.mean([r["gain_cosine"] for r in done])
        lines.append(f"| {it} | mean of {len(done)} | | | | {pub:+.2f} | {cos:+.2f} |")
    if missing:
        lines += ["", "Not finished: " + "; ".join(missing) + ". To finish:", ""]
        lines += [f"    {c}" for c in result["commands"]]
    else:
        lines += ["", "Commands:", ""] + [f"    {c}" for c in result["commands"]]
    out.with_suffix(".md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
