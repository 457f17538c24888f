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
import torch

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


def test_speed_times_an_ncfm_iteration(tmp_path):
    from ddm.pool import PoolConfig, train_pool

    root = _cifar(tmp_path)
    cfg = PoolConfig(dataset="cifar10", data_root=str(root), networks=1, epochs=1)
    train_pool(cfg, tmp_path / "pool", progress=False)
    cmd = [sys.executable, str(BENCH / "speed.py"), "--one", "--method", "ncfm"]
    cmd += ["--ipc-one", "1", "--data-root", str(root), "--batch-real", "4", "--iters", "1"]
    cmd += ["--threads", "1", "--set", "num_freqs=32", "--pool", str(tmp_path / "pool")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["method"] == "ncfm" and row["sec"] > 0 and row["bare"] > 0


def _compare():
    spec = importlib.util.spec_from_file_location("compare", BENCH / "compare.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_compare_rows_parse():
    compare = _compare()
    assert compare.parse_row("ddm-idm") == ("ddm-idm", "ddm", {"form": "paper", "base": "idm"})
    name, method, over = compare.parse_row("q=idm:model_batch=64,ce_weight=0.5,dsa=false")
    assert (name, method) == ("q", "idm")
    assert over == {"model_batch": 64, "ce_weight": 0.5, "dsa": False}
    with pytest.raises(SystemExit, match="unknown row"):
        compare.parse_row("nope")


def test_speed_paired_times_forms_in_one_process(tmp_path):
    cmd = [sys.executable, str(BENCH / "speed.py"), "--paired", "--ipc", "2", "--iters", "1"]
    cmd += ["--methods", "dm", "ddm-paper", "ddm-released", "--batch-real", "4", "--threads", "1"]
    cmd += ["--data-root", str(_cifar(tmp_path))]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    lines = [
        ln for ln in out.stdout.splitlines() if ln.startswith("| ddm") or ln.startswith("| dm")
    ]
    assert [ln.split("|")[1].strip() for ln in lines] == ["dm", "ddm-paper", "ddm-released"]
    assert lines[0].split("|")[4].strip() == "1.00x"
    assert "matmul peak" in out.stdout
    gflop = [float(ln.split("|")[5]) for ln in lines]  # counted FLOPs: DDM adds its Grams
    assert gflop[1] > gflop[0] and gflop[2] > gflop[0]


def test_speed_paired_precisions_and_eval(tmp_path):
    root = str(_cifar(tmp_path))
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, str(BENCH / "speed.py"), "--ipc", "1", "--threads", "1"]
    cmd += ["--data-root", root, "--precision", "fp32", "bf16"]
    paired = cmd + ["--paired", "--methods", "dm", "--batch-real", "4", "--iters", "1"]
    out = subprocess.run(paired, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [ln.split("|")[2].strip() for ln in out.stdout.splitlines() if ln.startswith("| dm")]
    assert rows == ["fp32", "bf16"]
    evals = cmd + ["--eval", "--eval-epochs", "1", "--eval-models", "convnet", "alexnet"]
    out = subprocess.run(evals, capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [
        tuple(c.strip() for c in ln.split("|")[1:3])
        for ln in out.stdout.splitlines()
        if ln.startswith(("| convnet", "| alexnet"))
    ]
    assert rows == [
        ("convnet", "fp32"),
        ("convnet", "bf16"),
        ("alexnet", "fp32"),
        ("alexnet", "bf16"),
    ]


def test_evidence_condense_snapshots_evaluate_report(tmp_path):
    """The evidence pipeline end to end on tiny CIFAR-format files: snapshots are the run's
    state at those iterations, every set gets evaluated, the report finds every row."""
    root, out = _cifar(tmp_path), tmp_path / "ev"
    ev = [sys.executable, str(BENCH / "evidence.py")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    common = ["--out", str(out), "--data-root", str(root)]

    def run(*args):
        res = subprocess.run(
            [*ev, *args], capture_output=True, text=True, env=env, timeout=600, check=False
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    run(
        "condense",
        *common,
        "--rows",
        "random",
        "dm",
        "ddm",
        "--seeds",
        "0",
        "1",
        "--ipc",
        "1",
        "--iterations",
        "3",
        "--snapshots",
        "1",
        "--batch-real",
        "4",
    )
    from ddm.io import load_synthetic, read_json

    for row in ("dm", "ddm"):
        for seed in (0, 1):
            folder = out / row / f"s{seed}"
            assert read_json(folder / "it1" / "meta.json")["iterations"] == 1
            final = load_synthetic(folder / "it3")
            assert torch.equal(final.images, load_synthetic(folder).images)
            assert not torch.equal(final.images, load_synthetic(folder / "it1").images)
    run("evaluate", *common, "--all-snapshots", "--epochs", "2", "--runs", "2")
    table = run(
        "report",
        *common,
        "--epochs",
        "2",
        "--runs",
        "2",
        "--results",
        str(tmp_path / "res" / "a"),
        "--figure",
        str(tmp_path / "b.png"),
    )
    for row in ("random", "dm", "ddm"):
        assert f"| {row} |" in table
    summary = read_json(tmp_path / "res" / "a.json")["rows"]
    assert summary["dm"]["convnet"]["n"] == 4 and summary["dm"]["convnet"]["iterations"] == 3
    assert set(summary["ddm"]["convnet"]["per_seed"]) == {"0", "1"}
    assert (tmp_path / "b.png").stat().st_size > 1000
    # a bf16 evaluation of one set is kept beside the float32 ones and reported on its own
    budget = ["--epochs", "2", "--runs", "2"]
    run("evaluate", *common, *budget, "--rows", "dm", "--seeds", "0", "--precision", "bf16")
    bf16 = run("report", *common, *budget, "--precision", "bf16", "--results", str(tmp_path / "b"))
    assert "| dm |" in bf16 and "| ddm |" not in bf16
    assert read_json(tmp_path / "b.json")["rows"]["dm"]["convnet"]["n"] == 2
    assert run("report", *common, *budget) == table
    p1 = tmp_path / "p"
    paired = run("report", *common, *budget, "--pairs", "dm:ddm", "--results", str(p1))
    pair = read_json(tmp_path / "p.json")["pairs"][0]
    assert (pair["a"], pair["b"], set(pair["per_seed"])) == ("dm", "ddm", {"0", "1"})
    seed_means = {r: summary[r]["convnet"]["seed_means"] for r in ("dm", "ddm")}
    for s in ("0", "1"):
        assert pair["per_seed"][s] == pytest.approx(seed_means["ddm"][s] - seed_means["dm"][s])
    assert pair["mean"] == pytest.approx(sum(pair["per_seed"].values()) / 2)
    assert f"| ddm - dm | convnet | {pair['mean']:+.2f} |" in paired
    # the same pair at every snapshot (Figure B's table), from the raw accuracies
    run("report", *common, *budget, "--pairs", "dm:ddm", "--by-iteration", "--results", str(p1))
    by_it = read_json(p1.with_suffix(".json"))["pairs_by_iteration"]
    both = {"0", "1"}
    assert [(d["iteration"], set(d["per_seed"])) for d in by_it] == [(1, both), (3, both)]
    raw = read_json(tmp_path / "res" / "a.json")["raw"]
    for d in by_it:
        it = str(d["iteration"])
        for s in ("0", "1"):
            dm, ddm = raw["dm"][it]["convnet"][s], raw["ddm"][it]["convnet"][s]
            assert d["per_seed"][s] == pytest.approx(sum(ddm) / 2 - sum(dm) / 2)
        assert d["a_stats"][2] == d["b_stats"][2] == 4
    assert by_it[1]["mean"] == pytest.approx(pair["mean"])  # the final iteration: --pairs' value
    # ddm_protocol.sh: a third model per set at one iteration, the first two reused
    stamp = (out / "dm" / "s0" / "it3" / "metrics.json").read_text()
    proto = {"PY": sys.executable, "DATA_ROOT": str(root), "OUT": str(out), "ROWS": "dm ddm"}
    proto |= {"ITERS": "3", "EPOCHS": "2", "RUNS": "3", "RESULTS": str(tmp_path / "proto")}
    res = subprocess.run(
        ["bash", str(BENCH / "ddm_protocol.sh")],
        capture_output=True,
        text=True,
        env={**env, **proto},
        timeout=600,
        check=False,
    )
    assert res.returncode == 0, res.stderr[-2000:]
    got = read_json(tmp_path / "proto.json")
    dm = got["rows"]["dm"]["convnet"]
    assert dm["n"] == 6 and dm["iterations"] == 3
    three = dm["per_seed"]["0"]
    assert three[:2] == raw["dm"]["3"]["convnet"]["0"]  # the two trained before, reused
    assert stamp != (out / "dm" / "s0" / "it3" / "metrics.json").read_text()
    assert [(d["a"], d["b"], d["iteration"]) for d in got["pairs"]] == [("dm", "ddm", 3)]
    # style gaps and spread of every snapshot, cached in each set's diagnose.json
    diag = ["diagnose", *common, "--all-snapshots", "--rows", "dm", "ddm", "--nets", "1"]
    diag += ["--batch", "3", "--results", str(tmp_path / "d")]
    text = run(*diag)
    cells = read_json(tmp_path / "d.json")["cells"]
    assert [(c["row"], c["iteration"]) for c in cells] == [
        ("dm", 1),
        ("dm", 3),
        ("ddm", 1),
        ("ddm", 3),
    ]
    rep = read_json(out / "dm" / "s1" / "it3" / "diagnose.json")
    assert rep["meta"]["nets"] == 1 and rep["meta"]["batch"] == 3
    cond, rand = rep["sets"]["condensed"], rep["sets"]["random real"]
    gap = [c / r for c, r in zip(cond["moments_conv"], rand["moments_conv"], strict=True)]
    assert cells[1]["per_seed"]["1"]["conv moments gap"] == pytest.approx(gap)
    per_seed = [cells[1]["per_seed"][s]["conv Gram gap"] for s in ("0", "1")]
    mean = [(a + b) / 2 for a, b in zip(*per_seed, strict=True)]
    assert cells[1]["mean"]["conv Gram gap"] == pytest.approx(mean)
    assert cells[1]["mean"]["spread ratio"] is None  # ipc 1: no spread; shown as "-"
    act = " / ".join(f"{v:.2f}" for v in cells[1]["mean"]["act moments gap"])
    assert f"| dm | 3 | {act} |" in text
    stamp = (out / "dm" / "s1" / "it3" / "diagnose.json").stat().st_mtime_ns
    assert run(*diag) == text  # cached: nothing measured again
    assert (out / "dm" / "s1" / "it3" / "diagnose.json").stat().st_mtime_ns == stamp


def test_term_scales_reports_every_active_term(tmp_path):
    from ddm.condense import condense
    from ddm.config import CondenseConfig

    root = _cifar(tmp_path)
    cfg = CondenseConfig(
        dataset="cifar10",
        data_root=str(root),
        ipc=2,
        method="ddm",
        form="released",
        iterations=1,
        batch_real=3,
        w_sd=1.0,
    )
    condense(cfg, tmp_path / "run", progress=False)
    cmd = [sys.executable, str(BENCH / "term_scales.py"), str(tmp_path / "run"), "--steps", "1"]
    cmd += ["--json", str(tmp_path / "t.json")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    terms = json.loads((tmp_path / "t.json").read_text())[str(tmp_path / "run")]["terms"]
    assert set(terms) == {"mmd", "mm", "cm", "cd", "sd"}
    assert terms["mmd"]["cos"] == pytest.approx(1.0, abs=1e-5)
    for name in ("mm", "cm", "cd", "sd"):
        assert terms[name]["grad"] > 0 and -1 <= terms[name]["cos"] <= 1


def test_precision_sizes_prints_a_ratio_per_image_size():
    cmd = [sys.executable, str(BENCH / "precision_sizes.py"), "--real", "16", "--reps", "1"]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300, check=False)
    assert out.returncode == 0, out.stderr[-2000:]
    rows = [line for line in out.stdout.splitlines() if line.startswith("| ") and "x" in line]
    rows = [r for r in rows if r.split("|")[1].strip()[0].isdigit()]
    assert [r.split("|")[1].strip() for r in rows] == [
        "1x8x8",
        "3x16x16",
        "1x28x28",
        "3x32x32",
        "3x64x64",
    ]
    for row in rows:
        cond, train = (float(v) for v in row.split("|")[3:5])
        assert cond > 0 and train > 0


def _load_evidence():
    spec = importlib.util.spec_from_file_location("evidence", BENCH / "evidence.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_evidence_pairs_rows_at_one_budget(tmp_path, capsys):
    """Rows continued to different budgets (Figure B: DM and released DDM to 2,000 iterations,
    the paper form to 1,000) are paired where both have sets, never across budgets, and the
    report says each row's iterations."""
    ev = _load_evidence()
    accs = {  # row -> iteration -> seed -> accuracies
        "random": {0: {0: [30.0, 30.0]}},
        "dm": {1000: {0: [45.0, 46.0]}, 2000: {0: [44.0, 44.0]}},
        "ddm-paper": {1000: {0: [48.0, 48.0]}},
        "ddm": {1000: {0: [46.0, 47.0]}, 2000: {0: [47.0, 48.0]}},
    }
    for row, its in accs.items():
        for it, seeds in its.items():
            for seed, values in seeds.items():
                folder = tmp_path / row / f"s{seed}" / (f"it{it}" if it else "")
                folder.mkdir(parents=True, exist_ok=True)
                entry = {"model": "convnet", "epochs": 2, "runs": len(values), "seed": 0}
                entry["accuracies"] = values
                (folder / "metrics.json").write_text(json.dumps({"evaluations": [entry]}))
    table = ev.collect(tmp_path, 2, 2)
    got = {
        (p["a"], p["b"]): (p["iteration"], p["mean"])
        for p in ev._pairs(table, ["dm:ddm-paper", "dm:ddm", "random:dm"], ["convnet"])
    }
    assert got == {
        ("dm", "ddm-paper"): (1000, pytest.approx(48.0 - 45.5)),
        ("dm", "ddm"): (2000, pytest.approx(47.5 - 44.0)),
        ("random", "dm"): (2000, pytest.approx(44.0 - 30.0)),
    }
    args = ev.argparse.Namespace(
        out=str(tmp_path),
        epochs=2,
        runs=2,
        eval_seed=0,
        precision="fp32",
        holdout=0,
        device="cpu",
        rows=["dm", "ddm-paper", "ddm"],
        models=None,
        pairs=["dm:ddm-paper", "dm:ddm"],
        by_iteration=False,
        results=None,
        figure=None,
    )
    ev.cmd_report(args)
    text = capsys.readouterr().out
    assert "| dm | 44.00 +- 0.00 (2) | 0 | 2000 |" in text
    assert "| ddm-paper | 48.00 +- 0.00 (2) | 0 | 1000 |" in text
    assert "| ddm-paper - dm | convnet | +2.50 | s0 +2.50 | 1000 |" in text
    assert "| ddm - dm | convnet | +3.50 | s0 +3.50 | 2000 |" in text


def test_evidence_with_held_out_images(tmp_path):
    """--holdout through the evidence phases: sets made without the held-out images, scored
    on them, reported apart from test-split scores."""
    root, out = _cifar(tmp_path), tmp_path / "ev"
    ev = [sys.executable, str(BENCH / "evidence.py")]
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    common = ["--out", str(out), "--data-root", str(root), "--holdout", "5"]
    budget = ["--epochs", "1", "--runs", "1"]

    def run(*args):
        res = subprocess.run(
            [*ev, *args], capture_output=True, text=True, env=env, timeout=600, check=False
        )
        assert res.returncode == 0, res.stderr[-2000:]
        return res.stdout

    cond = ["--seeds", "0", "--iterations", "1", "--ipc", "1", "--batch-real", "4"]
    run("condense", *common, "--rows", "random", "dm", *cond)
    from ddm.io import load_synthetic, read_json

    for row in ("random", "dm"):
        assert (
            load_synthetic(out / row / "s0" / ("it1" if row == "dm" else "")).meta["holdout"] == 5
        )
    run("evaluate", *common, *budget)
    entry = read_json(out / "dm" / "s0" / "it1" / "metrics.json")["evaluations"][0]
    assert entry["protocol"]["holdout"] == 5
    held = run("report", *common, *budget)
    assert "| random |" in held and "| dm |" in held
    plain = run("report", "--out", str(out), "--data-root", str(root), *budget)
    assert "| dm |" not in plain  # no test-split scores were made


def _load_bench(name: str):
    sys.path.insert(0, str(BENCH))  # the scripts import each other
    try:
        spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
    finally:
        sys.path.remove(str(BENCH))
    return mod


def test_protocols_report_names_each_rows_pool_and_the_page_pairs_pools(tmp_path):
    """An NCFM row's pool is read from its sets (all seeds one pool, else an error), and the
    results page orders pools by training length and size, each paired by seed with NCFM's row."""
    import argparse

    from ddm.io import SyntheticSet, save_synthetic

    protocols = _load_bench("protocols")

    def pool(n: int, epochs: int, fp: str) -> dict:
        acc = [60.0 + i for i in range(n)]
        return {"networks": n, "indices": list(range(n)), "epochs": [epochs] * n,
                "test_accuracy": acc, "fingerprint": fp}  # fmt: skip

    def put(row: str, seed: int, meta: dict) -> None:
        syn = SyntheticSet(
            torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]), {"method": "ncfm", **meta}
        )
        (tmp_path / row / f"s{seed}" / "it5").mkdir(parents=True, exist_ok=True)
        save_synthetic(tmp_path / row / f"s{seed}" / "it5", syn)

    for seed in (0, 1):
        put("ncfm", seed, {"pool": pool(1, 3, "a")})
        put("ncfm-e1", seed, {"pool": pool(1, 1, "b")})
        put("ncfm-pool3", seed, {"pool": pool(3, 3, "c")})
        put("dm", seed, {"method": "dm"})
    args = argparse.Namespace(out=tmp_path, rows=None, seeds=None)
    args.all_snapshots, args.only_iterations = False, None
    pools = protocols._pools(args)
    assert sorted(pools) == ["ncfm", "ncfm-e1", "ncfm-pool3"]
    assert pools["ncfm-pool3"]["networks"] == 3 and pools["ncfm"]["method"] == "ncfm"

    render = _load_bench("render_results")
    cell = lambda s0, s1: {"mean": (s0 + s1) / 2, "std": 0.5, "n": 2,  # noqa: E731
                           "seed_means": {"0": s0, "1": s1}}  # fmt: skip
    record = {
        "pools": pools,
        "protocols": {
            "dm-hard": {"ncfm": cell(50, 52), "ncfm-e1": cell(47, 48), "ncfm-pool3": cell(53, 52)},
        },
    }
    text = render._pool_section(record)
    rows = [
        line for line in text.splitlines() if line.startswith("| 1 ") or line.startswith("| 3 ")
    ]
    assert [r.split(" | ")[0] for r in rows] == [
        "| 1 network x 1 epoch", "| 1 network x 3 epochs", "| 3 networks x 3 epochs"
    ]  # fmt: skip
    assert "-3.50 (-3.00, -4.00)" in rows[0] and "+1.50 (+3.00, +0.00)" in rows[2]
    assert "60.00, 61.00, 62.00" in rows[2]

    put("ncfm-pool3", 1, {"pool": pool(3, 3, "other")})  # a seed matched with another pool
    with pytest.raises(SystemExit, match="ncfm-pool3: its seeds were condensed with different"):
        protocols._pools(args)
