"""``ddm prepare``: a class-folder tree as a dataset store read from disk on demand."""

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
