"""Other tools' formats: export (PNG class folders, plain .pt tensors) and import for evaluation."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from PIL import Image

from ddm.cli import main
from ddm.data import Dataset, Split, load_dataset
from ddm.interop import (
    DMDC_NORMALIZATION,
    export_imagefolder,
    export_tensors,
    import_set,
    read_dmdc_pt,
)
from ddm.io import SyntheticSet, load_synthetic, read_json, save_synthetic


def ddm(*args: str) -> int:
    return main(["--quiet", *args])


def _set(n_classes=3, ipc=2, c=3, size=8, factor=1) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    images = 1.5 * torch.randn(n_classes * ipc, c, size, size, generator=g)  # some leave [0, 1]
    labels = torch.arange(n_classes).repeat_interleave(ipc)
    meta = {
        "dataset": "x",
        "classes": [f"class {k}" for k in range(n_classes)],
        "num_classes": n_classes,
        "ipc": ipc,
        "mean": [0.4, 0.5, 0.6][:c],
        "std": [0.2, 0.25, 0.3][:c],
        "expansion_factor": factor,
    }
    return SyntheticSet(images, labels, meta)


def _tiny_dataset(name="cifar10", c=3, size=8, n_classes=3) -> Dataset:
    g = torch.Generator().manual_seed(1)

    def split(n):
        images = torch.randint(0, 256, (n * n_classes, c, size, size), generator=g)
        return Split(images.to(torch.uint8), torch.arange(n_classes).repeat_interleave(n))

    classes = [f"c{k}" for k in range(n_classes)]
    return Dataset.from_splits(name, classes, split(4), split(2))


# --- export ------------------------------------------------------------------------------------


@pytest.mark.parametrize("channels", [1, 3])
def test_imagefolder_pngs_round_trip_within_one_level(tmp_path, channels):
    syn = _set(c=channels)
    assert export_imagefolder(syn, tmp_path / "out") == 6
    out = tmp_path / "out"
    assert sorted(p.name for p in out.iterdir()) == ["00000", "00001", "00002", "classes.txt"]
    assert (out / "classes.txt").read_text().splitlines() == ["class 0", "class 1", "class 2"]
    want = syn.denormalized()  # [0, 1], clipped
    for k in range(3):
        files = sorted((out / f"{k:05d}").iterdir())
        assert [p.name for p in files] == ["00000.png", "00001.png"]
        for i, path in enumerate(files):
            with Image.open(path) as img:
                assert img.mode == ("L" if channels == 1 else "RGB") and img.size == (8, 8)
                arr = np.asarray(img, dtype=np.float32) / 255
            back = torch.from_numpy(arr if channels == 3 else arr[..., None]).permute(2, 0, 1)
            assert (back - want[2 * k + i]).abs().max() <= 1 / 255


def test_idm_sets_are_expanded_unless_asked_not_to(tmp_path):
    syn = _set(ipc=1, factor=2)
    assert export_imagefolder(syn, tmp_path / "x") == 12  # 3 classes x 4 sub-images
    assert len(list((tmp_path / "x" / "00001").iterdir())) == 4
    assert export_imagefolder(syn, tmp_path / "y", expand=False) == 3
    assert export_tensors(syn, tmp_path / "z") == 12


def test_tensors_are_plain_and_read_with_weights_only(tmp_path):
    syn = _set(factor=2)
    syn = SyntheticSet(syn.images.flip(0), syn.labels.flip(0), syn.meta)  # not class-major
    export_tensors(syn, tmp_path)
    load = {n: torch.load(tmp_path / f"{n}.pt", weights_only=True) for n in ("images", "labels")}
    images, labels = syn.expanded()
    order = torch.argsort(labels, stable=True)
    assert torch.equal(load["labels"], labels[order]) and load["labels"].dtype == torch.int64
    assert torch.equal(load["images"], images[order]) and load["images"].dtype == torch.float32
    assert torch.equal(load["labels"], load["labels"].sort().values)  # class-major
    mean = torch.load(tmp_path / "mean.pt", weights_only=True)
    std = torch.load(tmp_path / "std.pt", weights_only=True)
    assert mean.tolist() == pytest.approx(syn.meta["mean"]) and len(std) == 3
    assert (tmp_path / "classes.txt").read_text().count("\n") == 3


def test_export_refuses_a_non_empty_folder_and_overwrite_replaces(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    save_synthetic(run, _set())
    out = tmp_path / "out"
    assert ddm("export", str(run), "--format", "imagefolder", "--out", str(out)) == 0
    assert "wrote 6 images" in capsys.readouterr().out
    assert ddm("export", str(run), "--format", "tensors", "--out", str(out)) == 2
    assert "not empty" in capsys.readouterr().err
    (out / "notes.txt").write_text("mine")
    assert ddm("export", str(run), "--format", "tensors", "--out", str(out), "--overwrite") == 0
    assert not (out / "00000").exists() and (out / "images.pt").exists()
    assert (out / "notes.txt").read_text() == "mine"  # only an export's own files are removed
    assert ddm("export", str(run), "--format", "tensors", "--out", str(run), "--overwrite") == 2
    assert "the run folder itself" in capsys.readouterr().err
    assert ddm("export", str(tmp_path / "nope"), "--format", "tensors", "--out", str(out)) == 2
    assert "missing file" in capsys.readouterr().err


# --- import ------------------------------------------------------------------------------------


def test_exported_real_subset_evaluates_exactly_like_the_run(tmp_path, capsys):
    """Equivalence: a random real subset survives PNG export bit for bit, so `evaluate` on the
    exported folder (a set 'made elsewhere') gives the run's own accuracies."""
    run, folder = tmp_path / "rand", tmp_path / "pngs"
    assert ddm("baseline", "--ipc", "3", "--out", str(run)) == 0
    assert ddm("export", str(run), "--format", "imagefolder", "--out", str(folder)) == 0
    digits = load_dataset("digits")
    syn = load_synthetic(run)
    imported = import_set(folder, digits)
    assert torch.equal(imported.images, syn.images) and torch.equal(imported.labels, syn.labels)
    common = ["--epochs", "2", "--runs", "1", "--eval-seed", "5"]
    assert ddm("evaluate", str(run), *common) == 0
    assert ddm("evaluate", str(folder), "--dataset", "digits", *common) == 0
    assert "pngs-eval/metrics.json" in capsys.readouterr().out
    ours = read_json(run / "metrics.json")["evaluations"][0]
    theirs = read_json(tmp_path / "pngs-eval" / "metrics.json")["evaluations"][0]
    assert theirs["accuracies"] == ours["accuracies"]
    # the imported set is kept as a run folder: show works on it
    assert ddm("show", str(tmp_path / "pngs-eval")) == 0
    assert load_synthetic(tmp_path / "pngs-eval").meta["source"]["format"] == "imagefolder"


def test_class_folders_by_name_or_number(tmp_path):
    ds = _tiny_dataset()
    syn = SyntheticSet(ds.normalize(ds.train.images[:6]), ds.train.labels[:6], {})
    for k, name in enumerate(["c2", "c0", "c1"]):  # named by the dataset's classes
        (tmp_path / name).mkdir()
        for i, img in enumerate(ds.train.images[ds.train.labels == int(name[1])][:2]):
            Image.fromarray(img.permute(1, 2, 0).numpy()).save(tmp_path / name / f"{k}{i}.png")
    got = import_set(tmp_path, ds)
    assert got.labels.tolist() == [0, 0, 1, 1, 2, 2]
    assert got.meta["ipc"] == 2 and syn.images.shape == got.images.shape


def _dmdc_file(path, images, labels, **extra):
    torch.save({"data": [[images, labels], [images[:2], labels[:2]]], **extra}, path)


def test_dmdc_pt_uses_that_code_normalisation_by_default(tmp_path):
    ds = _tiny_dataset("cifar10")
    pixels = ds.train.images[:6].float() / 255
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DMDC_NORMALIZATION["cifar10"])
    _dmdc_file(tmp_path / "res.pt", (pixels - mean) / std, ds.train.labels[:6], accs_all_exps={})
    got = read_dmdc_pt(tmp_path / "res.pt", ds)
    assert torch.allclose(got.images, ds.normalize(ds.train.images[:6]), atol=1e-5)
    assert got.meta["source"]["normalisation"] == "the DM/DC code's mean/std"
    assert len(read_dmdc_pt(tmp_path / "res.pt", ds, index=1).labels) == 2
    # pixels, or a normalisation given by hand
    _dmdc_file(tmp_path / "pix.pt", pixels, ds.train.labels[:6])
    got = read_dmdc_pt(tmp_path / "pix.pt", ds, pixels=True)
    assert torch.allclose(got.images, ds.normalize(ds.train.images[:6]), atol=1e-5)
    _dmdc_file(tmp_path / "own.pt", (pixels - 0.5) / 0.25, ds.train.labels[:6])
    got = read_dmdc_pt(tmp_path / "own.pt", ds, mean=[0.5] * 3, std=[0.25] * 3)
    assert torch.allclose(got.images, ds.normalize(ds.train.images[:6]), atol=1e-5)


def test_dmdc_pt_evaluated_from_the_command_line(tmp_path, capsys):
    digits = load_dataset("digits")
    run = tmp_path / "rand"
    assert ddm("baseline", "--ipc", "2", "--out", str(run)) == 0
    syn = load_synthetic(run)
    _dmdc_file(tmp_path / "res.pt", (syn.denormalized() - 0.3) / 0.2, syn.labels)
    out = tmp_path / "res-metrics"
    args = ["--dataset", "digits", "--epochs", "1", "--runs", "1", "--out", str(out)]
    norm = ["--syn-mean", "0.3", "--syn-std", "0.2"]
    assert ddm("evaluate", str(tmp_path / "res.pt"), *norm, *args) == 0
    assert (out / "metrics.json").exists() and (out / "grid.png").exists()
    assert torch.allclose(load_synthetic(out).images, syn.images, atol=1e-4)
    assert len(digits.classes) == load_synthetic(out).meta["num_classes"]


def _png(path, size=8, mode="L"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, (size, size)).save(path)


def _broken_png(d):
    (d / "set" / "00000").mkdir(parents=True)
    (d / "set" / "00000" / "a.png").write_bytes(b"not a png")


class Payload:  # a pickled instance of this needs code to load
    pass


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda d: None, [], "missing file or folder"),
        (lambda d: (d / "set").mkdir(), [], "has no class sub-folders"),
        (lambda d: _png(d / "set" / "00000" / "a.png", size=16), [], "is 16x16; digits images"),
        (lambda d: _png(d / "set" / "00000" / "a.png", mode="RGB"), [], "has mode RGB; digits"),
        (lambda d: _png(d / "set" / "00000" / "a.png", mode="RGBA"), [], "has mode RGBA"),
        (lambda d: _png(d / "set" / "00012" / "a.png"), [], "out of range for digits"),
        (lambda d: _png(d / "set" / "cats" / "a.png"), [], "must be numbered (00000"),
        (lambda d: (d / "set" / "00000").mkdir(parents=True), [], "holds no images"),
        (_broken_png, [], "cannot read image"),
        (lambda d: _png(d / "set" / "00000" / "a.png"), ["--syn-pixels"], "describe .pt files"),
    ],
)
def test_bad_image_folders_exit_2_with_one_line(tmp_path, capsys, make, extra, message):
    make(tmp_path)
    code = ddm("evaluate", str(tmp_path / "set"), "--dataset", "digits", "--epochs", "1", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def _pt(obj):
    def make(path):
        torch.save(obj, path)

    return make


@pytest.mark.parametrize(
    ("make", "extra", "message"),
    [
        (lambda p: None, [], "missing file"),
        (lambda p: p.write_bytes(b"garbage"), [], "refused"),
        (lambda p: p.write_bytes(b""), [], "not a readable .pt file"),
        (
            _pt({"data": [[torch.zeros(2, 1, 8, 8), torch.arange(2)]], "x": Payload()}),
            [],
            "needs code to load (it names",
        ),
        (lambda p: pickle.dump({"data": Payload()}, p.open("wb")), [], "refused"),
        (_pt({"images": torch.zeros(2, 1, 8, 8)}), [], "got a dict with keys ['images']"),
        (_pt([torch.zeros(2, 1, 8, 8), torch.arange(2)]), [], "expected the DM/DC layout"),
        (_pt({"data": []}), [], "non-empty list"),
        (_pt({"data": [[torch.zeros(2, 3, 32, 32), torch.arange(2)]]}), [], "digits needs N x 1"),
        (_pt({"data": [[torch.zeros(2, 1, 8, 8), torch.zeros(2, 10)]]}), [], "soft labels"),
        (_pt({"data": [[torch.zeros(2, 1, 8, 8), torch.tensor([0, 10])]]}), [], "labels must be"),
        (_pt({"data": [[torch.zeros(2, 1, 8, 8), torch.arange(2)]]}), [], "no normalisation"),
        (
            _pt({"data": [[torch.zeros(2, 1, 8, 8), torch.arange(2)]]}),
            ["--pt-index", "3"],
            "holds 1 set(s)",
        ),
        (
            _pt({"data": [[torch.zeros(2, 1, 8, 8), torch.arange(2)]]}),
            ["--syn-mean", "0.5"],
            "both --syn-mean and --syn-std",
        ),
        (
            _pt({"data": [[torch.zeros(2, 1, 8, 8), torch.arange(2)]]}),
            ["--syn-mean", "0.5", "0.5", "--syn-std", "1", "1"],
            "need 1 value(s)",
        ),
    ],
)
def test_bad_pt_files_exit_2_with_one_line(tmp_path, capsys, make, extra, message):
    path = tmp_path / "res.pt"
    make(path)
    code = ddm("evaluate", str(path), "--dataset", "digits", "--epochs", "1", *extra)
    err = capsys.readouterr().err
    assert code == 2 and message in err, err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_evaluate_arguments_for_external_sets(tmp_path, capsys):
    _png(tmp_path / "set" / "00000" / "a.png")
    assert ddm("evaluate", str(tmp_path / "set"), "--epochs", "1") == 2
    assert "name the real data to test on with --dataset" in capsys.readouterr().err
    out = ["--dataset", "digits", "--epochs", "1", "--out", str(tmp_path / "set")]
    assert ddm("evaluate", str(tmp_path / "set"), *out) == 2
    assert "is the input itself" in capsys.readouterr().err
    run = tmp_path / "run"
    assert ddm("baseline", "--ipc", "1", "--out", str(run)) == 0
    assert ddm("evaluate", str(run), "--epochs", "1", "--out", str(tmp_path / "m")) == 2
    assert "--out names where the metrics of one set made elsewhere go" in capsys.readouterr().err
    syn = load_synthetic(run)
    other = SyntheticSet(syn.images, syn.labels, {**syn.meta, "dataset": "mnist"})
    (tmp_path / "c10").mkdir()
    save_synthetic(tmp_path / "c10", other)
    assert ddm("evaluate", str(tmp_path / "c10"), "--dataset", "digits", "--epochs", "1") == 2
    assert "was condensed on mnist, not --dataset digits" in capsys.readouterr().err


def test_real_cifar10_set_through_both_formats(tmp_path, cifar_root):
    """A CIFAR-10 subset as DM/DC would save it (its hard-coded statistics, not the data's)
    and as a PNG tree comes back as the same normalised images."""
    run = tmp_path / "rand"
    args = ["--dataset", "cifar10", "--data-root", str(cifar_root), "--ipc", "2"]
    assert ddm("baseline", *args, "--out", str(run)) == 0
    syn, cifar = load_synthetic(run), load_dataset("cifar10", cifar_root)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in DMDC_NORMALIZATION["cifar10"])
    assert not torch.allclose(std, torch.tensor(cifar.std).view(1, 3, 1, 1), atol=1e-2)
    _dmdc_file(tmp_path / "res.pt", (syn.denormalized() - mean) / std, syn.labels)
    assert torch.allclose(read_dmdc_pt(tmp_path / "res.pt", cifar).images, syn.images, atol=1e-4)
    export_imagefolder(syn, tmp_path / "pngs")
    assert torch.equal(import_set(tmp_path / "pngs", cifar).images, syn.images)
