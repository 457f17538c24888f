"""Bad input a careful user tries: each is one clear line, a non-zero exit, and nothing lost.

Run folders (foreign files, failures before the first iteration, locks, permissions),
settings (NaN, duplicate keys, an edited method), resume (saved settings, continuing a run
that diverged with a lower learning rate), data (image sizes and memory, pixel formats,
sets that do not fit), unfinished runs. Digits at tiny budgets, one thread.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys

import numpy as np
import pytest
import torch

from ddm.cli import main
from ddm.condense import CHECKPOINT_FILE, condense
from ddm.config import CondenseConfig, EvalConfig
from ddm.io import RunFolderError, load_synthetic, read_json, save_tensors

TINY = ["--dataset", "digits", "--ipc", "1", "--batch-real", "8", "--iterations", "3"]


def ddm(*args: str) -> int:
    return main(["--quiet", *args])


def one_line_error(capsys, *needles: str) -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [ln for ln in err.splitlines() if ln.startswith("ddm: error:")]
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


def _image_folder(root, classes=("cat", "dog"), n=3, size=8, test_classes=None):
    """root/train/<class>/*.png and root/val/<class>/*.png, random 8-bit RGB images."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for split, names in (("train", classes), ("val", test_classes or classes)):
        for c in names:
            (root / split / c).mkdir(parents=True, exist_ok=True)
            for i in range(n):
                arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
                Image.fromarray(arr).save(root / split / c / f"{i}.png")
    return root


# --- 1. files a run writes, in a folder without a run ---------------------------------------


def test_foreign_run_files_are_not_overwritten_without_overwrite(tmp_path, capsys):
    out = tmp_path / "r"
    out.mkdir()
    for name, text in (("config.json", '{"mine": 1}\n'), ("log.csv", "a,b\n"), ("grid.png", "x")):
        (out / name).write_text(text)
    assert ddm("condense", *TINY, "--out", str(out)) == 2
    one_line_error(capsys, "config.json, log.csv, grid.png", "--overwrite")
    assert (out / "config.json").read_text() == '{"mine": 1}\n'  # untouched
    assert (out / "log.csv").read_text() == "a,b\n"
    assert ddm("condense", *TINY, "--out", str(out), "--resume") == 2  # no run to resume
    one_line_error(capsys, "no checkpoint")
    assert ddm("condense", *TINY, "--out", str(out), "--overwrite") == 0
    assert read_json(out / "config.json")["ipc"] == 1


# --- 2. a failure before the first iteration leaves no folder -------------------------------


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--ipc", "1000"], "smallest class"),
        (["--model", "nope"], "unknown model"),
        (["--depth", "9"], "depth"),
        (["--seed", "-1"], "--seed"),
    ],
)
def test_failure_before_the_first_iteration_creates_no_folder(tmp_path, capsys, flags, message):
    out = tmp_path / "new" / "run"
    assert ddm("condense", *TINY, *flags, "--out", str(out)) == 2
    one_line_error(capsys, message)
    assert not (tmp_path / "new").exists()
    empty = tmp_path / "empty"  # a folder that was there stays, as it was
    empty.mkdir()
    assert ddm("condense", *TINY, *flags, "--out", str(empty)) == 2
    assert empty.is_dir() and not any(empty.iterdir())


def test_failure_while_writing_the_first_checkpoint_removes_what_it_created(
    tmp_path, capsys, monkeypatch
):
    from ddm import condense as mod

    def full_disk(self):
        raise RunFolderError("disk full while writing checkpoint.safetensors")

    monkeypatch.setattr(mod._Run, "save", full_disk)
    out = tmp_path / "a" / "b"
    assert ddm("condense", *TINY, "--out", str(out)) == 2
    one_line_error(capsys, "disk full")
    assert not (tmp_path / "a").exists()


# --- 3. NaN and infinity in float settings --------------------------------------------------


@pytest.mark.parametrize(
    "flags",
    [
        ["--lr-img", "nan"],
        ["--method", "ddm", "--w-mm", "nan"],
        ["--method", "ddm", "--w-cm", "inf"],
        ["--momentum=-inf"],
    ],
)
def test_nonfinite_flags_are_refused(tmp_path, capsys, flags):
    out = tmp_path / "r"
    assert ddm("condense", *TINY, *flags, "--out", str(out)) == 2
    one_line_error(capsys, "must be a finite number")
    assert not out.exists()


def test_nonfinite_settings_are_refused_in_files_and_the_api(tmp_path, capsys):
    for name, text in (("c.yaml", "method: ddm\nw_mm: .nan\n"), ("c.json", '{"lr_img": "inf"}')):
        path = tmp_path / name
        path.write_text(text)
        args = ("--config", str(path), "--iterations", "2", "--out", str(tmp_path / "r"))
        assert ddm("condense", *args) == 2
        one_line_error(capsys, "expected a finite number")
    with pytest.raises(ValueError, match="--w-mm must be a finite number"):
        CondenseConfig(method="ddm", w_mm=float("nan")).resolved()
    with pytest.raises(ValueError, match="--lr must be a finite number"):
        EvalConfig(lr=float("inf"))


# --- 4. after a NaN: the advice works, and the change is recorded ---------------------------


def test_nan_advice_is_a_command_that_continues_the_run(tmp_path, capsys):
    out = tmp_path / "r"
    # checkpoints at iteration 0 and the end: the last good one is the initial set
    flags = ["--lr-img", "1e38", "--checkpoint-every", "0", "--iterations", "20"]
    assert ddm("condense", *TINY[:-2], *flags, "--out", str(out)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and "last good checkpoint" in err
    command = err.split("`")[1]
    assert command.startswith("ddm condense --out ") and "--allow-change lr_img" in command
    argv = shlex.split(command)[1:]
    assert argv[argv.index("--lr-img") + 1] == "5e+37"
    # the printed command is accepted (it may diverge again at this rate, but is not refused)
    assert ddm(*argv) in (0, 1)
    assert "settings that change the result" not in capsys.readouterr().err
    # without --allow-change the lower rate is refused, and the line says what to add
    lower = [a if a != "5e+37" else "0.5" for a in argv if a not in ("--allow-change", "lr_img")]
    lower += ["--iterations", "25"]
    assert ddm(*lower) == 2
    one_line_error(capsys, "e+37 -> 0.5", "--allow-change lr_img")
    assert ddm(*lower, "--allow-change", "ipc") == 2
    one_line_error(capsys, "--allow-change ipc", "lr_img")
    at = load_synthetic(out).meta["iterations"]
    assert ddm(*lower, "--allow-change", "lr-img") == 0
    meta = load_synthetic(out).meta
    assert meta["iterations"] == 25 and torch.isfinite(load_synthetic(out).images).all()
    change = meta["changes"][-1]
    assert change == {"iteration": at, "setting": "lr_img", "from": change["from"], "to": 0.5}
    assert read_json(out / "config.json")["lr_img"] == 0.5
    capsys.readouterr()
    assert ddm("show", str(out)) == 0
    assert f"changed at iteration {at}: lr_img" in capsys.readouterr().out


def test_allow_change_needs_resume(tmp_path, capsys):
    args = ("condense", *TINY, "--allow-change", "lr_img", "--out", str(tmp_path / "r"))
    assert ddm(*args) == 2
    one_line_error(capsys, "--allow-change applies to a resumed run")
    assert not (tmp_path / "r").exists()


# --- 5. --resume takes the run's settings ---------------------------------------------------


def test_resume_takes_the_runs_settings_and_checks_only_given_flags(tmp_path, capsys):
    out = tmp_path / "r"
    args = ["--dataset", "digits", "--ipc", "2", "--batch-real", "8", "--seed", "3"]
    assert ddm("condense", *args, "--iterations", "2", "--out", str(out)) == 0
    assert ddm("condense", "--out", str(out), "--resume", "--iterations", "3") == 0
    meta = load_synthetic(out).meta
    assert (meta["ipc"], meta["seed"], meta["iterations"]) == (2, 3, 3)
    assert ddm("condense", "--out", str(out), "--resume", "--ipc", "3") == 2
    one_line_error(capsys, "ipc: 2 -> 3")
    assert ddm("condense", "--out", str(out), "--resume", "--ipc", "2", "--seed", "3") == 0


def test_old_run_folders_resume(tmp_path):
    """A checkpoint written before some of today's settings existed (no holdout, precision,
    cd_rank or w_sd; a bf16 switch instead of precision) resumes with no flags."""
    out = tmp_path / "old"
    assert ddm("condense", *TINY[:-2], "--iterations", "2", "--out", str(out)) == 0
    from safetensors import safe_open

    from ddm.io import load_tensors

    with safe_open(str(out / CHECKPOINT_FILE), "pt") as f:
        header = f.metadata()
    saved = json.loads(header["config"])
    for key in ("holdout", "precision", "cd_rank", "w_sd"):
        del saved[key]
    saved["bf16"] = False
    header["config"] = json.dumps(saved)
    save_tensors(out / CHECKPOINT_FILE, load_tensors(out / CHECKPOINT_FILE), header)
    assert ddm("condense", "--out", str(out), "--resume", "--iterations", "3") == 0
    assert load_synthetic(out).meta["iterations"] == 3


# --- 6. files follow the umask ----------------------------------------------------------------


@pytest.mark.parametrize(("mask", "mode"), [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_written_files_follow_the_umask(tmp_path, mask, mode):
    old = os.umask(mask)
    try:
        out = tmp_path / "r"
        assert ddm("condense", *TINY, "--out", str(out)) == 0
        assert ddm("export", str(out), "--format", "imagefolder", "--out", str(tmp_path / "e")) == 0
    finally:
        os.umask(old)
    files = [p for p in [*out.iterdir(), *(tmp_path / "e").rglob("*")] if p.is_file()]
    assert len(files) > 10
    assert {stat.S_IMODE(p.stat().st_mode) for p in files} == {mode}


# --- 7. image sizes and memory ---------------------------------------------------------------


def test_huge_image_size_is_refused_before_allocating(tmp_path, capsys):
    root = _image_folder(tmp_path / "src")
    big = ["--image-size", "100000"]
    assert ddm("prepare", "--src", str(root), "--out", str(tmp_path / "store"), *big) == 2
    one_line_error(capsys, "--image-size 100000", "largest supported")
    assert not (tmp_path / "store").exists()
    flags = ["--dataset", "folder", "--data-root", str(root), *big, "--out", str(tmp_path / "r")]
    assert ddm("condense", *flags) == 2
    one_line_error(capsys, "--image-size 100000", "largest supported")
    assert not (tmp_path / "r").exists()


def test_memory_estimate_is_checked_before_decoding(tmp_path, capsys, monkeypatch):
    from ddm.data import core

    monkeypatch.setattr(core, "available_memory", lambda: 1000)
    root = _image_folder(tmp_path / "src")
    flags = ["--dataset", "folder", "--data-root", str(root), "--image-size", "64"]
    assert ddm("condense", *flags, "--out", str(tmp_path / "r")) == 2
    one_line_error(capsys, "needs about 72.0 KiB of memory", "1000 bytes is available")
    store = tmp_path / "store"
    assert ddm("prepare", "--src", str(root), "--out", str(store), "--image-size", "64") == 2
    one_line_error(capsys, "largest class", "available")


# --- 8. unfinished runs ----------------------------------------------------------------------


def test_unfinished_runs_say_so(tmp_path, capsys):
    out = tmp_path / "r"
    cfg = CondenseConfig(dataset="digits", ipc=1, batch_real=8, iterations=10)
    condense(cfg, out, progress=False, stop_after=2)
    capsys.readouterr()
    assert ddm("show", str(out)) == 0
    assert "unfinished run (2 of 10 iterations)" in capsys.readouterr().out
    assert ddm("export", str(out), "--format", "imagefolder", "--out", str(tmp_path / "e")) == 0
    assert "unfinished run (2 of 10 iterations)" in capsys.readouterr().out
    assert ddm("evaluate", str(out), "--epochs", "1", "--runs", "1") == 0
    assert "unfinished run (2 of 10 iterations)" in capsys.readouterr().out
    entry = read_json(out / "metrics.json")["evaluations"][0]
    assert (entry["iterations_done"], entry["iterations_planned"], entry["finished"]) == (
        2,
        10,
        False,
    )
    assert ddm("condense", "--out", str(out), "--resume") == 0
    assert ddm("evaluate", str(out), "--epochs", "1", "--runs", "1") == 0
    assert "unfinished run" not in capsys.readouterr().out
    assert read_json(out / "metrics.json")["evaluations"][-1]["finished"] is True


# --- 9. a saved config.json with its method or form edited -----------------------------------


def test_edited_method_in_a_saved_config_is_refused(tmp_path, capsys):
    out = tmp_path / "dm"
    assert ddm("condense", *TINY, "--out", str(out)) == 0
    saved = read_json(out / "config.json")
    edited = tmp_path / "edited.json"
    edited.write_text(json.dumps({**saved, "method": "ddm"}))
    assert ddm("condense", "--config", str(edited), "--out", str(tmp_path / "x")) == 2
    one_line_error(capsys, "method ddm", "exactly what dm fills in")
    assert not (tmp_path / "x").exists()
    # the same with a ddm run's form edited
    paper = CondenseConfig(
        dataset="digits", ipc=1, batch_real=8, iterations=2, method="ddm", form="paper"
    ).resolved()
    edited.write_text(json.dumps({**paper.to_dict(), "form": "released", "version": "0"}))
    assert ddm("condense", "--config", str(edited), "--out", str(tmp_path / "x")) == 2
    one_line_error(capsys, "form released", "ddm (form paper)")
    # leaving the filled settings out takes the named method's defaults
    keep = {k: v for k, v in saved.items() if not k.startswith("w_")}
    keep = {k: v for k, v in keep.items() if k not in ("style_tap", "moments", "form")}
    edited.write_text(json.dumps({**keep, "method": "ddm", "moments_relative": None}))
    assert ddm("condense", "--config", str(edited), "--out", str(tmp_path / "y")) == 0
    assert read_json(tmp_path / "y" / "config.json")["w_mm"] == 1e4


def test_method_and_term_weights_must_agree():
    zero = {n: 0.0 for n in ("w_mm", "w_cm", "w_icd", "w_cd", "w_sd")}
    with pytest.raises(ValueError, match="every DDM term weight 0"):
        CondenseConfig(method="ddm", **zero).resolved()
    with pytest.raises(ValueError, match="method dm has no DDM terms"):
        CondenseConfig(method="dm", w_mm=1.0).resolved()
    with pytest.raises(ValueError, match="method idm runs on the idm base"):
        CondenseConfig(method="idm", base="dm").resolved()
    CondenseConfig(method="ddm", **{**zero, "w_cm": 1.0}).resolved()  # one term is DDM


# --- 10. what a careful user tries next ------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "text"),
    [("c.yaml", "ipc: 2\nseed: 1\nipc: 5\n"), ("c.json", '{"ipc": 2, "ipc": 5}')],
)
def test_a_setting_stated_twice_is_refused(tmp_path, capsys, name, text):
    path = tmp_path / name
    path.write_text(text)
    args = ("--config", str(path), "--iterations", "2", "--out", str(tmp_path / "r"))
    assert ddm("condense", *args) == 2
    one_line_error(capsys, "'ipc' is given twice")


def test_a_second_writer_is_refused_and_a_stale_lock_taken_over(tmp_path, capsys):
    from ddm.io import LOCK_FILE

    out = tmp_path / "r"
    out.mkdir()
    live = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        import socket

        (out / LOCK_FILE).write_text(json.dumps({"pid": live.pid, "host": socket.gethostname()}))
        assert ddm("condense", *TINY, "--out", str(out)) == 2
        one_line_error(capsys, f"another ddm process (pid {live.pid})")
        assert [p.name for p in out.iterdir()] == [LOCK_FILE]
    finally:
        live.kill()
        live.wait()
    # the process is gone: its lock is stale and taken over; released at the end
    assert ddm("condense", *TINY, "--out", str(out)) == 0
    assert not (out / LOCK_FILE).exists() and (out / "meta.json").exists()


def _corrupt_set(folder, images, labels):
    save_tensors(folder / "synthetic.safetensors", {"images": images, "labels": labels})


def test_a_set_with_unexpected_pixels_or_labels_is_refused(tmp_path, capsys):
    out = tmp_path / "r"
    assert ddm("condense", *TINY, "--out", str(out)) == 0
    syn = load_synthetic(out)
    pixels = (syn.denormalized() * 255).round().to(torch.uint8)
    cases = [
        ({"images": pixels}, "images are torch.uint8"),
        ({"images": torch.full_like(syn.images, float("nan"))}, "NaN or infinite"),
        ({"labels": syn.labels + 10}, "labels must be class ids in 0..9"),
        ({"labels": syn.labels.float()}, "labels are torch.float32"),
    ]
    for change, message in cases:
        _corrupt_set(out, **{"images": syn.images, "labels": syn.labels, **change})
        assert ddm("evaluate", str(out), "--epochs", "1", "--runs", "1") == 2
        one_line_error(capsys, message)
        _corrupt_set(out, syn.images, syn.labels)


def test_a_set_is_not_evaluated_on_data_with_other_classes(tmp_path, capsys):
    a = _image_folder(tmp_path / "a", classes=("cat", "dog"))
    b = _image_folder(tmp_path / "b", classes=("cat", "fox"))
    out = tmp_path / "r"
    flags = ["--dataset", "folder", "--ipc", "1", "--batch-real", "2", "--iterations", "1"]
    assert ddm("condense", *flags, "--data-root", str(a), "--out", str(out)) == 0
    assert ddm("evaluate", str(out), "--data-root", str(b), "--epochs", "1", "--runs", "1") == 2
    one_line_error(capsys, "classes are not", "'dog' is 'fox'")
    assert not (out / "metrics.json").exists()


def test_sixteen_bit_images_are_scaled_not_clipped(tmp_path):
    from PIL import Image

    from ddm.data import load_dataset

    root = _image_folder(tmp_path / "src", n=2)
    wide = np.full((8, 8), 40000, dtype=np.uint16)  # 40000 / 65535 of white: 8-bit 156
    Image.fromarray(wide).save(root / "train" / "cat" / "0.png")
    ds = load_dataset("folder", root)
    first = ds.train.materialize()[ds.train.class_indices(0)[0]]
    assert first.unique().tolist() == [156]  # not clipped to 255
