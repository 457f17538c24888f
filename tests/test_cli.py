"""The command line end to end: real data at a tiny budget, kill and resume, bad input."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time

import pytest
import torch

from ddm.cli import _condense_config, build_parser, main, paired_gain
from ddm.io import load_synthetic, read_json

DIGITS = ["--dataset", "digits", "--batch-real", "16"]


def ddm(*args: str) -> int:
    return main(["--quiet", *args])


def test_cifar10_end_to_end(tmp_path, cifar_root, capsys):
    """condense -> evaluate -> show -> baseline on the real CIFAR-10 files, tiny budget."""
    out = tmp_path / "c10"
    assert (
        ddm(
            "condense",
            "--dataset",
            "cifar10",
            "--data-root",
            str(cifar_root),
            "--ipc",
            "1",
            "--iterations",
            "2",
            "--batch-real",
            "8",
            "--out",
            str(out),
        )
        == 0
    )
    syn = load_synthetic(out)
    assert syn.images.shape == (10, 3, 32, 32) and syn.labels.tolist() == list(range(10))
    meta = syn.meta
    assert meta["dataset"] == "cifar10" and meta["iterations"] == 2 and meta["ipc"] == 1
    assert meta["mean"] == pytest.approx([0.4914, 0.4822, 0.4465], abs=1e-3)
    assert meta["classes"][:2] == ["airplane", "automobile"]
    assert read_json(out / "config.json")["batch_real"] == 8
    assert ddm("evaluate", str(out), "--epochs", "2", "--runs", "2") == 0
    entry = read_json(out / "metrics.json")["evaluations"][0]
    assert entry["runs"] == 2 and len(entry["accuracies"]) == 2 and entry["epochs"] == 2
    # the line names the precision the models trained in (auto: as resolved)
    precision = entry["protocol"]["precision"]
    assert precision in ("fp32", "bf16")
    assert f"convnet, 2 epochs, 2 runs, {precision}: " in capsys.readouterr().out
    assert all(0 <= a <= 100 for a in entry["accuracies"])
    (out / "grid.png").unlink()
    assert ddm("show", str(out)) == 0 and (out / "grid.png").exists()
    assert "cifar10" in capsys.readouterr().out
    rand = tmp_path / "rand"
    assert (
        ddm(
            "baseline",
            "--dataset",
            "cifar10",
            "--data-root",
            str(cifar_root),
            "--ipc",
            "2",
            "--method",
            "random",
            "--out",
            str(rand),
        )
        == 0
    )
    assert load_synthetic(rand).images.shape == (20, 3, 32, 32)


def test_kill_and_resume_matches_uninterrupted(tmp_path):
    """SIGKILL a real `ddm condense` process mid-run; --resume ends where a clean run ends."""
    common = [
        sys.executable,
        "-m",
        "ddm.cli",
        "--quiet",
        "condense",
        *DIGITS,
        "--ipc",
        "2",
        "--iterations",
        "40",
        "--checkpoint-every",
        "5",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    clean = tmp_path / "clean"
    subprocess.run([*common, "--out", str(clean)], check=True, env=env, timeout=600)

    killed = tmp_path / "killed"
    proc = subprocess.Popen([*common, "--out", str(killed)], env=env)
    deadline = time.time() + 300
    while time.time() < deadline:
        meta = killed / "meta.json"
        if meta.exists():
            try:
                if json.loads(meta.read_text()).get("iterations", 0) >= 10:
                    break
            except json.JSONDecodeError:
                pass
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = load_synthetic(killed).meta["iterations"]
    assert 10 <= done < 40, "the run was not interrupted mid-way"
    # refusing to clobber, then resuming
    assert subprocess.run([*common, "--out", str(killed)], env=env).returncode == 2
    subprocess.run([*common, "--out", str(killed), "--resume"], check=True, env=env, timeout=600)
    a, b = load_synthetic(clean), load_synthetic(killed)
    assert b.meta["iterations"] == 40
    assert torch.equal(a.images, b.images)


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["condense", "--dataset", "nope"], "known: cifar10"),
        (["condense", "--dataset", "digits", "--ipc", "0"], "--ipc must be positive"),
        (["condense", "--dataset", "digits", "--ipc", "500"], "smallest class"),
        (["condense", "--dataset", "digits", "--method", "gm"], "known: dm, ddm, idm"),
        (["condense", "--dataset", "digits", "--model", "resnet99"], "convnet"),
        (["condense", "--dataset", "cifar10"], "--data-root"),
        (["condense", "--preset", "nope"], "known: ddm-paper-cifar10-ipc10"),
        (["baseline", "--method", "kmeans"], "known: random, herding"),
        (["evaluate", "/nonexistent/run"], "missing file"),
    ],
)
def test_bad_input_exits_2_with_a_clear_message(tmp_path, capsys, args, message):
    out = ["--out", str(tmp_path / "r")] if args[0] in ("condense", "baseline") else []
    assert ddm(*args, *out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_diverging_run_exits_1_and_keeps_checkpoint(tmp_path, capsys):
    out = tmp_path / "r"
    code = ddm(
        "condense",
        *DIGITS,
        "--ipc",
        "2",
        "--iterations",
        "20",
        "--lr-img",
        "1e38",
        "--checkpoint-every",
        "1",
        "--out",
        str(out),
    )
    assert code == 1
    assert "last good checkpoint" in capsys.readouterr().err
    assert load_synthetic(out).images.isfinite().all()


def test_preset_then_flags_override():
    args = build_parser().parse_args(
        ["condense", "--preset", "idm-cifar10-ipc1", "--iterations", "7", "--out", "x"]
    )
    cfg = _condense_config(args)
    assert (cfg.method, cfg.ipc, cfg.batch_real, cfg.net_generate_interval) == ("idm", 1, 5000, 5)
    assert cfg.iterations == 7 and cfg.ce_weight == 0.5
    plain = _condense_config(build_parser().parse_args(["condense", "--out", "x"]))
    assert plain.iterations == 20000 and plain.method == "dm"


def test_presets_listed(capsys):
    assert ddm("presets") == 0
    out = capsys.readouterr().out
    for name in (
        "dm-cifar100-ipc50",
        "idm-tiny-imagenet-ipc50",
        "idm-imagewoof-ipc10",
        "ddm-paper-cifar10-ipc10",
        "ddm-released-cifar10-ipc10",
    ):
        assert name in out


def test_demo_prints_table(tmp_path, capsys):
    argv = ["demo", "--iterations", "3", "--epochs", "3", "--runs", "2", "--batch-real", "16"]
    assert ddm(*argv, "--out", str(tmp_path)) == 0
    out = capsys.readouterr().out
    # the flagship beside DM and a random subset; DDM in the toolkit's default form
    from ddm.config import DEFAULT_FORM

    assert f"| DDM ({DEFAULT_FORM} form) |" in out
    assert "| DM " in out and "| random subset" in out
    assert read_json(tmp_path / "ddm" / "config.json")["form"] == DEFAULT_FORM
    entry = read_json(tmp_path / "dm" / "metrics.json")["evaluations"][0]
    assert entry["epochs"] == 3
    # the header names the precision both steps ran in (auto: by hardware)
    precision = read_json(tmp_path / "dm" / "meta.json")["precision"]
    assert f"3 epochs x 2 runs, {precision} (" in out
    assert entry["protocol"]["precision"] == precision
    # the gains, model by model, from the recorded accuracies
    acc = {
        k: read_json(tmp_path / k / "metrics.json")["evaluations"][0]["accuracies"]
        for k in ("ddm", "dm", "random")
    }
    line = next(x for x in out.splitlines() if x.startswith("DDM - DM: "))
    assert line.startswith(
        f"DDM - DM: {paired_gain(acc['ddm'], acc['dm'])} points; "
        f"DDM - random: {paired_gain(acc['ddm'], acc['random'])} points"
    )


def test_paired_gain():
    # differences +1.0 and +3.0: mean +2.00, std 1.00 (over the models, as the table's)
    assert paired_gain([91.0, 95.0], [90.0, 92.0]) == "+2.00 +- 1.00"
    assert paired_gain([90.0], [90.5]) == "-0.50 +- 0.00"


def test_demo_precision_flag(tmp_path, capsys):
    argv = ["demo", "--iterations", "2", "--epochs", "2", "--runs", "1", "--precision", "fp32"]
    assert ddm(*argv, "--out", str(tmp_path)) == 0
    assert "2 epochs x 1 runs, fp32 (" in capsys.readouterr().out
    assert read_json(tmp_path / "dm" / "config.json")["precision"] == "fp32"
    assert read_json(tmp_path / "ddm" / "config.json")["precision"] == "fp32"
    assert (
        read_json(tmp_path / "random" / "metrics.json")["evaluations"][0]["protocol"]["precision"]
        == "fp32"
    )


def test_idm_run_show_expanded_and_evaluate(tmp_path, capsys):
    out = tmp_path / "idm"
    assert (
        ddm(
            "condense",
            *DIGITS,
            "--method",
            "idm",
            "--ipc",
            "1",
            "--iterations",
            "2",
            "--model-batch",
            "16",
            "--model-train-steps",
            "2",
            "--out",
            str(out),
        )
        == 0
    )
    syn = load_synthetic(out)
    assert syn.meta["expansion_factor"] == 2 and syn.images.shape == (10, 1, 8, 8)
    assert ddm("show", str(out), "--expanded") == 0 and (out / "grid_expanded.png").exists()
    assert ddm("evaluate", str(out), "--epochs", "1", "--runs", "1") == 0


def test_herding_and_diagnose_via_cli(tmp_path, capsys):
    out = tmp_path / "h"
    assert (
        ddm(
            "baseline",
            "--method",
            "herding",
            "--herding-epochs",
            "1",
            "--ipc",
            "3",
            "--out",
            str(out),
        )
        == 0
    )
    assert load_synthetic(out).meta["method"] == "herding"
    assert ddm("diagnose", str(out), "--nets", "1", "--batch", "32") == 0
    assert (out / "diagnose.png").exists() and (out / "diagnose.json").exists()


def test_form_flags_reach_the_config(tmp_path):
    out = tmp_path / "rel"
    args = ["condense", "--dataset", "digits", "--ipc", "2", "--iterations", "1"]
    args += ["--batch-real", "8", "--method", "ddm", "--form", "paper", "--style-tap", "conv"]
    args += ["--w-cd", "5", "--cd-rank", "3", "--moments-relative", "true", "--out", str(out)]
    assert ddm(*args) == 0
    cfg = read_json(out / "config.json")
    assert (cfg["form"], cfg["style_tap"], cfg["moments"]) == ("paper", "conv", "batch")
    assert (cfg["w_mm"], cfg["w_icd"], cfg["w_cd"], cfg["cd_rank"]) == (1e4, 10.0, 5.0, 3)
    assert cfg["moments_relative"] is True
    assert read_json(out / "meta.json")["form"] == "paper"


def test_released_preset_settings(tmp_path):
    from ddm.config import CondenseConfig, load_preset

    cfg = CondenseConfig(**load_preset("ddm-released-cifar10-ipc10")["settings"]).resolved()
    assert (cfg.form, cfg.style_tap, cfg.moments, cfg.moments_relative) == (
        "released",
        "conv",
        "persample",
        True,
    )
    assert (cfg.w_mm, cfg.w_cm, cfg.w_cd, cfg.w_icd, cfg.iterations) == (180, 1e4, 30, 0, 20000)
    paper = CondenseConfig(**load_preset("ddm-paper-cifar10-ipc10")["settings"]).resolved()
    assert (paper.form, paper.w_mm, paper.w_icd, paper.icd_k) == ("paper", 1e4, 10.0, 2)
