"""``ddm diagnose``: style gap and intra-class diversity of a condensed set (``ddm.diagnose``)."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .flags import add_flags, values_from

__all__ = ["add_parser", "cmd_diagnose"]


def add_parser(sub: Any) -> None:
    """Register ``diagnose RUN`` on an argparse sub-parsers object."""
    from ..diagnose import DiagnoseConfig

    p = sub.add_parser(
        "diagnose",
        help="style gap and intra-class diversity of a condensed set vs a random subset",
        description=(
            "Measure, as DDM does, how far a condensed set's feature-map style is from the "
            "real data and how diverse its classes are, next to a random real subset of the "
            "same size; in both DDM forms: the paper's (maps after the ReLU, kNN KL) and the "
            "released one (maps at the convolution, spread along the real class's principal "
            "directions). Prints two tables and writes RUN/diagnose.json and RUN/diagnose.png."
        ),
    )
    p.add_argument("run", metavar="RUN", help="run folder")
    p.add_argument("--data-root", default=None, help="dataset folder (default: the run's)")
    add_flags(p, DiagnoseConfig)
    p.set_defaults(func=cmd_diagnose)


def cmd_diagnose(args: argparse.Namespace) -> int:
    """Load the run and its dataset, measure, print the table, write diagnose.json/.png."""
    from ..data import load_dataset
    from ..diagnose import CONDENSED, DiagnoseConfig, diagnose, plot, summary
    from ..io import atomic_write_json, load_synthetic, read_json
    from ..runtime import Runtime, tune_allocator

    tune_allocator()
    folder = Path(args.run)
    syn = load_synthetic(folder)
    root = args.data_root
    if root is None and (folder / "config.json").exists():
        root = read_json(folder / "config.json").get("data_root")
    dataset = load_dataset(syn.meta["dataset"], root, syn.meta.get("image_size"))
    settings = values_from(args, DiagnoseConfig)
    report = diagnose(
        syn,
        dataset,
        **settings,
        progress=not getattr(args, "quiet", False),
        runtime=Runtime.resolve(settings.get("device", "auto"), "fp32"),
    )
    m = report.meta
    print(
        f"{folder}: {m['method']} on {m['dataset']}, ipc {m['ipc']} "
        f"({m['images_per_class'][CONDENSED]} images per class measured), "
        f"{m['nets']} random ConvNets, {m['batch']} real images per class"
    )
    print(f"layers: {', '.join(report.layers)}")
    print(report.table())
    print(summary(report))
    atomic_write_json(folder / "diagnose.json", report.to_dict())
    plot(report, folder / "diagnose.png")
    print(f"wrote {folder / 'diagnose.json'} and {folder / 'diagnose.png'}")
    return 0
