#!/usr/bin/env bash
# The precision quality check: sets condensed under bf16 autocast against float32 (same seed,
# budget and initial images), DM and both DDM forms, all scored by the same float32 evaluation.
# Condensation defaults to `--precision auto` because every pair scored within 0.5 points at
# Table A's budget (docs/results/precision.md).
#
# Budget (CPU): CIFAR-10 ipc 10, 200 iterations, batch_real 128, seed 0; ConvNet 200 epochs x 3
# models per set. Two lanes of one thread each (DM pair, DDM pair); resumable, cached. The
# report goes to OUT/precision_quality.{md,json}; the published one (500 iterations, seeds 0 and 1)
# came from Table A's folder: benchmarks/results/precision_quality.{md,json}.
#
#   benchmarks/precision_quality.sh
#   ITERS=500 SEEDS="0 1" benchmarks/precision_quality.sh     # a larger budget
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lane.sh
source benchmarks/lane.sh
OUT=${OUT:-runs/ev/prec}
ITERS=${ITERS:-200}
SEEDS=${SEEDS:-0}
C=(--out "$OUT" --data-root "$ROOT")
mkdir -p "$OUT"

lane() {  # rows in order: condense (seeds), then evaluate in float32
    local wait_pid=$1
    shift
    wait_for "$wait_pid"
    for row in "$@"; do
        # shellcheck disable=SC2086
        $EV condense "${C[@]}" --rows "$row" --seeds $SEEDS --iterations "$ITERS" --batch-real 128
        $EV evaluate "${C[@]}" --rows "${row%%=*}" --epochs 200 --runs 3 --precision fp32
    done
}

lane "${WAIT_PID0:-}" dm dm-bf16=dm:precision=bf16 \
    ddm-paper ddm-paper-bf16=ddm:form=paper,precision=bf16 > "$OUT.lane0.log" 2>&1 &
lane "${WAIT_PID1:-}" ddm ddm-bf16=ddm:form=released,precision=bf16 > "$OUT.lane1.log" 2>&1 &
wait
$EV report "${C[@]}" --epochs 200 --runs 3 --precision fp32 \
    --pairs dm:dm-bf16 ddm:ddm-bf16 ddm-paper:ddm-paper-bf16 --results "$OUT/precision_quality"
