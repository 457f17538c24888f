"""Cross-check ddm's soft-label loss, DD-Ranking schedule and score formulas against DD-Ranking.

Usage: ``python benchmarks/ddranking_crosscheck.py DD-RANKING-CHECKOUT`` (a clone of
NUS-HPC-AI-Lab/DD-Ranking, 0.2.0). Its ``ddranking/loss/kl.py`` is imported as it is (it needs
torch only); its "cosine" scheduler lambda (``ddranking/utils/train_and_eval.py``) and its LRS
and ARS lines (``ddranking/metrics/soft_label.py``, ``aug_robust.py``) are copied verbatim
below, since they sit inside methods that train networks. Prints the largest differences.
"""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ddm.recipes import lr_factor
from ddm.scores import augmentation_robust_score, label_robust_score
from ddm.teacher import soft_label_loss


def main(root: Path) -> None:
    spec = importlib.util.spec_from_file_location("ddr_kl", root / "ddranking" / "loss" / "kl.py")
    kl = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(kl)
    g = torch.Generator().manual_seed(0)
    worst = 0.0
    for t in (1.0, 1.2, 4.0, 30.0):
        s, z = torch.randn(64, 10, generator=g) * 3, torch.randn(64, 10, generator=g) * 3
        theirs = kl.KLDivergenceLoss(temperature=t, scale_loss=False)(s, z)
        worst = max(worst, abs(float(theirs - soft_label_loss(s, F.softmax(z / t, dim=1), t))))
    print(f"KL loss: max |ddranking - ddm| over temperatures 1, 1.2, 4, 30 = {worst:.2e}")

    num_epochs = 300  # get_lr_scheduler('cosine'), verbatim lambda

    def lam(step):
        return 0.5 * (1.0 + math.cos(math.pi * step / num_epochs / 2)) if step <= num_epochs else 0

    opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lam)
    diff = 0.0
    for epoch in range(num_epochs):
        got = lr_factor("ddranking-cosine", epoch, num_epochs)
        diff = max(diff, abs(opt.param_groups[0]["lr"] - got))
        opt.step()
        sched.step()
    print(f"schedule: max |ddranking LambdaLR - ddm lr_factor| over 300 epochs = {diff:.2e}")

    rng = np.random.default_rng(0)
    worst_l = worst_a = 0.0
    for _ in range(1000):
        full, syn_h, syn_s, rdm_s, syn_n, rdm_n = rng.uniform(10, 90, 6)
        lrs_lambda = ars_lambda = 0.5
        hlr = 1.00 * (full - syn_h)  # soft_label.py, compute_metrics
        ior = 1.00 * (syn_s - rdm_s)
        alpha = lrs_lambda * ior - (1 - lrs_lambda) * hlr
        lrs = (np.exp(alpha) - np.exp(-1)) / (np.exp(1) - np.exp(-1))
        with_aug_score = 1.00 * (syn_s - rdm_s)  # aug_robust.py, compute_metrics
        without_aug_score = 1.00 * (syn_n - rdm_n)
        beta = ars_lambda * with_aug_score + (1 - ars_lambda) * without_aug_score
        ars = (np.exp(beta) - np.exp(-1)) / (np.exp(1) - np.exp(-1))
        ours_l = label_robust_score(full, syn_h, syn_s, rdm_s)["lrs"]
        ours_a = augmentation_robust_score(syn_s, rdm_s, syn_n, rdm_n)["ars"]
        worst_l = max(worst_l, abs(lrs - ours_l) / max(abs(lrs), 1e-12))
        worst_a = max(worst_a, abs(ars - ours_a) / max(abs(ars), 1e-12))
    print(f"LRS: max relative |ddranking - ddm| over 1000 random accuracy sets = {worst_l:.2e}")
    print(f"ARS: max relative |ddranking - ddm| over 1000 random accuracy sets = {worst_a:.2e}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: python benchmarks/ddranking_crosscheck.py DD-RANKING-CHECKOUT")
    main(Path(sys.argv[1]))
