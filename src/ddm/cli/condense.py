"""``ddm condense`` and ``ddm presets``."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import _condense_config, _summary


def cmd_condense(args: argparse.Namespace) -> int:
    from .. import distributed as dist
    from ..condense import condense
    from ..runtime import Runtime

    cfg = _condense_config(args)
    condense(
        cfg,
        args.out,
        resume=args.resume,
        overwrite=args.overwrite,
        progress=not args.quiet,
        allow_changes=[n for item in args.allow_change for n in item.split(",") if n],
        runtime=Runtime.resolve(cfg.device, cfg.precision),
    )
    dist.echo(_summary(Path(args.out)))
    return 0


def cmd_presets(args: argparse.Namespace) -> int:
    from ..config import available_presets, load_preset

    names = available_presets()
    width = max(map(len, names))
    for name in names:
        preset = load_preset(name)
        print(f"{name:<{width}} {preset['description']}")
        if args.verbose:
            print(f"{'':<{width}} settings: {preset['settings']}")
            print(f"{'':<{width}} source: {preset['source']}")
    return 0
