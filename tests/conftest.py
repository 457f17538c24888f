"""Shared fixtures: the real-data folder and small deterministic helpers."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


def _shared(sub: str) -> Path:
    path = SHARED_DATA / sub
    if not path.exists():
        pytest.skip(f"real data not available at {path}")
    return SHARED_DATA


@pytest.fixture
def shared_data() -> Path:
    """Root of ../shared/data (skips the test when it is absent)."""
    return _shared("")


@pytest.fixture
def cifar_root() -> Path:
    return _shared("cifar-10-batches-py")


@pytest.fixture
def mnist_root() -> Path:
    return _shared("MNIST")


@pytest.fixture
def tiny_root() -> Path:
    return _shared("tiny-imagenet-200-subset10")


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(int(os.environ.get("DDM_TEST_THREADS", "2")))
    yield
