#!/usr/bin/env bash
# Class-incremental CIFAR-10 with condensed memories (docs/method.md, 'Continual learning', the
# quick protocol) at a reduced CPU budget: 5 steps of 2 new classes, a memory of 10 images per
# class (random subset, DM, DDM, IDM), 100 condensation iterations per step with 64 real images
# per class, 2 class orders x 2 fresh ConvNets per step trained 60 epochs (about 1.5 h on 2 CPU
# cores, plus about 1.5 h for IDM).
# Closer to the paper: --iterations 20000 --batch-real 256 --orders 5 --runs 3 --epochs 1000.
# One run folder per method in runs/continual/<method>, then runs/continual/continual.png.
#
# Resumable: finished (order, step) pairs and condensed steps are kept, so rerunning the same
# command continues an interrupted benchmark.
#
#   benchmarks/continual_cifar10.sh                       # CIFAR-10 under DATA
#   DATA_ROOT=~/data benchmarks/continual_cifar10.sh --device cuda   # extra flags: every run
set -euo pipefail
cd "$(dirname "$0")/.."

DATA_ROOT="${DATA_ROOT:-data}"
OUT="${OUT:-runs/continual}"
METHODS=(random dm ddm idm)

if command -v ddm >/dev/null 2>&1; then
    DDM=ddm
elif [[ -x .venv/bin/ddm ]]; then
    DDM=.venv/bin/ddm
else
    echo "continual_cifar10.sh: no ddm on PATH and no .venv/bin/ddm; pip install -e . first" >&2
    exit 2
fi

for method in "${METHODS[@]}"; do
    echo "== continual CIFAR-10: $method =="
    extra=()
    if [[ $method == idm ]]; then  # IDM's queue training reduced as in the IDM rows of docs/results
        extra=(--set model_batch=64 --set model_train_steps=5)
    elif [[ $method == ddm ]]; then  # the published DDM row is the paper form
        extra=(--form paper)
    fi
    "$DDM" continual \
        --dataset cifar10 --data-root "$DATA_ROOT" \
        --method "$method" --steps 5 --ipc 10 \
        --iterations 100 --batch-real 64 \
        --orders 2 --runs 2 --epochs 60 \
        --set precision=fp32 --eval-precision fp32 \
        --out "$OUT/$method" "${extra[@]}" "$@"
done

"$DDM" continual-plot "${METHODS[@]/#/$OUT/}" --out "$OUT/continual.png"
