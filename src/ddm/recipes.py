"""Training recipes of the evaluation: optimiser, learning-rate schedule, augmentation, mixing.

A recipe is how the freshly initialised networks of ``ddm evaluate`` are trained on a set
(``--eval-recipe``). The registry holds the field's three that matter here:

- ``dm``: the DM/IDM/DDM protocol (docs/method.md, "Evaluation protocol"): SGD lr 0.01,
  momentum 0.9, weight decay 5e-4, batch 256, lr x 0.1 at half of the epochs, DSA with
  per-image parameters. The default; the code path is the one the toolkit always had.
- ``ncfm``: NCFM's evaluation (its ``condenser/evaluate.py``): AdamW lr 1e-3, weight decay
  0.01, batch 128, lr x 0.5 at every fifth of the epochs, per-image DSA without cutout,
  CutMix with probability 0.5 and a Beta(1, 1) area (labels mixed by area).
- ``ddranking``: DD-Ranking 0.2.0's ``GeneralEvaluator`` defaults (``ddranking/metrics/
  general.py``): AdamW, weight decay 0.01, batch 256, its "cosine" schedule (a LambdaLR of
  0.5 (1 + cos(pi e / E / 2)) per epoch: the lr falls from 1x to 0.5x, not to 0), DSA with
  per-image parameters, one transform per batch; lr 0.01 (its ``default_lr``: the evaluator
  otherwise searches lr over {0.001, 0.005, 0.01, 0.05, 0.1} by test accuracy, which the
  toolkit does not do).

The soft-label temperature is a recipe setting too: 1.2, the default of DD-Ranking's
``KLDivergenceLoss`` (``ddranking/loss/kl.py``), for every recipe.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Recipe", "RECIPES", "get_recipe", "lr_factor", "make_optimizer", "cutmix_box", "cutmix"]

SCHEDULES = ("half", "fifths", "ddranking-cosine")


@dataclass(frozen=True)
class Recipe:
    """The settings that train an evaluation network (besides epochs, model and labels)."""

    name: str
    summary: str
    optimizer: str = "sgd"  # sgd | adamw
    lr: float = 0.01
    momentum: float = 0.9  # SGD only
    weight_decay: float = 5e-4
    batch_size: int = 256
    schedule: str = "half"  # one of SCHEDULES
    cutout: bool = True  # False: DSA without its cutout group
    cutmix_prob: float = 0.0  # probability that a batch is CutMixed
    cutmix_beta: float = 1.0  # the mixed area ~ Beta(beta, beta)
    temperature: float = 1.2  # soft labels: KL between softmax(logits / T)

    def __post_init__(self) -> None:
        if self.optimizer not in ("sgd", "adamw"):
            raise ValueError(f"recipe {self.name}: unknown optimizer {self.optimizer!r}")
        if self.schedule not in SCHEDULES:
            raise ValueError(f"recipe {self.name}: unknown schedule {self.schedule!r}")

    def strategy(self, dataset_strategy: str) -> str:
        """The DSA strategy for a dataset's default one (``dataset.dsa_strategy``)."""
        if self.cutout:
            return dataset_strategy
        return "_".join(g for g in dataset_strategy.split("_") if g != "cutout")

    def to_dict(self) -> dict[str, object]:
        from dataclasses import asdict

        out = asdict(self)
        out.pop("summary")
        return out


RECIPES: dict[str, Recipe] = {
    "dm": Recipe(
        "dm",
        "SGD lr 0.01 momentum 0.9 wd 5e-4, batch 256, lr x0.1 at half, DSA",
    ),
    "ncfm": Recipe(
        "ncfm",
        "AdamW lr 1e-3 wd 0.01, batch 128, lr x0.5 every fifth, DSA without cutout, CutMix 0.5",
        optimizer="adamw",
        lr=1e-3,
        weight_decay=0.01,
        batch_size=128,
        schedule="fifths",
        cutout=False,
        cutmix_prob=0.5,
    ),
    "ddranking": Recipe(
        "ddranking",
        "AdamW lr 0.01 wd 0.01, batch 256, DD-Ranking's half cosine, DSA",
        optimizer="adamw",
        lr=0.01,
        weight_decay=0.01,
        schedule="ddranking-cosine",
    ),
}


def get_recipe(name: str) -> Recipe:
    """A registered recipe by name; an unknown name lists the known ones."""
    if name not in RECIPES:
        raise ValueError(f"unknown evaluation recipe {name!r}; known: {', '.join(RECIPES)}")
    return RECIPES[name]


def lr_factor(schedule: str, epoch: int, epochs: int) -> float:
    """The learning-rate multiplier of epoch ``epoch`` (0-based) of ``epochs``.

    half: 1, then 0.1 from epoch epochs // 2. fifths: 0.5 ** k after the k-th fifth (k <= 4).
    ddranking-cosine: 0.5 (1 + cos(pi epoch / epochs / 2)), DD-Ranking's LambdaLR "cosine".
    """
    if schedule == "half":
        return 0.1 if epoch >= epochs // 2 else 1.0
    if schedule == "fifths":
        return 0.5 ** min(epoch // max(epochs // 5, 1), 4)
    if schedule == "ddranking-cosine":
        return 0.5 * (1.0 + math.cos(math.pi * epoch / epochs / 2))
    raise ValueError(f"unknown schedule {schedule!r}; known: {', '.join(SCHEDULES)}")


def make_optimizer(recipe: Recipe, params, lr: float, momentum: float, weight_decay: float):
    """The recipe's optimiser over ``params`` with the given (resolved) hyper-parameters."""
    if recipe.optimizer == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay)
    return torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)


def cutmix_box(h: int, w: int, lam: float, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """A CutMix box (y1, y2, x1, x2) of about (1 - lam) of the image, centred uniformly."""
    cut = math.sqrt(1.0 - lam)
    ch, cw = int(h * cut), int(w * cut)
    cy, cx = int(rng.integers(h)), int(rng.integers(w))
    y1, y2 = int(np.clip(cy - ch // 2, 0, h)), int(np.clip(cy + ch // 2, 0, h))
    x1, x2 = int(np.clip(cx - cw // 2, 0, w)), int(np.clip(cx + cw // 2, 0, w))
    return y1, y2, x1, x2


def cutmix(
    x: torch.Tensor, recipe: Recipe, rng: np.random.Generator
) -> tuple[torch.Tensor, torch.Tensor | None, float]:
    """CutMix a batch with probability ``recipe.cutmix_prob``.

    Returns (images, partner order or None when not mixed, lam = the share of each image
    that is its own). Targets are mixed by the caller: lam x own + (1 - lam) x partner's.
    """
    if recipe.cutmix_prob <= 0 or rng.random() >= recipe.cutmix_prob:
        return x, None, 1.0
    lam = float(rng.beta(recipe.cutmix_beta, recipe.cutmix_beta))
    perm = torch.from_numpy(rng.permutation(len(x))).to(x.device)
    y1, y2, x1, x2 = cutmix_box(x.shape[-2], x.shape[-1], lam, rng)
    x = x.clone()
    x[:, :, y1:y2, x1:x2] = x[perm, :, y1:y2, x1:x2]
    lam = 1.0 - (y2 - y1) * (x2 - x1) / (x.shape[-2] * x.shape[-1])
    return x, perm, lam
