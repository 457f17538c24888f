"""Tests for ddm.data: every file format round-trips, errors name the file, real data matches."""

from __future__ import annotations

import functools
import gzip
import os
import pickle
import time
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image

from ddm.data import (
    DATASETS,
    Dataset,
    DatasetError,
    Split,
    available_datasets,
    channel_stats,
    load_dataset,
)

IMAGENETTE_WNIDS = [
    "n01440764",
    "n02102040",
    "n02979186",
    "n03000684",
    "n03028079",
    "n03394916",
    "n03417042",
    "n03425413",
    "n03445777",
    "n03888605",
]
IMAGEWOOF_WNIDS = [
    "n02086240",
    "n02087394",
    "n02088364",
    "n02089973",
    "n02093754",
    "n02096294",
    "n02099601",
    "n02105641",
    "n02111889",
    "n02115641",
]


def hand_stats(images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel mean/std (population) of uint8 N x C x H x W, computed directly."""
    x = images.astype(np.float64) / 255.0
    return x.mean(axis=(0, 2, 3)), x.std(axis=(0, 2, 3))


def assert_stats(ds: Dataset, train_images: np.ndarray) -> None:
    mean, std = hand_stats(train_images)
    np.testing.assert_allclose(ds.mean, mean, rtol=0, atol=1e-12)
    np.testing.assert_allclose(ds.std, std, rtol=0, atol=1e-12)


def rand_u8(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.integers(0, 256, size=shape, dtype=np.uint8)


# --------------------------------------------------------------------------------------
# File writers (the real formats, tiny)
# --------------------------------------------------------------------------------------


def write_idx(path: Path, array: np.ndarray, magic: int, compress: bool) -> None:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in array.shape)
    raw = header + array.astype(np.uint8).tobytes()
    path.write_bytes(gzip.compress(raw) if compress else raw)


def write_mnist(folder: Path, rng: np.random.Generator, compress: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    data = {
        "train": (rand_u8(rng, 7, 28, 28), np.array([0, 1, 2, 3, 9, 1, 1], np.uint8)),
        "t10k": (rand_u8(rng, 3, 28, 28), np.array([5, 0, 9], np.uint8)),
    }
    gz = ".gz" if compress else ""
    for prefix, (images, labels) in data.items():
        write_idx(folder / f"{prefix}-images-idx3-ubyte{gz}", images, 2051, compress)
        write_idx(folder / f"{prefix}-labels-idx1-ubyte{gz}", labels, 2049, compress)
    return data


def write_cifar10(folder: Path, rng: np.random.Generator, meta: bool = True) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rand_u8(rng, 4, 3072)
        labels = [int(v) for v in rng.integers(0, 10, size=4)]
        batches[name] = (data, labels)
        with open(folder / name, "wb") as f:
            pickle.dump({b"batch_label": b"x", b"labels": labels, b"data": data}, f)
    if meta:
        names = [f"class{i}".encode() for i in range(10)]
        with open(folder / "batches.meta", "wb") as f:
            pickle.dump({b"label_names": names, b"num_vis": 3072}, f)
    return batches


def write_cifar100(folder: Path, rng: np.random.Generator) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, n in (("train", 6), ("test", 3)):
        data = rand_u8(rng, n, 3072)
        fine = rng.integers(0, 100, size=n)
        out[name] = (data, fine)
        # str keys, a numpy label array and protocol 2: all must be accepted
        with open(folder / name, "wb") as f:
            obj = {"data": data, "fine_labels": fine, "coarse_labels": [0] * n}
            pickle.dump(obj, f, protocol=2)
    with open(folder / "meta", "wb") as f:
        pickle.dump({b"fine_label_names": [f"c{i:02d}".encode() for i in range(100)]}, f)
    return out


def write_svhn(folder: Path, rng: np.random.Generator) -> dict:
    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for name, labels in (("train", [10, 1, 2, 10, 9]), ("test", [3, 10])):
        x = rand_u8(rng, 32, 32, 3, len(labels))
        y = np.array(labels, dtype=np.uint8).reshape(-1, 1)
        scipy.io.savemat(folder / f"{name}_32x32.mat", {"X": x, "y": y})
        out[name] = (x, np.array(labels) % 10)
    return out


def save_image(path: Path, array: np.ndarray, fmt: str | None = None, **kwargs) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, format=fmt, quality=95, **kwargs)


COLOURS = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (220, 220, 40)]


def solid(colour: tuple[int, int, int], size: int = 64) -> np.ndarray:
    return np.broadcast_to(np.array(colour, np.uint8), (size, size, 3)).copy()


def write_tiny(folder: Path) -> list[str]:
    """Three classes: two train JPEGs each (solid colours), val with one unknown wnid."""
    wnids = ["n003", "n001", "n002"]  # deliberately not sorted: line order is label order
    folder.mkdir(parents=True)
    (folder / "wnids.txt").write_text("\n".join(wnids) + "\n")
    (folder / "words.txt").write_text("n001\tcat, kitty\nn002\tdog\nn003\tfish\nn999\tunused\n")
    for k, w in enumerate(wnids):
        for i in range(2):
            save_image(folder / "train" / w / "images" / f"{w}_{i}.JPEG", solid(COLOURS[k]))
        (folder / "train" / w / f"{w}_boxes.txt").write_text("ignored\n")
    val = [("val_0.JPEG", "n002"), ("val_1.JPEG", "n999"), ("val_2.JPEG", "n003")]
    for fname, w in val:
        colour = COLOURS[wnids.index(w)] if w in wnids else COLOURS[3]
        save_image(folder / "val" / "images" / fname, solid(colour), "JPEG")
    (folder / "val" / "val_annotations.txt").write_text(
        "".join(f"{f}\t{w}\t0\t0\t10\t10\n" for f, w in val)
    )
    # one grey JPEG: must come back as 3 identical channels
    grey = np.full((64, 64), 128, np.uint8)
    save_image(folder / "train" / "n002" / "images" / "n002_2.JPEG", grey)
    return wnids


# --------------------------------------------------------------------------------------
# Split and Dataset
# --------------------------------------------------------------------------------------


def toy_dataset(name: str = "toy") -> Dataset:
    g = torch.Generator().manual_seed(0)
    labels = torch.tensor([2, 0, 1, 2, 2, 0, 1, 2, 0, 2], dtype=torch.int64)
    images = torch.randint(0, 256, (10, 3, 4, 4), dtype=torch.uint8, generator=g)
    test = Split(images[:4].clone(), torch.tensor([0, 1, 2, 2]), 3)
    return Dataset.from_splits(name, ("a", "b", "c"), Split(images, labels, 3), test)


def test_split_class_index_and_counts():
    ds = toy_dataset()
    assert ds.train.class_indices(2).tolist() == [0, 3, 4, 7, 9]
    assert ds.train.class_indices(0).tolist() == [1, 5, 8]
    assert ds.train.class_indices(2).dtype == torch.int64
    assert ds.train.class_counts().tolist() == [3, 2, 5]
    assert len(ds.train) == 10
    with pytest.raises(ValueError):
        ds.train.class_indices(3)
    # without num_classes, counts stop at the largest label
    s = Split(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([1, 1]))
    assert s.class_counts().tolist() == [0, 2]
    assert s.class_indices(5).numel() == 0


def test_split_rejects_bad_input():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 2, 2), torch.tensor([0, 1]))
    with pytest.raises(ValueError, match="int64"):
        Split(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0, 1], dtype=torch.int32))
    with pytest.raises(ValueError, match="labels"):
        Split(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.tensor([0]))


def test_properties_and_stats():
    ds = toy_dataset()
    assert (ds.num_classes, ds.channels, ds.image_size) == (3, 3, 4)
    assert_stats(ds, ds.train.images.numpy())
    assert ds.dsa_strategy == "color_crop_cutout_flip_scale_rotate"
    for name in ("mnist", "svhn", "digits"):
        assert toy_dataset(name).dsa_strategy == "color_crop_cutout_scale_rotate"
    mean, std = channel_stats(ds.train.images)
    assert mean == ds.mean and std == ds.std


def test_channel_stats_chunks_exactly():
    g = torch.Generator().manual_seed(1)
    big = torch.randint(0, 256, (20, 1, 1024, 1024), dtype=torch.uint8, generator=g)  # 2 chunks
    mean, std = channel_stats(big)
    m, s = hand_stats(big.numpy())
    np.testing.assert_allclose(mean, m, atol=1e-12)
    np.testing.assert_allclose(std, s, atol=1e-12)


def test_normalize_denormalize():
    ds = toy_dataset()
    x = ds.train.images
    z = ds.normalize(x)
    assert z.dtype == torch.float32 and z.shape == x.shape
    mean = torch.tensor(ds.mean).view(3, 1, 1)
    std = torch.tensor(ds.std).view(3, 1, 1)
    torch.testing.assert_close(z, ((x.double() / 255 - mean) / std).float())
    # normalised train images have per-channel mean 0 and std 1
    torch.testing.assert_close(z.mean((0, 2, 3)), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(z.std((0, 2, 3), unbiased=False), torch.ones(3), atol=1e-5, rtol=0)
    back = ds.denormalize(z)
    torch.testing.assert_close(back, x.float() / 255, atol=1e-6, rtol=0)
    assert ds.denormalize(torch.full((1, 3, 2, 2), 100.0)).max() == 1.0
    assert ds.denormalize(torch.full((1, 3, 2, 2), -100.0)).min() == 0.0
    # any leading shape
    assert ds.normalize(x[0]).shape == (3, 4, 4)
    assert ds.normalize(x.view(2, 5, 3, 4, 4)).shape == (2, 5, 3, 4, 4)
    with pytest.raises(TypeError):
        ds.normalize(x.float())


def test_class_batch():
    ds = toy_dataset()
    g = torch.Generator().manual_seed(3)
    idx = ds.class_subset_indices(2, 3, g)
    assert len(idx) == 3 and len(set(idx.tolist())) == 3
    assert set(idx.tolist()) <= {0, 3, 4, 7, 9}
    batch = ds.class_batch(2, 3, torch.Generator().manual_seed(3))
    assert batch.dtype == torch.float32 and batch.shape == (3, 3, 4, 4)
    torch.testing.assert_close(batch, ds.normalize(ds.train.images[idx]))
    # deterministic for a seeded generator, different for another seed (somewhere)
    a = ds.class_subset_indices(2, 3, torch.Generator().manual_seed(5))
    b = ds.class_subset_indices(2, 3, torch.Generator().manual_seed(5))
    assert a.tolist() == b.tolist()
    draws = {
        tuple(ds.class_subset_indices(2, 3, torch.Generator().manual_seed(s)).tolist())
        for s in range(20)
    }
    assert len(draws) > 1
    # n >= class size: all of them, shuffled, no duplicates
    all_idx = ds.class_subset_indices(0, 10, torch.Generator().manual_seed(0))
    assert sorted(all_idx.tolist()) == [1, 5, 8]
    assert (ds.train.labels[ds.class_subset_indices(1, 99, g)] == 1).all()
    with pytest.raises(ValueError):
        ds.class_batch(3, 1, g)


def test_train_test_tensors():
    ds = toy_dataset()
    x, y = ds.train_tensors()
    torch.testing.assert_close(x, ds.normalize(ds.train.images))
    assert y.tolist() == ds.train.labels.tolist()
    xt, yt = ds.test_tensors()
    assert xt.shape == (4, 3, 4, 4) and yt.tolist() == [0, 1, 2, 2]


def test_subset_classes_keeps_labels():
    ds = toy_dataset()
    sub = ds.subset_classes([2, 0])
    assert sorted(set(sub.train.labels.tolist())) == [0, 2]
    assert len(sub.train) == 8 and len(sub.test) == 3
    assert sub.classes == ds.classes and sub.mean == ds.mean and sub.std == ds.std
    assert sub.num_classes == 3 and sub.name == ds.name
    assert sub.train.class_counts().tolist() == [3, 0, 5]
    # the kept images are the original ones, in order
    keep = torch.tensor([0, 1, 3, 4, 5, 7, 8, 9])
    assert torch.equal(sub.train.images, ds.train.images[keep])
    with pytest.raises(ValueError, match="no training images"):
        sub.class_batch(1, 2, torch.Generator().manual_seed(0))
    with pytest.raises(ValueError):
        ds.subset_classes([0, 3])


# --------------------------------------------------------------------------------------
# Registry, names, root handling
# --------------------------------------------------------------------------------------


def test_registry_and_unknown_name():
    names = available_datasets()
    assert names == sorted(DATASETS)
    for n in (
        "digits",
        "mnist",
        "fashion-mnist",
        "svhn",
        "cifar10",
        "cifar100",
        "tiny-imagenet",
        "imagenette",
        "imagewoof",
        "imagefolder",
    ):
        assert n in names
    with pytest.raises(ValueError, match="unknown dataset") as err:
        load_dataset("cifar11")
    assert "cifar10" in str(err.value) and "tiny-imagenet" in str(err.value)


@pytest.mark.parametrize("name", ["cifar10", "mnist", "tiny-imagenet", "imagefolder"])
def test_root_none_asks_for_data_root(name):
    with pytest.raises(DatasetError, match="--data-root"):
        load_dataset(name)


def test_missing_root_folder(tmp_path):
    with pytest.raises(DatasetError, match="nowhere"):
        load_dataset("cifar10", tmp_path / "nowhere")


def test_root_without_dataset_names_layout(tmp_path):
    with pytest.raises(DatasetError) as err:
        load_dataset("cifar10", tmp_path)
    msg = str(err.value)
    assert "cifar-10-batches-py" in msg and "data_batch_1" in msg and "toronto" in msg


# --------------------------------------------------------------------------------------
# digits
# --------------------------------------------------------------------------------------


def test_digits():
    from sklearn.datasets import load_digits

    ds = load_dataset("digits")
    assert len(ds.train) + len(ds.test) == 1797
    assert ds.classes == tuple("0123456789")
    assert ds.train.images.shape[1:] == (1, 8, 8) and ds.train.images.dtype == torch.uint8
    assert int(ds.train.images.max()) == 255 and int(ds.train.images.min()) == 0
    total = np.bincount(load_digits().target, minlength=10)
    test_counts = ds.test.class_counts().numpy()
    assert (ds.train.class_counts().numpy() + test_counts == total).all()
    assert (np.abs(test_counts - total / 4) <= 0.5).all()  # 25% of every class
    again = load_dataset("DIGITS")
    assert torch.equal(again.test.images, ds.test.images)
    assert torch.equal(again.test.labels, ds.test.labels)
    # pixel values: round(v * 255 / 16) of the sklearn data, every image present once
    bunch = load_digits()
    scaled = np.rint(bunch.data * 255 / 16).astype(np.uint8)
    ours = torch.cat([ds.train.images, ds.test.images]).reshape(-1, 64).numpy()
    assert sorted(map(bytes, ours)) == sorted(map(bytes, scaled))
    assert_stats(ds, ds.train.images.numpy())


# --------------------------------------------------------------------------------------
# MNIST / Fashion-MNIST
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["", "MNIST", "MNIST/raw"])
def test_mnist_roundtrip_and_roots(tmp_path, sub):
    data = write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(0))
    ds = load_dataset("mnist", tmp_path / sub if sub else tmp_path)
    (tr_x, tr_y), (te_x, te_y) = data["train"], data["t10k"]
    assert ds.train.images.shape == (7, 1, 28, 28) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.dtype == torch.int64
    assert np.array_equal(ds.train.images[:, 0].numpy(), tr_x)
    assert np.array_equal(ds.test.images[:, 0].numpy(), te_x)
    assert ds.train.labels.tolist() == tr_y.tolist() and ds.test.labels.tolist() == te_y.tolist()
    assert ds.classes == tuple("0123456789") and ds.name == "mnist"
    assert ds.train.class_counts().tolist() == [1, 3, 1, 1, 0, 0, 0, 0, 0, 1]
    assert_stats(ds, tr_x[:, None])


@pytest.mark.parametrize("name", ["fashion-mnist", "Fashion_MNIST", "fashionmnist"])
def test_fashion_mnist_plain_files(tmp_path, name):
    data = write_mnist(tmp_path, np.random.default_rng(1), compress=False)
    ds = load_dataset(name, tmp_path)
    assert ds.name == "fashion-mnist"
    assert ds.classes[0] == "T-shirt/top" and ds.classes[9] == "Ankle boot"
    assert len(ds.classes) == 10
    assert np.array_equal(ds.train.images[:, 0].numpy(), data["train"][0])
    assert ds.dsa_strategy == "color_crop_cutout_flip_scale_rotate"


def test_fashion_mnist_torchvision_layout(tmp_path):
    write_mnist(tmp_path / "FashionMNIST" / "raw", np.random.default_rng(1))
    assert len(load_dataset("fashion-mnist", tmp_path).test) == 3


def test_idx_truncated(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(gzip.compress(gzip.decompress(path.read_bytes())[:-100]))
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*truncated"):
        load_dataset("mnist", tmp_path)


def test_idx_wrong_magic(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    # a labels file where the images should be
    write_idx(tmp_path / "t10k-images-idx3-ubyte.gz", np.zeros(3, np.uint8), 2049, True)
    with pytest.raises(DatasetError, match="t10k-images-idx3-ubyte.gz.*2049"):
        load_dataset("mnist", tmp_path)


def test_idx_not_gzip(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "train-labels-idx1-ubyte.gz").write_bytes(b"this is not gzip data at all")
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        load_dataset("mnist", tmp_path)


def test_idx_missing_file(tmp_path):
    write_mnist(tmp_path, np.random.default_rng(0))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte") as err:
        load_dataset("mnist", tmp_path)
    assert "train-images-idx3-ubyte.gz" in str(err.value)  # the layout is spelled out


# --------------------------------------------------------------------------------------
# SVHN
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("sub", ["", "svhn"])
def test_svhn(tmp_path, sub):
    data = write_svhn(tmp_path / "svhn", np.random.default_rng(2))
    ds = load_dataset("SVHN", tmp_path / sub if sub else tmp_path)
    x, y = data["train"]
    assert ds.train.images.shape == (5, 3, 32, 32)
    assert ds.train.labels.tolist() == [0, 1, 2, 0, 9]  # 10 means the digit 0
    assert ds.test.labels.tolist() == [3, 0]
    for i in range(5):
        assert np.array_equal(ds.train.images[i].numpy(), x[:, :, :, i].transpose(2, 0, 1))
    assert_stats(ds, x.transpose(3, 2, 0, 1))
    assert ds.dsa_strategy == "color_crop_cutout_scale_rotate"


def test_svhn_corrupt_and_missing(tmp_path):
    write_svhn(tmp_path, np.random.default_rng(2))
    (tmp_path / "test_32x32.mat").write_bytes(b"\x00garbage" * 50)
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", tmp_path)
    (tmp_path / "test_32x32.mat").unlink()
    with pytest.raises(DatasetError, match="test_32x32.mat"):
        load_dataset("svhn", tmp_path)


# --------------------------------------------------------------------------------------
# CIFAR-10 / CIFAR-100
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("own_folder", [False, True])
def test_cifar10_roundtrip(tmp_path, own_folder):
    folder = tmp_path / "cifar-10-batches-py"
    batches = write_cifar10(folder, np.random.default_rng(3))
    ds = load_dataset("CIFAR10", folder if own_folder else tmp_path)
    assert ds.train.images.shape == (20, 3, 32, 32) and ds.test.images.shape == (4, 3, 32, 32)
    train_data = np.concatenate([batches[f"data_batch_{i}"][0] for i in range(1, 6)])
    train_labels = sum((batches[f"data_batch_{i}"][1] for i in range(1, 6)), [])
    assert np.array_equal(ds.train.images.numpy(), train_data.reshape(20, 3, 32, 32))
    # CHW rows: the first 1024 values are the red plane
    assert np.array_equal(ds.train.images[0, 0].numpy().ravel(), train_data[0, :1024])
    assert ds.train.labels.tolist() == train_labels
    assert ds.test.labels.tolist() == batches["test_batch"][1]
    assert ds.classes == tuple(f"class{i}" for i in range(10))
    assert ds.train.images.is_contiguous()
    assert_stats(ds, train_data.reshape(20, 3, 32, 32))


def test_cifar10_default_names_without_meta(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(3), meta=False)
    ds = load_dataset("cifar-10", tmp_path)
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"


def test_cifar100(tmp_path):
    data = write_cifar100(tmp_path / "cifar-100-python", np.random.default_rng(4))
    ds = load_dataset("cifar100", tmp_path)
    assert ds.num_classes == 100 and ds.classes[7] == "c07"
    assert ds.train.labels.tolist() == data["train"][1].tolist()
    assert np.array_equal(ds.test.images.numpy(), data["test"][0].reshape(3, 3, 32, 32))
    assert ds.train.class_counts().shape == (100,)
    assert_stats(ds, data["train"][0].reshape(6, 3, 32, 32))


def test_cifar_missing_batch(tmp_path):
    write_cifar10(tmp_path / "cifar-10-batches-py", np.random.default_rng(3))
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DatasetError, match="data_batch_4") as err:
        load_dataset("cifar10", tmp_path)
    assert "toronto" in str(err.value)


def test_cifar_garbage_pickle(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(3))
    (tmp_path / "data_batch_3").write_bytes(os.urandom(64) + b"\x80\x05garbage")
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)
    (tmp_path / "data_batch_3").write_bytes(pickle.dumps({b"data": [1, 2, 3], b"labels": [0]}))
    with pytest.raises(DatasetError, match="data_batch_3"):
        load_dataset("cifar10", tmp_path)


class _Evil:
    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


@pytest.mark.parametrize("kind", ["open", "system"])
def test_cifar_pickle_cannot_run_code(tmp_path, kind):
    marker = tmp_path / "pwned"
    # each payload would create the marker file if it ran
    evil = _Evil(open, str(marker), "w") if kind == "open" else _Evil(os.system, f"touch {marker}")
    payload = pickle.dumps({b"data": evil, b"labels": [0]})
    folder = tmp_path / "cifar-10-batches-py"
    write_cifar10(folder, np.random.default_rng(3))
    (folder / "test_batch").write_bytes(payload)
    with pytest.raises(DatasetError, match="refusing to unpickle.*test_batch"):
        load_dataset("cifar10", tmp_path)
    assert not marker.exists()
    if kind == "open":  # the payload is live: a plain pickle.loads would create the marker
        pickle.loads(payload)[b"data"].close()
        assert marker.exists()


# --------------------------------------------------------------------------------------
# Image folders
# --------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["parent", "own", "alias"])
def test_tiny_imagenet(tmp_path, where):
    folder = tmp_path / "tiny-imagenet-200-subset3"
    wnids = write_tiny(folder)
    name = "tiny_imagenet" if where == "alias" else "tiny-imagenet"
    ds = load_dataset(name, folder if where == "own" else tmp_path)
    assert ds.classes == ("fish", "cat", "dog")  # wnids.txt order, first synonym
    assert ds.train.images.shape == (7, 3, 64, 64) and ds.train.images.dtype == torch.uint8
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 2, 2, 2]
    assert ds.test.labels.tolist() == [2, 0]  # n999 ignored; annotation order
    mean_colour = ds.train.images.float().mean((2, 3))
    expected = torch.tensor([COLOURS[0]] * 2 + [COLOURS[1]] * 2 + [COLOURS[2]] * 2).float()
    torch.testing.assert_close(mean_colour[:6], expected, atol=3, rtol=0)
    assert (ds.train.images[6].float() - 128).abs().max() <= 2  # grey -> 3 equal channels
    torch.testing.assert_close(
        ds.test.images.float().mean((2, 3)),
        torch.tensor([COLOURS[2], COLOURS[0]]).float(),
        atol=3,
        rtol=0,
    )
    assert_stats(ds, ds.train.images.numpy())
    assert len(wnids) == ds.num_classes


def test_tiny_imagenet_resize_and_no_words(tmp_path):
    write_tiny(tmp_path / "t")
    (tmp_path / "t" / "words.txt").unlink()
    ds = load_dataset("tinyimagenet", tmp_path / "t", image_size=32)
    assert ds.classes == ("n003", "n001", "n002")
    assert ds.image_size == 32
    torch.testing.assert_close(
        ds.train.images[0].float().mean((1, 2)), torch.tensor(COLOURS[0]).float(), atol=3, rtol=0
    )


def test_tiny_imagenet_errors(tmp_path):
    folder = tmp_path / "tiny-imagenet-200"
    write_tiny(folder)
    bad = folder / "train" / "n001" / "images" / "n001_1.JPEG"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    with pytest.raises(DatasetError, match="n001_1.JPEG"):
        load_dataset("tiny-imagenet", tmp_path)
    bad.unlink()
    (folder / "val" / "images" / "val_2.JPEG").unlink()
    with pytest.raises(DatasetError, match="val_2.JPEG"):
        load_dataset("tiny-imagenet", tmp_path)
    with pytest.raises(DatasetError, match="wnids.txt"):
        load_dataset("tiny-imagenet", folder / "train")


def gradient_image(w: int, h: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def expected_resize_crop(array: np.ndarray, size: int) -> np.ndarray:
    """Short side to ``size`` (bilinear), centre crop, as the spec describes."""
    img = Image.fromarray(array).convert("RGB")
    w, h = img.size
    s = size / min(w, h)
    nw, nh = max(size, round(w * s)), max(size, round(h * s))
    img = img.resize((nw, nh), Image.Resampling.BILINEAR)
    left, top = (nw - size) // 2, (nh - size) // 2
    return np.asarray(img.crop((left, top, left + size, top + size))).transpose(2, 0, 1)


@pytest.mark.parametrize(
    ("name", "wnids"), [("imagenette", IMAGENETTE_WNIDS), ("imagewoof", IMAGEWOOF_WNIDS)]
)
def test_imagenette_imagewoof(tmp_path, name, wnids):
    folder = tmp_path / f"{name}2-160"
    arrays = {}
    for k, w in enumerate(reversed(wnids)):  # written in reverse: order must come from the list
        arrays[w] = gradient_image(30 + k, 20 + 2 * k, k)
        save_image(folder / "train" / w / f"{w}_a.png", arrays[w])
        save_image(folder / "val" / w / f"ILSVRC_{w}.PNG", arrays[w][:, ::-1].copy())
    ds = load_dataset(name.upper(), tmp_path, image_size=16)
    assert ds.name == name and ds.num_classes == 10 and ds.image_size == 16
    assert ds.train.labels.tolist() == list(range(10))
    for k, w in enumerate(wnids):
        assert np.array_equal(ds.train.images[k].numpy(), expected_resize_crop(arrays[w], 16))
        flipped = arrays[w][:, ::-1].copy()
        assert np.array_equal(ds.test.images[k].numpy(), expected_resize_crop(flipped, 16))
    if name == "imagenette":
        assert ds.classes[0] == "tench" and ds.classes[9] == "parachute"
    else:
        assert ds.classes[0] == "Shih-Tzu" and ds.classes[9] == "dingo"
    # default size is 128, from the dataset's own folder
    ds128 = load_dataset(name, folder)
    assert ds128.train.images.shape == (10, 3, 128, 128)


def test_imagenette_missing_class(tmp_path):
    for w in IMAGENETTE_WNIDS[:-1]:
        save_image(tmp_path / "train" / w / "a.png", solid((1, 2, 3), 8))
    with pytest.raises(DatasetError, match=IMAGENETTE_WNIDS[-1]):
        load_dataset("imagenette", tmp_path, image_size=8)


def write_folder(root: Path, test_name: str = "val") -> dict:
    rng = np.random.default_rng(7)
    imgs = {
        ("train", "dog", "b.png"): rand_u8(rng, 8, 8, 3),
        ("train", "dog", "a.PNG"): rand_u8(rng, 8, 8, 3),
        ("train", "cat", "x.bmp"): rand_u8(rng, 8, 8, 3),
        ("train", "bird", "sub/y.png"): rand_u8(rng, 8, 8, 3),  # nested: still found
        (test_name, "cat", "t.png"): rand_u8(rng, 8, 8, 3),
    }
    for (split, cls, fname), arr in imgs.items():
        save_image(root / split / cls / fname, arr)
    save_image(root / "train" / "bird" / "grey.png", np.full((8, 8), 77, np.uint8))
    rgba = np.zeros((8, 8, 4), np.uint8)
    rgba[..., :3] = 9
    rgba[..., 3] = 255
    save_image(root / "train" / "cat" / "rgba.webp", rgba, "WEBP", lossless=True)
    (root / "train" / "cat" / "notes.txt").write_text("not an image")
    return imgs


@pytest.mark.parametrize("test_name", ["val", "test"])
def test_imagefolder(tmp_path, test_name):
    imgs = write_folder(tmp_path, test_name)
    ds = load_dataset("image_folder", tmp_path, image_size=8)
    assert ds.classes == ("bird", "cat", "dog") and ds.channels == 3
    assert ds.train.labels.tolist() == [0, 0, 1, 1, 2, 2]
    tr = ds.train.images.numpy()
    # bird: grey.png then sub/y.png (files before sub-folders, each sorted)
    assert (tr[0] == 77).all()
    assert np.array_equal(tr[1], imgs[("train", "bird", "sub/y.png")].transpose(2, 0, 1))
    assert (tr[2] == 9).all()  # RGBA lossless webp -> RGB
    assert np.array_equal(tr[3], imgs[("train", "cat", "x.bmp")].transpose(2, 0, 1))
    assert np.array_equal(tr[4], imgs[("train", "dog", "a.PNG")].transpose(2, 0, 1))
    assert np.array_equal(tr[5], imgs[("train", "dog", "b.png")].transpose(2, 0, 1))
    assert ds.test.labels.tolist() == [1]
    assert_stats(ds, tr)
    assert load_dataset("folder", tmp_path).image_size == 32  # default


def test_imagefolder_errors(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "train" / "empty").mkdir()
    with pytest.raises(DatasetError, match="empty"):
        load_dataset("imagefolder", tmp_path, image_size=8)
    (tmp_path / "train" / "empty").rmdir()
    (tmp_path / "train" / "dog" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n broken")
    with pytest.raises(DatasetError, match="b.png"):
        load_dataset("imagefolder", tmp_path, image_size=8)
    with pytest.raises(DatasetError, match="train"):
        load_dataset("imagefolder", tmp_path / "val")


def test_fixed_size_datasets_reject_resizing():
    with pytest.raises(ValueError, match="image_size"):
        load_dataset("digits", image_size=16)


# --------------------------------------------------------------------------------------
# Real data (skipped when ../shared/data is absent); each dataset loaded once
# --------------------------------------------------------------------------------------


@functools.cache
def _real(name: str, root: str) -> tuple[Dataset, float]:
    start = time.perf_counter()
    ds = load_dataset(name, root)
    return ds, time.perf_counter() - start


def test_real_cifar10(cifar_root):
    ds, seconds = _real("cifar10", str(cifar_root))
    assert (len(ds.train), len(ds.test)) == (50000, 10000)
    assert ds.train.images.shape == (50000, 3, 32, 32) and ds.train.images.dtype == torch.uint8
    np.testing.assert_allclose(ds.mean, (0.4914, 0.4822, 0.4465), atol=1e-3)
    np.testing.assert_allclose(ds.std, (0.2470, 0.2435, 0.2616), atol=1e-3)
    assert ds.train.class_counts().tolist() == [5000] * 10
    assert ds.test.class_counts().tolist() == [1000] * 10
    assert ds.classes[0] == "airplane" and ds.classes[9] == "truck"
    assert ds.train.labels[:5].tolist() == [6, 9, 9, 4, 1]  # the original first labels
    assert seconds < 15
    batch = ds.class_batch(3, 10, torch.Generator().manual_seed(0))
    assert batch.shape == (10, 3, 32, 32) and abs(float(batch.mean())) < 1.5


def test_real_cifar10_own_folder(cifar_root):
    ds, _ = _real("cifar10", str(cifar_root / "cifar-10-batches-py"))
    assert len(ds.test) == 10000


def test_real_mnist(mnist_root):
    ds, _ = _real("mnist", str(mnist_root))
    assert (len(ds.train), len(ds.test)) == (60000, 10000)
    assert ds.train.images.shape[1:] == (1, 28, 28)
    assert ds.train.labels[:3].tolist() == [5, 0, 4] and ds.test.labels[:3].tolist() == [7, 2, 1]
    np.testing.assert_allclose(ds.mean, (0.1307,), atol=1e-4)
    np.testing.assert_allclose(ds.std, (0.3081,), atol=1e-4)
    assert ds.dsa_strategy == "color_crop_cutout_scale_rotate"


def test_real_tiny_imagenet(tiny_root):
    ds, _ = _real("tiny-imagenet", str(tiny_root))
    folder = tiny_root / "tiny-imagenet-200-subset10"
    wnids = (folder / "wnids.txt").read_text().split()
    assert ds.num_classes == 10 == len(wnids)
    assert (len(ds.train), len(ds.test)) == (5000, 500)
    assert ds.train.images.shape[1:] == (3, 64, 64)
    assert ds.train.class_counts().tolist() == [500] * 10
    assert ds.test.class_counts().tolist() == [50] * 10
    notes = (folder / "val" / "val_annotations.txt").read_text().splitlines()
    expected = [wnids.index(line.split("\t")[1]) for line in notes if line.strip()]
    assert ds.test.labels.tolist() == expected
    lines = (folder / "words.txt").read_text().splitlines()
    words = dict(line.partition("\t")[::2] for line in lines)
    assert ds.classes[0] == words[wnids[0]].split(",")[0].strip()
    # the first train image of class 0 is train/<wnids[0]>/images/<wnid>_0.JPEG
    first = sorted((folder / "train" / wnids[0] / "images").iterdir())[0]
    with Image.open(first) as img:
        ref = np.asarray(img.convert("RGB")).transpose(2, 0, 1)
    assert np.array_equal(ds.train.images[0].numpy(), ref)


def test_large_jpeg_is_reduced_faithfully(tmp_path):
    """Big JPEGs are decoded at a reduced scale (draft): the result must match a full decode."""
    rng = np.random.default_rng(8)
    blocks = rng.integers(0, 256, size=(24, 32, 3), dtype=np.uint8)
    big = np.repeat(np.repeat(blocks, 10, axis=0), 10, axis=1)  # 240 x 320, 10-px blocks
    path = tmp_path / "train" / "only" / "big.jpg"
    save_image(path, big)
    save_image(tmp_path / "val" / "only" / "v.png", solid((0, 0, 0), 8))
    ds = load_dataset("imagefolder", tmp_path, image_size=32)
    with Image.open(path) as img:
        full = np.asarray(img.convert("RGB"))
    ref = expected_resize_crop(full, 32).astype(np.float64)
    assert ds.train.images.shape == (1, 3, 32, 32)
    diff = np.abs(ds.train.images[0].numpy() - ref).mean()
    assert diff < 4  # about 2.5 with draft, about 10 if drafted too small
