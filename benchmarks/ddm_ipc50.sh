#!/usr/bin/env bash
# Table C: ipc 50 at a short budget -- DM, paper-form DDM, released DDM.
#
# Budget (CPU): CIFAR-10 ipc 50, 200 iterations, batch_real 128, seeds 0 and 1, condensed under
# bf16 autocast (every row alike; bf16 sets scored within 0.5 points of float32 ones at ipc 10);
# ConvNet 200 epochs x 3 models per set (6 per row), trained in float32. One lane of one
# thread (a 500-image set trains 5x as long per epoch as Table A's); resumable, cached: a set's
# models are reused, so RUNS=5 after RUNS=3 trains only the fourth and fifth of each set.
#
#   benchmarks/ddm_ipc50.sh
#   OUT=runs/ev/c500 ITERS=500 RUNS=5 PRECISION=fp32 benchmarks/ddm_ipc50.sh  # larger budget
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lane.sh
source benchmarks/lane.sh
OUT=${OUT:-runs/ev/c}
SEEDS=${SEEDS:-0 1}
ITERS=${ITERS:-200}
PRECISION=${PRECISION:-bf16}
RUNS=${RUNS:-3}
C=(--out "$OUT" --data-root "$ROOT")
mkdir -p "$OUT"
wait_for "${WAIT_PID:-}"
for row in "dm=dm:precision=$PRECISION" "ddm-paper=ddm:form=paper,precision=$PRECISION" \
    "ddm=ddm:form=released,precision=$PRECISION"; do
    # shellcheck disable=SC2086
    $EV condense "${C[@]}" --rows "$row" --seeds $SEEDS --ipc 50 --iterations "$ITERS" \
        --batch-real 128
done
for row in dm ddm-paper ddm; do
    $EV evaluate "${C[@]}" --rows "$row" --epochs 200 --runs "$RUNS" --precision fp32
done
$EV report "${C[@]}" --rows dm ddm-paper ddm --epochs 200 --runs "$RUNS" --precision fp32 \
    --pairs dm:ddm-paper dm:ddm --results benchmarks/results/table_c
