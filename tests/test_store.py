"""The dataset store: ``ddm prepare`` writes it, ``load_dataset("store", ...)`` reads it lazily.

The equivalence test: a store made from an image folder holds exactly the images, labels,
mean and std that the in-memory image-folder loader reads from the same folder.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import ddm.data.prepare as prepare_mod
from ddm.cli import main
from ddm.config import CondenseConfig, available_presets, load_preset
from ddm.data import DatasetError, Split, load_dataset
from ddm.data.prepare import prepare_store
from ddm.data.store import ClassArrays, read_index
from ddm.io import load_synthetic, read_json

CLASSES = ("n01", "n02", "n03")


def write_tree(root: Path, n_train: int = 5, n_val: int = 2, flat_val: bool = False) -> Path:
    """A small JPEG class tree: train/<class>/*.JPEG and val/<class>/ (or a flat val/)."""
    rng = np.random.default_rng(0)
    for split, n in (("train", n_train), ("val", n_val)):
        for k, c in enumerate(CLASSES):
            folder = root / split / c if not (split == "val" and flat_val) else root / "val"
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                h, w = 18 + 2 * i, 22 + k  # not square, not the store's size
                pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
                pixels[..., k] //= 2  # classes differ a little in colour
                name = f"{split}_{c}_{i}.JPEG"
                Image.fromarray(pixels).save(folder / name, quality=90)
    return root


def prep(src: Path, out: Path, **kw) -> None:
    prepare_store(src, out, kw.pop("image_size", 16), progress=False, log=None, **kw)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    return write_tree(tmp_path / "src")


@pytest.fixture
def store(tree: Path, tmp_path: Path) -> Path:
    out = tmp_path / "store"
    prep(tree, out)
    return out


def test_store_equals_imagefolder(tree, store):
    """Same decoding, order, labels and statistics as the in-memory image-folder loader."""
    ref = load_dataset("imagefolder", tree, image_size=16)
    ds = load_dataset("store", store)
    assert ds.classes == CLASSES and ds.name == "store"
    assert ds.train.lazy and ds.test.lazy
    for a, b in ((ds.train, ref.train), (ds.test, ref.test)):
        assert torch.equal(a.materialize(), b.images)
        assert torch.equal(a.labels, b.labels)
    np.testing.assert_allclose(ds.mean, ref.mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.std, ref.std, rtol=0, atol=1e-12)
    assert ds.dsa_strategy == "color_crop_cutout_flip_scale_rotate"
    x, y = ds.test_tensors()
    rx, ry = ref.test_tensors()
    assert torch.equal(y, ry) and torch.allclose(x, rx)

    index = read_index(store)
    assert index["train_counts"] == [5, 5, 5] and index["val_counts"] == [2, 2, 2]
    assert (index["image_size"], index["channels"], index["complete"]) == (16, 3, True)
    assert index["source"] == str(tree.resolve())
    for k in range(3):
        arr = np.load(store / "train" / f"{k:05d}.npy")
        assert arr.dtype == np.uint8 and arr.shape == (5, 3, 16, 16)


def test_lazy_per_class_access(store):
    """A class batch opens only its class's file; random global indices read the right rows."""
    ds = load_dataset("store", store)
    images = ds.train.images
    assert isinstance(images, ClassArrays) and images.opened() == 0
    assert len(images) == 15 and images.shape == (15, 3, 16, 16) and images.dim() == 4
    gen = torch.Generator().manual_seed(0)
    batch = ds.class_batch(1, 3, gen)
    assert batch.shape == (3, 3, 16, 16) and batch.dtype == torch.float32
    assert images.opened() == 1 and ds.test.images.opened() == 0

    every = ds.train.materialize()
    idx = torch.tensor([14, 0, 7, 7, -1, 5])
    assert torch.equal(images[idx], every[idx])
    assert torch.equal(images.index_select(0, idx), every[idx])
    assert torch.equal(ds.train.gather(idx), every[idx])
    mask = ds.train.labels == 2
    assert torch.equal(images[mask], every[mask])
    assert torch.equal(images[3:9:2], every[3:9:2])
    assert torch.equal(images[4], every[4]) and torch.equal(images[torch.tensor(4)], every[4])
    with pytest.raises(IndexError):
        images[torch.tensor([15])]


def test_subset_classes_stays_lazy(store):
    """A block of classes (what one rank holds) is a lazy store too; relabel makes 0..k-1."""
    full = load_dataset("store", store)
    block = full.subset_classes([2, 1], relabel=True)
    assert block.classes == ("n03", "n02") and block.num_classes == 2
    assert isinstance(block.train.images, ClassArrays) and block.train.images.opened() == 0
    got = block.normalize(block.train.gather(block.train.class_indices(0)))
    assert block.train.images.opened() == 1  # class 2's file only (shared with the full set)
    assert full.train.images.opened() == 1
    every = full.train.materialize()
    assert torch.equal(got, full.normalize(every[full.train.labels == 2]))
    kept = full.subset_classes([0])
    assert kept.num_classes == 3 and len(kept.train) == 5
    assert isinstance(kept.train.images, ClassArrays)
    # a partial selection is read into memory
    part = full.train.select(torch.arange(15) < 7)
    assert isinstance(part.images, torch.Tensor) and torch.equal(part.images, every[:7])


def test_flat_val_with_label_files(tmp_path):
    """ImageNet's flat val/: '<file> <class>' lines, or Kaggle's LOC_val_solution.csv."""
    src = write_tree(tmp_path / "flat", flat_val=True)
    ref_tree = write_tree(tmp_path / "folders")
    files = sorted((src / "val").iterdir())
    labels = tmp_path / "val_labels.txt"
    labels.write_text("".join(f"{p.name}\t{p.name.split('_')[1]}\n" for p in files))
    prep(src, tmp_path / "a", val_labels=labels)
    ref = load_dataset("store", tmp_path / "a")
    prep(ref_tree, tmp_path / "ref")
    want = load_dataset("store", tmp_path / "ref")
    assert torch.equal(ref.test.materialize(), want.test.materialize())
    assert torch.equal(ref.test.labels, want.test.labels)

    # Kaggle's release: <top>/ILSVRC/Data/CLS-LOC/{train,val}/ and <top>/LOC_val_solution.csv
    kaggle_src = tmp_path / "top" / "ILSVRC" / "Data" / "CLS-LOC"
    kaggle_src.parent.mkdir(parents=True)
    src.rename(kaggle_src)
    csv = ["ImageId,PredictionString"]
    for p in files:
        c = p.name.split("_")[1]
        csv.append(f"{p.stem},{c} 1 2 30 40 {c} 3 4 5 6")
    (tmp_path / "top" / "LOC_val_solution.csv").write_text("\n".join(csv) + "\n")
    prep(kaggle_src, tmp_path / "b")
    kaggle = load_dataset("store", tmp_path / "b")
    assert torch.equal(kaggle.test.labels, want.test.labels)
    assert torch.equal(kaggle.test.materialize(), want.test.materialize())
    src = kaggle_src

    with pytest.raises(DatasetError, match="no label"):
        labels.write_text(f"{files[0].name} n01\n")
        prep(src, tmp_path / "c", val_labels=labels)


def test_classes_option_and_order(tree, tmp_path):
    (tmp_path / "classes.txt").write_text("n03\nn01\n")
    prep(tree, tmp_path / "s", classes=str(tmp_path / "classes.txt"))
    ds = load_dataset("store", tmp_path / "s")
    assert ds.classes == ("n03", "n01") and len(ds.train) == 10
    prep(tree, tmp_path / "t", classes="n02")
    assert load_dataset("store", tmp_path / "t").classes == ("n02",)
    with pytest.raises(DatasetError, match="missing"):
        prep(tree, tmp_path / "u", classes="n02,n09")


def test_corrupt_images_skipped_and_listed(tree, tmp_path, capsys):
    bad = tree / "train" / "n02" / "zz_broken.JPEG"
    bad.write_bytes(b"\xff\xd8 not really a jpeg")
    out = tmp_path / "store"
    assert (
        main(["--quiet", "prepare", "--src", str(tree), "--out", str(out), "--image-size", "16"])
        == 0
    )
    text = capsys.readouterr().out
    assert "1 corrupt images skipped" in text and "--dataset store" in text
    assert (out / "corrupt.txt").read_text() == f"{bad}\n"
    index = read_index(out)
    assert index["train_counts"] == [5, 5, 5] and index["corrupt"][1] == [str(bad)]


def test_stopped_prepare_continues(tree, tmp_path, monkeypatch):
    """A run stopped after some classes is refused by the loader and finished by a rerun."""
    out = tmp_path / "store"
    real_save, calls = prepare_mod._save_npy, []

    def failing_save(path, array):
        calls.append(path)
        if len(calls) == 3:  # class 0's train and val, then stop in class 1
            raise KeyboardInterrupt
        real_save(path, array)

    monkeypatch.setattr(prepare_mod, "_save_npy", failing_save)
    with pytest.raises(KeyboardInterrupt):
        prep(tree, out)
    monkeypatch.setattr(prepare_mod, "_save_npy", real_save)
    assert not list((out / "train").glob(".*.tmp"))
    with pytest.raises(DatasetError, match=r"incomplete \(1 of 3 classes"):
        load_dataset("store", out)
    decoded = []
    real_decode = prepare_mod._decode
    monkeypatch.setattr(prepare_mod, "_decode", lambda p, s: decoded.append(p) or real_decode(p, s))
    report = prepare_store(tree, out, 16, progress=False, log=None)
    assert report.written_classes == 2 and len(decoded) == 14  # classes 1 and 2 only
    prep(tree, tmp_path / "whole")
    a, b = load_dataset("store", out), load_dataset("store", tmp_path / "whole")
    assert torch.equal(a.train.materialize(), b.train.materialize()) and a.mean == b.mean
    with pytest.raises(DatasetError, match="another image_size"):
        prep(tree, out, image_size=8)


def test_store_errors(store, tmp_path, capsys):
    with pytest.raises(DatasetError, match="not a dataset store"):
        load_dataset("store", tmp_path)
    with pytest.raises(DatasetError, match="--data-root"):
        load_dataset("store")
    with pytest.raises(ValueError, match="holds 16x16 images"):
        load_dataset("store", store, image_size=32)
    (store / "val" / "00002.npy").unlink()
    with pytest.raises(DatasetError, match="00002.npy is missing"):
        load_dataset("store", store)
    np.save(store / "val" / "00002.npy", np.zeros((2, 3, 8, 8), dtype=np.uint8))
    ds = load_dataset("store", store)
    with pytest.raises(DatasetError, match="the index says"):
        ds.test.materialize()
    (store / "index.json").write_text("{not json")
    code = main(
        ["--quiet", "evaluate", str(tmp_path), "--dataset", "store", "--data-root", str(store)]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "not a readable store index" in err
    with pytest.raises(DatasetError, match="not empty"):
        prep(store.parent / "src", tmp_path / "src")


def test_split_contract_for_in_memory_images():
    """gather/materialize/select behave the same on a plain tensor split."""
    images = torch.arange(4 * 3 * 2 * 2, dtype=torch.uint8).reshape(4, 3, 2, 2)
    split = Split(images, torch.tensor([0, 1, 0, 1]), 2)
    assert not split.lazy and split.materialize() is split.images
    assert torch.equal(split.gather(torch.tensor([3, 0])), images[[3, 0]])
    sub = split.select(split.labels == 1, torch.tensor([0, 0]), 1)
    assert sub.num_classes == 1 and torch.equal(sub.images, images[[1, 3]])


def test_presets_resolve_and_store_presets():
    names = available_presets()
    for name in names:
        CondenseConfig(**load_preset(name)["settings"]).resolved()
    for ipc in (1, 10, 50):
        for method in ("dm", "idm", "ddm-released"):
            settings = load_preset(f"{method}-imagenet1k-ipc{ipc}")["settings"]
            assert settings["dataset"] == "store" and settings["image_size"] == 64
            assert settings["depth"] == 4 and settings["ipc"] == ipc
    assert load_preset("ddm-released-imagenet1k-ipc10")["settings"]["form"] == "released"
    for name in ("imagenette", "imagewoof"):
        assert load_preset(f"idm-{name}-store-ipc10")["settings"]["dataset"] == "store"


def test_prepare_condense_evaluate(tmp_path, capsys):
    """The whole path on a generated JPEG tree: prepare -> condense (preset) -> evaluate."""
    src = write_tree(tmp_path / "src", n_train=4, n_val=2)
    store = tmp_path / "store"

    def ddm(*args: str) -> int:
        return main(["--quiet", *[str(a) for a in args]])

    assert ddm("prepare", "--src", src, "--out", store, "--image-size", "16", "--workers", "2") == 0
    run = tmp_path / "run"
    assert (
        ddm(
            "condense", "--preset", "ddm-released-imagenet1k-ipc1", "--image-size", "16",
            "--data-root", store, "--depth", "2", "--iterations", "2", "--batch-real", "4",
            "--out", run,
        )
        == 0
    )  # fmt: skip
    meta = read_json(run / "meta.json")
    assert meta["dataset"] == "store" and meta["classes"] == list(CLASSES)
    assert meta["dsa_strategy"] == "color_crop_cutout_flip_scale_rotate"
    assert load_synthetic(run).images.shape == (3, 3, 16, 16)
    assert ddm("evaluate", run, "--epochs", "2", "--runs", "1", "--depth", "2") == 0
    assert "runs" in capsys.readouterr().out
    evaluation = read_json(run / "metrics.json")["evaluations"][0]
    assert evaluation["epochs"] == 2 and 0 <= evaluation["mean"] <= 100
    assert json.loads((run / "config.json").read_text())["data_root"] == str(store)


def test_store_gives_the_same_runs_as_memory(tree, store):
    """IDM's queue (random global indices), herding and continual's class subsets read a store
    exactly as they read the same images in memory."""
    from ddm.baselines import herding
    from ddm.condense import condense
    from ddm.continual import class_subset

    lazy = load_dataset("store", store)
    ref = load_dataset("imagefolder", tree, image_size=16)
    cfg = CondenseConfig(
        dataset="store", method="idm", ipc=1, iterations=2, batch_real=4, depth=2,
        model_batch=6, model_train_steps=2, net_init=1, device="cpu",
    )  # fmt: skip
    a = condense(cfg, None, dataset=lazy, progress=False)
    b = condense(cfg, None, dataset=ref, progress=False)
    assert torch.equal(a.images, b.images)
    h1 = herding(lazy, 1, epochs=1, device="cpu", progress=False)
    h2 = herding(ref, 1, epochs=1, device="cpu", progress=False)
    assert torch.equal(h1.images, h2.images)
    x, y = class_subset(lazy, [2, 0]).test_tensors()
    rx, ry = class_subset(ref, [2, 0]).test_tensors()
    assert torch.equal(x, rx) and torch.equal(y, ry)
