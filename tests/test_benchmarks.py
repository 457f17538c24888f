"""The benchmark scripts keep working as the package changes (tiny CIFAR-format files)."""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks"


def _cifar(root: Path) -> Path:
    """A CIFAR-10 folder with 3 images of every class per batch file."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = [c for c in range(10) for _ in range(3)]
        data = rng.integers(0, 256, size=(30, 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({b"labels": labels, b"data": data}, f)
    return root


def _speed_one(root: Path, method: str) -> dict:
    cmd = [sys.executable, str(BENCH / "speed.py"), "--one", "--method", method]
    cmd += ["--ipc-one", "1", "--data-root", str(root), "--batch-real", "4", "--iters", "1"]
    cmd += ["--threads", "1", "--set", "model_batch=8", "--set", "model_train_steps=2"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("method", ["dm", "idm", "ddm-idm"])
def test_speed_measures_every_base(tmp_path, method):
    row = _speed_one(_cifar(tmp_path), method)
    assert row["method"] == method and row["ipc"] == 1
    assert row["sec"] > 0 and row["bare"] > 0 and row["peak_mb"] > 0
    if method == "dm":
        assert row["queue"] == 0.0
    else:  # IDM trains queue models between iterations; that time is part of the iteration
        assert 0 < row["queue"] < row["sec"]


def _compare():
    spec = importlib.util.spec_from_file_location("compare", BENCH / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_rows_parse():
    compare = _compare()
    assert compare.parse_row("ddm-idm") == ("ddm-idm", "ddm", {"base": "idm"})
    name, method, over = compare.parse_row("q=idm:model_batch=64,ce_weight=0.5,dsa=false")
    assert (name, method) == ("q", "idm")
    assert over == {"model_batch": 64, "ce_weight": 0.5, "dsa": False}
    with pytest.raises(SystemExit, match="unknown row"):
        compare.parse_row("nope")
