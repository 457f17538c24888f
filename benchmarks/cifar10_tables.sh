#!/usr/bin/env bash
# The CIFAR-10 / Tiny-ImageNet result tables (docs/results/idm.md), at the reduced CPU budgets
# stated there. Each compare.py call reuses finished rows, so rerunning continues an interrupted
# job; the two processes per table are independent halves run side by side (one per core).
#
#   benchmarks/cifar10_tables.sh            # data from $DATA_ROOT (default ./data)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
ROOT=${DATA_ROOT:-data}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE

# DM vs random vs herding, and the DDM ablation (ipc 10, 200 iterations,
# batch_real 64; evaluation ConvNet 200 epochs x 3 models)
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10 --table runs/c10/table_a.md \
    --rows random dm herding dm+style &
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10 --table runs/c10/table_b.md \
    --rows ddm dm+mm dm+cm dm+icd &
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10 --table runs/c10/table_sweep.md \
    --rows "ddm-style1e3=ddm:form=paper,w_mm=1000.0,w_cm=1000.0" "ddm-icd-nograd=ddm:form=paper,icd_neighbour_grad=false" &
wait
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10 \
    --rows random herding dm dm+mm dm+cm dm+style dm+icd ddm ddm-style1e3=ddm:form=paper,w_mm=1000.0,w_cm=1000.0 \
    ddm-icd-nograd=ddm:form=paper,icd_neighbour_grad=false

# IDM and DDM on IDM at the ablation's budget (ipc 10), IDM's queue training reduced to
# 5 steps of 64 images (the reference: 10 x 256; on a CPU that is ~80% of an IDM iteration)
IDM_CPU="model_batch=64,model_train_steps=5"
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10 --table runs/c10/table_idm.md \
    --rows "idm=idm:$IDM_CPU" &
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10 --table runs/c10/table_ddmidm.md \
    --rows "ddm-idm=ddm:form=paper,base=idm,$IDM_CPU" &
wait
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10 \
    --rows random herding dm dm+mm dm+cm dm+style dm+icd ddm ddm-style1e3=ddm:form=paper,w_mm=1000.0,w_cm=1000.0 \
    ddm-icd-nograd=ddm:form=paper,icd_neighbour_grad=false "idm=idm:$IDM_CPU" "ddm-idm=ddm:form=paper,base=idm,$IDM_CPU"

# DM, DDM, IDM, DDM on IDM (ipc 1, 100 iterations, IDM queue training reduced to
# 5 steps of 64 images; evaluation 200 epochs x 3 models)
$PY benchmarks/compare.py --data-root "$ROOT" --out runs/c10-ipc1 --ipc 1 --iterations 100 \
    --rows random dm ddm "idm=idm:$IDM_CPU" "ddm-idm=ddm:form=paper,base=idm,$IDM_CPU"

# The 64x64 path on real images (10-class Tiny-ImageNet subset, ConvNet depth 4)
$PY benchmarks/compare.py --data-root "$ROOT" --dataset tiny-imagenet --out runs/tiny --ipc 1 \
    --iterations 50 --epochs 100 --rows random dm "idm=idm:$IDM_CPU"
