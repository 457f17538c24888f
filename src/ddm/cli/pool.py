"""``ddm pool``: train networks on the real data for NCFM's feature extractors."""

from __future__ import annotations

import argparse

from .flags import values_from


def cmd_pool(args: argparse.Namespace) -> int:
    from ..pool import PoolConfig, train_pool
    from ..runtime import Runtime

    cfg = PoolConfig(**values_from(args, PoolConfig))
    runtime = Runtime.resolve(cfg.device, cfg.precision)
    manifest = train_pool(cfg, args.out, progress=not args.quiet, runtime=runtime)
    accs = [n["test_accuracy"] for n in manifest["networks"]]
    mean = sum(accs) / len(accs) if accs else float("nan")
    print(f"{args.out}: {len(accs)} networks, mean test accuracy {mean:.2f}%")
    return 0
