"""Devices, seeds and generators shared by every part of the toolkit.

All randomness flows from explicit ``torch.Generator`` objects seeded by ``seed_for`` with a
tuple of integer keys (run seed, stream, iteration...). Streams keep purposes apart, so
adding a draw to one never shifts another; the global RNG is only used, inside
``fork_rng``, where PyTorch's default layer initialisation needs it.
"""

from __future__ import annotations

import numpy as np
import torch

__all__ = ["seed_for", "generator", "resolve_device", "Stream"]


class Stream:
    """Generator stream ids (the second key of ``seed_for``)."""

    INIT = 0  # condensation: initial images (= the random-subset baseline's draw)
    ITER = 1  # condensation: per-iteration real batches and DSA draws
    NET = 2  # condensation: per-iteration network initialisation
    EVAL_MODEL = 10
    EVAL_TRAIN = 11
    HERDING_MODEL = 21
    HERDING_TRAIN = 22


def seed_for(*keys: int) -> int:
    """A well-mixed 63-bit seed derived from integer keys."""
    state = np.random.SeedSequence([int(k) for k in keys]).generate_state(1, np.uint64)[0]
    return int(state >> np.uint64(1))


def generator(*keys: int) -> torch.Generator:
    """A CPU generator seeded by ``seed_for(*keys)``."""
    return torch.Generator().manual_seed(seed_for(*keys))


def resolve_device(name: str) -> torch.device:
    """'auto' -> cuda when available, else cpu; anything else is passed to torch."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise ValueError(f"unknown device {name!r} (use auto, cpu, cuda or cuda:N)") from exc
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda asked for, but no CUDA GPU is available; use cpu")
    return device
