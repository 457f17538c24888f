"""Two parts of released DDM's real-side statistics, timed in one process (medians of 15):
the first layer's patch moments in float32 vs bf16 (``conv_mean_gram``, one class of 256
random 3 x 32 x 32 inputs, with the bf16 route's error against float64), and L_CD's principal
directions for 10 classes one by one vs side by side (``spread_directions_many``).

    python benchmarks/real_stats_parts.py --threads 2
"""

from __future__ import annotations

import argparse
import time

import torch

from ddm.losses import conv_mean_gram, mean_gram, spread_directions, spread_directions_many


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--reps", type=int, default=15)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.randn(256, 3, 32, 32)
    conv = torch.nn.Conv2d(3, 128, 3, padding=1)
    embs = [torch.randn(256, 2048) * torch.linspace(2, 0.1, 2048) for _ in range(10)]
    fns = {
        "patch moments, float32": lambda: conv_mean_gram(x, conv.weight, conv.bias, 1),
        "patch moments, bf16": lambda: conv_mean_gram(x, conv.weight, conv.bias, 1, torch.bfloat16),
        "L_CD directions, 10 classes one by one": lambda: [spread_directions(e, 9) for e in embs],
        "L_CD directions, 10 classes side by side": lambda: spread_directions_many(embs, 9),
    }
    times: dict[str, list[float]] = {k: [] for k in fns}
    with torch.no_grad():
        for f in fns.values():
            f()
        for _ in range(args.reps):
            for k, f in fns.items():
                t0 = time.perf_counter()
                f()
                times[k].append((time.perf_counter() - t0) * 1e3)
        exact = mean_gram(conv.double()(x.double()))
        got = conv_mean_gram(x, conv.weight, conv.bias, 1, torch.bfloat16)
    print(f"| part ({args.threads} threads) | median ms |\n|---|---|")
    for k, v in times.items():
        print(f"| {k} | {sorted(v)[len(v) // 2]:.1f} |")
    err = ((got.double() - exact).abs().max() / exact.abs().max()).item()
    print(f"\nbf16 patch moments: error {err:.1e} of the largest entry (against float64)")


if __name__ == "__main__":
    main()
