#!/usr/bin/env bash
# Figure B past Table A's budget: does the gain over DM grow with the iterations?
#
# Copies Table A's DM, paper-DDM and released-DDM runs (runs/ev/a, 500 iterations) into OUT
# (runs/ev/b; Table A itself stays at 500) and continues them to ITERS iterations, keeping the
# sets at 100 / 300 / 500 (with their evaluations). Every draw of the loop is keyed by (seed,
# iteration, class) and the learning rate is constant, so a continued run ends exactly where an
# uninterrupted ITERS-iteration run ends (tests/test_condense.py). Then each set at ITERS is
# evaluated as in Table A (ConvNet, 200 epochs x 3 models, float32) and the gains are reported
# at every iteration, paired by seed. One thread; resumable (run it again to continue).
#
#   benchmarks/ddm_longer.sh                       # 1000 iterations, seeds 0 and 1
#   ROWS="dm ddm" ITERS=2000 benchmarks/ddm_longer.sh   # then DM and released DDM to 2000
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lane.sh
source benchmarks/lane.sh
FROM=${FROM:-runs/ev/a}
OUT=${OUT:-runs/ev/b}
SEEDS=${SEEDS:-0 1}
FIGURE_SEEDS=${FIGURE_SEEDS:-0 1}  # the figure pairs these seeds (a lane running one seed still draws both)
ROWS=${ROWS:-dm ddm ddm-paper}
ITERS=${ITERS:-1000}
C=(--out "$OUT" --data-root "$ROOT")
wait_for "${WAIT_PID:-}"
for seed in $SEEDS; do
    for row in $ROWS; do
        if [ ! -e "$OUT/$row/s$seed" ]; then
            if [ ! -e "$FROM/$row/s$seed/checkpoint.safetensors" ]; then
                echo "no run $FROM/$row/s$seed to continue: make Table A first" \
                    "(benchmarks/ddm_evidence.sh)" >&2
                exit 1
            fi
            mkdir -p "$OUT/$row"
            cp -a "$FROM/$row/s$seed" "$OUT/$row/s$seed.part"
            mv "$OUT/$row/s$seed.part" "$OUT/$row/s$seed"
        fi
        $EV condense "${C[@]}" --rows "$row" --seeds "$seed" --iterations "$ITERS" \
            --snapshots 100 300 500 --batch-real 128
        $EV evaluate "${C[@]}" --rows "$row" --seeds "$seed" --epochs 200 --runs 3
    done
done
# every row OUT has (one continued further than another is paired at the budget both have)
# shellcheck disable=SC2086
$EV report "${C[@]}" --rows dm ddm-paper ddm --epochs 200 --runs 3 --pairs dm:ddm-paper dm:ddm \
    --by-iteration --results benchmarks/results/figure_b \
    --figure docs/img/ddm_gain_vs_iterations_long.png --figure-seeds $FIGURE_SEEDS
