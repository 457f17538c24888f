"""Class-incremental learning: class subsets, orders, memory, run folder, resume, cache, plot."""

from __future__ import annotations

import argparse
import csv
import json
import pickle
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

import ddm.continual as continual
from ddm.baselines import random_subset
from ddm.cli.continual import add_parsers
from ddm.condense import condense as real_condense
from ddm.continual import (
    ContinualConfig,
    _cache_key,
    build_memory,
    class_order,
    class_subset,
    run_continual,
    split_steps,
    step_set,
)
from ddm.data import load_dataset
from ddm.io import RunFolderError, SyntheticSet, read_json

TINY = ["--steps", "2", "--ipc", "2", "--orders", "1", "--runs", "1", "--epochs", "5"]
TINY += ["--iterations", "3", "--batch-real", "16", "--device", "cpu"]


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _cli(argv: list[str]) -> int:
    """Parse ``argv`` as ``ddm <argv>`` would once add_parsers is wired in, and run it."""
    parser = argparse.ArgumentParser()
    parser.add_argument("--quiet", action="store_true")
    add_parsers(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["--quiet", *argv])
    return args.func(args)


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _tree(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")}


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Two finished tiny continual runs on digits (random and dm), 2 steps of 5 classes."""
    root = tmp_path_factory.mktemp("continual")
    for method in ("random", "dm"):
        assert _cli(["continual", "--dataset", "digits", "--method", method, *TINY,
                     "--out", str(root / method)]) == 0  # fmt: skip
    return root


# --- classes and orders --------------------------------------------------------------------------


def test_class_subset_remaps_labels(digits):
    sub = class_subset(digits, [7, 2])
    assert sub.classes == ("7", "2") and sub.num_classes == 2 and sub.name == digits.name
    assert sub.mean == digits.mean and sub.std == digits.std
    for split, full in ((sub.train, digits.train), (sub.test, digits.test)):
        assert set(split.labels.tolist()) == {0, 1}
        for new, old in ((0, 7), (1, 2)):
            mine = split.images[split.labels == new]
            assert torch.equal(mine, full.images[full.labels == old])
        assert len(split) == int((full.labels == 7).sum() + (full.labels == 2).sum())
    assert sub.train.class_counts().tolist() == [
        int((digits.train.labels == 7).sum()),
        int((digits.train.labels == 2).sum()),
    ]


@pytest.mark.parametrize("bad", [[], [1, 1], [10], [-1]])
def test_class_subset_rejects_bad_classes(digits, bad):
    with pytest.raises(ValueError):
        class_subset(digits, bad)


def test_orders_and_steps():
    o0, o1 = class_order(10, 0), class_order(10, 1)
    assert sorted(o0) == list(range(10)) and o0 == class_order(10, 0) and o0 != o1
    assert o0 == torch.randperm(10, generator=continual.generator(0, 40)).tolist()
    assert split_steps(o0, 5) == [tuple(o0[i : i + 2]) for i in range(0, 10, 2)]
    assert split_steps(list(range(100)), 10)[3] == tuple(range(30, 40))
    for steps in (3, 0, 11):
        with pytest.raises(ValueError, match="equal steps"):
            split_steps(o0, steps)


def test_steps_must_divide_classes(tmp_path):
    with pytest.raises(ValueError, match="10 classes cannot be split into 3"):
        _cli(["continual", "--dataset", "digits", "--method", "random", *TINY, "--steps", "3",
              "--out", str(tmp_path / "r")])  # fmt: skip
    assert not (tmp_path / "r" / "progress.json").exists()


def test_bad_method_and_settings_are_refused(tmp_path):
    with pytest.raises(ValueError, match="unknown method"):
        run_continual(ContinualConfig(dataset="digits", method="gm"), tmp_path)
    with pytest.raises(ValueError, match="--ipc must be positive"):
        run_continual(ContinualConfig(dataset="digits", method="random", ipc=0), tmp_path)


# --- memory --------------------------------------------------------------------------------------


def test_memory_holds_ipc_real_images_per_seen_class_with_global_labels(digits):
    ipc = 3
    groups = split_steps(class_order(10, 2), 5)
    parts = []
    for group in groups[:3]:
        classes = sorted(group)
        parts.append((classes, random_subset(class_subset(digits, classes), ipc, seed=0)))
    images, labels = build_memory(parts)
    seen = [c for g in groups[:3] for c in g]
    assert sorted(labels.unique().tolist()) == sorted(seen)
    assert torch.bincount(labels, minlength=10)[seen].tolist() == [ipc] * len(seen)
    train = digits.normalize(digits.train.images)
    for x, y in zip(images, labels.tolist(), strict=True):
        match = (train - x).flatten(1).abs().amax(1) < 1e-6
        assert match.any() and set(digits.train.labels[match].tolist()) == {y}
    remapped = continual._remap(labels, seen, 10)
    assert remapped.tolist() == [seen.index(y) for y in labels.tolist()]


def test_memory_expands_idm_sets():
    syn = SyntheticSet(torch.randn(4, 3, 8, 8), torch.tensor([0, 0, 1, 1]), {"expansion_factor": 2})
    images, labels = build_memory([([5, 9], syn)])
    assert images.shape == (16, 3, 8, 8)
    assert labels.tolist() == [5] * 8 + [9] * 8


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["random", "dm"])
def test_end_to_end_files_and_summary(runs, method):
    out = runs / method
    for name in ("results.csv", "summary.csv", "summary.md", "continual.png", "config.json"):
        assert (out / name).is_file(), name
    assert (out / "continual.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    summary = _rows(out / "summary.csv")
    assert [int(r["classes_seen"]) for r in summary] == [5, 10]
    assert all(0 <= float(r["mean"]) <= 100 and int(r["n"]) == 1 for r in summary)
    results = _rows(out / "results.csv")
    assert [(r["order"], r["step"], r["classes_seen"]) for r in results] == [
        ("0", "1", "5"),
        ("0", "2", "10"),
    ]
    assert all(0 <= float(r["accuracy"]) <= 100 for r in results)
    config = read_json(out / "config.json")
    assert config["continual"]["method"] == method and config["continual"]["steps"] == 2
    assert ("condense" in config) == (method == "dm")
    assert "final step: 10 classes" in (out / "summary.md").read_text()
    caches = sorted(p.name for p in (out / "cache").iterdir())
    assert len(caches) == 2 and all(c.startswith(method + "-") for c in caches)


@pytest.mark.parametrize("method", ["random", "dm"])
def test_resume_recomputes_only_missing_step_and_reuses_cache(runs, tmp_path, monkeypatch, method):
    out = tmp_path / method
    shutil.copytree(runs / method, out)
    progress = read_json(out / "progress.json")
    before = {(e["order"], e["step"]): e["accuracies"] for e in progress["entries"]}
    progress["entries"] = [e for e in progress["entries"] if e["step"] != 2]
    (out / "progress.json").write_text(json.dumps(progress))
    cache_before = _tree(out / "cache")

    calls = []

    def no_condense(*args, **kwargs):
        raise AssertionError("condensed again although the step is cached")

    def counting(*args, **kwargs):
        calls.append(kwargs["num_classes"])
        return real_train_and_test(*args, **kwargs)

    real_train_and_test = continual.train_and_test
    monkeypatch.setattr(continual, "condense", no_condense)
    monkeypatch.setattr(continual, "train_and_test", counting)
    assert _cli(["continual", "--dataset", "digits", "--method", method, *TINY,
                 "--out", str(out)]) == 0  # fmt: skip
    assert calls == [10]  # one model, step 2 only (10 classes seen)
    assert _tree(out / "cache") == cache_before  # no set re-made or rewritten
    after = {
        (e["order"], e["step"]): e["accuracies"]
        for e in read_json(out / "progress.json")["entries"]
    }
    assert after == before  # same seeds -> the recomputed step gives the same accuracy
    assert len(_rows(out / "results.csv")) == 2

    calls.clear()  # everything finished: a rerun trains nothing
    assert _cli(["continual", "--dataset", "digits", "--method", method, *TINY,
                 "--out", str(out)]) == 0  # fmt: skip
    assert calls == []


def test_other_settings_refused_unless_overwrite(runs, tmp_path, monkeypatch):
    out = tmp_path / "dm"
    shutil.copytree(runs / "dm", out)
    argv = ["continual", "--dataset", "digits", "--method", "dm", *TINY, "--out", str(out)]
    with pytest.raises(RunFolderError, match="epochs: 5 -> 4"):
        _cli([*argv, "--epochs", "4"])
    calls = []
    monkeypatch.setattr(continual, "condense", lambda *a, **k: calls.append(1))
    assert _cli([*argv, "--epochs", "4", "--overwrite"]) == 0
    assert calls == []  # the condensed steps do not depend on the epochs: cache reused
    assert read_json(out / "config.json")["continual"]["epochs"] == 4
    assert len(_rows(out / "results.csv")) == 2


def test_eval_precision_is_a_setting_and_old_runs_read_as_fp32(runs, tmp_path):
    out = tmp_path / "random"
    shutil.copytree(runs / "random", out)
    argv = ["continual", "--dataset", "digits", "--method", "random", *TINY, "--out", str(out)]
    saved = read_json(out / "config.json")
    # recorded as resolved on this machine, the default being auto
    assert saved["continual"]["eval_precision"] == "auto"
    assert saved["evaluation"]["precision"] in ("fp32", "bf16")
    with pytest.raises(RunFolderError, match="eval_precision: 'auto' -> 'bf16'"):
        _cli([*argv, "--eval-precision", "bf16"])
    # a run from before the setting (no eval_precision saved) trained in float32
    del saved["continual"]["eval_precision"]
    (out / "config.json").write_text(json.dumps(saved))
    with pytest.raises(RunFolderError, match="eval_precision: 'fp32' -> 'auto'"):
        _cli(argv)
    assert _cli([*argv, "--eval-precision", "fp32"]) == 0  # continues, nothing to redo
    with pytest.raises(ValueError, match="unknown --eval-precision 'fp16'"):
        run_continual(ContinualConfig(dataset="digits", method="random", eval_precision="fp16"),
                      tmp_path / "bad")  # fmt: skip


def test_more_orders_extend_a_finished_run(runs, tmp_path, monkeypatch):
    out = tmp_path / "random"
    shutil.copytree(runs / "random", out)
    argv = ["continual", "--dataset", "digits", "--method", "random", *TINY, "--out", str(out)]
    before = _rows(out / "results.csv")
    evaluated = []
    real = continual._evaluate_step
    monkeypatch.setattr(
        continual,
        "_evaluate_step",
        lambda s, d, p, seen, o, st, *rt: (
            evaluated.append((o, st)) or real(s, d, p, seen, o, st, *rt)
        ),
    )
    assert _cli([*argv, "--orders", "2"]) == 0
    assert evaluated == [(1, 1), (1, 2)]  # only the new order runs
    rows = _rows(out / "results.csv")
    assert rows[: len(before)] == before and {r["order"] for r in rows} == {"0", "1"}
    assert all(int(r["n"]) == 2 for r in _rows(out / "summary.csv"))
    with pytest.raises(RunFolderError, match="orders: 2 -> 1"):
        _cli(argv)  # fewer orders would drop finished ones: refused


def test_killed_condensation_resumes(digits, tmp_path, monkeypatch):
    settings = ContinualConfig(
        dataset="digits", method="dm", steps=2, ipc=2, iterations=4, batch_real=16, device="cpu"
    )
    classes = [0, 3, 4, 6, 9]
    key, _ = _cache_key(settings, digits, classes)
    folder = tmp_path / key
    cfg = settings.condense_config("digits")
    real_condense(
        cfg.__class__(**{**cfg.to_dict(), "checkpoint_every": 1}),
        folder,
        dataset=class_subset(digits, classes),
        progress=False,
        stop_after=2,
    )
    assert read_json(folder / "meta.json")["iterations"] == 2
    seen = []

    def spy(*args, **kwargs):
        seen.append(kwargs["resume"])
        return real_condense(*args, **kwargs)

    monkeypatch.setattr(continual, "condense", spy)
    syn = step_set(settings, digits, [9, 6, 4, 3, 0], tmp_path, progress=False)
    assert seen == [True] and syn.meta["iterations"] == 4
    assert read_json(folder / "meta.json")["iterations"] == 4
    assert syn.labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4]
    seen.clear()
    step_set(settings, digits, classes, tmp_path, progress=False)
    assert seen == []  # finished: loaded from the cache


def test_cache_key_depends_on_what_decides_the_set(digits):
    base = ContinualConfig(dataset="digits", method="ddm", ipc=2, iterations=3)
    key = _cache_key(base, digits, [1, 2])[0]
    assert key == _cache_key(base, digits, [2, 1])[0]
    assert key == _cache_key(ContinualConfig(**{**base.to_dict(), "device": "cpu"}), digits,
                             [1, 2])[0]  # fmt: skip
    for change in ({"iterations": 4}, {"seed": 1}, {"w_mm": 0.0}, {"form": "released"}, {"ipc": 3}):
        other = ContinualConfig(**{**base.to_dict(), **change})
        assert _cache_key(other, digits, [1, 2])[0] != key, change
    assert _cache_key(base, digits, [1, 3])[0] != key
    rand = ContinualConfig(dataset="digits", method="random", ipc=2)
    assert (
        _cache_key(rand, digits, [1, 2])[0]
        != _cache_key(ContinualConfig(**{**rand.to_dict(), "seed": 1}), digits, [1, 2])[0]
    )
    assert (
        _cache_key(rand, digits, [1, 2])[0]
        == _cache_key(ContinualConfig(**{**rand.to_dict(), "iterations": 7}), digits, [1, 2])[0]
    )  # a selection does not depend on the condensation settings


def test_set_reaches_every_step_and_the_cache_key(digits, tmp_path):
    """--set passes condensation settings the continual flags do not cover (IDM's queue)."""
    base = ContinualConfig(dataset="digits", method="idm", ipc=2, iterations=3)
    queue = ContinualConfig(**{**base.to_dict(), "condense": {"model_train_steps": 2}})
    assert queue.condense_config("digits").model_train_steps == 2
    assert _cache_key(queue, digits, [1, 2])[0] != _cache_key(base, digits, [1, 2])[0]
    argv = ["continual", "--dataset", "digits", "--method", "idm", *TINY, "--out",
            str(tmp_path / "idm"), "--set", "model_train_steps=2",
            "--set", "model-batch=8"]  # fmt: skip
    assert _cli(argv) == 0
    config = read_json(tmp_path / "idm" / "config.json")
    assert config["continual"]["condense"] == {"model_train_steps": 2, "model_batch": 8}
    assert config["condense"]["model_train_steps"] == 2 and config["condense"]["model_batch"] == 8
    cached = read_json(next((tmp_path / "idm" / "cache").iterdir()) / "config.json")
    assert cached["model_train_steps"] == 2


@pytest.mark.parametrize(
    ("items", "message"),
    [
        (["ipc=3"], "use the --ipc flag"),
        (["no_such=1"], "not a condensation setting"),
        (["model_batch"], "KEY=VALUE"),
    ],
)
def test_set_refuses_what_it_cannot_mean(tmp_path, items, message):
    argv = ["continual", "--dataset", "digits", "--method", "dm", *TINY, "--out", str(tmp_path)]
    for item in items:
        argv += ["--set", item]
    with pytest.raises(ValueError, match=message):
        _cli(argv)
    with pytest.raises(ValueError, match="condensation methods"):
        run_continual(
            ContinualConfig(dataset="digits", method="random", condense={"model_batch": 8}),
            tmp_path / "r",
        )


# --- CIFAR-100 files, plot -----------------------------------------------------------------------


def _write_cifar100(folder: Path, per_class: dict[str, int], rng: np.random.Generator) -> None:
    """A tiny cifar-100-python/ (train, test, meta) with every one of the 100 classes."""
    folder.mkdir(parents=True)
    for name, n in per_class.items():
        fine = np.repeat(np.arange(100), n)
        data = rng.integers(0, 256, size=(len(fine), 3072), dtype=np.uint8)
        with open(folder / name, "wb") as f:
            pickle.dump({"data": data, "fine_labels": fine.tolist()}, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)]}, f)


def test_cifar100_files(tmp_path, monkeypatch):
    """100 classes from the standard pickles, 5 steps of 20.

    A 32x32 ConvNet is slow on a busy CPU: the first step trains for real, later steps are
    answered by a stand-in that checks what it is given (memory and test set of the seen classes).
    """
    _write_cifar100(
        tmp_path / "cifar-100-python", {"train": 3, "test": 2}, np.random.default_rng(0)
    )
    calls = []
    real_train_and_test = continual.train_and_test

    def train_and_test(
        train_x, train_y, test_x, test_y, *, num_classes, strategy, cfg, run, runtime=None
    ):
        calls.append(num_classes)
        assert train_x.shape == (2 * num_classes, 3, 32, 32) and len(test_x) == 2 * num_classes
        assert torch.bincount(train_y, minlength=num_classes).tolist() == [2] * num_classes
        assert torch.bincount(test_y, minlength=num_classes).tolist() == [2] * num_classes
        assert strategy.endswith("flip_scale_rotate") and cfg.epochs == 2 and run == 0
        if len(calls) > 1:
            return 50.0, 100.0
        kwargs = dict(num_classes=num_classes, strategy=strategy, cfg=cfg, run=run, runtime=runtime)
        return real_train_and_test(train_x, train_y, test_x, test_y, **kwargs)

    monkeypatch.setattr(continual, "train_and_test", train_and_test)
    out = tmp_path / "run"
    argv = ["continual", "--dataset", "cifar100", "--data-root", str(tmp_path), "--steps", "5",
            "--ipc", "2", "--method", "random", "--orders", "1", "--runs", "1", "--epochs", "2",
            "--device", "cpu", "--out", str(out)]  # fmt: skip
    assert _cli(argv) == 0
    assert calls == [20, 40, 60, 80, 100]
    summary = _rows(out / "summary.csv")
    assert [int(r["classes_seen"]) for r in summary] == [20, 40, 60, 80, 100]
    assert 0 <= float(summary[0]["mean"]) <= 100
    assert read_json(out / "config.json")["dataset"]["num_classes"] == 100
    assert len(list((out / "cache").iterdir())) == 5


def test_continual_plot(runs, tmp_path, capsys):
    png = tmp_path / "both.png"
    assert _cli(["continual-plot", str(runs / "random"), str(runs / "dm"), "--out", str(png)]) == 0
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = capsys.readouterr().out
    assert "| classes seen | random | dm |" in table
    assert table.count("+-") == 4  # 2 steps x 2 runs


def test_plot_label_names_the_base(runs, tmp_path):
    out = tmp_path / "x"
    shutil.copytree(runs / "dm", out)
    config = read_json(out / "config.json")
    config["continual"].update(method="ddm", base="idm")
    (out / "config.json").write_text(json.dumps(config))
    assert continual.read_summary(out)[0] == "ddm on idm"
    assert continual.read_summary(runs / "dm")[0] == "dm"


def test_continual_plot_needs_run_folders(tmp_path):
    with pytest.raises(RunFolderError, match="summary.csv"):
        _cli(["continual-plot", str(tmp_path), "--out", str(tmp_path / "x.png")])
