"""ddm diagnose: style gap and intra-class diversity of a condensed set (on digits, small).

Both DDM forms are checked: the paper's (act tap, kNN KL) and the released one (conv tap,
spread along the real class's principal directions).
"""

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
from ddm.cli.diagnose import add_parser
from ddm.data import load_dataset
from ddm.diagnose import (
    CONDENSED,
    CONV_STYLE_KEYS,
    RANDOM,
    SPREAD_KEYS,
    STYLE_KEYS,
    DiagnoseReport,
    diagnose,
    plot,
)
from ddm.io import SyntheticSet, atomic_write_json, save_synthetic
from ddm.losses import (
    correlation_loss,
    default_icd_k,
    diversity_loss,
    moments_loss,
    persample_moments_loss,
    spread_loss,
)
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
    for key in (*STYLE_KEYS, *CONV_STYLE_KEYS):
        real_gap, noise_gap = r_real.sets[CONDENSED][key], r_noise.sets[CONDENSED][key]
        assert len(real_gap) == len(noise_gap) == 3
        for a, b in zip(real_gap, noise_gap, strict=True):
            assert 0 < a < b / 3, (key, real_gap, noise_gap)
    # noise has no class structure: along the real class's main axes it spreads otherwise
    assert r_noise.sets[CONDENSED]["spread_loss"] > 3 * r_real.sets[CONDENSED]["spread_loss"]
    # the reference row does not depend on the set measured
    assert r_real.sets[RANDOM] == r_noise.sets[RANDOM]


def _direct(syn: SyntheticSet, dataset, nets: int, batch: int, seed: int) -> dict:
    """The report's numbers computed the plain way: whole batches, the public losses."""
    layers = 3
    total = {key: [0.0] * layers for key in (*STYLE_KEYS, *CONV_STYLE_KEYS)}
    total |= {key: 0.0 for key in ("pairwise", "knn_kl", *SPREAD_KEYS)}
    ipc = syn.meta["ipc"]
    with torch.no_grad():
        for k in range(nets):
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed_for(seed, 30, k))
                net = build_model("convnet", 1, 10, 8)
            for c in range(10):
                x_real, x_syn = digits_batch(dataset, c, batch, seed), syn.images[syn.labels == c]
                real_emb, real_maps = net.embed(x_real), net.feature_maps(x_real)
                real_conv = net.feature_maps(x_real, tap="conv")
                emb, syn_maps = net.embed_and_maps(x_syn)
                syn_conv = net.feature_maps(x_syn, tap="conv")
                for i in range(layers):
                    total["moments"][i] += float(moments_loss([real_maps[i]], [syn_maps[i]]))
                    total["gram"][i] += float(correlation_loss([real_maps[i]], [syn_maps[i]]))
                    total["moments_conv"][i] += float(
                        persample_moments_loss([real_conv[i]], [syn_conv[i]], relative=True)
                    )
                    total["gram_conv"][i] += float(correlation_loss([real_conv[i]], [syn_conv[i]]))
                total["pairwise"] += float(torch.pdist(emb).mean())
                total["knn_kl"] += float(-diversity_loss(emb, default_icd_k(ipc)))
                total["spread_ratio"] += _spread_ratio_by_svd(real_emb, emb)
                total["spread_loss"] += float(spread_loss(real_emb, emb))
    n = nets * 10
    return {
        key: [v / n for v in val] if isinstance(val, list) else val / n
        for key, val in total.items()
    }


def _spread_ratio_by_svd(real_emb: torch.Tensor, emb: torch.Tensor) -> float:
    """mean_k b_k / a_k along the top right singular vectors of the centred real embeddings."""
    r = min(len(emb) - 1, 16, len(real_emb) - 1)
    centred = (real_emb - real_emb.mean(0)).double()
    dirs = torch.linalg.svd(centred, full_matrices=False).Vh[:r].T  # D x r
    a = (centred @ dirs).std(0)
    b = ((emb - emb.mean(0)).double() @ dirs).std(0)
    return float((b / a).mean())


def digits_batch(dataset, c: int, batch: int, seed: int) -> torch.Tensor:
    return dataset.class_batch(c, batch, generator(seed, 31, c))


def test_numbers_equal_a_direct_computation_with_the_losses(digits, monkeypatch):
    monkeypatch.setattr(dg, "REAL_CHUNK", 20)  # the real batch goes through in chunks 20, 20, 8
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
    assert report.meta["spread_rank"] == {CONDENSED: 5, RANDOM: 5}
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


def test_spread_ratio_is_one_for_a_large_real_subset_and_zero_for_copies(digits):
    # batch 256 takes every train image of a class (about 135), so the 40-image subset is a
    # sample of the very batch whose principal directions are measured
    big = random_subset(digits, 40, seed=1)
    report = diagnose(big, digits, nets=1, batch=256, device="cpu")
    assert report.meta["spread_rank"][CONDENSED] == 16
    assert report.sets[CONDENSED]["spread_ratio"] == pytest.approx(1.0, abs=0.1)
    assert report.sets[CONDENSED]["spread_loss"] < 0.05
    copies = SyntheticSet(big.images[::40].repeat_interleave(40, dim=0), big.labels, big.meta)
    collapsed = diagnose(copies, digits, nets=1, batch=256, device="cpu")
    assert collapsed.sets[CONDENSED]["spread_ratio"] == pytest.approx(0.0, abs=1e-3)
    assert collapsed.sets[CONDENSED]["spread_loss"] == pytest.approx(1.0, abs=1e-3)
    assert "collapsed" in dg._summary(collapsed)
    assert "spreads about like the real class" in dg._summary(report)


def test_ipc_1_reports_undefined_diversity_as_nan(digits, tmp_path):
    report = diagnose(random_subset(digits, 1, seed=0), digits, **QUICK)
    for name in (CONDENSED, RANDOM):
        assert math.isnan(report.sets[name]["knn_kl"])
        assert math.isnan(report.sets[name]["pairwise"])
        for key in SPREAD_KEYS:
            assert math.isnan(report.sets[name][key])
        for key in ("moments", "moments_conv", "gram_conv"):
            assert all(math.isfinite(v) and v > 0 for v in report.sets[name][key]), key
    assert report.meta["spread_rank"] == {CONDENSED: 0, RANDOM: 0}
    assert "n/a" in report.table().split("\n\n")[1]
    assert "principal directions" not in dg._summary(report)
    saved = report.to_dict()["sets"][CONDENSED]
    assert saved["knn_kl"] is None and saved["spread_ratio"] is None
    assert saved["spread_loss"] is None
    json.dumps(report.to_dict(), allow_nan=False)
    plot(report, tmp_path / "d.png")
    Image.open(tmp_path / "d.png").verify()


def test_idm_sets_are_measured_expanded(digits):
    base = random_subset(digits, 2, seed=0)
    idm = SyntheticSet(base.images, base.labels, {**base.meta, "expansion_factor": 2})
    report = diagnose(idm, digits, nets=1, batch=16, device="cpu")
    assert report.meta["images_per_class"] == {CONDENSED: 8, RANDOM: 2}
    assert report.meta["knn_k"] == {CONDENSED: 2, RANDOM: 1}
    assert report.meta["spread_rank"] == {CONDENSED: 7, RANDOM: 1}


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


def test_table_and_dict_shape(tmp_path):
    # a report without the conv-tap and spread numbers (as written before they existed)
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
    plot(report, tmp_path / "old.png")  # one row of panels
    Image.open(tmp_path / "old.png").verify()
    assert "spread" not in dg._summary(report)


def test_table_has_a_released_form_part(tmp_path):
    new = {
        "moments_conv": [0.5, 0.6],
        "gram_conv": [0.7, 0.8],
        "spread_ratio": 0.3,
        "spread_loss": 0.4,
    }
    old = {"moments": [1.0, 2.0], "gram": [3.0, 4.0], "pairwise": 5.0, "knn_kl": 6.0}
    report = DiagnoseReport(
        ["block1 4x2x2", "block2 4x1x1"],
        {
            CONDENSED: {**old, **new},
            RANDOM: {**old, **new, "spread_ratio": 0.9, "gram_conv": [0.35, 0.4]},
        },
        {"dataset": "x", "spread_rank": {CONDENSED: 3, RANDOM: 3}},
    )
    paper, released = report.table().split("\n\n")
    assert len(paper.splitlines()) == len(released.splitlines()) == 4
    assert [c.strip() for c in released.splitlines()[0].strip("|").split("|")] == [
        "set",
        "moments conv block1",
        "moments conv block2",
        "Gram conv block1",
        "Gram conv block2",
        "spread ratio",
        "L_CD",
    ]
    assert [c.strip() for c in released.splitlines()[2].strip("|").split("|")] == [
        CONDENSED,
        *["0.5", "0.6", "0.7", "0.8", "0.3", "0.4"],
    ]
    summary = dg._summary(report)
    assert "moments (released, relative) gap, condensed / random real per layer: 1x, 1x" in summary
    assert "conv-tap Gram gap, condensed / random real per layer: 2x, 2x" in summary
    assert "top 3 principal directions" in summary
    assert f"{CONDENSED}: 0.30, collapsed" in summary
    assert f"{RANDOM}: 0.90, spreads about like the real class" in summary
    assert "condensed / random real: 0.33x" in summary
    plot(report, tmp_path / "new.png")  # two rows of panels
    with Image.open(tmp_path / "new.png") as img:
        assert img.height > img.width / 2


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
    assert "| moments conv block1" in out and "conv-tap Gram gap" in out
    assert ("spread (synthetic / real std" in out) == (ipc > 1)
    with Image.open(run / "diagnose.png") as img:
        assert img.format == "PNG" and img.width > 400
        img.verify()
    saved = json.loads((run / "diagnose.json").read_text())
    assert set(saved) == {"layers", "sets", "meta"}
    assert set(saved["sets"]) == {CONDENSED, RANDOM}
    for values in saved["sets"].values():
        assert set(values) == {*STYLE_KEYS, *CONV_STYLE_KEYS, "pairwise", "knn_kl", *SPREAD_KEYS}
        for key in (*STYLE_KEYS, *CONV_STYLE_KEYS):
            assert len(values[key]) == len(saved["layers"]) == 3
    assert saved["meta"]["ipc"] == ipc and saved["meta"]["nets"] == 1
    assert (saved["sets"][CONDENSED]["knn_kl"] is None) == (ipc == 1)
    assert (saved["sets"][CONDENSED]["spread_ratio"] is None) == (ipc == 1)
    assert saved["meta"]["spread_rank"][CONDENSED] == ipc - 1
