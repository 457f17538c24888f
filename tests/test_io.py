"""Synthetic-set files: round trip, atomic writes, corrupt input, IDM expansion, grids."""

from __future__ import annotations

import errno
import json
import os

import numpy as np
import pytest
import torch

from ddm import io
from ddm.io import (
    RunFolderError,
    SyntheticSet,
    atomic_write_bytes,
    expand,
    load_synthetic,
    make_grid,
    save_synthetic,
)


def _set(n_classes=3, ipc=2, c=3, size=4) -> SyntheticSet:
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_classes * ipc, c, size, size, generator=g)
    labels = torch.arange(n_classes).repeat_interleave(ipc)
    meta = {"dataset": "x", "ipc": ipc, "mean": [0.5] * c, "std": [0.25] * c, "expansion_factor": 1}
    return SyntheticSet(images, labels, meta)


def test_round_trip_exact(tmp_path):
    syn = _set()
    save_synthetic(tmp_path, syn)
    back = load_synthetic(tmp_path)
    assert torch.equal(back.images, syn.images) and back.images.dtype == torch.float32
    assert torch.equal(back.labels, syn.labels) and back.labels.dtype == torch.int64
    assert back.meta == syn.meta
    # the file is plain safetensors with exactly the documented tensors
    from safetensors.torch import load_file

    assert set(load_file(str(tmp_path / "synthetic.safetensors"))) == {"images", "labels"}
    assert json.loads((tmp_path / "meta.json").read_text())["ipc"] == 2


def test_denormalized_uses_meta():
    syn = _set(c=1)
    x = syn.denormalized()
    expected = (syn.images * 0.25 + 0.5).clamp(0, 1)
    assert torch.allclose(x, expected)


def test_corrupt_and_missing_files(tmp_path):
    with pytest.raises(RunFolderError, match="missing file"):
        load_synthetic(tmp_path)
    (tmp_path / "synthetic.safetensors").write_bytes(b"\x00garbage")
    (tmp_path / "meta.json").write_text("{}")
    with pytest.raises(RunFolderError, match="not a readable safetensors"):
        load_synthetic(tmp_path)
    save_synthetic(tmp_path, _set())
    (tmp_path / "meta.json").write_text("{not json")
    with pytest.raises(RunFolderError, match="not valid JSON"):
        load_synthetic(tmp_path)


def test_atomic_write_keeps_old_file_on_full_disk(tmp_path, monkeypatch):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")

    def full(*_a, **_k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(io.os, "fsync", full)
    with pytest.raises(RunFolderError, match="disk full"):
        atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.bin"]  # no temp file left behind


def test_expand_factor_two_quadrants():
    # one 1x4x4 image whose quadrants are constant 1, 2 (top) and 3, 4 (bottom)
    img = torch.tensor(
        [[1, 1, 2, 2], [1, 1, 2, 2], [3, 3, 4, 4], [3, 3, 4, 4]], dtype=torch.float32
    ).view(1, 1, 4, 4)
    out, labels = expand(img, torch.tensor([7]), 2)
    assert out.shape == (4, 1, 4, 4)
    for k, value in enumerate([1, 2, 3, 4]):
        assert torch.allclose(out[k], torch.full((1, 4, 4), float(value)))
    assert labels.tolist() == [7, 7, 7, 7]


def test_expand_identity_and_gradient():
    x = torch.randn(2, 3, 8, 8, requires_grad=True)
    same, lab = expand(x, torch.tensor([0, 1]), 1)
    assert same is x and lab.tolist() == [0, 1]
    out, lab = expand(x, torch.tensor([0, 1]), 2)
    assert out.shape == (8, 3, 8, 8) and lab.tolist() == [0] * 4 + [1] * 4
    out.sum().backward()
    assert torch.isfinite(x.grad).all() and (x.grad != 0).any()
    with pytest.raises(ValueError, match="divisible"):
        expand(torch.zeros(1, 1, 5, 5), torch.tensor([0]), 2)


def test_grid_one_row_per_class():
    images = torch.zeros(6, 3, 4, 4)
    images[2:4] = 1.0  # class 1 white
    labels = torch.tensor([0, 0, 1, 1, 2, 2])
    grid = make_grid(images, labels, pad=2)
    assert grid.shape == (3 * 6 + 2, 2 * 6 + 2, 3) and grid.dtype == np.uint8
    row1 = grid[2 + 6 : 2 + 6 + 4, 2:6]
    assert (row1 == 255).all()
    assert (grid[2:6, 2:6] == 0).all()


def test_save_grid_writes_png(tmp_path):
    from PIL import Image

    io.save_grid(tmp_path / "g.png", torch.rand(4, 1, 8, 8), torch.tensor([0, 0, 1, 1]))
    with Image.open(tmp_path / "g.png") as im:
        assert im.format == "PNG" and im.width > 8
    assert os.path.getsize(tmp_path / "g.png") > 0
