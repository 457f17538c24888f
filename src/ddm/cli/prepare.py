"""``ddm prepare``: a dataset's files as a memory-mapped store."""

from __future__ import annotations

import argparse


def cmd_prepare(args: argparse.Namespace) -> int:
    from ..data.prepare import prepare_store

    prepare_store(
        args.src,
        args.out,
        args.image_size,
        val_labels=args.val_labels,
        classes=args.classes,
        name=args.name,
        workers=args.workers,
        progress=not args.quiet,
    )
    print(f"use it with: --dataset store --data-root {args.out}")
    return 0
