#!/usr/bin/env bash
# Figure B under the evaluation protocol's training length (docs/method.md, 'Evaluation protocol':
# 1,000 epochs, lr x 0.1 at half) instead of the reduced 200 epochs of Tables A-D.
#
# Evaluates the sets that benchmarks/ddm_longer.sh left in OUT (runs/ev/b) at ITERS with
# ConvNet, 1,000 epochs x RUNS models per set (float32), and reports each row and each form's
# gain over DM, paired by condensation seed. Evaluations are cached per set (metrics.json), so
# a model already trained is not trained again; one thread; resumable (run it again).
#
#   benchmarks/ddm_protocol.sh                          # sets at 2000 iterations, 3 models each
#   SEEDS=1 benchmarks/ddm_protocol.sh                  # one lane per seed (then report again)
#   ITERS="500 2000" benchmarks/ddm_protocol.sh         # also the 500-iteration sets
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=benchmarks/lane.sh
source benchmarks/lane.sh
OUT=${OUT:-runs/ev/b}
SEEDS=${SEEDS:-0 1}
ROWS=${ROWS:-dm ddm ddm-paper}
ITERS=${ITERS:-2000}
RUNS=${RUNS:-3}
EPOCHS=${EPOCHS:-1000}
RESULTS=${RESULTS:-benchmarks/results/figure_b_protocol}
C=(--out "$OUT" --data-root "$ROOT")
wait_for "${WAIT_PID:-}"
# shellcheck disable=SC2086
for seed in $SEEDS; do
    $EV evaluate "${C[@]}" --rows $ROWS --seeds "$seed" --all-snapshots --only-iterations $ITERS \
        --epochs "$EPOCHS" --runs "$RUNS"
done
# shellcheck disable=SC2086
$EV report "${C[@]}" --rows dm ddm-paper ddm --epochs "$EPOCHS" --runs "$RUNS" \
    --pairs dm:ddm-paper dm:ddm --by-iteration --results "$RESULTS"
