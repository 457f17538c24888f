# Sourced by the evidence scripts (after `cd` to the repository root): the interpreter, the
# data folder, one thread per job, the evidence command, and `wait_for PID` (start a job only
# after another one in its lane has ended; no PID: at once).
# shellcheck shell=bash
PY=${PY:-.venv/bin/python}
ROOT=${DATA_ROOT:-data}
export OMP_NUM_THREADS=1 OMP_WAIT_POLICY=PASSIVE
EV="$PY benchmarks/evidence.py"

wait_for() {
    if [ -n "${1:-}" ]; then
        while kill -0 "$1" 2>/dev/null; do sleep 15; done
    fi
}
