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


# --- resumable, model-by-model evaluation of a run folder -------------------------------------


def _counting(monkeypatch, fail_at: int | None = None) -> list[int]:
    """Count the models ``train_and_test`` trains (by run index); raise at call ``fail_at``."""
    import ddm.evaluate as ev

    calls: list[int] = []
    real = train_and_test  # the module's own, also when an earlier spy is still in place

    def spy(*args, **kwargs):
        if fail_at is not None and len(calls) == fail_at:
            raise KeyboardInterrupt  # the process is stopped mid-evaluation
        calls.append(kwargs["run"])
        return real(*args, **kwargs)

    monkeypatch.setattr(ev, "train_and_test", spy)
    return calls


def test_interrupted_evaluation_continues_where_it_stopped(tmp_path, digits, monkeypatch):
    """Stopped after one of three models: the model is in metrics.json, and the next call
    trains only the other two and gives the uninterrupted evaluation's numbers."""
    syn = random_subset(digits, 2, seed=0)
    cfg = EvalConfig(epochs=3, runs=3)
    whole = evaluate_set(syn, digits, cfg, progress=False)
    save_synthetic(tmp_path, syn)
    calls = _counting(monkeypatch, fail_at=1)
    with pytest.raises(KeyboardInterrupt):
        evaluate_run(tmp_path, cfg, dataset=digits, progress=False)
    metrics = read_json(tmp_path / "metrics.json")
    assert metrics["evaluations"] == [] and calls == [0]
    (partial,) = metrics["partial"]
    assert partial["run_indices"] == [0] and partial["accuracies"] == [whole.accuracies[0]]

    calls = _counting(monkeypatch)
    result = evaluate_run(tmp_path, cfg, dataset=digits, progress=False)
    assert calls == [1, 2] and result.reused == 1
    assert result.accuracies == whole.accuracies  # the partial record is not rounded
    assert result.train_accuracies == whole.train_accuracies
    metrics = read_json(tmp_path / "metrics.json")
    assert "partial" not in metrics  # finished: only the whole entry is left
    assert [e["runs"] for e in metrics["evaluations"]] == [3]


def test_more_models_reuse_the_ones_trained(tmp_path, digits, monkeypatch):
    """--runs 3 after --runs 2 trains one model; --runs 1 after that trains none. A changed
    protocol (epochs, precision) or another set reuses nothing."""
    syn = random_subset(digits, 2, seed=0)
    save_synthetic(tmp_path, syn)
    cfg = EvalConfig(epochs=2, runs=2)
    calls = _counting(monkeypatch)
    two = evaluate_run(tmp_path, cfg, dataset=digits, progress=False)
    three = evaluate_run(tmp_path, dataclasses.replace(cfg, runs=3), dataset=digits, progress=False)
    one = evaluate_run(tmp_path, dataclasses.replace(cfg, runs=1), dataset=digits, progress=False)
    assert calls == [0, 1, 2]
    # reused from finished entries, which keep 4 decimals
    assert three.accuracies[:2] == pytest.approx(two.accuracies, abs=1e-4)
    assert one.accuracies == pytest.approx(two.accuracies[:1], abs=1e-4)
    assert (three.reused, one.reused) == (2, 1)
    fresh = evaluate_set(syn, digits, dataclasses.replace(cfg, runs=3), progress=False)
    assert three.accuracies == pytest.approx(fresh.accuracies, abs=1e-4)

    calls.clear()
    evaluate_run(tmp_path, dataclasses.replace(cfg, epochs=3), dataset=digits, progress=False)
    assert calls == [0, 1]
    calls.clear()
    save_synthetic(tmp_path, random_subset(digits, 2, seed=1))  # e.g. a resumed condensation
    other = evaluate_run(tmp_path, cfg, dataset=digits, progress=False)
    assert calls == [0, 1] and other.reused == 0


def test_entries_name_their_set(tmp_path, digits):
    """Every entry records the set's hash; ``find_evaluation`` with a hash skips the entries of
    another set, and ``ddm show`` marks them."""
    from ddm.cli import _summary
    from ddm.evaluate import find_evaluation, set_fingerprint

    first = random_subset(digits, 2, seed=0)
    save_synthetic(tmp_path, first)
    cfg = EvalConfig(epochs=2, runs=1, precision="fp32")
    evaluate_run(tmp_path, cfg, dataset=digits, progress=False)
    (entry,) = read_json(tmp_path / "metrics.json")["evaluations"]
    assert entry["set"] == set_fingerprint(first)
    assert find_evaluation(tmp_path, cfg, "fp32", set_fingerprint(first)) is not None
    assert "earlier set" not in _summary(tmp_path)

    second = random_subset(digits, 2, seed=1)
    assert set_fingerprint(second) != set_fingerprint(first)
    assert set_fingerprint(second) == set_fingerprint(random_subset(digits, 2, seed=1))
    save_synthetic(tmp_path, second)
    assert find_evaluation(tmp_path, cfg, "fp32", set_fingerprint(second)) is None
    assert find_evaluation(tmp_path, cfg, "fp32") is not None  # no hash asked: as before
    assert "earlier set" in _summary(tmp_path)
