"""``ddm pool``: train networks on the real data for NCFM's feature extractors."""

from __future__ import annotations

import argparse


def cmd_pool(args: argparse.Namespace) -> int:
    from ..pool import PoolConfig, train_pool
    from ..runtime import Runtime

    cfg = PoolConfig(
        dataset=args.dataset,
        data_root=args.data_root,
        model=args.model,
        depth=args.depth,
        networks=args.networks,
        epochs=args.epochs,
        batch_size=args.batch_size,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
    )
    runtime = Runtime.resolve(cfg.device, "fp32")  # the networks train in float32
    manifest = train_pool(cfg, args.out, progress=not args.quiet, runtime=runtime)
    accs = [n["test_accuracy"] for n in manifest["networks"]]
    mean = sum(accs) / len(accs) if accs else float("nan")
    print(f"{args.out}: {len(accs)} networks, mean test accuracy {mean:.2f}%")
    return 0
