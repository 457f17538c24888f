#!/usr/bin/env bash
# DDM vs DM on CIFAR-10 (docs/results/ddm-vs-dm.md): two lanes, one
# per condensation seed, one thread each, side by side. Every step is resumable/cached, so
# rerunning continues where it stopped.
#
# Budget (CPU): condensation 500 iterations, batch_real 128, seeds 0 and 1, snapshots of each
# set at 100 and 300 iterations; evaluation ConvNet 200 epochs x 3 models per set (6 per row).
#
#   benchmarks/ddm_evidence.sh                # Table A rows + Figure B snapshots
#   ROWS_EXTRA="idm ddm-idm" benchmarks/ddm_evidence.sh   # the IDM rows too
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lane.sh
source benchmarks/lane.sh
OUT=${OUT:-runs/ev/a}
COMMON=(--out "$OUT" --data-root "$ROOT")

lane() {  # one condensation seed: condense and evaluate each row in priority order
    local seed=$1 wait_pid=${2:-}
    wait_for "$wait_pid"  # a job already condensing this seed's folders
    for row in random dm ddm ddm-paper style ${ROWS_EXTRA:-}; do
        $EV condense "${COMMON[@]}" --rows "$row" --seeds "$seed" --iterations 500 \
            --snapshots 100 300 --batch-real 128
        $EV evaluate "${COMMON[@]}" --rows "$row" --seeds "$seed" --epochs 200 --runs 3
    done
    # Figure B: the snapshots
    $EV evaluate "${COMMON[@]}" --rows dm ddm ddm-paper style --seeds "$seed" --all-snapshots \
        --only-iterations 100 300 --epochs 200 --runs 3
}

lane 0 "${WAIT_PID0:-}" > "$OUT.lane0.log" 2>&1 &
lane 1 "${WAIT_PID1:-}" > "$OUT.lane1.log" 2>&1 &
wait
$EV report --out "$OUT" --epochs 200 --runs 3 --results benchmarks/results/table_a \
    --figure docs/img/ddm_gain_vs_iterations.png
