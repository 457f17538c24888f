#!/usr/bin/env bash
# Table D: Table A's ipc-10 sets of DM, paper-form DDM and released DDM trained with
# other architectures (the ConvNet column is Table A's).
#
# Budget (CPU): the 500-iteration sets of runs/ev/a (benchmarks/ddm_evidence.sh), seeds 0
# and 1; 200 epochs, 1 model per architecture and set (so 2 per cell, 6 per row), trained
# under bf16 autocast (every row alike; ResNet18 is 11x a ConvNet's FLOPs). Two lanes of one
# thread each; resumable, cached (a larger RUNS reuses the models a set already has).
#
#   benchmarks/ddm_cross_arch.sh
#   SEEDS=0 benchmarks/ddm_cross_arch.sh                       # seed 0 only (the first table)
#   RUNS=3 PRECISION=fp32 benchmarks/ddm_cross_arch.sh         # a larger budget
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lane.sh
source benchmarks/lane.sh
OUT=${OUT:-runs/ev/a}
SEEDS=${SEEDS:-0 1}
RUNS=${RUNS:-1}
PRECISION=${PRECISION:-bf16}
C=(--out "$OUT" --data-root "$ROOT")
E=(--epochs 200 --runs "$RUNS" --precision "$PRECISION")

lane() {  # items MODEL:ROW[,ROW...] in order
    local wait_pid=$1
    shift
    wait_for "$wait_pid"
    for item in "$@"; do
        # shellcheck disable=SC2086
        $EV evaluate "${C[@]}" "${E[@]}" --seeds $SEEDS --models "${item%%:*}" \
            --rows ${item#*:}
    done
}

ALL="dm ddm-paper ddm"
lane "${WAIT_PID0:-}" "vgg11:$ALL" "resnet18:dm" "alexnet:$ALL" > "$OUT.tabled.lane0.log" 2>&1 &
lane "${WAIT_PID1:-}" "resnet18:ddm-paper ddm" > "$OUT.tabled.lane1.log" 2>&1 &
wait
$EV report "${C[@]}" --rows $ALL --models vgg11 resnet18 alexnet --epochs 200 \
    --runs "$RUNS" --precision "$PRECISION" --results benchmarks/results/table_d
