"""``ddm continual`` and ``ddm continual-plot``: class-incremental learning (``ddm.continual``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .flags import add_flags, values_from

__all__ = ["add_parsers", "cmd_continual", "cmd_continual_plot"]


def cmd_continual(args: argparse.Namespace) -> int:
    from ..config import parse_overrides
    from ..continual import PLOT_FILE, SUMMARY_MD, ContinualConfig, run_continual
    from ..runtime import Runtime

    fields = values_from(args, ContinualConfig)
    try:
        fields["condense"] = parse_overrides(args.set or []) or None
    except ValueError as exc:
        raise ValueError(f"--set: {exc}") from None
    settings = ContinualConfig(**fields)
    summary = run_continual(
        settings,
        args.out,
        progress=not getattr(args, "quiet", False),
        overwrite=args.overwrite,
        runtime=Runtime.resolve(settings.device, settings.eval_precision),
    )
    print(Path(args.out, SUMMARY_MD).read_text(), end="")
    if summary:
        print(f"wrote {Path(args.out) / PLOT_FILE}")
    return 0


def cmd_continual_plot(args: argparse.Namespace) -> int:
    from ..continual import combined_table, plot_runs

    plot_runs(args.runs_dirs, args.out)
    print(combined_table(args.runs_dirs))
    print(f"wrote {args.out}")
    return 0


def add_parsers(sub: Any) -> None:
    """Register ``continual`` and ``continual-plot`` on an argparse subparsers object."""
    from ..continual import ContinualConfig

    p = sub.add_parser("continual", help="class-incremental learning with condensed memories")
    add_flags(p, ContinualConfig)
    p.add_argument(
        "--set",
        action="append",
        metavar="KEY=VALUE",
        help="another condensation setting for every step, e.g. model_train_steps=5 (repeatable)",
    )
    p.add_argument(
        "--out",
        required=True,
        help="run folder (continued if it holds this run; a larger --orders extends it)",
    )
    p.add_argument("--overwrite", action="store_true", help="discard a run with other settings")
    p.set_defaults(func=cmd_continual)

    p = sub.add_parser(
        "continual-plot", help="plot and tabulate continual runs: accuracy vs classes seen"
    )
    p.add_argument("runs_dirs", nargs="+", metavar="RUN", help="continual run folder(s)")
    p.add_argument("--out", required=True, help="PNG to write")
    p.set_defaults(func=cmd_continual_plot)
