#!/usr/bin/env bash
# Wall time of one fixed job on 1 process vs N processes (torchrun, gloo), one thread each:
# CIFAR-10 ipc 10, DM, 20 iterations (docs/performance.md, 'Several processes'). Runs sequentially.
#   benchmarks/scaling.sh [DATA_ROOT] [OUT] [N]
set -euo pipefail
ROOT=${1:-data}
OUT=${2:-runs/scaling}
N=${3:-2}
PY=${PYTHON:-python}
export OMP_NUM_THREADS=1
JOB=(condense --dataset cifar10 --data-root "$ROOT" --ipc 10 --method dm --iterations 20)
mkdir -p "$OUT"
t0=$(date +%s.%N)
"$PY" -m ddm --quiet "${JOB[@]}" --out "$OUT/procs-1" --overwrite
t1=$(date +%s.%N)
"$PY" -m torch.distributed.run --nproc-per-node "$N" -m ddm --quiet "${JOB[@]}" \
    --out "$OUT/procs-$N" --overwrite
t2=$(date +%s.%N)
"$PY" - "$OUT" "$N" "$t0" "$t1" "$t2" <<'PY'
import csv, sys
from safetensors.torch import load_file
out, n, t0, t1, t2 = sys.argv[1], sys.argv[2], *map(float, sys.argv[3:])
def per_it(folder):
    with open(f"{folder}/log.csv") as f:
        rows = list(csv.DictReader(f))
    return sum(float(r["seconds"]) for r in rows) / len(rows)
a = load_file(f"{out}/procs-1/synthetic.safetensors")["images"]
b = load_file(f"{out}/procs-{n}/synthetic.safetensors")["images"]
print("| processes x threads | wall time (s) | s / iteration (rank 0's log) |")
print("|---|---|---|")
print(f"| 1 x 1 | {t1 - t0:.1f} | {per_it(f'{out}/procs-1'):.2f} |")
print(f"| {n} x 1 | {t2 - t1:.1f} | {per_it(f'{out}/procs-{n}'):.2f} |")
print(f"max |difference| of the two sets: {(a - b).abs().max().item():.3g}")
PY
