"""The set-makers' registry: every caller reaches random subset and herding through it."""

from __future__ import annotations

import pytest
import torch

from ddm.baselines import BASELINE_SETTINGS, BASELINES, baseline, make_baseline, random_subset
from ddm.continual import CONTINUAL_METHODS
from ddm.data import load_dataset


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def test_unknown_baseline_names_the_known_ones(digits):
    with pytest.raises(ValueError, match="unknown baseline 'kmeans'; known: random, herding"):
        make_baseline("kmeans", digits, 2)
    with pytest.raises(ValueError, match="known: random, herding"):
        baseline("kmeans")


def test_make_baseline_passes_each_set_maker_what_it_reads(digits):
    direct = random_subset(digits, 2, seed=3)
    made = make_baseline("random", digits, 2, seed=3, herding_epochs=7, device="cpu")
    assert torch.equal(made.images, direct.images) and made.meta == direct.meta
    herd = make_baseline("herding", digits, 1, seed=0, herding_epochs=1, device="cpu")
    assert herd.meta["herding_epochs"] == 1 and herd.meta["method"] == "herding"


def test_every_registered_baseline_says_what_it_reads_and_is_a_continual_method():
    assert set(BASELINE_SETTINGS) == set(BASELINES)
    assert set(BASELINES) <= set(CONTINUAL_METHODS)
