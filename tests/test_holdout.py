"""Held-out train images for tuning without the test set (``--holdout``)."""

from __future__ import annotations

import pytest
import torch

from ddm.cli import main
from ddm.condense import _check_resumable, condense
from ddm.config import CondenseConfig, EvalConfig
from ddm.data.core import Dataset, ImageSource, IndexedSource, Split
from ddm.evaluate import evaluate_folder, evaluate_set, find_evaluation, trained_runs
from ddm.io import SyntheticSet, load_synthetic, read_json


def _unique_dataset(per_class: int = 6, classes: int = 3, size: int = 8) -> Dataset:
    """Every train image different: pixel (0, 0) holds its index, so images name themselves."""
    n = per_class * classes
    images = torch.randint(0, 256, (n, 1, size, size), generator=torch.Generator().manual_seed(0))
    images = images.to(torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    labels = torch.arange(n) % classes
    test = Split(images[:classes].clone(), torch.arange(classes), classes)
    return Dataset.from_splits(
        "tiny", [f"c{c}" for c in range(classes)], Split(images, labels, classes), test
    )


def _ids(split: Split) -> list[int]:
    return sorted(int(v) for v in split.materialize()[:, 0, 0, 0])


def test_holdout_splits_train_into_two_disjoint_parts():
    ds = _unique_dataset()
    held = ds.holdout(2)
    assert len(held.train) == 12 and len(held.test) == 6
    assert held.test.class_counts().tolist() == [2, 2, 2]
    assert held.train.class_counts().tolist() == [4, 4, 4]
    assert set(_ids(held.train)).isdisjoint(_ids(held.test))
    assert sorted(_ids(held.train) + _ids(held.test)) == list(range(18))
    for split in (held.train, held.test):  # every image keeps its label (index % 3)
        ids = split.materialize()[:, 0, 0, 0].long()
        assert torch.equal(split.labels, ids % 3)
    # a fixed draw: the same images every time; normalisation unchanged
    assert _ids(ds.holdout(2).test) == _ids(held.test)
    assert (held.mean, held.std) == (ds.mean, ds.std)
    assert ds.holdout(0) is ds
    assert held.held_out == 2 and held.holdout(2) is held  # applied once, not twice
    with pytest.raises(ValueError, match="already holds out 2"):
        held.holdout(3)
    assert ds.subset_classes([0, 2]).held_out == 0 and held.subset_classes([1]).held_out == 2


@pytest.mark.parametrize("n", [6, 7, -1])
def test_holdout_refuses_what_leaves_a_class_empty(n):
    with pytest.raises(ValueError, match="holdout"):
        _unique_dataset().holdout(n)


class _Counting(ImageSource):
    """An in-memory source that counts the images read through it."""

    def __init__(self, images: torch.Tensor) -> None:
        self._images = images
        self.read = 0

    @property
    def shape(self) -> torch.Size:
        return self._images.shape

    def gather(self, idx: torch.Tensor) -> torch.Tensor:
        self.read += len(idx)
        return self._images[idx]


def test_holdout_of_a_lazy_source_stays_lazy():
    ds = _unique_dataset()
    source = _Counting(ds.train.images)
    lazy = Dataset(ds.name, ds.classes, Split(source, ds.train.labels, 3), ds.test, ds.mean, ds.std)
    held, eager = lazy.holdout(2), ds.holdout(2)
    assert isinstance(held.train.images, IndexedSource) and source.read == 0
    idx = torch.tensor([0, 5, 11])
    assert torch.equal(held.train.gather(idx), eager.train.gather(idx))
    assert source.read == 3
    assert torch.equal(held.test.materialize(), eager.test.materialize())


def test_condense_never_draws_held_out_images(tmp_path):
    """ipc 1 with all but one image of each class held out: the initial set is those three."""
    ds = _unique_dataset()
    cfg = CondenseConfig(dataset="tiny", ipc=1, iterations=1, batch_real=2, holdout=5)
    condense(cfg, tmp_path / "run", dataset=ds, progress=False, stop_after=0)
    # a caller may pass the held-out dataset itself: the same images, not 5 more per class
    condense(cfg, tmp_path / "again", dataset=ds.holdout(5), progress=False, stop_after=0)
    assert torch.equal(
        load_synthetic(tmp_path / "again").images, load_synthetic(tmp_path / "run").images
    )
    syn = load_synthetic(tmp_path / "run")
    kept = ds.holdout(5).train
    by_class = kept.materialize()[torch.argsort(kept.labels, stable=True)]
    assert torch.allclose(syn.images, ds.normalize(by_class))
    assert syn.meta["holdout"] == 5
    assert read_json(tmp_path / "run" / "config.json")["holdout"] == 5
    # a run from before --holdout resumes as holdout 0; another holdout does not resume
    saved = CondenseConfig(dataset="tiny").resolved().to_dict()
    del saved["holdout"]
    _check_resumable(saved, CondenseConfig(dataset="tiny").resolved())
    with pytest.raises(Exception, match="holdout"):
        _check_resumable(saved, CondenseConfig(dataset="tiny", holdout=5).resolved())


def _set(ds: Dataset, holdout: int | None) -> SyntheticSet:
    meta = {"dataset": "tiny", "num_classes": 3, "mean": list(ds.mean), "std": list(ds.std)}
    if holdout is not None:
        meta["holdout"] = holdout
    images = ds.normalize(ds.holdout(holdout or 0).train.materialize()[:6])
    return SyntheticSet(images, torch.tensor([0, 1, 2, 0, 1, 2]), meta)


def _spy(monkeypatch, accuracy: float) -> list[torch.Tensor]:
    """Replace the training by a stub that records the test images it was given."""
    seen: list[torch.Tensor] = []

    def fake(train_x, train_y, test_x, test_y, **kwargs):
        seen.append(test_x)
        return accuracy, 100.0

    monkeypatch.setattr("ddm.evaluate.train_and_test", fake)
    return seen


def test_evaluate_with_holdout_tests_on_the_held_out_images(monkeypatch):
    ds = _unique_dataset()
    seen = _spy(monkeypatch, 50.0)
    cfg = EvalConfig(epochs=1, runs=1, holdout=2, device="cpu")
    evaluate_set(_set(ds, 2), ds, cfg, progress=False)
    assert torch.equal(seen[0], ds.holdout(2).test_tensors()[0])
    evaluate_set(_set(ds, 2), ds, EvalConfig(epochs=1, runs=1, device="cpu"), progress=False)
    assert torch.equal(seen[1], ds.test_tensors()[0])  # holdout 0: the test split


@pytest.mark.parametrize(
    ("made", "why"),
    [
        (None, "whole train split"),
        (3, "--holdout 3"),
        ("tuple", "made elsewhere"),
        ("imported", "made elsewhere"),
    ],
)
def test_evaluate_refuses_held_out_images_the_set_may_have_seen(monkeypatch, made, why):
    ds = _unique_dataset()
    _spy(monkeypatch, 50.0)
    syn = _set(ds, made if isinstance(made, int | None) else 2)
    if made == "tuple":
        syn = (syn.images, syn.labels)
    if made == "imported":  # another tool's set: its meta cannot vouch for the split
        syn.meta["method"] = "imported"
    with pytest.raises(ValueError, match=why) as err:
        evaluate_set(syn, ds, EvalConfig(epochs=1, runs=1, holdout=2, device="cpu"))
    assert "--holdout 2" in str(err.value)


def test_held_out_and_test_results_are_kept_apart(tmp_path, monkeypatch):
    ds = _unique_dataset()
    syn = _set(ds, 2)
    test_cfg = EvalConfig(epochs=1, runs=2, device="cpu", precision="fp32")
    held_cfg = EvalConfig(epochs=1, runs=2, holdout=2, device="cpu", precision="fp32")
    _spy(monkeypatch, 40.0)
    evaluate_folder(tmp_path, syn, ds, test_cfg, progress=False)
    seen = _spy(monkeypatch, 60.0)
    result = evaluate_folder(tmp_path, syn, ds, held_cfg, progress=False)
    assert len(seen) == 2 and result.reused == 0  # the test split's models are not reused
    entries = read_json(tmp_path / "metrics.json")["evaluations"]
    assert sorted(e["mean"] for e in entries) == [40.0, 60.0]
    assert find_evaluation(tmp_path, test_cfg, "fp32")["mean"] == 40.0
    assert find_evaluation(tmp_path, held_cfg, "fp32")["mean"] == 60.0
    # entries written before --holdout existed are test-split ones, and still reused
    from ddm.evaluate import set_fingerprint

    fp = set_fingerprint(syn)
    old = read_json(tmp_path / "metrics.json")
    for e in old["evaluations"]:
        e["protocol"].pop("holdout")
    (tmp_path / "metrics.json").write_text(__import__("json").dumps(old))
    assert trained_runs(tmp_path, test_cfg, "fp32", fp) == {0: (40.0, 100.0), 1: (40.0, 100.0)}


def test_holdout_on_the_command_line(tmp_path, capsys):
    """digits: condense and select with 20 images per class held out, evaluate on them."""
    run, rand = tmp_path / "dm", tmp_path / "random"
    common = ["--dataset", "digits", "--holdout", "20", "--ipc", "2"]
    cond = ["condense", *common, "--iterations", "2", "--batch-real", "16", "--out", str(run)]
    assert main(["--quiet", *cond]) == 0
    assert main(["--quiet", "baseline", *common, "--out", str(rand)]) == 0
    assert load_synthetic(rand).meta["holdout"] == 20
    for folder in (run, rand):
        ev = ["--quiet", "evaluate", str(folder), "--holdout", "20", "--epochs", "1"]
        assert main([*ev, "--runs", "1"]) == 0
        entry = read_json(folder / "metrics.json")["evaluations"][0]
        assert entry["protocol"]["holdout"] == 20
    capsys.readouterr()
    assert main(["--quiet", "evaluate", str(run), "--holdout", "10", "--runs", "1"]) == 2
    assert "--holdout 20, a different split" in capsys.readouterr().err
    assert main(["--quiet", "show", str(run)]) == 0
    shown = capsys.readouterr().out
    assert "20 train images per class held out" in shown
    assert "(on 20 held-out train images per class)" in shown
