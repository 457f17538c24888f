"""Evaluation protocol and baselines."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from ddm.baselines import herding, herding_select, random_subset
from ddm.config import EvalConfig
from ddm.data import load_dataset
from ddm.evaluate import evaluate_run, evaluate_set, record_metrics, train_and_test
from ddm.io import read_json, save_synthetic


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


QUICK = EvalConfig(epochs=40, runs=2)


def test_protocol_learns_from_a_small_real_subset(digits):
    """20 real digits per class, 40 epochs: far above chance (10 %) on the real test set."""
    result = evaluate_set(random_subset(digits, 20, seed=0), digits, QUICK, progress=False)
    assert len(result.accuracies) == 2
    assert result.mean > 60.0
    assert result.std == pytest.approx(float(torch.tensor(result.accuracies).std(unbiased=False)))
    assert all(a > 60.0 for a in result.train_accuracies)


def test_runs_are_seeded_and_differ(digits):
    syn = random_subset(digits, 5, seed=0)
    cfg = dataclasses.replace(QUICK, epochs=5)
    a = evaluate_set(syn, digits, cfg, progress=False)
    b = evaluate_set(syn, digits, cfg, progress=False)
    assert a.accuracies == b.accuracies  # reproducible
    assert a.accuracies[0] != a.accuracies[1] or a.train_accuracies[0] != a.train_accuracies[1]


def test_lr_is_decayed_after_half_the_epochs(digits, monkeypatch):
    seen = []
    real_step = torch.optim.SGD.step

    def spy(self, *a, **k):
        seen.append(self.param_groups[0]["lr"])
        return real_step(self, *a, **k)

    monkeypatch.setattr(torch.optim.SGD, "step", spy)
    x, y = random_subset(digits, 2, seed=0).expanded()
    tx, ty = digits.test_tensors()
    train_and_test(
        x,
        y,
        tx[:10],
        ty[:10],
        num_classes=10,
        strategy="none",
        cfg=EvalConfig(epochs=4, runs=1),
        run=0,
    )
    assert seen == [0.01, 0.01, 0.001, 0.001]  # one batch per epoch (20 images < 256)


def test_cross_architecture(digits):
    syn = random_subset(digits, 5, seed=0)
    result = evaluate_set(syn, digits, EvalConfig(model="mlp", epochs=5, runs=1), progress=False)
    assert result.model == "mlp" and 0.0 <= result.mean <= 100.0


def test_incompatible_set_is_refused(digits):
    syn = random_subset(digits, 2, seed=0)
    bad = dataclasses.replace(syn, images=torch.zeros(20, 3, 8, 8))
    with pytest.raises(ValueError, match="does not fit"):
        evaluate_set(bad, digits, QUICK, progress=False)


def test_metrics_file_keeps_one_entry_per_protocol(tmp_path, digits):
    syn = random_subset(digits, 2, seed=0)
    save_synthetic(tmp_path, syn)
    cfg = EvalConfig(epochs=2, runs=1)
    evaluate_run(tmp_path, cfg, dataset=digits, progress=False)
    evaluate_run(tmp_path, cfg, dataset=digits, progress=False)
    evaluate_run(tmp_path, dataclasses.replace(cfg, model="mlp"), dataset=digits, progress=False)
    entries = read_json(tmp_path / "metrics.json")["evaluations"]
    assert [(e["model"], e["epochs"], e["runs"]) for e in entries] == [
        ("convnet", 2, 1),
        ("mlp", 2, 1),
    ]
    assert set(entries[0]) >= {"mean", "std", "accuracies", "protocol"}
    result = evaluate_set(syn, digits, cfg, progress=False)
    record_metrics(tmp_path, result, cfg)
    assert len(read_json(tmp_path / "metrics.json")["evaluations"]) == 2


def test_metrics_file_keeps_fp32_and_bf16_evaluations_apart(tmp_path):
    """An evaluation in another precision is a new entry, not a replacement; entries written
    before the precision policy count as float32."""
    from ddm.evaluate import EvalResult, entry_precision

    (tmp_path / "metrics.json").write_text(
        '{"evaluations": [{"model": "convnet", "epochs": 5, "runs": 1, "seed": 0, '
        '"mean": 40.0, "accuracies": [40.0], "protocol": {}}]}'
    )
    cfg = EvalConfig(epochs=5, runs=1)
    record_metrics(tmp_path, EvalResult("convnet", 5, [41.0], [100.0], 1.0, "bf16"), cfg)
    record_metrics(tmp_path, EvalResult("convnet", 5, [42.0], [100.0], 1.0, "bf16"), cfg)
    entries = read_json(tmp_path / "metrics.json")["evaluations"]
    assert [(entry_precision(e), e["mean"]) for e in entries] == [("fp32", 40.0), ("bf16", 42.0)]
    record_metrics(tmp_path, EvalResult("convnet", 5, [43.0], [100.0], 1.0, "fp32"), cfg)
    entries = read_json(tmp_path / "metrics.json")["evaluations"]
    assert [(entry_precision(e), e["mean"]) for e in entries] == [("bf16", 42.0), ("fp32", 43.0)]


def test_find_evaluation_matches_model_budget_seed_and_precision(tmp_path):
    """A cached evaluation is reused only for the same model, epochs, runs, seed and the
    precision it trained in; an entry without seed/precision fields is seed 0, float32."""
    from ddm.evaluate import EvalResult, find_evaluation

    cfg = EvalConfig(epochs=5, runs=1)
    assert find_evaluation(tmp_path, cfg, "fp32") is None  # no metrics.json yet
    (tmp_path / "metrics.json").write_text(
        '{"evaluations": [{"model": "convnet", "epochs": 5, "runs": 1, '
        '"mean": 40.0, "accuracies": [40.0], "protocol": {}}]}'
    )
    assert find_evaluation(tmp_path, cfg, "fp32")["mean"] == 40.0
    assert find_evaluation(tmp_path, cfg, "bf16") is None
    record_metrics(tmp_path, EvalResult("convnet", 5, [41.0], [100.0], 1.0, "bf16"), cfg)
    assert find_evaluation(tmp_path, cfg, "bf16")["mean"] == 41.0
    assert find_evaluation(tmp_path, cfg, "fp32")["mean"] == 40.0
    for other in (
        dataclasses.replace(cfg, epochs=6),
        dataclasses.replace(cfg, runs=2),
        dataclasses.replace(cfg, seed=1),
        dataclasses.replace(cfg, model="mlp"),
    ):
        assert find_evaluation(tmp_path, other, "bf16") is None


def test_random_subset_is_real_and_per_class(digits):
    syn = random_subset(digits, 4, seed=3)
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(4)]
    train = digits.normalize(digits.train.images)
    for img, lab in zip(syn.images, syn.labels, strict=True):
        match = (train - img).flatten(1).abs().amax(1) < 1e-6
        assert match.any() and digits.train.labels[match][0] == lab
    assert not torch.equal(syn.images, random_subset(digits, 4, seed=4).images)


def test_herding_select_hand_case():
    # four unit vectors; mean points along (1, 1): the best single pick is the 45 degree one
    f = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.7071, 0.7071], [1.0, 0.0]])
    assert herding_select(f, 1) == [2]
    # after picking 2, the mean (0.68, 0.43) is best tracked by adding a (1, 0) vector
    assert herding_select(f, 2) == [2, 0]
    assert len(set(herding_select(f, 4))) == 4


def test_herding_baseline(digits):
    syn = herding(digits, 3, seed=0, epochs=1, progress=False)
    assert syn.images.shape == (30, 1, 8, 8) and syn.meta["method"] == "herding"
    assert syn.labels.tolist() == [c for c in range(10) for _ in range(3)]
