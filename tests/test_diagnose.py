"""ddm diagnose: style gap and intra-class diversity of a condensed set (on digits, small)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math

import pytest
import torch
from PIL import Image

import ddm.diagnose as dg
from ddm.baselines import random_subset
from ddm.data import load_dataset
from ddm.diagnose import CONDENSED, RANDOM, DiagnoseReport, add_parser, diagnose, plot
from ddm.io import SyntheticSet, atomic_write_json, save_synthetic
from ddm.losses import correlation_loss, default_icd_k, diversity_loss, moments_loss
from ddm.models import build_model
from ddm.runtime import generator, seed_for

QUICK = {"nets": 2, "batch": 48, "device": "cpu"}


@pytest.fixture(autouse=True)
def _one_thread():
    """8x8 inputs are tiny: one thread is faster, and kinder to a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _noise_set(real: SyntheticSet) -> SyntheticSet:
    noise = torch.randn(real.images.shape, generator=torch.Generator().manual_seed(0))
    return SyntheticSet(noise, real.labels, real.meta)


def test_real_images_have_a_much_smaller_style_gap_than_noise(digits):
    real = random_subset(digits, 10, seed=1)
    r_real = diagnose(real, digits, **QUICK)
    r_noise = diagnose(_noise_set(real), digits, **QUICK)
    assert len(r_real.layers) == 3 and r_real.layers[0] == "block1 128x8x8"
    for key in ("moments", "gram"):
        real_gap, noise_gap = r_real.sets[CONDENSED][key], r_noise.sets[CONDENSED][key]
        assert len(real_gap) == len(noise_gap) == 3
        for a, b in zip(real_gap, noise_gap, strict=True):
            assert 0 < a < b / 3, (key, real_gap, noise_gap)
    # the reference row does not depend on the set measured
    assert r_real.sets[RANDOM] == r_noise.sets[RANDOM]


def _direct(syn: SyntheticSet, dataset, nets: int, batch: int, seed: int) -> dict:
    """The report's numbers computed the plain way: whole batches, the public losses."""
    layers = 3
    total = {"moments": [0.0] * layers, "gram": [0.0] * layers, "pairwise": 0.0, "knn_kl": 0.0}
    ipc = syn.meta["ipc"]
    with torch.no_grad():
        for k in range(nets):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(seed, 30, k))
                net = build_model("convnet", 1, 10, 8)
            for c in range(10):
                real_maps = net.feature_maps(digits_batch(dataset, c, batch, seed))
                emb, syn_maps = net.embed_and_maps(syn.images[syn.labels == c])
                for i in range(layers):
                    total["moments"][i] += float(moments_loss([real_maps[i]], [syn_maps[i]]))
                    total["gram"][i] += float(correlation_loss([real_maps[i]], [syn_maps[i]]))
                total["pairwise"] += float(torch.pdist(emb).mean())
                total["knn_kl"] += float(-diversity_loss(emb, default_icd_k(ipc)))
    n = nets * 10
    return {
        key: [v / n for v in val] if isinstance(val, list) else val / n
        for key, val in total.items()
    }


def digits_batch(dataset, c: int, batch: int, seed: int) -> torch.Tensor:
    return dataset.class_batch(c, batch, generator(seed, 31, c))


def test_numbers_equal_a_direct_computation_with_the_losses(digits, monkeypatch):
    monkeypatch.setattr(dg, "REAL_CHUNK", 16)  # the real batch goes through in 3 chunks
    seed, nets, batch = 3, 2, 48
    noisy = _noise_set(random_subset(digits, 6, seed=5))
    report = diagnose(noisy, digits, nets=nets, batch=batch, seed=seed, device="cpu")
    expected = {
        CONDENSED: _direct(noisy, digits, nets, batch, seed),
        RANDOM: _direct(random_subset(digits, 6, seed=seed), digits, nets, batch, seed),
    }
    for name in (CONDENSED, RANDOM):
        for key, want in expected[name].items():
            assert report.sets[name][key] == pytest.approx(want, rel=1e-4), (name, key)
    assert report.meta["knn_k"] == {CONDENSED: 1, RANDOM: 1}
    again = diagnose(noisy, digits, nets=nets, batch=batch, seed=seed, device="cpu")
    assert again.sets == report.sets  # seeded


def test_identical_images_have_no_diversity(digits):
    varied = random_subset(digits, 5, seed=0)
    same = SyntheticSet(varied.images[::5].repeat_interleave(5, dim=0), varied.labels, varied.meta)
    assert torch.equal(same.images[0], same.images[4])
    r_same = diagnose(same, digits, **QUICK)
    assert r_same.sets[CONDENSED]["pairwise"] == pytest.approx(0.0, abs=1e-5)
    assert r_same.sets[CONDENSED]["knn_kl"] == pytest.approx(0.0, abs=1e-7)
    r_varied = diagnose(varied, digits, **QUICK)
    assert r_varied.sets[CONDENSED]["pairwise"] > 0.05
    assert r_varied.sets[CONDENSED]["knn_kl"] > 1e-5


def test_ipc_1_reports_undefined_diversity_as_nan(digits, tmp_path):
    report = diagnose(random_subset(digits, 1, seed=0), digits, **QUICK)
    for name in (CONDENSED, RANDOM):
        assert math.isnan(report.sets[name]["knn_kl"])
        assert math.isnan(report.sets[name]["pairwise"])
        assert all(math.isfinite(v) and v > 0 for v in report.sets[name]["moments"])
    assert "n/a" in report.table()
    assert report.to_dict()["sets"][CONDENSED]["knn_kl"] is None
    json.dumps(report.to_dict(), allow_nan=False)
    plot(report, tmp_path / "d.png")
    Image.open(tmp_path / "d.png").verify()


def test_idm_sets_are_measured_expanded(digits):
    base = random_subset(digits, 2, seed=0)
    idm = SyntheticSet(base.images, base.labels, {**base.meta, "expansion_factor": 2})
    report = diagnose(idm, digits, nets=1, batch=16, device="cpu")
    assert report.meta["images_per_class"] == {CONDENSED: 8, RANDOM: 2}
    assert report.meta["knn_k"] == {CONDENSED: 2, RANDOM: 1}


def test_incompatible_sets_are_refused(digits):
    syn = random_subset(digits, 2, seed=0)
    with pytest.raises(ValueError, match="images are"):
        diagnose(SyntheticSet(torch.zeros(20, 3, 8, 8), syn.labels, syn.meta), digits)
    with pytest.raises(ValueError, match="another mean"):
        diagnose(dataclasses.replace(syn, meta={**syn.meta, "mean": [0.9]}), digits)
    with pytest.raises(ValueError, match="no images of class"):
        diagnose(SyntheticSet(syn.images[2:], syn.labels[2:], syn.meta), digits)
    with pytest.raises(ValueError, match="nets"):
        diagnose(syn, digits, nets=0)


def test_table_and_dict_shape():
    report = DiagnoseReport(
        ["block1 4x2x2", "block2 4x1x1"],
        {
            CONDENSED: {"moments": [1.0, 2.0], "gram": [3.0, 4.0], "pairwise": 5.0, "knn_kl": 6.0},
            RANDOM: {"moments": [0.1, 0.2], "gram": [0.3, 0.4], "pairwise": 7.0, "knn_kl": 8.0},
        },
        {"dataset": "x"},
    )
    lines = report.table().splitlines()
    assert len(lines) == 4
    assert [c.strip() for c in lines[0].strip("|").split("|")] == [
        "set",
        "moments block1",
        "moments block2",
        "Gram block1",
        "Gram block2",
        "pairwise",
        "kNN KL",
    ]
    assert [c.strip() for c in lines[3].strip("|").split("|")] == [
        RANDOM,
        *["0.1", "0.2", "0.3", "0.4", "7", "8"],
    ]
    assert set(report.to_dict()) == {"layers", "sets", "meta"}


@pytest.mark.parametrize("ipc", [1, 4])
def test_cli_handler_end_to_end(digits, tmp_path, capsys, ipc):
    run = tmp_path / "run"
    run.mkdir()
    save_synthetic(run, random_subset(digits, ipc, seed=7))
    atomic_write_json(run / "config.json", {"method": "random", "data_root": None})
    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers())
    args = parser.parse_args(
        ["diagnose", str(run), "--nets", "1", "--batch", "32", "--device", "cpu"]
    )
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "| set" in out and "random real" in out
    with Image.open(run / "diagnose.png") as img:
        assert img.format == "PNG" and img.width > 400
        img.verify()
    saved = json.loads((run / "diagnose.json").read_text())
    assert set(saved) == {"layers", "sets", "meta"}
    assert set(saved["sets"]) == {CONDENSED, RANDOM}
    for values in saved["sets"].values():
        assert set(values) == {"moments", "gram", "pairwise", "knn_kl"}
        assert len(values["moments"]) == len(values["gram"]) == len(saved["layers"]) == 3
    assert saved["meta"]["ipc"] == ipc and saved["meta"]["nets"] == 1
    assert (saved["sets"][CONDENSED]["knn_kl"] is None) == (ipc == 1)
