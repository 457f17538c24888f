#!/usr/bin/env bash
# Hard vs soft labels and DD-Ranking's scores (docs/guide/soft-labels.md, "Evidence") on
# CIFAR-10, ipc 10, DM and DDM sets at a reduced budget. Every step is resumable: the teacher
# keeps a checkpoint per epoch, evaluations reuse the models recorded in metrics.json.
#
# Budget (CPU, one thread): teacher ConvNet 2 epochs; condensation 200 iterations, batch_real
# 64, seed 0; evaluation ConvNet, dm recipe, 30 epochs x 1 model per training (EPOCHS, RUNS).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=${ROOT:-data}
OUT=${OUT:-runs/soft}
EPOCHS=${EPOCHS:-30}
RUNS=${RUNS:-1}
ddm() { python -m ddm --quiet "$@"; }

ddm teacher --dataset cifar10 --data-root "$ROOT" --epochs 2 --teachers-dir "$OUT/teachers"
for method in dm ddm; do
    resume=()
    if ls "$OUT/$method"/checkpoint* > /dev/null 2>&1; then resume=(--resume); fi
    ddm condense --dataset cifar10 --data-root "$ROOT" --method "$method" --ipc 10 \
        --iterations 200 --batch-real 64 --seed 0 --precision fp32 --out "$OUT/$method" \
        "${resume[@]}"
done
for labels in hard soft; do
    ddm evaluate "$OUT/dm" "$OUT/ddm" --epochs "$EPOCHS" --runs "$RUNS" --precision fp32 \
        --labels "$labels" --teachers-dir "$OUT/teachers" --scores
done
